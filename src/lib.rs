//! # biotls
//!
//! libuv-style callback handles on [`mio`], and a [`Tls`] handle that wraps any stream
//! handle by pumping an OpenSSL memory-BIO pair. OpenSSL never touches a socket.
//!
//! ```text
//!   socket (mio, non-blocking)        memory BIO pair              plaintext
//!   ------------------------   rx  +-----------------+         +-----------------+
//!   readable -> read() -----------> |                 | ssl_read |  read callback  |
//!                                  |   OpenSSL SSL   | -------> |  (Bytes|EOF|Err)|
//!   writable <- writev() <--------- |                 | <------- | write(data, cb) |
//!                              tx  +-----------------+ssl_write +-----------------+
//! ```
//!
//! ## Layers
//!
//! 1. [`Loop`]: a single-threaded event loop that owns every handle's state, the timers
//!    and a queue of deferred completions. Run it with [`Loop::run`],
//!    [`Loop::run_once`] or [`Loop::run_nowait`].
//! 2. Handles: [`Tcp`], [`TcpListener`], [`Pipe`], [`PipeListener`], [`Duplex`] (an
//!    in-memory stream pair), [`Timer`], [`Async`], [`Signal`], small `Copy` ids. Every callback receives `&mut Loop` and the handle, so it can act on any
//!    handle; an id that outlived its handle gives [`Error::Closed`], never another
//!    handle's state.
//! 3. [`Stream`]: the interface of stream handles (`start_read`, `stop_read`, `write`,
//!    `shutdown`, `close`, `write_queue_size`, `on_drain`) with libuv's callback
//!    contract (see the trait's docs).
//! 4. [`tls::TlsSession`]: TLS without I/O, an OpenSSL `SSL` over in-memory buffers.
//! 5. [`Tls`]: a session pumped over any inner `Stream`, itself a `Stream`: code written
//!    against the trait (such as [`echo`]) runs over TCP, a Unix-domain [`Pipe`], TLS, or
//!    TLS inside TLS.
//!
//! ## Walk-through
//!
//! A loop and a listener; each accepted connection is wrapped in TLS and echoed:
//!
//! ```no_run
//! use biotls::echo::{echo, EchoOptions};
//! use biotls::tls::{Tls, TlsAcceptor};
//! use biotls::{Loop, TcpListener};
//!
//! let acceptor = TlsAcceptor::from_pem_files("certs/server.pem", "certs/server.key")?;
//! let mut lp = Loop::new()?;
//! let listener = TcpListener::bind(&mut lp, "127.0.0.1:4433".parse().unwrap())?;
//! listener.listen(&mut lp, move |lp, _listener, accepted| {
//!     let Ok(tcp) = accepted else { return };
//!     match Tls::server(lp, tcp, &acceptor) {
//!         Ok(tls) => { let _ = echo(lp, tls, EchoOptions::default()); }
//!         Err(e) => eprintln!("TLS setup failed: {e}"),
//!     }
//! })?;
//! lp.run()?;
//! # Ok::<(), biotls::Error>(())
//! ```
//!
//! The client side is one call, [`Tls::connect`] (resolve, connect, handshake); writes
//! made meanwhile are queued. [`cookbook`] has complete programs for the common tasks.
//!
//! ## Data path
//!
//! Read: the socket is read into a per-loop buffer, and what was read is split off as
//! [`Bytes`](bytes::Bytes) without copying; a [`Tcp`] read callback gets it as is. A
//! [`Tls`] handle queues those `Bytes` for OpenSSL (its BIO read is the one copy), and
//! decrypts into a second per-loop buffer, split off again for the read callback. An idle
//! handle holds no read buffer.
//!
//! Write: [`Stream::write`] takes `Bytes` (no copy). A [`Tls`] handle gathers small
//! writes into records of up to 16 KiB, encrypts into one ciphertext buffer reserved for
//! the whole batch, and hands it to the inner stream as one write; [`Tcp`] writes its
//! queue with `writev`, straight from the queued `Bytes`. A write callback runs when the
//! last byte of that write was handed to the kernel.
//!
//! The memory BIO is the safe route: an `openssl::ssl::SslStream` over an in-memory
//! duplex (`Read` copies out of the queued ciphertext, `Write` appends to the output
//! buffer). The data path has two `unsafe` lines, for speed: the socket read (`recv`)
//! and `SSL_read` write into the spare capacity of the per-loop buffers, which are not
//! zero-filled first, and the bytes they report are then counted in
//! (`BytesMut::set_len`).
//!
//! ## The callback contract
//!
//! Every handle keeps libuv's contract (the details are in [`Stream`]'s and [`Timer`]'s
//! docs):
//! - callbacks run from the loop, never inside the call that queued them;
//! - every request a call accepted completes exactly once, in the order made: writes in
//!   order, a shutdown after the writes before it, the close callback last;
//! - a failed connect runs its callback first, then fails the queued writes and the
//!   shutdown with its error, in order, then tells a reader; nothing stays active;
//! - once the read side has ended, a reader started later hears the same ending once;
//! - a timer started during a timer pass runs after the next poll (a 0 ms timer restarted
//!   from its own callback cannot starve I/O); deadlines too large to represent mean
//!   "never";
//! - each pass of deferred completions runs only what was queued before it, and the loop
//!   polls once per iteration;
//! - [`Loop::run`] returns once nothing is active. Dropping a `Loop` drops pending
//!   callbacks without calling them.
//!
//! ## Errors
//!
//! Every failure is an [`Error`], returned by the call that could not be queued or given
//! to the callback of the request that failed. TLS failures are typed: a refused
//! certificate carries OpenSSL's verify code and a [`VerifyKind`](error::VerifyKind), a
//! failed handshake the [`TlsAlert`](error::TlsAlert) sent or received, a timeout which
//! [`Timeout`](error::Timeout) expired (see [`error`] for matching and printing).
//!
//! Nothing a peer sends can panic the loop: a bad peer fails its own connection and the
//! loop keeps serving the others.
#![deny(missing_docs, missing_debug_implementations, rust_2018_idioms)]
// `deny`, not `forbid`: the few OpenSSL calls the `openssl` crate leaves unsafe or
// unbound are allowed item by item, each with its safety argument.
#![deny(unsafe_code)]
#![doc(test(attr(deny(warnings))))]
#![cfg_attr(docsrs, feature(doc_cfg))]
mod async_handle;
pub mod cookbook;
mod drain;
pub mod duplex;
pub mod echo;
pub mod error;
mod event_loop;
mod handle;
mod listener;
mod pipe;
#[cfg(feature = "pki")]
#[cfg_attr(docsrs, doc(cfg(feature = "pki")))]
pub mod pki;
mod read_side;
pub mod signal;
mod socket;
mod stream;
mod stream_socket;
mod tcp;
mod timer;
pub mod tls;
mod work;
mod write_queue;

/// The `bytes` crate, whose [`Bytes`](bytes::Bytes) the stream API takes and gives.
pub use bytes;
/// The `openssl` crate, whose types the TLS API exposes (`SslRef`, `X509`, ...).
pub use openssl;

pub use async_handle::{Async, AsyncSender};
pub use duplex::Duplex;
pub use error::{Error, Result};
pub use event_loop::Loop;
pub use handle::HandleId;
pub use pipe::{Pipe, PipeListener};
pub use signal::Signal;
pub use stream::{IntoBytes, ReadResult, Stream};
pub use tcp::{ListenOptions, Tcp, TcpListener};
pub use timer::Timer;
pub use tls::Tls;
