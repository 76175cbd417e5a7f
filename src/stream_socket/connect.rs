//! Connecting a stream socket: name resolution, one address after another, the connect
//! timeout, and the failure path.
//!
//! On failure the order is fixed: the connect callback runs first (from the loop); the
//! queued writes and then the shutdown stay queued while it runs (a `close` inside it
//! cancels them), then fail with the connect's error, in order; a reader started before
//! the connect hears that error last. Nothing stays active afterwards.

use std::collections::VecDeque;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use mio::Interest;

use super::{Conn, insert_connecting, read, state, update_active, write};
use crate::error::{Error, Result};
use crate::event_loop::{DoneCb, Loop};
use crate::handle::RawId;
use crate::socket::StreamSock;
use crate::timer::Timer;

/// A connect in progress.
pub(super) struct Connecting {
    cb: DoneCb,
    /// Addresses still to try after the current one fails (host names resolve to several).
    rest: VecDeque<SocketAddr>,
    last_error: Option<Error>,
    timer: Option<Timer>,
}

impl Connecting {
    fn new(cb: DoneCb, rest: VecDeque<SocketAddr>) -> Box<Connecting> {
        Box::new(Connecting {
            cb,
            rest,
            last_error: None,
            timer: None,
        })
    }

    /// Ends the attempt (closed, failed or done): stops its timer, returns the callback.
    pub(super) fn cancel(self, lp: &mut Loop) -> DoneCb {
        if let Some(timer) = self.timer {
            timer.close(lp);
        }
        self.cb
    }
}

/// Starts connecting to `addrs` in turn; `make_cb` makes the connect callback for the
/// new handle's id.
pub(crate) fn connect_addrs(
    lp: &mut Loop,
    addrs: impl IntoIterator<Item = SocketAddr>,
    make_cb: impl FnOnce(RawId) -> DoneCb,
) -> RawId {
    let id = insert_connecting(lp, Conn::Connected);
    let c = Connecting::new(make_cb(id), addrs.into_iter().collect());
    if let Ok(t) = state(lp, id) {
        t.conn = Conn::Connecting(c);
    }
    connect_next(lp, id);
    id
}

/// Resolves `host_port` on a worker thread, then connects to each address in turn.
pub(crate) fn connect_host(
    lp: &mut Loop,
    host_port: &str,
    make_cb: impl FnOnce(RawId) -> DoneCb,
) -> RawId {
    let id = insert_connecting(lp, Conn::Connected);
    let c = Connecting::new(make_cb(id), VecDeque::new());
    if let Ok(t) = state(lp, id) {
        t.conn = Conn::Resolving(c);
    }
    let name = host_port.to_owned();
    lp.queue_work(
        move || name.to_socket_addrs().map(|a| a.collect::<Vec<_>>()),
        move |lp, resolved| {
            let Ok(t) = state(lp, id) else { return }; // closed while resolving
            let Conn::Resolving(_) = t.conn else { return }; // timed out meanwhile
            let Conn::Resolving(mut c) = std::mem::replace(&mut t.conn, Conn::Connected) else {
                return;
            };
            match resolved {
                Ok(addrs) if !addrs.is_empty() => c.rest.extend(addrs),
                Ok(_) => {
                    c.last_error = Some(Error::Io(Arc::new(io::Error::new(
                        io::ErrorKind::NotFound,
                        "host name resolved to no address",
                    ))))
                }
                Err(e) => c.last_error = Some(e.into()),
            }
            t.conn = Conn::Connecting(c);
            connect_next(lp, id);
        },
    );
    id
}

/// Starts a handle on a socket whose non-blocking connect was started elsewhere (a
/// Unix-domain path), or fails it with the error that prevented starting it.
pub(crate) fn connect_started(
    lp: &mut Loop,
    started: io::Result<StreamSock>,
    make_cb: impl FnOnce(RawId) -> DoneCb,
) -> RawId {
    let id = insert_connecting(lp, Conn::Connected);
    let c = Connecting::new(make_cb(id), VecDeque::new());
    if let Ok(t) = state(lp, id) {
        t.conn = Conn::Connecting(c);
    }
    match started.and_then(|sock| register(lp, id, sock)) {
        // The first event tells whether the connect succeeded.
        Ok(sock) => {
            if let Ok(t) = state(lp, id) {
                t.sock = Some(sock);
            }
        }
        Err(e) => fail_connect(lp, id, e.into()),
    }
    id
}

fn register(lp: &mut Loop, id: RawId, mut sock: StreamSock) -> io::Result<StreamSock> {
    lp.registry().register(
        &mut sock,
        id.token(),
        Interest::READABLE | Interest::WRITABLE,
    )?;
    Ok(sock)
}

/// Fails a connect still in progress after `timeout` with a connect timeout.
pub(crate) fn set_connect_timeout(lp: &mut Loop, id: RawId, timeout: Duration) -> Result<()> {
    let t = state(lp, id)?;
    if !matches!(t.conn, Conn::Resolving(_) | Conn::Connecting(_)) {
        return Err(Error::InvalidState("no connect in progress"));
    }
    let timer = Timer::new(lp)?;
    timer.unref(lp)?;
    timer.start(lp, timeout, None, move |lp, timer| {
        timer.close(lp);
        fail_connect(lp, id, Error::TimedOut(crate::error::Timeout::Connect));
    })?;
    let old = match state(lp, id).map(|t| &mut t.conn) {
        Ok(Conn::Resolving(c) | Conn::Connecting(c)) => c.timer.replace(timer),
        _ => Some(timer),
    };
    if let Some(old) = old {
        old.close(lp);
    }
    Ok(())
}

/// Tries the next address of a connect in progress, or fails it if none is left.
fn connect_next(lp: &mut Loop, id: RawId) {
    loop {
        let Ok(t) = state(lp, id) else { return };
        let Conn::Connecting(c) = &mut t.conn else {
            return;
        };
        let Some(addr) = c.rest.pop_front() else {
            let err = c
                .last_error
                .take()
                .unwrap_or(Error::InvalidState("no address to connect to"));
            fail_connect(lp, id, err);
            return;
        };
        let result = mio::net::TcpStream::connect(addr)
            .and_then(|sock| register(lp, id, StreamSock::Tcp(sock)));
        let Ok(t) = state(lp, id) else { return };
        match result {
            Ok(sock) => {
                t.sock = Some(sock);
                return;
            }
            Err(e) => {
                if let Conn::Connecting(c) = &mut t.conn {
                    c.last_error = Some(e.into());
                }
            }
        }
    }
}

/// Ends a connect in progress with `err`: the socket is dropped, and the connect
/// callback, then the queued requests' failures, run from the loop (`connect_failed`).
fn fail_connect(lp: &mut Loop, id: RawId, err: Error) {
    let Ok(t) = state(lp, id) else { return };
    let c = match std::mem::replace(&mut t.conn, Conn::Connected) {
        Conn::Resolving(c) | Conn::Connecting(c) => c,
        other => {
            t.conn = other;
            return;
        }
    };
    let sock = t.sock.take();
    if let Some(mut sock) = sock {
        let _ = lp.registry().deregister(&mut sock);
    }
    let cb = (*c).cancel(lp);
    if let Ok(t) = state(lp, id) {
        t.conn = Conn::Failed {
            error: err,
            cb: Some(cb),
        };
    }
    lp.defer(move |lp| connect_failed(lp, id));
}

/// Runs a failed connect's callbacks in the contract's order: the connect callback, the
/// queued writes and shutdown, then the reader.
fn connect_failed(lp: &mut Loop, id: RawId) {
    let Ok(t) = state(lp, id) else { return }; // closed: `close` ran the callbacks
    let Conn::Failed { error, cb } = &mut t.conn else {
        return;
    };
    let Some(cb) = cb.take() else { return };
    let err = error.clone();
    cb(lp, Err(err.clone()));
    write::fail_requests(lp, id, &err);
    // Ends the read side unless it had ended already (then only the activity changes).
    read::end_reading(lp, id, Err(err));
}

/// Checks a connecting socket after an event: connected, failed, or not yet. On success
/// the connect callback runs now (we are on the loop), before anything is read.
pub(super) fn finish_connect(lp: &mut Loop, id: RawId) {
    let Ok(t) = state(lp, id) else { return };
    let Some(sock) = t.sock.as_ref() else { return };
    let outcome = match sock.take_error() {
        Ok(Some(e)) | Err(e) => Err(e),
        Ok(None) => match sock.is_connected() {
            Ok(true) => Ok(()),
            Ok(false) => return, // still in progress
            Err(e) => Err(e),
        },
    };
    match outcome {
        Ok(()) => {
            let Conn::Connecting(c) = std::mem::replace(&mut t.conn, Conn::Connected) else {
                return;
            };
            let cb = (*c).cancel(lp);
            update_active(lp, id);
            cb(lp, Ok(()));
        }
        Err(e) => {
            if let Some(mut sock) = t.sock.take() {
                let _ = lp.registry().deregister(&mut sock);
            }
            if let Ok(Conn::Connecting(c)) = state(lp, id).map(|t| &mut t.conn) {
                c.last_error = Some(e.into());
            }
            connect_next(lp, id);
        }
    }
}
