//! Bounded memory against peers that send without end: 512 MiB pushed at a server that
//! stopped reading, and at an echo server by a client that never reads the replies.
//!
//! Tests in one process share their RSS, so the bound is asserted on what the server's
//! handle reports as buffered (`write_queue_size`: plaintext not yet encrypted,
//! ciphertext held, the TCP queue; plus `buffered_ciphertext_in`), sampled every few
//! milliseconds. Heavy: its own test binary.

mod util;

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use biotls::echo::{EchoOptions, echo};
use biotls::pki::Pki;
use biotls::tls::Tls;
use biotls::{Loop, Stream, Tcp, TcpListener, Timer};
use bytes::Bytes;
use util::{run_to_end, run_until};

const TOTAL: u64 = 512 << 20;
const CHUNK: usize = 1 << 20;
/// The client keeps at most this much queued in its own handle.
const CLIENT_QUEUE: usize = 4 << 20;
/// What the server may hold for one connection.
const BOUND: usize = 4 << 20;
/// What the kernel's socket buffers (both ends, loopback) may absorb, at most.
const KERNEL: u64 = 64 << 20;
const LIMIT: Duration = Duration::from_secs(300);

/// Counters shared between the callbacks and the test.
#[derive(Default)]
struct Counters {
    /// Plaintext the client's write callbacks confirmed.
    sent: Cell<u64>,
    /// Plaintext the client queued.
    queued: Cell<u64>,
    /// Plaintext the reading side received.
    received: Cell<u64>,
    eof: Cell<bool>,
    /// Largest server-side buffered total seen.
    max_buffered: Cell<usize>,
}

/// Writes `TOTAL` bytes in 1 MiB writes, keeping at most `CLIENT_QUEUE` queued, then
/// sends close_notify.
fn pump_client(lp: &mut Loop, tls: Tls, chunk: Bytes, c: Rc<Counters>) {
    while c.queued.get() < TOTAL && tls.write_queue_size(lp) < CLIENT_QUEUE {
        c.queued.set(c.queued.get() + CHUNK as u64);
        let (chunk2, c2) = (chunk.clone(), c.clone());
        tls.write(lp, chunk.clone(), move |lp, tls, r| {
            r.unwrap();
            c2.sent.set(c2.sent.get() + CHUNK as u64);
            pump_client(lp, tls, chunk2, c2);
        })
        .unwrap();
        if c.queued.get() == TOTAL {
            tls.shutdown(lp, |_, _, r| r.unwrap()).unwrap();
        }
    }
}

/// Samples the server handle's buffered bytes every 2 ms.
fn sampler(lp: &mut Loop, server: Rc<Cell<Option<Tls>>>, c: Rc<Counters>) -> Timer {
    let timer = Timer::new(lp).unwrap();
    let every = Duration::from_millis(2);
    timer
        .start(lp, every, Some(every), move |lp, _| {
            if let Some(s) = server.get() {
                let held = s.write_queue_size(lp) + s.buffered_ciphertext_in(lp);
                c.max_buffered.set(c.max_buffered.get().max(held));
            }
        })
        .unwrap();
    timer
}

/// Runs until the bytes the client handed to the kernel have not moved for `quiet`;
/// returns them (plaintext queued minus what its handle still holds, which is within a
/// few bytes per record of the ciphertext that left).
fn run_until_stalled(lp: &mut Loop, client: Tls, c: &Counters, quiet: Duration) -> u64 {
    let pushed = |lp: &Loop| c.queued.get() - client.write_queue_size(lp) as u64;
    let mut last = (0, Instant::now());
    let deadline = Instant::now() + LIMIT;
    loop {
        assert!(Instant::now() < deadline, "no stall within {LIMIT:?}");
        // The sampler's 2 ms timer bounds each poll.
        lp.run_once().unwrap();
        let now = pushed(lp);
        if now != last.0 {
            last = (now, Instant::now());
        }
        if last.1.elapsed() >= quiet {
            return now;
        }
    }
}

/// Counts what arrives on `tls` into `c.received`, until a clean EOF.
fn count_reads(lp: &mut Loop, tls: Tls, c: Rc<Counters>) {
    tls.start_read(lp, move |lp, tls, r| match r.unwrap() {
        Some(b) => c.received.set(c.received.get() + b.len() as u64),
        None => {
            c.eof.set(true);
            tls.close(lp, |_, _| {});
        }
    })
    .unwrap();
}

fn chunk() -> Bytes {
    Bytes::from((0..CHUNK).map(|i| (i * 7) as u8).collect::<Vec<u8>>())
}

#[test]
fn a_server_that_does_not_read_holds_a_bounded_amount_of_a_512_mib_push() {
    let pki = Pki::generate(&["localhost"]).unwrap();
    let mut lp = Loop::new().unwrap();
    let c = Rc::new(Counters::default());
    let server: Rc<Cell<Option<Tls>>> = Rc::default();
    let listener = TcpListener::bind(&mut lp, "127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr(&lp).unwrap();
    let (acceptor, s) = (pki.acceptor().unwrap(), server.clone());
    listener
        .listen(&mut lp, move |lp, l, accepted| {
            // Handshakes, but the application does not read (yet).
            s.set(Some(Tls::server(lp, accepted.unwrap(), &acceptor).unwrap()));
            l.close(lp);
        })
        .unwrap();
    let tick = sampler(&mut lp, server.clone(), c.clone());
    let tcp = Tcp::connect(&mut lp, addr, |_, _, r| r.unwrap()).unwrap();
    let client = Tls::client(&mut lp, tcp, &pki.connector().unwrap(), "localhost").unwrap();
    pump_client(&mut lp, client, chunk(), c.clone());

    let stalled_at = run_until_stalled(&mut lp, client, &c, Duration::from_millis(700));
    let held = c.max_buffered.get();
    println!(
        "server not reading: the client stalled after handing {} KiB to the kernel ({} KiB \
         queued in its own handle); server handle held at most {} KiB",
        stalled_at >> 10,
        client.write_queue_size(&lp) >> 10,
        held >> 10
    );
    assert!(stalled_at < KERNEL, "the peer pushed {stalled_at} bytes");
    assert!(held < BOUND, "server held {held} bytes");

    // Reading again: every byte arrives, still through a bounded buffer.
    let s = server.get().unwrap();
    count_reads(&mut lp, s, c.clone());
    let start = Instant::now();
    run_until(&mut lp, LIMIT, || c.eof.get());
    println!(
        "then {} MiB read in {:.1} s; server handle held at most {} KiB",
        c.received.get() >> 20,
        start.elapsed().as_secs_f64(),
        c.max_buffered.get() >> 10
    );
    assert_eq!(c.received.get(), TOTAL);
    assert!(c.max_buffered.get() < BOUND);
    tick.close(&mut lp);
    client.close(&mut lp, |_, _| {});
    run_to_end(&mut lp, LIMIT);
}

#[test]
fn an_echo_peer_that_never_reads_its_replies_cannot_grow_the_server() {
    let pki = Pki::generate(&["localhost"]).unwrap();
    let mut lp = Loop::new().unwrap();
    let c = Rc::new(Counters::default());
    let server: Rc<Cell<Option<Tls>>> = Rc::default();
    let listener = TcpListener::bind(&mut lp, "127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr(&lp).unwrap();
    let (acceptor, s) = (pki.acceptor().unwrap(), server.clone());
    listener
        .listen(&mut lp, move |lp, l, accepted| {
            let tls = Tls::server(lp, accepted.unwrap(), &acceptor).unwrap();
            s.set(Some(tls));
            echo(lp, tls, EchoOptions::default()).unwrap();
            l.close(lp);
        })
        .unwrap();
    let tick = sampler(&mut lp, server.clone(), c.clone());
    let tcp = Tcp::connect(&mut lp, addr, |_, _, r| r.unwrap()).unwrap();
    let client = Tls::client(&mut lp, tcp, &pki.connector().unwrap(), "localhost").unwrap();
    pump_client(&mut lp, client, chunk(), c.clone());

    let stalled_at = run_until_stalled(&mut lp, client, &c, Duration::from_millis(700));
    let held = c.max_buffered.get();
    println!(
        "client not reading replies: the client stalled after handing {} KiB to the kernel ({} KiB \
         queued in its own handle); echo server held at most {} KiB",
        stalled_at >> 10,
        client.write_queue_size(&lp) >> 10,
        held >> 10
    );
    assert!(stalled_at < KERNEL, "the peer pushed {stalled_at} bytes");
    assert!(held < BOUND, "server held {held} bytes");

    // The client reads at last: all 512 MiB come back, through bounded buffers.
    count_reads(&mut lp, client, c.clone());
    let start = Instant::now();
    run_until(&mut lp, LIMIT, || c.eof.get());
    println!(
        "then {} MiB echoed in {:.1} s; echo server held at most {} KiB",
        c.received.get() >> 20,
        start.elapsed().as_secs_f64(),
        c.max_buffered.get() >> 10
    );
    assert_eq!(c.received.get(), TOTAL);
    assert!(c.max_buffered.get() < BOUND);
    tick.close(&mut lp);
    run_to_end(&mut lp, LIMIT);
}
