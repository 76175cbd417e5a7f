//! An in-memory stream: two connected [`Duplex`] handles on one loop, with a bounded
//! buffer each way, so backpressure is real. What `tokio::io::duplex` gives async code:
//! test a protocol (over [`Tls`](crate::Tls), say) without sockets, deterministically.
//!
//! Each end owns its inbound buffer (what the other end wrote and this end has not read
//! yet, at most `capacity` bytes) and its write queue. A write moves data into the other
//! end's inbound buffer as far as it has room and completes once all of its bytes were
//! moved, as a socket write completes once the kernel took its bytes. Reading frees room,
//! which lets the other end's queued writes move on.
//!
//! For tests, [`Duplex::inject_fault`] makes the transport misbehave on purpose: accept
//! writes in small pieces, hold their completions, fail a write or a shutdown, deliver an
//! end of stream or a reset, split or delay deliveries.

use std::collections::VecDeque;
use std::io;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::drain::Drain;
use crate::error::{Error, Result};
use crate::event_loop::Ops;
use crate::event_loop::{DoneCb, Loop, Queue};
use crate::handle::{RawId, handle_fmt};
use crate::read_side::{ReadEnd, ReadSide};
use crate::stream::{ReadResult, Stream};
use crate::timer::Timer;
use crate::write_queue::{Shutdown, WriteQueue};

type ReadCb = Box<dyn FnMut(&mut Loop, ReadResult)>;

/// One end of an in-memory stream. Implements [`Stream`] with the semantics of
/// [`Tcp`](crate::Tcp): a write completes once its bytes are in the other end's inbound
/// buffer; [`shutdown`](Stream::shutdown) gives the other end's reader an end of stream
/// after the data; [`close`](Stream::close) gives it an end of stream too, and fails the
/// other end's writes with `BrokenPipe`.
///
/// # Examples
/// A protocol tested over TLS without sockets:
/// ```
/// use biotls::pki::Pki;
/// use biotls::tls::Tls;
/// use biotls::{Duplex, Loop, Stream};
///
/// let pki = Pki::generate(&["localhost"])?;
/// let mut lp = Loop::new()?;
/// let (a, b) = Duplex::pair(&mut lp, 64 * 1024)?;
/// let server = Tls::server(&mut lp, a, &pki.acceptor()?)?;
/// let client = Tls::client(&mut lp, b, &pki.connector()?, "localhost")?;
/// biotls::echo::echo(&mut lp, server, Default::default())?;
/// client.write(&mut lp, &b"ping"[..], |_, _, r| r.expect("write"))?;
/// client.start_read(&mut lp, |lp, client, r| {
///     assert_eq!(r.expect("read").as_deref(), Some(&b"ping"[..]));
///     client.close(lp, |_, _| {});
/// })?;
/// lp.run()?;
/// # Ok::<(), biotls::Error>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Duplex(pub(crate) RawId);
handle_fmt!(Duplex, "duplex");

/// A transport fault to inject into one end of a [`Duplex`] pair, for tests.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// This end's writes move at most `n` bytes into the other end per loop iteration,
    /// so they complete late and in pieces. `PartialWrites(0)` undoes it.
    PartialWrites(usize),
    /// This end's write callbacks are held (the data still moves) until
    /// [`Fault::ReleaseWrites`].
    HoldWrites,
    /// Completes the write requests whose data has moved, and stops holding them.
    ReleaseWrites,
    /// This end's next write fails with this error (earlier requests keep their
    /// outcome); the stream is then broken for writing.
    FailNextWrite(io::ErrorKind),
    /// This end's next shutdown fails with this error.
    FailShutdown(io::ErrorKind),
    /// This end's reader sees an end of stream after the data already buffered; the
    /// other end's later writes fail with `BrokenPipe`.
    Eof,
    /// The connection is reset: both ends drop what they buffered, their readers get
    /// `ConnectionReset`, and their queued and later writes fail with it.
    Reset,
    /// This end's reader gets at most `n` bytes per callback. `SplitReads(0)` undoes it.
    SplitReads(usize),
    /// Data waits this long in this end's inbound buffer before it is delivered.
    /// `DelayReads(Duration::ZERO)` undoes it.
    DelayReads(Duration),
}

#[derive(Default)]
struct Faults {
    max_move: Option<usize>,
    hold_writes: bool,
    fail_next_write: Option<io::ErrorKind>,
    fail_shutdown: Option<io::ErrorKind>,
    max_deliver: Option<usize>,
    delay: Option<Duration>,
}

struct DuplexState {
    /// The other end; `None` once it closed.
    peer: Option<RawId>,
    capacity: usize,
    /// What the other end wrote and this end has not read, with the time it arrived.
    inbound: VecDeque<(Instant, Bytes)>,
    inbound_len: usize,
    /// How the inbound stream ends once drained; set when no more data can arrive.
    inbound_end: Option<ReadEnd>,
    read: ReadSide<ReadCb>,
    out: WriteQueue,
    shutdown: Shutdown,
    /// The error that broke the write side.
    broken: Option<Error>,
    faults: Faults,
    /// Serves the reader when delayed data comes due.
    delay_timer: Option<Timer>,
    drain: Drain,
}

impl DuplexState {
    fn new(capacity: usize) -> Self {
        DuplexState {
            peer: None,
            capacity,
            inbound: VecDeque::new(),
            inbound_len: 0,
            inbound_end: None,
            read: ReadSide::default(),
            out: WriteQueue::default(),
            shutdown: Shutdown::Open,
            broken: None,
            faults: Faults::default(),
            delay_timer: None,
            drain: Drain::default(),
        }
    }

    fn is_active(&self) -> bool {
        self.read.is_active() || self.out.has_requests() || self.shutdown.is_queued()
    }

    /// Room for more inbound data (none once the inbound stream has ended).
    fn room(&self) -> usize {
        if self.inbound_end.is_some() {
            0
        } else {
            self.capacity.saturating_sub(self.inbound_len)
        }
    }
}

static OPS: Ops = Ops { serve, ..Ops::NONE };

fn state(lp: &mut Loop, id: RawId) -> Result<&mut DuplexState> {
    lp.state::<DuplexState>(id).ok_or(Error::Closed)
}

fn state_ref(lp: &Loop, id: RawId) -> Result<&DuplexState> {
    lp.state_ref::<DuplexState>(id).ok_or(Error::Closed)
}

fn update_active(lp: &mut Loop, id: RawId) {
    if let Ok(t) = state(lp, id) {
        let active = t.is_active();
        lp.set_active(id, active);
    }
}

fn io_error(kind: io::ErrorKind) -> Error {
    Error::from(io::Error::from(kind))
}

impl Duplex {
    /// Two connected ends on this loop, each buffering at most `capacity` bytes of what
    /// the other wrote (at least 1).
    ///
    /// # Errors
    /// None today; the `Result` is for symmetry with the socket pairs.
    pub fn pair(lp: &mut Loop, capacity: usize) -> Result<(Duplex, Duplex)> {
        let capacity = capacity.max(1);
        let a = lp.insert(Box::new(DuplexState::new(capacity)), &OPS);
        let b = lp.insert(Box::new(DuplexState::new(capacity)), &OPS);
        state(lp, a)?.peer = Some(b);
        state(lp, b)?.peer = Some(a);
        Ok((Duplex(a), Duplex(b)))
    }

    /// Bytes the other end wrote that this end holds unread (at most the capacity).
    pub fn buffered(self, lp: &Loop) -> usize {
        state_ref(lp, self.0).map_or(0, |t| t.inbound_len)
    }

    /// Injects `fault` (for tests: see [`Fault`]).
    ///
    /// # Errors
    /// [`Error::Closed`].
    pub fn inject_fault(self, lp: &mut Loop, fault: Fault) -> Result<()> {
        let id = self.0;
        let t = state(lp, id)?;
        match fault {
            Fault::PartialWrites(n) => t.faults.max_move = (n > 0).then_some(n),
            Fault::HoldWrites => t.faults.hold_writes = true,
            Fault::ReleaseWrites => t.faults.hold_writes = false,
            Fault::FailNextWrite(kind) => t.faults.fail_next_write = Some(kind),
            Fault::FailShutdown(kind) => t.faults.fail_shutdown = Some(kind),
            Fault::SplitReads(n) => t.faults.max_deliver = (n > 0).then_some(n),
            Fault::DelayReads(d) => t.faults.delay = (!d.is_zero()).then_some(d),
            Fault::Eof => {
                t.inbound_end.get_or_insert(Ok(()));
                if let Some(peer) = t.peer {
                    break_writes(lp, peer, io_error(io::ErrorKind::BrokenPipe));
                }
            }
            Fault::Reset => {
                let peer = t.peer;
                reset(lp, id);
                if let Some(peer) = peer {
                    reset(lp, peer);
                }
            }
        }
        lp.serve_soon(id);
        Ok(())
    }

    /// The handle no longer keeps [`Loop::run`] alive.
    ///
    /// # Errors
    /// [`Error::Closed`].
    pub fn unref(self, lp: &mut Loop) -> Result<()> {
        lp.set_referenced(self.0, false)
    }
}

/// Drops what `id` buffered and ends both of its directions with a reset.
fn reset(lp: &mut Loop, id: RawId) {
    let err = io_error(io::ErrorKind::ConnectionReset);
    if let Ok(t) = state(lp, id) {
        t.inbound.clear();
        t.inbound_len = 0;
        if t.inbound_end.is_none() || t.inbound_end.as_ref().is_some_and(|e| e.is_ok()) {
            t.inbound_end = Some(Err(err.clone()));
        }
    }
    break_writes(lp, id, err);
    lp.serve_soon(id);
}

/// Breaks `id`'s write side with `err`: data not moved yet is dropped, its requests (and
/// a queued shutdown) fail from the loop, later writes fail at once.
fn break_writes(lp: &mut Loop, id: RawId, err: Error) {
    let Ok(t) = state(lp, id) else { return };
    if t.broken.is_some() {
        return;
    }
    t.broken = Some(err.clone());
    let mut done: Vec<(DoneCb, Result<()>)> = Vec::new();
    if !t.faults.hold_writes {
        while let Some(cb) = t.out.pop_written() {
            done.push((cb, Ok(())));
        }
    }
    t.out.clear_data();
    while let Some(cb) = t.out.pop_any() {
        done.push((cb, Err(err.clone())));
    }
    if let Some(cb) = t.shutdown.take_queued() {
        done.push((cb, Err(err.clone())));
    }
    let drain = t.drain.take();
    for (cb, r) in done {
        lp.complete(cb, r);
    }
    if let Some(cb) = drain {
        lp.complete(cb, Err(err));
    }
    update_active(lp, id);
}

/// Moves queued data into the other end's inbound buffer as far as it has room (and the
/// `PartialWrites` fault allows), completes the requests that moved, and performs a
/// queued shutdown once the queue is empty. Runs no callback.
fn move_out(lp: &mut Loop, id: RawId) {
    let now = lp.now();
    let Ok(t) = state(lp, id) else { return };
    let Some(peer) = t.peer else { return };
    let mut allowance = t.faults.max_move.unwrap_or(usize::MAX);
    let mut moved = false;
    while allowance > 0 && state_ref(lp, id).is_ok_and(|t| t.out.has_data()) {
        let room = state_ref(lp, peer).map_or(0, |p| p.room());
        if room == 0 {
            break;
        }
        let Some(chunk) = state(lp, id)
            .ok()
            .and_then(|t| t.out.take_front(room.min(allowance)))
        else {
            break;
        };
        allowance -= chunk.len();
        if let Ok(p) = state(lp, peer) {
            p.inbound_len += chunk.len();
            p.inbound.push_back((now, chunk));
        }
        moved = true;
    }
    if moved {
        lp.serve_soon(peer);
    }
    let Ok(t) = state(lp, id) else { return };
    if t.out.has_data() && t.faults.max_move.is_some() {
        lp.serve_soon(id); // the next piece on the next iteration
    }
    let Ok(t) = state(lp, id) else { return };
    let mut done: Vec<(DoneCb, Result<()>)> = Vec::new();
    if !t.faults.hold_writes {
        while let Some(cb) = t.out.pop_written() {
            done.push((cb, Ok(())));
        }
    }
    if !t.out.has_data() && t.shutdown.is_queued() && !t.faults.hold_writes {
        let result = match t.faults.fail_shutdown.take() {
            Some(kind) => Err(io_error(kind)),
            None => Ok(()),
        };
        if let Some(cb) = t.shutdown.take_queued() {
            done.push((cb, result));
        }
        if let Ok(p) = state(lp, peer) {
            p.inbound_end.get_or_insert(Ok(()));
        }
        lp.serve_soon(peer);
    }
    for (cb, r) in done {
        lp.complete(cb, r);
    }
    lp.with_queue::<DuplexState, _>(id, |t, q| {
        t.drain.check(q, t.out.bytes(), |q| schedule_drain(q, id));
    });
    update_active(lp, id);
}

/// Queues the drain watcher's re-check (see `drain`).
fn schedule_drain(q: &mut Queue<'_>, id: RawId) {
    q.defer(move |lp| {
        let Ok(t) = state(lp, id) else { return };
        let queued = t.out.bytes();
        if let Some(cb) = t.drain.recheck(queued) {
            cb(lp, Ok(()));
        }
    });
}

/// The loop's service: move queued writes on, deliver inbound data (or the ending).
fn serve(lp: &mut Loop, id: RawId) {
    move_out(lp, id);
    deliver(lp, id);
}

/// Delivers inbound data to the reader, then the ending once drained.
fn deliver(lp: &mut Loop, id: RawId) {
    loop {
        let now = lp.now();
        let Ok(t) = state(lp, id) else { return };
        if let Some((mut cb, heard)) = t.read.take_late_reader() {
            update_active(lp, id);
            cb(lp, heard);
            return;
        }
        if !t.read.can_deliver() {
            return;
        }
        let Some((arrived, front)) = t.inbound.front_mut() else {
            // Drained: the ending, if the stream has one.
            let Some(end) = t.inbound_end.clone() else {
                return;
            };
            let reader = t.read.end(end);
            update_active(lp, id);
            if let Some((mut cb, heard)) = reader {
                cb(lp, heard);
            }
            return;
        };
        if let Some(delay) = t.faults.delay
            && let Some(due) = arrived.checked_add(delay)
            && due > now
        {
            arm_delay(lp, id, due - now);
            return;
        }
        let take = t.faults.max_deliver.unwrap_or(usize::MAX).min(front.len());
        let data = if take == front.len() {
            t.inbound.pop_front().map(|(_, b)| b).unwrap_or_default()
        } else {
            front.split_to(take)
        };
        t.inbound_len -= data.len();
        let peer = t.peer;
        let Some(mut taken) = t.read.take() else {
            return;
        };
        // Room was freed: the other end's queued writes can move on.
        if let Some(peer) = peer {
            lp.serve_soon(peer);
        }
        (taken.cb)(lp, Ok(Some(data)));
        if let Ok(t) = state(lp, id) {
            t.read.restore(taken);
        }
    }
}

/// Serves `id` again after `after` (delayed deliveries).
fn arm_delay(lp: &mut Loop, id: RawId, after: Duration) {
    let existing = state(lp, id).ok().and_then(|t| t.delay_timer);
    let timer = match existing {
        Some(timer) => timer,
        None => {
            let Ok(timer) = Timer::new(lp) else { return };
            let _ = timer.unref(lp);
            if let Ok(t) = state(lp, id) {
                t.delay_timer = Some(timer);
            }
            timer
        }
    };
    let _ = timer.start(lp, after, None, move |lp, _| deliver(lp, id));
}

impl Stream for Duplex {
    fn start_read<F>(self, lp: &mut Loop, mut cb: F) -> Result<()>
    where
        F: FnMut(&mut Loop, Self, ReadResult) + 'static,
    {
        lp.check_access(self.0)?;
        state(lp, self.0)?
            .read
            .start(Box::new(move |lp, r| cb(lp, self, r)));
        lp.set_active(self.0, true);
        lp.serve_soon(self.0);
        Ok(())
    }

    fn stop_read(self, lp: &mut Loop) -> Result<()> {
        lp.check_access(self.0)?;
        state(lp, self.0)?.read.stop();
        update_active(lp, self.0);
        Ok(())
    }

    fn write_vectored<F>(
        self,
        lp: &mut Loop,
        bufs: impl IntoIterator<Item = Bytes>,
        cb: F,
    ) -> Result<()>
    where
        F: FnOnce(&mut Loop, Self, Result<()>) + 'static,
    {
        lp.check_access(self.0)?;
        let t = state(lp, self.0)?;
        if let Some(e) = &t.broken {
            return Err(e.clone());
        }
        if !t.shutdown.is_open() {
            return Err(Error::InvalidState("write after shutdown"));
        }
        t.out.push(bufs, Box::new(move |lp, r| cb(lp, self, r)));
        if let Some(kind) = t.faults.fail_next_write.take() {
            break_writes(lp, self.0, io_error(kind));
            return Ok(());
        }
        if t.peer.is_none() {
            break_writes(lp, self.0, io_error(io::ErrorKind::BrokenPipe));
            return Ok(());
        }
        lp.set_active(self.0, true);
        move_out(lp, self.0);
        Ok(())
    }

    fn try_write(self, lp: &mut Loop, data: &[u8]) -> Result<usize> {
        lp.check_access(self.0)?;
        let now = lp.now();
        let t = state(lp, self.0)?;
        if let Some(e) = &t.broken {
            return Err(e.clone());
        }
        if !t.shutdown.is_open() {
            return Err(Error::InvalidState("write after shutdown"));
        }
        if t.out.has_data() || data.is_empty() {
            return Ok(0);
        }
        let Some(peer) = t.peer else {
            return Err(io_error(io::ErrorKind::BrokenPipe));
        };
        let allowance = t.faults.max_move.unwrap_or(usize::MAX);
        let n = state_ref(lp, peer)
            .map_or(0, |p| p.room())
            .min(allowance)
            .min(data.len());
        if n == 0 {
            return Ok(0);
        }
        if let Ok(t) = state(lp, self.0) {
            t.out.wrote_directly(n);
        }
        if let Ok(p) = state(lp, peer) {
            p.inbound_len += n;
            p.inbound
                .push_back((now, Bytes::copy_from_slice(&data[..n])));
        }
        lp.serve_soon(peer);
        Ok(n)
    }

    fn shutdown<F>(self, lp: &mut Loop, cb: F) -> Result<()>
    where
        F: FnOnce(&mut Loop, Self, Result<()>) + 'static,
    {
        lp.check_access(self.0)?;
        let t = state(lp, self.0)?;
        if let Some(e) = &t.broken {
            return Err(e.clone());
        }
        if !t.shutdown.is_open() {
            return Err(Error::InvalidState("already shut down"));
        }
        t.shutdown = Shutdown::Queued(Box::new(move |lp, r| cb(lp, self, r)));
        lp.set_active(self.0, true);
        move_out(lp, self.0);
        Ok(())
    }

    fn on_drain<F>(self, lp: &mut Loop, level: usize, cb: F) -> Result<()>
    where
        F: FnOnce(&mut Loop, Self, Result<()>) + 'static,
    {
        let id = self.0;
        let cb: DoneCb = Box::new(move |lp, r| cb(lp, self, r));
        lp.with_queue::<DuplexState, _>(id, |t, q| {
            let broken = t.broken.clone();
            let queued = t.out.bytes();
            t.drain.set(q, level, cb, queued, broken.as_ref(), |q| {
                schedule_drain(q, id)
            });
        })
        .ok_or(Error::Closed)?;
        Ok(())
    }

    fn close<F>(self, lp: &mut Loop, cb: F)
    where
        F: FnOnce(&mut Loop, Self) + 'static,
    {
        let Some(any) = lp.remove(self.0) else { return };
        let Ok(mut t) = any.downcast::<DuplexState>() else {
            return;
        };
        if let Some(timer) = t.delay_timer.take() {
            timer.close(lp);
        }
        let mut done: Vec<DoneCb> = Vec::new();
        if !t.faults.hold_writes {
            while let Some(cb) = t.out.pop_written() {
                lp.complete(cb, Ok(()));
            }
        }
        done.extend(t.out.take_requests());
        done.extend(t.shutdown.take_queued());
        done.extend(t.drain.take());
        for cb in done {
            lp.complete(cb, Err(Error::Cancelled));
        }
        if let Some(peer) = t.peer
            && let Ok(p) = state(lp, peer)
        {
            p.peer = None;
            p.inbound_end.get_or_insert(Ok(()));
            break_writes(lp, peer, io_error(io::ErrorKind::BrokenPipe));
            lp.serve_soon(peer);
        }
        lp.defer(move |lp| cb(lp, self));
    }

    fn write_queue_size(self, lp: &Loop) -> usize {
        state_ref(lp, self.0).map_or(0, |t| t.out.bytes())
    }

    fn is_open(self, lp: &Loop) -> bool {
        state_ref(lp, self.0).is_ok()
    }

    fn handle_id(self) -> Option<crate::HandleId> {
        Some(crate::HandleId(self.0))
    }
}
