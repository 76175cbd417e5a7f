//! `Stream::on_drain` over every stream kind: the producer pattern moves a large amount
//! with a bounded queue; the watcher runs once, from the loop, never inside the call;
//! a second watcher replaces the first; close cancels it; a failure fails it.

mod util;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use biotls::bytes::Bytes;
use biotls::duplex::Fault;
use biotls::pki::Pki;
use biotls::tls::Tls;
use biotls::{Duplex, Error, Loop, Pipe, Stream};
use util::{pattern, pattern_byte, run_to_end, run_until};

const LIMIT: Duration = Duration::from_secs(60);
const HIGH: usize = 1 << 20;
const LOW: usize = 256 << 10;

fn tls_pair(lp: &mut Loop) -> (Tls, Tls) {
    let pki = Pki::generate(&["localhost"]).unwrap();
    let (a, b) = util::tcp_pair(lp);
    let client = Tls::client(lp, a, &pki.connector().unwrap(), "localhost").unwrap();
    let server = Tls::server(lp, b, &pki.acceptor().unwrap()).unwrap();
    (client, server)
}

/// Reads everything `s` receives, checking it against the pattern; closes at the end.
fn receive<S: Stream>(lp: &mut Loop, s: S) -> Rc<Cell<(u64, bool)>> {
    let got = Rc::new(Cell::new((0u64, false)));
    let g = Rc::clone(&got);
    s.start_read(lp, move |lp, s, r| match r.expect("read") {
        Some(data) => {
            let (n, _) = g.get();
            for (i, b) in data.iter().enumerate() {
                assert_eq!(*b, pattern_byte(1, n + i as u64), "byte {}", n + i as u64);
            }
            g.set((n + data.len() as u64, false));
        }
        None => {
            g.set((g.get().0, true));
            s.close(lp, |_, _| {});
        }
    })
    .unwrap();
    got
}

struct Producer {
    sent: Cell<u64>,
    total: u64,
    peak: Cell<usize>,
    drains: Cell<u32>,
}

/// The producer pattern of the `on_drain` docs, recording the queue's peak.
fn produce<S: Stream>(lp: &mut Loop, s: S, p: Rc<Producer>) {
    const CHUNK: u64 = 64 << 10;
    while p.sent.get() < p.total && s.write_queue_size(lp) < HIGH {
        let n = CHUNK.min(p.total - p.sent.get());
        let data = Bytes::from(pattern(1, p.sent.get(), n as usize));
        s.write(lp, data, |_, _, r| r.expect("write")).unwrap();
        p.sent.set(p.sent.get() + n);
        p.peak.set(p.peak.get().max(s.write_queue_size(lp)));
    }
    if p.sent.get() == p.total {
        // Closed when the peer's end arrives (closing with unread data, such as TLS
        // session tickets, would reset the connection under the peer's reads).
        s.shutdown(lp, |_, _, r| r.expect("shutdown")).unwrap();
        return;
    }
    let again = Rc::clone(&p);
    s.on_drain(lp, LOW, move |lp, s, r| {
        r.expect("drain");
        assert!(s.write_queue_size(lp) <= LOW, "drained above the level");
        again.drains.set(again.drains.get() + 1);
        produce(lp, s, again);
    })
    .unwrap();
}

fn producer_moves_everything_with_a_bounded_queue<S: Stream, R: Stream>(
    lp: &mut Loop,
    (tx, rx): (S, R),
) {
    let got = receive(lp, rx);
    tx.start_read(lp, |lp, s, r| {
        if !matches!(r, Ok(Some(_))) {
            s.close(lp, |_, _| {});
        }
    })
    .unwrap();
    let p = Rc::new(Producer {
        sent: Cell::new(0),
        total: 48 << 20,
        peak: Cell::new(0),
        drains: Cell::new(0),
    });
    produce(lp, tx, Rc::clone(&p));
    run_until(lp, LIMIT, || got.get().1);
    assert_eq!(got.get().0, p.total);
    assert!(p.drains.get() > 0, "never had to wait");
    // At most one chunk (plus TLS records' overhead) above the high mark.
    assert!(
        p.peak.get() <= HIGH + (64 << 10) + 4096,
        "peak {}",
        p.peak.get()
    );
    run_to_end(lp, LIMIT);
}

#[test]
fn a_producer_with_drain_over_tcp() {
    let mut lp = Loop::new().unwrap();
    let pair = util::tcp_pair(&mut lp);
    producer_moves_everything_with_a_bounded_queue(&mut lp, pair);
}

#[test]
fn a_producer_with_drain_over_pipe() {
    let mut lp = Loop::new().unwrap();
    let pair = Pipe::pair(&mut lp).unwrap();
    producer_moves_everything_with_a_bounded_queue(&mut lp, pair);
}

#[test]
fn a_producer_with_drain_over_tls() {
    let mut lp = Loop::new().unwrap();
    let pair = tls_pair(&mut lp);
    producer_moves_everything_with_a_bounded_queue(&mut lp, pair);
}

#[test]
fn a_producer_with_drain_over_duplex() {
    let mut lp = Loop::new().unwrap();
    let pair = Duplex::pair(&mut lp, 64 << 10).unwrap();
    producer_moves_everything_with_a_bounded_queue(&mut lp, pair);
}

type Log = Rc<RefCell<Vec<String>>>;

fn watcher<S: Stream>(
    log: &Log,
    name: &'static str,
) -> impl FnOnce(&mut Loop, S, biotls::Result<()>) + use<S> {
    let log = Rc::clone(log);
    move |_, _, r| {
        log.borrow_mut().push(match r {
            Ok(()) => format!("{name} ok"),
            Err(e) => format!("{name} {e:?}"),
        })
    }
}

#[test]
fn a_drained_stream_calls_back_from_the_loop_and_a_second_watcher_replaces_the_first() {
    let mut lp = Loop::new().unwrap();
    let (a, b) = Duplex::pair(&mut lp, 16).unwrap();
    let log: Log = Rc::new(RefCell::new(Vec::new()));
    a.on_drain(&mut lp, 0, watcher(&log, "first")).unwrap();
    assert!(log.borrow().is_empty(), "ran inside on_drain");
    lp.run_nowait().unwrap();
    assert_eq!(*log.borrow(), ["first ok"]);
    // Now a queue: 16 bytes fit the other end, the rest waits until it reads.
    a.write(&mut lp, vec![0u8; 1000], |_, _, _| {}).unwrap();
    a.on_drain(&mut lp, 0, watcher(&log, "second")).unwrap();
    a.on_drain(&mut lp, 0, watcher(&log, "third")).unwrap();
    lp.run_nowait().unwrap();
    assert_eq!(*log.borrow(), ["first ok", "second Cancelled"]);
    b.start_read(&mut lp, |_, _, _| {}).unwrap();
    run_until(&mut lp, LIMIT, || log.borrow().len() == 3);
    assert_eq!(log.borrow()[2], "third ok");
    a.close(&mut lp, |_, _| {});
    b.close(&mut lp, |_, _| {});
    run_to_end(&mut lp, LIMIT);
}

#[test]
fn close_cancels_the_watcher_and_a_failure_fails_it() {
    let mut lp = Loop::new().unwrap();
    let log: Log = Rc::new(RefCell::new(Vec::new()));
    // Close.
    let (a, b) = Duplex::pair(&mut lp, 16).unwrap();
    a.write(&mut lp, vec![0u8; 1000], |_, _, _| {}).unwrap();
    a.on_drain(&mut lp, 0, watcher(&log, "closed")).unwrap();
    a.close(&mut lp, |_, _| {});
    b.close(&mut lp, |_, _| {});
    run_to_end(&mut lp, LIMIT);
    assert_eq!(*log.borrow(), ["closed Cancelled"]);
    // A reset over Duplex.
    let (a, b) = Duplex::pair(&mut lp, 16).unwrap();
    a.write(&mut lp, vec![0u8; 1000], |_, _, _| {}).unwrap();
    a.on_drain(&mut lp, 0, watcher(&log, "reset")).unwrap();
    a.inject_fault(&mut lp, Fault::Reset).unwrap();
    run_until(&mut lp, LIMIT, || log.borrow().len() == 2);
    assert!(
        log.borrow()[1].starts_with("reset Io"),
        "{:?}",
        log.borrow()
    );
    // A watcher set on a broken stream fails at once (from the loop).
    a.on_drain(&mut lp, 0, watcher(&log, "late")).unwrap();
    run_until(&mut lp, LIMIT, || log.borrow().len() == 3);
    assert!(log.borrow()[2].starts_with("late Io"), "{:?}", log.borrow());
    a.close(&mut lp, |_, _| {});
    b.close(&mut lp, |_, _| {});
    // A Tls that fails (its transport reset) fails its watcher with its error.
    let pki = Pki::generate(&["localhost"]).unwrap();
    let (a, b) = Duplex::pair(&mut lp, 1024).unwrap();
    let client = Tls::client(&mut lp, a, &pki.connector().unwrap(), "localhost").unwrap();
    let server = Tls::server(&mut lp, b, &pki.acceptor().unwrap()).unwrap();
    client
        .write(&mut lp, vec![1u8; 1 << 20], |_, _, _| {})
        .unwrap();
    client.on_drain(&mut lp, 0, watcher(&log, "tls")).unwrap();
    a.inject_fault(&mut lp, Fault::Reset).unwrap();
    run_until(&mut lp, LIMIT, || log.borrow().len() == 4);
    assert!(log.borrow()[3].starts_with("tls Io"), "{:?}", log.borrow());
    assert!(matches!(client.failure(&lp), Some(Error::Io(_))));
    client.close(&mut lp, |_, _| {});
    server.close(&mut lp, |_, _| {});
    run_to_end(&mut lp, LIMIT);
}
