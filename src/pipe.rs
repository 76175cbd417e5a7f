//! Unix-domain stream handles: `PipeListener` (bind, listen, accept) and `Pipe` (a
//! connected stream), like libuv's `uv_pipe_t`.
//!
//! A `Pipe` is the same handle as a [`Tcp`] over another kind of socket: it shares
//! Tcp's state, queue, flush, read, shutdown and close logic (`tcp.rs`), so the two
//! behave the same in every respect the `Stream` trait describes. Only creating and
//! addressing the socket differ, and live here.

use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::event_loop::Loop;
use crate::handle::{RawId, State, handle_fmt};
use crate::socket::{ListenSock, StreamSock};
use crate::stream::{ReadResult, Stream};
use crate::tcp::{self, Tcp, TcpListener};

/// A Unix-domain stream handle. Implements [`Stream`] with the semantics of [`Tcp`].
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

/// A listening Unix-domain socket handle.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PipeListener(pub(crate) RawId);
handle_fmt!(PipeListener, "pipe-listener");

impl Pipe {
    fn inner(self) -> Tcp {
        Tcp(self.0)
    }

    /// Starts connecting to the socket at `path`; `cb` runs from the loop with the
    /// result (a missing path or a refused connection is reported there). Writes made
    /// before the connection is established are queued.
    ///
    /// # Errors
    /// None at the call today; the `Result` leaves room for resource errors.
    pub fn connect(
        lp: &mut Loop,
        path: impl AsRef<Path>,
        cb: impl FnOnce(&mut Loop, Pipe, Result<()>) + 'static,
    ) -> Result<Pipe> {
        let started = mio::net::UnixStream::connect(path.as_ref()).map(StreamSock::Unix);
        let id =
            tcp::connect_started(lp, started, |id| Box::new(move |lp, r| cb(lp, Pipe(id), r)))?;
        Ok(Pipe(id))
    }

    /// Adopts a connected standard-library Unix stream (switched to non-blocking mode).
    ///
    /// # Errors
    /// [`Error::Io`] if the socket cannot be made non-blocking or registered.
    pub fn from_std(lp: &mut Loop, stream: std::os::unix::net::UnixStream) -> Result<Pipe> {
        stream.set_nonblocking(true)?;
        let sock = StreamSock::Unix(mio::net::UnixStream::from_std(stream));
        Ok(Pipe(Tcp::register(lp, sock)?.0))
    }

    /// Two connected pipes (`socketpair`), both on this loop.
    ///
    /// # Errors
    /// [`Error::Io`] if the sockets cannot be created or registered.
    pub fn pair(lp: &mut Loop) -> Result<(Pipe, Pipe)> {
        let (a, b) = mio::net::UnixStream::pair()?;
        let a = Tcp::register(lp, StreamSock::Unix(a))?;
        let b = match Tcp::register(lp, StreamSock::Unix(b)) {
            Ok(b) => b,
            Err(e) => {
                a.close(lp, |_, _| {});
                return Err(e);
            }
        };
        Ok((Pipe(a.0), Pipe(b.0)))
    }
}

impl Stream for Pipe {
    fn start_read<F>(self, lp: &mut Loop, mut cb: F) -> Result<()>
    where
        F: FnMut(&mut Loop, Self, ReadResult) + 'static,
    {
        self.inner()
            .start_read(lp, move |lp, t, r| cb(lp, Pipe(t.0), r))
    }

    fn stop_read(self, lp: &mut Loop) -> Result<()> {
        self.inner().stop_read(lp)
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
        self.inner()
            .write_vectored(lp, bufs, move |lp, t, r| cb(lp, Pipe(t.0), r))
    }

    fn try_write(self, lp: &mut Loop, data: &[u8]) -> Result<usize> {
        self.inner().try_write(lp, data)
    }

    fn shutdown<F>(self, lp: &mut Loop, cb: F) -> Result<()>
    where
        F: FnOnce(&mut Loop, Self, Result<()>) + 'static,
    {
        self.inner()
            .shutdown(lp, move |lp, t, r| cb(lp, Pipe(t.0), r))
    }

    fn close<F>(self, lp: &mut Loop, cb: F)
    where
        F: FnOnce(&mut Loop, Self) + 'static,
    {
        self.inner().close(lp, move |lp, t| cb(lp, Pipe(t.0)));
    }

    fn write_queue_size(self, lp: &Loop) -> usize {
        self.inner().write_queue_size(lp)
    }

    fn is_open(self, lp: &Loop) -> bool {
        self.inner().is_open(lp)
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
        Ok(PipeListener(
            TcpListener::insert(lp, ListenSock::Unix(sock)).0,
        ))
    }

    /// The path the listener is bound to.
    ///
    /// # Errors
    /// [`Error::Closed`], or the OS error.
    pub fn local_path(self, lp: &Loop) -> Result<PathBuf> {
        let Some(State::Listener(l)) = lp.slot(self.0).map(|s| &s.state) else {
            return Err(Error::Closed);
        };
        let unix = l
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
        TcpListener(self.0).listen(lp, move |lp, l, accepted| {
            cb(lp, PipeListener(l.0), accepted.map(|t| Pipe(t.0)));
        })
    }

    /// Stops listening and releases the socket at once. Does nothing on a closed listener.
    pub fn close(self, lp: &mut Loop) {
        TcpListener(self.0).close(lp);
    }

    /// The listener no longer keeps [`Loop::run`] alive.
    ///
    /// # Errors
    /// [`Error::Closed`].
    pub fn unref(self, lp: &mut Loop) -> Result<()> {
        TcpListener(self.0).unref(lp)
    }
}
