//! The event loop: owns `mio::Poll`, every handle's state, the queue of deferred
//! completions and the timers.
//!
//! It must never call a user callback while it holds a borrow of a handle's state: every
//! callback is taken out of its slot, called with `&mut Loop`, and put back only if the
//! handle is still the same generation and the callback was not replaced meanwhile.

use std::any::Any;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::fmt;
use std::io;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use mio::{Events, Poll, Token, Waker};

use crate::error::{Error, Result};
use crate::handle::{RawId, Slot, State};

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

/// The loop side of a `queue_work` job: takes the boxed result.
type JobDone = Box<dyn FnOnce(&mut Loop, Box<dyn Any + Send>)>;

/// Work posted from other threads: async wake-ups and finished background jobs.
#[derive(Default)]
pub(crate) struct Inbox {
    pub(crate) jobs: Vec<(u64, Box<dyn Any + Send>)>,
}

/// State shared with other threads: the mio waker and the inbox it announces.
pub(crate) struct Remote {
    pub(crate) waker: Waker,
    pub(crate) inbox: Mutex<Inbox>,
}

impl Remote {
    pub(crate) fn wake(&self) -> io::Result<()> {
        self.waker.wake()
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
/// Each iteration runs due timers, then deferred completions (write, shutdown, connect and
/// close callbacks), polls for I/O, dispatches the events, serves handles that still had
/// data left behind, and runs timers and completions once more.
pub struct Loop {
    pub(crate) id: u32,
    poll: Poll,
    events: Events,
    pub(crate) slots: Vec<Slot>,
    free: Vec<u32>,
    deferred: VecDeque<Deferred>,
    timers: BinaryHeap<Reverse<(Instant, u64, RawId)>>,
    timer_seq: u64,
    now: Instant,
    /// Handles that may have data left behind (read budget spent, or reading restarted):
    /// edge-triggered readiness brings no new event for them.
    pub(crate) ready_again: Vec<RawId>,
    /// Per-loop read buffer: reads land here and are split off as `Bytes`, so an idle
    /// handle holds no buffer of its own.
    read_buf: BytesMut,
    /// Per-loop plaintext buffer of the TLS handles, split off like `read_buf`.
    pub(crate) plain_buf: BytesMut,
    /// Per-loop ciphertext output buffer lent to the TLS sessions while they encrypt.
    pub(crate) cipher_buf: BytesMut,
    /// Number of referenced, active handles.
    active: usize,
    stopped: bool,
    pub(crate) remote: Arc<Remote>,
    pub(crate) asyncs: Vec<RawId>,
    jobs: HashMap<u64, JobDone>,
    next_job: u64,
}

impl fmt::Debug for Loop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Loop")
            .field("id", &self.id)
            .field("handles", &(self.slots.len() - self.free.len()))
            .field("active", &self.active)
            .field("deferred", &self.deferred.len())
            .field("timers", &self.timers.len())
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
            slots: Vec::new(),
            free: Vec::new(),
            deferred: VecDeque::new(),
            timers: BinaryHeap::new(),
            timer_seq: 0,
            now: Instant::now(),
            ready_again: Vec::new(),
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
        self.active > 0 || !self.deferred.is_empty() || !self.ready_again.is_empty()
    }

    /// Number of handles that currently exist on this loop (open or closing).
    pub fn handle_count(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Runs `work` on a new thread and then `done` on this loop with its result, like
    /// libuv's `uv_queue_work`. The pending job keeps [`run`](Loop::run) alive.
    ///
    /// Use it for blocking calls that must not stall the loop (name resolution, file
    /// reads).
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
                // The job thread boxes exactly a `T`; any other type cannot occur.
                if let Ok(value) = any.downcast::<T>() {
                    done(lp, *value);
                }
            }),
        );
        self.active += 1;
        let remote = Arc::clone(&self.remote);
        std::thread::spawn(move || {
            let value: Box<dyn Any + Send> = Box::new(work());
            if let Ok(mut inbox) = remote.inbox.lock() {
                inbox.jobs.push((id, value));
            }
            // A failed wake-up only means the loop is gone.
            let _ = remote.wake();
        });
    }

    // ---- internals used by the handle modules ----

    pub(crate) fn registry(&self) -> &mio::Registry {
        self.poll.registry()
    }

    /// Queues `f` to run on the loop after the current call returns.
    pub(crate) fn defer(&mut self, f: impl FnOnce(&mut Loop) + 'static) {
        self.deferred.push_back(Deferred::Call(Box::new(f)));
    }

    /// Queues a request's callback with its result.
    pub(crate) fn complete(&mut self, cb: DoneCb, result: Result<()>) {
        self.deferred.push_back(Deferred::Done(cb, result));
    }

    pub(crate) fn insert(&mut self, state: State) -> RawId {
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(Slot::default());
                (self.slots.len() - 1) as u32
            }
        };
        let slot = &mut self.slots[index as usize];
        slot.state = state;
        slot.active = false;
        slot.referenced = true;
        RawId {
            loop_id: self.id,
            index,
            generation: slot.generation,
        }
    }

    /// Frees a slot: its id becomes stale at once. Returns the state it held.
    pub(crate) fn remove(&mut self, id: RawId) -> Option<State> {
        let slot = self.slot_mut(id)?;
        if slot.active && slot.referenced {
            self.active -= 1;
        }
        let slot = self.slot_mut(id)?;
        slot.active = false;
        slot.generation = slot.generation.wrapping_add(1);
        let state = std::mem::take(&mut slot.state);
        self.free.push(id.index);
        Some(state)
    }

    pub(crate) fn slot(&self, id: RawId) -> Option<&Slot> {
        if id.loop_id != self.id {
            return None;
        }
        self.slots
            .get(id.index as usize)
            .filter(|s| s.generation == id.generation && !matches!(s.state, State::Free))
    }

    pub(crate) fn slot_mut(&mut self, id: RawId) -> Option<&mut Slot> {
        if id.loop_id != self.id {
            return None;
        }
        self.slots
            .get_mut(id.index as usize)
            .filter(|s| s.generation == id.generation && !matches!(s.state, State::Free))
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
        let counts = slot.referenced;
        if counts {
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

    /// Takes the per-loop read buffer, with at least `MIN_READ_ROOM` initialised bytes.
    /// Give it back with [`put_read_buf`](Loop::put_read_buf) after splitting off what was read.
    pub(crate) fn take_read_buf(&mut self) -> BytesMut {
        let mut buf = std::mem::take(&mut self.read_buf);
        if buf.len() < MIN_READ_ROOM {
            // Reclaims the old chunk if every `Bytes` split off it is gone, else allocates.
            buf.clear();
            buf.reserve(READ_CHUNK);
            buf.resize(READ_CHUNK, 0);
        }
        buf
    }

    pub(crate) fn put_read_buf(&mut self, buf: BytesMut) {
        self.read_buf = buf;
    }

    pub(crate) fn add_timer(&mut self, deadline: Instant, id: RawId) -> u64 {
        self.timer_seq += 1;
        let seq = self.timer_seq;
        self.timers.push(Reverse((deadline, seq, id)));
        seq
    }

    fn next_timeout(&self) -> Option<Duration> {
        self.timers
            .peek()
            .map(|Reverse((deadline, _, _))| deadline.saturating_duration_since(self.now))
    }

    fn run_timers(&mut self) {
        while let Some(Reverse((deadline, seq, id))) = self.timers.peek().copied() {
            if deadline > self.now {
                break;
            }
            self.timers.pop();
            crate::timer::fire(self, id, seq);
        }
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
        self.run_timers();
        self.run_deferred();

        let timeout = if wait == Wait::NoWait
            || self.stopped
            || !self.deferred.is_empty()
            || !self.ready_again.is_empty()
            || !self.is_alive()
        {
            Some(Duration::ZERO)
        } else {
            self.next_timeout()
        };
        let mut events = std::mem::replace(&mut self.events, Events::with_capacity(0));
        match self.poll.poll(&mut events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                self.events = events;
                return Err(e.into());
            }
        }
        self.update_time();
        for event in events.iter() {
            if event.token() == WAKER_TOKEN {
                self.drain_remote();
            } else if let Some(id) = RawId::from_token(self.id, event.token()) {
                crate::handle::dispatch(self, id, event);
            }
        }
        self.events = events;

        let again = std::mem::take(&mut self.ready_again);
        for id in again {
            crate::handle::serve_again(self, id);
        }
        self.run_timers();
        self.run_deferred();
        Ok(())
    }

    fn drain_remote(&mut self) {
        let jobs = match self.remote.inbox.lock() {
            Ok(mut inbox) => std::mem::take(&mut inbox.jobs),
            Err(_) => Vec::new(),
        };
        for (id, value) in jobs {
            if let Some(done) = self.jobs.remove(&id) {
                self.active -= 1;
                done(self, value);
            }
        }
        crate::async_handle::dispatch(self);
    }
}
