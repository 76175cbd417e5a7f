//! The callback contract of `Tcp`, `Pipe` and `Timer` under generated call orders.
//!
//! A proptest generates sequences of user calls (open a stream by connecting to a live
//! or refused address, by accepting, or over a Unix socket; write, `write_vectored`,
//! `try_write` of random sizes; shutdown; close; start and stop reading; reactions run
//! from inside the next callback of a kind: close, stop or restart reading, write,
//! shut down; timers of 0 to a few ms, restarted from their callbacks, stopped, closed,
//! and long ones closed before they fire), peer actions (read, send, FIN, RST), and runs
//! of the loop. The model in `util::contract` checks every callback as it runs; at the
//! end every handle is closed, the loop must run dry, and every request must have
//! completed exactly once, with no byte lost or reordered in either direction.
//!
//! `BIOTLS_PROPTEST_CASES=N` runs N cases (default 200, about 10 s in a debug build).

mod util;

use std::cell::{Cell, RefCell};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use biotls::{Loop, Pipe, Stream, Tcp, TcpListener, Timer};
use bytes::Bytes;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use util::contract::{Model, Req, ReqKind, Watchdog, cases, outcome};
use util::pattern_byte;

const MAX_SUBJECTS: usize = 4;
const MAX_TIMERS: usize = 3;

#[derive(Debug, Clone, Copy)]
enum Open {
    TcpConnect,
    TcpAccept,
    TcpRefused,
    PipeStd,
    PipeConnect,
    PipeRefused,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum On {
    Connect,
    Read,
    Write,
    Shutdown,
}

#[derive(Debug, Clone, Copy)]
enum Reaction {
    Close,
    StopRead,
    StartRead,
    Write(u32),
    Shutdown,
}

#[derive(Debug, Clone)]
enum Op {
    OnDrain {
        s: u8,
        level: u32,
    },
    Open(Open),
    Write {
        s: u8,
        len: u32,
        parts: u8,
    },
    TryWrite {
        s: u8,
        len: u32,
    },
    Shutdown {
        s: u8,
    },
    Close {
        s: u8,
    },
    StartRead {
        s: u8,
    },
    StopRead {
        s: u8,
    },
    React {
        s: u8,
        on: On,
        then: Reaction,
    },
    PeerRead {
        s: u8,
        max: u32,
    },
    PeerSend {
        s: u8,
        len: u32,
    },
    PeerFin {
        s: u8,
    },
    PeerRst {
        s: u8,
    },
    TimerStart {
        t: u8,
        ms: u8,
        repeat: Option<u8>,
        restart: bool,
    },
    TimerStop {
        t: u8,
    },
    TimerClose {
        t: u8,
    },
    LongTimerClosed,
    Run {
        ms: u8,
    },
    RunNowait,
}

fn len_strategy() -> impl Strategy<Value = u32> {
    prop_oneof![
        3 => 0u32..64,
        3 => 64u32..4096,
        2 => 4096u32..70_000,
        1 => 70_000u32..600_000,
    ]
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let s = 0u8..MAX_SUBJECTS as u8;
    let t = 0u8..MAX_TIMERS as u8;
    let open = prop_oneof![
        Just(Open::TcpConnect),
        Just(Open::TcpAccept),
        Just(Open::TcpRefused),
        Just(Open::PipeStd),
        Just(Open::PipeConnect),
        Just(Open::PipeRefused),
    ];
    let on = prop_oneof![
        Just(On::Connect),
        Just(On::Read),
        Just(On::Write),
        Just(On::Shutdown)
    ];
    let reaction = prop_oneof![
        Just(Reaction::Close),
        Just(Reaction::StopRead),
        Just(Reaction::StartRead),
        (0u32..20_000).prop_map(Reaction::Write),
        Just(Reaction::Shutdown),
    ];
    prop_oneof![
        4 => open.prop_map(Op::Open),
        6 => (s.clone(), len_strategy(), 1u8..4).prop_map(|(s, len, parts)| Op::Write { s, len, parts }),
        2 => (s.clone(), len_strategy()).prop_map(|(s, len)| Op::TryWrite { s, len }),
        2 => s.clone().prop_map(|s| Op::Shutdown { s }),
        2 => s.clone().prop_map(|s| Op::Close { s }),
        4 => s.clone().prop_map(|s| Op::StartRead { s }),
        2 => s.clone().prop_map(|s| Op::StopRead { s }),
        4 => (s.clone(), on, reaction).prop_map(|(s, on, then)| Op::React { s, on, then }),
        2 => (s.clone(), 0u32..300_000).prop_map(|(s, level)| Op::OnDrain { s, level }),
        4 => (s.clone(), 1u32..300_000).prop_map(|(s, max)| Op::PeerRead { s, max }),
        4 => (s.clone(), len_strategy()).prop_map(|(s, len)| Op::PeerSend { s, len }),
        1 => s.clone().prop_map(|s| Op::PeerFin { s }),
        1 => s.clone().prop_map(|s| Op::PeerRst { s }),
        2 => (t.clone(), 0u8..4, proptest::option::of(0u8..3), any::<bool>())
            .prop_map(|(t, ms, repeat, restart)| Op::TimerStart { t, ms, repeat, restart }),
        1 => t.clone().prop_map(|t| Op::TimerStop { t }),
        1 => t.prop_map(|t| Op::TimerClose { t }),
        1 => Just(Op::LongTimerClosed),
        6 => (0u8..6).prop_map(|ms| Op::Run { ms }),
        2 => Just(Op::RunNowait),
    ]
}

/// A stream handle under test.
#[derive(Clone, Copy, Debug)]
enum H {
    Tcp(Tcp),
    Pipe(Pipe),
}

/// Calls `$body` with `$s` bound to the concrete handle.
macro_rules! with {
    ($h:expr, |$s:ident| $body:expr) => {
        match $h {
            H::Tcp($s) => $body,
            H::Pipe($s) => $body,
        }
    };
}

/// The other end of a stream, driven by the test.
enum Peer {
    /// Not connected yet: accept it from this listener.
    Pending(std::net::TcpListener),
    Pending2(std::os::unix::net::UnixListener),
    Tcp(TcpStream),
    Unix(UnixStream),
    /// Reset by the test, or never existed (refused).
    Gone,
}

impl Peer {
    fn settle(&mut self) {
        let next = match self {
            Peer::Pending(l) => match l.accept() {
                Ok((s, _)) => Some(Peer::Tcp(s)),
                Err(_) => None,
            },
            Peer::Pending2(l) => match l.accept() {
                Ok((s, _)) => Some(Peer::Unix(s)),
                Err(_) => None,
            },
            _ => None,
        };
        if let Some(p) = next {
            if let Peer::Tcp(s) = &p {
                s.set_nonblocking(true).unwrap();
            }
            if let Peer::Unix(s) = &p {
                s.set_nonblocking(true).unwrap();
            }
            *self = p;
        }
    }

    fn io(&mut self) -> Option<&mut dyn ReadWrite> {
        self.settle();
        match self {
            Peer::Tcp(s) => Some(s),
            Peer::Unix(s) => Some(s),
            _ => None,
        }
    }
}

trait ReadWrite: Read + Write {
    fn fin(&self);
    fn rst(&self);
}
impl ReadWrite for TcpStream {
    fn fin(&self) {
        let _ = self.shutdown(std::net::Shutdown::Write);
    }
    fn rst(&self) {
        let _ = socket2::SockRef::from(self).set_linger(Some(Duration::ZERO));
    }
}
impl ReadWrite for UnixStream {
    fn fin(&self) {
        let _ = self.shutdown(std::net::Shutdown::Write);
    }
    fn rst(&self) {}
}

/// What the callbacks of one stream share with the driver.
struct Shared {
    h: usize,
    model: Rc<Model>,
    handle: Cell<Option<H>>,
    /// Bytes queued or written towards the peer (a pattern with seed `tx_seed`).
    tx: Cell<u64>,
    tx_seed: u64,
    /// Reactions to run from inside the next callback of a kind.
    reactions: RefCell<Vec<(On, Reaction)>>,
    /// Writes that completed `Ok`, by the end offset of their data.
    ok_end: Cell<u64>,
    closed: Cell<bool>,
}

struct Subject {
    shared: Rc<Shared>,
    peer: Peer,
    rx_seed: u64,
    peer_sent: u64,
    peer_received: u64,
    /// How the peer's reading ended: `Some(true)` clean EOF, `Some(false)` an error.
    peer_eof: Option<bool>,
    peer_fin: bool,
    peer_rst: bool,
    /// A peer write failed (a reset): the kernel reported the connection's error there,
    /// so a later read's end of stream says nothing about lost data.
    peer_write_failed: bool,
}

/// Runs the reaction armed for `on`, if any.
fn react(lp: &mut Loop, sh: &Rc<Shared>, on: On) {
    let reaction = {
        let mut r = sh.reactions.borrow_mut();
        r.iter().position(|(o, _)| *o == on).map(|i| r.remove(i).1)
    };
    let Some(reaction) = reaction else { return };
    sh.model.note(format!("react {reaction:?}"));
    match reaction {
        Reaction::Close => do_close(lp, sh),
        Reaction::StopRead => do_stop_read(lp, sh),
        Reaction::StartRead => do_start_read(lp, sh),
        Reaction::Write(len) => do_write(lp, sh, len, 1),
        Reaction::Shutdown => do_shutdown(lp, sh),
    }
}

fn do_write(lp: &mut Loop, sh: &Rc<Shared>, len: u32, parts: u8) {
    let Some(h) = sh.handle.get() else { return };
    let start = sh.tx.get();
    let data: Vec<u8> = (0..u64::from(len))
        .map(|i| pattern_byte(sh.tx_seed, start + i))
        .collect();
    let data = Bytes::from(data);
    let mut bufs = Vec::new();
    let step = (data.len() / usize::from(parts.max(1))).max(1);
    let mut off = 0;
    while off < data.len() {
        let end = (off + step).min(data.len());
        bufs.push(data.slice(off..end));
        off = end;
    }
    let shc = Rc::clone(sh);
    let req = Rc::new(Cell::new(None::<Req>));
    let r2 = Rc::clone(&req);
    let end = start + u64::from(len);
    let result = sh.model.call(|| {
        with!(h, |s| s.write_vectored(lp, bufs, move |lp, _, r| {
            if let Some(req) = r2.get() {
                shc.model.complete(req, outcome(&r));
            }
            if r.is_ok() {
                shc.ok_end.set(shc.ok_end.get().max(end));
            }
            react(lp, &shc, On::Write);
        }))
    });
    match result {
        Ok(()) => {
            req.set(Some(sh.model.request(sh.h, ReqKind::Write)));
            sh.tx.set(end);
        }
        Err(e) => sh.model.note(format!("write refused: {e}")),
    }
}

fn do_try_write(lp: &mut Loop, sh: &Rc<Shared>, len: u32) {
    let Some(h) = sh.handle.get() else { return };
    let start = sh.tx.get();
    let data: Vec<u8> = (0..u64::from(len))
        .map(|i| pattern_byte(sh.tx_seed, start + i))
        .collect();
    let result = sh.model.call(|| with!(h, |s| s.try_write(lp, &data)));
    match result {
        Ok(n) => {
            if n > data.len() {
                sh.model
                    .violation(format!("try_write took {n} of {}", data.len()));
            }
            sh.tx.set(start + n as u64);
            if n > 0 {
                // Taken only with nothing queued: every earlier byte went out too.
                sh.ok_end.set(sh.ok_end.get().max(start + n as u64));
            }
        }
        Err(e) => sh.model.note(format!("try_write refused: {e}")),
    }
}

fn do_shutdown(lp: &mut Loop, sh: &Rc<Shared>) {
    let Some(h) = sh.handle.get() else { return };
    let shc = Rc::clone(sh);
    let req = Rc::new(Cell::new(None::<Req>));
    let r2 = Rc::clone(&req);
    let result = sh.model.call(|| {
        with!(h, |s| s.shutdown(lp, move |lp, _, r| {
            if let Some(req) = r2.get() {
                shc.model.complete(req, outcome(&r));
            }
            react(lp, &shc, On::Shutdown);
        }))
    });
    match result {
        Ok(()) => req.set(Some(sh.model.request(sh.h, ReqKind::Shutdown))),
        Err(e) => sh.model.note(format!("shutdown refused: {e}")),
    }
}

fn do_close(lp: &mut Loop, sh: &Rc<Shared>) {
    let Some(h) = sh.handle.get() else { return };
    if sh.closed.replace(true) {
        return;
    }
    let req = sh.model.request(sh.h, ReqKind::Close);
    sh.model.closing(sh.h);
    let shc = Rc::clone(sh);
    sh.model.call(|| {
        with!(h, |s| s.close(lp, move |_, _| shc
            .model
            .complete(req, "closed".into())))
    });
}

fn do_on_drain(lp: &mut Loop, sh: &Rc<Shared>, level: u32) {
    let Some(h) = sh.handle.get() else { return };
    let shc = Rc::clone(sh);
    let req = Rc::new(Cell::new(None::<Req>));
    let r2 = Rc::clone(&req);
    let result = sh.model.call(|| {
        with!(h, |s| s.on_drain(lp, level as usize, move |lp, s, r| {
            if let Some(req) = r2.get() {
                shc.model.complete(req, outcome(&r));
            }
            if r.is_ok() && s.write_queue_size(lp) > level as usize {
                shc.model.violation(format!(
                    "drained at {} above {level}",
                    s.write_queue_size(lp)
                ));
            }
        }))
    });
    match result {
        Ok(()) => req.set(Some(sh.model.request(sh.h, ReqKind::Drain))),
        Err(e) => sh.model.note(format!("on_drain refused: {e}")),
    }
}

fn do_start_read(lp: &mut Loop, sh: &Rc<Shared>) {
    let Some(h) = sh.handle.get() else { return };
    let shc = Rc::clone(sh);
    let result = sh.model.call(|| {
        with!(h, |s| s.start_read(lp, move |lp, _, r| {
            shc.model.read(shc.h, &r);
            react(lp, &shc, On::Read);
        }))
    });
    match result {
        Ok(()) => sh.model.start_read(sh.h),
        Err(e) => sh.model.note(format!("start_read refused: {e}")),
    }
}

fn do_stop_read(lp: &mut Loop, sh: &Rc<Shared>) {
    let Some(h) = sh.handle.get() else { return };
    if sh.model.call(|| with!(h, |s| s.stop_read(lp))).is_ok() {
        sh.model.stop_read(sh.h);
    }
}

/// What a test timer's callback checks and does.
struct Fire {
    armed: Rc<Cell<bool>>,
    model: Rc<Model>,
    /// Restart from the callback with 0 ms, for ever (until stopped or closed).
    restart: bool,
    slot: usize,
}

impl Fire {
    fn fired(self: &Rc<Self>, lp: &mut Loop, timer: Timer, repeating: bool) {
        let slot = self.slot;
        self.model.note(format!("timer{slot} fired"));
        if !self.armed.get() {
            self.model
                .violation(format!("timer{slot} fired while stopped or closed"));
        }
        if !repeating {
            self.armed.set(false);
        }
        if self.restart {
            let again = Rc::clone(self);
            self.armed.set(true);
            timer
                .start(lp, Duration::ZERO, None, move |lp, t| {
                    again.fired(lp, t, false)
                })
                .unwrap();
        }
    }
}

struct TimerSubject {
    timer: Timer,
    armed: Rc<Cell<bool>>,
    closed: bool,
}

struct World {
    lp: Loop,
    model: Rc<Model>,
    subjects: Vec<Subject>,
    timers: Vec<Option<TimerSubject>>,
    listener: Option<(TcpListener, SocketAddr)>,
    accepted: Rc<RefCell<Vec<Tcp>>>,
    dir: PathBuf,
    seq: u64,
    /// Keeps refused TCP ports bound (never listening) for the case.
    refused: Vec<socket2::Socket>,
    tick: Timer,
}

impl World {
    fn new(case: u64) -> World {
        let mut lp = Loop::new().unwrap();
        let tick = Timer::new(&mut lp).unwrap();
        let ms = Duration::from_millis(1);
        tick.start(&mut lp, ms, Some(ms), |_, _| {}).unwrap();
        tick.unref(&mut lp).unwrap();
        let dir = std::env::temp_dir().join(format!("biotls-props-{}-{case}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        World {
            lp,
            model: Model::new(),
            subjects: Vec::new(),
            timers: (0..MAX_TIMERS).map(|_| None).collect(),
            listener: None,
            accepted: Rc::new(RefCell::new(Vec::new())),
            dir,
            seq: case * 1000,
            refused: Vec::new(),
            tick,
        }
    }

    fn subject(&mut self, s: u8) -> Option<usize> {
        if self.subjects.is_empty() {
            None
        } else {
            Some(usize::from(s) % self.subjects.len())
        }
    }

    fn open(&mut self, how: Open) {
        if self.subjects.len() >= MAX_SUBJECTS {
            return;
        }
        self.seq += 1;
        let name = format!("s{}:{how:?}", self.subjects.len());
        let h = self.model.handle(&name);
        let rx_seed = self.seq * 7 + 1;
        self.model
            .expect_stream(h, move |at| pattern_byte(rx_seed, at));
        let shared = Rc::new(Shared {
            h,
            model: Rc::clone(&self.model),
            handle: Cell::new(None),
            tx: Cell::new(0),
            tx_seed: self.seq * 7 + 2,
            reactions: RefCell::new(Vec::new()),
            ok_end: Cell::new(0),
            closed: Cell::new(false),
        });
        let lp = &mut self.lp;
        let connect_cb = |sh: &Rc<Shared>, req: Rc<Cell<Option<Req>>>| {
            let shc = Rc::clone(sh);
            move |lp: &mut Loop, r: biotls::Result<()>| {
                if let Some(req) = req.get() {
                    shc.model.complete(req, outcome(&r));
                }
                react(lp, &shc, On::Connect);
            }
        };
        let req = Rc::new(Cell::new(None));
        let (handle, peer) = match how {
            Open::TcpConnect | Open::TcpRefused => {
                let (addr, peer) = if matches!(how, Open::TcpConnect) {
                    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                    l.set_nonblocking(true).unwrap();
                    (l.local_addr().unwrap(), Peer::Pending(l))
                } else {
                    let s =
                        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                            .unwrap();
                    s.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
                        .unwrap();
                    let addr = s.local_addr().unwrap().as_socket().unwrap();
                    self.refused.push(s);
                    (addr, Peer::Gone)
                };
                let cb = connect_cb(&shared, Rc::clone(&req));
                let tcp = self
                    .model
                    .call(|| Tcp::connect(lp, addr, move |lp, _, r| cb(lp, r)))
                    .unwrap();
                (H::Tcp(tcp), peer)
            }
            Open::PipeConnect | Open::PipeRefused => {
                let path = self.dir.join(format!("p{}", self.seq));
                let peer = if matches!(how, Open::PipeConnect) {
                    let l = std::os::unix::net::UnixListener::bind(&path).unwrap();
                    l.set_nonblocking(true).unwrap();
                    Peer::Pending2(l)
                } else {
                    Peer::Gone
                };
                let cb = connect_cb(&shared, Rc::clone(&req));
                let pipe = self
                    .model
                    .call(|| Pipe::connect(lp, &path, move |lp, _, r| cb(lp, r)))
                    .unwrap();
                (H::Pipe(pipe), peer)
            }
            Open::PipeStd => {
                let (a, b) = UnixStream::pair().unwrap();
                b.set_nonblocking(true).unwrap();
                let pipe = Pipe::from_std(lp, a).unwrap();
                (H::Pipe(pipe), Peer::Unix(b))
            }
            Open::TcpAccept => {
                if self.listener.is_none() {
                    let l = TcpListener::bind(lp, "127.0.0.1:0".parse().unwrap()).unwrap();
                    let addr = l.local_addr(lp).unwrap();
                    let accepted = Rc::clone(&self.accepted);
                    l.listen(lp, move |_, _, r| {
                        if let Ok(tcp) = r {
                            accepted.borrow_mut().push(tcp);
                        }
                    })
                    .unwrap();
                    l.unref(lp).unwrap();
                    self.listener = Some((l, addr));
                }
                let addr = self.listener.as_ref().unwrap().1;
                let peer = TcpStream::connect(addr).unwrap();
                peer.set_nonblocking(true).unwrap();
                let deadline = Instant::now() + Duration::from_secs(5);
                while self.accepted.borrow().is_empty() {
                    assert!(Instant::now() < deadline, "accept did not happen");
                    lp.run_nowait().unwrap();
                }
                let tcp = self.accepted.borrow_mut().remove(0);
                (H::Tcp(tcp), Peer::Tcp(peer))
            }
        };
        shared.handle.set(Some(handle));
        if matches!(
            how,
            Open::TcpConnect | Open::TcpRefused | Open::PipeConnect | Open::PipeRefused
        ) {
            req.set(Some(self.model.request(h, ReqKind::Connect)));
        }
        self.subjects.push(Subject {
            shared,
            peer,
            rx_seed,
            peer_sent: 0,
            peer_received: 0,
            peer_eof: None,
            peer_fin: false,
            peer_rst: false,
            peer_write_failed: false,
        });
    }

    fn peer_read(&mut self, i: usize, max: u32) {
        let sub = &mut self.subjects[i];
        let model = Rc::clone(&self.model);
        let seed = sub.shared.tx_seed;
        let Some(io) = sub.peer.io() else { return };
        let mut buf = vec![0u8; 64 * 1024];
        let mut left = max as usize;
        while left > 0 && sub.peer_eof.is_none() {
            let want = left.min(buf.len());
            match io.read(&mut buf[..want]) {
                Ok(0) => sub.peer_eof = Some(true),
                Ok(n) => {
                    for (k, b) in buf[..n].iter().enumerate() {
                        let at = sub.peer_received + k as u64;
                        if *b != pattern_byte(seed, at) {
                            model.violation(format!(
                                "peer of s{i}: byte {at} is not what was written"
                            ));
                            return;
                        }
                    }
                    sub.peer_received += n as u64;
                    left -= n;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => sub.peer_eof = Some(false),
            }
        }
    }

    fn peer_send(&mut self, i: usize, len: u32) {
        let sub = &mut self.subjects[i];
        if sub.peer_fin {
            return;
        }
        let seed = sub.rx_seed;
        let start = sub.peer_sent;
        let Some(io) = sub.peer.io() else { return };
        let data: Vec<u8> = (0..u64::from(len))
            .map(|k| pattern_byte(seed, start + k))
            .collect();
        let mut off = 0;
        while off < data.len() {
            match io.write(&data[off..]) {
                Ok(n) => off += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => {
                    sub.peer_write_failed = true;
                    break;
                }
            }
        }
        sub.peer_sent += off as u64;
    }

    fn run_for(&mut self, ms: u8) {
        let deadline = Instant::now() + Duration::from_millis(u64::from(ms));
        loop {
            if !self.lp.run_once().unwrap() {
                std::thread::sleep(Duration::from_micros(200));
            }
            if Instant::now() >= deadline {
                return;
            }
        }
    }

    fn apply(&mut self, op: &Op) {
        self.model.note(format!("op {op:?}"));
        match *op {
            Op::Open(how) => self.open(how),
            Op::Write { s, len, parts } => {
                if let Some(i) = self.subject(s) {
                    let sh = Rc::clone(&self.subjects[i].shared);
                    do_write(&mut self.lp, &sh, len, parts);
                }
            }
            Op::TryWrite { s, len } => {
                if let Some(i) = self.subject(s) {
                    let sh = Rc::clone(&self.subjects[i].shared);
                    do_try_write(&mut self.lp, &sh, len);
                }
            }
            Op::Shutdown { s } => {
                if let Some(i) = self.subject(s) {
                    let sh = Rc::clone(&self.subjects[i].shared);
                    do_shutdown(&mut self.lp, &sh);
                }
            }
            Op::Close { s } => {
                if let Some(i) = self.subject(s) {
                    let sh = Rc::clone(&self.subjects[i].shared);
                    do_close(&mut self.lp, &sh);
                }
            }
            Op::StartRead { s } => {
                if let Some(i) = self.subject(s) {
                    let sh = Rc::clone(&self.subjects[i].shared);
                    do_start_read(&mut self.lp, &sh);
                }
            }
            Op::StopRead { s } => {
                if let Some(i) = self.subject(s) {
                    let sh = Rc::clone(&self.subjects[i].shared);
                    do_stop_read(&mut self.lp, &sh);
                }
            }
            Op::React { s, on, then } => {
                if let Some(i) = self.subject(s) {
                    self.subjects[i]
                        .shared
                        .reactions
                        .borrow_mut()
                        .push((on, then));
                }
            }
            Op::OnDrain { s, level } => {
                if let Some(i) = self.subject(s) {
                    let sh = Rc::clone(&self.subjects[i].shared);
                    do_on_drain(&mut self.lp, &sh, level);
                }
            }
            Op::PeerRead { s, max } => {
                if let Some(i) = self.subject(s) {
                    self.peer_read(i, max);
                }
            }
            Op::PeerSend { s, len } => {
                if let Some(i) = self.subject(s) {
                    self.peer_send(i, len);
                }
            }
            Op::PeerFin { s } => {
                if let Some(i) = self.subject(s) {
                    let sub = &mut self.subjects[i];
                    if let Some(io) = sub.peer.io() {
                        io.fin();
                        sub.peer_fin = true;
                    }
                }
            }
            Op::PeerRst { s } => {
                if let Some(i) = self.subject(s) {
                    let sub = &mut self.subjects[i];
                    if let Some(io) = sub.peer.io() {
                        io.rst();
                        sub.peer_rst = true;
                        sub.peer = Peer::Gone;
                    }
                }
            }
            Op::TimerStart {
                t,
                ms,
                repeat,
                restart,
            } => self.timer_start(t, ms, repeat, restart),
            Op::TimerStop { t } => {
                if let Some(ts) = self.timers[usize::from(t)].as_mut().filter(|ts| !ts.closed) {
                    ts.timer.stop(&mut self.lp).unwrap();
                    ts.armed.set(false);
                }
            }
            Op::TimerClose { t } => {
                if let Some(ts) = self.timers[usize::from(t)].as_mut().filter(|ts| !ts.closed) {
                    ts.timer.close(&mut self.lp);
                    ts.armed.set(false);
                    ts.closed = true;
                }
            }
            Op::LongTimerClosed => {
                let timer = Timer::new(&mut self.lp).unwrap();
                let model = Rc::clone(&self.model);
                timer
                    .start(
                        &mut self.lp,
                        Duration::from_secs(3600),
                        None,
                        move |_, _| model.violation("a closed long timer fired"),
                    )
                    .unwrap();
                timer.close(&mut self.lp);
            }
            Op::Run { ms } => self.run_for(ms),
            Op::RunNowait => {
                self.lp.run_nowait().unwrap();
            }
        }
    }

    fn timer_start(&mut self, t: u8, ms: u8, repeat: Option<u8>, restart: bool) {
        let slot = usize::from(t);
        if self.timers[slot].as_ref().is_none_or(|ts| ts.closed) {
            self.timers[slot] = Some(TimerSubject {
                timer: Timer::new(&mut self.lp).unwrap(),
                armed: Rc::new(Cell::new(false)),
                closed: false,
            });
        }
        let ts = self.timers[slot].as_ref().unwrap();
        let fire = Rc::new(Fire {
            armed: Rc::clone(&ts.armed),
            model: Rc::clone(&self.model),
            restart,
            slot,
        });
        let timeout = Duration::from_millis(u64::from(ms));
        let repeat = repeat.map(|r| Duration::from_millis(u64::from(r)));
        let repeating = repeat.is_some_and(|r| !r.is_zero());
        ts.timer
            .start(&mut self.lp, timeout, repeat, move |lp, t| {
                fire.fired(lp, t, repeating)
            })
            .unwrap();
        ts.armed.set(true);
    }

    /// Lets writes drain into the peers and the peers' data arrive, for a while.
    fn settle(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            self.lp.run_nowait().unwrap();
            for i in 0..self.subjects.len() {
                self.peer_read(i, u32::MAX);
            }
            std::thread::sleep(Duration::from_micros(300));
        }
    }

    /// Closes everything, runs the loop dry and checks what must hold at the end.
    fn finish(mut self) {
        self.settle(Duration::from_millis(20));
        for i in 0..self.subjects.len() {
            let sh = Rc::clone(&self.subjects[i].shared);
            do_close(&mut self.lp, &sh);
        }
        for ts in self.timers.iter_mut().flatten() {
            if !ts.closed {
                ts.timer.close(&mut self.lp);
                ts.armed.set(false);
                ts.closed = true;
            }
        }
        if let Some((l, _)) = self.listener.take() {
            l.close(&mut self.lp);
        }
        for tcp in self.accepted.borrow_mut().drain(..) {
            tcp.close(&mut self.lp, |_, _| {});
        }
        self.model.expect_loop_ends(&mut self.lp, self.tick);
        self.model.finish();
        // Bytes: what the peer read to a clean end includes every write that completed
        // Ok; a reader that heard a clean end received everything the peer sent.
        for i in 0..self.subjects.len() {
            let deadline = Instant::now() + Duration::from_secs(2);
            while self.subjects[i].peer_eof.is_none()
                && !matches!(self.subjects[i].peer, Peer::Gone)
                && Instant::now() < deadline
            {
                self.peer_read(i, u32::MAX);
                std::thread::sleep(Duration::from_micros(200));
            }
            let sub = &self.subjects[i];
            let h = sub.shared.h;
            if sub.peer_eof == Some(true)
                && !sub.peer_write_failed
                && sub.peer_received < sub.shared.ok_end.get()
            {
                self.model.violation(format!(
                    "s{i}: the peer read {} bytes to a clean end, but writes up to {} completed Ok",
                    sub.peer_received,
                    sub.shared.ok_end.get()
                ));
            }
            if self.model.ending(h).as_deref() == Some("eof")
                && !sub.peer_rst
                && self.model.received(h) != sub.peer_sent
            {
                self.model.violation(format!(
                    "s{i}: the reader heard a clean end after {} bytes; the peer sent {}",
                    self.model.received(h),
                    sub.peer_sent
                ));
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        self.model.check();
    }
}

#[test]
fn tcp_pipe_and_timer_callbacks_keep_the_contract_under_generated_call_orders() {
    let watchdog = Watchdog::start(Duration::from_secs(60));
    let mut runner = TestRunner::new(Config {
        cases: cases(200),
        failure_persistence: None,
        ..Config::default()
    });
    let case = Cell::new(0u64);
    let result = runner.run(&proptest::collection::vec(op_strategy(), 1..40), |ops| {
        case.set(case.get() + 1);
        watchdog.begin(format!("{ops:#?}"));
        let mut world = World::new(case.get());
        for op in &ops {
            world.apply(op);
        }
        world.finish();
        watchdog.end();
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
