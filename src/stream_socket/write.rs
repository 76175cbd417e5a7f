//! The write side of a stream socket: `writev` flushes of the shared `WriteQueue`, the
//! half-close, and `try_write`.

use std::io::{self, IoSlice, Write};

use super::{StreamState, state, update_active};
use crate::error::{Error, Result};
use crate::event_loop::Loop;
use crate::handle::RawId;

/// Buffers gathered into one `writev`.
const MAX_IOVECS: usize = 64;

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
    while out.has_data() {
        let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
        let mut count = 0;
        for (slot, buf) in slices.iter_mut().zip(out.bufs()) {
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
        out.clear_data();
        while let Some(cb) = out.pop_any() {
            done.push((cb, Err(err.clone())));
        }
        t.write_error = Some(err);
    }
    if !t.out.has_data() && t.shutdown.is_queued() {
        let result = match (&t.write_error, t.sock.as_ref()) {
            (Some(e), _) => Err(e.clone()),
            (None, Some(sock)) => sock.shutdown_write().map_err(Error::from),
            (None, None) => Err(Error::InvalidState("not connected")),
        };
        if let Some(cb) = t.shutdown.take_queued() {
            done.push((cb, result));
        }
    }
    for (cb, result) in done {
        lp.complete(cb, result);
    }
    // After the writes' callbacks: the drain watcher, or its failure.
    lp.with_queue::<StreamState, _>(id, |t, q| match &t.write_error {
        Some(e) => t.drain.fail(q, e),
        None => t
            .drain
            .check(q, t.out.bytes(), |q| super::schedule_drain(q, id)),
    });
    update_active(lp, id);
}

/// Fails every queued request, a queued shutdown and the drain watcher with `err`,
/// calling them now, in order (from the loop). Stops early if a callback closed the
/// handle: the close cancelled the rest.
pub(super) fn fail_requests(lp: &mut Loop, id: RawId, err: &Error) {
    loop {
        let Ok(t) = state(lp, id) else { return };
        t.out.clear_data();
        let Some(cb) = t.out.pop_any() else { break };
        cb(lp, Err(err.clone()));
    }
    let Ok(t) = state(lp, id) else { return };
    if let Some(cb) = t.shutdown.take_queued() {
        cb(lp, Err(err.clone()));
    }
    // The drain watcher waits on the writes: it hears the failure with them, before the
    // reader.
    let Ok(t) = state(lp, id) else { return };
    if let Some(cb) = t.drain.take() {
        cb(lp, Err(err.clone()));
    }
}

/// `Stream::try_write`: writes what the socket takes now, only if nothing is queued.
pub(super) fn try_write(lp: &mut Loop, id: RawId, data: &[u8]) -> Result<usize> {
    let t = state(lp, id)?;
    if let Some(e) = t.broken() {
        return Err(e.clone());
    }
    if !t.shutdown.is_open() {
        return Err(Error::InvalidState("write after shutdown"));
    }
    if t.out.has_data() || !t.connected() {
        return Ok(0);
    }
    let Some(sock) = t.sock.as_mut() else {
        return Ok(0);
    };
    loop {
        match sock.write(data) {
            Ok(n) => {
                t.out.wrote_directly(n);
                return Ok(n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let err = Error::from(e);
                t.write_error = Some(err.clone());
                lp.with_queue::<StreamState, _>(id, |t, q| t.drain.fail(q, &err));
                return Err(err);
            }
        }
    }
}
