//! The crate's one error type.
//!
//! Errors reach the user in two ways: as the `Err` of a call that could not be queued
//! (a closed handle, a write after `shutdown`), and as the `Err` given to a callback when
//! an operation failed later (a reset connection, a failed handshake). Both use [`Error`].

use std::fmt;
use std::io;
use std::sync::Arc;

/// Everything that can go wrong in biotls.
///
/// `Error` is `Clone` (I/O errors are shared behind an `Arc`) because one failure can
/// complete several requests: a failed handshake is reported to the handshake callback
/// and to the read callback, and every queued write is cancelled with the same cause.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system I/O error on the transport (reset, refused, broken pipe, ...).
    #[error("I/O error: {0}")]
    Io(#[source] Arc<io::Error>),
    /// The handle was closed, or the id is stale (its handle is gone) or belongs to
    /// another loop.
    #[error("handle is closed")]
    Closed,
    /// The request was cancelled because its handle was closed before it completed.
    #[error("operation cancelled: handle closed")]
    Cancelled,
    /// A connect, handshake or idle timeout expired.
    #[error("{0} timed out")]
    TimedOut(&'static str),
    /// The call is not valid in the handle's current state (for example `write` after
    /// `shutdown`, or `start_read` while already reading).
    #[error("invalid state: {0}")]
    InvalidState(&'static str),
    /// The TLS handshake failed for a reason other than certificate verification
    /// (protocol error, no shared cipher, the peer closed during the handshake, ...).
    #[error("TLS handshake failed: {0}")]
    Handshake(String),
    /// The peer's certificate was rejected. The text is OpenSSL's verify result, for
    /// example "hostname mismatch" or "certificate has expired".
    #[error("certificate verify failed: {0}")]
    Verification(String),
    /// The transport reached end of stream after the handshake without the peer's
    /// TLS close_notify alert: the data may have been cut short by an attacker.
    #[error("TLS connection truncated: unexpected eof while reading (no close_notify)")]
    Truncated,
    /// A TLS protocol error after the handshake (a corrupted record, a fatal alert).
    #[error("TLS error: {0}")]
    Tls(String),
    /// Invalid configuration: an unreadable certificate or key, a bad address, ...
    #[error("configuration error: {0}")]
    Config(String),
}

impl Error {
    /// Returns the underlying I/O error kind, if this is an [`Error::Io`].
    pub fn io_kind(&self) -> Option<io::ErrorKind> {
        match self {
            Error::Io(e) => Some(e.kind()),
            _ => None,
        }
    }

    pub(crate) fn config(what: impl fmt::Display) -> Self {
        Error::Config(what.to_string())
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error::Io(Arc::new(e))
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
