//! [`TlsStats`]: what one `Tls` handle has moved and negotiated, for logs and metrics.

use std::time::Duration;

/// Counters and negotiated parameters of one [`Tls`](super::Tls) handle, from
/// [`Tls::stats`](super::Tls::stats).
///
/// Byte counts are totals since the handle was created: plaintext as the application
/// sees it, ciphertext as the inner stream sees it (records, handshake messages, alerts),
/// so `ciphertext_out - plaintext_out` is the TLS overhead of the sending side.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TlsStats {
    /// Plaintext delivered to the read callback.
    pub plaintext_in: u64,
    /// Plaintext encrypted for sending.
    pub plaintext_out: u64,
    /// Ciphertext received from the inner stream.
    pub ciphertext_in: u64,
    /// Ciphertext handed to the inner stream.
    pub ciphertext_out: u64,
    /// From the handle's creation to the handshake's completion (`None` until then).
    pub handshake_duration: Option<Duration>,
    /// The protocol version, as OpenSSL names it (`"TLSv1.3"`).
    pub version: &'static str,
    /// The cipher suite's OpenSSL name.
    pub cipher: Option<String>,
    /// The ALPN protocol, if one was negotiated.
    pub alpn: Option<Vec<u8>>,
    /// Whether the handshake resumed an earlier session.
    pub resumed: bool,
}
