//! The callback contract on the call orders of the APIs that the property tests do not
//! generate: Happy Eyeballs connects, `Tls::connect`, STARTTLS and `unwrap`, `on_drain`,
//! `TlsAcceptor::replace`. Each test records every callback (and whether it ran inside an API call)
//! and checks the contract of README "The callback contract".

mod util;

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use biotls::bytes::Bytes;
use biotls::pki::Pki;
use biotls::tls::{Tls, TlsAcceptor};
use biotls::{Error, Loop, Stream, Tcp, TcpListener};

const LIMIT: Duration = Duration::from_secs(20);

thread_local! {
    static DEPTH: Cell<u32> = const { Cell::new(0) };
}

/// Makes an API call: callbacks that run meanwhile are marked INSIDE.
fn call<T>(f: impl FnOnce() -> T) -> T {
    DEPTH.with(|d| d.set(d.get() + 1));
    let out = f();
    DEPTH.with(|d| d.set(d.get() - 1));
    out
}

type Log = Rc<RefCell<Vec<String>>>;

fn log() -> Log {
    Rc::new(RefCell::new(Vec::new()))
}

fn ev(log: &Log, s: impl Into<String>) {
    let mut s = s.into();
    if DEPTH.with(|d| d.get()) > 0 {
        s.push_str(" !INSIDE-CALL");
    }
    log.borrow_mut().push(s);
}

fn txt<T>(r: &Result<T, Error>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(Error::Io(e)) => format!("Io({:?})", e.kind()),
        Err(Error::TimedOut(t)) => format!("TimedOut({t:?})"),
        Err(Error::Cancelled) => "Cancelled".into(),
        Err(Error::InvalidState(s)) => format!("InvalidState({s})"),
        Err(Error::Closed) => "Closed".into(),
        Err(e) => format!("{e:?}"),
    }
}

fn read_txt(r: &biotls::ReadResult) -> String {
    match r {
        Ok(Some(d)) => format!("data {}", String::from_utf8_lossy(d)),
        Ok(None) => "eof".into(),
        Err(_) => txt(r),
    }
}

fn no_inside(log: &Log) {
    let l = log.borrow();
    assert!(
        !l.iter().any(|e| e.contains("INSIDE")),
        "callback inside a call: {l:?}"
    );
}

/// Runs until `lp.run_once()` says nothing is left, bounded by `limit` (panics on hang).
fn run_to_end(lp: &mut Loop, limit: Duration) {
    util::run_dry(lp, limit);
}

fn run_until(lp: &mut Loop, mut done: impl FnMut() -> bool) {
    util::run_until(lp, LIMIT, &mut done);
}

fn pki() -> Pki {
    Pki::generate(&["localhost"]).unwrap()
}

fn queue_write_shutdown_read<S: Stream>(lp: &mut Loop, s: S, log: &Log) {
    let l = log.clone();
    call(|| {
        s.write(lp, b"w1", move |_, _, r| {
            ev(&l, format!("write1 {}", txt(&r)))
        })
    })
    .unwrap();
    let l = log.clone();
    call(|| {
        s.write(lp, b"w2", move |_, _, r| {
            ev(&l, format!("write2 {}", txt(&r)))
        })
    })
    .unwrap();
    let l = log.clone();
    call(|| s.shutdown(lp, move |_, _, r| ev(&l, format!("shutdown {}", txt(&r))))).unwrap();
    let l = log.clone();
    call(|| s.start_read(lp, move |_, _, r| ev(&l, format!("read {}", read_txt(&r))))).unwrap();
}

// =====================================================================================
// 1. Tcp::connect_addrs / connect_host
// =====================================================================================

#[test]
fn tcp_he_close_before_connect_with_requests_queued() {
    let (_hole, _f, hole) = util::black_hole();
    let live = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut lp = Loop::new().unwrap();
    let log = log();
    let l = log.clone();
    let tcp = call(|| {
        Tcp::connect_addrs(
            &mut lp,
            &[hole, live.local_addr().unwrap()],
            move |_, _, r| ev(&l, format!("connect {}", txt(&r))),
        )
    })
    .unwrap();
    queue_write_shutdown_read(&mut lp, tcp, &log);
    let l = log.clone();
    call(|| tcp.close(&mut lp, move |_, _| ev(&l, "close")));
    run_to_end(&mut lp, LIMIT);
    no_inside(&log);
    assert_eq!(
        *log.borrow(),
        [
            "connect Cancelled",
            "write1 Cancelled",
            "write2 Cancelled",
            "shutdown Cancelled",
            "close"
        ]
    );
    assert_eq!(lp.handle_count(), 0);
}

#[test]
fn tcp_he_close_after_second_attempt_started() {
    // Both black-holed: after 250 ms a second attempt (an internal handle) is in flight.
    let (_h1, _f1, h1) = util::black_hole();
    let (_h2, _f2, h2) = util::black_hole();
    let mut lp = Loop::new().unwrap();
    let log = log();
    let l = log.clone();
    let tcp = Tcp::connect_addrs(&mut lp, &[h1, h2], move |_, _, r| {
        ev(&l, format!("connect {}", txt(&r)))
    })
    .unwrap();
    queue_write_shutdown_read(&mut lp, tcp, &log);
    let start = Instant::now();
    run_until(&mut lp, || start.elapsed() > Duration::from_millis(400));
    assert!(log.borrow().is_empty(), "{:?}", log.borrow());
    let l = log.clone();
    call(|| tcp.close(&mut lp, move |_, _| ev(&l, "close")));
    run_to_end(&mut lp, LIMIT);
    no_inside(&log);
    assert_eq!(
        *log.borrow(),
        [
            "connect Cancelled",
            "write1 Cancelled",
            "write2 Cancelled",
            "shutdown Cancelled",
            "close"
        ]
    );
    assert_eq!(lp.handle_count(), 0, "attempt left open");
}

#[test]
fn tcp_he_close_inside_successful_connect_cb_with_writes_queued() {
    // The winner is the second attempt (the first is black-holed).
    let (_hole, _f, hole) = util::black_hole();
    let live = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut lp = Loop::new().unwrap();
    let log = log();
    let l = log.clone();
    let l2 = log.clone();
    let tcp = Tcp::connect_addrs(
        &mut lp,
        &[hole, live.local_addr().unwrap()],
        move |lp, tcp, r| {
            ev(&l, format!("connect {}", txt(&r)));
            let l3 = l2.clone();
            call(|| tcp.close(lp, move |_, _| ev(&l3, "close")));
        },
    )
    .unwrap();
    queue_write_shutdown_read(&mut lp, tcp, &log);
    run_to_end(&mut lp, LIMIT);
    no_inside(&log);
    assert_eq!(
        *log.borrow(),
        [
            "connect ok",
            "write1 Cancelled",
            "write2 Cancelled",
            "shutdown Cancelled",
            "close"
        ]
    );
    assert_eq!(lp.handle_count(), 0);
}

#[test]
fn tcp_he_close_inside_successful_connect_cb_own_socket_wins() {
    let live = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (_h, _f, hole) = util::black_hole();
    let mut lp = Loop::new().unwrap();
    let log = log();
    let l = log.clone();
    let l2 = log.clone();
    let tcp = Tcp::connect_addrs(
        &mut lp,
        &[live.local_addr().unwrap(), hole],
        move |lp, tcp, r| {
            ev(&l, format!("connect {}", txt(&r)));
            let l3 = l2.clone();
            call(|| tcp.close(lp, move |_, _| ev(&l3, "close")));
        },
    )
    .unwrap();
    queue_write_shutdown_read(&mut lp, tcp, &log);
    run_to_end(&mut lp, LIMIT);
    no_inside(&log);
    assert_eq!(
        *log.borrow(),
        [
            "connect ok",
            "write1 Cancelled",
            "write2 Cancelled",
            "shutdown Cancelled",
            "close"
        ]
    );
    assert_eq!(lp.handle_count(), 0);
}

#[test]
fn tcp_he_all_refused_with_requests_queued_failure_order() {
    let (_a, a) = util::refused_addr();
    let (_b, b) = util::refused_addr();
    let (_c, c) = util::refused_addr();
    let mut lp = Loop::new().unwrap();
    let log = log();
    let l = log.clone();
    let tcp = call(|| {
        Tcp::connect_addrs(&mut lp, &[a, b, c], move |_, _, r| {
            ev(&l, format!("connect {}", txt(&r)))
        })
    })
    .unwrap();
    queue_write_shutdown_read(&mut lp, tcp, &log);
    run_to_end(&mut lp, LIMIT);
    no_inside(&log);
    assert_eq!(
        *log.borrow(),
        [
            "connect Io(ConnectionRefused)",
            "write1 Io(ConnectionRefused)",
            "write2 Io(ConnectionRefused)",
            "shutdown Io(ConnectionRefused)",
            "read Io(ConnectionRefused)",
        ]
    );
    // The handle stays open, inactive; the same error later.
    assert!(matches!(
        tcp.write(&mut lp, b"x", |_, _, _| {}),
        Err(Error::Io(_))
    ));
    tcp.close(&mut lp, |_, _| {});
    run_to_end(&mut lp, LIMIT);
    assert_eq!(lp.handle_count(), 0);
}

#[test]
fn tcp_he_all_refused_close_inside_connect_cb_cancels_queued() {
    let (_a, a) = util::refused_addr();
    let (_b, b) = util::refused_addr();
    let mut lp = Loop::new().unwrap();
    let log = log();
    let l = log.clone();
    let tcp = Tcp::connect_addrs(&mut lp, &[a, b], move |lp, tcp, r| {
        ev(&l, format!("connect {}", txt(&r)));
        let l3 = l.clone();
        call(|| tcp.close(lp, move |_, _| ev(&l3, "close")));
    })
    .unwrap();
    queue_write_shutdown_read(&mut lp, tcp, &log);
    run_to_end(&mut lp, LIMIT);
    no_inside(&log);
    assert_eq!(
        *log.borrow(),
        [
            "connect Io(ConnectionRefused)",
            "write1 Cancelled",
            "write2 Cancelled",
            "shutdown Cancelled",
            "close"
        ]
    );
    assert_eq!(lp.handle_count(), 0);
}

#[test]
fn tcp_he_refused_then_live_with_requests_queued() {
    // Own socket refused, the next address on the own socket wins.
    let (_a, a) = util::refused_addr();
    let live = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut lp = Loop::new().unwrap();
    let log = log();
    let l = log.clone();
    let tcp = Tcp::connect_addrs(&mut lp, &[a, live.local_addr().unwrap()], move |_, _, r| {
        ev(&l, format!("connect {}", txt(&r)))
    })
    .unwrap();
    let l = log.clone();
    tcp.write(&mut lp, b"hi", move |_, _, r| {
        ev(&l, format!("write {}", txt(&r)))
    })
    .unwrap();
    let l = log.clone();
    tcp.shutdown(&mut lp, move |_, _, r| {
        ev(&l, format!("shutdown {}", txt(&r)))
    })
    .unwrap();
    run_until(&mut lp, || log.borrow().len() == 3);
    let (mut s, _) = live.accept().unwrap();
    let mut got = Vec::new();
    std::io::Read::read_to_end(&mut s, &mut got).unwrap();
    assert_eq!(got, b"hi");
    tcp.close(&mut lp, |_, _| {});
    run_to_end(&mut lp, LIMIT);
    no_inside(&log);
    assert_eq!(*log.borrow(), ["connect ok", "write ok", "shutdown ok"]);
}

#[test]
fn tcp_he_timeout_while_second_attempt_in_flight_with_requests() {
    let (_h1, _f1, h1) = util::black_hole();
    let (_h2, _f2, h2) = util::black_hole();
    let (_h3, _f3, h3) = util::black_hole();
    let mut lp = Loop::new().unwrap();
    let log = log();
    let l = log.clone();
    let tcp = Tcp::connect_addrs(&mut lp, &[h1, h2, h3], move |_, _, r| {
        ev(&l, format!("connect {}", txt(&r)))
    })
    .unwrap();
    // 300 ms: the second attempt started at 250 ms and is in flight.
    tcp.set_connect_timeout(&mut lp, Duration::from_millis(300))
        .unwrap();
    queue_write_shutdown_read(&mut lp, tcp, &log);
    run_to_end(&mut lp, LIMIT);
    no_inside(&log);
    assert_eq!(
        *log.borrow(),
        [
            "connect TimedOut(Connect)",
            "write1 TimedOut(Connect)",
            "write2 TimedOut(Connect)",
            "shutdown TimedOut(Connect)",
            "read TimedOut(Connect)",
        ]
    );
    // set_connect_timeout after the end: InvalidState, no panic.
    assert!(matches!(
        tcp.set_connect_timeout(&mut lp, Duration::from_millis(1)),
        Err(Error::InvalidState(_))
    ));
    tcp.close(&mut lp, |_, _| {});
    run_to_end(&mut lp, LIMIT);
    assert_eq!(lp.handle_count(), 0);
}

#[test]
fn tcp_he_timeout_twice_and_zero_timeout() {
    let (_h1, _f1, h1) = util::black_hole();
    let mut lp = Loop::new().unwrap();
    let log = log();
    let l = log.clone();
    let tcp = Tcp::connect_addrs(&mut lp, &[h1], move |_, _, r| {
        ev(&l, format!("connect {}", txt(&r)))
    })
    .unwrap();
    tcp.set_connect_timeout(&mut lp, Duration::from_secs(100))
        .unwrap();
    tcp.set_connect_timeout(&mut lp, Duration::ZERO).unwrap();
    tcp.set_connect_timeout(&mut lp, Duration::MAX).unwrap();
    tcp.set_connect_timeout(&mut lp, Duration::ZERO).unwrap();
    run_to_end(&mut lp, LIMIT);
    no_inside(&log);
    assert_eq!(*log.borrow(), ["connect TimedOut(Connect)"]);
    tcp.close(&mut lp, |_, _| {});
    run_to_end(&mut lp, LIMIT);
    assert_eq!(lp.handle_count(), 0);
}

#[test]
fn tcp_connect_addrs_empty_list() {
    // The failure is known inside the constructor; requests made before the connect
    // callback ran still queue, and fail after it, as for a failure found later.
    let mut lp = Loop::new().unwrap();
    let log = log();
    let l = log.clone();
    let tcp = call(|| {
        Tcp::connect_addrs(&mut lp, &[], move |_, _, r| {
            ev(&l, format!("connect {}", txt(&r)))
        })
    })
    .unwrap();
    let l = log.clone();
    let w = call(|| {
        tcp.write(&mut lp, b"x", move |_, _, r| {
            ev(&l, format!("write {}", txt(&r)))
        })
    });
    let l = log.clone();
    let sd = call(|| {
        tcp.shutdown(&mut lp, move |_, _, r| {
            ev(&l, format!("shutdown {}", txt(&r)))
        })
    });
    assert!(log.borrow().is_empty());
    assert!(
        sd.is_ok(),
        "shutdown refused before the connect callback ran: {sd:?}"
    );
    let l = log.clone();
    call(|| {
        tcp.start_read(&mut lp, move |_, _, r| {
            ev(&l, format!("read {}", read_txt(&r)))
        })
    })
    .unwrap();
    run_to_end(&mut lp, LIMIT);
    no_inside(&log);
    assert_eq!(
        *log.borrow(),
        [
            "connect InvalidState(no address to connect to)",
            "write InvalidState(no address to connect to)",
            "shutdown InvalidState(no address to connect to)",
            "read InvalidState(no address to connect to)"
        ]
    );
    assert!(
        w.is_ok(),
        "write refused before the connect callback ran: {w:?}"
    );
    tcp.close(&mut lp, |_, _| {});
    run_to_end(&mut lp, LIMIT);
}

#[test]
fn tcp_connect_host_unparsable_and_unresolvable() {
    let mut lp = Loop::new().unwrap();
    let log = log();
    for (i, name) in ["no-port-here", "no-such-host.invalid:80", "localhost:99999"]
        .into_iter()
        .enumerate()
    {
        let l = log.clone();
        let tcp = call(|| {
            Tcp::connect_host(&mut lp, name, move |_, _, r| {
                ev(
                    &l,
                    format!("{i} connect {}", if r.is_err() { "err" } else { "ok" }),
                )
            })
        })
        .unwrap();
        let l = log.clone();
        call(|| {
            tcp.write(&mut lp, b"x", move |_, _, r| {
                ev(
                    &l,
                    format!("{i} write {}", if r.is_err() { "err" } else { "ok" }),
                )
            })
        })
        .unwrap();
        let l = log.clone();
        call(|| {
            tcp.start_read(&mut lp, move |lp, t, r| {
                ev(
                    &l,
                    format!("{i} read {}", if r.is_err() { "err" } else { "ok" }),
                );
                t.close(lp, |_, _| {});
            })
        })
        .unwrap();
    }
    run_to_end(&mut lp, Duration::from_secs(30));
    no_inside(&log);
    let mut got = log.borrow().clone();
    got.sort();
    assert_eq!(
        got,
        [
            "0 connect err",
            "0 read err",
            "0 write err",
            "1 connect err",
            "1 read err",
            "1 write err",
            "2 connect err",
            "2 read err",
            "2 write err"
        ]
    );
    assert_eq!(lp.handle_count(), 0);
}

#[test]
fn tcp_connect_host_close_while_resolving_and_timeout_while_resolving() {
    let live = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = live.local_addr().unwrap().port();
    let mut lp = Loop::new().unwrap();
    let log = log();
    // Close at once (resolution still running on the worker).
    let l = log.clone();
    let a = Tcp::connect_host(&mut lp, &format!("127.0.0.1:{port}"), move |_, _, r| {
        ev(&l, format!("a connect {}", txt(&r)))
    })
    .unwrap();
    let l = log.clone();
    a.write(&mut lp, b"x", move |_, _, r| {
        ev(&l, format!("a write {}", txt(&r)))
    })
    .unwrap();
    let l = log.clone();
    call(|| a.close(&mut lp, move |_, _| ev(&l, "a close")));
    // A zero timeout while resolving.
    let l = log.clone();
    let b = Tcp::connect_host(&mut lp, &format!("127.0.0.1:{port}"), move |_, _, r| {
        ev(&l, format!("b connect {}", txt(&r)))
    })
    .unwrap();
    b.set_connect_timeout(&mut lp, Duration::ZERO).unwrap();
    let l = log.clone();
    b.write(&mut lp, b"x", move |_, _, r| {
        ev(&l, format!("b write {}", txt(&r)))
    })
    .unwrap();
    run_to_end(&mut lp, LIMIT);
    no_inside(&log);
    let got = log.borrow().clone();
    let a_events: Vec<_> = got
        .iter()
        .filter(|e| e.starts_with("a "))
        .cloned()
        .collect();
    assert_eq!(
        a_events,
        ["a connect Cancelled", "a write Cancelled", "a close"]
    );
    let b_events: Vec<_> = got
        .iter()
        .filter(|e| e.starts_with("b "))
        .cloned()
        .collect();
    assert_eq!(b_events.len(), 2, "{got:?}");
    b.close(&mut lp, |_, _| {});
    run_to_end(&mut lp, LIMIT);
    assert_eq!(lp.handle_count(), 0);
}

#[test]
fn tcp_he_many_connects_with_mixed_addresses_each_callback_once() {
    // Many handles, each over a mix of refused / black-holed / live, closed at
    // various points. Checks counts only.
    let live = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    live.set_nonblocking(true).unwrap();
    let la = live.local_addr().unwrap();
    let (_r, refused) = util::refused_addr();
    let (_h, _f, hole) = util::black_hole();
    let mut lp = Loop::new().unwrap();
    let counts: Rc<RefCell<Vec<[u32; 4]>>> = Rc::new(RefCell::new(vec![[0; 4]; 40]));
    let inside = Rc::new(Cell::new(0));
    let mut handles = Vec::new();
    for i in 0..40usize {
        let addrs: Vec<SocketAddr> = match i % 5 {
            0 => vec![refused, hole, la],
            1 => vec![hole, refused, la],
            2 => vec![hole, la, refused],
            3 => vec![refused, refused, hole],
            _ => vec![la, hole],
        };
        let c = counts.clone();
        let ins = inside.clone();
        let close_in_cb = i % 3 == 0;
        let tcp = call(|| {
            Tcp::connect_addrs(&mut lp, &addrs, move |lp, tcp, _| {
                if DEPTH.with(|d| d.get()) > 0 {
                    ins.set(ins.get() + 1);
                }
                c.borrow_mut()[i][0] += 1;
                if close_in_cb {
                    let c = c.clone();
                    tcp.close(lp, move |_, _| c.borrow_mut()[i][3] += 1);
                }
            })
        })
        .unwrap();
        if i % 7 == 0 || i % 5 == 3 {
            tcp.set_connect_timeout(&mut lp, Duration::from_millis(260 + (i as u64 * 3)))
                .unwrap();
        }
        let c = counts.clone();
        call(|| tcp.write(&mut lp, b"abc", move |_, _, _| c.borrow_mut()[i][1] += 1)).unwrap();
        let c = counts.clone();
        call(|| tcp.shutdown(&mut lp, move |_, _, _| c.borrow_mut()[i][2] += 1)).unwrap();
        handles.push((tcp, close_in_cb));
    }
    let start = Instant::now();
    let mut closed = [false; 40];
    while lp.run_once().unwrap() {
        assert!(start.elapsed() < Duration::from_secs(20), "hang");
        while live.accept().is_ok() {}
        // Close some from outside at staggered times.
        let ms = start.elapsed().as_millis() as usize;
        for (i, (tcp, in_cb)) in handles.iter().enumerate() {
            if !in_cb && !closed[i] && (i * 37) % 700 < ms {
                closed[i] = true;
                let c = counts.clone();
                tcp.close(&mut lp, move |_, _| c.borrow_mut()[i][3] += 1);
            }
        }
    }
    for (i, (tcp, _)) in handles.iter().enumerate() {
        if !closed[i] {
            let c = counts.clone();
            tcp.close(&mut lp, move |_, _| c.borrow_mut()[i][3] += 1);
        }
    }
    run_to_end(&mut lp, LIMIT);
    assert_eq!(inside.get(), 0);
    for (i, c) in counts.borrow().iter().enumerate() {
        assert_eq!(*c, [1, 1, 1, 1], "handle {i}");
    }
    assert_eq!(lp.handle_count(), 0);
}

// =====================================================================================
// 1b. Tls::connect
// =====================================================================================

fn tls_echo_server(lp: &mut Loop, acceptor: TlsAcceptor) -> (TcpListener, u16) {
    let l = TcpListener::bind(lp, "127.0.0.1:0".parse().unwrap()).unwrap();
    let port = l.local_addr(lp).unwrap().port();
    l.listen(lp, move |lp, _, r| {
        let tls = Tls::server(lp, r.unwrap(), &acceptor).unwrap();
        biotls::echo::echo(lp, tls, biotls::echo::EchoOptions::default()).unwrap();
    })
    .unwrap();
    (l, port)
}

#[test]
fn tls_connect_close_at_once_with_requests_queued() {
    let pki = pki();
    let mut lp = Loop::new().unwrap();
    let (l, port) = tls_echo_server(&mut lp, pki.acceptor().unwrap());
    let log = log();
    let lg = log.clone();
    let tls = call(|| {
        Tls::connect(
            &mut lp,
            &pki.connector().unwrap(),
            &format!("127.0.0.1:{port}"),
            move |_, _, r| ev(&lg, format!("connect {}", txt(&r))),
        )
    })
    .unwrap();
    let lg = log.clone();
    tls.on_handshake(&mut lp, move |_, _, r| {
        ev(&lg, format!("handshake {}", txt(&r)))
    })
    .unwrap();
    queue_write_shutdown_read(&mut lp, tls, &log);
    let lg = log.clone();
    call(|| tls.close(&mut lp, move |_, _| ev(&lg, "close")));
    l.close(&mut lp);
    run_to_end(&mut lp, LIMIT);
    no_inside(&log);
    assert_eq!(
        *log.borrow(),
        [
            "connect Cancelled",
            "handshake Cancelled",
            "write1 Cancelled",
            "write2 Cancelled",
            "shutdown Cancelled",
            "close"
        ]
    );
    assert_eq!(lp.handle_count(), 0);
}

#[test]
fn tls_connect_close_while_tcp_connect_in_flight_after_stagger() {
    let pki = pki();
    let (_h1, _f1, h1) = util::black_hole();
    let mut lp = Loop::new().unwrap();
    let log = log();
    let lg = log.clone();
    let tls = Tls::connect(
        &mut lp,
        &pki.connector().unwrap(),
        &h1.to_string(),
        move |_, _, r| ev(&lg, format!("connect {}", txt(&r))),
    )
    .unwrap();
    queue_write_shutdown_read(&mut lp, tls, &log);
    let start = Instant::now();
    run_until(&mut lp, || start.elapsed() > Duration::from_millis(300));
    let lg = log.clone();
    call(|| tls.close(&mut lp, move |_, _| ev(&lg, "close")));
    run_to_end(&mut lp, LIMIT);
    no_inside(&log);
    assert_eq!(
        *log.borrow(),
        [
            "connect Cancelled",
            "write1 Cancelled",
            "write2 Cancelled",
            "shutdown Cancelled",
            "close"
        ]
    );
    assert_eq!(lp.handle_count(), 0);
}

#[test]
fn tls_connect_refused_with_requests_queued_order() {
    let pki = pki();
    let (_r, refused) = util::refused_addr();
    let mut lp = Loop::new().unwrap();
    let log = log();
    let lg = log.clone();
    let tls = Tls::connect(
        &mut lp,
        &pki.connector().unwrap(),
        &refused.to_string(),
        move |_, _, r| ev(&lg, format!("connect {}", txt(&r))),
    )
    .unwrap();
    queue_write_shutdown_read(&mut lp, tls, &log);
    run_to_end(&mut lp, LIMIT);
    no_inside(&log);
    // Contract (README "Connect failure"): connect cb first, writes, shutdown, reader
    // last.
    assert_eq!(
        *log.borrow(),
        [
            "connect Io(ConnectionRefused)",
            "write1 Io(ConnectionRefused)",
            "write2 Io(ConnectionRefused)",
            "shutdown Io(ConnectionRefused)",
            "read Io(ConnectionRefused)",
        ]
    );
    tls.close(&mut lp, |_, _| {});
    run_to_end(&mut lp, LIMIT);
    assert_eq!(lp.handle_count(), 0);
}

#[test]
fn tls_connect_refused_close_inside_connect_cb_cancels_queued() {
    let pki = pki();
    let (_r, refused) = util::refused_addr();
    let mut lp = Loop::new().unwrap();
    let log = log();
    let lg = log.clone();
    let tls = Tls::connect(
        &mut lp,
        &pki.connector().unwrap(),
        &refused.to_string(),
        move |lp, tls, r| {
            ev(&lg, format!("connect {}", txt(&r)));
            let l2 = lg.clone();
            tls.close(lp, move |_, _| ev(&l2, "close"));
        },
    )
    .unwrap();
    queue_write_shutdown_read(&mut lp, tls, &log);
    run_to_end(&mut lp, LIMIT);
    no_inside(&log);
    // Tcp's contract: "a close inside it cancels them".
    assert_eq!(
        *log.borrow(),
        [
            "connect Io(ConnectionRefused)",
            "write1 Cancelled",
            "write2 Cancelled",
            "shutdown Cancelled",
            "close"
        ]
    );
    assert_eq!(lp.handle_count(), 0);
}

#[test]
fn tls_connect_success_close_inside_connect_cb_with_writes_queued() {
    let pki = pki();
    let mut lp = Loop::new().unwrap();
    let (l, port) = tls_echo_server(&mut lp, pki.acceptor().unwrap());
    let log = log();
    let lg = log.clone();
    let tls = Tls::connect(
        &mut lp,
        &pki.connector().unwrap(),
        &format!("localhost:{port}"),
        move |lp, tls, r| {
            ev(&lg, format!("connect {}", txt(&r)));
            let l2 = lg.clone();
            tls.close(lp, move |_, _| ev(&l2, "close"));
        },
    )
    .unwrap();
    let lg = log.clone();
    tls.on_handshake(&mut lp, move |_, _, r| {
        ev(&lg, format!("handshake {}", txt(&r)))
    })
    .unwrap();
    queue_write_shutdown_read(&mut lp, tls, &log);
    run_until(&mut lp, || log.borrow().iter().any(|e| e == "close"));
    l.close(&mut lp);
    run_to_end(&mut lp, LIMIT);
    no_inside(&log);
    let got = log.borrow().clone();
    assert_eq!(got[0], "connect ok", "{got:?}");
    assert_eq!(got[1], "handshake ok", "{got:?}");
    assert_eq!(got.last().unwrap(), "close", "{got:?}");
    assert_eq!(got.len(), 6, "{got:?}");
    assert!(!got.iter().any(|e| e.starts_with("read")), "{got:?}");
}

#[test]
fn tls_connect_unresolvable_and_timeout() {
    let pki = pki();
    let (_h, _f, hole) = util::black_hole();
    let mut lp = Loop::new().unwrap();
    let log = log();
    let lg = log.clone();
    let t1 = Tls::connect(
        &mut lp,
        &pki.connector().unwrap(),
        "no-such-host.invalid:443",
        move |_, _, r| {
            ev(
                &lg,
                format!("t1 connect {}", if r.is_err() { "err" } else { "ok" }),
            )
        },
    )
    .unwrap();
    let lg = log.clone();
    t1.write(&mut lp, b"x", move |_, _, r| {
        ev(
            &lg,
            format!("t1 write {}", if r.is_err() { "err" } else { "ok" }),
        )
    })
    .unwrap();
    let lg = log.clone();
    t1.start_read(&mut lp, move |_, _, r| {
        ev(
            &lg,
            format!("t1 read {}", if r.is_err() { "err" } else { "ok" }),
        )
    })
    .unwrap();
    let lg = log.clone();
    let t2 = Tls::connect(
        &mut lp,
        &pki.connector().unwrap(),
        &hole.to_string(),
        move |_, _, r| ev(&lg, format!("t2 connect {}", txt(&r))),
    )
    .unwrap();
    t2.set_connect_timeout(&mut lp, Duration::from_millis(300))
        .unwrap();
    let lg = log.clone();
    t2.write(&mut lp, b"x", move |_, _, r| {
        ev(&lg, format!("t2 write {}", txt(&r)))
    })
    .unwrap();
    let lg = log.clone();
    t2.start_read(&mut lp, move |_, _, r| {
        ev(&lg, format!("t2 read {}", read_txt(&r)))
    })
    .unwrap();
    run_to_end(&mut lp, Duration::from_secs(30));
    no_inside(&log);
    let got = log.borrow().clone();
    let t1e: Vec<_> = got
        .iter()
        .filter(|e| e.starts_with("t1"))
        .cloned()
        .collect();
    let t2e: Vec<_> = got
        .iter()
        .filter(|e| e.starts_with("t2"))
        .cloned()
        .collect();
    assert_eq!(
        t1e,
        ["t1 connect err", "t1 write err", "t1 read err"],
        "{got:?}"
    );
    assert_eq!(
        t2e,
        [
            "t2 connect TimedOut(Connect)",
            "t2 write TimedOut(Connect)",
            "t2 read TimedOut(Connect)"
        ],
        "{got:?}"
    );
    assert!(matches!(
        t2.set_connect_timeout(&mut lp, Duration::from_millis(1)),
        Err(Error::InvalidState(_))
    ));
    t1.close(&mut lp, |_, _| {});
    t2.close(&mut lp, |_, _| {});
    run_to_end(&mut lp, LIMIT);
    assert_eq!(lp.handle_count(), 0);
}

#[test]
fn tls_connect_handshake_timeout_against_silent_server() {
    let pki = pki();
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut lp = Loop::new().unwrap();
    let log = log();
    let lg = log.clone();
    let tls = Tls::connect(
        &mut lp,
        &pki.connector().unwrap(),
        &silent.local_addr().unwrap().to_string(),
        move |_, _, r| ev(&lg, format!("connect {}", txt(&r))),
    )
    .unwrap();
    tls.set_handshake_timeout(&mut lp, Some(Duration::from_millis(200)))
        .unwrap();
    queue_write_shutdown_read(&mut lp, tls, &log);
    run_to_end(&mut lp, LIMIT);
    no_inside(&log);
    assert_eq!(
        *log.borrow(),
        [
            "connect TimedOut(Handshake)",
            "write1 TimedOut(Handshake)",
            "write2 TimedOut(Handshake)",
            "shutdown TimedOut(Handshake)",
            "read TimedOut(Handshake)",
        ]
    );
    tls.close(&mut lp, |_, _| {});
    run_to_end(&mut lp, LIMIT);
    drop(silent);
}

#[test]
fn tls_connect_bad_host_port_drops_callback_without_running() {
    let pki = pki();
    let mut lp = Loop::new().unwrap();
    let log = log();
    for bad in [
        "localhost",
        ":443",
        "localhost:",
        "[::1]:99999",
        "host:port",
    ] {
        let lg = log.clone();
        let r = Tls::connect(&mut lp, &pki.connector().unwrap(), bad, move |_, _, _| {
            ev(&lg, "cb")
        });
        assert!(matches!(r, Err(Error::Config(_))), "{bad}: {r:?}");
    }
    run_to_end(&mut lp, LIMIT);
    assert!(log.borrow().is_empty());
    assert_eq!(lp.handle_count(), 0);
}

// =====================================================================================
// 2. STARTTLS / unwrap
// =====================================================================================

/// A client and a server `Tls` over a loopback TCP pair, handshaken.
fn tls_tcp_pair(lp: &mut Loop, pki: &Pki) -> (Tls, Tls) {
    let (a, b) = util::tcp_pair(lp);
    let client = Tls::client(lp, a, &pki.connector().unwrap(), "localhost").unwrap();
    let server = Tls::server(lp, b, &pki.acceptor().unwrap()).unwrap();
    let start = Instant::now();
    while !(client.is_handshake_complete(lp) && server.is_handshake_complete(lp)) {
        assert!(start.elapsed() < LIMIT, "handshake hang");
        lp.run_once().unwrap();
    }
    (client, server)
}

#[test]
fn unwrap_before_handshake_is_refused_without_callback() {
    let pki = pki();
    let mut lp = Loop::new().unwrap();
    let (a, b) = util::tcp_pair(&mut lp);
    let client = Tls::client(&mut lp, a, &pki.connector().unwrap(), "localhost").unwrap();
    let server = Tls::server(&mut lp, b, &pki.acceptor().unwrap()).unwrap();
    let log = log();
    let lg = log.clone();
    let r = call(|| client.unwrap(&mut lp, move |_, r| ev(&lg, format!("unwrap {}", txt(&r)))));
    assert!(matches!(r, Err(Error::InvalidState(_))), "{r:?}");
    client.close(&mut lp, |_, _| {});
    server.close(&mut lp, |_, _| {});
    run_to_end(&mut lp, LIMIT);
    assert!(log.borrow().is_empty());
    assert_eq!(lp.handle_count(), 0);
}

#[test]
fn unwrap_twice_second_refused_first_completes() {
    let pki = pki();
    let mut lp = Loop::new().unwrap();
    let (client, server) = tls_tcp_pair(&mut lp, &pki);
    let log = log();
    let inners: Rc<RefCell<Vec<Tcp>>> = Rc::new(RefCell::new(Vec::new()));
    for (name, t) in [("c", client), ("s", server)] {
        let lg = log.clone();
        let inn = inners.clone();
        call(|| {
            t.unwrap(&mut lp, move |_, r| {
                ev(&lg, format!("{name} unwrap {}", txt(&r)));
                if let Ok((inner, _)) = r {
                    inn.borrow_mut().push(inner);
                }
            })
        })
        .unwrap();
        let lg = log.clone();
        let r2 = call(|| {
            t.unwrap(&mut lp, move |_, r| {
                ev(&lg, format!("{name} unwrap2 {}", txt(&r)))
            })
        });
        assert!(matches!(r2, Err(Error::InvalidState(_))), "{r2:?}");
    }
    run_until(&mut lp, || log.borrow().len() == 2);
    for inner in inners.borrow().iter() {
        inner.close(&mut lp, |_, _| {});
    }
    run_to_end(&mut lp, LIMIT);
    no_inside(&log);
    let mut got = log.borrow().clone();
    got.sort();
    assert_eq!(got, ["c unwrap ok", "s unwrap ok"]);
    assert_eq!(lp.handle_count(), 0);
}

#[test]
fn unwrap_then_close_at_once() {
    let pki = pki();
    let mut lp = Loop::new().unwrap();
    let (client, server) = tls_tcp_pair(&mut lp, &pki);
    let log = log();
    let lg = log.clone();
    let l2 = log.clone();
    client
        .write(&mut lp, b"queued", move |_, _, r| {
            ev(&l2, format!("write {}", txt(&r)))
        })
        .unwrap();
    call(|| client.unwrap(&mut lp, move |_, r| ev(&lg, format!("unwrap {}", txt(&r))))).unwrap();
    let lg = log.clone();
    call(|| client.close(&mut lp, move |_, _| ev(&lg, "close")));
    server.close(&mut lp, |_, _| {});
    run_to_end(&mut lp, LIMIT);
    no_inside(&log);
    let got = log.borrow().clone();
    assert_eq!(got.len(), 3, "{got:?}");
    assert!(got[0].starts_with("write "), "{got:?}");
    assert_eq!(got[1], "unwrap Cancelled", "{got:?}");
    assert_eq!(got[2], "close", "{got:?}");
    assert_eq!(lp.handle_count(), 0);
}

#[test]
fn close_during_unwrap_at_every_step() {
    // Step the loop k times after unwrap on both sides, then close the client.
    for k in 0..12 {
        let pki = pki();
        let mut lp = Loop::new().unwrap();
        let (client, server) = tls_tcp_pair(&mut lp, &pki);
        let log = log();
        let lg = log.clone();
        let l2 = log.clone();
        client
            .write(&mut lp, vec![7u8; 100_000], move |_, _, r| {
                ev(&l2, format!("write {}", txt(&r)))
            })
            .unwrap();
        let inner: Rc<Cell<Option<Tcp>>> = Rc::new(Cell::new(None));
        let inn = inner.clone();
        client
            .unwrap(&mut lp, move |_, r| {
                ev(&lg, format!("unwrap {}", txt(&r)));
                if let Ok((i, _)) = r {
                    inn.set(Some(i));
                }
            })
            .unwrap();
        // Server reads the data, then unwraps after the client's close_notify.
        let srv_inner: Rc<Cell<Option<Tcp>>> = Rc::new(Cell::new(None));
        let si = srv_inner.clone();
        let lg = log.clone();
        server
            .start_read(&mut lp, move |lp, server, r| {
                if let Ok(None) = r {
                    let si = si.clone();
                    let lg = lg.clone();
                    let _ = server.unwrap(lp, move |_, r| {
                        ev(&lg, format!("server unwrap {}", txt(&r)));
                        if let Ok((i, _)) = r {
                            si.set(Some(i));
                        }
                    });
                }
            })
            .unwrap();
        for _ in 0..k {
            lp.run_nowait().unwrap();
        }
        let lg = log.clone();
        call(|| client.close(&mut lp, move |_, _| ev(&lg, "close")));
        let start = Instant::now();
        while lp.run_once().unwrap() {
            assert!(start.elapsed() < LIMIT, "hang at k={k}");
            if log.borrow().iter().any(|e| e.starts_with("server unwrap")) {
                break;
            }
            if log
                .borrow()
                .iter()
                .any(|e| e == "close" || e == "unwrap ok")
                && start.elapsed() > Duration::from_millis(300)
            {
                break;
            }
        }
        if let Some(i) = inner.take() {
            i.close(&mut lp, |_, _| {});
        }
        if let Some(i) = srv_inner.take() {
            i.close(&mut lp, |_, _| {});
        }
        server.close(&mut lp, |_, _| {});
        run_to_end(&mut lp, LIMIT);
        no_inside(&log);
        let got: Vec<String> = log
            .borrow()
            .iter()
            .filter(|e| !e.starts_with("server"))
            .cloned()
            .collect();
        // Either the close came first (unwrap Cancelled, then close) or the unwrap had
        // completed (then close is a no-op on a gone handle: no close callback?).
        let writes = got.iter().filter(|e| e.starts_with("write")).count();
        let unwraps = got.iter().filter(|e| e.starts_with("unwrap")).count();
        assert_eq!(writes, 1, "k={k} {got:?}");
        assert_eq!(unwraps, 1, "k={k} {got:?}");
        let closes = got.iter().filter(|e| *e == "close").count();
        if got.iter().any(|e| e == "unwrap ok") {
            // The unwrap finished first: the handle was gone, `close` did nothing.
            assert_eq!(closes, 0, "k={k} {got:?}");
        } else {
            assert_eq!(closes, 1, "k={k} {got:?}");
            assert_eq!(got.last().unwrap(), "close", "k={k} {got:?}");
        }
        assert_eq!(lp.handle_count(), 0, "k={k}");
    }
}

#[test]
fn unwrap_with_writes_queued_completes_them_first() {
    let pki = pki();
    let mut lp = Loop::new().unwrap();
    let (client, server) = tls_tcp_pair(&mut lp, &pki);
    let log = log();
    for i in 0..3 {
        let lg = log.clone();
        client
            .write(&mut lp, vec![i as u8; 300_000], move |_, _, r| {
                ev(&lg, format!("write{i} {}", txt(&r)))
            })
            .unwrap();
    }
    let lg = log.clone();
    let r = call(|| client.shutdown(&mut lp, |_, _, _| {}));
    // shutdown then unwrap: refused
    assert!(r.is_ok());
    let r = call(|| client.unwrap(&mut lp, move |_, r| ev(&lg, format!("unwrap {}", txt(&r)))));
    assert!(matches!(r, Err(Error::InvalidState(_))), "{r:?}");
    client.close(&mut lp, |_, _| {});
    server.close(&mut lp, |_, _| {});
    run_to_end(&mut lp, LIMIT);
    log.borrow_mut().clear();

    let (client, server) = tls_tcp_pair(&mut lp, &pki);
    for i in 0..3 {
        let lg = log.clone();
        client
            .write(&mut lp, vec![i as u8; 300_000], move |_, _, r| {
                ev(&lg, format!("write{i} {}", txt(&r)))
            })
            .unwrap();
    }
    let lg = log.clone();
    let inner: Rc<Cell<Option<Tcp>>> = Rc::new(Cell::new(None));
    let inn = inner.clone();
    call(|| {
        client.unwrap(&mut lp, move |_, r| {
            ev(&lg, format!("unwrap {}", txt(&r)));
            if let Ok((i, _)) = r {
                inn.set(Some(i));
            }
        })
    })
    .unwrap();
    // Writes after unwrap are refused.
    assert!(matches!(
        client.write(&mut lp, b"late", |_, _, _| {}),
        Err(Error::InvalidState(_))
    ));
    let total = Rc::new(Cell::new(0usize));
    let tt = total.clone();
    let srv_inner: Rc<Cell<Option<Tcp>>> = Rc::new(Cell::new(None));
    let si = srv_inner.clone();
    let lg = log.clone();
    server
        .start_read(&mut lp, move |lp, server, r| match r {
            Ok(Some(d)) => tt.set(tt.get() + d.len()),
            Ok(None) => {
                let si = si.clone();
                let lg = lg.clone();
                server
                    .unwrap(lp, move |_, r| {
                        ev(&lg, format!("server unwrap {}", txt(&r)));
                        if let Ok((i, _)) = r {
                            si.set(Some(i));
                        }
                    })
                    .unwrap();
            }
            Err(e) => ev(&lg, format!("server read {e:?}")),
        })
        .unwrap();
    run_until(&mut lp, || log.borrow().len() == 5);
    no_inside(&log);
    let got = log.borrow().clone();
    assert_eq!(total.get(), 900_000);
    let client_events: Vec<_> = got
        .iter()
        .filter(|e| !e.starts_with("server"))
        .cloned()
        .collect();
    assert_eq!(
        client_events,
        ["write0 ok", "write1 ok", "write2 ok", "unwrap ok"],
        "{got:?}"
    );
    inner.take().unwrap().close(&mut lp, |_, _| {});
    srv_inner.take().unwrap().close(&mut lp, |_, _| {});
    run_to_end(&mut lp, LIMIT);
    assert_eq!(lp.handle_count(), 0);
}

#[test]
fn unwrap_peer_closes_tcp_without_close_notify() {
    let pki = pki();
    let mut lp = Loop::new().unwrap();
    let (client, server) = tls_tcp_pair(&mut lp, &pki);
    let log = log();
    let lg = log.clone();
    client
        .unwrap(&mut lp, move |_, r| ev(&lg, format!("unwrap {}", txt(&r))))
        .unwrap();
    // Close the server's TCP under it: no close_notify.
    let inner = server.inner(&lp).unwrap();
    // Hard close of server: closes its TCP without TLS close_notify.
    server.close(&mut lp, |_, _| {});
    let _ = inner;
    run_until(&mut lp, || !log.borrow().is_empty());
    let lg = log.clone();
    client.close(&mut lp, move |_, _| ev(&lg, "close"));
    run_to_end(&mut lp, LIMIT);
    no_inside(&log);
    let got = log.borrow().clone();
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(
        got[0].starts_with("unwrap ") && got[0] != "unwrap ok",
        "{got:?}"
    );
    assert_eq!(got[1], "close");
    assert_eq!(lp.handle_count(), 0);
}

#[test]
fn unwrap_app_data_before_close_notify_then_read_and_unwrap_again() {
    let pki = pki();
    let mut lp = Loop::new().unwrap();
    let (client, server) = tls_tcp_pair(&mut lp, &pki);
    let log = log();
    // Server sends data, then close_notify (shutdown over TLS: the TCP is half-closed
    // too; use unwrap on the server instead so TCP stays open).
    server
        .write(&mut lp, b"pending-data", |_, _, r| r.unwrap())
        .unwrap();
    let srv_inner: Rc<Cell<Option<Tcp>>> = Rc::new(Cell::new(None));
    // Give the data time to arrive at the client before the client unwraps.
    let start = Instant::now();
    run_until(&mut lp, || start.elapsed() > Duration::from_millis(100));
    let lg = log.clone();
    client
        .unwrap(&mut lp, move |_, r| ev(&lg, format!("unwrap1 {}", txt(&r))))
        .unwrap();
    run_until(&mut lp, || !log.borrow().is_empty());
    assert!(
        log.borrow()[0].starts_with("unwrap1 InvalidState"),
        "{:?}",
        log.borrow()
    );
    // Now the server unwraps (sends close_notify); the client reads the data first.
    let si = srv_inner.clone();
    let lg = log.clone();
    server
        .start_read(&mut lp, move |lp, server, r| {
            ev(&lg, format!("server read {}", read_txt(&r)));
            if let Ok(None) = r {
                let si = si.clone();
                let lg = lg.clone();
                server
                    .unwrap(lp, move |_, r| {
                        ev(&lg, format!("server unwrap {}", txt(&r)));
                        if let Ok((i, _)) = r {
                            si.set(Some(i));
                        }
                    })
                    .unwrap();
            }
        })
        .unwrap();
    let lg = log.clone();
    let cli_inner: Rc<Cell<Option<Tcp>>> = Rc::new(Cell::new(None));
    let ci = cli_inner.clone();
    client
        .start_read(&mut lp, move |lp, client, r| {
            ev(&lg, format!("client read {}", read_txt(&r)));
            if let Ok(None) = r {
                let ci = ci.clone();
                let lgc = lg.clone();
                let res = client.unwrap(lp, move |_, r| {
                    ev(&lgc, format!("unwrap2 {}", txt(&r)));
                    if let Ok((i, _)) = r {
                        ci.set(Some(i));
                    }
                });
                if let Err(e) = res {
                    ev(&lg, format!("unwrap2 refused {e:?}"));
                }
            }
        })
        .unwrap();
    run_until(&mut lp, || {
        log.borrow().iter().any(|e| e.starts_with("unwrap2"))
            && log.borrow().iter().any(|e| e.starts_with("server unwrap"))
    });
    no_inside(&log);
    let got = log.borrow().clone();
    assert!(
        got.contains(&"client read data pending-data".to_owned()),
        "{got:?}"
    );
    assert!(got.contains(&"unwrap2 ok".to_owned()), "{got:?}");
    if let Some(i) = cli_inner.take() {
        i.close(&mut lp, |_, _| {});
    }
    if let Some(i) = srv_inner.take() {
        i.close(&mut lp, |_, _| {});
    }
    client.close(&mut lp, |_, _| {});
    server.close(&mut lp, |_, _| {});
    run_to_end(&mut lp, LIMIT);
    assert_eq!(lp.handle_count(), 0);
}

/// start_read on the Tls between loop iterations while an unwrap finishes: a reader
/// whose start_read returned Ok must hear something (data or an ending) unless the
/// handle is gone (then: is that documented?).
#[test]
fn start_read_racing_the_end_of_unwrap() {
    let pki = pki();
    let mut lp = Loop::new().unwrap();
    let (client, server) = tls_tcp_pair(&mut lp, &pki);
    let log = log();
    let lg = log.clone();
    let cinner: Rc<Cell<Option<Tcp>>> = Rc::new(Cell::new(None));
    let ci = cinner.clone();
    // Server unwraps first (its close_notify reaches the client).
    let si: Rc<Cell<Option<Tcp>>> = Rc::new(Cell::new(None));
    let s2 = si.clone();
    server
        .unwrap(&mut lp, move |_, r| {
            if let Ok((i, _)) = r {
                s2.set(Some(i));
            }
        })
        .unwrap();
    let start = Instant::now();
    run_until(&mut lp, || start.elapsed() > Duration::from_millis(100));
    client
        .unwrap(&mut lp, move |_, r| {
            ev(&lg, format!("unwrap {}", txt(&r)));
            if let Ok((i, _)) = r {
                ci.set(Some(i));
            }
        })
        .unwrap();
    let mut accepted_reads = 0;
    let readers_heard = Rc::new(Cell::new(0));
    let start = Instant::now();
    loop {
        let rh = readers_heard.clone();
        let lg = log.clone();
        match client.start_read(&mut lp, move |_, _, r| {
            rh.set(rh.get() + 1);
            ev(&lg, format!("read {}", read_txt(&r)));
        }) {
            Ok(()) => accepted_reads += 1,
            Err(_) => break,
        }
        if !lp.run_nowait().unwrap() {
            break;
        }
        assert!(start.elapsed() < LIMIT);
    }
    run_to_end(&mut lp, LIMIT);
    no_inside(&log);
    let got = log.borrow().clone();
    assert!(got.contains(&"unwrap ok".to_owned()), "{got:?}");
    // The last accepted reader replaced the earlier ones; did it hear anything?
    assert!(
        readers_heard.get() >= 1,
        "start_read returned Ok {accepted_reads} times but no reader ever ran: {got:?}"
    );
    if let Some(i) = cinner.take() {
        i.close(&mut lp, |_, _| {});
    }
    if let Some(i) = si.take() {
        i.close(&mut lp, |_, _| {});
    }
    run_to_end(&mut lp, LIMIT);
    assert_eq!(lp.handle_count(), 0);
}

#[test]
fn server_upgrade_then_close_at_once_and_unwrap_of_upgraded() {
    let pki = pki();
    let mut lp = Loop::new().unwrap();
    let (a, b) = util::tcp_pair(&mut lp);
    let log = log();
    // Plaintext reader on b, then upgrade with a write queued on the inner stream.
    let lg = log.clone();
    b.start_read(&mut lp, move |_, _, r| {
        ev(&lg, format!("plain read {}", read_txt(&r)))
    })
    .unwrap();
    let lg = log.clone();
    b.write(&mut lp, b"220 go ahead\r\n", move |_, _, r| {
        ev(&lg, format!("plain write {}", txt(&r)))
    })
    .unwrap();
    let srv =
        call(|| Tls::server_upgrade(&mut lp, b, &pki.acceptor().unwrap(), Bytes::new())).unwrap();
    let cli = call(|| {
        Tls::client_upgrade(
            &mut lp,
            a,
            &pki.connector().unwrap(),
            "localhost",
            Bytes::new(),
        )
    })
    .unwrap();
    // upgrading an already wrapped stream: refused
    assert!(matches!(
        Tls::server_upgrade(&mut lp, b, &pki.acceptor().unwrap(), Bytes::new()),
        Err(Error::InvalidState(_))
    ));
    let lg = log.clone();
    srv.on_handshake(&mut lp, move |_, _, r| {
        ev(&lg, format!("srv handshake {}", txt(&r)))
    })
    .unwrap();
    let lg = log.clone();
    call(|| srv.close(&mut lp, move |_, _| ev(&lg, "srv close")));
    let lg = log.clone();
    cli.on_handshake(&mut lp, move |lp, cli, r| {
        ev(
            &lg,
            format!("cli handshake {}", if r.is_ok() { "ok" } else { "err" }),
        );
        cli.close(lp, |_, _| {});
    })
    .unwrap();
    run_to_end(&mut lp, LIMIT);
    no_inside(&log);
    let got = log.borrow().clone();
    assert_eq!(
        got.iter()
            .filter(|e| e.starts_with("srv handshake"))
            .count(),
        1
    );
    assert_eq!(got.iter().filter(|e| *e == "srv close").count(), 1);
    assert_eq!(
        got.iter().filter(|e| e.starts_with("plain write")).count(),
        1
    );
    assert_eq!(
        got.iter()
            .filter(|e| e.starts_with("cli handshake"))
            .count(),
        1
    );
    assert!(!got.iter().any(|e| e.starts_with("plain read")), "{got:?}");
    assert_eq!(lp.handle_count(), 0);
}

// =====================================================================================
// 3. on_drain
// =====================================================================================

#[test]
fn tcp_on_drain_replaced_inside_own_callback_and_close_inside() {
    let mut lp = Loop::new().unwrap();
    let (a, b) = util::tcp_pair(&mut lp);
    let log = log();
    let lg = log.clone();
    call(|| {
        a.on_drain(&mut lp, 0, move |lp, a, r| {
            ev(&lg, format!("d1 {}", txt(&r)));
            let lg2 = lg.clone();
            call(|| {
                a.on_drain(lp, 0, move |lp, a, r| {
                    ev(&lg2, format!("d2 {}", txt(&r)));
                    let lg3 = lg2.clone();
                    call(|| a.on_drain(lp, 0, move |_, _, r| ev(&lg3, format!("d3 {}", txt(&r)))))
                        .unwrap();
                    let lg4 = lg2.clone();
                    call(|| a.close(lp, move |_, _| ev(&lg4, "close")));
                })
            })
            .unwrap();
        })
    })
    .unwrap();
    run_to_end(&mut lp, Duration::from_secs(2));
    no_inside(&log);
    assert_eq!(*log.borrow(), ["d1 ok", "d2 ok", "d3 Cancelled", "close"]);
    b.close(&mut lp, |_, _| {});
    run_to_end(&mut lp, LIMIT);
}

#[test]
fn tcp_on_drain_after_connect_failure_and_during_connect() {
    let (_r, refused) = util::refused_addr();
    let mut lp = Loop::new().unwrap();
    let log = log();
    let lg = log.clone();
    let tcp = Tcp::connect(&mut lp, refused, move |_, _, r| {
        ev(&lg, format!("connect {}", txt(&r)))
    })
    .unwrap();
    let lg = log.clone();
    tcp.write(&mut lp, b"x", move |_, _, r| {
        ev(&lg, format!("write {}", txt(&r)))
    })
    .unwrap();
    let lg = log.clone();
    call(|| {
        tcp.on_drain(&mut lp, 0, move |_, _, r| {
            ev(&lg, format!("drain {}", txt(&r)))
        })
    })
    .unwrap();
    let lg = log.clone();
    tcp.start_read(&mut lp, move |_, _, r| {
        ev(&lg, format!("read {}", read_txt(&r)))
    })
    .unwrap();
    run_to_end(&mut lp, LIMIT);
    let lg = log.clone();
    call(|| {
        tcp.on_drain(&mut lp, 0, move |_, _, r| {
            ev(&lg, format!("late drain {}", txt(&r)))
        })
    })
    .unwrap();
    run_to_end(&mut lp, LIMIT);
    no_inside(&log);
    let got = log.borrow().clone();
    assert_eq!(got.len(), 5, "{got:?}");
    assert_eq!(got[0], "connect Io(ConnectionRefused)");
    assert_eq!(got[1], "write Io(ConnectionRefused)");
    assert_eq!(got[4], "late drain Io(ConnectionRefused)");
    // README: "A reader started before the connect gets that error last."
    assert_eq!(
        got[2..4],
        ["drain Io(ConnectionRefused)", "read Io(ConnectionRefused)"],
        "{got:?}"
    );
    tcp.close(&mut lp, |_, _| {});
    run_to_end(&mut lp, LIMIT);
}

#[test]
fn tls_on_drain_replaced_inside_own_callback_close_inside_and_after_failure() {
    let pki = pki();
    let mut lp = Loop::new().unwrap();
    let (client, server) = tls_tcp_pair(&mut lp, &pki);
    let log = log();
    server.start_read(&mut lp, |_, _, _| {}).unwrap();
    client
        .write(&mut lp, vec![1u8; 4 << 20], |_, _, _| {})
        .unwrap();
    let lg = log.clone();
    call(|| {
        client.on_drain(&mut lp, 0, move |lp, c, r| {
            ev(&lg, format!("d1 {}", txt(&r)));
            let lg2 = lg.clone();
            call(|| c.write(lp, vec![2u8; 1 << 20], |_, _, _| {})).unwrap();
            call(|| {
                c.on_drain(lp, 1000, move |lp, c, r| {
                    ev(&lg2, format!("d2 {}", txt(&r)));
                    let lg3 = lg2.clone();
                    call(|| c.on_drain(lp, 0, move |_, _, r| ev(&lg3, format!("d3 {}", txt(&r)))))
                        .unwrap();
                    let lg4 = lg2.clone();
                    call(|| c.close(lp, move |_, _| ev(&lg4, "close")));
                })
            })
            .unwrap();
        })
    })
    .unwrap();
    run_until(&mut lp, || log.borrow().iter().any(|e| e == "close"));
    no_inside(&log);
    assert_eq!(*log.borrow(), ["d1 ok", "d2 ok", "d3 Cancelled", "close"]);
    // After the failure of the server (its peer closed without close_notify).
    let start = Instant::now();
    while server.failure(&lp).is_none() {
        assert!(start.elapsed() < LIMIT, "server never failed");
        lp.run_once().unwrap();
    }
    let lg = log.clone();
    call(|| {
        server.on_drain(&mut lp, 0, move |_, _, r| {
            ev(&lg, format!("failed drain {}", txt(&r)))
        })
    })
    .unwrap();
    run_until(&mut lp, || log.borrow().len() == 5);
    no_inside(&log);
    assert!(
        log.borrow()[4].starts_with("failed drain "),
        "{:?}",
        log.borrow()
    );
    assert_ne!(log.borrow()[4], "failed drain ok");
    server.close(&mut lp, |_, _| {});
    run_to_end(&mut lp, LIMIT);
    assert_eq!(lp.handle_count(), 0);
}

#[test]
fn tls_on_drain_during_tls_connect_then_connect_fails() {
    let pki = pki();
    let (_r, refused) = util::refused_addr();
    let mut lp = Loop::new().unwrap();
    let log = log();
    let lg = log.clone();
    let tls = Tls::connect(
        &mut lp,
        &pki.connector().unwrap(),
        &refused.to_string(),
        move |_, _, r| ev(&lg, format!("connect {}", txt(&r))),
    )
    .unwrap();
    let lg = log.clone();
    tls.write(&mut lp, b"x", move |_, _, r| {
        ev(&lg, format!("write {}", txt(&r)))
    })
    .unwrap();
    let lg = log.clone();
    call(|| {
        tls.on_drain(&mut lp, 0, move |_, _, r| {
            ev(&lg, format!("drain {}", txt(&r)))
        })
    })
    .unwrap();
    run_to_end(&mut lp, LIMIT);
    no_inside(&log);
    let got = log.borrow().clone();
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(got[0], "connect Io(ConnectionRefused)", "{got:?}");
    tls.close(&mut lp, |_, _| {});
    run_to_end(&mut lp, LIMIT);
}

#[test]
fn tls_on_drain_due_then_failure_before_recheck() {
    // Watcher due (empty queue) and the handle closed in the same turn.
    let pki = pki();
    let mut lp = Loop::new().unwrap();
    let (client, server) = tls_tcp_pair(&mut lp, &pki);
    let log = log();
    let lg = log.clone();
    client
        .on_drain(&mut lp, 0, move |_, _, r| {
            ev(&lg, format!("drain {}", txt(&r)))
        })
        .unwrap();
    let lg = log.clone();
    client.close(&mut lp, move |_, _| ev(&lg, "close"));
    server.close(&mut lp, |_, _| {});
    run_to_end(&mut lp, LIMIT);
    assert_eq!(*log.borrow(), ["drain Cancelled", "close"]);
    // Tcp: the same.
    let (a, b) = util::tcp_pair(&mut lp);
    let lg = log.clone();
    a.on_drain(&mut lp, 0, move |_, _, r| {
        ev(&lg, format!("tcp drain {}", txt(&r)))
    })
    .unwrap();
    let lg = log.clone();
    a.close(&mut lp, move |_, _| ev(&lg, "tcp close"));
    b.close(&mut lp, |_, _| {});
    run_to_end(&mut lp, LIMIT);
    assert_eq!(log.borrow()[2..], ["tcp drain Cancelled", "tcp close"]);
    assert_eq!(lp.handle_count(), 0);
}

#[test]
fn tls_on_drain_during_unwrap() {
    let pki = pki();
    let mut lp = Loop::new().unwrap();
    let (client, server) = tls_tcp_pair(&mut lp, &pki);
    let log = log();
    client
        .write(&mut lp, vec![3u8; 1 << 20], |_, _, _| {})
        .unwrap();
    let lg = log.clone();
    let ci: Rc<Cell<Option<Tcp>>> = Rc::new(Cell::new(None));
    let c2 = ci.clone();
    client
        .unwrap(&mut lp, move |_, r| {
            ev(&lg, format!("unwrap {}", txt(&r)));
            if let Ok((i, _)) = r {
                c2.set(Some(i));
            }
        })
        .unwrap();
    let lg = log.clone();
    call(|| {
        client.on_drain(&mut lp, 0, move |_, _, r| {
            ev(&lg, format!("drain {}", txt(&r)))
        })
    })
    .unwrap();
    let si: Rc<Cell<Option<Tcp>>> = Rc::new(Cell::new(None));
    let s2 = si.clone();
    server
        .start_read(&mut lp, move |lp, s, r| {
            if let Ok(None) = r {
                let s3 = s2.clone();
                s.unwrap(lp, move |_, r| {
                    if let Ok((i, _)) = r {
                        s3.set(Some(i));
                    }
                })
                .unwrap();
            }
        })
        .unwrap();
    run_until(&mut lp, || {
        log.borrow().iter().any(|e| e.starts_with("unwrap"))
    });
    no_inside(&log);
    assert_eq!(log.borrow().len(), 2);
    assert_eq!(log.borrow()[1], "unwrap ok");
    run_until(&mut lp, || si.get().map(|_| true).unwrap_or(false));
    ci.take().unwrap().close(&mut lp, |_, _| {});
    si.take().unwrap().close(&mut lp, |_, _| {});
    run_to_end(&mut lp, LIMIT);
    assert_eq!(lp.handle_count(), 0);
}

// =====================================================================================
// 4. TlsAcceptor::replace while handshakes are in progress
// =====================================================================================

#[test]
fn acceptor_replace_at_every_step_of_many_handshakes() {
    let pki = pki();
    let other = pki.issue_server(&["localhost"]).unwrap();
    let acceptor = pki.acceptor().unwrap();
    let b_old = || {
        TlsAcceptor::builder(
            pki.server_chain_pem.as_bytes(),
            pki.server_key_pem.as_bytes(),
        )
        .unwrap()
    };
    let b_new =
        || TlsAcceptor::builder(other.chain_pem.as_bytes(), other.key_pem.as_bytes()).unwrap();
    let mut lp = Loop::new().unwrap();
    let l = TcpListener::bind(&mut lp, "127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = l.local_addr(&lp).unwrap();
    let log = log();
    let acc = acceptor.clone();
    let lg = log.clone();
    l.listen(&mut lp, move |lp, _, r| {
        let tls = Tls::server(lp, r.unwrap(), &acc).unwrap();
        let lg2 = lg.clone();
        tls.on_handshake(lp, move |lp, tls, r| {
            ev(&lg2, format!("server hs {}", txt(&r)));
            if r.is_err() {
                tls.close(lp, |_, _| {});
            }
        })
        .unwrap();
        biotls::echo::echo(lp, tls, biotls::echo::EchoOptions::default()).unwrap();
    })
    .unwrap();
    let connector = pki.connector().unwrap();
    const N: usize = 30;
    let done = Rc::new(Cell::new(0));
    for i in 0..N {
        let tcp = Tcp::connect(&mut lp, addr, |_, _, _| {}).unwrap();
        let tls = Tls::client(&mut lp, tcp, &connector, "localhost").unwrap();
        let lg = log.clone();
        tls.on_handshake(&mut lp, move |_, _, r| {
            ev(&lg, format!("client {i} hs {}", txt(&r)))
        })
        .unwrap();
        tls.write(&mut lp, b"ping", |_, _, _| {}).unwrap();
        let d = done.clone();
        let lg = log.clone();
        tls.start_read(&mut lp, move |lp, tls, r| {
            ev(&lg, format!("client {i} read {}", read_txt(&r)));
            d.set(d.get() + 1);
            tls.close(lp, |_, _| {});
        })
        .unwrap();
    }
    let start = Instant::now();
    let mut flip = false;
    while done.get() < N {
        assert!(start.elapsed() < LIMIT, "hang: {:?}", log.borrow());
        acceptor
            .replace(if flip { b_old() } else { b_new() })
            .unwrap();
        flip = !flip;
        lp.run_nowait().unwrap();
        std::thread::sleep(Duration::from_micros(200));
    }
    l.close(&mut lp);
    run_to_end(&mut lp, LIMIT);
    no_inside(&log);
    let got = log.borrow().clone();
    for i in 0..N {
        let hs: Vec<_> = got
            .iter()
            .filter(|e| e.starts_with(&format!("client {i} hs")))
            .collect();
        assert_eq!(hs, [&format!("client {i} hs ok")], "{got:?}");
        let rd: Vec<_> = got
            .iter()
            .filter(|e| e.starts_with(&format!("client {i} read")))
            .collect();
        assert_eq!(rd, [&format!("client {i} read data ping")], "{got:?}");
    }
    assert_eq!(got.iter().filter(|e| *e == "server hs ok").count(), N);
    assert_eq!(lp.handle_count(), 0);
}

#[test]
fn acceptor_replace_with_client_cert_policy_mid_handshake_from_a_thread() {
    // Replace (alternating policies: with and without require_client_cert) from another
    // thread as fast as possible while handshakes run; each handshake must complete
    // exactly once, Ok or Err, and nothing may hang or panic.
    let pki = pki();
    let acceptor = pki.acceptor().unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (chain, key, ca) = (
        pki.server_chain_pem.clone(),
        pki.server_key_pem.clone(),
        pki.ca_pem.clone(),
    );
    let acc2 = acceptor.clone();
    let st = stop.clone();
    let replacer = std::thread::spawn(move || {
        let mut n = 0u64;
        while !st.load(std::sync::atomic::Ordering::Relaxed) {
            let b = TlsAcceptor::builder(chain.as_bytes(), key.as_bytes()).unwrap();
            let b = if n.is_multiple_of(2) {
                b.require_client_cert(ca.as_bytes()).unwrap()
            } else {
                b
            };
            acc2.replace(b).unwrap();
            n += 1;
        }
        n
    });
    let mut lp = Loop::new().unwrap();
    let l = TcpListener::bind(&mut lp, "127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = l.local_addr(&lp).unwrap();
    let log = log();
    let lg = log.clone();
    l.listen(&mut lp, move |lp, _, r| {
        let tls = Tls::server(lp, r.unwrap(), &acceptor).unwrap();
        let lg2 = lg.clone();
        tls.on_handshake(lp, move |_, _, r| {
            ev(
                &lg2,
                format!("server hs {}", if r.is_ok() { "ok" } else { "err" }),
            )
        })
        .unwrap();
        let _ = biotls::echo::echo(lp, tls, biotls::echo::EchoOptions::default());
    })
    .unwrap();
    let connector = pki.connector().unwrap();
    const N: usize = 40;
    let done = Rc::new(Cell::new(0));
    for i in 0..N {
        let tcp = Tcp::connect(&mut lp, addr, |_, _, _| {}).unwrap();
        let tls = Tls::client(&mut lp, tcp, &connector, "localhost").unwrap();
        let lg = log.clone();
        tls.on_handshake(&mut lp, move |_, _, r| {
            ev(
                &lg,
                format!("client {i} hs {}", if r.is_ok() { "ok" } else { "err" }),
            )
        })
        .unwrap();
        tls.write(&mut lp, b"ping", |_, _, _| {}).unwrap();
        let d = done.clone();
        tls.start_read(&mut lp, move |lp, tls, _| {
            d.set(d.get() + 1);
            tls.close(lp, |_, _| {});
        })
        .unwrap();
    }
    util::run_until(&mut lp, LIMIT, || done.get() == N);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let replacements = replacer.join().unwrap();
    assert!(replacements > 0);
    l.close(&mut lp);
    // Server handles left (echo closes on error/eof).
    run_to_end(&mut lp, LIMIT);
    no_inside(&log);
    let got = log.borrow().clone();
    for i in 0..N {
        let hs = got
            .iter()
            .filter(|e| e.starts_with(&format!("client {i} hs")))
            .count();
        assert_eq!(hs, 1, "client {i}: {got:?}");
    }
    let shs = got.iter().filter(|e| e.starts_with("server hs")).count();
    assert_eq!(shs, N, "{got:?}");
    assert_eq!(lp.handle_count(), 0);
}

#[test]
fn acceptor_replace_inside_callbacks_and_with_expired_cert() {
    let pki = pki();
    let expired = Pki::generate_expired_server(&["localhost"]).unwrap();
    let acceptor = pki.acceptor().unwrap();
    // Refused: expired leaf, old configuration kept.
    let r = acceptor.replace(
        TlsAcceptor::builder(
            expired.server_chain_pem.as_bytes(),
            expired.server_key_pem.as_bytes(),
        )
        .unwrap(),
    );
    assert!(matches!(r, Err(Error::Config(_))), "{r:?}");
    let mut lp = Loop::new().unwrap();
    let (a, b) = util::tcp_pair(&mut lp);
    let server = Tls::server(&mut lp, b, &acceptor).unwrap();
    let client = Tls::client(&mut lp, a, &pki.connector().unwrap(), "localhost").unwrap();
    let log = log();
    let acc = acceptor.clone();
    let (c, k) = (pki.server_chain_pem.clone(), pki.server_key_pem.clone());
    let lg = log.clone();
    server
        .on_handshake(&mut lp, move |_, _, r| {
            acc.replace(TlsAcceptor::builder(c.as_bytes(), k.as_bytes()).unwrap())
                .unwrap();
            ev(&lg, format!("server hs {}", txt(&r)))
        })
        .unwrap();
    let lg = log.clone();
    client
        .on_handshake(&mut lp, move |_, _, r| {
            ev(&lg, format!("client hs {}", txt(&r)))
        })
        .unwrap();
    run_until(&mut lp, || log.borrow().len() == 2);
    client.close(&mut lp, |_, _| {});
    server.close(&mut lp, |_, _| {});
    run_to_end(&mut lp, LIMIT);
    no_inside(&log);
    let mut got = log.borrow().clone();
    got.sort();
    assert_eq!(got, ["client hs ok", "server hs ok"]);
}

/// A failed connect: the drain watcher hears the error with the writes, before the
/// reader (who hears it last).
#[test]
fn tcp_connect_failure_reaches_the_drain_watcher_before_the_reader() {
    let (_r, refused) = util::refused_addr();
    let mut lp = Loop::new().unwrap();
    let log = log();
    let tcp = Tcp::connect(&mut lp, refused, |_, _, _| {}).unwrap();
    tcp.write(&mut lp, b"x", |_, _, _| {}).unwrap();
    let lg = log.clone();
    tcp.on_drain(&mut lp, 0, move |_, _, r| {
        ev(&lg, format!("drain {}", txt(&r)))
    })
    .unwrap();
    let lg = log.clone();
    tcp.start_read(&mut lp, move |_, _, r| {
        ev(&lg, format!("read {}", read_txt(&r)))
    })
    .unwrap();
    run_to_end(&mut lp, LIMIT);
    assert_eq!(
        *log.borrow(),
        ["drain Io(ConnectionRefused)", "read Io(ConnectionRefused)"],
        "reader is not last"
    );
}

/// `Tls::connect` refused: the queued write hears the error, then the reader (last), as
/// over a `Tcp` whose connect failed.
#[test]
fn tls_connect_failure_reaches_the_writes_before_the_reader() {
    let pki = pki();
    let (_r, refused) = util::refused_addr();
    let mut lp = Loop::new().unwrap();
    let log = log();
    let tls = Tls::connect(
        &mut lp,
        &pki.connector().unwrap(),
        &refused.to_string(),
        |_, _, _| {},
    )
    .unwrap();
    let lg = log.clone();
    tls.write(&mut lp, b"x", move |_, _, r| {
        ev(&lg, format!("write {}", txt(&r)))
    })
    .unwrap();
    let lg = log.clone();
    tls.start_read(&mut lp, move |_, _, r| {
        ev(&lg, format!("read {}", read_txt(&r)))
    })
    .unwrap();
    run_to_end(&mut lp, LIMIT);
    assert_eq!(
        *log.borrow(),
        ["write Io(ConnectionRefused)", "read Io(ConnectionRefused)"]
    );
    tls.close(&mut lp, |_, _| {});
    run_to_end(&mut lp, LIMIT);
}

/// `Tls::connect` refused, close inside the connect callback: the queued write is
/// cancelled, as over a `Tcp`.
#[test]
fn tls_connect_failure_close_in_the_callback_cancels_the_writes() {
    let pki = pki();
    let (_r, refused) = util::refused_addr();
    let mut lp = Loop::new().unwrap();
    let log = log();
    let tls = Tls::connect(
        &mut lp,
        &pki.connector().unwrap(),
        &refused.to_string(),
        |lp, tls, _| tls.close(lp, |_, _| {}),
    )
    .unwrap();
    let lg = log.clone();
    tls.write(&mut lp, b"x", move |_, _, r| {
        ev(&lg, format!("write {}", txt(&r)))
    })
    .unwrap();
    run_to_end(&mut lp, LIMIT);
    assert_eq!(*log.borrow(), ["write Cancelled"]);
}

/// `Tls::connect` succeeds and the connect callback closes: the handshake callback runs
/// before the write callbacks.
#[test]
fn tls_connect_close_in_the_callback_reports_the_handshake_before_the_writes() {
    let pki = pki();
    let mut lp = Loop::new().unwrap();
    let (l, port) = tls_echo_server(&mut lp, pki.acceptor().unwrap());
    let log = log();
    let lg = log.clone();
    let tls = Tls::connect(
        &mut lp,
        &pki.connector().unwrap(),
        &format!("localhost:{port}"),
        move |lp, tls, r| {
            ev(&lg, format!("connect {}", txt(&r)));
            tls.close(lp, |_, _| {});
        },
    )
    .unwrap();
    let lg = log.clone();
    tls.on_handshake(&mut lp, move |_, _, r| {
        ev(&lg, format!("handshake {}", txt(&r)))
    })
    .unwrap();
    let lg = log.clone();
    tls.write(&mut lp, b"x", move |_, _, r| {
        ev(&lg, format!("write {}", txt(&r)))
    })
    .unwrap();
    run_until(&mut lp, || log.borrow().len() == 3);
    l.close(&mut lp);
    run_to_end(&mut lp, LIMIT);
    assert_eq!(*log.borrow(), ["connect ok", "handshake ok", "write ok"]);
}

/// `start_read` while an unwrap is finishing (after the last condition was met, before the
/// inner stream is handed back) is refused, like `on_drain`: a reader would never run.
#[test]
fn start_read_while_an_unwrap_finishes_is_refused() {
    let pki = pki();
    let mut hits = 0;
    for _round in 0..20 {
        let mut lp = Loop::new().unwrap();
        let (client, server) = tls_tcp_pair(&mut lp, &pki);
        let si: Rc<Cell<Option<Tcp>>> = Rc::new(Cell::new(None));
        let s2 = si.clone();
        // The server consumes whatever comes, and unwraps at once.
        server.start_read(&mut lp, |_, _, _| {}).unwrap();
        server
            .unwrap(&mut lp, move |_, r| {
                if let Ok((i, _)) = r {
                    s2.set(Some(i));
                }
            })
            .unwrap();
        // Many writes: the unwrap's last condition is the ack of the last one, which
        // the inner Tcp reports from a writable event (completed in the loop's
        // end-of-iteration deferred pass).
        for _ in 0..16 {
            client
                .write(&mut lp, vec![9u8; 1 << 20], |_, _, _| {})
                .unwrap();
        }
        let log = log();
        let ci: Rc<Cell<Option<Tcp>>> = Rc::new(Cell::new(None));
        let c2 = ci.clone();
        let lg = log.clone();
        client
            .unwrap(&mut lp, move |_, r| {
                ev(&lg, format!("unwrap {}", txt(&r)));
                if let Ok((i, _)) = r {
                    c2.set(Some(i));
                }
            })
            .unwrap();
        let start = Instant::now();
        let mut started = None;
        loop {
            assert!(start.elapsed() < LIMIT);
            match client.on_drain(&mut lp, usize::MAX, |_, _, _| {}) {
                Err(Error::InvalidState(_)) => {
                    // Finishing: the Tls is still open for the user.
                    let lg = log.clone();
                    let r = client.start_read(&mut lp, move |_, _, r| {
                        ev(&lg, format!("read {}", read_txt(&r)))
                    });
                    let lg = log.clone();
                    let h = client.on_handshake(&mut lp, move |_, _, r| {
                        ev(&lg, format!("handshake {}", txt(&r)))
                    });
                    let w = client.write(&mut lp, b"x", |_, _, _| {});
                    started = Some((r, h, w));
                    break;
                }
                Err(_) => break,
                Ok(()) => {}
            }
            lp.run_nowait().unwrap();
        }
        run_to_end(&mut lp, LIMIT);
        if let Some((r, h, w)) = started {
            hits += 1;
            assert!(
                matches!(r, Err(Error::InvalidState(_))),
                "start_read while finishing: {r:?}"
            );
            assert!(h.is_ok(), "on_handshake while finishing: {h:?}");
            assert!(w.is_err(), "write after unwrap: {w:?}");
            // The handshake callback ran (with its known outcome), then the unwrap's.
            assert_eq!(*log.borrow(), ["handshake ok", "unwrap ok"]);
        }
        if let Some(i) = ci.take() {
            i.close(&mut lp, |_, _| {});
        }
        if let Some(i) = si.take() {
            i.close(&mut lp, |_, _| {});
        }
        run_to_end(&mut lp, LIMIT);
        assert_eq!(lp.handle_count(), 0);
        if hits > 0 {
            break;
        }
    }
    assert!(hits > 0, "no round reached the finishing window");
}
