//! The idle timeout of a [`Tls`] handle: no ciphertext in either direction for the
//! configured time fails the handle with [`Error::TimedOut`]`(Timeout::Idle)`.
//!
//! Activity is recorded as the loop's cached time (no timer restart per byte); one
//! unref'd timer per handle, created when a timeout is first set and restarted (never
//! re-created) for the remainder when there was activity meanwhile, checks at the
//! deadline.

use std::time::{Duration, Instant};

use super::{Tls, pump, st};
use crate::error::Timeout;
use crate::error::{Error, Result};
use crate::event_loop::Loop;
use crate::handle::RawId;
use crate::stream::Stream;
use crate::timer::Timer;

/// Idle-timeout state kept in the handle.
#[derive(Default)]
pub(super) struct Idle {
    timeout: Option<Duration>,
    timer: Option<Timer>,
    /// When ciphertext last moved (received from or written to the inner stream).
    last: Option<Instant>,
}

impl Idle {
    /// Records that ciphertext moved at `now`.
    pub(super) fn touch(&mut self, now: Instant) {
        if self.timeout.is_some() {
            self.last = Some(now);
        }
    }

    /// Stops the timer (at close or failure).
    pub(super) fn stop(&mut self, lp: &mut Loop) {
        self.timeout = None;
        if let Some(timer) = self.timer.take() {
            timer.close(lp);
        }
    }
}

impl<S: Stream> Tls<S> {
    /// Fails the handle with [`Error::TimedOut`]`(Timeout::Idle)` once no ciphertext has been
    /// received from or written to the inner stream for `timeout` (`None`, the default:
    /// no limit). The clock starts now; the handshake counts as traffic. The failure is
    /// reported like any other: to the read callback if reading, and to queued writes.
    ///
    /// A handle whose user stopped reading is idle too unless it writes, since nothing is
    /// read from the peer meanwhile.
    ///
    /// # Errors
    /// [`Error::Closed`].
    pub fn set_idle_timeout(self, lp: &mut Loop, timeout: Option<Duration>) -> Result<()> {
        let now = lp.now();
        let t = st::<S>(lp, self.0).ok_or(Error::Closed)?;
        t.idle.timeout = timeout;
        t.idle.last = Some(now);
        let timer = t.idle.timer;
        match (timeout, timer) {
            (Some(timeout), _) => arm::<S>(lp, self.0, timeout)?,
            (None, Some(timer)) => timer.stop(lp)?,
            (None, None) => {}
        }
        Ok(())
    }
}

/// Starts the handle's idle timer (created on first use) to check after `after`.
fn arm<S: Stream>(lp: &mut Loop, id: RawId, after: Duration) -> Result<()> {
    let existing = st::<S>(lp, id).and_then(|t| t.idle.timer);
    let timer = match existing {
        Some(timer) => timer,
        None => {
            let timer = Timer::new(lp)?;
            timer.unref(lp)?;
            match st::<S>(lp, id) {
                Some(t) => t.idle.timer = Some(timer),
                None => {
                    timer.close(lp);
                    return Err(Error::Closed);
                }
            }
            timer
        }
    };
    timer.start(lp, after, None, move |lp, _| check::<S>(lp, id))
}

/// The timer came due: fail the handle, or re-arm for what is left of the timeout.
fn check<S: Stream>(lp: &mut Loop, id: RawId) {
    let now = lp.now();
    let Some(t) = st::<S>(lp, id) else { return };
    let (Some(timeout), None) = (t.idle.timeout, &t.failure) else {
        return;
    };
    let idle = now.saturating_duration_since(t.idle.last.unwrap_or(now));
    if idle >= timeout {
        t.idle.timeout = None;
        pump::fail::<S>(lp, id, Error::TimedOut(Timeout::Idle));
        pump::pump::<S>(lp, id, true);
    } else if let Err(e) = arm::<S>(lp, id, timeout - idle) {
        pump::fail::<S>(lp, id, e);
        pump::pump::<S>(lp, id, true);
    }
}
