//! The `Tls` handle's callback contract on the call orders that broke it (the first four
//! over loopback TCP), and the bounds and ownership rules, over `Duplex`.

mod util;

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use biotls::duplex::Fault;
use biotls::echo::{EchoOptions, echo};
use biotls::pki::Pki;
use biotls::tls::{Tls, TlsSession};
use biotls::{Duplex, Error, Loop, Stream, Tcp, TcpListener, Timer};
use util::raw_peer::RawPeer;
use util::run_until;

const LIMIT: Duration = Duration::from_secs(20);

fn pki() -> Pki {
    Pki::generate(&["localhost"]).unwrap()
}

type Log = Rc<RefCell<Vec<String>>>;

fn log() -> Log {
    Rc::new(RefCell::new(Vec::new()))
}

fn note(log: &Log, s: impl Into<String>) {
    log.borrow_mut().push(s.into());
}

fn text<T>(r: &Result<T, Error>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(e) => format!("{e:?}"),
    }
}

/// A listener whose accepted connections go to `on_tcp`.
fn listener(
    lp: &mut Loop,
    on_tcp: impl FnMut(&mut Loop, Tcp) + 'static,
) -> (TcpListener, SocketAddr) {
    let mut on_tcp = on_tcp;
    let l = TcpListener::bind(lp, "127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = l.local_addr(lp).unwrap();
    l.listen(lp, move |lp, _, r| on_tcp(lp, r.unwrap()))
        .unwrap();
    (l, addr)
}

// ---- the four confirmed points ----

#[test]
fn a_failure_before_the_user_reads_reaches_a_reader_started_later() {
    let pki = pki();
    let acceptor = pki.acceptor().unwrap();
    let mut lp = Loop::new().unwrap();
    let got = log();
    let g = Rc::clone(&got);
    let (l, addr) = listener(&mut lp, move |lp, tcp| {
        let tls = Tls::server(lp, tcp, &acceptor).unwrap();
        tls.set_handshake_timeout(lp, Some(Duration::from_millis(100)))
            .unwrap();
        // The user reads 500 ms later (after a lookup, say).
        let g = Rc::clone(&g);
        let later = Timer::new(lp).unwrap();
        later
            .start(lp, Duration::from_millis(500), None, move |lp, t| {
                t.close(lp);
                let g2 = Rc::clone(&g);
                let started = tls.start_read(lp, move |lp, tls, r| {
                    note(&g2, text(&r.map(|_| ())));
                    tls.close(lp, |_, _| {});
                });
                note(&g, format!("start_read {}", text(&started)));
            })
            .unwrap();
    });
    // A peer that connects and sends nothing.
    let _silent = std::net::TcpStream::connect(addr).unwrap();
    run_until(&mut lp, LIMIT, || got.borrow().len() == 2);
    assert_eq!(
        *got.borrow(),
        ["start_read ok", "TimedOut(Handshake)"],
        "the reader never heard the failure"
    );
    l.close(&mut lp);
    util::run_dry(&mut lp, LIMIT);
}

#[test]
fn shutdown_completes_when_the_inner_stream_cannot_shut_down() {
    // TLS inside TLS: the inner Tls fails (its transport is reset); the outer Tls's
    // shutdown must still call back, and an echo over it must finish.
    let pki = pki();
    let mut lp = Loop::new().unwrap();
    let (a, b) = Duplex::pair(&mut lp, 1 << 16).unwrap();
    let inner_server = Tls::server(&mut lp, a, &pki.acceptor().unwrap()).unwrap();
    let inner_client = Tls::client(&mut lp, b, &pki.connector().unwrap(), "localhost").unwrap();
    let outer_server = Tls::server(&mut lp, inner_server, &pki.acceptor().unwrap()).unwrap();
    let outer_client = Tls::client(
        &mut lp,
        inner_client,
        &pki.connector().unwrap(),
        "localhost",
    )
    .unwrap();
    let ended = Rc::new(RefCell::new(None));
    let e = Rc::clone(&ended);
    biotls::echo::echo_with(
        &mut lp,
        outer_server,
        EchoOptions::default(),
        move |_, _, end| {
            *e.borrow_mut() = Some(format!("{end:?}"));
        },
    )
    .unwrap();
    let shut = log();
    let s = Rc::clone(&shut);
    outer_client
        .write(&mut lp, &b"hello"[..], move |lp, tls, r| {
            r.unwrap();
            // Break the transport under both inner handles, then shut down the outer.
            a.inject_fault(lp, Fault::Reset).unwrap();
            let s2 = Rc::clone(&s);
            let queued = tls.shutdown(lp, move |lp, tls, r| {
                note(&s2, format!("shutdown {}", text(&r)));
                tls.close(lp, |_, _| {});
            });
            if let Err(e) = queued {
                note(&s, format!("refused {e:?}"));
                tls.close(lp, |_, _| {});
            }
        })
        .unwrap();
    run_until(&mut lp, LIMIT, || {
        !shut.borrow().is_empty() && ended.borrow().is_some()
    });
    assert!(ended.borrow().as_deref().unwrap().starts_with("Failed"));
    util::run_dry(&mut lp, LIMIT);
    assert_eq!(lp.handle_count(), 0, "a handle leaked");
}

#[test]
fn shutdown_completes_when_the_inner_tls_failed_unnoticed() {
    // TLS inside TLS over TCP: the inner client Tls fails on its idle timeout while the
    // outer one is not reading, so the outer one has not heard; its shutdown must still
    // call back.
    let pki = pki();
    let acceptor = pki.acceptor().unwrap();
    let mut lp = Loop::new().unwrap();
    let (l, addr) = listener(&mut lp, move |lp, tcp| {
        let inner = Tls::server(lp, tcp, &acceptor).unwrap();
        let outer = Tls::server(lp, inner, &acceptor).unwrap();
        echo(lp, outer, EchoOptions::default()).unwrap();
    });
    let tcp = Tcp::connect(&mut lp, addr, |_, _, r| r.unwrap()).unwrap();
    let inner = Tls::client(&mut lp, tcp, &pki.connector().unwrap(), "localhost").unwrap();
    let outer = Tls::client(&mut lp, inner, &pki.connector().unwrap(), "localhost").unwrap();
    let written = Rc::new(Cell::new(false));
    let w = Rc::clone(&written);
    outer
        .write(&mut lp, &b"hello"[..], move |_, _, r| {
            r.unwrap();
            w.set(true);
        })
        .unwrap();
    run_until(&mut lp, LIMIT, || written.get());
    inner
        .set_idle_timeout(&mut lp, Some(Duration::from_millis(50)))
        .unwrap();
    let waited = Instant::now();
    while waited.elapsed() < Duration::from_millis(200) {
        lp.run_nowait().unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
    let got = log();
    let g = Rc::clone(&got);
    match outer.shutdown(&mut lp, move |_, _, r| note(&g, text(&r))) {
        Ok(()) => run_until(&mut lp, LIMIT, || !got.borrow().is_empty()),
        Err(e) => note(&got, format!("refused {e:?}")),
    }
    assert!(got.borrow()[0].contains("Idle"), "{:?}", got.borrow());
    outer.close(&mut lp, |_, _| {});
    l.close(&mut lp);
    util::run_dry(&mut lp, LIMIT);
}

#[test]
fn shutdown_reports_an_inner_shutdown_that_fails() {
    let pki = pki();
    let mut lp = Loop::new().unwrap();
    let (a, b) = Duplex::pair(&mut lp, 1 << 16).unwrap();
    let server = Tls::server(&mut lp, a, &pki.acceptor().unwrap()).unwrap();
    echo(&mut lp, server, EchoOptions::default()).unwrap();
    let client = Tls::client(&mut lp, b, &pki.connector().unwrap(), "localhost").unwrap();
    b.inject_fault(&mut lp, Fault::FailShutdown(std::io::ErrorKind::BrokenPipe))
        .unwrap();
    let got = log();
    let g = Rc::clone(&got);
    client
        .shutdown(&mut lp, move |lp, tls, r| {
            note(&g, text(&r));
            tls.close(lp, |_, _| {});
        })
        .unwrap();
    run_until(&mut lp, LIMIT, || !got.borrow().is_empty());
    assert!(got.borrow()[0].contains("BrokenPipe"), "{:?}", got.borrow());
    util::run_dry(&mut lp, LIMIT);
}

/// A Tls client over TCP to a TLS echo server, reading; returns it and the read log.
fn reading_client(lp: &mut Loop, pki: &Pki) -> (Tls, Log, TcpListener) {
    let acceptor = pki.acceptor().unwrap();
    let (l, addr) = listener(lp, move |lp, tcp| {
        let tls = Tls::server(lp, tcp, &acceptor).unwrap();
        echo(lp, tls, EchoOptions::default()).unwrap();
    });
    let tcp = Tcp::connect(lp, addr, |_, _, r| r.unwrap()).unwrap();
    let tls = Tls::client(lp, tcp, &pki.connector().unwrap(), "localhost").unwrap();
    let got = log();
    let g = Rc::clone(&got);
    tls.start_read(lp, move |_, _, r| match r {
        Ok(Some(d)) => note(&g, format!("data {}", d.len())),
        other => note(&g, format!("end {}", text(&other))),
    })
    .unwrap();
    let done = Rc::new(Cell::new(false));
    let d = Rc::clone(&done);
    tls.on_handshake(lp, move |_, _, r| {
        r.unwrap();
        d.set(true);
    })
    .unwrap();
    run_until(lp, LIMIT, || done.get());
    (tls, got, l)
}

#[test]
fn closing_the_inner_stream_under_a_reading_tls_fails_it_with_transport_closed() {
    let pki = pki();
    let mut lp = Loop::new().unwrap();
    let (tls, got, l) = reading_client(&mut lp, &pki);
    let inner = tls.inner(&lp).unwrap();
    inner.close(&mut lp, |_, _| {});
    run_until(&mut lp, LIMIT, || !got.borrow().is_empty());
    assert_eq!(*got.borrow(), ["end TransportClosed"]);
    assert!(tls.is_open(&lp), "the user closes the Tls");
    tls.close(&mut lp, |_, _| {});
    l.close(&mut lp);
    util::run_dry(&mut lp, LIMIT);
}

#[test]
fn closing_the_inner_stream_with_a_write_in_flight_is_not_reported_as_cancelled() {
    let pki = pki();
    let mut lp = Loop::new().unwrap();
    let (tls, got, l) = reading_client(&mut lp, &pki);
    // More than the socket buffers take at once: the ciphertext write stays in flight.
    let wrote = log();
    let w = Rc::clone(&wrote);
    tls.write(&mut lp, vec![7u8; 32 << 20], move |_, _, r| {
        note(&w, text(&r))
    })
    .unwrap();
    let inner = tls.inner(&lp).unwrap();
    assert!(
        inner.write_queue_size(&lp) > 0,
        "the test needs a write in flight"
    );
    inner.close(&mut lp, |_, _| {});
    run_until(&mut lp, LIMIT, || {
        got.borrow().iter().any(|e| e.starts_with("end")) && !wrote.borrow().is_empty()
    });
    let ends: Vec<String> = got
        .borrow()
        .iter()
        .filter(|e| e.starts_with("end"))
        .cloned()
        .collect();
    assert_eq!(ends, ["end TransportClosed"]);
    assert_eq!(*wrote.borrow(), ["TransportClosed"]);
    tls.close(&mut lp, |_, _| {});
    l.close(&mut lp);
    util::run_dry(&mut lp, LIMIT);
}

#[test]
fn on_handshake_set_after_the_handshake_runs_once_from_the_loop_with_its_outcome() {
    let pki = pki();
    let mut lp = Loop::new().unwrap();
    let (tls, _got, l) = reading_client(&mut lp, &pki);
    let late = log();
    let lt = Rc::clone(&late);
    tls.on_handshake(&mut lp, move |_, _, r| note(&lt, text(&r)))
        .unwrap();
    assert!(late.borrow().is_empty(), "ran inside on_handshake");
    run_until(&mut lp, LIMIT, || !late.borrow().is_empty());
    assert_eq!(*late.borrow(), ["ok"]);
    tls.close(&mut lp, |_, _| {});
    l.close(&mut lp);
    util::run_dry(&mut lp, LIMIT);
    assert_eq!(*late.borrow(), ["ok"], "ran again at close");
}

// ---- suspected points ----

#[test]
fn a_failed_connect_reaches_the_connect_callback_before_the_tls_callbacks() {
    let pki = pki();
    let mut lp = Loop::new().unwrap();
    let refused = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    refused
        .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    let addr = refused.local_addr().unwrap().as_socket().unwrap();
    let order = log();
    let o = Rc::clone(&order);
    let tcp = Tcp::connect(&mut lp, addr, move |_, _, r| {
        note(&o, format!("connect {}", text(&r)))
    })
    .unwrap();
    let tls = Tls::client(&mut lp, tcp, &pki.connector().unwrap(), "localhost").unwrap();
    let o = Rc::clone(&order);
    tls.on_handshake(&mut lp, move |_, _, r| {
        note(&o, format!("handshake {}", text(&r)))
    })
    .unwrap();
    let o = Rc::clone(&order);
    tls.start_read(&mut lp, move |_, _, r| {
        note(&o, format!("read {}", text(&r)))
    })
    .unwrap();
    run_until(&mut lp, LIMIT, || order.borrow().len() == 3);
    let order = order.borrow();
    assert!(order[0].starts_with("connect Io("), "{order:?}");
    assert!(
        order[1].starts_with("handshake Err") || order[1].starts_with("handshake Io("),
        "{order:?}"
    );
    assert!(order[2].starts_with("read Io("), "{order:?}");
    drop(order);
    tls.close(&mut lp, |_, _| {});
    util::run_dry(&mut lp, LIMIT);
}

#[test]
fn a_peer_flooding_key_updates_while_never_reading_cannot_grow_the_servers_queue() {
    let pki = pki();
    let mut lp = Loop::new().unwrap();
    let capacity = 16 * 1024;
    let (a, b) = Duplex::pair(&mut lp, capacity).unwrap();
    let server = Tls::server(&mut lp, a, &pki.acceptor().unwrap()).unwrap();
    // The application only reads.
    let received = Rc::new(Cell::new(0usize));
    let r = Rc::clone(&received);
    server
        .start_read(&mut lp, move |_, _, res| {
            if let Ok(Some(d)) = res {
                r.set(r.get() + d.len());
            }
        })
        .unwrap();
    let peer = RawPeer::start(
        &mut lp,
        b,
        TlsSession::client(&pki.connector().unwrap(), "localhost").unwrap(),
    );
    run_until(&mut lp, LIMIT, || peer.handshake_done());
    // Let the session tickets arrive, then never read again.
    let settle = Instant::now();
    while settle.elapsed() < Duration::from_millis(50) {
        lp.run_nowait().unwrap();
    }
    peer.stop_reading(&mut lp);
    let updates = 40_000;
    {
        let mut s = peer.session.borrow_mut();
        for _ in 0..updates {
            s.write(b"x").unwrap();
            s.key_update(true).unwrap();
        }
    }
    peer.flush(&mut lp);
    // Run until nothing moves any more.
    let mut peak = 0;
    let mut last = (0, 0);
    let mut quiet = Instant::now();
    let start = Instant::now();
    while quiet.elapsed() < Duration::from_millis(300) && start.elapsed() < LIMIT {
        lp.run_nowait().unwrap();
        peak = peak.max(server.write_queue_size(&lp));
        let now = (received.get(), server.write_queue_size(&lp));
        if now != last {
            last = now;
            quiet = Instant::now();
        }
    }
    // Each KeyUpdate asks for one in reply (about 22 bytes): unbounded, 40,000 of them
    // would queue about 900 KB. Bounded, reading stops at 64 KiB of replies in flight.
    assert!(
        received.get() < updates,
        "the server read everything: no backpressure"
    );
    assert!(
        peak <= 64 * 1024 + capacity + 1024,
        "server queue reached {peak} bytes"
    );
    server.close(&mut lp, |_, _| {});
    peer.end.close(&mut lp, |_, _| {});
    util::run_dry(&mut lp, LIMIT);
}

#[test]
fn try_write_takes_at_most_one_record_and_nothing_while_ciphertext_waits() {
    let pki = pki();
    let mut lp = Loop::new().unwrap();
    let (a, b) = Duplex::pair(&mut lp, 4096).unwrap();
    let server = Tls::server(&mut lp, a, &pki.acceptor().unwrap()).unwrap();
    let client = Tls::client(&mut lp, b, &pki.connector().unwrap(), "localhost").unwrap();
    let done = Rc::new(Cell::new(false));
    let d = Rc::clone(&done);
    client
        .on_handshake(&mut lp, move |_, _, r| {
            r.unwrap();
            d.set(true);
        })
        .unwrap();
    server.start_read(&mut lp, |_, _, _| {}).unwrap();
    run_until(&mut lp, LIMIT, || done.get());
    let taken = client.try_write(&mut lp, &vec![1u8; 100_000]).unwrap();
    assert!(taken > 0 && taken <= 16 * 1024, "took {taken}");
    // The record does not fit the 4 KiB transport at once: its ciphertext waits.
    assert!(client.write_queue_size(&lp) > 0);
    assert_eq!(client.try_write(&mut lp, &[2u8; 10]).unwrap(), 0);
    assert!(client.write_queue_size(&lp) <= 16 * 1024 + 64);
    client.close(&mut lp, |_, _| {});
    server.close(&mut lp, |_, _| {});
    util::run_dry(&mut lp, LIMIT);
}

// ---- ownership ----

#[test]
fn the_inner_stream_refuses_user_reads_and_writes_but_answers_queries() {
    let pki = pki();
    let mut lp = Loop::new().unwrap();
    let (tls, _got, l) = reading_client(&mut lp, &pki);
    let inner = tls.inner(&lp).unwrap();
    let owned = |r: Result<(), Error>| matches!(r, Err(Error::InvalidState(_)));
    assert!(owned(inner.start_read(&mut lp, |_, _, _| {})));
    assert!(owned(inner.stop_read(&mut lp)));
    assert!(owned(inner.write(&mut lp, &b"x"[..], |_, _, _| {})));
    assert!(owned(inner.shutdown(&mut lp, |_, _, _| {})));
    assert!(matches!(
        inner.try_write(&mut lp, b"x"),
        Err(Error::InvalidState(_))
    ));
    inner.peer_addr(&lp).unwrap();
    inner.set_nodelay(&lp, true).unwrap();
    // A second Tls cannot wrap it.
    assert!(matches!(
        Tls::client(&mut lp, inner, &pki.connector().unwrap(), "localhost"),
        Err(Error::InvalidState(_))
    ));
    // The Tls still works.
    let back = log();
    let bk = Rc::clone(&back);
    tls.write(&mut lp, &b"still here"[..], move |_, _, r| {
        note(&bk, text(&r))
    })
    .unwrap();
    run_until(&mut lp, LIMIT, || !back.borrow().is_empty());
    assert_eq!(*back.borrow(), ["ok"]);
    // Closing the Tls closes the inner stream, without a failure.
    tls.close(&mut lp, |_, _| {});
    l.close(&mut lp);
    util::run_dry(&mut lp, LIMIT);
    assert!(!inner.is_open(&lp));
}
