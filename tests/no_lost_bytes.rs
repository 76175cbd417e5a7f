//! Property-style: no byte lost, duplicated or reordered, and every write callback fired
//! exactly once, over `Tcp` and `Tls`, under random write sizes, random transport
//! chunking and random `stop_read`/`start_read` toggling. Seeded (xorshift), so a failing
//! seed can be replayed; bounded in count and time.
//!
//! Transport chunking: client and server talk through a relay on the same loop that
//! forwards each direction in pieces of random size (1 byte to 64 KiB), each piece
//! written only after the previous one was handed to the kernel (`TCP_NODELAY` on).

mod util;

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::Duration;

use biotls::pki::Pki;
use biotls::tls::Tls;
use biotls::{Loop, Stream, Tcp, TcpListener, Timer};
use bytes::Bytes;
use util::{pattern, pattern_byte, run_until};

const LIMIT: Duration = Duration::from_secs(60);
const SEEDS: u64 = 20;

#[derive(Clone)]
struct Rng(Rc<Cell<u64>>);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(Rc::new(Cell::new(
            seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
        )))
    }
    fn next(&self) -> u64 {
        let mut x = self.0.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0.set(x);
        x
    }
    /// 1..=max, skewed toward small values half of the time.
    fn size(&self, max: usize) -> usize {
        let cap = if self.chance(50) { 64 } else { max };
        1 + (self.next() as usize) % cap.min(max)
    }
    fn chance(&self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// Forwards `from` to `to` in random pieces, one write at a time; forwards EOF as a
/// shutdown once everything before it is written.
fn relay_one_way(lp: &mut Loop, from: Tcp, to: Tcp, rng: Rng) {
    struct Dir {
        queue: VecDeque<Bytes>,
        queued: usize,
        writing: bool,
        eof: bool,
        paused: bool,
    }
    let dir = Rc::new(RefCell::new(Dir {
        queue: VecDeque::new(),
        queued: 0,
        writing: false,
        eof: false,
        paused: false,
    }));
    fn next(lp: &mut Loop, from: Tcp, to: Tcp, dir: Rc<RefCell<Dir>>, rng: Rng) {
        let mut d = dir.borrow_mut();
        if d.writing {
            return;
        }
        let Some(front) = d.queue.front_mut() else {
            if d.eof {
                d.eof = false;
                drop(d);
                let _ = to.shutdown(lp, |_, _, _| {});
            }
            return;
        };
        let n = rng.size(64 * 1024).min(front.len());
        let piece = front.split_to(n);
        if front.is_empty() {
            d.queue.pop_front();
        }
        d.queued -= n;
        d.writing = true;
        let resume = d.paused && d.queued < 256 * 1024;
        if resume {
            d.paused = false;
        }
        drop(d);
        if resume {
            start(lp, from, to, dir.clone(), rng.clone());
        }
        let _ = to.write(lp, piece, move |lp, _, r| {
            if r.is_ok() {
                dir.borrow_mut().writing = false;
                next(lp, from, to, dir, rng);
            }
        });
    }
    fn start(lp: &mut Loop, from: Tcp, to: Tcp, dir: Rc<RefCell<Dir>>, rng: Rng) {
        let _ = from.start_read(lp, move |lp, from, r| {
            match r {
                Ok(Some(b)) => {
                    let mut d = dir.borrow_mut();
                    d.queued += b.len();
                    d.queue.push_back(b);
                    if d.queued >= 256 * 1024 {
                        d.paused = true;
                        let _ = from.stop_read(lp);
                    }
                }
                _ => dir.borrow_mut().eof = true,
            }
            next(lp, from, to, dir.clone(), rng.clone());
        });
    }
    start(lp, from, to, dir, rng);
}

/// What the receiving side saw.
#[derive(Default)]
struct Seen {
    received: Cell<u64>,
    first_bad: Cell<Option<u64>>,
    eof: Cell<bool>,
    error: RefCell<Option<String>>,
    toggles: Cell<u32>,
}

/// Reads and checks every byte against the pattern, pausing reading at random for
/// 0..3 ms.
fn receive<S: Stream>(lp: &mut Loop, s: S, seed: u64, rng: Rng, seen: Rc<Seen>) {
    let (rng2, seen2) = (rng.clone(), seen.clone());
    let _ = s.start_read(lp, move |lp, s, r| match r {
        Ok(Some(b)) => {
            let at = seen2.received.get();
            if seen2.first_bad.get().is_none()
                && let Some(i) = (0..b.len()).find(|&i| b[i] != pattern_byte(seed, at + i as u64))
            {
                seen2.first_bad.set(Some(at + i as u64));
            }
            seen2.received.set(at + b.len() as u64);
            if rng2.chance(50) {
                seen2.toggles.set(seen2.toggles.get() + 1);
                let _ = s.stop_read(lp);
                let timer = Timer::new(lp).unwrap();
                let delay = Duration::from_micros(rng2.next() % 3000);
                let (rng3, seen3) = (rng2.clone(), seen2.clone());
                timer
                    .start(lp, delay, None, move |lp, t| {
                        t.close(lp);
                        receive(lp, s, seed, rng3.clone(), seen3.clone());
                    })
                    .unwrap();
            }
        }
        Ok(None) => {
            seen2.eof.set(true);
            s.close(lp, |_, _| {});
        }
        Err(e) => {
            *seen2.error.borrow_mut() = Some(e.to_string());
            s.close(lp, |_, _| {});
        }
    });
}

/// Writes `total` pattern bytes in random sizes: bursts of several writes at once, the
/// next burst from the callback of the last; then shuts down. `fired[i]` counts write
/// `i`'s callbacks.
fn send<S: Stream>(
    lp: &mut Loop,
    s: S,
    seed: u64,
    total: u64,
    rng: Rng,
    fired: Rc<RefCell<Vec<u32>>>,
) {
    fn burst<S: Stream>(
        lp: &mut Loop,
        s: S,
        seed: u64,
        (off, total): (u64, u64),
        rng: Rng,
        fired: Rc<RefCell<Vec<u32>>>,
    ) {
        let writes = 1 + rng.next() % 8;
        let mut off = off;
        for k in 0..writes {
            if off >= total {
                break;
            }
            let n = (rng.size(64 * 1024) as u64).min(total - off) as usize;
            let data = Bytes::from(pattern(seed, off, n));
            off += n as u64;
            let idx = {
                let mut f = fired.borrow_mut();
                f.push(0);
                f.len() - 1
            };
            let last = k == writes - 1 || off >= total;
            let (rng2, fired2) = (rng.clone(), fired.clone());
            let at = off;
            let result = s.write(lp, data, move |lp, s, r| {
                r.unwrap();
                fired2.borrow_mut()[idx] += 1;
                if last && at < total {
                    burst(lp, s, seed, (at, total), rng2, fired2);
                }
            });
            result.unwrap();
        }
        if off >= total {
            s.shutdown(lp, |_, _, r| r.unwrap()).unwrap();
        }
    }
    burst(lp, s, seed, (0, total), rng, fired);
}

fn case(seed: u64, tls: Option<&Pki>) {
    let mut lp = Loop::new().unwrap();
    let rng = Rng::new(seed);
    let total = 256 * 1024 + rng.next() % (2 << 20);
    let server_l = TcpListener::bind(&mut lp, "127.0.0.1:0".parse().unwrap()).unwrap();
    let server_addr = server_l.local_addr(&lp).unwrap();
    let relay_l = TcpListener::bind(&mut lp, "127.0.0.1:0".parse().unwrap()).unwrap();
    let relay_addr = relay_l.local_addr(&lp).unwrap();
    let seen = Rc::new(Seen::default());

    let (acceptor, s2, r2) = (
        tls.map(|p| p.acceptor().unwrap()),
        seen.clone(),
        rng.clone(),
    );
    server_l
        .listen(&mut lp, move |lp, l, accepted| {
            l.close(lp);
            let tcp = accepted.unwrap();
            match &acceptor {
                Some(acc) => {
                    let tls = Tls::server(lp, tcp, acc).unwrap();
                    receive(lp, tls, seed, r2.clone(), s2.clone());
                }
                None => receive(lp, tcp, seed, r2.clone(), s2.clone()),
            }
        })
        .unwrap();
    let r3 = rng.clone();
    relay_l
        .listen(&mut lp, move |lp, l, accepted| {
            l.close(lp);
            let down = accepted.unwrap();
            down.set_nodelay(lp, true).unwrap();
            let up = Tcp::connect(lp, server_addr, |_, _, r| r.unwrap()).unwrap();
            relay_one_way(lp, down, up, r3.clone());
            relay_one_way(lp, up, down, r3.clone());
        })
        .unwrap();

    let fired: Rc<RefCell<Vec<u32>>> = Rc::default();
    let tcp = Tcp::connect(&mut lp, relay_addr, |_, _, r| r.unwrap()).unwrap();
    match tls {
        Some(pki) => {
            let c = Tls::client(&mut lp, tcp, &pki.connector().unwrap(), "localhost").unwrap();
            send(&mut lp, c, seed, total, rng.clone(), fired.clone());
        }
        None => send(&mut lp, tcp, seed, total, rng.clone(), fired.clone()),
    }
    run_until(&mut lp, LIMIT, || {
        seen.eof.get() || seen.error.borrow().is_some()
    });
    let what = if tls.is_some() { "tls" } else { "tcp" };
    assert_eq!(*seen.error.borrow(), None, "{what} seed {seed}");
    assert_eq!(seen.received.get(), total, "{what} seed {seed}");
    assert_eq!(
        seen.first_bad.get(),
        None,
        "{what} seed {seed}: first bad offset"
    );
    // Let every callback settle, then each write's must have fired exactly once.
    run_until(&mut lp, LIMIT, || fired.borrow().iter().all(|&n| n >= 1));
    for _ in 0..10 {
        lp.run_nowait().unwrap();
    }
    let fired = fired.borrow();
    assert!(
        fired.iter().all(|&n| n == 1),
        "{what} seed {seed}: {fired:?}"
    );
    println!(
        "{what} seed {seed}: {total} bytes in {} writes, {} read pauses",
        fired.len(),
        seen.toggles.get()
    );
    // The relay's and the client's handles go with the loop.
}

#[test]
fn tcp_delivers_every_byte_once_in_order_under_random_chunking_and_pauses() {
    for seed in 1..=SEEDS {
        case(seed, None);
    }
}

#[test]
fn tls_delivers_every_byte_once_in_order_under_random_chunking_and_pauses() {
    let pki = Pki::generate(&["localhost"]).unwrap();
    for seed in 1..=SEEDS {
        case(seed, Some(&pki));
    }
}
