//! The `Tls` handle over loopback TCP: the `Stream` contract, handshake outcomes, EOF
//! and truncation, flow of many writes, and TLS inside TLS.

mod util;

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use biotls::duplex::Fault;
use biotls::echo::{EchoOptions, echo};
use biotls::error::VerifyKind;
use biotls::pki::Pki;
use biotls::tls::{Tls, TlsAcceptor, TlsConnector};
use biotls::{Duplex, Error, Loop, ReadResult, Stream, Tcp, TcpListener};
use bytes::Bytes;
use util::{pattern, run_to_end, run_until};

const LIMIT: Duration = Duration::from_secs(60);

fn pki() -> Pki {
    Pki::generate(&["localhost", "127.0.0.1"]).unwrap()
}

/// A TLS echo server on an ephemeral port; `on_tls` sees each new server handle.
fn tls_echo_server(
    lp: &mut Loop,
    acceptor: TlsAcceptor,
    on_tls: impl Fn(&mut Loop, Tls) + 'static,
) -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind(lp, "127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr(lp).unwrap();
    listener
        .listen(lp, move |lp, _, accepted| {
            let tcp = accepted.unwrap();
            let tls = Tls::server(lp, tcp, &acceptor).unwrap();
            on_tls(lp, tls);
            echo(lp, tls, EchoOptions::default()).unwrap();
        })
        .unwrap();
    (listener, addr)
}

/// Filled in once a client's exchange ends: the echo, or the error.
type Outcome = Rc<RefCell<Option<Result<Vec<u8>, Error>>>>;

/// Connects a TLS client, writes `data` (before the handshake completes), sends
/// close_notify and collects the echo until a clean EOF.
fn tls_echo_client(
    lp: &mut Loop,
    addr: SocketAddr,
    connector: &TlsConnector,
    data: Bytes,
) -> Outcome {
    let result = Rc::new(RefCell::new(None));
    let tcp = Tcp::connect(lp, addr, |_, _, _| {}).unwrap();
    let tls = Tls::client(lp, tcp, connector, "localhost").unwrap();
    // Outcomes of the write and shutdown show up in the read callback too.
    tls.write(lp, data, |_, _, _| {}).unwrap();
    tls.shutdown(lp, |_, _, _| {}).unwrap();
    let received = Rc::new(RefCell::new(Vec::new()));
    let out = result.clone();
    tls.start_read(lp, move |lp, tls, r| match r {
        Ok(Some(b)) => received.borrow_mut().extend_from_slice(&b),
        Ok(None) => {
            *out.borrow_mut() = Some(Ok(std::mem::take(&mut *received.borrow_mut())));
            tls.close(lp, |_, _| {});
        }
        Err(e) => {
            *out.borrow_mut() = Some(Err(e));
            tls.close(lp, |_, _| {});
        }
    })
    .unwrap();
    result
}

#[test]
fn echo_round_trip_with_writes_queued_before_the_handshake() {
    let pki = pki();
    let mut lp = Loop::new().unwrap();
    let infos = Rc::new(RefCell::new(Vec::new()));
    let i = infos.clone();
    let (listener, addr) = tls_echo_server(&mut lp, pki.acceptor().unwrap(), move |lp, tls| {
        let i = i.clone();
        tls.on_handshake(lp, move |lp, tls, r| {
            r.unwrap();
            i.borrow_mut().push(tls.info(lp).unwrap());
        })
        .unwrap();
    });
    let got = tls_echo_client(
        &mut lp,
        addr,
        &pki.connector().unwrap(),
        Bytes::from_static(b"hello over TLS"),
    );
    run_until(&mut lp, LIMIT, || got.borrow().is_some());
    assert_eq!(got.borrow_mut().take().unwrap().unwrap(), b"hello over TLS");
    let info = infos.borrow()[0].clone();
    assert_eq!(info.version, "TLSv1.3");
    assert!(info.cipher.is_some());
    assert_eq!(info.server_name.as_deref(), Some("localhost"));
    listener.close(&mut lp);
    run_to_end(&mut lp, LIMIT);
}

#[test]
fn sixty_four_mib_through_one_tls_connection_arrive_intact() {
    let pki = pki();
    let mut lp = Loop::new().unwrap();
    let (listener, addr) = tls_echo_server(&mut lp, pki.acceptor().unwrap(), |_, _| {});
    const TOTAL: usize = 64 << 20;
    const CHUNK: usize = 1 << 20;
    let tcp = Tcp::connect(&mut lp, addr, |_, _, r| r.unwrap()).unwrap();
    let tls = Tls::client(&mut lp, tcp, &pki.connector().unwrap(), "localhost").unwrap();
    let writes_done = Rc::new(Cell::new(0));
    for i in 0..TOTAL / CHUNK {
        let w = writes_done.clone();
        let chunk = Bytes::from(pattern(11, (i * CHUNK) as u64, CHUNK));
        tls.write(&mut lp, chunk, move |_, _, r| {
            r.unwrap();
            w.set(w.get() + 1);
        })
        .unwrap();
    }
    assert!(
        tls.write_queue_size(&lp) >= TOTAL,
        "plaintext counts as queued"
    );
    tls.shutdown(&mut lp, |_, _, r| r.unwrap()).unwrap();
    let received = Rc::new(Cell::new(0usize));
    let bad = Rc::new(Cell::new(None));
    let eof = Rc::new(Cell::new(false));
    let (r2, b2, e2) = (received.clone(), bad.clone(), eof.clone());
    tls.start_read(&mut lp, move |lp, tls, r| match r.unwrap() {
        Some(b) => {
            let at = r2.get();
            if b2.get().is_none() && b[..] != pattern(11, at as u64, b.len())[..] {
                b2.set(Some(at));
            }
            r2.set(at + b.len());
        }
        None => {
            e2.set(true);
            tls.close(lp, |_, _| {});
        }
    })
    .unwrap();
    run_until(&mut lp, Duration::from_secs(180), || eof.get());
    assert_eq!(received.get(), TOTAL);
    assert_eq!(bad.get(), None, "first mismatching offset");
    assert_eq!(
        writes_done.get(),
        TOTAL / CHUNK,
        "every write callback ran once"
    );
    listener.close(&mut lp);
    run_to_end(&mut lp, LIMIT);
}

#[test]
fn a_hundred_concurrent_tls_connections_each_get_their_own_echo() {
    let pki = pki();
    let mut lp = Loop::new().unwrap();
    let (listener, addr) = tls_echo_server(&mut lp, pki.acceptor().unwrap(), |_, _| {});
    let connector = pki.connector().unwrap();
    let results: Vec<_> = (0..100u64)
        .map(|i| {
            let data = Bytes::from(pattern(i, 0, 20_000 + i as usize * 37));
            (
                data.clone(),
                tls_echo_client(&mut lp, addr, &connector, data),
            )
        })
        .collect();
    run_until(&mut lp, LIMIT, || {
        results.iter().all(|(_, r)| r.borrow().is_some())
    });
    for (sent, got) in &results {
        assert_eq!(got.borrow_mut().take().unwrap().unwrap(), &sent[..]);
    }
    listener.close(&mut lp);
    run_to_end(&mut lp, LIMIT);
}

/// A server handle whose read results are recorded; returns (listener, addr, results).
fn recording_server(
    lp: &mut Loop,
    acceptor: TlsAcceptor,
    handshake_timeout: Option<Duration>,
) -> (TcpListener, SocketAddr, Rc<RefCell<Vec<String>>>) {
    let log = Rc::new(RefCell::new(Vec::new()));
    let l = log.clone();
    let listener = TcpListener::bind(lp, "127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr(lp).unwrap();
    listener
        .listen(lp, move |lp, _, accepted| {
            let tls = Tls::server(lp, accepted.unwrap(), &acceptor).unwrap();
            if handshake_timeout.is_some() {
                tls.set_handshake_timeout(lp, handshake_timeout).unwrap();
            }
            let (l1, l2) = (l.clone(), l.clone());
            tls.on_handshake(lp, move |_, _, r| {
                l1.borrow_mut().push(match r {
                    Ok(()) => "handshake ok".to_string(),
                    Err(e) => format!("handshake {e:?}"),
                })
            })
            .unwrap();
            tls.start_read(lp, move |lp, tls, r: ReadResult| {
                let entry = match r {
                    Ok(Some(b)) => format!("data {}", String::from_utf8_lossy(&b)),
                    Ok(None) => "eof".to_string(),
                    Err(e) => format!("error {e:?}"),
                };
                let end = !entry.starts_with("data");
                l2.borrow_mut().push(entry);
                if end {
                    tls.close(lp, |_, _| {});
                }
            })
            .unwrap();
        })
        .unwrap();
    (listener, addr, log)
}

#[test]
fn close_notify_is_a_clean_eof_after_the_data() {
    let pki = pki();
    let mut lp = Loop::new().unwrap();
    let (listener, addr, log) = recording_server(&mut lp, pki.acceptor().unwrap(), None);
    let tcp = Tcp::connect(&mut lp, addr, |_, _, r| r.unwrap()).unwrap();
    let tls = Tls::client(&mut lp, tcp, &pki.connector().unwrap(), "localhost").unwrap();
    tls.write(&mut lp, &b"last words"[..], |_, _, r| r.unwrap())
        .unwrap();
    tls.shutdown(&mut lp, |lp, tls, r| {
        r.unwrap();
        tls.close(lp, |_, _| {});
    })
    .unwrap();
    run_until(&mut lp, LIMIT, || log.borrow().len() == 3);
    assert_eq!(*log.borrow(), ["handshake ok", "data last words", "eof"]);
    listener.close(&mut lp);
    run_to_end(&mut lp, LIMIT);
}

#[test]
fn transport_eof_without_close_notify_is_truncation() {
    let pki = pki();
    let mut lp = Loop::new().unwrap();
    let (server_end, client_end) = Duplex::pair(&mut lp, 64 * 1024).unwrap();
    let server = Tls::server(&mut lp, server_end, &pki.acceptor().unwrap()).unwrap();
    let log = record(&mut lp, server);
    let tls = Tls::client(&mut lp, client_end, &pki.connector().unwrap(), "localhost").unwrap();
    tls.write(&mut lp, &b"cut short"[..], move |lp, _, r| {
        r.unwrap();
        // The transport ends under TLS: an end of stream with no close_notify.
        server_end.inject_fault(lp, Fault::Eof).unwrap();
    })
    .unwrap();
    run_until(&mut lp, LIMIT, || log.borrow().len() == 3);
    assert_eq!(log.borrow()[..2], ["handshake ok", "data cut short"]);
    assert_eq!(log.borrow()[2], "error Truncated");
    tls.close(&mut lp, |_, _| {});
    run_to_end(&mut lp, LIMIT);
}

/// Records `tls`'s handshake outcome and reads; closes it at the end of reading.
fn record<S: Stream>(lp: &mut Loop, tls: Tls<S>) -> Rc<RefCell<Vec<String>>> {
    let log = Rc::new(RefCell::new(Vec::new()));
    let (l1, l2) = (log.clone(), log.clone());
    tls.on_handshake(lp, move |_, _, r| {
        l1.borrow_mut().push(match r {
            Ok(()) => "handshake ok".to_string(),
            Err(e) => format!("handshake {e:?}"),
        })
    })
    .unwrap();
    tls.start_read(lp, move |lp, tls, r: ReadResult| {
        let entry = match r {
            Ok(Some(b)) => format!("data {}", String::from_utf8_lossy(&b)),
            Ok(None) => "eof".to_string(),
            Err(e) => format!("error {e:?}"),
        };
        let end = !entry.starts_with("data");
        l2.borrow_mut().push(entry);
        if end {
            tls.close(lp, |_, _| {});
        }
    })
    .unwrap();
    log
}

#[test]
fn eof_during_the_handshake_is_a_handshake_error() {
    let pki = pki();
    let mut lp = Loop::new().unwrap();
    let (listener, addr, log) = recording_server(&mut lp, pki.acceptor().unwrap(), None);
    Tcp::connect(&mut lp, addr, |lp, tcp, r| {
        r.unwrap();
        tcp.shutdown(lp, |lp, tcp, _| tcp.close(lp, |_, _| {}))
            .unwrap();
    })
    .unwrap();
    run_until(&mut lp, LIMIT, || log.borrow().len() == 2);
    let log = log.borrow();
    assert!(log[0].starts_with("handshake Handshake("), "{log:?}");
    assert!(log[0].contains("unexpected eof"), "{log:?}");
    assert!(
        log[1].starts_with("error Handshake("),
        "read callback gets it too: {log:?}"
    );
    drop(log);
    listener.close(&mut lp);
    run_to_end(&mut lp, LIMIT);
}

#[test]
fn a_stalled_handshake_times_out() {
    let pki = pki();
    let mut lp = Loop::new().unwrap();
    let (listener, addr, log) = recording_server(
        &mut lp,
        pki.acceptor().unwrap(),
        Some(Duration::from_millis(200)),
    );
    // Connects and says nothing.
    let silent = Tcp::connect(&mut lp, addr, |_, _, r| r.unwrap()).unwrap();
    run_until(&mut lp, LIMIT, || log.borrow().len() == 2);
    assert_eq!(
        *log.borrow(),
        ["handshake TimedOut(Handshake)", "error TimedOut(Handshake)"]
    );
    silent.close(&mut lp, |_, _| {});
    listener.close(&mut lp);
    run_to_end(&mut lp, LIMIT);
}

#[test]
fn garbage_fails_one_connection_while_another_is_served() {
    let pki = pki();
    let mut lp = Loop::new().unwrap();
    let handshakes = Rc::new(RefCell::new(Vec::new()));
    let hs = handshakes.clone();
    let (listener, addr) = tls_echo_server(&mut lp, pki.acceptor().unwrap(), move |lp, tls| {
        let hs = hs.clone();
        tls.on_handshake(lp, move |_, _, r| hs.borrow_mut().push(r))
            .unwrap();
    });
    // A plain-text HTTP client: the server must fail it (and close it).
    let http_reply = Rc::new(RefCell::new(None));
    let h = http_reply.clone();
    Tcp::connect(&mut lp, addr, move |lp, tcp, r| {
        r.unwrap();
        tcp.write(lp, &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..], |_, _, _| {})
            .unwrap();
        let h = h.clone();
        let mut got = Vec::new();
        tcp.start_read(lp, move |lp, tcp, r| match r {
            Ok(Some(b)) => got.extend_from_slice(&b),
            other => {
                *h.borrow_mut() = Some((std::mem::take(&mut got), other.is_ok()));
                tcp.close(lp, |_, _| {});
            }
        })
        .unwrap();
    })
    .unwrap();
    let good = tls_echo_client(
        &mut lp,
        addr,
        &pki.connector().unwrap(),
        Bytes::from_static(b"still served"),
    );
    run_until(&mut lp, LIMIT, || {
        good.borrow().is_some() && http_reply.borrow().is_some()
    });
    assert_eq!(good.borrow_mut().take().unwrap().unwrap(), b"still served");
    let (reply, _) = http_reply.borrow_mut().take().unwrap();
    // The server closed the connection without sending application data.
    assert!(
        reply.is_empty() || reply[0] == 21,
        "only a TLS alert may come back: {reply:?}"
    );
    let handshakes = handshakes.borrow();
    assert_eq!(handshakes.len(), 2);
    assert!(handshakes.iter().any(|r| r.is_ok()));
    assert!(
        handshakes
            .iter()
            .any(|r| matches!(r, Err(Error::Handshake(f)) if f.reason() == "http request")),
        "{handshakes:?}"
    );
    listener.close(&mut lp);
    run_to_end(&mut lp, LIMIT);
}

#[test]
fn an_unknown_ca_fails_verification_with_the_reason() {
    let server_pki = pki();
    let other_pki = pki();
    let mut lp = Loop::new().unwrap();
    let (listener, addr) = tls_echo_server(&mut lp, server_pki.acceptor().unwrap(), |_, _| {});
    let got = tls_echo_client(
        &mut lp,
        addr,
        &other_pki.connector().unwrap(),
        Bytes::from_static(b"x"),
    );
    run_until(&mut lp, LIMIT, || got.borrow().is_some());
    match got.borrow_mut().take().unwrap() {
        Err(Error::Verification(v)) => assert_eq!(v.kind(), VerifyKind::SelfSigned, "{v:?}"),
        other => panic!("expected a verification error, got {other:?}"),
    }
    listener.close(&mut lp);
    run_to_end(&mut lp, LIMIT);
}

#[test]
fn a_wrong_host_name_fails_verification() {
    let pki = pki();
    let mut lp = Loop::new().unwrap();
    let (listener, addr) = tls_echo_server(&mut lp, pki.acceptor().unwrap(), |_, _| {});
    let outcome = Rc::new(RefCell::new(None));
    let o = outcome.clone();
    let tcp = Tcp::connect(&mut lp, addr, |_, _, _| {}).unwrap();
    let tls = Tls::client(&mut lp, tcp, &pki.connector().unwrap(), "example.org").unwrap();
    let wrote = Rc::new(RefCell::new(None));
    let w = wrote.clone();
    tls.write(&mut lp, &b"never sent"[..], move |_, _, r| {
        *w.borrow_mut() = Some(r)
    })
    .unwrap();
    tls.on_handshake(&mut lp, move |lp, tls, r| {
        *o.borrow_mut() = Some(r);
        tls.close(lp, |_, _| {});
    })
    .unwrap();
    run_until(&mut lp, LIMIT, || {
        outcome.borrow().is_some() && wrote.borrow().is_some()
    });
    match outcome.borrow_mut().take().unwrap() {
        Err(e) => assert_eq!(e.verify_kind(), Some(VerifyKind::HostnameMismatch), "{e:?}"),
        other => panic!("expected hostname mismatch, got {other:?}"),
    }
    assert!(matches!(
        wrote.borrow_mut().take().unwrap(),
        Err(Error::Verification(_))
    ));
    listener.close(&mut lp);
    run_to_end(&mut lp, LIMIT);
}

#[test]
fn close_cancels_pending_writes_then_runs_the_close_callback() {
    let pki = pki();
    let mut lp = Loop::new().unwrap();
    let (listener, addr) = tls_echo_server(&mut lp, pki.acceptor().unwrap(), |_, _| {});
    let order = Rc::new(RefCell::new(Vec::new()));
    let tcp = Tcp::connect(&mut lp, addr, |_, _, _| {}).unwrap();
    let tls = Tls::client(&mut lp, tcp, &pki.connector().unwrap(), "localhost").unwrap();
    for i in 0..3 {
        let o = order.clone();
        tls.write(&mut lp, vec![0u8; 1000], move |_, _, r| {
            o.borrow_mut()
                .push(format!("w{i} {}", matches!(r, Err(Error::Cancelled))))
        })
        .unwrap();
    }
    // The plaintext, plus the ClientHello waiting in the connecting TCP handle.
    assert!(tls.write_queue_size(&lp) >= 3000);
    let o = order.clone();
    tls.close(&mut lp, move |_, _| o.borrow_mut().push("close".into()));
    assert!(order.borrow().is_empty(), "nothing runs inside close");
    assert!(matches!(
        tls.write(&mut lp, &b"x"[..], |_, _, _| panic!()),
        Err(Error::Closed)
    ));
    run_until(&mut lp, LIMIT, || order.borrow().len() == 4);
    assert_eq!(*order.borrow(), ["w0 true", "w1 true", "w2 true", "close"]);
    listener.close(&mut lp);
    run_to_end(&mut lp, LIMIT);
}

#[test]
fn many_small_writes_all_complete_in_order() {
    let pki = pki();
    let mut lp = Loop::new().unwrap();
    let (listener, addr) = tls_echo_server(&mut lp, pki.acceptor().unwrap(), |_, _| {});
    let tcp = Tcp::connect(&mut lp, addr, |_, _, _| {}).unwrap();
    let tls = Tls::client(&mut lp, tcp, &pki.connector().unwrap(), "localhost").unwrap();
    let done = Rc::new(RefCell::new(Vec::new()));
    let mut expected = Vec::new();
    for i in 0..2000u32 {
        let d = done.clone();
        let msg = format!("{i};");
        expected.extend_from_slice(msg.as_bytes());
        tls.write(&mut lp, msg, move |_, _, r| {
            r.unwrap();
            d.borrow_mut().push(i);
        })
        .unwrap();
    }
    tls.write(&mut lp, Bytes::new(), |_, _, r| r.unwrap())
        .unwrap();
    tls.shutdown(&mut lp, |_, _, r| r.unwrap()).unwrap();
    let got = Rc::new(RefCell::new(Vec::new()));
    let eof = Rc::new(Cell::new(false));
    let (g, e) = (got.clone(), eof.clone());
    tls.start_read(&mut lp, move |lp, tls, r| match r.unwrap() {
        Some(b) => g.borrow_mut().extend_from_slice(&b),
        None => {
            e.set(true);
            tls.close(lp, |_, _| {});
        }
    })
    .unwrap();
    run_until(&mut lp, LIMIT, || eof.get());
    assert_eq!(*got.borrow(), expected);
    assert_eq!(*done.borrow(), (0..2000).collect::<Vec<_>>());
    listener.close(&mut lp);
    run_to_end(&mut lp, LIMIT);
}

#[test]
fn tls_inside_tls_runs_over_the_stream_trait_alone() {
    // Outer TLS between client and server; inside it, a second TLS session whose
    // transport is the outer `Tls` handle.
    let outer_pki = pki();
    let inner_pki = pki();
    let mut lp = Loop::new().unwrap();
    let listener = TcpListener::bind(&mut lp, "127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr(&lp).unwrap();
    let (outer_acc, inner_acc) = (outer_pki.acceptor().unwrap(), inner_pki.acceptor().unwrap());
    listener
        .listen(&mut lp, move |lp, l, accepted| {
            l.close(lp);
            let outer = Tls::server(lp, accepted.unwrap(), &outer_acc).unwrap();
            let inner: Tls<Tls<Tcp>> = Tls::server(lp, outer, &inner_acc).unwrap();
            echo(lp, inner, EchoOptions::default()).unwrap();
        })
        .unwrap();
    let tcp = Tcp::connect(&mut lp, addr, |_, _, _| {}).unwrap();
    let outer = Tls::client(&mut lp, tcp, &outer_pki.connector().unwrap(), "localhost").unwrap();
    let inner = Tls::client(&mut lp, outer, &inner_pki.connector().unwrap(), "localhost").unwrap();
    let data = Bytes::from(pattern(5, 0, 300_000));
    inner
        .write(&mut lp, data.clone(), |_, _, r| r.unwrap())
        .unwrap();
    inner.shutdown(&mut lp, |_, _, r| r.unwrap()).unwrap();
    let got = Rc::new(RefCell::new(Vec::new()));
    let eof = Rc::new(Cell::new(false));
    let (g, e) = (got.clone(), eof.clone());
    inner
        .start_read(&mut lp, move |lp, t, r| match r.unwrap() {
            Some(b) => g.borrow_mut().extend_from_slice(&b),
            None => {
                e.set(true);
                t.close(lp, |_, _| {});
            }
        })
        .unwrap();
    run_until(&mut lp, LIMIT, || eof.get());
    assert_eq!(&got.borrow()[..], &data[..]);
    run_to_end(&mut lp, LIMIT);
}

#[test]
fn a_write_already_handed_to_the_transport_succeeds_even_if_closed_right_after() {
    let pki = pki();
    let mut lp = Loop::new().unwrap();
    let (listener, addr) = tls_echo_server(&mut lp, pki.acceptor().unwrap(), |_, _| {});
    let order = Rc::new(RefCell::new(Vec::new()));
    let tcp = Tcp::connect(&mut lp, addr, |_, _, _| {}).unwrap();
    let tls = Tls::client(&mut lp, tcp, &pki.connector().unwrap(), "localhost").unwrap();
    let ready = Rc::new(Cell::new(false));
    let r = ready.clone();
    tls.on_handshake(&mut lp, move |_, _, res| {
        res.unwrap();
        r.set(true);
    })
    .unwrap();
    run_until(&mut lp, LIMIT, || ready.get());
    // The socket is idle and the write is not small (small writes are corked until the
    // end of the callback): its records go to the kernel inside this write call, and its
    // callback is queued with success before `close` runs.
    let o = order.clone();
    tls.write(&mut lp, vec![7u8; 20_000], move |_, _, r| {
        o.borrow_mut().push(format!("first {r:?}"))
    })
    .unwrap();
    assert_eq!(
        tls.write_queue_size(&lp),
        0,
        "the ciphertext was written at once"
    );
    let o = order.clone();
    tls.close(&mut lp, move |_, _| o.borrow_mut().push("close".into()));
    assert!(matches!(
        tls.write(&mut lp, &b"late"[..], |_, _, _| panic!(
            "refused write's callback ran"
        )),
        Err(Error::Closed)
    ));
    run_until(&mut lp, LIMIT, || order.borrow().len() == 2);
    assert_eq!(*order.borrow(), ["first Ok(())", "close"]);
    listener.close(&mut lp);
    run_to_end(&mut lp, LIMIT);
}
