//! Connecting: Happy Eyeballs over several addresses (`Tcp::connect_addrs`,
//! `Tcp::connect_host`), and the one-call TLS client, `Tls::connect`.

mod util;

use std::cell::{Cell, RefCell};
use std::io::Write;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use biotls::echo::{EchoOptions, echo};
use biotls::error::{Timeout, VerifyKind};
use biotls::pki::Pki;
use biotls::tls::Tls;
use biotls::{Error, Loop, Stream, Tcp, TcpListener};
use util::{run_to_end, run_until};

const LIMIT: Duration = Duration::from_secs(20);

type Outcome = Rc<RefCell<Option<(Result<(), Error>, Duration)>>>;

fn connect(lp: &mut Loop, addrs: &[SocketAddr]) -> (Tcp, Outcome) {
    let out: Outcome = Rc::new(RefCell::new(None));
    let o = Rc::clone(&out);
    let start = Instant::now();
    let tcp = Tcp::connect_addrs(lp, addrs, move |_, _, r| {
        *o.borrow_mut() = Some((r, start.elapsed()));
    })
    .unwrap();
    (tcp, out)
}

#[test]
fn a_black_holed_first_address_does_not_hold_up_the_next() {
    let (_hole, _fillers, hole) = util::black_hole();
    let live = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut lp = Loop::new().unwrap();
    let (tcp, out) = connect(&mut lp, &[hole, live.local_addr().unwrap()]);
    run_until(&mut lp, LIMIT, || out.borrow().is_some());
    let (r, took) = out.borrow_mut().take().unwrap();
    r.unwrap();
    // The second attempt started 250 ms after the first, not after a timeout.
    assert!(took >= Duration::from_millis(200), "{took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert_eq!(tcp.peer_addr(&lp).unwrap(), live.local_addr().unwrap());
    tcp.close(&mut lp, |_, _| {});
    run_to_end(&mut lp, LIMIT);
    assert_eq!(lp.handle_count(), 0, "the losing attempt was not closed");
}

#[test]
fn a_refused_first_address_fails_over_at_once() {
    let (_r, refused) = util::refused_addr();
    let live = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut lp = Loop::new().unwrap();
    let (tcp, out) = connect(&mut lp, &[refused, live.local_addr().unwrap()]);
    run_until(&mut lp, LIMIT, || out.borrow().is_some());
    let (r, took) = out.borrow_mut().take().unwrap();
    r.unwrap();
    assert!(took < Duration::from_millis(200), "{took:?}");
    tcp.close(&mut lp, |_, _| {});
    run_to_end(&mut lp, LIMIT);
}

#[test]
fn when_every_address_fails_the_last_error_is_reported_once() {
    let ((_a, a), (_b, b)) = (util::refused_addr(), util::refused_addr());
    let mut lp = Loop::new().unwrap();
    let (tcp, out) = connect(&mut lp, &[a, b]);
    let wrote = Rc::new(RefCell::new(None));
    let w = Rc::clone(&wrote);
    tcp.write(&mut lp, b"x", move |_, _, r| *w.borrow_mut() = Some(r))
        .unwrap();
    run_to_end(&mut lp, LIMIT);
    let (r, _) = out.borrow_mut().take().unwrap();
    assert_eq!(
        r.unwrap_err().io_kind(),
        Some(std::io::ErrorKind::ConnectionRefused)
    );
    let w = wrote.borrow_mut().take().unwrap();
    assert_eq!(
        w.unwrap_err().io_kind(),
        Some(std::io::ErrorKind::ConnectionRefused)
    );
    tcp.close(&mut lp, |_, _| {});
    run_to_end(&mut lp, LIMIT);
    assert_eq!(lp.handle_count(), 0);
}

#[test]
fn data_that_comes_with_a_winning_attempts_connect_is_read() {
    let (_hole, _fillers, hole) = util::black_hole();
    let live = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = live.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = live.accept().unwrap();
        s.write_all(b"hello").unwrap();
    });
    let mut lp = Loop::new().unwrap();
    let (tcp, out) = connect(&mut lp, &[hole, addr]);
    let got = Rc::new(RefCell::new(Vec::new()));
    let ended = Rc::new(Cell::new(false));
    let (g, e) = (Rc::clone(&got), Rc::clone(&ended));
    tcp.start_read(&mut lp, move |lp, tcp, r| match r.unwrap() {
        Some(d) => g.borrow_mut().extend_from_slice(&d),
        None => {
            e.set(true);
            tcp.close(lp, |_, _| {});
        }
    })
    .unwrap();
    run_until(&mut lp, LIMIT, || ended.get());
    server.join().unwrap();
    assert!(out.borrow().as_ref().unwrap().0.is_ok());
    assert_eq!(&got.borrow()[..], b"hello");
    run_to_end(&mut lp, LIMIT);
}

#[test]
fn the_connect_timeout_covers_every_attempt() {
    let (_h1, _f1, h1) = util::black_hole();
    let (_h2, _f2, h2) = util::black_hole();
    let mut lp = Loop::new().unwrap();
    let (tcp, out) = connect(&mut lp, &[h1, h2]);
    tcp.set_connect_timeout(&mut lp, Duration::from_millis(600))
        .unwrap();
    run_until(&mut lp, LIMIT, || out.borrow().is_some());
    let (r, took) = out.borrow_mut().take().unwrap();
    assert!(matches!(r, Err(Error::TimedOut(Timeout::Connect))), "{r:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    tcp.close(&mut lp, |_, _| {});
    run_to_end(&mut lp, LIMIT);
    assert_eq!(lp.handle_count(), 0, "an attempt was left open");
}

// ---- Tls::connect ----

fn tls_echo_server(lp: &mut Loop, pki: &Pki) -> (TcpListener, u16) {
    let acceptor = pki.acceptor().unwrap();
    let l = TcpListener::bind(lp, "127.0.0.1:0".parse().unwrap()).unwrap();
    let port = l.local_addr(lp).unwrap().port();
    l.listen(lp, move |lp, _, r| {
        let tls = Tls::server(lp, r.unwrap(), &acceptor).unwrap();
        echo(lp, tls, EchoOptions::default()).unwrap();
    })
    .unwrap();
    (l, port)
}

#[test]
fn tls_connect_resolves_connects_and_handshakes_in_one_call() {
    let pki = Pki::generate(&["localhost"]).unwrap();
    let mut lp = Loop::new().unwrap();
    let (l, port) = tls_echo_server(&mut lp, &pki);
    let outcome = Rc::new(RefCell::new(Vec::new()));
    let o = Rc::clone(&outcome);
    // "localhost" may resolve to ::1 first, where nothing listens: Happy Eyeballs moves on.
    let tls = Tls::connect(
        &mut lp,
        &pki.connector().unwrap(),
        &format!("localhost:{port}"),
        move |_, _, r| o.borrow_mut().push(r.map_err(|e| format!("{e}"))),
    )
    .unwrap();
    // Written before anything connected: queued.
    tls.write(&mut lp, b"ping", |_, _, r| r.unwrap()).unwrap();
    let got = Rc::new(RefCell::new(Vec::new()));
    let g = Rc::clone(&got);
    tls.start_read(&mut lp, move |lp, tls, r| {
        g.borrow_mut().extend_from_slice(&r.unwrap().unwrap());
        tls.close(lp, |_, _| {});
    })
    .unwrap();
    run_until(&mut lp, LIMIT, || !got.borrow().is_empty());
    assert_eq!(&got.borrow()[..], b"ping");
    assert_eq!(*outcome.borrow(), [Ok(())]);
    l.close(&mut lp);
    run_to_end(&mut lp, LIMIT);
    assert_eq!(outcome.borrow().len(), 1);
}

#[test]
fn tls_connect_reports_the_first_error_once() {
    let pki = Pki::generate(&["localhost"]).unwrap();
    let mut lp = Loop::new().unwrap();
    // A refused port.
    let (_r, addr) = util::refused_addr();
    let outcome = Rc::new(RefCell::new(Vec::new()));
    let o = Rc::clone(&outcome);
    let tls = Tls::connect(
        &mut lp,
        &pki.connector().unwrap(),
        &addr.to_string(),
        move |lp, tls, r| {
            o.borrow_mut().push(r.map_err(|e| e.io_kind()));
            tls.close(lp, |_, _| {});
        },
    )
    .unwrap();
    run_to_end(&mut lp, LIMIT);
    assert_eq!(
        *outcome.borrow(),
        [Err(Some(std::io::ErrorKind::ConnectionRefused))]
    );
    assert!(!tls.is_open(&lp));
    // A server whose certificate is for another name.
    let (l, port) = tls_echo_server(&mut lp, &Pki::generate(&["elsewhere"]).unwrap());
    let outcome = Rc::new(RefCell::new(Vec::new()));
    let o = Rc::clone(&outcome);
    Tls::connect(
        &mut lp,
        &pki.connector().unwrap(),
        &format!("127.0.0.1:{port}"),
        move |lp, tls, r| {
            o.borrow_mut().push(r.map_err(|e| e.verify_kind()));
            tls.close(lp, |_, _| {});
        },
    )
    .unwrap();
    run_until(&mut lp, LIMIT, || !outcome.borrow().is_empty());
    // The other PKI's CA is not trusted either; the kind says which check failed first.
    let got = outcome.borrow()[0];
    assert!(
        matches!(
            got,
            Err(Some(
                VerifyKind::UnknownIssuer | VerifyKind::SelfSigned | VerifyKind::HostnameMismatch
            ))
        ),
        "{got:?}"
    );
    l.close(&mut lp);
    run_to_end(&mut lp, LIMIT);
    assert_eq!(outcome.borrow().len(), 1);
    // Not host:port.
    assert!(matches!(
        Tls::connect(
            &mut lp,
            &pki.connector().unwrap(),
            "localhost",
            |_, _, _| {}
        ),
        Err(Error::Config(_))
    ));
}
