//! The loop's and `Tcp`'s callback contract on the call orders that broke it: timers
//! restarted from their own callbacks, huge timeouts, failed connects with requests
//! queued, data arriving with the connect's completion, endings heard by late readers,
//! write errors in the middle of a flush, panicking background jobs.

mod util;

use std::cell::{Cell, RefCell};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::rc::Rc;
use std::sync::mpsc;
use std::time::Duration;

use biotls::{Error, Loop, Pipe, Stream, Tcp, TcpListener, Timer};
use bytes::Bytes;
use socket2::SockRef;
use util::{run_to_end, run_until};

const LIMIT: Duration = Duration::from_secs(20);

/// Runs `f` on a thread of its own and fails if it does not finish within `limit` (a
/// loop that spins for ever never returns; the test must still fail).
fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit)
        .unwrap_or_else(|_| panic!("did not finish within {limit:?}"))
}

type Log = Rc<RefCell<Vec<String>>>;

fn log() -> Log {
    Rc::new(RefCell::new(Vec::new()))
}

fn note(log: &Log, what: impl Into<String>) {
    log.borrow_mut().push(what.into());
}

fn outcome<T>(r: &Result<T, Error>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(Error::Cancelled) => "cancelled".into(),
        Err(Error::TimedOut(what)) => format!("timed out ({what:?})"),
        Err(e) => match e.io_kind() {
            Some(kind) => format!("{kind:?}"),
            None => format!("{e}"),
        },
    }
}

// ---- timers ----

#[test]
fn zero_ms_timer_restarted_from_its_own_callback_does_not_starve_the_loop() {
    let (fires, other, stopped_after) = within(LIMIT, || {
        let mut lp = Loop::new().unwrap();
        let fires = Rc::new(Cell::new(0u64));
        let spin = Timer::new(&mut lp).unwrap();
        fn restart(lp: &mut Loop, t: Timer, fires: Rc<Cell<u64>>) {
            fires.set(fires.get() + 1);
            let again = Rc::clone(&fires);
            t.start(lp, Duration::ZERO, None, move |lp, t| {
                restart(lp, t, Rc::clone(&again))
            })
            .unwrap();
        }
        let f = Rc::clone(&fires);
        spin.start(&mut lp, Duration::ZERO, None, move |lp, t| {
            restart(lp, t, Rc::clone(&f))
        })
        .unwrap();
        // Another timer, due a little later, must still run; it stops the loop.
        let other = Rc::new(Cell::new(false));
        let o = Rc::clone(&other);
        let f = Rc::clone(&fires);
        let stopped_after = Rc::new(Cell::new(0));
        let s = Rc::clone(&stopped_after);
        let stopper = Timer::new(&mut lp).unwrap();
        stopper
            .start(&mut lp, Duration::from_millis(20), None, move |lp, _| {
                o.set(true);
                s.set(f.get());
                lp.stop();
            })
            .unwrap();
        let stopped = lp.run().unwrap();
        assert!(
            stopped,
            "run ended by stop with the spinning timer still active"
        );
        (fires.get(), other.get(), stopped_after.get())
    });
    assert!(other, "the 20 ms timer never ran");
    assert!(fires >= 1);
    // Once per iteration at most: stop took effect at the end of that iteration.
    assert!(
        fires <= stopped_after + 1,
        "{fires} fires, {stopped_after} when stopped"
    );
}

#[test]
fn a_timer_started_in_a_timer_pass_runs_after_the_next_poll() {
    let mut lp = Loop::new().unwrap();
    let (a, b) = Pipe::pair(&mut lp).unwrap();
    let order = log();
    let o = Rc::clone(&order);
    a.start_read(&mut lp, move |lp, a, r| {
        note(&o, format!("read {}", r.unwrap().map_or(0, |d| d.len())));
        a.close(lp, |_, _| {});
    })
    .unwrap();
    let first = Timer::new(&mut lp).unwrap();
    let o = Rc::clone(&order);
    first
        .start(&mut lp, Duration::from_millis(5), None, move |lp, t| {
            note(&o, "first");
            // Data for `a` (its event comes with the next poll) and a 0 ms timer: the
            // timer must not run in this pass, so the read comes first.
            b.write(lp, &b"x"[..], |_, _, _| {}).unwrap();
            let o2 = Rc::clone(&o);
            let second = Timer::new(lp).unwrap();
            second
                .start(lp, Duration::ZERO, None, move |lp, t2| {
                    note(&o2, "second");
                    t2.close(lp);
                })
                .unwrap();
            t.close(lp);
        })
        .unwrap();
    run_until(&mut lp, LIMIT, || order.borrow().len() == 3);
    assert_eq!(*order.borrow(), ["first", "read 1", "second"]);
    b.close(&mut lp, |_, _| {});
    run_to_end(&mut lp, LIMIT);
}

#[test]
fn a_due_timer_stopped_or_restarted_by_an_earlier_callback_in_the_pass_does_not_run() {
    let mut lp = Loop::new().unwrap();
    let order = log();
    let t1 = Timer::new(&mut lp).unwrap();
    let t2 = Timer::new(&mut lp).unwrap();
    let t3 = Timer::new(&mut lp).unwrap();
    let o = Rc::clone(&order);
    t1.start(&mut lp, Duration::from_millis(2), None, move |lp, _| {
        note(&o, "t1");
        t2.stop(lp).unwrap();
        let o2 = Rc::clone(&o);
        t3.start(lp, Duration::from_millis(30), None, move |_, _| {
            note(&o2, "t3 late")
        })
        .unwrap();
    })
    .unwrap();
    let o = Rc::clone(&order);
    t2.start(&mut lp, Duration::from_millis(2), None, move |_, _| {
        note(&o, "t2")
    })
    .unwrap();
    let o = Rc::clone(&order);
    t3.start(&mut lp, Duration::from_millis(2), None, move |_, _| {
        note(&o, "t3 early")
    })
    .unwrap();
    // All three due in the same pass (started before any poll, same cached time).
    std::thread::sleep(Duration::from_millis(5));
    run_to_end(&mut lp, LIMIT);
    assert_eq!(*order.borrow(), ["t1", "t3 late"]);
    for t in [t1, t2, t3] {
        t.close(&mut lp);
    }
}

#[test]
fn repeat_of_zero_means_one_shot() {
    let mut lp = Loop::new().unwrap();
    let fires = Rc::new(Cell::new(0));
    let t = Timer::new(&mut lp).unwrap();
    let f = Rc::clone(&fires);
    t.start(
        &mut lp,
        Duration::from_millis(1),
        Some(Duration::ZERO),
        move |_, _| f.set(f.get() + 1),
    )
    .unwrap();
    run_to_end(&mut lp, LIMIT);
    assert_eq!(fires.get(), 1);
    assert!(!t.is_active(&lp));
    t.close(&mut lp);
}

#[test]
fn timeouts_too_large_to_represent_mean_never_not_a_panic() {
    let mut lp = Loop::new().unwrap();
    let t = Timer::new(&mut lp).unwrap();
    t.start(&mut lp, Duration::MAX, None, |_, _| panic!("fired"))
        .unwrap();
    t.unref(&mut lp).unwrap();
    let (_refused, addr) = util::refused_addr();
    let tcp = Tcp::connect(&mut lp, addr, |_, _, _| {}).unwrap();
    tcp.set_connect_timeout(&mut lp, Duration::MAX).unwrap();
    run_to_end(&mut lp, LIMIT);
    tcp.close(&mut lp, |_, _| {});
    t.close(&mut lp);
    run_to_end(&mut lp, LIMIT);
}

// ---- connect ----

#[test]
fn a_refused_connect_completes_its_callback_then_writes_then_shutdown_then_the_reader() {
    let mut lp = Loop::new().unwrap();
    let (_refused, addr) = util::refused_addr();
    let order = log();
    let o = Rc::clone(&order);
    let tcp = Tcp::connect(&mut lp, addr, move |_, _, r| {
        note(&o, format!("connect {}", outcome(&r)))
    })
    .unwrap();
    let o = Rc::clone(&order);
    tcp.start_read(&mut lp, move |_, _, r| {
        note(&o, format!("read {}", outcome(&r)))
    })
    .unwrap();
    for i in 0..2 {
        let o = Rc::clone(&order);
        tcp.write(&mut lp, &b"hello"[..], move |_, _, r| {
            note(&o, format!("write{i} {}", outcome(&r)))
        })
        .unwrap();
    }
    let o = Rc::clone(&order);
    tcp.shutdown(&mut lp, move |_, _, r| {
        note(&o, format!("shutdown {}", outcome(&r)))
    })
    .unwrap();
    // `run` must return: nothing stays active after the failure.
    util::run_dry(&mut lp, LIMIT);
    let refused = "ConnectionRefused";
    assert_eq!(
        *order.borrow(),
        [
            format!("connect {refused}"),
            format!("write0 {refused}"),
            format!("write1 {refused}"),
            format!("shutdown {refused}"),
            format!("read {refused}"),
        ]
    );
    // The handle stays open until closed; later calls report the failure.
    assert!(tcp.is_open(&lp));
    let err = tcp.write(&mut lp, &b"x"[..], |_, _, _| {}).unwrap_err();
    assert_eq!(err.io_kind(), Some(ErrorKind::ConnectionRefused));
    // A reader started now hears the same ending, from the loop.
    let late = Rc::new(RefCell::new(None));
    let l = Rc::clone(&late);
    tcp.start_read(&mut lp, move |_, _, r| *l.borrow_mut() = Some(outcome(&r)))
        .unwrap();
    assert!(late.borrow().is_none(), "ran inside start_read");
    util::run_dry(&mut lp, LIMIT);
    assert_eq!(late.borrow().as_deref(), Some(refused));
    tcp.close(&mut lp, |_, _| {});
    util::run_dry(&mut lp, LIMIT);
}

#[test]
fn closing_inside_a_failed_connect_callback_cancels_the_queued_requests() {
    let mut lp = Loop::new().unwrap();
    let (_refused, addr) = util::refused_addr();
    let order = log();
    let o = Rc::clone(&order);
    let tcp = Tcp::connect(&mut lp, addr, move |lp, tcp, r| {
        note(&o, format!("connect {}", outcome(&r)));
        let o2 = Rc::clone(&o);
        tcp.close(lp, move |_, _| note(&o2, "close"));
    })
    .unwrap();
    let o = Rc::clone(&order);
    tcp.write(&mut lp, &b"hello"[..], move |_, _, r| {
        note(&o, format!("write {}", outcome(&r)))
    })
    .unwrap();
    let o = Rc::clone(&order);
    tcp.shutdown(&mut lp, move |_, _, r| {
        note(&o, format!("shutdown {}", outcome(&r)))
    })
    .unwrap();
    let o = Rc::clone(&order);
    tcp.start_read(&mut lp, move |_, _, r| {
        note(&o, format!("read {}", outcome(&r)))
    })
    .unwrap();
    util::run_dry(&mut lp, LIMIT);
    assert_eq!(
        *order.borrow(),
        [
            "connect ConnectionRefused",
            "write cancelled",
            "shutdown cancelled",
            "close"
        ]
    );
}

#[test]
fn a_connect_that_never_completes_times_out_and_fails_its_queued_requests() {
    let mut lp = Loop::new().unwrap();
    // A listener whose backlog is full: the kernel drops new SYNs, so the connect hangs.
    let full = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    full.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    full.listen(0).unwrap();
    let addr = full.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            fillers.push(s);
        }
    }
    let order = log();
    let o = Rc::clone(&order);
    let tcp = Tcp::connect(&mut lp, addr, move |_, _, r| {
        note(&o, format!("connect {}", outcome(&r)))
    })
    .unwrap();
    tcp.set_connect_timeout(&mut lp, Duration::from_millis(200))
        .unwrap();
    let o = Rc::clone(&order);
    tcp.write(&mut lp, &b"hello"[..], move |_, _, r| {
        note(&o, format!("write {}", outcome(&r)))
    })
    .unwrap();
    let o = Rc::clone(&order);
    tcp.shutdown(&mut lp, move |_, _, r| {
        note(&o, format!("shutdown {}", outcome(&r)))
    })
    .unwrap();
    util::run_dry(&mut lp, LIMIT);
    let timed_out = outcome::<()>(&Err(Error::TimedOut(biotls::error::Timeout::Connect)));
    assert_eq!(
        *order.borrow(),
        [
            format!("connect {timed_out}"),
            format!("write {timed_out}"),
            format!("shutdown {timed_out}"),
        ]
    );
    tcp.close(&mut lp, |_, _| {});
    util::run_dry(&mut lp, LIMIT);
}

#[test]
fn data_and_eof_arriving_with_the_connect_completion_are_delivered() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut lp = Loop::new().unwrap();
    let got = Rc::new(RefCell::new(Vec::new()));
    let ended = Rc::new(Cell::new(false));
    let connected = Rc::new(Cell::new(false));
    let c = Rc::clone(&connected);
    let tcp = Tcp::connect(&mut lp, addr, move |_, _, r| {
        r.unwrap();
        c.set(true);
    })
    .unwrap();
    let (g, e, c) = (Rc::clone(&got), Rc::clone(&ended), Rc::clone(&connected));
    tcp.start_read(&mut lp, move |lp, tcp, r| {
        assert!(c.get(), "read before the connect callback");
        match r.unwrap() {
            Some(data) => g.borrow_mut().extend_from_slice(&data),
            None => {
                e.set(true);
                tcp.close(lp, |_, _| {});
            }
        }
    })
    .unwrap();
    // The peer accepts, sends and closes before the loop polls once: the connect's
    // completion, the data and the FIN come in one readiness event.
    let (mut peer, _) = listener.accept().unwrap();
    peer.write_all(b"hello").unwrap();
    drop(peer);
    std::thread::sleep(Duration::from_millis(50));
    run_until(&mut lp, LIMIT, || ended.get());
    assert_eq!(&got.borrow()[..], b"hello");
}

#[test]
fn writes_queued_before_the_connect_complete_after_its_callback() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut lp = Loop::new().unwrap();
    let order = log();
    let o = Rc::clone(&order);
    let tcp = Tcp::connect(&mut lp, addr, move |_, _, r| {
        note(&o, format!("connect {}", outcome(&r)))
    })
    .unwrap();
    let o = Rc::clone(&order);
    tcp.write(&mut lp, &b"hello"[..], move |_, _, r| {
        note(&o, format!("write {}", outcome(&r)))
    })
    .unwrap();
    let o = Rc::clone(&order);
    tcp.shutdown(&mut lp, move |lp, tcp, r| {
        note(&o, format!("shutdown {}", outcome(&r)));
        tcp.close(lp, |_, _| {});
    })
    .unwrap();
    util::run_dry(&mut lp, LIMIT);
    let (mut peer, _) = listener.accept().unwrap();
    let mut got = Vec::new();
    peer.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"hello");
    assert_eq!(*order.borrow(), ["connect ok", "write ok", "shutdown ok"]);
}

// ---- reading after the end ----

/// An accepted `Tcp` and its peer.
fn accepted_pair(lp: &mut Loop) -> (Tcp, TcpStream) {
    let listener = TcpListener::bind(lp, "127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr(lp).unwrap();
    let peer = TcpStream::connect(addr).unwrap();
    let got = Rc::new(Cell::new(None));
    let g = Rc::clone(&got);
    listener
        .listen(lp, move |_, _, r| g.set(Some(r.unwrap())))
        .unwrap();
    run_until(lp, LIMIT, || got.get().is_some());
    listener.close(lp);
    (got.get().unwrap(), peer)
}

/// Starts a reader that records how reading ended; returns where.
fn read_ending(lp: &mut Loop, tcp: Tcp) -> Rc<RefCell<Option<String>>> {
    let end = Rc::new(RefCell::new(None));
    let e = Rc::clone(&end);
    tcp.start_read(lp, move |_, _, r| {
        if !matches!(r, Ok(Some(_))) {
            *e.borrow_mut() = Some(outcome(&r.map(|_| ())));
        }
    })
    .unwrap();
    end
}

#[test]
fn a_reader_started_after_a_reset_hears_the_reset_again() {
    let mut lp = Loop::new().unwrap();
    let (tcp, peer) = accepted_pair(&mut lp);
    SockRef::from(&peer)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(peer); // RST
    let first = read_ending(&mut lp, tcp);
    run_until(&mut lp, LIMIT, || first.borrow().is_some());
    assert_eq!(first.borrow().as_deref(), Some("ConnectionReset"));
    let second = read_ending(&mut lp, tcp);
    assert!(second.borrow().is_none(), "ran inside start_read");
    run_until(&mut lp, LIMIT, || second.borrow().is_some());
    assert_eq!(second.borrow().as_deref(), Some("ConnectionReset"));
    tcp.close(&mut lp, |_, _| {});
    util::run_dry(&mut lp, LIMIT);
}

#[test]
fn a_reader_started_after_the_end_of_stream_hears_it_again_even_if_nobody_heard_it() {
    let mut lp = Loop::new().unwrap();
    let (tcp, peer) = accepted_pair(&mut lp);
    drop(peer); // FIN
    let first = read_ending(&mut lp, tcp);
    run_until(&mut lp, LIMIT, || first.borrow().is_some());
    assert_eq!(first.borrow().as_deref(), Some("ok"));
    // Twice more: stop before it was heard, then hear it.
    let unheard = read_ending(&mut lp, tcp);
    tcp.stop_read(&mut lp).unwrap();
    let heard = read_ending(&mut lp, tcp);
    run_until(&mut lp, LIMIT, || heard.borrow().is_some());
    assert!(unheard.borrow().is_none(), "a stopped reader was called");
    assert_eq!(heard.borrow().as_deref(), Some("ok"));
    tcp.close(&mut lp, |_, _| {});
    util::run_dry(&mut lp, LIMIT);
}

// ---- write errors ----

#[test]
fn a_write_error_in_a_flush_keeps_ok_for_the_requests_written_before_it() {
    // The peer closed without reading: our first bytes draw a reset, so within one flush
    // the first `writev` succeeds and the next one fails.
    let mut saw_failure = false;
    for _ in 0..20 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut lp = Loop::new().unwrap();
        let results = Rc::new(RefCell::new(Vec::new()));
        let tcp = Tcp::connect(&mut lp, addr, |_, _, r| r.unwrap()).unwrap();
        // 64 buffers fill one `writev`; the second request needs another.
        let first: Vec<Bytes> = (0..64).map(|_| Bytes::from_static(b"a")).collect();
        let r = Rc::clone(&results);
        tcp.write_vectored(&mut lp, first, move |_, _, res| {
            r.borrow_mut().push(("first", outcome(&res)))
        })
        .unwrap();
        let r = Rc::clone(&results);
        tcp.write(&mut lp, &b"b"[..], move |_, _, res| {
            r.borrow_mut().push(("second", outcome(&res)))
        })
        .unwrap();
        drop(listener.accept().unwrap()); // accepted and closed before we write
        std::thread::sleep(Duration::from_millis(20));
        run_until(&mut lp, LIMIT, || results.borrow().len() == 2);
        let results = results.borrow();
        assert_eq!(results[0], ("first", "ok".to_owned()), "{results:?}");
        saw_failure |= results[1].1 != "ok";
        tcp.close(&mut lp, |_, _| {});
        util::run_dry(&mut lp, LIMIT);
        if saw_failure {
            break;
        }
    }
    assert!(saw_failure, "no attempt had the second writev fail");
}

// ---- background jobs ----

#[test]
fn a_panicking_job_is_resumed_on_the_loop_thread_and_releases_the_loop() {
    within(LIMIT, || {
        let mut lp = Loop::new().unwrap();
        let done = Rc::new(Cell::new(false));
        let d = Rc::clone(&done);
        lp.queue_work(|| -> u32 { panic!("job failed") }, move |_, _| d.set(true));
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| lp.run()));
        let payload = caught.expect_err("the job's panic reached the loop thread");
        assert_eq!(payload.downcast_ref::<&str>(), Some(&"job failed"));
        assert!(!done.get());
        assert!(!lp.is_alive(), "the failed job still keeps the loop alive");
        // The loop goes on working.
        let ok = Rc::new(Cell::new(0));
        let o = Rc::clone(&ok);
        lp.queue_work(|| 7, move |_, v| o.set(v));
        util::run_dry(&mut lp, LIMIT);
        assert_eq!(ok.get(), 7);
    });
}

#[test]
fn queued_jobs_share_a_small_pool_of_threads() {
    let mut lp = Loop::new().unwrap();
    let before = threads();
    let done = Rc::new(Cell::new(0));
    for _ in 0..40 {
        let d = Rc::clone(&done);
        lp.queue_work(
            || std::thread::sleep(Duration::from_millis(20)),
            move |_, ()| d.set(d.get() + 1),
        );
    }
    std::thread::sleep(Duration::from_millis(10));
    let peak = threads();
    util::run_dry(&mut lp, LIMIT);
    assert_eq!(done.get(), 40);
    // Other tests of this binary may run jobs meanwhile; the pool is shared and bounded.
    assert!(
        peak <= before + 4,
        "{before} threads before, {peak} with 40 jobs queued"
    );
}

#[test]
fn many_host_name_connects_complete() {
    let mut lp = Loop::new().unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let done = Rc::new(Cell::new(0));
    for _ in 0..50 {
        let d = Rc::clone(&done);
        Tcp::connect_host(&mut lp, &format!("localhost:{port}"), move |lp, tcp, _| {
            d.set(d.get() + 1);
            tcp.close(lp, |_, _| {});
        })
        .unwrap();
    }
    util::run_dry(&mut lp, LIMIT);
    assert_eq!(done.get(), 50);
}

/// Threads of this process.
fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(0, |d| d.count())
}

// ---- reading ----

#[test]
fn short_reads_never_stall_a_reader() {
    // Small chunks with pauses: each read is short (the socket has less than the
    // buffer's room), so the read loop stops after it and relies on the next edge.
    let mut lp = Loop::new().unwrap();
    let (tcp, mut peer) = accepted_pair(&mut lp);
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
    let sender = std::thread::spawn(move || {
        for i in 0..200u32 {
            peer.write_all(&util::pattern(1, u64::from(i) * 37, 37))
                .unwrap();
            if i % 7 == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    });
    run_until(&mut lp, LIMIT, || ended.get());
    sender.join().unwrap();
    assert_eq!(*got.borrow(), util::pattern(1, 0, 200 * 37));
}
