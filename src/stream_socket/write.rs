//! The write side of a stream socket: the queue of requests, `writev` flushes, the
//! half-close, and `try_write`.
//!
//! Requests complete by stream offset: each records the offset of its last byte, and
//! completes once `written` passes it, so any number can be in flight with one queue of
//! buffers.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};

use bytes::{Buf, Bytes};

use super::{Shutdown, state, update_active};
use crate::error::{Error, Result};
use crate::event_loop::{DoneCb, Loop};
use crate::handle::RawId;

/// Buffers gathered into one `writev`.
const MAX_IOVECS: usize = 64;

#[derive(Default)]
pub(super) struct WriteQueue {
    /// Queued data not yet written, front first.
    bufs: VecDeque<Bytes>,
    bytes: usize,
    /// Stream offsets: bytes ever queued, and bytes ever written.
    queued: u64,
    written: u64,
    /// Requests by the offset of their last byte.
    reqs: VecDeque<(u64, DoneCb)>,
    /// The error that broke the write side; later writes fail with it, and a read that
    /// meets end of stream reports it instead (see `read::lost_connection`).
    pub(super) error: Option<Error>,
}

impl WriteQueue {
    /// Queues a request; returns whether the queue had no data before.
    pub(super) fn push(&mut self, bufs: impl IntoIterator<Item = Bytes>, cb: DoneCb) -> bool {
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

    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }

    pub(super) fn has_requests(&self) -> bool {
        !self.reqs.is_empty()
    }

    /// Takes every request still queued (at close), front first.
    pub(super) fn take_requests(&mut self) -> impl Iterator<Item = DoneCb> + use<> {
        self.bufs.clear();
        self.bytes = 0;
        std::mem::take(&mut self.reqs).into_iter().map(|(_, cb)| cb)
    }

    /// Pops the front request if all of its bytes were written.
    fn pop_written(&mut self) -> Option<DoneCb> {
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

    /// Pops the front request (any), for failing requests one by one.
    pub(super) fn pop_any(&mut self) -> Option<DoneCb> {
        self.reqs.pop_front().map(|(_, cb)| cb)
    }

    /// Accounts for `n` bytes written from the front of the queue.
    fn advance(&mut self, n: usize) {
        self.written += n as u64;
        // `n` is at most what the queue held: the kernel took it from these buffers.
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
}

/// Writes queued data until the queue is empty or the socket would block, completes the
/// requests that were fully written, and performs a queued shutdown once empty. A write
/// error completes the requests written before it with `Ok` and fails the rest.
pub(super) fn flush(lp: &mut Loop, id: RawId) {
    let Ok(t) = state(lp, id) else { return };
    if !t.connected() {
        return;
    }
    let Some(sock) = t.sock.as_mut() else { return };
    let out = &mut t.out;
    let mut failed = None;
    while !out.bufs.is_empty() {
        let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
        let mut count = 0;
        for (slot, buf) in slices.iter_mut().zip(out.bufs.iter()) {
            *slot = IoSlice::new(buf);
            count += 1;
        }
        match sock.write_vectored(&slices[..count]) {
            Ok(n) => out.advance(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                failed = Some(Error::from(e));
                break;
            }
        }
    }
    let mut done = Vec::new();
    while let Some(cb) = out.pop_written() {
        done.push((cb, Ok(())));
    }
    if let Some(err) = failed {
        out.bufs.clear();
        out.bytes = 0;
        out.error = Some(err.clone());
        while let Some(cb) = out.pop_any() {
            done.push((cb, Err(err.clone())));
        }
    }
    if out.bufs.is_empty() && matches!(t.shutdown, Shutdown::Queued(_)) {
        let result = match (&t.out.error, t.sock.as_ref()) {
            (Some(e), _) => Err(e.clone()),
            (None, Some(sock)) => sock.shutdown_write().map_err(Error::from),
            (None, None) => Err(Error::InvalidState("not connected")),
        };
        if let Shutdown::Queued(cb) = std::mem::replace(&mut t.shutdown, Shutdown::Done) {
            done.push((cb, result));
        }
    }
    for (cb, result) in done {
        lp.complete(cb, result);
    }
    update_active(lp, id);
}

/// Fails every queued request and a queued shutdown with `err`, calling them now, in
/// order (from the loop). Stops early if a callback closed the handle: the close
/// cancelled the rest.
pub(super) fn fail_requests(lp: &mut Loop, id: RawId, err: &Error) {
    loop {
        let Ok(t) = state(lp, id) else { return };
        let Some(cb) = t.out.pop_any() else { break };
        t.out.bufs.clear();
        t.out.bytes = 0;
        cb(lp, Err(err.clone()));
    }
    let Ok(t) = state(lp, id) else { return };
    if let Shutdown::Queued(cb) = std::mem::replace(&mut t.shutdown, Shutdown::Done) {
        cb(lp, Err(err.clone()));
    }
}

/// `Stream::try_write`: writes what the socket takes now, only if nothing is queued.
pub(super) fn try_write(lp: &mut Loop, id: RawId, data: &[u8]) -> Result<usize> {
    let t = state(lp, id)?;
    if let Some(e) = t.broken() {
        return Err(e.clone());
    }
    if !matches!(t.shutdown, Shutdown::Open) {
        return Err(Error::InvalidState("write after shutdown"));
    }
    if !t.out.bufs.is_empty() || !t.connected() {
        return Ok(0);
    }
    let Some(sock) = t.sock.as_mut() else {
        return Ok(0);
    };
    loop {
        match sock.write(data) {
            Ok(n) => {
                t.out.queued += n as u64;
                t.out.written += n as u64;
                return Ok(n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let err = Error::from(e);
                t.out.error = Some(err.clone());
                return Err(err);
            }
        }
    }
}
