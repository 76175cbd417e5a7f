//! The read path: decrypting ciphertext and delivering plaintext to the reader, then the
//! ending (the peer's close_notify, or the handle's failure).
//!
//! Plaintext decrypted before a failure is always delivered before it, and the ending is
//! kept (`ReadSide`), so a reader started after a failure hears it too.

use std::marker::PhantomData;

use super::{Handshake, Pump, Tls, Unwrap, pump, st};
use crate::error::Error;
use crate::event_loop::Loop;
use crate::handle::RawId;
use crate::read_side::ReadEnd;
use crate::stream::Stream;
use crate::tls::session::ReadOutcome;

/// Plaintext delivered to the read callback in one call, at most.
const DELIVER_CHUNK: usize = 256 * 1024;

/// How a batch of decryption ended.
enum End {
    /// The batch is full: more plaintext may be waiting.
    More,
    /// The session needs more ciphertext.
    WantRead,
    /// The peer's close_notify.
    Eof,
    Failed(Error),
}

/// Delivers decrypted plaintext to the reader, one batch (a full batch marks the pump to
/// go round for the next), then the ending once there is one, and the ending to a reader
/// started after it. Called from the loop only, by the pump.
pub(super) fn deliver<S: Stream>(lp: &mut Loop, id: RawId) {
    let tls = Tls::<S>(id, PhantomData);
    let Some(t) = st::<S>(lp, id) else { return };
    if let Some((mut cb, heard)) = t.read.take_late_reader() {
        cb(lp, tls, heard);
        return;
    }
    if !t.read.can_deliver() {
        return;
    }
    if !matches!(t.handshake, Handshake::Done) {
        // Nothing to decrypt yet; a failed handshake is the ending.
        if let Some(e) = t.failure.clone() {
            end_reading::<S>(lp, id, Err(e));
        }
        return;
    }
    let (data, end) = decrypt_batch::<S>(lp, id);
    // Decrypting may have produced output (a KeyUpdate reply, an alert).
    pump::flush::<S>(lp, id, true);
    if !data.is_empty() {
        let Some(t) = st::<S>(lp, id) else { return };
        t.counters.plain_delivered += data.len() as u64;
        let Some(mut taken) = t.read.take() else {
            return;
        };
        (taken.cb)(lp, tls, Ok(Some(data)));
        let Some(t) = st::<S>(lp, id) else { return };
        t.read.restore(taken);
    }
    match end {
        End::More => {
            // More may wait. Let the pump go round first: what the reader wrote of
            // this batch gets encrypted, and the batch's buffer can be reused for
            // the next one instead of a new one being allocated.
            if let Some(t) = st::<S>(lp, id) {
                t.pump = Pump::Again;
            }
        }
        End::WantRead => {
            // All that could be decrypted is delivered: a failure is the ending.
            if let Some(e) = st::<S>(lp, id).and_then(|t| t.failure.clone()) {
                end_reading::<S>(lp, id, Err(e));
            }
        }
        End::Eof => {
            end_reading::<S>(lp, id, Ok(()));
            pump::update_inner_reading::<S>(lp, id);
        }
        End::Failed(e) => {
            pump::fail::<S>(lp, id, e.clone());
            let first = st::<S>(lp, id).and_then(|t| t.failure.clone()).unwrap_or(e);
            end_reading::<S>(lp, id, Err(first));
        }
    }
}

/// Decrypts up to [`DELIVER_CHUNK`] of plaintext into the loop's plaintext buffer.
fn decrypt_batch<S: Stream>(lp: &mut Loop, id: RawId) -> (bytes::Bytes, End) {
    let mut buf = std::mem::take(&mut lp.plain_buf);
    let Some(t) = st::<S>(lp, id) else {
        lp.plain_buf = buf;
        return (bytes::Bytes::new(), End::WantRead);
    };
    // Room for the whole batch up front: growing a buffer that holds plaintext would
    // copy it.
    if buf.capacity() - buf.len() < DELIVER_CHUNK + super::RECORD {
        buf.reserve(DELIVER_CHUNK + super::RECORD);
    }
    let mut end = End::More;
    while buf.len() < DELIVER_CHUNK {
        match t.session.read(&mut buf) {
            Ok(ReadOutcome::Data(_)) => {}
            Ok(ReadOutcome::WantRead) => {
                end = End::WantRead;
                break;
            }
            Ok(ReadOutcome::Eof) => {
                end = End::Eof;
                break;
            }
            Err(e) => {
                end = End::Failed(e);
                break;
            }
        }
    }
    let data = buf.split().freeze();
    lp.plain_buf = buf;
    (data, end)
}

/// Ends the read side with `end` (unless it ended already) and tells the current reader.
fn end_reading<S: Stream>(lp: &mut Loop, id: RawId, end: ReadEnd) {
    let Some(t) = st::<S>(lp, id) else { return };
    if let Some((mut cb, heard)) = t.read.end(end) {
        cb(lp, Tls(id, PhantomData), heard);
    }
}

/// [`Tls::unwrap`](super::Tls::unwrap) in progress: without a reader, reads on its own
/// until the peer's close_notify (application data before it fails the unwrap and stays
/// for a reader); once both close_notifies are out and in and every write's callback
/// has run, hands the inner stream back.
pub(super) fn unwrap_step<S: Stream>(lp: &mut Loop, id: RawId) {
    let Some(t) = st::<S>(lp, id) else { return };
    if !matches!(t.unwrap, Unwrap::Waiting(_)) || t.failure.is_some() {
        return;
    }
    if !t.session.received_close_notify() && !t.read.is_reading() {
        // Without a reader: look, without consuming application data.
        let outcome = t.session.peek();
        pump::flush::<S>(lp, id, true);
        match outcome {
            Ok(ReadOutcome::Data(_)) => {
                // Data the user has not read yet: the unwrap cannot go on. The data
                // stays for a reader; writing is over (our close_notify went out).
                let Some(t) = st::<S>(lp, id) else { return };
                if let Some(cb) = t.unwrap.take() {
                    cb(
                        lp,
                        Err(Error::InvalidState(
                            "application data arrived before the peer's close_notify: read it, then unwrap again",
                        )),
                    );
                }
                pump::update_inner_reading::<S>(lp, id);
                return;
            }
            Ok(ReadOutcome::WantRead | ReadOutcome::Eof) => {}
            Err(e) => {
                pump::fail::<S>(lp, id, e);
                return;
            }
        }
    }
    let Some(t) = st::<S>(lp, id) else { return };
    let done = t.session.received_close_notify()
        && t.session.is_shutdown_sent()
        && t.session.buffered_ciphertext_out() == 0
        && t.writes.pending_bytes() == 0
        && !t.writes.has_unfinished();
    if done && let Unwrap::Waiting(cb) = std::mem::replace(&mut t.unwrap, Unwrap::None) {
        t.unwrap = Unwrap::Finishing(cb);
        lp.defer(move |lp| super::close::finish_unwrap::<S>(lp, id));
    }
}
