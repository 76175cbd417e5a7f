//! Timer handles (one-shot and repeating, on the loop's cached clock) and the loop's
//! timer heap.
//!
//! The heap is keyed by (deadline, sequence number); every start takes a new sequence
//! number, so timers due at the same instant fire in the order they were started, and an
//! entry whose timer was stopped, restarted or closed since is recognised as stale and
//! skipped. Stale entries are counted, and the heap is compacted once they outnumber
//! the live ones: storage stays proportional to the timers that are running.
//!
//! A timer pass fires only what was due when it began. A timer started during a pass
//! (also a repeating timer re-arming itself) is held back until the loop has polled once,
//! so a 0 ms timer restarted from its own callback cannot starve I/O or other timers.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::event_loop::Loop;
use crate::event_loop::Ops;
use crate::handle::{RawId, handle_fmt};

type TimerCb = Box<dyn FnMut(&mut Loop, Timer)>;

/// Below this many stale entries the heap is never compacted.
const COMPACT_MIN: usize = 64;

/// A heap entry: deadline, sequence number, timer.
type Entry = (Instant, u64, RawId);

/// The loop's timers: one heap, and the entries started during the current pass.
#[derive(Default)]
pub(crate) struct Timers {
    heap: BinaryHeap<Reverse<Entry>>,
    /// Started during a timer pass: they join the heap after the next poll.
    held: Vec<Entry>,
    seq: u64,
    in_pass: bool,
    /// Entries (in `heap` or `held`) whose timer was stopped, restarted or closed.
    stale: usize,
}

impl Timers {
    /// Entries stored, live or stale.
    pub(crate) fn stored(&self) -> usize {
        self.heap.len() + self.held.len()
    }

    /// Time until the earliest stored deadline, from `now`.
    pub(crate) fn next_timeout(&self, now: Instant) -> Option<Duration> {
        let heap = self.heap.peek().map(|Reverse((d, _, _))| *d);
        let held = self.held.iter().map(|(d, _, _)| *d).min();
        let first = match (heap, held) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        first.map(|d| d.saturating_duration_since(now))
    }

    /// After a poll: the entries held back by the last passes become eligible.
    pub(crate) fn release_held(&mut self) {
        for entry in self.held.drain(..) {
            self.heap.push(Reverse(entry));
        }
    }

    fn push(&mut self, deadline: Instant, id: RawId) -> u64 {
        self.seq += 1;
        let entry = (deadline, self.seq, id);
        if self.in_pass {
            self.held.push(entry);
        } else {
            self.heap.push(Reverse(entry));
        }
        self.seq
    }
}

/// A timer handle, like libuv's `uv_timer_t`.
///
/// # Semantics
/// - Timers run on the loop's cached clock ([`Loop::now`]), updated once per iteration
///   and after each poll. Timers due at the same instant run in the order they were
///   started.
/// - A timer pass runs every timer that was due when the pass began, unless an earlier
///   callback in the pass stopped, restarted or closed it. A timer started during a pass
///   (from a timer callback, including a repeating timer's next round) does not run in
///   that pass: it runs in the first timer pass after a poll. So a 0 ms timer restarted
///   from its own callback runs once per loop iteration and never starves I/O.
/// - `repeat: Some(Duration::ZERO)` means one-shot, as in libuv.
/// - A timeout too large to represent as an [`Instant`] means "never": the timer is
///   started (and keeps [`Loop::run`] alive unless unref'd) but never fires.
///
/// # Examples
/// ```
/// use std::time::Duration;
/// use biotls::{Loop, Timer};
///
/// let mut lp = Loop::new()?;
/// let timer = Timer::new(&mut lp)?;
/// timer.start(&mut lp, Duration::from_millis(5), None, |lp, t| {
///     println!("fired");
///     t.close(lp);
/// })?;
/// lp.run()?;
/// # Ok::<(), biotls::Error>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Timer(pub(crate) RawId);
handle_fmt!(Timer, "timer");

/// Whether and when a timer fires.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Armed {
    Stopped,
    /// Started with a timeout too large to represent: active, never fires.
    Never,
    /// Its live heap entry has this sequence number.
    Entry(u64),
}

pub(crate) struct TimerState {
    cb: Option<TimerCb>,
    armed: Armed,
    repeat: Option<Duration>,
    /// Bumped by every `start`/`stop`, so a callback can tell whether it was restarted.
    epoch: u64,
}

fn state(lp: &mut Loop, id: RawId) -> Result<&mut TimerState> {
    lp.state::<TimerState>(id).ok_or(Error::Closed)
}

/// The deadline `timeout` after `now`, or `None` if it cannot be represented ("never").
pub(crate) fn deadline_after(now: Instant, timeout: Duration) -> Option<Instant> {
    now.checked_add(timeout)
}

/// Forgets a timer's heap entry (stopped, restarted or closed): it becomes stale.
fn unarm(lp: &mut Loop, armed: Armed) {
    if let Armed::Entry(_) = armed {
        lp.timers.stale += 1;
        let t = &lp.timers;
        if t.stale > COMPACT_MIN && t.stale > t.stored() - t.stale {
            compact(lp);
        }
    }
}

/// Drops every stale entry.
fn compact(lp: &mut Loop) {
    let mut heap = std::mem::take(&mut lp.timers.heap).into_vec();
    let mut held = std::mem::take(&mut lp.timers.held);
    let live = |lp: &Loop, (_, seq, id): &Entry| {
        lp.state_ref::<TimerState>(*id)
            .is_some_and(|t| t.armed == Armed::Entry(*seq))
    };
    heap.retain(|Reverse(e)| live(lp, e));
    held.retain(|e| live(lp, e));
    lp.timers.heap = BinaryHeap::from(heap);
    lp.timers.held = held;
    lp.timers.stale = 0;
}

/// Arms timer `id` to fire `timeout` from now; returns the new `Armed`.
fn arm(lp: &mut Loop, id: RawId, timeout: Duration) -> Armed {
    match deadline_after(lp.now(), timeout) {
        Some(deadline) => Armed::Entry(lp.timers.push(deadline, id)),
        None => Armed::Never,
    }
}

impl Timer {
    /// Creates a stopped timer.
    ///
    /// # Errors
    /// None today; the `Result` leaves room for platforms whose timers need a resource.
    pub fn new(lp: &mut Loop) -> Result<Timer> {
        static OPS: Ops = Ops::NONE;
        let id = lp.insert(
            Box::new(TimerState {
                cb: None,
                armed: Armed::Stopped,
                repeat: None,
                epoch: 0,
            }),
            &OPS,
        );
        Ok(Timer(id))
    }

    /// Starts (or restarts) the timer: `cb` runs after `timeout`, then every `repeat` if
    /// given (and not zero). A running timer keeps [`Loop::run`] alive unless
    /// [`unref`](Timer::unref)'d. See the type's docs for when a timer runs.
    ///
    /// # Errors
    /// [`Error::Closed`] if the timer was closed.
    pub fn start(
        self,
        lp: &mut Loop,
        timeout: Duration,
        repeat: Option<Duration>,
        cb: impl FnMut(&mut Loop, Timer) + 'static,
    ) -> Result<()> {
        let old = state(lp, self.0)?.armed;
        unarm(lp, old);
        let armed = arm(lp, self.0, timeout);
        let t = state(lp, self.0)?;
        t.cb = Some(Box::new(cb));
        t.armed = armed;
        t.repeat = repeat.filter(|r| !r.is_zero());
        t.epoch += 1;
        lp.set_active(self.0, true);
        Ok(())
    }

    /// Stops the timer; its callback will not run until it is started again.
    ///
    /// # Errors
    /// [`Error::Closed`] if the timer was closed.
    pub fn stop(self, lp: &mut Loop) -> Result<()> {
        let t = state(lp, self.0)?;
        let old = std::mem::replace(&mut t.armed, Armed::Stopped);
        t.epoch += 1;
        lp.set_active(self.0, false);
        unarm(lp, old);
        Ok(())
    }

    /// Whether the timer is started.
    pub fn is_active(self, lp: &Loop) -> bool {
        lp.state_ref::<TimerState>(self.0)
            .is_some_and(|t| t.armed != Armed::Stopped)
    }

    /// Closes the timer; its callback will not run again. `close` on a closed timer does
    /// nothing.
    pub fn close(self, lp: &mut Loop) {
        if let Some(state) = lp.remove(self.0)
            && let Ok(t) = state.downcast::<TimerState>()
        {
            unarm(lp, t.armed);
        }
    }

    /// The timer no longer keeps [`Loop::run`] alive.
    ///
    /// # Errors
    /// [`Error::Closed`] if the timer was closed.
    pub fn unref(self, lp: &mut Loop) -> Result<()> {
        lp.set_referenced(self.0, false)
    }

    /// Undoes [`unref`](Timer::unref).
    ///
    /// # Errors
    /// [`Error::Closed`] if the timer was closed.
    pub fn ref_(self, lp: &mut Loop) -> Result<()> {
        lp.set_referenced(self.0, true)
    }
}

/// Runs one timer pass: every timer due at the loop's cached time when it begins.
pub(crate) fn run_pass(lp: &mut Loop) {
    let now = lp.now();
    lp.timers.in_pass = true;
    while let Some(&Reverse((deadline, seq, id))) = lp.timers.heap.peek() {
        if deadline > now {
            break;
        }
        lp.timers.heap.pop();
        fire(lp, id, seq);
    }
    lp.timers.in_pass = false;
}

/// Runs timer `id` whose heap entry `seq` came due.
fn fire(lp: &mut Loop, id: RawId, seq: u64) {
    let live = lp
        .state_ref::<TimerState>(id)
        .is_some_and(|t| t.armed == Armed::Entry(seq));
    if !live {
        // Stopped, restarted or closed since this entry was pushed.
        lp.timers.stale = lp.timers.stale.saturating_sub(1);
        return;
    }
    let repeat = match state(lp, id) {
        Ok(t) => t.repeat,
        Err(_) => return,
    };
    let armed = match repeat {
        // Held back until after the next poll (we are in a pass).
        Some(every) => arm(lp, id, every),
        None => Armed::Stopped,
    };
    let Ok(t) = state(lp, id) else { return };
    t.armed = armed;
    let epoch = t.epoch;
    let cb = t.cb.take();
    if armed == Armed::Stopped {
        lp.set_active(id, false);
    }
    let Some(mut cb) = cb else { return };
    cb(lp, Timer(id));
    if let Ok(t) = state(lp, id)
        && t.epoch == epoch
        && t.cb.is_none()
    {
        // Not restarted with another callback meanwhile.
        t.cb = Some(cb);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closed_and_restarted_timers_do_not_accumulate_in_the_heap() {
        let mut lp = Loop::new().unwrap();
        let long = Duration::from_secs(3600);
        // One timer restarted many times (an idle timeout re-armed on every byte).
        let t = Timer::new(&mut lp).unwrap();
        for _ in 0..10_000 {
            t.start(&mut lp, long, None, |_, _| {}).unwrap();
        }
        assert!(
            lp.timers.stored() <= 2 * COMPACT_MIN,
            "{}",
            lp.timers.stored()
        );
        // Many timers started and closed before firing (handshake timeouts).
        for _ in 0..10_000 {
            let t = Timer::new(&mut lp).unwrap();
            t.start(&mut lp, long, None, |_, _| {}).unwrap();
            t.close(&mut lp);
        }
        assert!(
            lp.timers.stored() <= 2 * COMPACT_MIN,
            "{}",
            lp.timers.stored()
        );
        // With many live timers, stale ones never outnumber them by much.
        let live: Vec<Timer> = (0..1000)
            .map(|_| {
                let t = Timer::new(&mut lp).unwrap();
                t.start(&mut lp, long, None, |_, _| {}).unwrap();
                t
            })
            .collect();
        for _ in 0..20 {
            for t in &live {
                t.start(&mut lp, long, None, |_, _| {}).unwrap();
            }
        }
        let stored = lp.timers.stored();
        assert!(stored <= 2 * 1001 + COMPACT_MIN, "{stored}");
        for t in &live {
            t.stop(&mut lp).unwrap();
        }
        t.close(&mut lp);
        assert!(
            lp.timers.stored() <= 2 * COMPACT_MIN,
            "{}",
            lp.timers.stored()
        );
        assert!(!lp.is_alive());
    }

    #[test]
    fn a_timeout_too_large_to_represent_means_never() {
        let mut lp = Loop::new().unwrap();
        let t = Timer::new(&mut lp).unwrap();
        t.start(&mut lp, Duration::MAX, Some(Duration::MAX), |_, _| {
            panic!("a timer set to never fired")
        })
        .unwrap();
        assert!(t.is_active(&lp));
        assert_eq!(lp.timers.stored(), 0);
        lp.run_nowait().unwrap();
        assert!(lp.is_alive(), "a started timer keeps the loop alive");
        t.close(&mut lp);
        assert!(!lp.is_alive());
    }
}
