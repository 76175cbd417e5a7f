//! Connecting a stream socket: name resolution, Happy Eyeballs over the addresses, the
//! connect timeout, and the failure path.
//!
//! With several addresses (a host name), attempts are staggered as RFC 8305 describes:
//! the addresses are interleaved by family (the resolver's first family first); the
//! first attempt runs on the handle's own socket; every [`STAGGER`] while no attempt has
//! succeeded, or at once when one fails, the next address is tried on a socket of its
//! own (an internal handle), so a black-holed address does not hold up the others. The
//! first to connect wins: its socket moves into the handle and the other attempts are
//! closed. The connect timeout covers the whole.
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

/// Delay between the starts of two connection attempts (RFC 8305 recommends 250 ms).
pub(crate) const STAGGER: Duration = Duration::from_millis(250);

/// A connect in progress.
pub(super) struct Connecting {
    cb: DoneCb,
    /// Addresses not tried yet.
    rest: VecDeque<SocketAddr>,
    last_error: Option<Error>,
    /// The connect timeout.
    timer: Option<Timer>,
    /// Starts the next attempt while the others are still pending.
    stagger: Option<Timer>,
    /// Extra attempts in progress, each an internal handle with a socket of its own.
    attempts: Vec<RawId>,
}

impl Connecting {
    fn new(cb: DoneCb, rest: VecDeque<SocketAddr>) -> Box<Connecting> {
        Box::new(Connecting {
            cb,
            rest,
            last_error: None,
            timer: None,
            stagger: None,
            attempts: Vec::new(),
        })
    }

    /// Ends the connect (closed, failed or done): stops its timers and the other
    /// attempts, returns the callback.
    pub(super) fn cancel(self, lp: &mut Loop) -> DoneCb {
        for timer in [self.timer, self.stagger].into_iter().flatten() {
            timer.close(lp);
        }
        for attempt in self.attempts {
            close_attempt(lp, attempt);
        }
        self.cb
    }
}

/// Interleaves addresses by family, starting with the first one's (RFC 8305, 4).
fn interleave(addrs: Vec<SocketAddr>) -> VecDeque<SocketAddr> {
    let Some(first) = addrs.first() else {
        return VecDeque::new();
    };
    let first_v6 = first.is_ipv6();
    let (mut a, mut b): (VecDeque<_>, VecDeque<_>) =
        addrs.into_iter().partition(|x| x.is_ipv6() == first_v6);
    let mut out = VecDeque::with_capacity(a.len() + b.len());
    loop {
        match (a.pop_front(), b.pop_front()) {
            (None, None) => return out,
            (x, y) => out.extend(x.into_iter().chain(y)),
        }
    }
}

/// Starts connecting to `addrs` (one after another, staggered); `make_cb` makes the
/// connect callback for the new handle's id.
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

/// Resolves `host_port` on a worker thread, then connects with Happy Eyeballs.
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
                Ok(addrs) if !addrs.is_empty() => c.rest = interleave(addrs),
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

/// Tries the next address on the handle's own socket (which has none now), or fails
/// the connect if no address and no other attempt is left.
fn connect_next(lp: &mut Loop, id: RawId) {
    loop {
        let Ok(t) = state(lp, id) else { return };
        let Conn::Connecting(c) = &mut t.conn else {
            return;
        };
        let Some(addr) = c.rest.pop_front() else {
            if c.attempts.is_empty() {
                let err = c
                    .last_error
                    .take()
                    .unwrap_or(Error::InvalidState("no address to connect to"));
                fail_connect(lp, id, err);
            }
            return; // the other attempts may still connect
        };
        let result = mio::net::TcpStream::connect(addr)
            .and_then(|sock| register(lp, id, StreamSock::Tcp(sock)));
        let Ok(t) = state(lp, id) else { return };
        match result {
            Ok(sock) => {
                t.sock = Some(sock);
                arm_stagger(lp, id);
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

/// While addresses remain, starts the next one on a socket of its own after [`STAGGER`].
fn arm_stagger(lp: &mut Loop, id: RawId) {
    let Ok(Conn::Connecting(c)) = state(lp, id).map(|t| &mut t.conn) else {
        return;
    };
    if c.rest.is_empty() {
        return;
    }
    let existing = c.stagger;
    let timer = match existing {
        Some(timer) => timer,
        None => {
            let Ok(timer) = Timer::new(lp) else { return };
            let _ = timer.unref(lp);
            if let Ok(Conn::Connecting(c)) = state(lp, id).map(|t| &mut t.conn) {
                c.stagger = Some(timer);
            }
            timer
        }
    };
    let _ = timer.start(lp, STAGGER, None, move |lp, _| start_attempt(lp, id));
}

/// Starts the next address as an extra attempt (an internal handle).
fn start_attempt(lp: &mut Loop, id: RawId) {
    let Ok(Conn::Connecting(c)) = state(lp, id).map(|t| &mut t.conn) else {
        return;
    };
    let Some(addr) = c.rest.pop_front() else {
        return;
    };
    let attempt = connect_addrs(lp, [addr], |attempt| {
        Box::new(move |lp, r| attempt_done(lp, id, attempt, r))
    });
    if let Ok(Conn::Connecting(c)) = state(lp, id).map(|t| &mut t.conn) {
        c.attempts.push(attempt);
    }
    // Internal: it keeps nothing alive on its own (its parent is active).
    let _ = lp.set_referenced(attempt, false);
    arm_stagger(lp, id);
}

/// An extra attempt finished: the first success wins the handle; a failure lets the
/// next address start at once.
fn attempt_done(lp: &mut Loop, id: RawId, attempt: RawId, r: Result<()>) {
    let Ok(Conn::Connecting(c)) = state(lp, id).map(|t| &mut t.conn) else {
        close_attempt(lp, attempt);
        return;
    };
    c.attempts.retain(|a| *a != attempt);
    match r {
        Ok(()) => {
            let sock = take_socket(lp, attempt);
            let Some(sock) = sock.and_then(|s| register(lp, id, s).ok()) else {
                return;
            };
            let Ok(t) = state(lp, id) else { return };
            if let Some(mut own) = t.sock.replace(sock) {
                let _ = lp.registry().deregister(&mut own);
            }
            won(lp, id);
            // Data may have come with the connect, under the attempt's token.
            lp.serve_soon(id);
        }
        Err(e) => {
            close_attempt(lp, attempt);
            if let Ok(Conn::Connecting(c)) = state(lp, id).map(|t| &mut t.conn) {
                c.last_error = Some(e);
            }
            let has_own = state(lp, id).is_ok_and(|t| t.sock.is_some());
            if has_own {
                // The own attempt is still pending: start the next one now.
                let more = matches!(state(lp, id).map(|t| &t.conn), Ok(Conn::Connecting(c)) if !c.rest.is_empty());
                if more {
                    start_attempt(lp, id);
                }
            } else {
                connect_next(lp, id);
            }
        }
    }
}

/// Takes the connected socket out of an attempt handle and frees the handle.
fn take_socket(lp: &mut Loop, attempt: RawId) -> Option<StreamSock> {
    let any = lp.remove(attempt)?;
    let mut t = any.downcast::<super::StreamState>().ok()?;
    let mut sock = t.sock.take()?;
    let _ = lp.registry().deregister(&mut sock);
    Some(sock)
}

/// Closes an attempt that lost (its connect callback, ours, is dropped unrun).
fn close_attempt(lp: &mut Loop, attempt: RawId) {
    if let Some(any) = lp.remove(attempt)
        && let Ok(mut t) = any.downcast::<super::StreamState>()
        && let Some(mut sock) = t.sock.take()
    {
        let _ = lp.registry().deregister(&mut sock);
    }
}

/// The handle's socket is connected: the connect completes, the callback runs now (we
/// are on the loop), before anything is read.
fn won(lp: &mut Loop, id: RawId) {
    let Ok(t) = state(lp, id) else { return };
    let Conn::Connecting(c) = std::mem::replace(&mut t.conn, Conn::Connected) else {
        return;
    };
    let cb = (*c).cancel(lp);
    update_active(lp, id);
    cb(lp, Ok(()));
    // Writes queued meanwhile go out now.
    write::flush(lp, id);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_interleave_by_family_starting_with_the_first() {
        let a: Vec<SocketAddr> = ["[::1]:1", "[::2]:1", "[::3]:1", "10.0.0.1:1", "10.0.0.2:1"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let got: Vec<String> = interleave(a).iter().map(|x| x.to_string()).collect();
        assert_eq!(
            got,
            ["[::1]:1", "10.0.0.1:1", "[::2]:1", "10.0.0.2:1", "[::3]:1"]
        );
    }
}
