//! TCP handles: `TcpListener` (bind, listen, accept) and `Tcp` (a connected stream).
//!
//! This module owns the sockets and is the only place that reads or writes them. It must
//! never call a user callback inside the API call that queued it, never drop or reorder
//! queued bytes, and never read a socket whose handle is not reading.
//!
//! Readiness is edge-triggered (mio): a readable socket is read until `WouldBlock`, a
//! short read (the kernel had less than the buffer's room, and the peer has not closed),
//! or the per-event budget is spent. In the last case, and when reading restarts after
//! `stop_read`, no new edge will come for data already waiting, so the handle is put on
//! the loop's `ready_again` list and served on the next iteration.
//!
//! Sockets are registered once for READABLE | WRITABLE, and never re-registered: an
//! edge-triggered WRITABLE event only comes after a write hit a full send buffer, so
//! keeping the interest costs no wake-ups and saves an `epoll_ctl` per full buffer.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use bytes::{Buf, Bytes};
use mio::Interest;
use mio::event::Event;
use socket2::{Domain, Protocol, SockRef, Socket, Type};

use crate::error::{Error, Result};
use crate::event_loop::{DoneCb, Loop};
use crate::handle::{RawId, State, handle_fmt};
use crate::socket::{ListenSock, StreamSock};
use crate::stream::{ReadResult, Stream};
use crate::timer::Timer;

/// Bytes read from one socket per event before other handles get their turn.
const READ_BUDGET: usize = 256 * 1024;
/// Connections accepted per listener event before other handles get their turn.
const ACCEPT_BUDGET: usize = 128;
/// Buffers gathered into one `writev`.
const MAX_IOVECS: usize = 64;
/// Default listen backlog.
const BACKLOG: i32 = 1024;

type ReadCb = Box<dyn FnMut(&mut Loop, Tcp, ReadResult)>;
type ConnectionCb = Box<dyn FnMut(&mut Loop, TcpListener, Result<Tcp>)>;

/// A TCP stream handle, like libuv's `uv_tcp_t`. Implements [`Stream`].
///
/// Created by [`TcpListener::listen`] (accepted connections), [`Tcp::connect`] or
/// [`Tcp::connect_host`].
///
/// # Examples
/// ```no_run
/// use biotls::{Loop, Stream, Tcp};
///
/// let mut lp = Loop::new()?;
/// let addr = "127.0.0.1:7000".parse().unwrap();
/// Tcp::connect(&mut lp, addr, |lp, tcp, result| match result {
///     Ok(()) => {
///         let _ = tcp.write(lp, &b"hello\n"[..], |lp, tcp, _| tcp.close(lp, |_, _| {}));
///     }
///     Err(e) => {
///         eprintln!("connect failed: {e}");
///         tcp.close(lp, |_, _| {});
///     }
/// })?;
/// lp.run()?;
/// # Ok::<(), biotls::Error>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tcp(pub(crate) RawId);
handle_fmt!(Tcp, "tcp");

/// A listening TCP socket handle.
///
/// # Examples
/// ```no_run
/// use biotls::{Loop, Stream, TcpListener};
///
/// let mut lp = Loop::new()?;
/// let listener = TcpListener::bind(&mut lp, "127.0.0.1:0".parse().unwrap())?;
/// println!("listening on {}", listener.local_addr(&lp)?);
/// listener.listen(&mut lp, |lp, _listener, accepted| {
///     if let Ok(tcp) = accepted {
///         tcp.close(lp, |_, _| {});
///     }
/// })?;
/// lp.run()?;
/// # Ok::<(), biotls::Error>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TcpListener(pub(crate) RawId);
handle_fmt!(TcpListener, "listener");

enum ShutdownState {
    Open,
    Pending(DoneCb),
    Done,
}

struct Connecting {
    cb: DoneCb,
    /// Addresses still to try after the current one fails (host names resolve to several).
    rest: VecDeque<SocketAddr>,
    last_error: Option<Error>,
    timer: Option<Timer>,
}

pub(crate) struct TcpState {
    /// `None` only while a host name is being resolved.
    sock: Option<StreamSock>,
    read_cb: Option<ReadCb>,
    reading: bool,
    /// Bumped by `start_read`/`stop_read`, so the loop can tell that a read callback
    /// replaced or stopped itself while it ran.
    read_epoch: u64,
    /// Queued data not yet written, front first.
    out: VecDeque<Bytes>,
    out_bytes: usize,
    /// Stream offsets: bytes ever queued, and bytes ever written. A write request
    /// completes when `written` passes the offset of its last byte.
    queued: u64,
    written: u64,
    reqs: VecDeque<(u64, DoneCb)>,
    shutdown: ShutdownState,
    connect: Option<Connecting>,
    /// Set when a write failed: the stream is broken, later writes fail at once, and a
    /// read that meets end of stream reports it instead (see [`lost_connection`]).
    write_error: Option<Error>,
}

impl TcpState {
    fn new(sock: Option<StreamSock>) -> Self {
        TcpState {
            sock,
            read_cb: None,
            reading: false,
            read_epoch: 0,
            out: VecDeque::new(),
            out_bytes: 0,
            queued: 0,
            written: 0,
            reqs: VecDeque::new(),
            shutdown: ShutdownState::Open,
            connect: None,
            write_error: None,
        }
    }

    fn is_active(&self) -> bool {
        self.reading
            || !self.reqs.is_empty()
            || self.connect.is_some()
            || matches!(self.shutdown, ShutdownState::Pending(_))
    }
}

fn tcp(lp: &mut Loop, id: RawId) -> Result<&mut TcpState> {
    match lp.slot_mut(id).map(|s| &mut s.state) {
        Some(State::Tcp(t)) => Ok(t),
        _ => Err(Error::Closed),
    }
}

fn tcp_ref(lp: &Loop, id: RawId) -> Result<&TcpState> {
    match lp.slot(id).map(|s| &s.state) {
        Some(State::Tcp(t)) => Ok(t),
        _ => Err(Error::Closed),
    }
}

/// The TCP socket of a `Tcp` handle (a `Pipe` shares the state type, not these calls).
fn sock_ref(lp: &Loop, id: RawId) -> Result<&mio::net::TcpStream> {
    tcp_ref(lp, id)?
        .sock
        .as_ref()
        .ok_or(Error::InvalidState("not connected"))?
        .as_tcp()
        .ok_or(Error::InvalidState("not a TCP socket"))
}

fn update_active(lp: &mut Loop, id: RawId) {
    if let Ok(t) = tcp(lp, id) {
        let active = t.is_active();
        lp.set_active(id, active);
    }
}

impl Tcp {
    /// Registers a connected socket as a new stream handle (TCP or Unix-domain).
    pub(crate) fn register(lp: &mut Loop, mut sock: StreamSock) -> Result<Tcp> {
        let id = lp.insert(State::Tcp(Box::new(TcpState::new(None))));
        if let Err(e) = lp.registry().register(
            &mut sock,
            id.token(),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            lp.remove(id);
            return Err(e.into());
        }
        tcp(lp, id)?.sock = Some(sock);
        Ok(Tcp(id))
    }

    /// Adopts a connected standard-library stream (switched to non-blocking mode).
    ///
    /// # Errors
    /// [`Error::Io`] if the socket cannot be made non-blocking or registered.
    pub fn from_std(lp: &mut Loop, stream: std::net::TcpStream) -> Result<Tcp> {
        stream.set_nonblocking(true)?;
        Tcp::register(lp, StreamSock::Tcp(mio::net::TcpStream::from_std(stream)))
    }

    /// Starts connecting to `addr`; `cb` runs from the loop with the result. Writes made
    /// before the connection is established are queued and sent once it is.
    ///
    /// # Errors
    /// [`Error::Io`] if no socket can be created (for example: out of file descriptors).
    /// A refused or unreachable peer is reported to `cb`, not here.
    pub fn connect(
        lp: &mut Loop,
        addr: SocketAddr,
        cb: impl FnOnce(&mut Loop, Tcp, Result<()>) + 'static,
    ) -> Result<Tcp> {
        let id = lp.insert(State::Tcp(Box::new(TcpState::new(None))));
        let handle = Tcp(id);
        tcp(lp, id)?.connect = Some(Connecting {
            cb: Box::new(move |lp, r| cb(lp, handle, r)),
            rest: VecDeque::from([addr]),
            last_error: None,
            timer: None,
        });
        lp.set_active(id, true);
        connect_next(lp, id);
        Ok(handle)
    }

    /// Resolves `host_port` (such as `"localhost:4433"`) on a background thread, then
    /// connects to each resolved address in turn until one accepts; `cb` runs with the
    /// result (the last address's error if none accepts).
    ///
    /// # Errors
    /// None at the call: resolution and connection failures go to `cb`.
    pub fn connect_host(
        lp: &mut Loop,
        host_port: &str,
        cb: impl FnOnce(&mut Loop, Tcp, Result<()>) + 'static,
    ) -> Result<Tcp> {
        let id = lp.insert(State::Tcp(Box::new(TcpState::new(None))));
        let handle = Tcp(id);
        tcp(lp, id)?.connect = Some(Connecting {
            cb: Box::new(move |lp, r| cb(lp, handle, r)),
            rest: VecDeque::new(),
            last_error: None,
            timer: None,
        });
        lp.set_active(id, true);
        let name = host_port.to_owned();
        lp.queue_work(
            move || name.to_socket_addrs().map(|a| a.collect::<Vec<_>>()),
            move |lp, resolved| {
                let Ok(t) = tcp(lp, id) else { return }; // closed while resolving
                let Some(c) = t.connect.as_mut() else { return };
                match resolved {
                    Ok(addrs) if !addrs.is_empty() => c.rest.extend(addrs),
                    Ok(_) => {
                        c.last_error = Some(Error::Io(std::sync::Arc::new(io::Error::new(
                            io::ErrorKind::NotFound,
                            "host name resolved to no address",
                        ))))
                    }
                    Err(e) => c.last_error = Some(e.into()),
                }
                connect_next(lp, id);
            },
        );
        Ok(handle)
    }

    /// Fails a connect still in progress after `timeout` with
    /// [`Error::TimedOut`]`(Timeout::Connect)`. Call it right after `connect`/`connect_host`.
    ///
    /// # Errors
    /// [`Error::Closed`], or [`Error::InvalidState`] if no connect is in progress.
    pub fn set_connect_timeout(self, lp: &mut Loop, timeout: Duration) -> Result<()> {
        let t = tcp(lp, self.0)?;
        if t.connect.is_none() {
            return Err(Error::InvalidState("no connect in progress"));
        }
        let timer = Timer::new(lp)?;
        timer.unref(lp)?;
        timer.start(lp, timeout, None, move |lp, timer| {
            timer.close(lp);
            fail_connect(lp, self.0, Error::TimedOut(crate::error::Timeout::Connect));
        })?;
        if let Ok(Some(c)) = tcp(lp, self.0).map(|t| t.connect.as_mut())
            && let Some(old) = c.timer.replace(timer)
        {
            old.close(lp);
        }
        Ok(())
    }

    /// Local address of the socket.
    ///
    /// # Errors
    /// [`Error::Closed`], [`Error::InvalidState`] before the socket exists, or the OS error.
    pub fn local_addr(self, lp: &Loop) -> Result<SocketAddr> {
        Ok(sock_ref(lp, self.0)?.local_addr()?)
    }

    /// Address of the peer.
    ///
    /// # Errors
    /// [`Error::Closed`], [`Error::InvalidState`] before the socket exists, or the OS error.
    pub fn peer_addr(self, lp: &Loop) -> Result<SocketAddr> {
        Ok(sock_ref(lp, self.0)?.peer_addr()?)
    }

    /// Enables or disables Nagle's algorithm (`TCP_NODELAY`).
    ///
    /// # Errors
    /// [`Error::Closed`], [`Error::InvalidState`] before the socket exists, or the OS error.
    pub fn set_nodelay(self, lp: &Loop, nodelay: bool) -> Result<()> {
        Ok(sock_ref(lp, self.0)?.set_nodelay(nodelay)?)
    }

    /// Sets `SO_LINGER`. `Some(Duration::ZERO)` makes `close` reset the connection.
    ///
    /// # Errors
    /// [`Error::Closed`], [`Error::InvalidState`] before the socket exists, or the OS error.
    pub fn set_linger(self, lp: &Loop, linger: Option<Duration>) -> Result<()> {
        Ok(SockRef::from(sock_ref(lp, self.0)?).set_linger(linger)?)
    }

    /// The handle no longer keeps [`Loop::run`] alive.
    ///
    /// # Errors
    /// [`Error::Closed`].
    pub fn unref(self, lp: &mut Loop) -> Result<()> {
        lp.set_referenced(self.0, false)
    }

    /// Undoes [`unref`](Tcp::unref).
    ///
    /// # Errors
    /// [`Error::Closed`].
    pub fn ref_(self, lp: &mut Loop) -> Result<()> {
        lp.set_referenced(self.0, true)
    }

    fn queue_write(
        self,
        lp: &mut Loop,
        bufs: impl IntoIterator<Item = Bytes>,
        cb: DoneCb,
    ) -> Result<()> {
        let t = tcp(lp, self.0)?;
        if !matches!(t.shutdown, ShutdownState::Open) {
            return Err(Error::InvalidState("write after shutdown"));
        }
        if let Some(e) = &t.write_error {
            return Err(e.clone());
        }
        let was_idle = t.out.is_empty();
        for b in bufs {
            if !b.is_empty() {
                t.out_bytes += b.len();
                t.queued += b.len() as u64;
                t.out.push_back(b);
            }
        }
        let end = t.queued;
        t.reqs.push_back((end, cb));
        if was_idle {
            flush(lp, self.0);
        } else {
            lp.set_active(self.0, true);
        }
        Ok(())
    }
}

impl Stream for Tcp {
    fn start_read<F>(self, lp: &mut Loop, cb: F) -> Result<()>
    where
        F: FnMut(&mut Loop, Self, ReadResult) + 'static,
    {
        let t = tcp(lp, self.0)?;
        t.read_cb = Some(Box::new(cb));
        t.reading = true;
        t.read_epoch += 1;
        lp.set_active(self.0, true);
        // Data may already wait in the socket, and its edge may be gone: look on the
        // next iteration (never inside this call).
        lp.ready_again.push(self.0);
        Ok(())
    }

    fn stop_read(self, lp: &mut Loop) -> Result<()> {
        let t = tcp(lp, self.0)?;
        t.read_cb = None;
        t.reading = false;
        t.read_epoch += 1;
        update_active(lp, self.0);
        Ok(())
    }

    fn write_vectored<F>(
        self,
        lp: &mut Loop,
        bufs: impl IntoIterator<Item = Bytes>,
        cb: F,
    ) -> Result<()>
    where
        F: FnOnce(&mut Loop, Self, Result<()>) + 'static,
    {
        self.queue_write(lp, bufs, Box::new(move |lp, r| cb(lp, self, r)))
    }

    fn try_write(self, lp: &mut Loop, data: &[u8]) -> Result<usize> {
        let t = tcp(lp, self.0)?;
        if !matches!(t.shutdown, ShutdownState::Open) {
            return Err(Error::InvalidState("write after shutdown"));
        }
        if let Some(e) = &t.write_error {
            return Err(e.clone());
        }
        if !t.out.is_empty() || t.connect.is_some() {
            return Ok(0);
        }
        let Some(sock) = t.sock.as_mut() else {
            return Ok(0);
        };
        loop {
            match sock.write(data) {
                Ok(n) => {
                    t.queued += n as u64;
                    t.written += n as u64;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let err = Error::from(e);
                    t.write_error = Some(err.clone());
                    return Err(err);
                }
            }
        }
    }

    fn shutdown<F>(self, lp: &mut Loop, cb: F) -> Result<()>
    where
        F: FnOnce(&mut Loop, Self, Result<()>) + 'static,
    {
        let t = tcp(lp, self.0)?;
        if !matches!(t.shutdown, ShutdownState::Open) {
            return Err(Error::InvalidState("already shut down"));
        }
        t.shutdown = ShutdownState::Pending(Box::new(move |lp, r| cb(lp, self, r)));
        lp.set_active(self.0, true);
        flush(lp, self.0);
        Ok(())
    }

    fn close<F>(self, lp: &mut Loop, cb: F)
    where
        F: FnOnce(&mut Loop, Self) + 'static,
    {
        let Some(State::Tcp(mut t)) = lp.remove(self.0) else {
            return;
        };
        if let Some(mut sock) = t.sock.take() {
            // Deregistering can only fail if the socket was never registered.
            let _ = lp.registry().deregister(&mut sock);
        }
        if let Some(c) = t.connect.take() {
            if let Some(timer) = c.timer {
                timer.close(lp);
            }
            lp.complete(c.cb, Err(Error::Cancelled));
        }
        for (_, cb) in t.reqs.drain(..) {
            lp.complete(cb, Err(Error::Cancelled));
        }
        if let ShutdownState::Pending(cb) = std::mem::replace(&mut t.shutdown, ShutdownState::Done)
        {
            lp.complete(cb, Err(Error::Cancelled));
        }
        lp.defer(move |lp| cb(lp, self));
    }

    fn write_queue_size(self, lp: &Loop) -> usize {
        tcp_ref(lp, self.0).map_or(0, |t| t.out_bytes)
    }

    fn is_open(self, lp: &Loop) -> bool {
        tcp_ref(lp, self.0).is_ok()
    }
}

/// Starts a handle on a socket whose non-blocking connect was started elsewhere (a
/// Unix-domain path), or fails it with the error that prevented starting it. `cb` is
/// made with the new handle's id; it runs from the loop, as for [`Tcp::connect`].
pub(crate) fn connect_started(
    lp: &mut Loop,
    started: io::Result<StreamSock>,
    make_cb: impl FnOnce(RawId) -> DoneCb,
) -> Result<RawId> {
    let id = lp.insert(State::Tcp(Box::new(TcpState::new(None))));
    tcp(lp, id)?.connect = Some(Connecting {
        cb: make_cb(id),
        rest: VecDeque::new(),
        last_error: None,
        timer: None,
    });
    lp.set_active(id, true);
    let registered = started.and_then(|mut sock| {
        lp.registry()
            .register(
                &mut sock,
                id.token(),
                Interest::READABLE | Interest::WRITABLE,
            )
            .map(|()| sock)
    });
    let t = tcp(lp, id)?;
    match registered {
        // The first event tells whether the connect succeeded.
        Ok(sock) => t.sock = Some(sock),
        Err(e) => {
            if let Some(c) = t.connect.as_mut() {
                c.last_error = Some(e.into());
            }
            connect_next(lp, id); // no address left: fails it, from the loop
        }
    }
    Ok(id)
}

/// Tries the next address of a connect in progress, or fails it if none is left.
fn connect_next(lp: &mut Loop, id: RawId) {
    loop {
        let Ok(t) = tcp(lp, id) else { return };
        let Some(c) = t.connect.as_mut() else { return };
        let Some(addr) = c.rest.pop_front() else {
            let err = c
                .last_error
                .take()
                .unwrap_or(Error::InvalidState("no address"));
            fail_connect(lp, id, err);
            return;
        };
        let result = mio::net::TcpStream::connect(addr).and_then(|sock| {
            let mut sock = StreamSock::Tcp(sock);
            lp.registry()
                .register(
                    &mut sock,
                    id.token(),
                    Interest::READABLE | Interest::WRITABLE,
                )
                .map(|()| sock)
        });
        let Ok(t) = tcp(lp, id) else { return };
        match result {
            Ok(sock) => {
                t.sock = Some(sock);
                return;
            }
            Err(e) => {
                if let Some(c) = t.connect.as_mut() {
                    c.last_error = Some(e.into());
                }
            }
        }
    }
}

/// Ends a connect in progress with `err`: the socket is dropped, queued writes fail, the
/// connect callback runs from the loop. The handle stays open for the user to close.
fn fail_connect(lp: &mut Loop, id: RawId, err: Error) {
    let Ok(t) = tcp(lp, id) else { return };
    let Some(c) = t.connect.take() else { return };
    let sock = t.sock.take();
    let reqs: Vec<_> = t.reqs.drain(..).collect();
    t.out.clear();
    t.out_bytes = 0;
    t.write_error = Some(err.clone());
    if let Some(mut sock) = sock {
        let _ = lp.registry().deregister(&mut sock);
    }
    if let Some(timer) = c.timer {
        timer.close(lp);
    }
    for (_, cb) in reqs {
        lp.complete(cb, Err(err.clone()));
    }
    lp.complete(c.cb, Err(err));
    update_active(lp, id);
}

/// Checks a connecting socket after an event: connected, failed, or not yet.
fn finish_connect(lp: &mut Loop, id: RawId) {
    let Ok(t) = tcp(lp, id) else { return };
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
            let Some(c) = t.connect.take() else { return };
            if let Some(timer) = c.timer {
                timer.close(lp);
            }
            lp.complete(c.cb, Ok(()));
            flush(lp, id);
            update_active(lp, id);
        }
        Err(e) => {
            if let Some(mut sock) = t.sock.take() {
                let _ = lp.registry().deregister(&mut sock);
            }
            if let Ok(Some(c)) = tcp(lp, id).map(|t| t.connect.as_mut()) {
                c.last_error = Some(e.into());
            }
            connect_next(lp, id);
        }
    }
}

pub(crate) fn on_event(lp: &mut Loop, id: RawId, event: &Event) {
    let Ok(t) = tcp(lp, id) else { return };
    if t.connect.is_some() {
        finish_connect(lp, id);
        return;
    }
    if event.is_writable() || event.is_error() {
        flush(lp, id);
    }
    if event.is_readable() || event.is_read_closed() || event.is_error() {
        read_loop(lp, id, !event.is_read_closed());
    }
}

/// Reads from a handle served from the `ready_again` list (no event at hand).
pub(crate) fn read_some(lp: &mut Loop, id: RawId) {
    read_loop(lp, id, false);
}

/// Reads and delivers data until `WouldBlock`, a short read (when `short_read_drains`),
/// EOF, an error, `stop_read`, or the budget.
fn read_loop(lp: &mut Loop, id: RawId, short_read_drains: bool) {
    let mut budget = READ_BUDGET;
    loop {
        match tcp(lp, id) {
            Ok(t) if t.reading && t.sock.is_some() && t.connect.is_none() => {}
            _ => return,
        }
        let mut buf = lp.take_read_buf();
        let room = buf.len();
        let res = match tcp(lp, id).map(|t| t.sock.as_mut()) {
            Ok(Some(sock)) => sock.read(&mut buf[..]),
            _ => Ok(0), // unreachable: checked above, nothing ran in between
        };
        let (result, n) = match res {
            Ok(0) => match tcp(lp, id).ok().and_then(|t| lost_connection(t)) {
                Some(e) => (Err(e), 0),
                None => (Ok(None), 0),
            },
            Ok(n) => (Ok(Some(buf.split_to(n).freeze())), n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                lp.put_read_buf(buf);
                return;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                lp.put_read_buf(buf);
                continue;
            }
            Err(e) => (Err(Error::from(e)), 0),
        };
        lp.put_read_buf(buf);
        let finished = !matches!(result, Ok(Some(_)));
        let Ok(t) = tcp(lp, id) else { return };
        let epoch = t.read_epoch;
        let Some(mut cb) = t.read_cb.take() else {
            return;
        };
        if finished {
            // End of stream or error: reading stops, as in libuv.
            t.reading = false;
            t.read_epoch += 1;
            update_active(lp, id);
        }
        cb(lp, Tcp(id), result);
        if finished {
            return;
        }
        match tcp(lp, id) {
            Ok(t) if t.read_epoch == epoch && t.read_cb.is_none() => t.read_cb = Some(cb),
            _ => {}
        }
        if n < room && short_read_drains {
            return; // the socket is drained; new data brings a new edge
        }
        budget = budget.saturating_sub(n);
        if budget == 0 {
            lp.ready_again.push(id);
            return;
        }
    }
}

/// The error a read reports instead of end of stream. The kernel reports a connection's
/// error (a reset, a timeout) once, to whichever call comes first, and reads return 0
/// after it: when a write got it (a flush on the error event, or a write from a read
/// callback), the reader must still see the reset, not a clean EOF. `EPIPE` is not such
/// an error: it only means the error was reported already.
fn lost_connection(t: &TcpState) -> Option<Error> {
    t.write_error
        .clone()
        .filter(|e| e.io_kind().is_some_and(|k| k != io::ErrorKind::BrokenPipe))
}

/// Writes queued data until the queue is empty or the socket would block, completes the
/// requests that were fully written, and performs a pending shutdown once empty.
fn flush(lp: &mut Loop, id: RawId) {
    let Ok(t) = tcp(lp, id) else { return };
    if t.connect.is_some() {
        return;
    }
    let Some(sock) = t.sock.as_mut() else { return };
    let mut failed = None;
    while !t.out.is_empty() {
        let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
        let mut count = 0;
        for (slot, buf) in slices.iter_mut().zip(t.out.iter()) {
            *slot = IoSlice::new(buf);
            count += 1;
        }
        match sock.write_vectored(&slices[..count]) {
            Ok(n) => {
                t.written += n as u64;
                t.out_bytes -= n;
                let mut left = n;
                while left > 0 {
                    let Some(front) = t.out.front_mut() else {
                        break;
                    };
                    if front.len() <= left {
                        left -= front.len();
                        t.out.pop_front();
                    } else {
                        front.advance(left);
                        left = 0;
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                failed = Some(Error::from(e));
                break;
            }
        }
    }
    let mut done = Vec::new();
    if let Some(err) = failed {
        t.out.clear();
        t.out_bytes = 0;
        t.write_error = Some(err.clone());
        done.extend(t.reqs.drain(..).map(|(_, cb)| (cb, Err(err.clone()))));
    } else {
        while t.reqs.front().is_some_and(|(end, _)| *end <= t.written) {
            if let Some((_, cb)) = t.reqs.pop_front() {
                done.push((cb, Ok(())));
            }
        }
    }
    if t.out.is_empty() && matches!(t.shutdown, ShutdownState::Pending(_)) {
        let result = match (&t.write_error, t.sock.as_ref()) {
            (Some(e), _) => Err(e.clone()),
            (None, Some(sock)) => sock.shutdown_write().map_err(Error::from),
            (None, None) => Err(Error::InvalidState("not connected")),
        };
        if let ShutdownState::Pending(cb) = std::mem::replace(&mut t.shutdown, ShutdownState::Done)
        {
            done.push((cb, result));
        }
    }
    for (cb, result) in done {
        lp.complete(cb, result);
    }
    update_active(lp, id);
}

// ---- listener ----

pub(crate) struct ListenerState {
    pub(crate) sock: ListenSock,
    cb: Option<ConnectionCb>,
    epoch: u64,
}

fn listener(lp: &mut Loop, id: RawId) -> Result<&mut ListenerState> {
    match lp.slot_mut(id).map(|s| &mut s.state) {
        Some(State::Listener(l)) => Ok(l),
        _ => Err(Error::Closed),
    }
}

/// Options for [`TcpListener::bind_with`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ListenOptions {
    /// Listen backlog (default 1024).
    pub backlog: i32,
    /// Set `SO_REUSEPORT`, so several loops (threads) can each bind the same port and
    /// the kernel spreads connections across them.
    pub reuse_port: bool,
    /// For an IPv6 address: accept IPv6 only (`IPV6_V6ONLY`, default true).
    pub only_v6: bool,
}

impl Default for ListenOptions {
    fn default() -> Self {
        ListenOptions {
            backlog: BACKLOG,
            reuse_port: false,
            only_v6: true,
        }
    }
}

impl TcpListener {
    /// Binds to `addr` (IPv4 or IPv6; port 0 picks an ephemeral port, see
    /// [`local_addr`](TcpListener::local_addr)) with `SO_REUSEADDR` and a backlog of 1024.
    ///
    /// # Errors
    /// [`Error::Io`]: address in use, permission denied, ...
    pub fn bind(lp: &mut Loop, addr: SocketAddr) -> Result<TcpListener> {
        TcpListener::bind_with(lp, addr, &ListenOptions::default())
    }

    /// Binds with explicit [`ListenOptions`].
    ///
    /// # Errors
    /// [`Error::Io`]: address in use, permission denied, ...
    pub fn bind_with(lp: &mut Loop, addr: SocketAddr, opts: &ListenOptions) -> Result<TcpListener> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        if opts.reuse_port {
            socket.set_reuse_port(true)?;
        }
        if addr.is_ipv6() {
            socket.set_only_v6(opts.only_v6)?;
        }
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(opts.backlog)?;
        let sock = mio::net::TcpListener::from_std(socket.into());
        Ok(TcpListener::insert(lp, ListenSock::Tcp(sock)))
    }

    /// Adds a bound, listening socket (TCP or Unix-domain) as a listener handle.
    pub(crate) fn insert(lp: &mut Loop, sock: ListenSock) -> TcpListener {
        let id = lp.insert(State::Listener(Box::new(ListenerState {
            sock,
            cb: None,
            epoch: 0,
        })));
        TcpListener(id)
    }

    /// The bound address (with the real port when bound to port 0).
    ///
    /// # Errors
    /// [`Error::Closed`], or the OS error.
    pub fn local_addr(self, lp: &Loop) -> Result<SocketAddr> {
        match lp.slot(self.0).map(|s| &s.state) {
            Some(State::Listener(l)) => Ok(l
                .sock
                .as_tcp()
                .ok_or(Error::InvalidState("not a TCP listener"))?
                .local_addr()?),
            _ => Err(Error::Closed),
        }
    }

    /// Starts accepting: `cb` runs from the loop with each accepted [`Tcp`], or with the
    /// error of a failed accept (for example out of file descriptors; the listener keeps
    /// listening, and pending connections are tried again at the next incoming one).
    ///
    /// # Errors
    /// [`Error::Closed`], [`Error::InvalidState`] if already listening, or a
    /// registration error.
    pub fn listen(
        self,
        lp: &mut Loop,
        cb: impl FnMut(&mut Loop, TcpListener, Result<Tcp>) + 'static,
    ) -> Result<()> {
        let registry = lp.registry().try_clone()?;
        let l = listener(lp, self.0)?;
        if l.epoch > 0 {
            return Err(Error::InvalidState("already listening"));
        }
        registry.register(&mut l.sock, self.0.token(), Interest::READABLE)?;
        l.cb = Some(Box::new(cb));
        l.epoch += 1;
        lp.set_active(self.0, true);
        lp.ready_again.push(self.0);
        Ok(())
    }

    /// Stops listening and releases the socket at once. Does nothing on a closed listener.
    pub fn close(self, lp: &mut Loop) {
        if let Some(State::Listener(mut l)) = lp.remove(self.0) {
            let _ = lp.registry().deregister(&mut l.sock);
        }
    }

    /// The listener no longer keeps [`Loop::run`] alive.
    ///
    /// # Errors
    /// [`Error::Closed`].
    pub fn unref(self, lp: &mut Loop) -> Result<()> {
        lp.set_referenced(self.0, false)
    }
}

pub(crate) fn on_listener_event(lp: &mut Loop, id: RawId) {
    for _ in 0..ACCEPT_BUDGET {
        let Ok(l) = listener(lp, id) else { return };
        let epoch = l.epoch;
        if l.cb.is_none() {
            return;
        }
        let accepted = match l.sock.accept() {
            Ok(sock) => Tcp::register(lp, sock),
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
        let Ok(l) = listener(lp, id) else { return };
        let Some(mut cb) = l.cb.take() else { return };
        cb(lp, TcpListener(id), accepted);
        if let Ok(l) = listener(lp, id)
            && l.epoch == epoch
            && l.cb.is_none()
        {
            l.cb = Some(cb);
        }
        if failed {
            return;
        }
    }
    lp.ready_again.push(id);
}
