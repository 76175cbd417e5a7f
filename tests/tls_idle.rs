//! The optional idle timeout of `Tls`: silence in both directions fails the handle with
//! `TimedOut(Timeout::Idle)`; traffic either way keeps it alive; it is off by default.

mod util;

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use biotls::error::Timeout;
use biotls::pki::Pki;
use biotls::tls::{Tls, TlsAcceptor};
use biotls::{Error, Loop, Stream, Tcp, TcpListener, Timer};
use util::{run_to_end, run_until};

const LIMIT: Duration = Duration::from_secs(30);

/// What the server handle saw, with the time since it was accepted.
type Log = Rc<RefCell<Vec<(Duration, String)>>>;

/// A server whose handles get `idle` as idle timeout, read (and log) everything, and
/// write `tick` bytes every `every` if given (traffic that does not come from the peer).
fn server(
    lp: &mut Loop,
    acceptor: TlsAcceptor,
    idle: Option<Duration>,
    every: Option<Duration>,
) -> (TcpListener, SocketAddr, Log) {
    let log: Log = Rc::default();
    let l = log.clone();
    let listener = TcpListener::bind(lp, "127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr(lp).unwrap();
    listener
        .listen(lp, move |lp, _, accepted| {
            let start = Instant::now();
            let tls = Tls::server(lp, accepted.unwrap(), &acceptor).unwrap();
            tls.set_idle_timeout(lp, idle).unwrap();
            let l = l.clone();
            let ticker = every.map(|every| {
                let timer = Timer::new(lp).unwrap();
                timer
                    .start(lp, every, Some(every), move |lp, _| {
                        let _ = tls.write(lp, &b"tick"[..], |_, _, _| {});
                    })
                    .unwrap();
                timer
            });
            tls.start_read(lp, move |lp, tls, r| {
                let entry = match r {
                    Ok(Some(b)) => format!("data {}", b.len()),
                    Ok(None) => "eof".into(),
                    Err(e) => format!("error {e:?}"),
                };
                let end = !entry.starts_with("data");
                l.borrow_mut().push((start.elapsed(), entry));
                if end {
                    if let Some(t) = ticker {
                        t.close(lp);
                    }
                    tls.close(lp, |_, _| {});
                }
            })
            .unwrap();
        })
        .unwrap();
    (listener, addr, log)
}

/// A client that completes the handshake, then writes one byte every `every` until
/// `stop_after`, and otherwise stays silent (it reads and drops what it gets).
fn client(
    lp: &mut Loop,
    pki: &Pki,
    addr: SocketAddr,
    every: Option<Duration>,
    stop_after: Duration,
) -> Tls {
    let tcp = Tcp::connect(lp, addr, |_, _, _| {}).unwrap();
    let tls = Tls::client(lp, tcp, &pki.connector().unwrap(), "localhost").unwrap();
    tls.start_read(lp, |_, _, _| {}).unwrap();
    if let Some(every) = every {
        let start = Instant::now();
        let timer = Timer::new(lp).unwrap();
        timer
            .start(lp, every, Some(every), move |lp, timer| {
                if start.elapsed() >= stop_after || tls.write(lp, &b"."[..], |_, _, _| {}).is_err()
                {
                    timer.close(lp);
                }
            })
            .unwrap();
    }
    tls
}

fn pki() -> Pki {
    Pki::generate(&["localhost"]).unwrap()
}

#[test]
fn a_silent_connection_fails_with_an_idle_timeout() {
    let pki = pki();
    let mut lp = Loop::new().unwrap();
    let idle = Duration::from_millis(300);
    let (listener, addr, log) = server(&mut lp, pki.acceptor().unwrap(), Some(idle), None);
    let c = client(&mut lp, &pki, addr, None, Duration::ZERO);
    run_until(&mut lp, LIMIT, || !log.borrow().is_empty());
    let (at, what) = log.borrow()[0].clone();
    assert_eq!(what, "error TimedOut(Idle)");
    assert!(at >= idle, "fired early: {at:?}");
    assert!(at < idle * 5, "fired late: {at:?}");
    assert_eq!(
        Error::TimedOut(Timeout::Idle).to_string(),
        "idle timeout: no TLS traffic either way",
        "the message users see"
    );
    c.close(&mut lp, |_, _| {});
    listener.close(&mut lp);
    run_to_end(&mut lp, LIMIT);
}

#[test]
fn traffic_from_the_peer_keeps_the_connection_alive_until_it_stops() {
    let pki = pki();
    let mut lp = Loop::new().unwrap();
    let idle = Duration::from_millis(300);
    let (listener, addr, log) = server(&mut lp, pki.acceptor().unwrap(), Some(idle), None);
    // A byte every 100 ms for 1.2 s (four times the timeout), then silence.
    let busy = Duration::from_millis(1200);
    let c = client(&mut lp, &pki, addr, Some(Duration::from_millis(100)), busy);
    run_until(&mut lp, LIMIT, || {
        log.borrow()
            .last()
            .is_some_and(|(_, w)| w.starts_with("error"))
    });
    let log = log.borrow();
    let (at, what) = log.last().unwrap();
    assert_eq!(what, "error TimedOut(Idle)");
    assert!(*at >= busy + idle - Duration::from_millis(100), "{log:?}");
    assert!(log.len() >= 8, "the bytes came through: {log:?}");
    drop(log);
    c.close(&mut lp, |_, _| {});
    listener.close(&mut lp);
    run_to_end(&mut lp, LIMIT);
}

#[test]
fn our_own_writes_count_as_traffic() {
    let pki = pki();
    let mut lp = Loop::new().unwrap();
    let idle = Duration::from_millis(300);
    // The server writes every 100 ms; the client never writes.
    let (listener, addr, log) = server(
        &mut lp,
        pki.acceptor().unwrap(),
        Some(idle),
        Some(Duration::from_millis(100)),
    );
    let c = client(&mut lp, &pki, addr, None, Duration::ZERO);
    let start = Instant::now();
    run_until(&mut lp, LIMIT, || {
        start.elapsed() >= Duration::from_millis(1200)
    });
    assert!(log.borrow().is_empty(), "{:?}", log.borrow());
    c.close(&mut lp, |_, _| {});
    run_until(&mut lp, LIMIT, || !log.borrow().is_empty());
    listener.close(&mut lp);
    run_to_end(&mut lp, LIMIT);
}

#[test]
fn the_idle_timeout_is_off_by_default_and_can_be_turned_off() {
    let pki = pki();
    let mut lp = Loop::new().unwrap();
    let (listener, addr, log) = server(&mut lp, pki.acceptor().unwrap(), None, None);
    let c = client(&mut lp, &pki, addr, None, Duration::ZERO);
    // Set, then cleared: no timer may fire.
    c.set_idle_timeout(&mut lp, Some(Duration::from_millis(100)))
        .unwrap();
    c.set_idle_timeout(&mut lp, None).unwrap();
    let start = Instant::now();
    run_until(&mut lp, LIMIT, || {
        start.elapsed() >= Duration::from_millis(600)
    });
    assert!(log.borrow().is_empty(), "{:?}", log.borrow());
    assert!(c.is_open(&lp));
    c.close(&mut lp, |_, _| {});
    assert!(matches!(
        c.set_idle_timeout(&mut lp, Some(Duration::from_secs(1))),
        Err(Error::Closed)
    ));
    run_until(&mut lp, LIMIT, || !log.borrow().is_empty());
    listener.close(&mut lp);
    run_to_end(&mut lp, LIMIT);
}
