//! TCP handles: `TcpListener` (bind, listen, accept) and `Tcp` (a connected stream).
//!
//! Only what is particular to TCP lives here (creating sockets, addresses and socket
//! options); the stream behaviour is the core in `stream_socket`, and accepting is the
//! core in `listener`, both shared with the Unix-domain handles.

use std::net::SocketAddr;
use std::time::Duration;

use socket2::{Domain, Protocol, SockRef, Socket, Type};

use crate::error::{Error, Result};
use crate::event_loop::Loop;
use crate::handle::{RawId, handle_fmt};
use crate::listener;
use crate::socket::{ListenSock, StreamSock};
use crate::stream_socket::{self, impl_socket_stream};

/// Default listen backlog.
const BACKLOG: i32 = 1024;

/// A TCP stream handle, like libuv's `uv_tcp_t`. Implements [`Stream`](crate::Stream).
///
/// Created by [`TcpListener::listen`] (accepted connections), [`Tcp::connect`],
/// [`Tcp::connect_host`] or [`Tcp::from_std`].
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
impl_socket_stream!(Tcp);

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

/// The TCP socket of a `Tcp` handle.
fn tcp_sock(lp: &Loop, id: RawId) -> Result<&mio::net::TcpStream> {
    stream_socket::sock_ref(lp, id)?
        .as_tcp()
        .ok_or(Error::InvalidState("not a TCP socket"))
}

impl Tcp {
    /// Adopts a connected standard-library stream (switched to non-blocking mode).
    ///
    /// # Errors
    /// [`Error::Io`] if the socket cannot be made non-blocking or registered.
    pub fn from_std(lp: &mut Loop, stream: std::net::TcpStream) -> Result<Tcp> {
        stream.set_nonblocking(true)?;
        let sock = StreamSock::Tcp(mio::net::TcpStream::from_std(stream));
        Ok(Tcp(stream_socket::register(lp, sock)?))
    }

    /// Starts connecting to `addr`; `cb` runs from the loop with the result. Writes and a
    /// shutdown made before the connection is established are queued and performed once
    /// it is; reading may start at once.
    ///
    /// If the connect fails, `cb` runs first with the error; then (unless `cb` closed the
    /// handle) the queued writes and the shutdown fail with the same error, in order, and
    /// a reader hears it last. The handle stays open until closed, as after any failure.
    ///
    /// # Errors
    /// None at the call today (even a socket that cannot be created is reported to `cb`);
    /// the `Result` leaves room for resource errors.
    pub fn connect(
        lp: &mut Loop,
        addr: SocketAddr,
        cb: impl FnOnce(&mut Loop, Tcp, Result<()>) + 'static,
    ) -> Result<Tcp> {
        let id = stream_socket::connect_addrs(lp, [addr], |id| {
            Box::new(move |lp, r| cb(lp, Tcp(id), r))
        });
        Ok(Tcp(id))
    }

    /// Connects to the first of `addrs` that accepts, with Happy Eyeballs (RFC 8305):
    /// the addresses are tried in the order given, each 250 ms after the previous one
    /// started (or at once when it failed) while the earlier ones are still pending;
    /// the first to connect wins and the others are closed. `cb` runs with the result
    /// (the last error if none accepts), with the failure order of
    /// [`connect`](Tcp::connect). An empty list fails with
    /// [`Error::InvalidState`].
    ///
    /// # Errors
    /// None at the call: failures go to `cb`.
    pub fn connect_addrs(
        lp: &mut Loop,
        addrs: &[SocketAddr],
        cb: impl FnOnce(&mut Loop, Tcp, Result<()>) + 'static,
    ) -> Result<Tcp> {
        let id = stream_socket::connect_addrs(lp, addrs.iter().copied(), |id| {
            Box::new(move |lp, r| cb(lp, Tcp(id), r))
        });
        Ok(Tcp(id))
    }

    /// Resolves `host_port` (such as `"localhost:4433"`) on a worker thread (see
    /// [`Loop::queue_work`]), then connects with Happy Eyeballs as
    /// [`connect_addrs`](Tcp::connect_addrs) does, over the addresses interleaved by
    /// family (IPv6 and IPv4 alternate, the resolver's first family first); `cb` runs
    /// with the result (the last error if none accepts), with the failure order of
    /// [`connect`](Tcp::connect).
    ///
    /// # Errors
    /// None at the call: resolution and connection failures go to `cb`.
    pub fn connect_host(
        lp: &mut Loop,
        host_port: &str,
        cb: impl FnOnce(&mut Loop, Tcp, Result<()>) + 'static,
    ) -> Result<Tcp> {
        let id = stream_socket::connect_host(lp, host_port, |id| {
            Box::new(move |lp, r| cb(lp, Tcp(id), r))
        });
        Ok(Tcp(id))
    }

    /// Fails a connect still in progress after `timeout` with
    /// [`Error::TimedOut`]`(`[`Timeout::Connect`](crate::error::Timeout::Connect)`)`, with the failure order of
    /// [`connect`](Tcp::connect). Call it right after `connect`/`connect_host`; a
    /// timeout too large to represent means no limit.
    ///
    /// # Errors
    /// [`Error::Closed`], or [`Error::InvalidState`] if no connect is in progress.
    pub fn set_connect_timeout(self, lp: &mut Loop, timeout: Duration) -> Result<()> {
        stream_socket::set_connect_timeout(lp, self.0, timeout)
    }

    /// Local address of the socket.
    ///
    /// # Errors
    /// [`Error::Closed`], [`Error::InvalidState`] before the socket exists, or the OS error.
    pub fn local_addr(self, lp: &Loop) -> Result<SocketAddr> {
        Ok(tcp_sock(lp, self.0)?.local_addr()?)
    }

    /// Address of the peer.
    ///
    /// # Errors
    /// [`Error::Closed`], [`Error::InvalidState`] before the socket exists, or the OS error.
    pub fn peer_addr(self, lp: &Loop) -> Result<SocketAddr> {
        Ok(tcp_sock(lp, self.0)?.peer_addr()?)
    }

    /// Enables or disables Nagle's algorithm (`TCP_NODELAY`).
    ///
    /// # Errors
    /// [`Error::Closed`], [`Error::InvalidState`] before the socket exists, or the OS error.
    pub fn set_nodelay(self, lp: &Loop, nodelay: bool) -> Result<()> {
        Ok(tcp_sock(lp, self.0)?.set_nodelay(nodelay)?)
    }

    /// Sets `SO_LINGER`. `Some(Duration::ZERO)` makes `close` reset the connection.
    ///
    /// # Errors
    /// [`Error::Closed`], [`Error::InvalidState`] before the socket exists, or the OS error.
    pub fn set_linger(self, lp: &Loop, linger: Option<Duration>) -> Result<()> {
        Ok(SockRef::from(tcp_sock(lp, self.0)?).set_linger(linger)?)
    }

    /// Turns TCP keepalive on (`SO_KEEPALIVE`, first probe after `idle` without
    /// traffic; the kernel's defaults for the probe interval and count) or off (`None`),
    /// so a peer that vanished without a FIN or RST is noticed (as a read error).
    ///
    /// # Errors
    /// [`Error::Closed`], [`Error::InvalidState`] before the socket exists, or the OS error.
    pub fn set_keepalive(self, lp: &Loop, idle: Option<Duration>) -> Result<()> {
        let sock = SockRef::from(tcp_sock(lp, self.0)?);
        match idle {
            Some(idle) => sock.set_tcp_keepalive(&socket2::TcpKeepalive::new().with_time(idle))?,
            None => sock.set_keepalive(false)?,
        }
        Ok(())
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
        Ok(TcpListener(listener::insert(lp, ListenSock::Tcp(sock))))
    }

    /// Adopts a bound, listening standard-library socket (switched to non-blocking
    /// mode): one inherited from a parent process or passed by a service manager
    /// (socket activation).
    ///
    /// # Errors
    /// [`Error::Io`] if the socket cannot be made non-blocking.
    pub fn from_std(lp: &mut Loop, listener: std::net::TcpListener) -> Result<TcpListener> {
        listener.set_nonblocking(true)?;
        let sock = mio::net::TcpListener::from_std(listener);
        Ok(TcpListener(listener::insert(lp, ListenSock::Tcp(sock))))
    }

    /// The bound address (with the real port when bound to port 0).
    ///
    /// # Errors
    /// [`Error::Closed`], or the OS error.
    pub fn local_addr(self, lp: &Loop) -> Result<SocketAddr> {
        Ok(listener::state_ref(lp, self.0)?
            .sock
            .as_tcp()
            .ok_or(Error::InvalidState("not a TCP listener"))?
            .local_addr()?)
    }

    /// Starts accepting: `cb` runs from the loop with each accepted [`Tcp`], or with the
    /// error of a failed accept (for example out of file descriptors). After an error the
    /// listener keeps listening and tries again about 100 ms later, so connections
    /// waiting in the backlog are accepted once the cause has passed.
    ///
    /// # Errors
    /// [`Error::Closed`], [`Error::InvalidState`] if already listening, or a
    /// registration error.
    pub fn listen(
        self,
        lp: &mut Loop,
        mut cb: impl FnMut(&mut Loop, TcpListener, Result<Tcp>) + 'static,
    ) -> Result<()> {
        listener::listen(
            lp,
            self.0,
            Box::new(move |lp, accepted| cb(lp, self, accepted.map(Tcp))),
        )
    }

    /// Stops listening and releases the socket at once. Does nothing on a closed listener.
    pub fn close(self, lp: &mut Loop) {
        listener::close(lp, self.0);
    }

    /// The listener no longer keeps [`Loop::run`] alive.
    ///
    /// # Errors
    /// [`Error::Closed`].
    pub fn unref(self, lp: &mut Loop) -> Result<()> {
        lp.set_referenced(self.0, false)
    }
}
