//! The listening-socket core shared by [`TcpListener`](crate::TcpListener) and
//! [`PipeListener`](crate::PipeListener): accepting with a per-event budget, and retrying
//! after an accept error.
//!
//! After an accept error such as `EMFILE` (out of file descriptors) the connections
//! waiting in the backlog raise no new edge, so they would wait for the next incoming
//! connection. The listener retries on a timer instead (every [`RETRY`], while errors
//! last), which lets them in as soon as descriptors are free without spinning.

use std::io;
use std::time::Duration;

use mio::Interest;

use crate::error::{Error, Result};
use crate::event_loop::Loop;
use crate::event_loop::Ops;
use crate::handle::{RawId, Readiness};
use crate::socket::ListenSock;
use crate::stream_socket;
use crate::timer::Timer;

/// Connections accepted per listener event before other handles get their turn.
const ACCEPT_BUDGET: usize = 128;
/// Delay before accepting again after an accept error.
pub(crate) const RETRY: Duration = Duration::from_millis(100);

/// The accept callback, with the listener bound: the new stream handle's id, or the error.
pub(crate) type AcceptCb = Box<dyn FnMut(&mut Loop, Result<RawId>)>;

pub(crate) struct ListenerState {
    pub(crate) sock: ListenSock,
    cb: Option<AcceptCb>,
    /// Bumped by `listen`; 0 before.
    epoch: u64,
    /// Armed after an accept error.
    retry: Option<Timer>,
}

static OPS: Ops = Ops {
    ready: on_ready,
    serve: accept_some,
    owned_closed: |_, _, _| {},
};

pub(crate) fn state(lp: &mut Loop, id: RawId) -> Result<&mut ListenerState> {
    lp.state::<ListenerState>(id).ok_or(Error::Closed)
}

pub(crate) fn state_ref(lp: &Loop, id: RawId) -> Result<&ListenerState> {
    lp.state_ref::<ListenerState>(id).ok_or(Error::Closed)
}

/// Adds a bound, listening socket as a listener handle (not yet accepting).
pub(crate) fn insert(lp: &mut Loop, sock: ListenSock) -> RawId {
    lp.insert(
        Box::new(ListenerState {
            sock,
            cb: None,
            epoch: 0,
            retry: None,
        }),
        &OPS,
    )
}

/// Starts accepting; `cb` runs from the loop for each connection or accept error.
pub(crate) fn listen(lp: &mut Loop, id: RawId, cb: AcceptCb) -> Result<()> {
    if state(lp, id)?.epoch > 0 {
        return Err(Error::InvalidState("already listening"));
    }
    lp.with_registry::<ListenerState, _>(id, |registry, l| {
        registry.register(&mut l.sock, id.token(), Interest::READABLE)
    })
    .ok_or(Error::Closed)??;
    let l = state(lp, id)?;
    l.cb = Some(cb);
    l.epoch += 1;
    lp.set_active(id, true);
    // Connections may already wait in the backlog.
    lp.serve_soon(id);
    Ok(())
}

/// Stops listening and releases the socket at once.
pub(crate) fn close(lp: &mut Loop, id: RawId) {
    let Some(any) = lp.remove(id) else { return };
    if let Ok(mut l) = any.downcast::<ListenerState>() {
        let _ = lp.registry().deregister(&mut l.sock);
        if let Some(timer) = l.retry.take() {
            timer.close(lp);
        }
    }
}

fn on_ready(lp: &mut Loop, id: RawId, _: Readiness) {
    accept_some(lp, id);
}

/// Accepts up to the budget; asks to be served again if the budget ran out, and arms
/// the retry timer after an error.
fn accept_some(lp: &mut Loop, id: RawId) {
    for _ in 0..ACCEPT_BUDGET {
        let Ok(l) = state(lp, id) else { return };
        if l.cb.is_none() || l.retry.is_some() {
            return; // not listening, or waiting to retry after an error
        }
        let epoch = l.epoch;
        let accepted = match l.sock.accept() {
            Ok(sock) => stream_socket::register(lp, sock),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                ) =>
            {
                continue;
            }
            Err(e) => Err(e.into()),
        };
        let failed = accepted.is_err();
        if failed {
            arm_retry(lp, id);
        }
        let Ok(l) = state(lp, id) else { return };
        let Some(mut cb) = l.cb.take() else { return };
        cb(lp, accepted);
        if let Ok(l) = state(lp, id)
            && l.epoch == epoch
            && l.cb.is_none()
        {
            l.cb = Some(cb);
        }
        if failed {
            return;
        }
    }
    lp.serve_soon(id);
}

/// Accepts again after [`RETRY`].
fn arm_retry(lp: &mut Loop, id: RawId) {
    let Ok(timer) = Timer::new(lp) else { return };
    let started = timer.unref(lp).and_then(|()| {
        timer.start(lp, RETRY, None, move |lp, timer| {
            timer.close(lp);
            if let Ok(l) = state(lp, id) {
                l.retry = None;
                accept_some(lp, id);
            }
        })
    });
    match (started, state(lp, id)) {
        (Ok(()), Ok(l)) => l.retry = Some(timer),
        _ => timer.close(lp),
    }
}
