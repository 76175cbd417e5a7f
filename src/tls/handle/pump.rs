//! The pump: one function that moves everything, and the failure path.
//!
//! [`pump`] advances the handshake, encrypts queued plaintext, hands new ciphertext to
//! the inner stream as one write, completes acknowledged writes, turns inner reading on
//! or off, and (only when called from the loop) reports the handshake and delivers
//! plaintext. It is re-entrancy guarded: a user callback that calls back into the handle
//! (a write from the read callback) only marks the pump to go round once more. User
//! callbacks run only from pumps started by the loop (inner stream callbacks, timers,
//! deferred pumps), never inside a user's call.

use super::write_path::Encrypt;
use super::{
    Completing, Handshake, InnerRead, Pump, Shutdown, Tls, TlsState, as_owner, read_path, st,
    st_any,
};
use crate::error::{Error, Result};
use crate::event_loop::{DoneCb, Loop};
use crate::handle::RawId;
use crate::stream::{ReadResult, Stream};
use crate::tls::session::TlsSession;

/// Runs [`progress`] until nothing asked for another round. `from_loop` is true when
/// called from the loop: only then may user callbacks run.
pub(super) fn pump<S: Stream>(lp: &mut Loop, id: RawId, from_loop: bool) {
    {
        let Some(t) = st::<S>(lp, id) else { return };
        if t.pump != Pump::Idle {
            t.pump = Pump::Again;
            if from_loop {
                // The running pump may be a user call's, which delivers nothing.
                lp.defer(move |lp| pump::<S>(lp, id, true));
            }
            return;
        }
        t.pump = Pump::Running;
    }
    loop {
        progress::<S>(lp, id, from_loop);
        let Some(t) = st::<S>(lp, id) else { return };
        if t.pump == Pump::Again {
            t.pump = Pump::Running;
        } else {
            t.pump = Pump::Idle;
            return;
        }
    }
}

/// The session as the write path sees it.
struct Session<'a> {
    session: &'a mut TlsSession,
    cipher_sent: u64,
}

impl Encrypt for Session<'_> {
    fn encrypt(&mut self, data: &[u8]) -> Result<usize> {
        self.session.write(data)
    }

    fn cipher_position(&self) -> u64 {
        self.cipher_sent + self.session.buffered_ciphertext_out() as u64
    }
}

fn progress<S: Stream>(lp: &mut Loop, id: RawId, from_loop: bool) {
    let now = lp.now();
    // Writes acknowledged already (a callback that ran while others were being
    // completed may have brought us here) complete before anything this round queues:
    // the inner stream's completions of what we flush below come after them.
    complete_acked::<S>(lp, id, false);
    let Some(t) = st::<S>(lp, id) else { return };
    if t.failure.is_none() && matches!(t.handshake, Handshake::Running { .. }) {
        match t.session.handshake() {
            Ok(true) => {
                let Handshake::Running { timer } =
                    std::mem::replace(&mut t.handshake, Handshake::Done)
                else {
                    return;
                };
                t.counters.handshake_duration =
                    Some(now.saturating_duration_since(t.counters.created));
                if let Some(timer) = timer {
                    timer.close(lp);
                }
            }
            Ok(false) => {}
            Err(e) => fail::<S>(lp, id, e),
        }
    }
    if let Err(e) = encrypt::<S>(lp, id) {
        fail::<S>(lp, id, e);
    }
    // A zero-length write marked just now at ciphertext already written is complete:
    // it too comes before the completions of what we flush below.
    complete_acked::<S>(lp, id, false);
    // Handshake messages, alerts (also those of a failure), records, close_notify.
    flush::<S>(lp, id, false);
    update_inner_reading::<S>(lp, id);
    if from_loop {
        report_handshake::<S>(lp, id);
        read_path::deliver::<S>(lp, id);
        read_path::unwrap_step::<S>(lp, id);
    } else if st::<S>(lp, id).is_some_and(|t| needs_loop(t)) {
        lp.defer(move |lp| pump::<S>(lp, id, true));
    }
}

/// Whether a callback is due that only a pump from the loop may run.
fn needs_loop<S: Stream>(t: &TlsState<S>) -> bool {
    ((t.on_handshake.is_some() || t.on_connected.is_some()) && t.handshake_outcome().is_some())
        || (t.failure.is_some() && t.read.is_reading())
}

/// Runs the handshake callback once the outcome is known (from the loop).
///
/// After a failed connect ([`Tls::connect`]'s callback with an error), the requests
/// queued meanwhile fail next, in order (see [`fail_connect_requests`]); the reader hears
/// the failure after them, from [`read_path::deliver`] later in the same round.
fn report_handshake<S: Stream>(lp: &mut Loop, id: RawId) {
    let Some(t) = st::<S>(lp, id) else { return };
    let Some(outcome) = t.handshake_outcome() else {
        return;
    };
    let connected = t.on_connected.take();
    let handshake = t.on_handshake.take();
    let tls = Tls(id, std::marker::PhantomData);
    let connect_failed = connected.is_some() && outcome.is_err();
    if let Some(cb) = connected {
        cb(lp, tls, outcome.clone());
    }
    // Also when the connect callback closed the handle: the handshake's outcome is
    // known, and a pending callback runs before the requests that the close cancels.
    if let Some(cb) = handshake {
        cb(lp, tls, outcome.clone());
    }
    if let (true, Err(e)) = (connect_failed, outcome) {
        fail_connect_requests::<S>(lp, id, &e);
    }
}

/// A failed connect's requests, after its callback (from the loop): the writes, the
/// shutdown and the drain watcher fail with the connect's error, in order, as over a
/// [`Tcp`](crate::Tcp) whose connect failed. If the connect callback closed the handle,
/// the close cancels them; if one of these callbacks closes it, the rest are cancelled.
fn fail_connect_requests<S: Stream>(lp: &mut Loop, id: RawId, err: &Error) {
    let Some(t) = st::<S>(lp, id) else { return };
    let writes = t.writes.take_unacked();
    let mut closed = false;
    for cb in writes {
        closed = closed || st::<S>(lp, id).is_none();
        let e = if closed {
            Error::Cancelled
        } else {
            err.clone()
        };
        cb(lp, Err(e));
    }
    let Some(t) = st::<S>(lp, id) else { return };
    if let Some(cb) = t.shutdown.take_waiting() {
        cb(lp, Err(err.clone()));
    }
    let Some(t) = st::<S>(lp, id) else { return };
    if let Some(cb) = t.drain.take() {
        cb(lp, Err(err.clone()));
    }
}

/// Encrypts queued plaintext (after the handshake) into the session's output, and queues
/// close_notify once a requested shutdown's writes are all encrypted.
fn encrypt<S: Stream>(lp: &mut Loop, id: RawId) -> Result<()> {
    let Some(t) = st::<S>(lp, id) else {
        return Ok(());
    };
    if t.failure.is_some() || !matches!(t.handshake, Handshake::Done) {
        return Ok(());
    }
    if t.writes.has_pending() {
        // Encrypt into the loop's output buffer (reclaimed in place when the ciphertext
        // split off it last time has been written and dropped), with room for all of it:
        // one allocation instead of a copy per doubling. Each record adds at most
        // 5 (header) + 1 (content type) + 16 (tag) bytes in TLS 1.3, 5 + 8 + 16 in 1.2.
        let spare = std::mem::take(&mut lp.cipher_buf);
        let Some(t) = st::<S>(lp, id) else {
            return Ok(());
        };
        if let Some(unused) = t.session.provide_output_buffer(spare) {
            lp.cipher_buf = unused;
        }
        let Some(t) = st::<S>(lp, id) else {
            return Ok(());
        };
        let pending = t.writes.pending_bytes();
        t.session
            .reserve_ciphertext(pending + pending.div_ceil(super::RECORD) * 32);
    }
    let Some(t) = st::<S>(lp, id) else {
        return Ok(());
    };
    // Also with nothing pending: zero-length writes get their place in the stream.
    let mut stage = Vec::new();
    let mut session = Session {
        cipher_sent: t.writes.cipher_sent(),
        session: &mut t.session,
    };
    t.writes.encrypt(&mut session, &mut stage)?;
    let Some(t) = st::<S>(lp, id) else {
        return Ok(());
    };
    if !t.writes.has_pending() && matches!(t.shutdown, Shutdown::Queued(_) | Shutdown::Unwrapping) {
        t.session.shutdown()?;
    }
    Ok(())
}

/// Hands all ciphertext the session produced to the inner stream as one write, and
/// performs a requested shutdown after its close_notify. `generated`: the ciphertext
/// came from reading (KeyUpdate replies, alerts), which is bounded.
pub(super) fn flush<S: Stream>(lp: &mut Loop, id: RawId, generated: bool) {
    let Some(t) = st::<S>(lp, id) else { return };
    let inner = t.inner;
    let data = t.session.take_ciphertext();
    // The session keeps no buffer between flushes; the loop keeps the larger one.
    let spare = t.session.take_output_buffer();
    if let Some(spare) = spare
        && spare.capacity() > lp.cipher_buf.capacity()
    {
        lp.cipher_buf = spare;
    }
    if let Some(data) = data {
        let Some(t) = st::<S>(lp, id) else { return };
        let len = data.len();
        let end = t.writes.sent(len);
        if generated {
            t.generated.sent(end, len);
        }
        let queued = as_owner(lp, inner, |lp| {
            inner.write(lp, data, move |lp, _, r| {
                on_inner_written::<S>(lp, id, end, r)
            })
        });
        if let Err(e) = queued {
            fail::<S>(lp, id, e);
        }
    }
    let Some(t) = st::<S>(lp, id) else { return };
    if t.session.is_shutdown_sent()
        && let Shutdown::Queued(_) = t.shutdown
        && let Shutdown::Queued(cb) = std::mem::replace(&mut t.shutdown, Shutdown::Done)
    {
        t.shutdown = Shutdown::Sent(cb);
        // The inner shutdown waits for the close_notify write queued above.
        let shut = as_owner(lp, inner, |lp| {
            inner.shutdown(lp, move |lp, _, r| on_inner_shutdown::<S>(lp, id, r))
        });
        if let Err(e) = shut {
            // Refused at the call: the handle fails, and ours completes with the error
            // after the writes' callbacks.
            fail::<S>(lp, id, e.clone());
            if let Some(cb) = st::<S>(lp, id).and_then(|t| t.shutdown.take_waiting()) {
                lp.complete(cb, Err(e));
            }
        }
    }
}

/// The inner stream's shutdown completed: ours completes with its outcome, queued so
/// that it comes after every write callback (the inner stream completed their
/// ciphertext before, and any failure of theirs was queued already); while closing, at
/// once, before the close callback.
fn on_inner_shutdown<S: Stream>(lp: &mut Loop, id: RawId, r: Result<()>) {
    let Some(t) = st_any::<S>(lp, id) else { return };
    let open = t.is_open();
    let Some(cb) = t.shutdown.take_waiting() else {
        return;
    };
    if open {
        lp.complete(cb, r);
    } else {
        // Closing: the inner stream's close callback (ours to finish) comes next.
        cb(lp, r);
    }
}

/// The inner stream finished the write of the ciphertext ending at `end`.
fn on_inner_written<S: Stream>(lp: &mut Loop, id: RawId, end: u64, r: Result<()>) {
    let now = lp.now();
    let Some(t) = st_any::<S>(lp, id) else { return };
    match r {
        Ok(()) => {
            t.idle.touch(now);
            t.writes.acked(end);
            let was_over = t.generated.over_limit();
            t.generated.acked(t.writes.cipher_acked());
            let resume = was_over && !t.generated.over_limit();
            complete_acked::<S>(lp, id, true);
            if resume {
                update_inner_reading::<S>(lp, id);
            }
            super::check_drain::<S>(lp, id);
            if st::<S>(lp, id).is_some_and(|t| t.unwrap.is_some()) {
                pump::<S>(lp, id, true); // the unwrap waits for the writes
            }
        }
        Err(_) if !t.is_open() => {
            // Closing: the requests this chunk carried were cancelled with it.
            while let Some(cb) = st_any::<S>(lp, id).and_then(|t| t.writes.pop_done(Some(end))) {
                cb(lp, Err(Error::Cancelled));
            }
        }
        Err(e) => {
            fail::<S>(lp, id, e);
            pump::<S>(lp, id, true);
        }
    }
}

/// Completes the write requests whose last ciphertext byte the inner stream wrote.
/// `direct`: called from the loop, so callbacks may run now instead of being deferred.
pub(super) fn complete_acked<S: Stream>(lp: &mut Loop, id: RawId, direct: bool) {
    let Some(t) = st_any::<S>(lp, id) else { return };
    if t.completing == Completing::Directly {
        return; // the direct loop below, further up the stack, goes on in order
    }
    if direct {
        t.completing = Completing::Directly;
    }
    while let Some(cb) = st_any::<S>(lp, id).and_then(|t| t.writes.pop_done(None)) {
        if direct {
            cb(lp, Ok(()));
        } else {
            lp.complete(cb, Ok(()));
        }
    }
    if let Some(t) = st_any::<S>(lp, id) {
        t.completing = Completing::No;
    }
}

/// Reads the inner stream while the handshake needs input or the user is reading, and
/// while the ciphertext that reading produced stays within
/// [`GENERATED_LIMIT`](super::GENERATED_LIMIT).
pub(super) fn update_inner_reading<S: Stream>(lp: &mut Loop, id: RawId) {
    let Some(t) = st::<S>(lp, id) else { return };
    if t.inner_read == InnerRead::Ended {
        return;
    }
    let want = t.failure.is_none()
        && !t.generated.over_limit()
        && match t.handshake {
            Handshake::Running { .. } => true,
            Handshake::Done => {
                t.read.is_reading() || (t.unwrap.is_some() && !t.session.received_close_notify())
            }
            Handshake::Failed => false,
        };
    let on = t.inner_read == InnerRead::On;
    if want == on {
        return;
    }
    t.inner_read = if want { InnerRead::On } else { InnerRead::Off };
    let inner = t.inner;
    let result = as_owner(lp, inner, |lp| {
        if want {
            inner.start_read(lp, move |lp, _, r| on_inner_read::<S>(lp, id, r))
        } else {
            inner.stop_read(lp)
        }
    });
    if let Err(e) = result {
        if let Some(t) = st::<S>(lp, id) {
            t.inner_read = InnerRead::Ended;
        }
        fail::<S>(lp, id, e);
    }
}

fn on_inner_read<S: Stream>(lp: &mut Loop, id: RawId, r: ReadResult) {
    let now = lp.now();
    let Some(t) = st::<S>(lp, id) else { return };
    match r {
        Ok(Some(data)) => {
            t.idle.touch(now);
            t.counters.cipher_received += data.len() as u64;
            t.session.feed_ciphertext(data);
        }
        Ok(None) => {
            // The session names it: "unexpected eof" in the handshake, `Truncated` or a
            // clean end after it.
            t.inner_read = InnerRead::Ended;
            t.session.feed_eof();
        }
        Err(e) => {
            t.inner_read = InnerRead::Ended;
            fail::<S>(lp, id, e);
        }
    }
    pump::<S>(lp, id, true);
}

/// Records the handle's first failure and fails everything waiting that may hear it now:
/// the writes not yet written and a waiting shutdown (from the loop, in order). The
/// handshake callback and the reader hear it from a pump run from the loop, queued here.
pub(super) fn fail<S: Stream>(lp: &mut Loop, id: RawId, err: Error) {
    let Some(t) = st::<S>(lp, id) else { return };
    if t.failure.is_some() {
        return;
    }
    t.failure = Some(err.clone());
    if let Handshake::Running { timer } = &mut t.handshake {
        let timer = timer.take();
        t.handshake = Handshake::Failed;
        if let Some(timer) = timer {
            timer.close(lp);
        }
    }
    let Some(t) = st::<S>(lp, id) else { return };
    let mut idle = std::mem::take(&mut t.idle);
    idle.stop(lp);
    // Requests whose ciphertext was written keep their `Ok` (completed here, or by the
    // direct loop this failure interrupted); the rest fail.
    complete_acked::<S>(lp, id, false);
    let Some(t) = st::<S>(lp, id) else { return };
    // A connect that failed before its callback ran ([`Tls::connect`]): the requests stay
    // queued while it runs (a `close` inside it cancels them); `report_handshake` fails
    // them after it. Nothing was encrypted, so none of them was written.
    let connecting = t.on_connected.is_some() && !matches!(t.handshake, Handshake::Done);
    let unwrap = t.unwrap.take();
    let failed: Vec<DoneCb> = if connecting {
        Vec::new()
    } else {
        let writes = t.writes.take_unacked();
        writes
            .into_iter()
            .chain(t.shutdown.take_waiting())
            .chain(t.drain.take())
            .collect()
    };
    if let Some(cb) = unwrap {
        let e = err.clone();
        lp.defer(move |lp| cb(lp, Err(e)));
    }
    for cb in failed {
        lp.complete(cb, Err(err.clone()));
    }
    update_inner_reading::<S>(lp, id);
    lp.defer(move |lp| pump::<S>(lp, id, true));
}
