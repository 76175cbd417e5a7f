//! The TCP handle and the loop over loopback: semantics of the `Stream` contract.

mod util;

use std::cell::{Cell, RefCell};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use biotls::echo::{EchoOptions, echo};
use biotls::{Async, Error, Loop, Stream, Tcp, TcpListener, Timer};
use bytes::Bytes;
use util::{pattern, run_to_end, run_until};

const LIMIT: Duration = Duration::from_secs(30);

/// Starts an echo server on an ephemeral port of `lp`.
fn echo_server(lp: &mut Loop, opts: EchoOptions) -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind(lp, "127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr(lp).unwrap();
    listener
        .listen(lp, move |lp, _, accepted| {
            let tcp = accepted.expect("accept");
            echo(lp, tcp, opts).unwrap();
        })
        .unwrap();
    (listener, addr)
}

/// Connects, writes `data`, shuts down, and collects everything read until EOF.
fn echo_client(lp: &mut Loop, addr: SocketAddr, data: Bytes) -> Rc<RefCell<Option<Vec<u8>>>> {
    let result = Rc::new(RefCell::new(None));
    let received = Rc::new(RefCell::new(Vec::new()));
    let out = Rc::clone(&result);
    Tcp::connect(lp, addr, move |lp, tcp, r| {
        r.expect("connect");
        tcp.write(lp, data, |_, _, r| r.expect("write")).unwrap();
        tcp.shutdown(lp, |_, _, r| r.expect("shutdown")).unwrap();
        tcp.start_read(lp, move |lp, tcp, r| match r.expect("read") {
            Some(b) => received.borrow_mut().extend_from_slice(&b),
            None => {
                *out.borrow_mut() = Some(std::mem::take(&mut *received.borrow_mut()));
                tcp.close(lp, |_, _| {});
            }
        })
        .unwrap();
    })
    .unwrap();
    result
}

#[test]
fn round_trip_through_echo_server() {
    let mut lp = Loop::new().unwrap();
    let (listener, addr) = echo_server(&mut lp, EchoOptions::default());
    let got = echo_client(&mut lp, addr, Bytes::from_static(b"hello, loop"));
    run_until(&mut lp, LIMIT, || got.borrow().is_some());
    assert_eq!(got.borrow().as_deref(), Some(&b"hello, loop"[..]));
    listener.close(&mut lp);
    run_to_end(&mut lp, LIMIT);
}

#[test]
fn sixty_four_mib_through_one_connection_arrive_intact() {
    let mut lp = Loop::new().unwrap();
    let (listener, addr) = echo_server(&mut lp, EchoOptions::default());
    const TOTAL: usize = 64 << 20;
    const CHUNK: usize = 256 << 10;
    let received = Rc::new(Cell::new(0usize));
    let mismatch = Rc::new(Cell::new(None::<usize>));
    let eof = Rc::new(Cell::new(false));
    let (r2, m2, e2) = (received.clone(), mismatch.clone(), eof.clone());
    Tcp::connect(&mut lp, addr, move |lp, tcp, r| {
        r.unwrap();
        // Queue everything at once: write never blocks, the handle queues.
        for i in 0..TOTAL / CHUNK {
            let chunk = Bytes::from(pattern(7, (i * CHUNK) as u64, CHUNK));
            tcp.write(lp, chunk, |_, _, r| r.unwrap()).unwrap();
        }
        assert!(tcp.write_queue_size(lp) > 0);
        tcp.shutdown(lp, |_, _, r| r.unwrap()).unwrap();
        tcp.start_read(lp, move |lp, tcp, r| match r.unwrap() {
            Some(b) => {
                let at = r2.get();
                if m2.get().is_none() && b[..] != pattern(7, at as u64, b.len())[..] {
                    m2.set(Some(at));
                }
                r2.set(at + b.len());
            }
            None => {
                e2.set(true);
                tcp.close(lp, |_, _| {});
            }
        })
        .unwrap();
    })
    .unwrap();
    run_until(&mut lp, Duration::from_secs(120), || eof.get());
    assert_eq!(received.get(), TOTAL);
    assert_eq!(mismatch.get(), None, "first mismatching offset");
    listener.close(&mut lp);
    run_to_end(&mut lp, LIMIT);
}

#[test]
fn two_hundred_concurrent_connections_each_get_their_own_echo() {
    let mut lp = Loop::new().unwrap();
    let (listener, addr) = echo_server(&mut lp, EchoOptions::default());
    let results: Vec<_> = (0..200u64)
        .map(|i| {
            let data = Bytes::from(pattern(i, 0, 10_000 + i as usize));
            (data.clone(), echo_client(&mut lp, addr, data))
        })
        .collect();
    run_until(&mut lp, LIMIT, || {
        results.iter().all(|(_, r)| r.borrow().is_some())
    });
    for (sent, got) in &results {
        assert_eq!(got.borrow().as_deref(), Some(&sent[..]));
    }
    listener.close(&mut lp);
    run_to_end(&mut lp, LIMIT);
}

#[test]
fn half_close_lets_the_peer_keep_writing() {
    // A blocking std client: sends, half-closes, then still reads the reply.
    let mut lp = Loop::new().unwrap();
    let listener = TcpListener::bind(&mut lp, "127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr(&lp).unwrap();
    let client = std::thread::spawn(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(LIMIT)).unwrap();
        s.write_all(b"question").unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut reply = Vec::new();
        s.read_to_end(&mut reply).unwrap();
        reply
    });
    let done = Rc::new(Cell::new(false));
    let d = done.clone();
    listener
        .listen(&mut lp, move |lp, listener, accepted| {
            let tcp = accepted.unwrap();
            listener.close(lp);
            let got = Rc::new(RefCell::new(Vec::new()));
            let d = d.clone();
            tcp.start_read(lp, move |lp, tcp, r| match r.unwrap() {
                Some(b) => got.borrow_mut().extend_from_slice(&b),
                None => {
                    // The peer's write side is closed; ours is still open.
                    assert_eq!(&got.borrow()[..], b"question");
                    tcp.write(lp, &b"answer after your EOF"[..], |_, _, r| r.unwrap())
                        .unwrap();
                    let d = d.clone();
                    tcp.shutdown(lp, move |lp, tcp, r| {
                        r.unwrap();
                        d.set(true);
                        tcp.close(lp, |_, _| {});
                    })
                    .unwrap();
                }
            })
            .unwrap();
        })
        .unwrap();
    run_until(&mut lp, LIMIT, || done.get());
    assert_eq!(client.join().unwrap(), b"answer after your EOF");
}

#[test]
fn close_cancels_queued_writes_before_the_close_callback() {
    let mut lp = Loop::new().unwrap();
    // A peer that accepts but never reads, so writes stay queued.
    let peer = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = peer.local_addr().unwrap();
    let order = Rc::new(RefCell::new(Vec::<String>::new()));
    let o = order.clone();
    Tcp::connect(&mut lp, addr, move |lp, tcp, r| {
        r.unwrap();
        let big = Bytes::from(vec![0u8; 32 << 20]);
        for i in 0..3 {
            let o = o.clone();
            tcp.write(lp, big.clone(), move |_, _, r| {
                o.borrow_mut()
                    .push(format!("write{i}:{}", matches!(r, Err(Error::Cancelled))));
            })
            .unwrap();
        }
        let o2 = o.clone();
        tcp.shutdown(lp, move |_, _, r| {
            o2.borrow_mut()
                .push(format!("shutdown:{}", matches!(r, Err(Error::Cancelled))));
        })
        .unwrap();
        assert!(tcp.write_queue_size(lp) > 0);
        let o3 = o.clone();
        tcp.close(lp, move |_, _| o3.borrow_mut().push("close".into()));
        // Nothing ran inside close.
        assert!(o.borrow().is_empty());
        assert_eq!(tcp.write_queue_size(lp), 0);
    })
    .unwrap();
    let _accepted = peer.accept().unwrap();
    run_until(&mut lp, LIMIT, || order.borrow().len() == 5);
    assert_eq!(
        *order.borrow(),
        [
            "write0:true",
            "write1:true",
            "write2:true",
            "shutdown:true",
            "close"
        ]
    );
}

#[test]
fn connect_refused_is_an_error() {
    let mut lp = Loop::new().unwrap();
    // Bind then drop a listener to get a port that is (almost certainly) closed.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let got = Rc::new(RefCell::new(None));
    let g = got.clone();
    Tcp::connect(&mut lp, addr, move |lp, tcp, r| {
        *g.borrow_mut() = Some(r.map_err(|e| e.io_kind()));
        tcp.close(lp, |_, _| {});
    })
    .unwrap();
    run_to_end(&mut lp, LIMIT);
    assert_eq!(
        *got.borrow(),
        Some(Err(Some(std::io::ErrorKind::ConnectionRefused)))
    );
}

#[test]
fn connect_by_host_name_resolves_off_the_loop() {
    let mut lp = Loop::new().unwrap();
    let (listener, addr) = echo_server(&mut lp, EchoOptions::default());
    let connected = Rc::new(Cell::new(false));
    let c = connected.clone();
    Tcp::connect_host(
        &mut lp,
        &format!("localhost:{}", addr.port()),
        move |lp, tcp, r| {
            r.unwrap();
            c.set(true);
            tcp.close(lp, |_, _| {});
        },
    )
    .unwrap();
    run_until(&mut lp, LIMIT, || connected.get());
    listener.close(&mut lp);
    run_to_end(&mut lp, LIMIT);
}

#[test]
fn connect_timeout_fails_a_connect_that_hangs() {
    let mut lp = Loop::new().unwrap();
    // A listener with a full backlog never completes new handshakes... on loopback the
    // kernel still answers SYNs, so use an address that drops them instead: a port on a
    // non-routable TEST-NET address would leave loopback. Instead, fill the backlog.
    let full = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    full.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    full.listen(0).unwrap();
    let addr = full.local_addr().unwrap().as_socket().unwrap();
    // Occupy the backlog with blocking connects that are never accepted.
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            fillers.push(s);
        }
    }
    let got = Rc::new(RefCell::new(None));
    let g = got.clone();
    let tcp = Tcp::connect(&mut lp, addr, move |lp, tcp, r| {
        *g.borrow_mut() = Some(r);
        tcp.close(lp, |_, _| {});
    })
    .unwrap();
    tcp.set_connect_timeout(&mut lp, Duration::from_millis(300))
        .unwrap();
    run_to_end(&mut lp, LIMIT);
    let result = got.borrow_mut().take().expect("connect callback ran");
    assert!(
        matches!(
            result,
            Err(Error::TimedOut(biotls::error::Timeout::Connect))
        ),
        "expected a connect timeout, got {result:?}"
    );
}

#[test]
fn calls_on_a_closed_handle_are_errors_not_panics() {
    let mut lp = Loop::new().unwrap();
    let (listener, addr) = echo_server(&mut lp, EchoOptions::default());
    let checked: Rc<RefCell<Option<Rc<Cell<i32>>>>> = Rc::default();
    let c = checked.clone();
    Tcp::connect(&mut lp, addr, move |lp, tcp, r| {
        r.unwrap();
        let closed = Rc::new(Cell::new(0));
        let cl = closed.clone();
        tcp.close(lp, move |_, _| cl.set(cl.get() + 1));
        // A second close does nothing (its callback never runs).
        let cl = closed.clone();
        tcp.close(lp, move |_, _| cl.set(cl.get() + 100));
        assert!(matches!(
            tcp.write(lp, &b"x"[..], |_, _, _| panic!("cb of a refused write")),
            Err(Error::Closed)
        ));
        assert!(matches!(
            tcp.shutdown(lp, |_, _, _| panic!("cb of a refused shutdown")),
            Err(Error::Closed)
        ));
        assert!(matches!(
            tcp.start_read(lp, |_, _, _| panic!("read cb")),
            Err(Error::Closed)
        ));
        assert!(matches!(tcp.stop_read(lp), Err(Error::Closed)));
        assert!(matches!(tcp.try_write(lp, b"x"), Err(Error::Closed)));
        assert!(matches!(tcp.peer_addr(lp), Err(Error::Closed)));
        assert!(!tcp.is_open(lp));
        *c.borrow_mut() = Some(closed);
    })
    .unwrap();
    run_until(&mut lp, LIMIT, || checked.borrow().is_some());
    listener.close(&mut lp);
    run_to_end(&mut lp, LIMIT);
    let closed = checked.borrow_mut().take().expect("connected");
    assert_eq!(
        closed.get(),
        1,
        "the first close callback ran once, the second never"
    );
}

#[test]
fn a_stale_id_never_reaches_the_handle_that_reused_its_slot() {
    let mut lp = Loop::new().unwrap();
    let t1 = Timer::new(&mut lp).unwrap();
    t1.close(&mut lp);
    let t2 = Timer::new(&mut lp).unwrap(); // reuses the slot
    assert!(matches!(t1.stop(&mut lp), Err(Error::Closed)));
    assert!(t2.stop(&mut lp).is_ok());
    // An id from another loop is refused too.
    let mut other = Loop::new().unwrap();
    assert!(matches!(t2.stop(&mut other), Err(Error::Closed)));
}

#[test]
fn write_and_shutdown_callbacks_never_run_inside_the_call() {
    let mut lp = Loop::new().unwrap();
    let (listener, addr) = echo_server(&mut lp, EchoOptions::default());
    let inside = Rc::new(Cell::new(true));
    let ran = Rc::new(Cell::new(0));
    let (i, r) = (inside.clone(), ran.clone());
    Tcp::connect(&mut lp, addr, move |lp, tcp, res| {
        res.unwrap();
        let (i1, r1, i2, r2) = (i.clone(), r.clone(), i.clone(), r.clone());
        i.set(true);
        // An empty write on an idle socket completes at once, yet still later.
        tcp.write(lp, Bytes::new(), move |_, _, res| {
            assert!(!i1.get(), "write callback ran inside write");
            res.unwrap();
            r1.set(r1.get() + 1);
        })
        .unwrap();
        tcp.shutdown(lp, move |lp, tcp, res| {
            assert!(!i2.get(), "shutdown callback ran inside shutdown");
            res.unwrap();
            r2.set(r2.get() + 1);
            tcp.close(lp, |_, _| {});
        })
        .unwrap();
        i.set(false);
    })
    .unwrap();
    run_until(&mut lp, LIMIT, || ran.get() == 2);
    assert!(
        matches!(
            TcpListener::bind(&mut lp, addr).map(|_| ()),
            Err(Error::Io(_))
        ),
        "binding a port in use is an I/O error"
    );
    listener.close(&mut lp);
    run_to_end(&mut lp, LIMIT);
}

#[test]
fn write_after_shutdown_is_refused() {
    let mut lp = Loop::new().unwrap();
    let (listener, addr) = echo_server(&mut lp, EchoOptions::default());
    let checked = Rc::new(Cell::new(false));
    let c = checked.clone();
    Tcp::connect(&mut lp, addr, move |lp, tcp, r| {
        r.unwrap();
        tcp.shutdown(lp, |_, _, r| r.unwrap()).unwrap();
        assert!(matches!(
            tcp.write(lp, &b"late"[..], |_, _, _| panic!()),
            Err(Error::InvalidState(_))
        ));
        assert!(matches!(
            tcp.shutdown(lp, |_, _, _| panic!()),
            Err(Error::InvalidState(_))
        ));
        c.set(true);
        tcp.close(lp, |_, _| {});
    })
    .unwrap();
    run_until(&mut lp, LIMIT, || checked.get());
    listener.close(&mut lp);
    run_to_end(&mut lp, LIMIT);
}

#[test]
fn closing_own_handle_inside_its_read_callback() {
    let mut lp = Loop::new().unwrap();
    let listener = TcpListener::bind(&mut lp, "127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr(&lp).unwrap();
    let calls = Rc::new(Cell::new(0));
    let closed = Rc::new(Cell::new(false));
    let (c, cl) = (calls.clone(), closed.clone());
    listener
        .listen(&mut lp, move |lp, l, accepted| {
            l.close(lp);
            let tcp = accepted.unwrap();
            let (c, cl) = (c.clone(), cl.clone());
            tcp.start_read(lp, move |lp, tcp, _| {
                c.set(c.get() + 1);
                let cl = cl.clone();
                tcp.close(lp, move |_, _| cl.set(true));
            })
            .unwrap();
        })
        .unwrap();
    let writer = std::thread::spawn(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        // Several writes, so more data is waiting when the handle closes itself.
        for _ in 0..50 {
            if s.write_all(&[1u8; 4096]).is_err() {
                break;
            }
        }
    });
    run_to_end(&mut lp, LIMIT);
    writer.join().unwrap();
    assert_eq!(calls.get(), 1, "no read callback after close");
    assert!(closed.get());
}

#[test]
fn stop_and_restart_reading_inside_the_read_callback_loses_nothing() {
    let mut lp = Loop::new().unwrap();
    let listener = TcpListener::bind(&mut lp, "127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr(&lp).unwrap();
    const TOTAL: usize = 4 << 20;
    let got = Rc::new(RefCell::new(Vec::with_capacity(TOTAL)));
    let eof = Rc::new(Cell::new(false));

    fn reader(
        got: Rc<RefCell<Vec<u8>>>,
        eof: Rc<Cell<bool>>,
    ) -> impl FnMut(&mut Loop, Tcp, biotls::ReadResult) {
        move |lp, tcp, r| match r.unwrap() {
            Some(b) => {
                got.borrow_mut().extend_from_slice(&b);
                // Stop, then restart with a fresh callback, every time.
                tcp.stop_read(lp).unwrap();
                tcp.start_read(lp, reader(got.clone(), eof.clone()))
                    .unwrap();
            }
            None => {
                eof.set(true);
                tcp.close(lp, |_, _| {});
            }
        }
    }
    let (g, e) = (got.clone(), eof.clone());
    listener
        .listen(&mut lp, move |lp, l, accepted| {
            l.close(lp);
            accepted
                .unwrap()
                .start_read(lp, reader(g.clone(), e.clone()))
                .unwrap();
        })
        .unwrap();
    let writer = std::thread::spawn(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.write_all(&pattern(3, 0, TOTAL)).unwrap();
    });
    run_until(&mut lp, LIMIT, || eof.get());
    writer.join().unwrap();
    assert_eq!(got.borrow().len(), TOTAL);
    assert!(*got.borrow() == pattern(3, 0, TOTAL));
}

#[test]
fn writing_to_another_handle_inside_a_read_callback() {
    // A relay: what client A sends, the server writes to client B.
    let mut lp = Loop::new().unwrap();
    let listener = TcpListener::bind(&mut lp, "127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr(&lp).unwrap();
    let accepted: Rc<RefCell<Vec<Tcp>>> = Rc::default();
    let a = accepted.clone();
    listener
        .listen(&mut lp, move |lp, l, r| {
            a.borrow_mut().push(r.unwrap());
            if a.borrow().len() == 2 {
                l.close(lp);
                let (from, to) = (a.borrow()[0], a.borrow()[1]);
                from.start_read(lp, move |lp, from, r| match r.unwrap() {
                    Some(b) => to.write(lp, b, |_, _, r| r.unwrap()).unwrap(),
                    None => {
                        from.close(lp, |_, _| {});
                        to.shutdown(lp, |lp, to, _| to.close(lp, |_, _| {}))
                            .unwrap();
                    }
                })
                .unwrap();
            }
        })
        .unwrap();
    let relay = std::thread::spawn(move || {
        let mut sender = std::net::TcpStream::connect(addr).unwrap();
        // Make sure the sender is accepted first.
        std::thread::sleep(Duration::from_millis(100));
        let mut receiver = std::net::TcpStream::connect(addr).unwrap();
        receiver.set_read_timeout(Some(LIMIT)).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        sender.write_all(b"passed along").unwrap();
        drop(sender);
        let mut out = Vec::new();
        receiver.read_to_end(&mut out).unwrap();
        out
    });
    run_to_end(&mut lp, LIMIT);
    assert_eq!(relay.join().unwrap(), b"passed along");
}

#[test]
fn timers_fire_in_deadline_order_and_repeat_until_stopped() {
    let mut lp = Loop::new().unwrap();
    let order = Rc::new(RefCell::new(Vec::new()));
    for (name, ms) in [("c", 30u64), ("a", 10), ("b", 20), ("a2", 10)] {
        let o = order.clone();
        let t = Timer::new(&mut lp).unwrap();
        t.start(&mut lp, Duration::from_millis(ms), None, move |lp, t| {
            o.borrow_mut().push(name.to_string());
            t.close(lp);
        })
        .unwrap();
    }
    let ticks = Rc::new(Cell::new(0));
    let tk = ticks.clone();
    let rep = Timer::new(&mut lp).unwrap();
    rep.start(
        &mut lp,
        Duration::from_millis(5),
        Some(Duration::from_millis(5)),
        move |lp, t| {
            tk.set(tk.get() + 1);
            if tk.get() == 3 {
                t.stop(lp).unwrap();
            }
        },
    )
    .unwrap();
    let stopped = Timer::new(&mut lp).unwrap();
    stopped
        .start(&mut lp, Duration::from_millis(1), None, |_, _| {
            panic!("a stopped timer fired")
        })
        .unwrap();
    stopped.stop(&mut lp).unwrap();
    run_to_end(&mut lp, LIMIT);
    assert_eq!(*order.borrow(), ["a", "a2", "b", "c"]);
    assert_eq!(ticks.get(), 3);
}

#[test]
fn unref_handles_do_not_keep_run_alive() {
    let mut lp = Loop::new().unwrap();
    let t = Timer::new(&mut lp).unwrap();
    t.start(&mut lp, Duration::from_secs(3600), None, |_, _| {
        panic!("fired")
    })
    .unwrap();
    t.unref(&mut lp).unwrap();
    let listener = TcpListener::bind(&mut lp, "127.0.0.1:0".parse().unwrap()).unwrap();
    listener.listen(&mut lp, |_, _, _| {}).unwrap();
    listener.unref(&mut lp).unwrap();
    let started = std::time::Instant::now();
    assert!(!lp.run().unwrap());
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn async_handle_wakes_the_loop_from_another_thread() {
    let mut lp = Loop::new().unwrap();
    let woken = Rc::new(Cell::new(0));
    let w = woken.clone();
    let (_handle, sender) = Async::new(&mut lp, move |lp, a| {
        w.set(w.get() + 1);
        a.close(lp);
    })
    .unwrap();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        sender.send().unwrap();
    });
    run_to_end(&mut lp, LIMIT);
    t.join().unwrap();
    assert_eq!(woken.get(), 1);
}

#[test]
fn stop_makes_run_return() {
    let mut lp = Loop::new().unwrap();
    let t = Timer::new(&mut lp).unwrap();
    t.start(
        &mut lp,
        Duration::from_millis(5),
        Some(Duration::from_millis(5)),
        |lp, _| lp.stop(),
    )
    .unwrap();
    assert!(
        lp.run().unwrap(),
        "stopped with the repeating timer still active"
    );
    t.close(&mut lp);
    assert!(!lp.run().unwrap());
}

#[test]
fn echo_bounds_the_queue_of_a_client_that_never_reads() {
    let mut lp = Loop::new().unwrap();
    let opts = EchoOptions {
        high_water: 256 * 1024,
        low_water: 64 * 1024,
    };
    let listener = TcpListener::bind(&mut lp, "127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr(&lp).unwrap();
    let server_side: Rc<Cell<Option<Tcp>>> = Rc::default();
    let s = server_side.clone();
    listener
        .listen(&mut lp, move |lp, l, r| {
            l.close(lp);
            let tcp = r.unwrap();
            s.set(Some(tcp));
            echo(lp, tcp, opts).unwrap();
        })
        .unwrap();
    // The client sends 64 MiB and never reads; its writes eventually block.
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let sent2 = sent.clone();
    let client = std::thread::spawn(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
        let chunk = vec![9u8; 64 * 1024];
        for _ in 0..1024 {
            match s.write(&chunk) {
                Ok(n) => {
                    sent2.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                }
                Err(_) => break, // write timed out: the server stopped reading
            }
        }
        s
    });
    let mut max_queue = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !client.is_finished() {
        assert!(std::time::Instant::now() < deadline);
        lp.run_nowait().unwrap();
        if let Some(tcp) = server_side.get() {
            max_queue = max_queue.max(tcp.write_queue_size(&lp));
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    let _stream = client.join().unwrap();
    let total = sent.load(std::sync::atomic::Ordering::Relaxed);
    assert!(total > 4 << 20, "client sent only {total} bytes");
    assert!(total < 64 << 20, "the server kept reading everything");
    // One read (up to 256 KiB budget) may land on top of the high-water mark.
    assert!(
        max_queue <= opts.high_water + 512 * 1024,
        "server queue reached {max_queue} bytes"
    );
    assert!(max_queue > 0);
}

#[test]
fn ipv6_loopback_round_trip_when_available() {
    let mut lp = Loop::new().unwrap();
    let listener = match TcpListener::bind(&mut lp, "[::1]:0".parse().unwrap()) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("SKIPPED: no IPv6 loopback here ({e})");
            assert!(
                std::env::var_os("CI").is_none(),
                "CI machines have ::1: {e}"
            );
            return;
        }
    };
    let addr = listener.local_addr(&lp).unwrap();
    assert!(addr.is_ipv6() && addr.port() != 0);
    listener
        .listen(&mut lp, |lp, _, r| {
            echo(lp, r.unwrap(), EchoOptions::default()).unwrap();
        })
        .unwrap();
    let got = echo_client(&mut lp, addr, Bytes::from_static(b"over ::1"));
    run_until(&mut lp, LIMIT, || got.borrow().is_some());
    assert_eq!(got.borrow().as_deref(), Some(&b"over ::1"[..]));
    listener.close(&mut lp);
    run_to_end(&mut lp, LIMIT);
}

#[test]
fn vectored_writes_and_try_write_keep_order() {
    let mut lp = Loop::new().unwrap();
    let (listener, addr) = echo_server(&mut lp, EchoOptions::default());
    let got = Rc::new(RefCell::new(None));
    let g = got.clone();
    let done = Rc::new(Cell::new(0));
    let d = done.clone();
    Tcp::connect(&mut lp, addr, move |lp, tcp, r| {
        r.unwrap();
        // The socket is idle: try_write hands bytes to the kernel at once.
        let n = tcp.try_write(lp, b"one ").unwrap();
        assert_eq!(n, 4);
        let parts = ["two ", "three ", "four "].map(|p| Bytes::from_static(p.as_bytes()));
        let d2 = d.clone();
        tcp.write_vectored(lp, parts, move |_, _, r| {
            r.unwrap();
            d2.set(d2.get() + 1);
        })
        .unwrap();
        // Writes are queued behind the vectored one... or already written; either
        // way try_write never jumps the queue.
        if tcp.write_queue_size(lp) > 0 {
            assert_eq!(tcp.try_write(lp, b"x").unwrap(), 0);
        }
        tcp.write(lp, &b"five"[..], |_, _, r| r.unwrap()).unwrap();
        tcp.shutdown(lp, |_, _, r| r.unwrap()).unwrap();
        let mut all = Vec::new();
        let g = g.clone();
        tcp.start_read(lp, move |lp, tcp, r| match r.unwrap() {
            Some(b) => all.extend_from_slice(&b),
            None => {
                *g.borrow_mut() = Some(std::mem::take(&mut all));
                tcp.close(lp, |_, _| {});
            }
        })
        .unwrap();
    })
    .unwrap();
    run_until(&mut lp, LIMIT, || got.borrow().is_some());
    assert_eq!(
        got.borrow().as_deref(),
        Some(&b"one two three four five"[..])
    );
    assert_eq!(done.get(), 1, "one callback for the vectored write");
    listener.close(&mut lp);
    run_to_end(&mut lp, LIMIT);
}

#[test]
fn signal_handle_runs_its_callback_on_the_loop() {
    use biotls::Signal;
    use biotls::signal::SIGUSR1;
    let mut lp = Loop::new().unwrap();
    let sig = Signal::new(&mut lp).unwrap();
    let caught = Rc::new(Cell::new(0));
    let c = caught.clone();
    sig.start(&mut lp, &[SIGUSR1], move |lp, sig, signum| {
        assert_eq!(signum, SIGUSR1);
        c.set(c.get() + 1);
        sig.close(lp);
    })
    .unwrap();
    signal_hook::low_level::raise(SIGUSR1).unwrap();
    run_to_end(&mut lp, LIMIT);
    assert_eq!(caught.get(), 1);
}
