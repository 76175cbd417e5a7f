//! Timer handles: one-shot and repeating, on the loop's cached clock.
//!
//! Timers live in one binary heap keyed by (deadline, sequence number); stopping or
//! restarting a timer leaves its old heap entry behind, which is skipped when it comes up
//! because its sequence number no longer matches. Timers due at the same instant fire in
//! the order they were started.

use std::time::Duration;

use crate::error::{Error, Result};
use crate::event_loop::Loop;
use crate::handle::{RawId, State, handle_fmt};

type TimerCb = Box<dyn FnMut(&mut Loop, Timer)>;

/// A timer handle, like libuv's `uv_timer_t`.
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

pub(crate) struct TimerState {
    cb: Option<TimerCb>,
    /// Sequence number of the live heap entry; 0 when stopped.
    seq: u64,
    repeat: Option<Duration>,
    /// Bumped by every `start`/`stop`, so a callback can tell whether it was restarted.
    epoch: u64,
}

fn state(lp: &mut Loop, id: RawId) -> Result<&mut TimerState> {
    match lp.slot_mut(id).map(|s| &mut s.state) {
        Some(State::Timer(t)) => Ok(t),
        _ => Err(Error::Closed),
    }
}

impl Timer {
    /// Creates a stopped timer.
    ///
    /// # Errors
    /// None today; the `Result` leaves room for platforms whose timers need a resource.
    pub fn new(lp: &mut Loop) -> Result<Timer> {
        let id = lp.insert(State::Timer(Box::new(TimerState {
            cb: None,
            seq: 0,
            repeat: None,
            epoch: 0,
        })));
        Ok(Timer(id))
    }

    /// Starts (or restarts) the timer: `cb` runs after `timeout`, then every `repeat` if
    /// given. A running timer keeps [`Loop::run`] alive unless [`unref`](Timer::unref)'d.
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
        let deadline = lp.now() + timeout;
        state(lp, self.0)?;
        let seq = lp.add_timer(deadline, self.0);
        let t = state(lp, self.0)?;
        t.cb = Some(Box::new(cb));
        t.seq = seq;
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
        t.seq = 0;
        t.epoch += 1;
        lp.set_active(self.0, false);
        Ok(())
    }

    /// Whether the timer is started.
    pub fn is_active(self, lp: &Loop) -> bool {
        lp.slot(self.0).is_some_and(|s| s.active)
    }

    /// Closes the timer; `close` on a closed timer does nothing.
    pub fn close(self, lp: &mut Loop) {
        lp.remove(self.0);
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

/// Runs a timer whose heap entry `seq` came due.
pub(crate) fn fire(lp: &mut Loop, id: RawId, seq: u64) {
    let now = lp.now();
    let Ok(t) = state(lp, id) else { return };
    if t.seq != seq {
        return; // stopped or restarted since this entry was pushed
    }
    let repeat = t.repeat;
    let epoch = t.epoch;
    let Some(mut cb) = t.cb.take() else { return };
    match repeat {
        Some(every) => {
            let seq = lp.add_timer(now + every, id);
            if let Ok(t) = state(lp, id) {
                t.seq = seq;
            }
        }
        None => {
            if let Ok(t) = state(lp, id) {
                t.seq = 0;
            }
            lp.set_active(id, false);
        }
    }
    cb(lp, Timer(id));
    if let Ok(t) = state(lp, id) {
        // Put the callback back unless the timer was restarted with another one.
        if t.epoch == epoch && t.cb.is_none() {
            t.cb = Some(cb);
        }
    }
}
