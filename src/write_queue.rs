//! The write side of a stream handle: queued buffers and the requests waiting on them,
//! completed by stream offset, and the half-close. Shared by the socket streams and the
//! in-memory [`Duplex`](crate::Duplex).
//!
//! Each request records the offset of its last byte and completes once `written` passes
//! it, so any number of requests can be in flight over one queue of buffers, and they
//! complete in the order they were made.

use std::collections::VecDeque;

use bytes::{Buf, Bytes};

use crate::event_loop::DoneCb;

/// The write side's half-close.
pub(crate) enum Shutdown {
    Open,
    /// Requested: performed once the queued writes are written.
    Queued(DoneCb),
    /// Performed (or failed); no more writes.
    Done,
}

impl Shutdown {
    pub(crate) fn is_open(&self) -> bool {
        matches!(self, Shutdown::Open)
    }

    pub(crate) fn is_queued(&self) -> bool {
        matches!(self, Shutdown::Queued(_))
    }

    /// Takes a queued shutdown's callback, leaving `Done`.
    pub(crate) fn take_queued(&mut self) -> Option<DoneCb> {
        match std::mem::replace(self, Shutdown::Done) {
            Shutdown::Queued(cb) => Some(cb),
            other => {
                *self = other;
                None
            }
        }
    }
}

#[derive(Default)]
pub(crate) struct WriteQueue {
    /// Queued data not yet written, front first.
    bufs: VecDeque<Bytes>,
    bytes: usize,
    /// Stream offsets: bytes ever queued, and bytes ever written.
    queued: u64,
    written: u64,
    /// Requests by the offset of their last byte.
    reqs: VecDeque<(u64, DoneCb)>,
}

impl WriteQueue {
    /// Queues a request; returns whether the queue held no data before.
    pub(crate) fn push(&mut self, bufs: impl IntoIterator<Item = Bytes>, cb: DoneCb) -> bool {
        let was_idle = self.bufs.is_empty();
        for b in bufs {
            if !b.is_empty() {
                self.bytes += b.len();
                self.queued += b.len() as u64;
                self.bufs.push_back(b);
            }
        }
        self.reqs.push_back((self.queued, cb));
        was_idle
    }

    /// Bytes queued and not yet written.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    pub(crate) fn has_data(&self) -> bool {
        !self.bufs.is_empty()
    }

    pub(crate) fn has_requests(&self) -> bool {
        !self.reqs.is_empty()
    }

    /// The queued buffers, front first (for a vectored write).
    pub(crate) fn bufs(&self) -> impl Iterator<Item = &Bytes> {
        self.bufs.iter()
    }

    /// Takes every request still queued, front first, and drops the queued data.
    pub(crate) fn take_requests(&mut self) -> impl Iterator<Item = DoneCb> + use<> {
        self.clear_data();
        std::mem::take(&mut self.reqs).into_iter().map(|(_, cb)| cb)
    }

    /// Drops the queued data (the requests stay, to be failed one by one).
    pub(crate) fn clear_data(&mut self) {
        self.bufs.clear();
        self.bytes = 0;
    }

    /// Pops the front request if all of its bytes were written.
    pub(crate) fn pop_written(&mut self) -> Option<DoneCb> {
        if self
            .reqs
            .front()
            .is_some_and(|(end, _)| *end <= self.written)
        {
            self.reqs.pop_front().map(|(_, cb)| cb)
        } else {
            None
        }
    }

    /// Pops the front request, written or not (to fail it).
    pub(crate) fn pop_any(&mut self) -> Option<DoneCb> {
        self.reqs.pop_front().map(|(_, cb)| cb)
    }

    /// Accounts for `n` bytes written from the front of the queue.
    pub(crate) fn advance(&mut self, n: usize) {
        self.written += n as u64;
        // `n` is at most what the queue held: the sink took it from these buffers.
        self.bytes -= n;
        let mut left = n;
        while left > 0 {
            let Some(front) = self.bufs.front_mut() else {
                break;
            };
            if front.len() <= left {
                left -= front.len();
                self.bufs.pop_front();
            } else {
                front.advance(left);
                left = 0;
            }
        }
    }

    /// Takes up to `max` bytes off the front (no copy), accounting them as written.
    pub(crate) fn take_front(&mut self, max: usize) -> Option<Bytes> {
        let front = self.bufs.front_mut()?;
        let chunk = if front.len() <= max {
            self.bufs.pop_front()?
        } else {
            front.split_to(max)
        };
        self.written += chunk.len() as u64;
        self.bytes -= chunk.len();
        Some(chunk)
    }

    /// Accounts for `n` bytes written directly (`try_write`), with nothing queued.
    pub(crate) fn wrote_directly(&mut self, n: usize) {
        self.queued += n as u64;
        self.written += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::rc::Rc;

    fn req(log: &Rc<RefCell<Vec<u32>>>, n: u32) -> DoneCb {
        let log = Rc::clone(log);
        Box::new(move |_, _| log.borrow_mut().push(n))
    }

    #[test]
    fn requests_complete_by_offset_in_order() {
        let log = Rc::new(RefCell::new(Vec::new()));
        let mut q = WriteQueue::default();
        assert!(q.push([Bytes::from_static(b"abc")], req(&log, 1)));
        assert!(!q.push([Bytes::new()], req(&log, 2))); // empty: done with the first
        assert!(!q.push(
            [Bytes::from_static(b"de"), Bytes::from_static(b"f")],
            req(&log, 3)
        ));
        assert_eq!(q.bytes(), 6);
        q.advance(2);
        assert!(q.pop_written().is_none());
        assert_eq!(q.take_front(2).as_deref(), Some(&b"c"[..]));
        assert!(q.pop_written().is_some());
        assert!(q.pop_written().is_some());
        assert!(q.pop_written().is_none());
        assert_eq!(q.take_front(1).as_deref(), Some(&b"d"[..]));
        q.advance(2);
        assert!(q.pop_written().is_some());
        assert_eq!(q.bytes(), 0);
        assert!(!q.has_requests());
    }
}
