//! The event loop: owns `mio::Poll`, the arena of handle states, the queue of deferred
//! completions, the timers and the results of background jobs.
//!
//! It must never call a user callback while it holds a borrow of a handle's state: every
//! callback is taken out of its slot, called with `&mut Loop`, and put back only if the
//! handle is still the same generation and the callback was not replaced meanwhile. It
//! knows no handle kind: events and deferred service reach a handle through its slot's
//! [`Ops`].

use std::any::Any;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use mio::{Events, Poll, Token, Waker};

use crate::error::{Error, Result};
use crate::handle::{RawId, Readiness};
use crate::timer::{self, Timers};

/// Token of the loop's cross-thread waker; handle tokens never reach it (see `RawId::token`).
pub(crate) const WAKER_TOKEN: Token = Token(usize::MAX);

/// Size of each chunk of the per-loop read buffer. Reads are split off it as `Bytes`.
const READ_CHUNK: usize = 256 * 1024;
/// A read is never offered less room than this; below it the loop starts a new chunk.
const MIN_READ_ROOM: usize = 16 * 1024;

static NEXT_LOOP_ID: AtomicU32 = AtomicU32::new(1);

/// A request callback with its handle already bound: write, shutdown, connect.
pub(crate) type DoneCb = Box<dyn FnOnce(&mut Loop, Result<()>)>;

/// A completion waiting to run on the loop, outside the call that queued it.
pub(crate) enum Deferred {
    /// A request's callback and its result (one allocation per request: the callback).
    Done(DoneCb, Result<()>),
    /// Anything else (close callbacks, deferred pumps).
    Call(Box<dyn FnOnce(&mut Loop)>),
}

/// The loop's queue of deferred callbacks, lent to a handle's state (see
/// [`Loop::with_queue`]).
pub(crate) struct Queue<'a>(&'a mut VecDeque<Deferred>);

impl Queue<'_> {
    /// As [`Loop::complete`].
    pub(crate) fn complete(&mut self, cb: DoneCb, result: Result<()>) {
        self.0.push_back(Deferred::Done(cb, result));
    }

    /// As [`Loop::defer`].
    pub(crate) fn defer(&mut self, f: impl FnOnce(&mut Loop) + 'static) {
        self.0.push_back(Deferred::Call(Box::new(f)));
    }
}

/// The loop side of a `queue_work` job: takes the boxed result.
type JobDone = Box<dyn FnOnce(&mut Loop, Box<dyn Any + Send>)>;
/// What a job posts back: its boxed result, or the payload of its panic.
type JobResult = std::thread::Result<Box<dyn Any + Send>>;

/// Work posted from other threads: async wake-ups and finished background jobs.
#[derive(Default)]
pub(crate) struct Inbox {
    jobs: Vec<(u64, JobResult)>,
}

/// State shared with other threads: the mio waker and the inbox it announces.
pub(crate) struct Remote {
    pub(crate) waker: Waker,
    inbox: Mutex<Inbox>,
}

impl Remote {
    pub(crate) fn wake(&self) -> io::Result<()> {
        self.waker.wake()
    }
}

/// What the loop can ask of a handle without knowing its kind: the arena knows no
/// handle kind. Each slot holds its kind's state as `dyn Any` and a table of these
/// functions, through which the loop delivers readiness events, deferred service and
/// the close of an owned handle, so a new kind of handle (a `Tls` over any stream, an
/// in-memory stream) plugs in without the loop naming it. A kind's module reaches its
/// own state with `Loop::state`, which checks the type.
///
/// None of these functions may run a user callback directly when called from inside a
/// user's call (`owned_closed` runs inside the `close` of the owned handle): they record
/// what happened and defer the callbacks.
pub(crate) struct Ops {
    /// A readiness event for the handle's token.
    pub(crate) ready: fn(&mut Loop, RawId, Readiness),
    /// Service requested with [`Loop::serve_soon`] (data left behind by a read budget,
    /// a reader that started while data waited, a retry).
    pub(crate) serve: fn(&mut Loop, RawId),
    /// A handle this one owns (see [`Loop::set_owner`]) was closed by someone else.
    pub(crate) owned_closed: fn(&mut Loop, RawId, RawId),
}

impl Ops {
    /// For handles with no events, no deferred service and nothing owned.
    pub(crate) const NONE: Ops = Ops {
        ready: |_, _, _| {},
        serve: |_, _| {},
        owned_closed: |_, _, _| {},
    };
}

/// One arena slot.
pub(crate) struct Slot {
    pub(crate) generation: u32,
    /// The handle has work in progress (keeps `run` alive while referenced).
    pub(crate) active: bool,
    pub(crate) referenced: bool,
    /// The handle that owns this one (a `Tls` owns its inner stream).
    pub(crate) owner: Option<RawId>,
    pub(crate) ops: &'static Ops,
    /// `None` while the slot is free.
    pub(crate) state: Option<Box<dyn Any>>,
}

impl Slot {
    pub(crate) fn free() -> Slot {
        Slot {
            generation: 0,
            active: false,
            referenced: true,
            owner: None,
            ops: &Ops::NONE,
            state: None,
        }
    }
}

/// A single-threaded event loop in the style of libuv.
///
/// Handles ([`Tcp`](crate::Tcp), [`TcpListener`](crate::TcpListener),
/// [`Timer`](crate::Timer), [`Tls`](crate::Tls), ...) are small `Copy` ids; their state
/// lives in the loop, and every callback receives `&mut Loop` so it can act on any handle.
///
/// # Run modes
/// - [`run`](Loop::run): until no referenced handle is active and nothing is pending, or
///   [`stop`](Loop::stop) is called;
/// - [`run_once`](Loop::run_once): one iteration, waiting for events if there is nothing
///   else to do;
/// - [`run_nowait`](Loop::run_nowait): one iteration that never blocks.
///
/// # Iteration
/// Each iteration runs the due timers, then the deferred completions (write, shutdown,
/// connect and close callbacks) that were queued before the pass began, polls for I/O
/// (without blocking if anything is pending), dispatches the events, serves handles that
/// had data left behind, and runs the timers and completions once more. The loop polls
/// once in every iteration, so no chain of timers or completions can starve I/O.
///
/// # Dropping a loop
/// Dropping a `Loop` drops every handle's state at once: sockets are closed, and pending
/// callbacks (read, write, shutdown, connect, close, timer, async, signal, the `done` of
/// a [`queue_work`](Loop::queue_work) job) are dropped without being called. To have
/// them called, close the handles and run the loop until [`run`](Loop::run) returns.
pub struct Loop {
    pub(crate) id: u32,
    poll: Poll,
    events: Events,
    /// The events of one poll, copied out so handles can be dispatched with `&mut self`.
    ready: Vec<(Token, Readiness)>,
    slots: Vec<Slot>,
    free: Vec<u32>,
    deferred: VecDeque<Deferred>,
    pub(crate) timers: Timers,
    now: Instant,
    /// Handles to serve on this iteration without an event (data left behind by a read
    /// budget, a reader started while data waited, a retry).
    serve_list: Vec<RawId>,
    /// Per-loop read buffer: reads land here and are split off as `Bytes`, so an idle
    /// handle holds no buffer of its own.
    read_buf: BytesMut,
    /// Per-loop plaintext buffer of the TLS handles, split off like `read_buf`.
    pub(crate) plain_buf: BytesMut,
    /// Per-loop ciphertext output buffer lent to the TLS sessions while they encrypt.
    pub(crate) cipher_buf: BytesMut,
    /// Number of referenced, active handles plus pending jobs.
    active: usize,
    stopped: bool,
    pub(crate) remote: Arc<Remote>,
    pub(crate) asyncs: Vec<RawId>,
    jobs: HashMap<u64, JobDone>,
    next_job: u64,
    /// The handle whose owner is calling it right now (see [`Loop::as_owner`]).
    acting: Option<RawId>,
}

impl fmt::Debug for Loop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Loop")
            .field("id", &self.id)
            .field("handles", &self.handle_count())
            .field("active", &self.active)
            .field("deferred", &self.deferred.len())
            .field("timers", &self.timers.stored())
            .field("jobs", &self.jobs.len())
            .finish()
    }
}

/// How one iteration may wait for events.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Wait {
    Block,
    NoWait,
}

impl Loop {
    /// Creates a loop with its own `epoll` instance.
    ///
    /// # Errors
    /// [`Error::Io`] if the poller or the waker cannot be created (for example when the
    /// process is out of file descriptors).
    pub fn new() -> Result<Loop> {
        let poll = Poll::new()?;
        let waker = Waker::new(poll.registry(), WAKER_TOKEN)?;
        Ok(Loop {
            id: NEXT_LOOP_ID.fetch_add(1, Ordering::Relaxed),
            poll,
            events: Events::with_capacity(1024),
            ready: Vec::new(),
            slots: Vec::new(),
            free: Vec::new(),
            deferred: VecDeque::new(),
            timers: Timers::default(),
            now: Instant::now(),
            serve_list: Vec::new(),
            read_buf: BytesMut::new(),
            plain_buf: BytesMut::new(),
            cipher_buf: BytesMut::new(),
            active: 0,
            stopped: false,
            remote: Arc::new(Remote {
                waker,
                inbox: Mutex::new(Inbox::default()),
            }),
            asyncs: Vec::new(),
            jobs: HashMap::new(),
            next_job: 0,
            acting: None,
        })
    }

    /// Runs until no referenced handle is active and no request is pending, or until
    /// [`stop`](Loop::stop) is called.
    ///
    /// Returns `Ok(true)` if it ended because of `stop` while handles were still active.
    ///
    /// # Errors
    /// [`Error::Io`] if polling fails (never for an error of a single handle: those go to
    /// that handle's callbacks).
    ///
    /// # Panics
    /// A panic in a callback, or in a [`queue_work`](Loop::queue_work) job, propagates
    /// out of `run` (a job's panic is resumed where its `done` would have run).
    pub fn run(&mut self) -> Result<bool> {
        self.stopped = false;
        while self.is_alive() && !self.stopped {
            self.iterate(Wait::Block)?;
        }
        let stopped = self.stopped;
        self.stopped = false;
        Ok(stopped && self.is_alive())
    }

    /// Runs one iteration, blocking for I/O if nothing else is due. Returns whether the
    /// loop still has active handles or pending requests.
    ///
    /// # Errors
    /// [`Error::Io`] if polling fails.
    pub fn run_once(&mut self) -> Result<bool> {
        if self.is_alive() {
            self.iterate(Wait::Block)?;
        }
        Ok(self.is_alive())
    }

    /// Runs one iteration without blocking. Returns whether the loop still has active
    /// handles or pending requests.
    ///
    /// # Errors
    /// [`Error::Io`] if polling fails.
    pub fn run_nowait(&mut self) -> Result<bool> {
        self.iterate(Wait::NoWait)?;
        Ok(self.is_alive())
    }

    /// Makes [`run`](Loop::run) return after the current iteration.
    pub fn stop(&mut self) {
        self.stopped = true;
    }

    /// The loop's cached time, updated at the start of each iteration and after polling.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Re-reads the clock into the loop's cached time.
    pub fn update_time(&mut self) {
        self.now = Instant::now();
    }

    /// Whether any referenced handle is active or any request is pending.
    pub fn is_alive(&self) -> bool {
        self.active > 0 || !self.deferred.is_empty() || !self.serve_list.is_empty()
    }

    /// Number of handles that currently exist on this loop (open or closing).
    pub fn handle_count(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Runs `work` on a worker thread and then `done` on this loop with its result, like
    /// libuv's `uv_queue_work`. The pending job keeps [`run`](Loop::run) alive.
    ///
    /// Jobs run on a pool of at most 4 threads shared by every loop of the process,
    /// started on demand; more jobs wait for a free thread. Use it for blocking calls
    /// that must not stall the loop (name resolution, file reads), not for long-running
    /// work, which would hold a thread of the pool.
    ///
    /// # Panics
    /// If `work` panics, the panic is caught on the worker thread and resumed on the loop
    /// thread where `done` would have run (out of [`run`](Loop::run)); the job no longer
    /// keeps the loop alive.
    pub fn queue_work<T, W, D>(&mut self, work: W, done: D)
    where
        T: Send + 'static,
        W: FnOnce() -> T + Send + 'static,
        D: FnOnce(&mut Loop, T) + 'static,
    {
        let id = self.next_job;
        self.next_job += 1;
        self.jobs.insert(
            id,
            Box::new(move |lp, any| {
                // The job boxes exactly a `T`; any other type cannot occur.
                if let Ok(value) = any.downcast::<T>() {
                    done(lp, *value);
                }
            }),
        );
        self.active += 1;
        let remote = Arc::clone(&self.remote);
        crate::work::submit(Box::new(move || {
            let result = std::panic::catch_unwind(AssertUnwindSafe(work))
                .map(|value| Box::new(value) as Box<dyn Any + Send>);
            if let Ok(mut inbox) = remote.inbox.lock() {
                inbox.jobs.push((id, result));
            }
            // A failed wake-up only means the loop is gone.
            let _ = remote.wake();
        }));
    }

    // ---- internals used by the handle modules ----

    pub(crate) fn registry(&self) -> &mio::Registry {
        self.poll.registry()
    }

    /// Calls `f` with the state of handle `id` (of type `T`) and the queue of deferred
    /// callbacks, so a state can queue completions without being taken out of its slot.
    pub(crate) fn with_queue<T: 'static, R>(
        &mut self,
        id: RawId,
        f: impl FnOnce(&mut T, &mut Queue<'_>) -> R,
    ) -> Option<R> {
        if id.loop_id != self.id {
            return None;
        }
        let slot = self
            .slots
            .get_mut(id.index as usize)
            .filter(|s| s.generation == id.generation)?;
        let state = slot.state.as_mut()?.downcast_mut::<T>()?;
        Some(f(state, &mut Queue(&mut self.deferred)))
    }

    /// Calls `f` with the poll registry and the state of handle `id` (of type `T`), for
    /// registering a source the state owns without duplicating the registry's descriptor.
    pub(crate) fn with_registry<T: 'static, R>(
        &mut self,
        id: RawId,
        f: impl FnOnce(&mio::Registry, &mut T) -> R,
    ) -> Option<R> {
        if id.loop_id != self.id {
            return None;
        }
        let slot = self
            .slots
            .get_mut(id.index as usize)
            .filter(|s| s.generation == id.generation)?;
        let state = slot.state.as_mut()?.downcast_mut::<T>()?;
        Some(f(self.poll.registry(), state))
    }

    /// Runs `f` soon, from the loop: in this iteration's pass of deferred callbacks if
    /// one is still to come, else in the next iteration's. It never runs inside this call,
    /// and callbacks deferred by a deferred callback wait for the next pass, after a
    /// poll, so a chain of them never starves I/O. The pending callback keeps
    /// [`run`](Loop::run) alive.
    ///
    /// Use it for "run soon" (finishing work outside the current callback, breaking up a
    /// long job) instead of a 0 ms [`Timer`](crate::Timer).
    ///
    /// # Examples
    /// ```
    /// use std::cell::Cell;
    /// use std::rc::Rc;
    ///
    /// let mut lp = biotls::Loop::new()?;
    /// let ran = Rc::new(Cell::new(false));
    /// let r = Rc::clone(&ran);
    /// lp.defer(move |_| r.set(true));
    /// assert!(!ran.get(), "never inside the call");
    /// lp.run()?;
    /// assert!(ran.get());
    /// # Ok::<(), biotls::Error>(())
    /// ```
    pub fn defer(&mut self, f: impl FnOnce(&mut Loop) + 'static) {
        self.deferred.push_back(Deferred::Call(Box::new(f)));
    }

    /// Queues a request's callback with its result.
    pub(crate) fn complete(&mut self, cb: DoneCb, result: Result<()>) {
        self.deferred.push_back(Deferred::Done(cb, result));
    }

    /// Asks for `id`'s [`Ops::serve`] on this iteration (or the next, if the loop is past
    /// that point), without an event.
    pub(crate) fn serve_soon(&mut self, id: RawId) {
        self.serve_list.push(id);
    }

    /// Adds a handle's state to the arena; its events and service go to `ops`.
    pub(crate) fn insert(&mut self, state: Box<dyn Any>, ops: &'static Ops) -> RawId {
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(Slot::free());
                (self.slots.len() - 1) as u32
            }
        };
        let slot = &mut self.slots[index as usize];
        slot.state = Some(state);
        slot.ops = ops;
        slot.active = false;
        slot.referenced = true;
        slot.owner = None;
        RawId {
            loop_id: self.id,
            index,
            generation: slot.generation,
        }
    }

    /// Frees a slot: its id becomes stale at once. Returns the state it held. If another
    /// handle owned it, that handle's [`Ops::owned_closed`] runs before this returns.
    pub(crate) fn remove(&mut self, id: RawId) -> Option<Box<dyn Any>> {
        let slot = self.slot_mut(id)?;
        let counted = slot.active && slot.referenced;
        slot.active = false;
        slot.generation = slot.generation.wrapping_add(1);
        let owner = slot.owner.take();
        let state = slot.state.take();
        if counted {
            self.active -= 1;
        }
        self.free.push(id.index);
        if let Some(owner) = owner
            && let Some(ops) = self.slot(owner).map(|s| s.ops)
        {
            (ops.owned_closed)(self, owner, id);
        }
        state
    }

    fn slot(&self, id: RawId) -> Option<&Slot> {
        if id.loop_id != self.id {
            return None;
        }
        self.slots
            .get(id.index as usize)
            .filter(|s| s.generation == id.generation && s.state.is_some())
    }

    fn slot_mut(&mut self, id: RawId) -> Option<&mut Slot> {
        if id.loop_id != self.id {
            return None;
        }
        self.slots
            .get_mut(id.index as usize)
            .filter(|s| s.generation == id.generation && s.state.is_some())
    }

    /// The state of handle `id` if it is open and of type `T`.
    pub(crate) fn state<T: 'static>(&mut self, id: RawId) -> Option<&mut T> {
        self.slot_mut(id)?.state.as_mut()?.downcast_mut::<T>()
    }

    /// The state of handle `id` if it is open and of type `T`.
    pub(crate) fn state_ref<T: 'static>(&self, id: RawId) -> Option<&T> {
        self.slot(id)?.state.as_ref()?.downcast_ref::<T>()
    }

    /// Records that `owner` owns `id` (or, with `None`, that nobody does). While owned,
    /// `id`'s stream calls are refused unless made by the owner ([`Loop::as_owner`]),
    /// and closing `id` tells the owner ([`Ops::owned_closed`]).
    pub(crate) fn set_owner(&mut self, id: RawId, owner: Option<RawId>) {
        if let Some(slot) = self.slot_mut(id) {
            slot.owner = owner;
        }
    }

    /// The handle that owns `id`, if any.
    pub(crate) fn owner(&self, id: RawId) -> Option<RawId> {
        self.slot(id).and_then(|s| s.owner)
    }

    /// Runs `f` as the owner of `id`: `id`'s stream calls made inside are allowed.
    pub(crate) fn as_owner<R>(&mut self, id: RawId, f: impl FnOnce(&mut Loop) -> R) -> R {
        let previous = self.acting.replace(id);
        let out = f(self);
        self.acting = previous;
        out
    }

    /// Refuses a stream call on a handle that another handle owns, unless the owner
    /// makes it.
    pub(crate) fn check_access(&self, id: RawId) -> Result<()> {
        match self.slot(id) {
            Some(slot) if slot.owner.is_some() && self.acting != Some(id) => Err(
                Error::InvalidState("the stream is owned by a Tls handle: use the Tls"),
            ),
            _ => Ok(()),
        }
    }

    /// Records whether a handle is active (keeps `run` alive while referenced).
    pub(crate) fn set_active(&mut self, id: RawId, active: bool) {
        let Some(slot) = self.slot_mut(id) else {
            return;
        };
        if slot.active == active {
            return;
        }
        slot.active = active;
        if slot.referenced {
            if active {
                self.active += 1;
            } else {
                self.active -= 1;
            }
        }
    }

    pub(crate) fn set_referenced(&mut self, id: RawId, referenced: bool) -> Result<()> {
        let slot = self.slot_mut(id).ok_or(Error::Closed)?;
        if slot.referenced == referenced {
            return Ok(());
        }
        slot.referenced = referenced;
        if slot.active {
            if referenced {
                self.active += 1;
            } else {
                self.active -= 1;
            }
        }
        Ok(())
    }

    /// Takes the per-loop read buffer: empty, with at least `MIN_READ_ROOM` bytes of spare
    /// capacity, not zero-filled (a read writes into it and counts what it wrote). Give
    /// it back with [`put_read_buf`](Loop::put_read_buf) after splitting off what was read.
    pub(crate) fn take_read_buf(&mut self) -> BytesMut {
        let mut buf = std::mem::take(&mut self.read_buf);
        if buf.capacity() - buf.len() < MIN_READ_ROOM {
            // Reclaims the old chunk if every `Bytes` split off it is gone, else allocates.
            buf.clear();
            buf.reserve(READ_CHUNK);
        }
        buf
    }

    pub(crate) fn put_read_buf(&mut self, buf: BytesMut) {
        self.read_buf = buf;
    }

    fn run_deferred(&mut self) {
        // Only what was queued before this point: completions that queue more
        // completions run on the next iteration, so none can starve I/O.
        for _ in 0..self.deferred.len() {
            match self.deferred.pop_front() {
                Some(Deferred::Done(cb, result)) => cb(self, result),
                Some(Deferred::Call(f)) => f(self),
                None => break,
            }
        }
    }

    fn iterate(&mut self, wait: Wait) -> Result<()> {
        self.update_time();
        timer::run_pass(self);
        self.run_deferred();

        let timeout = if wait == Wait::NoWait
            || self.stopped
            || !self.deferred.is_empty()
            || !self.serve_list.is_empty()
            || !self.is_alive()
        {
            Some(Duration::ZERO)
        } else {
            self.timers.next_timeout(self.now)
        };
        match self.poll.poll(&mut self.events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
        self.update_time();
        self.timers.release_held();
        let mut ready = std::mem::take(&mut self.ready);
        ready.extend(self.events.iter().map(|e| (e.token(), Readiness::of(e))));
        for &(token, readiness) in &ready {
            if token == WAKER_TOKEN {
                self.drain_remote();
            } else {
                self.dispatch(token, readiness);
            }
        }
        ready.clear();
        self.ready = ready;

        let serve = std::mem::take(&mut self.serve_list);
        for id in serve {
            if let Some(ops) = self.slot(id).map(|s| s.ops) {
                (ops.serve)(self, id);
            }
        }
        timer::run_pass(self);
        self.run_deferred();
        Ok(())
    }

    /// Routes one readiness event to the handle its token names.
    fn dispatch(&mut self, token: Token, readiness: Readiness) {
        let (index, generation) = RawId::parse_token(token);
        let Some(slot) = self.slots.get(index as usize) else {
            return;
        };
        if slot.state.is_none() || slot.generation & 0x7fff_ffff != generation {
            return; // the socket behind this event was closed in this iteration
        }
        let id = RawId {
            loop_id: self.id,
            index,
            generation: slot.generation,
        };
        (slot.ops.ready)(self, id, readiness);
    }

    fn drain_remote(&mut self) {
        let mut jobs = match self.remote.inbox.lock() {
            Ok(mut inbox) => std::mem::take(&mut inbox.jobs),
            Err(_) => Vec::new(),
        }
        .into_iter();
        while let Some((id, result)) = jobs.next() {
            let Some(done) = self.jobs.remove(&id) else {
                continue;
            };
            self.active -= 1;
            match result {
                Ok(value) => done(self, value),
                Err(panic) => {
                    // Results behind this one wait for the next iteration.
                    let rest: Vec<_> = jobs.collect();
                    if !rest.is_empty() {
                        if let Ok(mut inbox) = self.remote.inbox.lock() {
                            inbox.jobs.extend(rest);
                        }
                        let _ = self.remote.wake();
                    }
                    std::panic::resume_unwind(panic);
                }
            }
        }
        crate::async_handle::dispatch(self);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;

    #[test]
    fn queue_work_uses_a_bounded_pool() {
        let mut lp = Loop::new().unwrap();
        let done = Rc::new(Cell::new(0));
        for i in 0..64u64 {
            let done = Rc::clone(&done);
            lp.queue_work(
                move || {
                    std::thread::sleep(Duration::from_millis(1));
                    i
                },
                move |_, v| {
                    assert!(v < 64);
                    done.set(done.get() + 1);
                },
            );
        }
        lp.run().unwrap();
        assert_eq!(done.get(), 64);
        assert!(crate::work::workers() <= crate::work::THREADS);
    }
}
