//! The callback contract of `Tls` under generated call orders, over an in-memory
//! `Duplex` with injected transport faults.
//!
//! Each case wires a server `Tls` to either a client `Tls` or a raw TLS peer (a
//! `TlsSession` driven by hand, which can also send garbage, alerts, KeyUpdate floods,
//! or stop reading), over a `Duplex` pair of random capacity. proptest generates user
//! calls on both handles (writes of random sizes, `try_write`, shutdown, close, stop and
//! start reading, `key_update`, `on_handshake` early or late, handshake and idle
//! timeouts, and reactions run from inside the next callback of a kind), transport
//! faults (partial writes, held completions, failed writes and shutdowns, end of stream,
//! reset, split and delayed reads), and runs of the loop.
//!
//! Checked as it runs (the model in `util::contract`): every callback at most once,
//! never inside a call, in order; every plaintext byte delivered once and in order up to
//! the first failure. After each step: the handles' buffers stay under a stated bound.
//! Once the loop is quiet: a failed handle's current reader and handshake callback have
//! heard the failure. At the end, after closing everything: every request completed,
//! nothing pending, `Loop::run` returns, no handle left, no byte lost between a clean
//! shutdown and a clean end of stream.
//!
//! `BIOTLS_PROPTEST_CASES=N` runs N cases (default 120, about 25 s in a debug build).

mod util;

use std::cell::{Cell, RefCell};
use std::io::ErrorKind;
use std::rc::Rc;
use std::time::{Duration, Instant};

use biotls::duplex::Fault;
use biotls::pki::Pki;
use biotls::tls::{Tls, TlsAcceptor, TlsConnector, TlsSession};
use biotls::{Duplex, Loop, Stream, Timer};
use bytes::Bytes;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use util::contract::{Model, Req, ReqKind, Watchdog, cases, outcome};
use util::pattern_byte;
use util::raw_peer::RawPeer;

/// Side 0 is the server, side 1 the client.
const SIDES: u8 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum On {
    Read,
    Write,
    Shutdown,
    Handshake,
}

#[derive(Debug, Clone, Copy)]
enum Reaction {
    Close,
    StopRead,
    StartRead,
    Write(u32),
    Shutdown,
    KeyUpdate,
}

#[derive(Debug, Clone)]
enum Op {
    Unwrap {
        side: u8,
    },
    OnDrain {
        side: u8,
        level: u32,
    },
    Write {
        side: u8,
        len: u32,
        parts: u8,
    },
    TryWrite {
        side: u8,
        len: u32,
    },
    Shutdown {
        side: u8,
    },
    Close {
        side: u8,
    },
    StartRead {
        side: u8,
    },
    StopRead {
        side: u8,
    },
    KeyUpdate {
        side: u8,
        request: bool,
    },
    OnHandshake {
        side: u8,
    },
    HandshakeTimeout {
        side: u8,
        ms: u8,
    },
    IdleTimeout {
        side: u8,
        ms: u8,
    },
    React {
        side: u8,
        on: On,
        then: Reaction,
    },
    Fault {
        side: u8,
        fault: FaultOp,
    },
    /// Raw peer only: application data through its session.
    RawData {
        len: u32,
    },
    /// Raw peer only: bytes that are not TLS.
    RawGarbage {
        len: u16,
    },
    /// Raw peer only: a fatal alert record (unencrypted: a decode failure after the
    /// handshake, an alert during it).
    RawAlert,
    /// Raw peer only: data and KeyUpdate (update_requested) pairs.
    RawKeyUpdates {
        n: u16,
    },
    RawStopReading,
    RawShutdown,
    Run {
        ms: u8,
    },
    RunNowait,
}

#[derive(Debug, Clone, Copy)]
enum FaultOp {
    PartialWrites(u16),
    HoldWrites,
    ReleaseWrites,
    FailNextWrite,
    FailShutdown,
    Eof,
    Reset,
    SplitReads(u16),
    DelayReads(u8),
}

impl FaultOp {
    fn fault(self) -> Fault {
        match self {
            FaultOp::PartialWrites(n) => Fault::PartialWrites(usize::from(n)),
            FaultOp::HoldWrites => Fault::HoldWrites,
            FaultOp::ReleaseWrites => Fault::ReleaseWrites,
            FaultOp::FailNextWrite => Fault::FailNextWrite(ErrorKind::BrokenPipe),
            FaultOp::FailShutdown => Fault::FailShutdown(ErrorKind::BrokenPipe),
            FaultOp::Eof => Fault::Eof,
            FaultOp::Reset => Fault::Reset,
            FaultOp::SplitReads(n) => Fault::SplitReads(usize::from(n)),
            FaultOp::DelayReads(ms) => Fault::DelayReads(Duration::from_millis(u64::from(ms))),
        }
    }
}

fn len_strategy() -> impl Strategy<Value = u32> {
    prop_oneof![
        3 => 0u32..64,
        3 => 64u32..4096,
        2 => 4096u32..40_000,
        1 => 40_000u32..300_000,
    ]
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let side = 0u8..SIDES;
    let on = prop_oneof![
        Just(On::Read),
        Just(On::Write),
        Just(On::Shutdown),
        Just(On::Handshake)
    ];
    let reaction = prop_oneof![
        Just(Reaction::Close),
        Just(Reaction::StopRead),
        Just(Reaction::StartRead),
        (0u32..20_000).prop_map(Reaction::Write),
        Just(Reaction::Shutdown),
        Just(Reaction::KeyUpdate),
    ];
    let fault = prop_oneof![
        (1u16..2000).prop_map(FaultOp::PartialWrites),
        Just(FaultOp::HoldWrites),
        Just(FaultOp::ReleaseWrites),
        Just(FaultOp::FailNextWrite),
        Just(FaultOp::FailShutdown),
        Just(FaultOp::Eof),
        Just(FaultOp::Reset),
        (1u16..3000).prop_map(FaultOp::SplitReads),
        (1u8..5).prop_map(FaultOp::DelayReads),
    ];
    prop_oneof![
        8 => (side.clone(), len_strategy(), 1u8..4).prop_map(|(side, len, parts)| Op::Write { side, len, parts }),
        2 => (side.clone(), len_strategy()).prop_map(|(side, len)| Op::TryWrite { side, len }),
        2 => side.clone().prop_map(|side| Op::Shutdown { side }),
        1 => side.clone().prop_map(|side| Op::Close { side }),
        5 => side.clone().prop_map(|side| Op::StartRead { side }),
        2 => side.clone().prop_map(|side| Op::StopRead { side }),
        2 => (side.clone(), any::<bool>()).prop_map(|(side, request)| Op::KeyUpdate { side, request }),
        2 => side.clone().prop_map(|side| Op::OnHandshake { side }),
        1 => side.clone().prop_map(|side| Op::Unwrap { side }),
        1 => (side.clone(), 0u8..30).prop_map(|(side, ms)| Op::HandshakeTimeout { side, ms }),
        1 => (side.clone(), 2u8..40).prop_map(|(side, ms)| Op::IdleTimeout { side, ms }),
        4 => (side.clone(), on, reaction).prop_map(|(side, on, then)| Op::React { side, on, then }),
        2 => (side.clone(), 0u32..300_000).prop_map(|(side, level)| Op::OnDrain { side, level }),
        3 => (side, fault).prop_map(|(side, fault)| Op::Fault { side, fault }),
        3 => len_strategy().prop_map(|len| Op::RawData { len }),
        1 => (1u16..600).prop_map(|len| Op::RawGarbage { len }),
        1 => Just(Op::RawAlert),
        1 => (1u16..3000).prop_map(|n| Op::RawKeyUpdates { n }),
        1 => Just(Op::RawStopReading),
        1 => Just(Op::RawShutdown),
        8 => (0u8..8).prop_map(|ms| Op::Run { ms }),
        2 => Just(Op::RunNowait),
    ]
}

/// What the callbacks of one `Tls` share with the driver.
struct Side {
    h: usize,
    model: Rc<Model>,
    tls: Tls<Duplex>,
    end: Duplex,
    tx: Cell<u64>,
    tx_seed: u64,
    reactions: RefCell<Vec<(On, Reaction)>>,
    /// Plaintext accepted by writes that have not completed `Ok`: what the handle and
    /// its transport may still hold (the ciphertext of a write that failed with the
    /// connection can still wait in the transport's queue).
    outstanding: Cell<u64>,
    closed: Cell<bool>,
    /// Bytes queued when a shutdown was accepted, and its request.
    shutdown: Cell<Option<(u64, Req)>>,
    /// The inner stream given back by a successful unwrap (closed at the end).
    unwrapped: Cell<Option<Duplex>>,
}

fn react(lp: &mut Loop, side: &Rc<Side>, on: On) {
    let reaction = {
        let mut r = side.reactions.borrow_mut();
        r.iter().position(|(o, _)| *o == on).map(|i| r.remove(i).1)
    };
    let Some(reaction) = reaction else { return };
    side.model.note(format!("react {reaction:?}"));
    match reaction {
        Reaction::Close => do_close(lp, side),
        Reaction::StopRead => do_stop_read(lp, side),
        Reaction::StartRead => do_start_read(lp, side),
        Reaction::Write(len) => do_write(lp, side, len, 1),
        Reaction::Shutdown => do_shutdown(lp, side),
        Reaction::KeyUpdate => do_key_update(lp, side, true),
    }
}

fn data(seed: u64, start: u64, len: u32) -> Bytes {
    Bytes::from(
        (0..u64::from(len))
            .map(|i| pattern_byte(seed, start + i))
            .collect::<Vec<u8>>(),
    )
}

fn do_write(lp: &mut Loop, side: &Rc<Side>, len: u32, parts: u8) {
    let start = side.tx.get();
    let all = data(side.tx_seed, start, len);
    let step = (all.len() / usize::from(parts.max(1))).max(1);
    let bufs: Vec<Bytes> = (0..all.len())
        .step_by(step)
        .map(|off| all.slice(off..(off + step).min(all.len())))
        .collect();
    let sc = Rc::clone(side);
    let req = Rc::new(Cell::new(None::<Req>));
    let r2 = Rc::clone(&req);
    let result = side.model.call(|| {
        side.tls.write_vectored(lp, bufs, move |lp, _, r| {
            if let Some(req) = r2.get() {
                sc.model.complete(req, outcome(&r));
            }
            if r.is_ok() {
                sc.outstanding.set(sc.outstanding.get() - u64::from(len));
            }
            react(lp, &sc, On::Write);
        })
    });
    match result {
        Ok(()) => {
            req.set(Some(side.model.request(side.h, ReqKind::Write)));
            side.tx.set(start + u64::from(len));
            side.outstanding
                .set(side.outstanding.get() + u64::from(len));
        }
        Err(e) => side.model.note(format!("write refused: {e}")),
    }
}

fn do_try_write(lp: &mut Loop, side: &Rc<Side>, len: u32) {
    let start = side.tx.get();
    let all = data(side.tx_seed, start, len);
    match side.model.call(|| side.tls.try_write(lp, &all)) {
        Ok(n) => {
            if n > all.len() || n > 16 * 1024 {
                side.model
                    .violation(format!("try_write took {n} of {}", all.len()));
            }
            side.tx.set(start + n as u64);
        }
        Err(e) => side.model.note(format!("try_write refused: {e}")),
    }
}

fn do_shutdown(lp: &mut Loop, side: &Rc<Side>) {
    let sc = Rc::clone(side);
    let req = Rc::new(Cell::new(None::<Req>));
    let r2 = Rc::clone(&req);
    let result = side.model.call(|| {
        side.tls.shutdown(lp, move |lp, _, r| {
            if let Some(req) = r2.get() {
                sc.model.complete(req, outcome(&r));
            }
            react(lp, &sc, On::Shutdown);
        })
    });
    match result {
        Ok(()) => {
            let r = side.model.request(side.h, ReqKind::Shutdown);
            req.set(Some(r));
            side.shutdown.set(Some((side.tx.get(), r)));
        }
        Err(e) => side.model.note(format!("shutdown refused: {e}")),
    }
}

fn do_close(lp: &mut Loop, side: &Rc<Side>) {
    if side.closed.replace(true) {
        return;
    }
    let req = side.model.request(side.h, ReqKind::Close);
    side.model.closing(side.h);
    let sc = Rc::clone(side);
    side.model.call(|| {
        side.tls
            .close(lp, move |_, _| sc.model.complete(req, "closed".into()))
    });
}

fn do_start_read(lp: &mut Loop, side: &Rc<Side>) {
    let sc = Rc::clone(side);
    let result = side.model.call(|| {
        side.tls.start_read(lp, move |lp, _, r| {
            sc.model.read(sc.h, &r);
            react(lp, &sc, On::Read);
        })
    });
    match result {
        Ok(()) => side.model.start_read(side.h),
        Err(e) => side.model.note(format!("start_read refused: {e}")),
    }
}

fn do_stop_read(lp: &mut Loop, side: &Rc<Side>) {
    if side.model.call(|| side.tls.stop_read(lp)).is_ok() {
        side.model.stop_read(side.h);
    }
}

fn do_key_update(lp: &mut Loop, side: &Rc<Side>, request: bool) {
    if let Err(e) = side.model.call(|| side.tls.key_update(lp, request)) {
        side.model.note(format!("key_update refused: {e}"));
    }
}

fn do_on_drain(lp: &mut Loop, side: &Rc<Side>, level: u32) {
    let sc = Rc::clone(side);
    let req = Rc::new(Cell::new(None::<Req>));
    let r2 = Rc::clone(&req);
    let result = side.model.call(|| {
        side.tls.on_drain(lp, level as usize, move |lp, tls, r| {
            if let Some(req) = r2.get() {
                sc.model.complete(req, outcome(&r));
            }
            if r.is_ok() && tls.write_queue_size(lp) > level as usize {
                sc.model.violation(format!(
                    "drained at {} above {level}",
                    tls.write_queue_size(lp)
                ));
            }
        })
    });
    match result {
        Ok(()) => req.set(Some(side.model.request(side.h, ReqKind::Drain))),
        Err(e) => side.model.note(format!("on_drain refused: {e}")),
    }
}

fn do_unwrap(lp: &mut Loop, side: &Rc<Side>) {
    let sc = Rc::clone(side);
    let req = Rc::new(Cell::new(None::<Req>));
    let r2 = Rc::clone(&req);
    let result = side.model.call(|| {
        side.tls.unwrap(lp, move |_, r| {
            if let Some(req) = r2.get() {
                sc.model.complete(req, outcome(&r));
            }
            if let Ok((inner, _rest)) = r {
                sc.unwrapped.set(Some(inner));
                sc.closed.set(true);
            }
        })
    });
    match result {
        Ok(()) => req.set(Some(side.model.request(side.h, ReqKind::Unwrap))),
        Err(e) => side.model.note(format!("unwrap refused: {e}")),
    }
}

fn do_on_handshake(lp: &mut Loop, side: &Rc<Side>) {
    let sc = Rc::clone(side);
    let req = Rc::new(Cell::new(None::<Req>));
    let r2 = Rc::clone(&req);
    let result = side.model.call(|| {
        side.tls.on_handshake(lp, move |lp, _, r| {
            if let Some(req) = r2.get() {
                sc.model.complete(req, outcome(&r));
            }
            react(lp, &sc, On::Handshake);
        })
    });
    match result {
        Ok(()) => req.set(Some(side.model.request(side.h, ReqKind::Handshake))),
        Err(e) => side.model.note(format!("on_handshake refused: {e}")),
    }
}

struct Setup {
    acceptor: TlsAcceptor,
    connector: TlsConnector,
}

struct World {
    lp: Loop,
    model: Rc<Model>,
    sides: Vec<Rc<Side>>,
    raw: Option<RawPeer>,
    raw_sent: u64,
    raw_seed: u64,
    capacity: usize,
    /// Bounds every poll (unref'd: it keeps nothing alive).
    tick: Timer,
}

impl World {
    fn new(setup: &Setup, case: u64, raw: bool, capacity: usize) -> World {
        let mut lp = Loop::new().unwrap();
        let tick = Timer::new(&mut lp).unwrap();
        let ms = Duration::from_millis(1);
        tick.start(&mut lp, ms, Some(ms), |_, _| {}).unwrap();
        tick.unref(&mut lp).unwrap();
        let model = Model::new();
        let (a, b) = Duplex::pair(&mut lp, capacity).unwrap();
        let server = Tls::server(&mut lp, a, &setup.acceptor).unwrap();
        let mut sides = Vec::new();
        let seeds = [case * 4 + 1, case * 4 + 2];
        let hs = model.handle("server");
        sides.push(Rc::new(Side {
            h: hs,
            model: Rc::clone(&model),
            tls: server,
            end: a,
            tx: Cell::new(0),
            tx_seed: seeds[0],
            reactions: RefCell::new(Vec::new()),
            outstanding: Cell::new(0),
            closed: Cell::new(false),
            shutdown: Cell::new(None),
            unwrapped: Cell::new(None),
        }));
        let raw_seed = case * 4 + 3;
        let raw_peer = if raw {
            let session = TlsSession::client(&setup.connector, "localhost").unwrap();
            model.expect_stream(hs, move |at| pattern_byte(raw_seed, at));
            Some(RawPeer::start(&mut lp, b, session))
        } else {
            let client = Tls::client(&mut lp, b, &setup.connector, "localhost").unwrap();
            let hc = model.handle("client");
            model.expect_stream(hs, move |at| pattern_byte(seeds[1], at));
            model.expect_stream(hc, move |at| pattern_byte(seeds[0], at));
            sides.push(Rc::new(Side {
                h: hc,
                model: Rc::clone(&model),
                tls: client,
                end: b,
                tx: Cell::new(0),
                tx_seed: seeds[1],
                reactions: RefCell::new(Vec::new()),
                outstanding: Cell::new(0),
                closed: Cell::new(false),
                shutdown: Cell::new(None),
                unwrapped: Cell::new(None),
            }));
            None
        };
        World {
            lp,
            model,
            sides,
            raw: raw_peer,
            raw_sent: 0,
            raw_seed,
            capacity,
            tick,
        }
    }

    fn side(&self, side: u8) -> Option<Rc<Side>> {
        self.sides.get(usize::from(side)).cloned()
    }

    fn apply(&mut self, op: &Op) {
        self.model.note(format!("op {op:?}"));
        let lp = &mut self.lp;
        match *op {
            Op::Write { side, len, parts } => {
                if let Some(s) = self.sides.get(usize::from(side)) {
                    do_write(lp, s, len, parts);
                }
            }
            Op::TryWrite { side, len } => {
                if let Some(s) = self.sides.get(usize::from(side)) {
                    do_try_write(lp, s, len);
                }
            }
            Op::Shutdown { side } => {
                if let Some(s) = self.sides.get(usize::from(side)) {
                    do_shutdown(lp, s);
                }
            }
            Op::Close { side } => {
                if let Some(s) = self.sides.get(usize::from(side)) {
                    do_close(lp, s);
                }
            }
            Op::StartRead { side } => {
                if let Some(s) = self.sides.get(usize::from(side)) {
                    do_start_read(lp, s);
                }
            }
            Op::StopRead { side } => {
                if let Some(s) = self.sides.get(usize::from(side)) {
                    do_stop_read(lp, s);
                }
            }
            Op::KeyUpdate { side, request } => {
                if let Some(s) = self.sides.get(usize::from(side)) {
                    do_key_update(lp, s, request);
                }
            }
            Op::OnDrain { side, level } => {
                if let Some(s) = self.sides.get(usize::from(side)) {
                    do_on_drain(lp, s, level);
                }
            }
            Op::Unwrap { side } => {
                if let Some(s) = self.sides.get(usize::from(side))
                    && !s.closed.get()
                {
                    do_unwrap(lp, s);
                }
            }
            Op::OnHandshake { side } => {
                if let Some(s) = self.sides.get(usize::from(side)) {
                    do_on_handshake(lp, s);
                }
            }
            Op::HandshakeTimeout { side, ms } => {
                if let Some(s) = self.sides.get(usize::from(side)) {
                    let _ = s
                        .tls
                        .set_handshake_timeout(lp, Some(Duration::from_millis(u64::from(ms))));
                }
            }
            Op::IdleTimeout { side, ms } => {
                if let Some(s) = self.sides.get(usize::from(side)) {
                    let _ = s
                        .tls
                        .set_idle_timeout(lp, Some(Duration::from_millis(u64::from(ms))));
                }
            }
            Op::React { side, on, then } => {
                if let Some(s) = self.side(side) {
                    s.reactions.borrow_mut().push((on, then));
                }
            }
            Op::Fault { side, fault } => {
                let end = match (self.sides.get(usize::from(side)), &self.raw) {
                    (Some(s), _) => Some(s.end),
                    (None, Some(raw)) => Some(raw.end),
                    (None, None) => None,
                };
                if let Some(end) = end {
                    let _ = end.inject_fault(lp, fault.fault());
                }
            }
            Op::RawData { len } => {
                if let Some(raw) = &self.raw
                    && raw.handshake_done()
                {
                    let chunk = data(self.raw_seed, self.raw_sent, len);
                    let mut off = 0;
                    {
                        let mut s = raw.session.borrow_mut();
                        while off < chunk.len() {
                            match s.write(&chunk[off..]) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => off += n,
                            }
                        }
                    }
                    self.raw_sent += off as u64;
                    raw.flush(lp);
                }
            }
            Op::RawGarbage { len } => {
                if let Some(raw) = &self.raw {
                    let junk: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(151)).collect();
                    raw.send_raw(lp, &junk);
                }
            }
            Op::RawAlert => {
                if let Some(raw) = &self.raw {
                    // A fatal handshake_failure alert in the clear.
                    raw.send_raw(lp, &[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28]);
                }
            }
            Op::RawKeyUpdates { n } => {
                if let Some(raw) = &self.raw
                    && raw.handshake_done()
                {
                    {
                        let mut s = raw.session.borrow_mut();
                        for _ in 0..n {
                            let byte = [pattern_byte(self.raw_seed, self.raw_sent)];
                            if !matches!(s.write(&byte), Ok(1)) || s.key_update(true).is_err() {
                                break;
                            }
                            self.raw_sent += 1;
                        }
                    }
                    raw.flush(lp);
                }
            }
            Op::RawStopReading => {
                if let Some(raw) = &self.raw {
                    let _ = raw.end.stop_read(lp);
                }
            }
            Op::RawShutdown => {
                if let Some(raw) = &self.raw {
                    let shut = raw.session.borrow_mut().shutdown();
                    if shut.is_ok() {
                        raw.flush(lp);
                    }
                }
            }
            Op::Run { ms } => {
                let deadline = Instant::now() + Duration::from_millis(u64::from(ms));
                loop {
                    if !lp.run_once().unwrap() {
                        std::thread::sleep(Duration::from_micros(200));
                    }
                    if Instant::now() >= deadline {
                        break;
                    }
                }
            }
            Op::RunNowait => {
                lp.run_nowait().unwrap();
            }
        }
        self.check_bounds();
    }

    /// Memory stays bounded: what the handles hold is what the user asked them to
    /// write, plus a bounded amount the protocol makes.
    fn check_bounds(&self) {
        for s in &self.sides {
            if s.closed.get() {
                continue;
            }
            let queued = s.tls.write_queue_size(&self.lp) as u64;
            // Records add under 2 % (22 bytes per 16 KiB); replies to the peer stop
            // being read for past 64 KiB, so they stay under that plus the replies to
            // one read (at most the Duplex's capacity, each reply no larger than its
            // record); the handshake and tickets add a few KiB.
            let bound = s.outstanding.get()
                + s.outstanding.get() / 50
                + 64 * 1024
                + self.capacity as u64
                + 32 * 1024;
            if queued > bound {
                self.model.violation(format!(
                    "{:?} queues {queued} bytes with {} of writes outstanding",
                    s.tls,
                    s.outstanding.get()
                ));
            }
            let inbound = s.tls.buffered_ciphertext_in(&self.lp);
            if inbound > self.capacity + 64 * 1024 {
                self.model.violation(format!(
                    "{:?} buffers {inbound} bytes of ciphertext in (capacity {})",
                    s.tls, self.capacity
                ));
            }
            if s.end.buffered(&self.lp) > self.capacity {
                self.model
                    .violation(format!("{:?} buffers more than its capacity", s.end));
            }
        }
    }

    /// Runs the loop until no callback has run for 60 ms (longer than any timeout or
    /// delay a case sets), or 1 s.
    fn settle(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(1);
        let mut seen = self.model.events();
        let mut quiet = Instant::now();
        while Instant::now() < deadline && quiet.elapsed() < Duration::from_millis(60) {
            if !self.lp.run_once().unwrap() {
                break;
            }
            if self.model.events() != seen {
                seen = self.model.events();
                quiet = Instant::now();
            }
        }
        self.lp.run_nowait().unwrap();
    }

    fn finish(mut self) {
        // Held writes would wait for ever: release them, then let things settle.
        for s in &self.sides {
            let _ = s.end.inject_fault(&mut self.lp, Fault::ReleaseWrites);
        }
        if let Some(raw) = &self.raw {
            let _ = raw.end.inject_fault(&mut self.lp, Fault::ReleaseWrites);
        }
        self.settle();
        // A failure reaches everyone waiting: the current reader and the handshake
        // callback have heard it by now.
        for s in &self.sides {
            if s.closed.get() {
                continue;
            }
            if let Some(e) = s.tls.failure(&self.lp) {
                if self.model.reading(s.h) {
                    self.model.violation(format!(
                        "{:?} failed ({e}) but its reader never heard",
                        s.tls
                    ));
                }
                if !self.model.all_done(s.h, ReqKind::Handshake) {
                    self.model.violation(format!(
                        "{:?} failed ({e}) but its handshake callback never heard",
                        s.tls
                    ));
                }
                if !self.model.all_done(s.h, ReqKind::Write) {
                    self.model
                        .violation(format!("{:?} failed ({e}) but a write never heard", s.tls));
                }
            }
        }
        // No byte lost: a clean shutdown on one side and a clean end heard on the other
        // mean every byte queued before the shutdown arrived.
        if self.sides.len() == 2 {
            for (from, to) in [(0, 1), (1, 0)] {
                let (f, t) = (&self.sides[from], &self.sides[to]);
                if let Some((queued, req)) = f.shutdown.get()
                    && self.model.result(req).as_deref() == Some("ok")
                    && self.model.ending(t.h).as_deref() == Some("eof")
                    && self.model.received(t.h) != queued
                {
                    self.model.violation(format!(
                        "{:?} shut down after {queued} bytes; {:?} heard a clean end after {}",
                        f.tls,
                        t.tls,
                        self.model.received(t.h)
                    ));
                }
            }
        }
        for s in self.sides.clone() {
            do_close(&mut self.lp, &s);
            if let Some(inner) = s.unwrapped.take() {
                inner.close(&mut self.lp, |_, _| {});
            }
        }
        if let Some(raw) = self.raw.take() {
            raw.end.close(&mut self.lp, |_, _| {});
        }
        self.model.expect_loop_ends(&mut self.lp, self.tick);
        self.model.finish();
        self.model.check();
    }
}

#[test]
fn tls_callbacks_keep_the_contract_under_generated_call_orders_and_faults() {
    let pki = Pki::generate(&["localhost"]).unwrap();
    let setup = Setup {
        acceptor: pki.acceptor().unwrap(),
        connector: pki.connector().unwrap(),
    };
    let watchdog = Watchdog::start(Duration::from_secs(60));
    let mut runner = TestRunner::new(Config {
        cases: cases(120),
        failure_persistence: None,
        ..Config::default()
    });
    let case = Cell::new(0u64);
    let result = runner.run(
        &(
            any::<bool>(),
            prop_oneof![Just(512usize), 1024usize..20_000, Just(1 << 16)],
            proptest::collection::vec(op_strategy(), 1..40),
        ),
        |(raw, capacity, ops)| {
            case.set(case.get() + 1);
            watchdog.begin(format!("raw: {raw}, capacity: {capacity}\n{ops:#?}"));
            let mut world = World::new(&setup, case.get(), raw, capacity);
            // Most cases read on both sides from the start, as applications do.
            for s in world.sides.clone() {
                do_start_read(&mut world.lp, &s);
            }
            for op in &ops {
                world.apply(op);
            }
            world.finish();
            watchdog.end();
            Ok(())
        },
    );
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// Runs one generated case as a plain test (cases the property test found once).
fn run_case(raw: bool, capacity: usize, ops: &[Op]) {
    let pki = Pki::generate(&["localhost"]).unwrap();
    let setup = Setup {
        acceptor: pki.acceptor().unwrap(),
        connector: pki.connector().unwrap(),
    };
    let mut world = World::new(&setup, 1, raw, capacity);
    for s in world.sides.clone() {
        do_start_read(&mut world.lp, &s);
    }
    for op in ops {
        world.apply(op);
    }
    world.finish();
}

#[test]
fn a_close_in_a_late_handshake_callback_keeps_the_write_before_the_shutdown() {
    run_case(
        false,
        512,
        &[
            Op::React {
                side: 0,
                on: On::Handshake,
                then: Reaction::Close,
            },
            Op::Run { ms: 2 },
            Op::OnHandshake { side: 0 },
            Op::Write {
                side: 0,
                len: 0,
                parts: 1,
            },
            Op::Shutdown { side: 0 },
        ],
    );
}

#[test]
fn a_keyupdate_flood_from_a_raw_peer_stays_within_the_reply_bound() {
    run_case(
        true,
        1 << 16,
        &[
            Op::Run { ms: 1 },
            Op::RawKeyUpdates { n: 2202 },
            Op::RawKeyUpdates { n: 2932 },
            Op::Run { ms: 0 },
            Op::RawShutdown,
            Op::KeyUpdate {
                side: 0,
                request: false,
            },
            Op::Fault {
                side: 0,
                fault: FaultOp::PartialWrites(1),
            },
            Op::StartRead { side: 0 },
            Op::Write {
                side: 0,
                len: 1,
                parts: 1,
            },
            Op::Close { side: 1 },
            Op::Run { ms: 0 },
        ],
    );
}
