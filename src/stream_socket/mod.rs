//! The stream-socket core shared by [`Tcp`](crate::Tcp) and [`Pipe`](crate::Pipe): one
//! handle state over a TCP or Unix-domain socket, and the functions behind their
//! [`Stream`](crate::Stream) methods.
//!
//! This module (with `connect`, `read` and `write`) owns the sockets and is the only
//! place that reads or writes them. It must never call a user callback inside the API
//! call that queued it, never drop or reorder queued bytes, and never read a socket whose
//! handle is not reading.
//!
//! A handle's life is three small state machines that cannot contradict each other:
//! the connection ([`Conn`]: resolving, connecting, connected, failed), the read side
//! (`ReadSide`: stopped, reading, ended with the ending kept for later readers) and the
//! write side (a `WriteQueue` of requests and a `Shutdown` that is open, queued or
//! done).
//! Every request leaves the handle through one function per way out: written
//! (`write::complete_written`), failed (`write::fail_requests`, `connect::connect_failed`)
//! or cancelled (`close`).
//!
//! Sockets are registered once for READABLE | WRITABLE, and never re-registered: an
//! edge-triggered WRITABLE event only comes after a write hit a full send buffer, so
//! keeping the interest costs no wake-ups and saves an `epoll_ctl` per full buffer.

mod connect;
mod read;
mod write;

use bytes::Bytes;
use mio::Interest;

use crate::drain::Drain;
use crate::error::{Error, Result};
use crate::event_loop::Ops;
use crate::event_loop::{DoneCb, Loop, Queue};
use crate::handle::{RawId, Readiness};
use crate::read_side::ReadSide;
use crate::socket::StreamSock;
use crate::stream::ReadResult;
use crate::write_queue::{Shutdown, WriteQueue};

pub(crate) use connect::{connect_addrs, connect_host, connect_started, set_connect_timeout};

/// A read callback with its handle already bound.
pub(crate) type ReadCb = Box<dyn FnMut(&mut Loop, ReadResult)>;

/// The connection's phase.
enum Conn {
    /// Connected (accepted, adopted, or a connect that completed).
    Connected,
    /// Resolving a host name on a worker thread; no socket yet.
    Resolving(Box<connect::Connecting>),
    /// A non-blocking connect is in progress on the handle's socket.
    Connecting(Box<connect::Connecting>),
    /// The connect failed with `error`; the handle holds no socket. `cb` is the connect
    /// callback until it has run (from the loop, before the queued requests fail).
    Failed { error: Error, cb: Option<DoneCb> },
}

/// The state of one `Tcp` or `Pipe` handle.
pub(crate) struct StreamState {
    /// `None` while resolving, after a failed connect, and between connect attempts.
    sock: Option<StreamSock>,
    conn: Conn,
    read: ReadSide<ReadCb>,
    out: WriteQueue,
    shutdown: Shutdown,
    /// The error that broke the write side; later writes fail with it, and a read that
    /// meets end of stream reports it instead (see `read::lost_connection`).
    write_error: Option<Error>,
    drain: Drain,
}

impl StreamState {
    fn new(sock: Option<StreamSock>, conn: Conn) -> Self {
        StreamState {
            sock,
            conn,
            read: ReadSide::default(),
            out: WriteQueue::default(),
            shutdown: Shutdown::Open,
            write_error: None,
            drain: Drain::default(),
        }
    }

    fn is_active(&self) -> bool {
        let connecting = match &self.conn {
            Conn::Connected => false,
            Conn::Resolving(_) | Conn::Connecting(_) => true,
            Conn::Failed { cb, .. } => cb.is_some(),
        };
        self.read.is_active() || connecting || self.out.has_requests() || self.shutdown.is_queued()
    }

    /// The error that makes writing impossible: a failed connect (once its callback has
    /// run: until then requests queue, and fail after it, also when the failure was
    /// known inside the constructor) or a failed write.
    fn broken(&self) -> Option<&Error> {
        match &self.conn {
            Conn::Failed { error, cb: None } => Some(error),
            _ => self.write_error.as_ref(),
        }
    }

    fn connected(&self) -> bool {
        matches!(self.conn, Conn::Connected) && self.sock.is_some()
    }
}

static OPS: Ops = Ops {
    ready: on_ready,
    serve: on_serve,
    owned_closed: |_, _, _| {},
};

pub(crate) fn state(lp: &mut Loop, id: RawId) -> Result<&mut StreamState> {
    lp.state::<StreamState>(id).ok_or(Error::Closed)
}

pub(crate) fn state_ref(lp: &Loop, id: RawId) -> Result<&StreamState> {
    lp.state_ref::<StreamState>(id).ok_or(Error::Closed)
}

/// The socket of an open handle.
pub(crate) fn sock_ref(lp: &Loop, id: RawId) -> Result<&StreamSock> {
    state_ref(lp, id)?
        .sock
        .as_ref()
        .ok_or(Error::InvalidState("not connected"))
}

fn update_active(lp: &mut Loop, id: RawId) {
    if let Ok(t) = state(lp, id) {
        let active = t.is_active();
        lp.set_active(id, active);
    }
}

/// Registers a connected socket as a new stream handle.
pub(crate) fn register(lp: &mut Loop, mut sock: StreamSock) -> Result<RawId> {
    let id = lp.insert(Box::new(StreamState::new(None, Conn::Connected)), &OPS);
    if let Err(e) = lp.registry().register(
        &mut sock,
        id.token(),
        Interest::READABLE | Interest::WRITABLE,
    ) {
        lp.remove(id);
        return Err(e.into());
    }
    state(lp, id)?.sock = Some(sock);
    Ok(id)
}

/// A new handle with no socket yet, in connection phase `conn`.
fn insert_connecting(lp: &mut Loop, conn: Conn) -> RawId {
    let id = lp.insert(Box::new(StreamState::new(None, conn)), &OPS);
    lp.set_active(id, true);
    id
}

fn on_ready(lp: &mut Loop, id: RawId, r: Readiness) {
    let Ok(t) = state(lp, id) else { return };
    match t.conn {
        Conn::Connected => {}
        Conn::Connecting(_) => {
            connect::finish_connect(lp, id);
            // Data or an end of stream may have come with the connect's completion: go
            // on with this event.
            if !state(lp, id).is_ok_and(|t| t.connected()) {
                return;
            }
        }
        // An event of a socket dropped in this iteration.
        Conn::Resolving(_) | Conn::Failed { .. } => return,
    }
    if r.writable || r.error {
        write::flush(lp, id);
    }
    if r.readable || r.read_closed || r.error {
        read::read_loop(lp, id, !r.read_closed);
    }
}

fn on_serve(lp: &mut Loop, id: RawId) {
    read::serve(lp, id);
}

/// `Stream::start_read`.
pub(crate) fn start_read(lp: &mut Loop, id: RawId, cb: ReadCb) -> Result<()> {
    lp.check_access(id)?;
    state(lp, id)?.read.start(cb);
    lp.set_active(id, true);
    // Data (or the ending) may already wait, and its edge may be gone: look on this
    // iteration, from the loop (never inside this call).
    lp.serve_soon(id);
    Ok(())
}

/// `Stream::stop_read`.
pub(crate) fn stop_read(lp: &mut Loop, id: RawId) -> Result<()> {
    lp.check_access(id)?;
    state(lp, id)?.read.stop();
    update_active(lp, id);
    Ok(())
}

/// `Stream::write_vectored`.
pub(crate) fn write(
    lp: &mut Loop,
    id: RawId,
    bufs: impl IntoIterator<Item = Bytes>,
    cb: DoneCb,
) -> Result<()> {
    lp.check_access(id)?;
    let t = state(lp, id)?;
    if let Some(e) = t.broken() {
        return Err(e.clone());
    }
    if !t.shutdown.is_open() {
        return Err(Error::InvalidState("write after shutdown"));
    }
    let was_idle = t.out.push(bufs, cb);
    if was_idle && t.connected() {
        write::flush(lp, id);
    } else {
        lp.set_active(id, true);
    }
    Ok(())
}

/// `Stream::try_write`.
pub(crate) fn try_write(lp: &mut Loop, id: RawId, data: &[u8]) -> Result<usize> {
    lp.check_access(id)?;
    write::try_write(lp, id, data)
}

/// `Stream::shutdown`.
pub(crate) fn shutdown(lp: &mut Loop, id: RawId, cb: DoneCb) -> Result<()> {
    lp.check_access(id)?;
    let t = state(lp, id)?;
    if let Some(e) = t.broken() {
        return Err(e.clone());
    }
    if !t.shutdown.is_open() {
        return Err(Error::InvalidState("already shut down"));
    }
    t.shutdown = Shutdown::Queued(cb);
    lp.set_active(id, true);
    if state(lp, id).is_ok_and(|t| t.connected()) {
        write::flush(lp, id);
    }
    Ok(())
}

/// `Stream::close`: frees the handle at once; the connect callback (if pending), the
/// queued requests and then `cb` run from the loop, in that order.
pub(crate) fn close(lp: &mut Loop, id: RawId, cb: Box<dyn FnOnce(&mut Loop)>) {
    let Some(any) = lp.remove(id) else {
        return;
    };
    let Ok(mut t) = any.downcast::<StreamState>() else {
        return;
    };
    if let Some(mut sock) = t.sock.take() {
        // Deregistering can only fail if the socket was never registered.
        let _ = lp.registry().deregister(&mut sock);
    }
    match std::mem::replace(&mut t.conn, Conn::Connected) {
        Conn::Resolving(c) | Conn::Connecting(c) => {
            let cb = (*c).cancel(lp);
            lp.complete(cb, Err(Error::Cancelled));
        }
        // The connect's outcome was known before the close: it keeps it.
        Conn::Failed {
            error,
            cb: Some(cb),
        } => lp.complete(cb, Err(error)),
        Conn::Failed { cb: None, .. } | Conn::Connected => {}
    }
    for cb in t.out.take_requests() {
        lp.complete(cb, Err(Error::Cancelled));
    }
    if let Some(cb) = t.shutdown.take_queued() {
        lp.complete(cb, Err(Error::Cancelled));
    }
    if let Some(cb) = t.drain.take() {
        lp.complete(cb, Err(Error::Cancelled));
    }
    lp.defer(cb);
}

/// `Stream::on_drain`.
pub(crate) fn on_drain(lp: &mut Loop, id: RawId, level: usize, cb: DoneCb) -> Result<()> {
    lp.with_queue::<StreamState, _>(id, |t, q| {
        let queued = t.out.bytes();
        let broken = t.broken().cloned();
        t.drain.set(q, level, cb, queued, broken.as_ref(), |q| {
            schedule_drain(q, id)
        });
    })
    .ok_or(Error::Closed)
}

/// Queues the drain watcher's re-check (see `drain`).
pub(crate) fn schedule_drain(q: &mut Queue<'_>, id: RawId) {
    q.defer(move |lp| {
        let Ok(t) = state(lp, id) else { return };
        let queued = t.out.bytes();
        if let Some(cb) = t.drain.recheck(queued) {
            cb(lp, Ok(()));
        }
    });
}

/// `Stream::write_queue_size`.
pub(crate) fn write_queue_size(lp: &Loop, id: RawId) -> usize {
    state_ref(lp, id).map_or(0, |t| t.out.bytes())
}

/// Implements [`Stream`](crate::Stream) for a handle newtype over `RawId` backed by this
/// core (`Tcp`, `Pipe`): each method binds the handle into the callback and delegates.
macro_rules! impl_socket_stream {
    ($ty:ident) => {
        impl $crate::stream::Stream for $ty {
            fn start_read<F>(self, lp: &mut $crate::Loop, mut cb: F) -> $crate::Result<()>
            where
                F: FnMut(&mut $crate::Loop, Self, $crate::ReadResult) + 'static,
            {
                $crate::stream_socket::start_read(
                    lp,
                    self.0,
                    Box::new(move |lp, r| cb(lp, self, r)),
                )
            }

            fn stop_read(self, lp: &mut $crate::Loop) -> $crate::Result<()> {
                $crate::stream_socket::stop_read(lp, self.0)
            }

            fn write_vectored<F>(
                self,
                lp: &mut $crate::Loop,
                bufs: impl IntoIterator<Item = ::bytes::Bytes>,
                cb: F,
            ) -> $crate::Result<()>
            where
                F: FnOnce(&mut $crate::Loop, Self, $crate::Result<()>) + 'static,
            {
                $crate::stream_socket::write(
                    lp,
                    self.0,
                    bufs,
                    Box::new(move |lp, r| cb(lp, self, r)),
                )
            }

            fn try_write(self, lp: &mut $crate::Loop, data: &[u8]) -> $crate::Result<usize> {
                $crate::stream_socket::try_write(lp, self.0, data)
            }

            fn shutdown<F>(self, lp: &mut $crate::Loop, cb: F) -> $crate::Result<()>
            where
                F: FnOnce(&mut $crate::Loop, Self, $crate::Result<()>) + 'static,
            {
                $crate::stream_socket::shutdown(lp, self.0, Box::new(move |lp, r| cb(lp, self, r)))
            }

            fn on_drain<F>(self, lp: &mut $crate::Loop, level: usize, cb: F) -> $crate::Result<()>
            where
                F: FnOnce(&mut $crate::Loop, Self, $crate::Result<()>) + 'static,
            {
                $crate::stream_socket::on_drain(
                    lp,
                    self.0,
                    level,
                    Box::new(move |lp, r| cb(lp, self, r)),
                )
            }

            fn close<F>(self, lp: &mut $crate::Loop, cb: F)
            where
                F: FnOnce(&mut $crate::Loop, Self) + 'static,
            {
                $crate::stream_socket::close(lp, self.0, Box::new(move |lp| cb(lp, self)));
            }

            fn write_queue_size(self, lp: &$crate::Loop) -> usize {
                $crate::stream_socket::write_queue_size(lp, self.0)
            }

            fn is_open(self, lp: &$crate::Loop) -> bool {
                $crate::stream_socket::state_ref(lp, self.0).is_ok()
            }

            fn handle_id(self) -> Option<$crate::HandleId> {
                Some($crate::HandleId(self.0))
            }
        }
    };
}
pub(crate) use impl_socket_stream;
