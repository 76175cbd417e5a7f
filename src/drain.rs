//! The drain watcher of a stream handle ([`Stream::on_drain`](crate::Stream::on_drain)):
//! one callback waiting for the write queue to fall to a level. Each stream checks it
//! where its queue shrinks (after writes complete), fails it with the stream's failure,
//! and cancels it at close.
//!
//! A due watcher does not run at once: the stream queues a re-check (after the write
//! callbacks already queued), which runs the callback only if the queue is still at or
//! below the level then. So the callback always sees a drained queue, even when a write
//! came in between.

use crate::error::Error;
use crate::event_loop::{DoneCb, Queue};

/// At most one watcher: a level and its callback.
#[derive(Default)]
pub(crate) struct Drain {
    watcher: Option<(usize, DoneCb)>,
    /// A re-check is queued already.
    scheduled: bool,
}

impl Drain {
    /// Sets the watcher (from `on_drain`): a replaced one completes with `Cancelled`, a
    /// stream that is broken fails the new one with `broken`, and one already at or
    /// below `level` has a re-check queued with `schedule`. Nothing runs here.
    pub(crate) fn set(
        &mut self,
        q: &mut Queue<'_>,
        level: usize,
        cb: DoneCb,
        queued: usize,
        broken: Option<&Error>,
        schedule: impl FnOnce(&mut Queue<'_>),
    ) {
        if let Some((_, old)) = self.watcher.replace((level, cb)) {
            q.complete(old, Err(Error::Cancelled));
        }
        match broken {
            Some(e) => self.fail(q, e),
            None => self.check(q, queued, schedule),
        }
    }

    /// Queues a re-check with `schedule` if the watcher is due at `queued` bytes.
    pub(crate) fn check(
        &mut self,
        q: &mut Queue<'_>,
        queued: usize,
        schedule: impl FnOnce(&mut Queue<'_>),
    ) {
        let due = self
            .watcher
            .as_ref()
            .is_some_and(|(level, _)| queued <= *level);
        if due && !self.scheduled {
            self.scheduled = true;
            schedule(q);
        }
    }

    /// The queued re-check: the callback, if the watcher is still due at `queued`.
    pub(crate) fn recheck(&mut self, queued: usize) -> Option<DoneCb> {
        self.scheduled = false;
        match &self.watcher {
            Some((level, _)) if queued <= *level => self.watcher.take().map(|(_, cb)| cb),
            _ => None,
        }
    }

    /// Fails the watcher with the stream's failure (queued).
    pub(crate) fn fail(&mut self, q: &mut Queue<'_>, e: &Error) {
        if let Some((_, cb)) = self.watcher.take() {
            q.complete(cb, Err(e.clone()));
        }
    }

    /// Takes the watcher (at close: it gets `Cancelled`).
    pub(crate) fn take(&mut self) -> Option<DoneCb> {
        self.watcher.take().map(|(_, cb)| cb)
    }
}
