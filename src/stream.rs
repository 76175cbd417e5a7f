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

/// Data that [`Stream::write`] takes without copying: [`Bytes`], `Vec<u8>`, `String`,
/// `Box<[u8]>`, [`BytesMut`](bytes::BytesMut), and `'static` literals (`b"hello"`,
/// `"hello"`, `&b"hello"[..]`).
///
/// Borrowed data (a `&[u8]` that is not `'static`) must be copied, since the write
/// outlives the call: `Bytes::copy_from_slice(buf)`.
pub trait IntoBytes {
    /// Converts into `Bytes` (no copy for the types listed above).
    fn into_bytes(self) -> Bytes;
}

macro_rules! into_bytes_via_from {
    ($($ty:ty),*) => {
        $(impl IntoBytes for $ty {
            fn into_bytes(self) -> Bytes {
                Bytes::from(self)
            }
        })*
    };
}
into_bytes_via_from!(
    Bytes,
    Vec<u8>,
    String,
    Box<[u8]>,
    bytes::BytesMut,
    &'static [u8],
    &'static str
);

impl<const N: usize> IntoBytes for &'static [u8; N] {
    fn into_bytes(self) -> Bytes {
        Bytes::from_static(self)
    }
}

/// A bidirectional byte stream handle with libuv's callback semantics.
///
/// # The callback contract
/// - **From the loop, never inside a call.** No callback runs inside the call that
///   queued it (or inside any other API call): read, write, shutdown, connect and close
///   callbacks run from the loop.
/// - **Exactly once, in order.** If [`write`](Stream::write) or
///   [`shutdown`](Stream::shutdown) return an error their callback never runs; otherwise
///   it runs exactly once. Writes complete in the order they were made, and a shutdown
///   after the writes queued before it.
/// - **Reading.** The read callback runs with owned [`Bytes`] until
///   [`stop_read`](Stream::stop_read), the end of stream (`Ok(None)`) or an error; after
///   the end or an error, reading has stopped. Data that arrives while reading is stopped
///   waits in the transport (bounded by its buffers).
/// - **Reading after the end.** Once the read side has ended, `start_read` returns `Ok`
///   and its callback runs once, from the loop, with the same ending (`Ok(None)` or the
///   same error), whether or not an earlier reader heard it.
/// - **Connect failure** ([`Tcp::connect`](crate::Tcp::connect) and the other connecting
///   constructors, also [`Tls::connect`](crate::Tls::connect)): the connect callback
///   runs first. Queued writes, then the shutdown and the drain watcher, stay queued
///   while it runs (a `close` inside it cancels them); otherwise they then fail with the
///   connect's error, in order. This holds also when the failure is known inside the
///   constructor (no address to try): requests made before the connect callback runs
///   queue. A reader started before the connect gets that error last. Nothing stays
///   active afterwards; the handle stays open until closed.
/// - **Close.** [`close`](Stream::close) releases the handle at once: a pending connect
///   callback, then the queued writes and a pending shutdown complete with
///   [`Error::Cancelled`](crate::Error::Cancelled) (a connect whose failure was already
///   known keeps its error), then the close callback runs. A read callback never runs
///   after `close`. `close` on a closed handle does nothing; every other call on a
///   closed or stale handle returns [`Error::Closed`](crate::Error::Closed).
/// - **No loss, bounded memory.** `write` never blocks and never drops data: whatever the
///   transport cannot take now is queued, and
///   [`write_queue_size`](Stream::write_queue_size) says how much, so a server can stop
///   reading a peer that does not read its replies. A write's callback reports `Ok` once
///   its bytes were handed to the transport (for TCP: the kernel); a reset afterwards can
///   still lose them, as with any socket.
/// - **`Loop::run` returns** once nothing is active: a handle is active while it reads,
///   connects or has requests in flight.
///
/// The property tests `tests/loop_props.rs` (`Tcp`, `Pipe`, `Timer` over loopback) and
/// `tests/tls_props.rs` (`Tls` over [`Duplex`](crate::Duplex) with injected faults) check
/// this contract against generated call orders.
pub trait Stream: Copy + std::fmt::Debug + 'static {
    /// Starts delivering data to `cb`, replacing any previous read callback. After the
    /// end of stream or an error, `cb` hears that ending once (see the contract).
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
    /// the error that stopped it. `data` is anything [`IntoBytes`] (`b"literal"`,
    /// `Vec<u8>`, `Bytes`, ...); copy borrowed data with `Bytes::copy_from_slice`.
    ///
    /// # Errors
    /// [`Error::Closed`](crate::Error::Closed) on a closed handle; the error that broke
    /// the stream, once one did (a failed connect, a failed write: the same error every
    /// time); [`Error::InvalidState`](crate::Error::InvalidState) after `shutdown`.
    fn write<F>(self, lp: &mut Loop, data: impl IntoBytes, cb: F) -> Result<()>
    where
        F: FnOnce(&mut Loop, Self, Result<()>) + 'static,
    {
        self.write_vectored(lp, std::iter::once(data.into_bytes()), cb)
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
    /// how many bytes of `data` were taken (0 if it would block, writes are queued, or
    /// the stream is not connected yet).
    ///
    /// # Errors
    /// As [`write`](Stream::write), and the transport's error (which then breaks the
    /// stream for later writes).
    fn try_write(self, lp: &mut Loop, data: &[u8]) -> Result<usize>;

    /// After all queued writes, half-closes the stream (no more writes; reading goes on).
    ///
    /// # Errors
    /// [`Error::Closed`](crate::Error::Closed) on a closed handle; the error that broke
    /// the stream, once one did; [`Error::InvalidState`](crate::Error::InvalidState) if
    /// already shut down.
    fn shutdown<F>(self, lp: &mut Loop, cb: F) -> Result<()>
    where
        F: FnOnce(&mut Loop, Self, Result<()>) + 'static;

    /// Calls `cb` once, from the loop, when [`write_queue_size`](Stream::write_queue_size)
    /// is at or below `level` (on the next iteration if it already is): the producer's
    /// "drain" event. A failure of the stream gives `Err` with that error, a close
    /// `Err(`[`Cancelled`](crate::Error::Cancelled)`)`; a second call replaces the first
    /// watcher, which then gets `Cancelled`.
    ///
    /// The producer pattern: write while the queue is under a high-water mark, then wait
    /// for it to drain to a low one.
    ///
    /// ```
    /// use biotls::{Loop, Stream};
    /// use biotls::bytes::Bytes;
    ///
    /// /// Writes `left` more bytes to `s` in `chunk`s, never queueing much more than
    /// /// 1 MiB, then shuts it down.
    /// fn produce<S: Stream>(lp: &mut Loop, s: S, chunk: Bytes, mut left: usize) {
    ///     while left > 0 && s.write_queue_size(lp) < 1 << 20 {
    ///         let n = chunk.len().min(left);
    ///         if s.write(lp, chunk.slice(..n), |_, _, _| {}).is_err() {
    ///             return; // the stream failed
    ///         }
    ///         left -= n;
    ///     }
    ///     if left == 0 {
    ///         let _ = s.shutdown(lp, |lp, s, _| s.close(lp, |_, _| {}));
    ///     } else {
    ///         let _ = s.on_drain(lp, 256 << 10, move |lp, s, r| match r {
    ///             Ok(()) => produce(lp, s, chunk, left),
    ///             Err(_) => s.close(lp, |_, _| {}),
    ///         });
    ///     }
    /// }
    /// # let mut lp = Loop::new()?;
    /// # let (a, b) = biotls::Duplex::pair(&mut lp, 64 << 10)?;
    /// # let got = std::rc::Rc::new(std::cell::Cell::new(0));
    /// # let g = got.clone();
    /// # b.start_read(&mut lp, move |lp, b, r| match r.unwrap() {
    /// #     Some(d) => g.set(g.get() + d.len()),
    /// #     None => b.close(lp, |_, _| {}),
    /// # })?;
    /// produce(&mut lp, a, Bytes::from(vec![7u8; 64 << 10]), 8 << 20);
    /// # lp.run()?;
    /// # assert_eq!(got.get(), 8 << 20);
    /// # Ok::<(), biotls::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Closed`](crate::Error::Closed) on a closed handle.
    fn on_drain<F>(self, lp: &mut Loop, level: usize, cb: F) -> Result<()>
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

    /// The handle's identity in its loop, for the crate's own stream handles (`None`
    /// for other implementations). A [`Tls`](crate::Tls) uses it to own its inner
    /// stream: while wrapped, the inner stream's reading and writing calls return
    /// [`Error::InvalidState`](crate::Error::InvalidState) unless the `Tls` makes them.
    fn handle_id(self) -> Option<crate::HandleId> {
        None
    }
}
