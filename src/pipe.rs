//! Unix-domain stream handles: `PipeListener` (bind, listen, accept) and `Pipe` (a
//! connected stream), like libuv's `uv_pipe_t`.
//!
//! A `Pipe` is the same handle as a [`Tcp`](crate::Tcp) over another kind of socket: the
//! two share the stream-socket core (`stream_socket`) and the listener core
//! (`listener`), so they behave the same in every respect the `Stream` trait describes.
//! Only creating and addressing the socket differ, and live here.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::event_loop::Loop;
use crate::handle::{RawId, handle_fmt};
use crate::listener;
use crate::socket::{ListenSock, StreamSock};
use crate::stream::Stream;
use crate::stream_socket::{self, impl_socket_stream};

/// A Unix-domain stream handle. Implements [`Stream`] with the semantics of
/// [`Tcp`](crate::Tcp).
///
/// Created by [`PipeListener::listen`] (accepted connections), [`Pipe::connect`],
/// [`Pipe::pair`] or [`Pipe::from_std`].
///
/// # Examples
/// ```no_run
/// use biotls::{Loop, Pipe, Stream};
///
/// let mut lp = Loop::new()?;
/// let pipe = Pipe::connect(&mut lp, "/tmp/echo.sock", |lp, pipe, result| {
///     if let Err(e) = result {
///         eprintln!("connect failed: {e}");
///         pipe.close(lp, |_, _| {});
///     }
/// })?;
/// pipe.write(&mut lp, &b"hello\n"[..], |lp, pipe, _| pipe.close(lp, |_, _| {}))?;
/// lp.run()?;
/// # Ok::<(), biotls::Error>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Pipe(pub(crate) RawId);
handle_fmt!(Pipe, "pipe");
impl_socket_stream!(Pipe);

/// A listening Unix-domain socket handle.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PipeListener(pub(crate) RawId);
handle_fmt!(PipeListener, "pipe-listener");

impl Pipe {
    /// Starts connecting to the socket at `path`; `cb` runs from the loop with the
    /// result (a missing path or a refused connection is reported there), with the
    /// failure order of [`Tcp::connect`](crate::Tcp::connect). Writes made before the
    /// connection is established are queued.
    ///
    /// # Errors
    /// None at the call today; the `Result` leaves room for resource errors.
    pub fn connect(
        lp: &mut Loop,
        path: impl AsRef<Path>,
        cb: impl FnOnce(&mut Loop, Pipe, Result<()>) + 'static,
    ) -> Result<Pipe> {
        let started = mio::net::UnixStream::connect(path.as_ref()).map(StreamSock::Unix);
        let id = stream_socket::connect_started(lp, started, |id| {
            Box::new(move |lp, r| cb(lp, Pipe(id), r))
        });
        Ok(Pipe(id))
    }

    /// Adopts a connected standard-library Unix stream (switched to non-blocking mode).
    ///
    /// # Errors
    /// [`Error::Io`] if the socket cannot be made non-blocking or registered.
    pub fn from_std(lp: &mut Loop, stream: std::os::unix::net::UnixStream) -> Result<Pipe> {
        stream.set_nonblocking(true)?;
        let sock = StreamSock::Unix(mio::net::UnixStream::from_std(stream));
        Ok(Pipe(stream_socket::register(lp, sock)?))
    }

    /// Two connected pipes (`socketpair`), both on this loop.
    ///
    /// # Errors
    /// [`Error::Io`] if the sockets cannot be created or registered.
    pub fn pair(lp: &mut Loop) -> Result<(Pipe, Pipe)> {
        let (a, b) = mio::net::UnixStream::pair()?;
        let a = Pipe(stream_socket::register(lp, StreamSock::Unix(a))?);
        let b = match stream_socket::register(lp, StreamSock::Unix(b)) {
            Ok(b) => Pipe(b),
            Err(e) => {
                a.close(lp, |_, _| {});
                return Err(e);
            }
        };
        Ok((a, b))
    }

    /// The handle no longer keeps [`Loop::run`] alive.
    ///
    /// # Errors
    /// [`Error::Closed`].
    pub fn unref(self, lp: &mut Loop) -> Result<()> {
        lp.set_referenced(self.0, false)
    }
}

impl PipeListener {
    /// Binds a Unix-domain stream socket at `path` and listens (backlog 1024). The path
    /// must not exist; it is not removed on close.
    ///
    /// # Errors
    /// [`Error::Io`]: the path exists, permission denied, ...
    pub fn bind(lp: &mut Loop, path: impl AsRef<Path>) -> Result<PipeListener> {
        let sock = mio::net::UnixListener::bind(path.as_ref())?;
        Ok(PipeListener(listener::insert(lp, ListenSock::Unix(sock))))
    }

    /// The path the listener is bound to.
    ///
    /// # Errors
    /// [`Error::Closed`], or the OS error.
    pub fn local_path(self, lp: &Loop) -> Result<PathBuf> {
        let unix = listener::state_ref(lp, self.0)?
            .sock
            .as_unix()
            .ok_or(Error::InvalidState("not a Unix-domain listener"))?;
        unix.local_addr()?
            .as_pathname()
            .map(Path::to_path_buf)
            .ok_or(Error::InvalidState("unnamed socket"))
    }

    /// Starts accepting: `cb` runs from the loop with each accepted [`Pipe`], or with the
    /// error of a failed accept (the listener keeps listening).
    ///
    /// # Errors
    /// [`Error::Closed`], [`Error::InvalidState`] if already listening, or a
    /// registration error.
    pub fn listen(
        self,
        lp: &mut Loop,
        mut cb: impl FnMut(&mut Loop, PipeListener, Result<Pipe>) + 'static,
    ) -> Result<()> {
        listener::listen(
            lp,
            self.0,
            Box::new(move |lp, accepted| cb(lp, self, accepted.map(Pipe))),
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
