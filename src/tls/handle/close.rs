//! Closing a `Tls` handle, and the close of its inner stream by someone else.
//!
//! `close` releases the handle for the user at once and closes the inner stream; the
//! writes whose ciphertext the inner stream had taken complete with its outcome
//! (written: `Ok`, cancelled by its close: `Cancelled`), then `finish_close` cancels
//! what is left, in order, and runs the close callback last.

use std::marker::PhantomData;

use super::{CloseCb, Handshake, InnerRead, Phase, Tls, TlsState, Unwrap, pump, st};
use crate::error::Error;
use crate::event_loop::Loop;
use crate::handle::{HandleId, RawId};
use crate::stream::Stream;

/// `Stream::close`.
pub(super) fn close<S: Stream>(lp: &mut Loop, id: RawId, cb: CloseCb<S>) {
    let Some(t) = st::<S>(lp, id) else { return };
    t.phase = Phase::Closing(cb);
    let timer = match &mut t.handshake {
        Handshake::Running { timer } => timer.take(),
        Handshake::Done | Handshake::Failed => None,
    };
    let inner = t.inner;
    let mut idle = std::mem::take(&mut t.idle);
    if let Some(timer) = timer {
        timer.close(lp);
    }
    idle.stop(lp);
    // Ours to close now: the inner stream's close is not a failure to report.
    if let Some(HandleId(inner_id)) = inner.handle_id() {
        lp.set_owner(inner_id, None);
    }
    if inner.is_open(lp) {
        inner.close(lp, move |lp, _| finish_close::<S>(lp, id));
    } else {
        lp.defer(move |lp| finish_close::<S>(lp, id));
    }
}

/// After the inner stream closed (its write callbacks have all run): the requests still
/// waiting are cancelled, then the close callback runs and the slot is freed.
fn finish_close<S: Stream>(lp: &mut Loop, id: RawId) {
    let Some(any) = lp.remove(id) else { return };
    let Ok(mut t) = any.downcast::<TlsState<S>>() else {
        return;
    };
    let tls = Tls(id, PhantomData);
    for cb in [t.on_connected.take(), t.on_handshake.take()]
        .into_iter()
        .flatten()
    {
        let outcome = t.handshake_outcome().unwrap_or(Err(Error::Cancelled));
        cb(lp, tls, outcome);
    }
    for cb in t.writes.take_all() {
        cb(lp, Err(Error::Cancelled));
    }
    if let Some(cb) = t.shutdown.take_waiting() {
        cb(lp, Err(Error::Cancelled));
    }
    if let Some(cb) = t.drain.take() {
        cb(lp, Err(Error::Cancelled));
    }
    if let Some(cb) = t.unwrap.take() {
        cb(lp, Err(Error::Cancelled));
    }
    if let Phase::Closing(cb) = std::mem::replace(&mut t.phase, Phase::Open) {
        cb(lp, tls);
    }
}

/// Someone closed the inner stream under the `Tls` (inside that `close` call): the `Tls`
/// fails with [`Error::TransportClosed`]; its reader and handshake callback hear it from
/// the loop.
pub(super) fn inner_closed<S: Stream>(lp: &mut Loop, id: RawId, _inner: RawId) {
    let Some(t) = st::<S>(lp, id) else { return };
    t.inner_read = InnerRead::Ended;
    pump::fail::<S>(lp, id, Error::TransportClosed);
    lp.defer(move |lp| pump::pump::<S>(lp, id, true));
}

/// The unwrap is complete: frees the handle, releases the inner stream (not reading),
/// and gives it to the unwrap's callback with the bytes after the peer's close_notify.
pub(super) fn finish_unwrap<S: Stream>(lp: &mut Loop, id: RawId) {
    // Still finishing (not failed or closed meanwhile)?
    if !st::<S>(lp, id).is_some_and(|t| matches!(t.unwrap, Unwrap::Finishing(_))) {
        return;
    }
    let Some(any) = lp.remove(id) else { return };
    let Ok(mut t) = any.downcast::<TlsState<S>>() else {
        return;
    };
    let inner = t.inner;
    t.idle.stop(lp);
    if let Some(HandleId(inner_id)) = inner.handle_id() {
        lp.set_owner(inner_id, None);
    }
    if t.inner_read == InnerRead::On {
        let _ = inner.stop_read(lp);
    }
    let rest = t.session.take_unread();
    let tls = Tls(id, PhantomData);
    for cb in [t.on_connected.take(), t.on_handshake.take()]
        .into_iter()
        .flatten()
    {
        let outcome = t.handshake_outcome().unwrap_or(Err(Error::Cancelled));
        cb(lp, tls, outcome);
    }
    // The handle is gone: a drain watcher hears that first.
    if let Some(cb) = t.drain.take() {
        cb(lp, Err(Error::Cancelled));
    }
    if let Some(cb) = t.unwrap.take() {
        cb(lp, rest.map(|rest| (inner, rest)));
    }
}
