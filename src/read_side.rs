//! The read side of a stream handle as one small state machine, shared by every
//! [`Stream`](crate::Stream) implementation, so the reading rules of the contract are
//! written once:
//! - a read callback runs only while reading, and is taken out of the state while it runs
//!   (put back only if the callback did not stop or replace itself meanwhile);
//! - the end of stream or an error ends the read side; the current reader hears it once;
//! - once ended, a reader started later hears the same ending, once, from the loop.

use crate::error::Result;
use crate::stream::ReadResult;

/// How the read side ended: `Ok(())` for a clean end of stream, or the error.
pub(crate) type ReadEnd = Result<()>;

/// What a reader hears for `end`.
pub(crate) fn ending(end: &ReadEnd) -> ReadResult {
    match end {
        Ok(()) => Ok(None),
        Err(e) => Err(e.clone()),
    }
}

enum State<C> {
    /// Not reading.
    Stopped,
    /// Reading; the callback is `None` only while it runs.
    Reading(Option<C>),
    /// The read side ended with `end`; `reader` was started afterwards and has yet to hear
    /// it.
    Ended { end: ReadEnd, reader: Option<C> },
}

/// The read side: its state and an epoch that `start`/`stop` bump.
pub(crate) struct ReadSide<C> {
    state: State<C>,
    epoch: u64,
}

impl<C> Default for ReadSide<C> {
    fn default() -> Self {
        ReadSide {
            state: State::Stopped,
            epoch: 0,
        }
    }
}

/// A reader taken out to be called; give it back with [`ReadSide::restore`].
pub(crate) struct Taken<C> {
    pub(crate) cb: C,
    epoch: u64,
}

impl<C> ReadSide<C> {
    /// `start_read`: reading, or (after the end) a late reader waiting to hear it.
    pub(crate) fn start(&mut self, cb: C) {
        self.epoch += 1;
        match &mut self.state {
            State::Ended { reader, .. } => *reader = Some(cb),
            state => *state = State::Reading(Some(cb)),
        }
    }

    /// `stop_read`.
    pub(crate) fn stop(&mut self) {
        self.epoch += 1;
        match &mut self.state {
            State::Ended { reader, .. } => *reader = None,
            state => *state = State::Stopped,
        }
    }

    /// Reading, or a late reader waiting: keeps the handle active.
    pub(crate) fn is_active(&self) -> bool {
        match &self.state {
            State::Stopped => false,
            State::Reading(_) => true,
            State::Ended { reader, .. } => reader.is_some(),
        }
    }

    /// Reading (not ended, not stopped).
    pub(crate) fn is_reading(&self) -> bool {
        matches!(self.state, State::Reading(_))
    }

    /// Reading with the callback in place (not running right now).
    pub(crate) fn can_deliver(&self) -> bool {
        matches!(self.state, State::Reading(Some(_)))
    }

    pub(crate) fn has_ended(&self) -> bool {
        matches!(self.state, State::Ended { .. })
    }

    /// Takes the reader out to deliver data.
    pub(crate) fn take(&mut self) -> Option<Taken<C>> {
        match &mut self.state {
            State::Reading(slot) => slot.take().map(|cb| Taken {
                cb,
                epoch: self.epoch,
            }),
            _ => None,
        }
    }

    /// Puts a reader back after its callback returned, unless it stopped or replaced
    /// itself (or the read side ended) meanwhile.
    pub(crate) fn restore(&mut self, taken: Taken<C>) {
        if taken.epoch == self.epoch
            && let State::Reading(slot @ None) = &mut self.state
        {
            *slot = Some(taken.cb);
        }
    }

    /// Ends the read side (unless it has ended already: the first ending stays). Returns
    /// the current reader with what it must hear.
    pub(crate) fn end(&mut self, end: ReadEnd) -> Option<(C, ReadResult)> {
        if self.has_ended() {
            return None;
        }
        self.epoch += 1;
        let heard = ending(&end);
        match std::mem::replace(&mut self.state, State::Ended { end, reader: None }) {
            State::Reading(Some(cb)) => Some((cb, heard)),
            _ => None,
        }
    }

    /// Takes a late reader with the ending it must hear.
    pub(crate) fn take_late_reader(&mut self) -> Option<(C, ReadResult)> {
        match &mut self.state {
            State::Ended { end, reader } => reader.take().map(|cb| (cb, ending(end))),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;

    #[test]
    fn the_first_ending_stays_and_late_readers_hear_it_once() {
        let mut r: ReadSide<u32> = ReadSide::default();
        r.start(1);
        let (cb, heard) = r.end(Err(Error::Truncated)).unwrap();
        assert_eq!(cb, 1);
        assert!(matches!(heard, Err(Error::Truncated)));
        assert!(r.end(Ok(())).is_none(), "a second ending is ignored");
        assert!(!r.is_active());
        r.start(2);
        assert!(r.is_active());
        let (cb, heard) = r.take_late_reader().unwrap();
        assert_eq!(cb, 2);
        assert!(matches!(heard, Err(Error::Truncated)));
        assert!(r.take_late_reader().is_none());
        r.start(3);
        r.stop();
        assert!(
            r.take_late_reader().is_none(),
            "a stopped late reader hears nothing"
        );
    }

    #[test]
    fn a_reader_that_replaced_or_stopped_itself_is_not_put_back() {
        let mut r: ReadSide<u32> = ReadSide::default();
        r.start(1);
        let taken = r.take().unwrap();
        assert!(r.is_reading() && !r.can_deliver());
        r.start(2); // replaced while running
        r.restore(taken);
        assert_eq!(r.take().map(|t| t.cb), Some(2));
        let mut r: ReadSide<u32> = ReadSide::default();
        r.start(1);
        let taken = r.take().unwrap();
        r.stop();
        r.restore(taken);
        assert!(!r.is_reading());
        let mut r: ReadSide<u32> = ReadSide::default();
        r.start(1);
        let taken = r.take().unwrap();
        r.restore(taken);
        assert!(r.can_deliver());
    }
}
