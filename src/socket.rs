//! The sockets behind stream handles: TCP or Unix-domain, behind one type.
//!
//! [`Tcp`](crate::Tcp) and [`Pipe`](crate::Pipe) share one implementation of the queue,
//! flush, read, shutdown and accept logic (in `tcp.rs`); only the few calls that differ
//! between the two socket kinds are dispatched here. This module does no buffering and
//! calls no callbacks.

use std::io::{self, IoSlice, Read, Write};
use std::net::Shutdown;

use mio::event::Source;
use mio::{Interest, Registry, Token};

/// A connected (or connecting) stream socket.
#[derive(Debug)]
pub(crate) enum StreamSock {
    Tcp(mio::net::TcpStream),
    Unix(mio::net::UnixStream),
}

impl StreamSock {
    /// The TCP socket, for TCP-only options and addresses.
    pub(crate) fn as_tcp(&self) -> Option<&mio::net::TcpStream> {
        match self {
            StreamSock::Tcp(s) => Some(s),
            StreamSock::Unix(_) => None,
        }
    }

    pub(crate) fn take_error(&self) -> io::Result<Option<io::Error>> {
        match self {
            StreamSock::Tcp(s) => s.take_error(),
            StreamSock::Unix(s) => s.take_error(),
        }
    }

    /// Whether a non-blocking connect has completed (`Ok(false)`: still in progress).
    pub(crate) fn is_connected(&self) -> io::Result<bool> {
        let peer = match self {
            StreamSock::Tcp(s) => s.peer_addr().map(drop),
            StreamSock::Unix(s) => s.peer_addr().map(drop),
        };
        match peer {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub(crate) fn shutdown_write(&self) -> io::Result<()> {
        match self {
            StreamSock::Tcp(s) => s.shutdown(Shutdown::Write),
            StreamSock::Unix(s) => s.shutdown(Shutdown::Write),
        }
    }
}

impl Read for StreamSock {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            StreamSock::Tcp(s) => s.read(buf),
            StreamSock::Unix(s) => s.read(buf),
        }
    }
}

impl Write for StreamSock {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            StreamSock::Tcp(s) => s.write(buf),
            StreamSock::Unix(s) => s.write(buf),
        }
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            StreamSock::Tcp(s) => s.write_vectored(bufs),
            StreamSock::Unix(s) => s.write_vectored(bufs),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Source for StreamSock {
    fn register(&mut self, r: &Registry, token: Token, interests: Interest) -> io::Result<()> {
        match self {
            StreamSock::Tcp(s) => s.register(r, token, interests),
            StreamSock::Unix(s) => s.register(r, token, interests),
        }
    }

    fn reregister(&mut self, r: &Registry, token: Token, interests: Interest) -> io::Result<()> {
        match self {
            StreamSock::Tcp(s) => s.reregister(r, token, interests),
            StreamSock::Unix(s) => s.reregister(r, token, interests),
        }
    }

    fn deregister(&mut self, r: &Registry) -> io::Result<()> {
        match self {
            StreamSock::Tcp(s) => s.deregister(r),
            StreamSock::Unix(s) => s.deregister(r),
        }
    }
}

/// A listening socket.
#[derive(Debug)]
pub(crate) enum ListenSock {
    Tcp(mio::net::TcpListener),
    Unix(mio::net::UnixListener),
}

impl ListenSock {
    pub(crate) fn as_tcp(&self) -> Option<&mio::net::TcpListener> {
        match self {
            ListenSock::Tcp(l) => Some(l),
            ListenSock::Unix(_) => None,
        }
    }

    pub(crate) fn as_unix(&self) -> Option<&mio::net::UnixListener> {
        match self {
            ListenSock::Tcp(_) => None,
            ListenSock::Unix(l) => Some(l),
        }
    }

    pub(crate) fn accept(&self) -> io::Result<StreamSock> {
        match self {
            ListenSock::Tcp(l) => l.accept().map(|(s, _)| StreamSock::Tcp(s)),
            ListenSock::Unix(l) => l.accept().map(|(s, _)| StreamSock::Unix(s)),
        }
    }
}

impl Source for ListenSock {
    fn register(&mut self, r: &Registry, token: Token, interests: Interest) -> io::Result<()> {
        match self {
            ListenSock::Tcp(l) => l.register(r, token, interests),
            ListenSock::Unix(l) => l.register(r, token, interests),
        }
    }

    fn reregister(&mut self, r: &Registry, token: Token, interests: Interest) -> io::Result<()> {
        match self {
            ListenSock::Tcp(l) => l.reregister(r, token, interests),
            ListenSock::Unix(l) => l.reregister(r, token, interests),
        }
    }

    fn deregister(&mut self, r: &Registry) -> io::Result<()> {
        match self {
            ListenSock::Tcp(l) => l.deregister(r),
            ListenSock::Unix(l) => l.deregister(r),
        }
    }
}
