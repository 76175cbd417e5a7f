//! The `Stream` trait: the interface shared by every stream handle.
//!
//! [`Tcp`](crate::Tcp) and [`Pipe`](crate::Pipe) implement it over a socket and
//! [`Tls`](crate::Tls) implements it over any other `Stream`, so code written against the
//! trait (an echo server, a protocol codec) runs over plain TCP, a Unix-domain socket,
//! TLS, or TLS inside TLS, unchanged.

use bytes::Bytes;

use crate::error::Result;
use crate::event_loop::Loop;

/// What a read callback receives: `Ok(Some(data))` for data, `Ok(None)` for a clean end of
/// stream, `Err(_)` for an error.
pub type ReadResult = Result<Option<Bytes>>;

/// A bidirectional byte stream handle with libuv's callback semantics.
///
/// # The callback contract
/// - The read callback never runs inside [`start_read`](Stream::start_read); it runs
///   from the loop, with owned [`Bytes`], until [`stop_read`](Stream::stop_read), the end
///   of stream (`Ok(None)`) or an error. After an error or the end of stream reading has
///   stopped; after an error the user still calls [`close`](Stream::close).
/// - If [`write`](Stream::write) or [`shutdown`](Stream::shutdown) return an error their
///   callback never runs; otherwise it runs exactly once, from the loop, never inside the
///   call that queued it. Writes complete in the order they were made.
/// - [`close`](Stream::close) releases the handle at once: queued writes (and a pending
///   shutdown) complete with [`Error::Cancelled`](crate::Error::Cancelled), then the close
///   callback runs. `close` on a closed handle does nothing; every other call on a closed
///   or stale handle returns [`Error::Closed`](crate::Error::Closed).
/// - `write` never blocks and never drops data: whatever the transport cannot take now is
///   queued, and [`write_queue_size`](Stream::write_queue_size) says how much, so a server
///   can stop reading a peer that does not read its replies.
pub trait Stream: Copy + std::fmt::Debug + 'static {
    /// Starts delivering data to `cb`, replacing any previous read callback.
    ///
    /// # Errors
    /// [`Error::Closed`](crate::Error::Closed) on a closed handle.
    fn start_read<F>(self, lp: &mut Loop, cb: F) -> Result<()>
    where
        F: FnMut(&mut Loop, Self, ReadResult) + 'static;

    /// Stops delivering data. Data that arrives meanwhile stays in the transport (bounded
    /// by its buffers) until reading starts again.
    ///
    /// # Errors
    /// [`Error::Closed`](crate::Error::Closed) on a closed handle.
    fn stop_read(self, lp: &mut Loop) -> Result<()>;

    /// Queues `data` for writing; `cb` runs once it was handed to the transport, or with
    /// the error that stopped it.
    ///
    /// # Errors
    /// [`Error::Closed`](crate::Error::Closed) on a closed handle,
    /// [`Error::InvalidState`](crate::Error::InvalidState) after `shutdown`.
    fn write<F>(self, lp: &mut Loop, data: impl Into<Bytes>, cb: F) -> Result<()>
    where
        F: FnOnce(&mut Loop, Self, Result<()>) + 'static,
    {
        self.write_vectored(lp, std::iter::once(data.into()), cb)
    }

    /// Queues several buffers as one write request (gathered into one `writev` where the
    /// transport allows); `cb` runs once for all of them.
    ///
    /// # Errors
    /// As [`write`](Stream::write).
    fn write_vectored<F>(
        self,
        lp: &mut Loop,
        bufs: impl IntoIterator<Item = Bytes>,
        cb: F,
    ) -> Result<()>
    where
        F: FnOnce(&mut Loop, Self, Result<()>) + 'static;

    /// Writes what the transport takes right now without queueing anything, and returns
    /// how many bytes of `data` were taken (0 if it would block or writes are queued).
    ///
    /// # Errors
    /// [`Error::Closed`](crate::Error::Closed), or the transport's error.
    fn try_write(self, lp: &mut Loop, data: &[u8]) -> Result<usize>;

    /// After all queued writes, half-closes the stream (no more writes; reading goes on).
    ///
    /// # Errors
    /// [`Error::Closed`](crate::Error::Closed) on a closed handle,
    /// [`Error::InvalidState`](crate::Error::InvalidState) if already shut down.
    fn shutdown<F>(self, lp: &mut Loop, cb: F) -> Result<()>
    where
        F: FnOnce(&mut Loop, Self, Result<()>) + 'static;

    /// Closes the handle at once (see the contract above); `cb` runs from the loop after
    /// the cancelled requests' callbacks. Does nothing on a closed handle.
    fn close<F>(self, lp: &mut Loop, cb: F)
    where
        F: FnOnce(&mut Loop, Self) + 'static;

    /// Bytes accepted by `write` and not yet handed to the kernel (for TLS: plaintext not
    /// yet encrypted, plus ciphertext held, plus the inner stream's queue). 0 when closed.
    fn write_queue_size(self, lp: &Loop) -> usize;

    /// Whether the handle is open (not closed, not stale).
    fn is_open(self, lp: &Loop) -> bool;
}
