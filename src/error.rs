//! The crate's one error type, [`Error`], and the types that detail its TLS variants.
//!
//! Errors reach the user in two ways: as the `Err` of a call that could not be queued
//! (a closed handle, a write after `shutdown`), and as the `Err` given to a callback when
//! an operation failed later (a reset connection, a failed handshake). Both use [`Error`].
//!
//! # Matching
//!
//! Every variant can be matched directly; the helpers [`Error::verify_kind`],
//! [`Error::alert`], [`Error::timeout`] and [`Error::io_kind`] answer the usual questions
//! without destructuring:
//!
//! ```
//! use biotls::Error;
//! use biotls::error::{Alert, TlsAlert, VerifyKind};
//!
//! fn advice(e: &Error) -> &'static str {
//!     match (e.verify_kind(), e.alert()) {
//!         (Some(VerifyKind::HostnameMismatch), _) => "the certificate is for another name",
//!         (Some(VerifyKind::UnknownIssuer | VerifyKind::SelfSigned), _) => "untrusted issuer",
//!         (Some(_), _) => "the certificate was refused",
//!         (None, Some(TlsAlert::Received(Alert::UNKNOWN_CA))) => "the peer does not trust us",
//!         (None, Some(TlsAlert::Sent(Alert::NO_APPLICATION_PROTOCOL))) => "no common ALPN",
//!         _ => "see the message",
//!     }
//! }
//! # assert_eq!(advice(&Error::Truncated), "see the message");
//! ```
//!
//! # Printing
//!
//! `Display` of every variant is a complete sentence of its own, so `{e}` is enough. No
//! text appears twice in a chain: [`Error::Io`] is transparent (its `Display` is the
//! `io::Error`'s, and [`source`](std::error::Error::source) continues below it), and the
//! other variants have no source. A chain printer such as
//!
//! ```
//! fn chain(e: &dyn std::error::Error) -> String {
//!     let mut text = e.to_string();
//!     let mut cause = e.source();
//!     while let Some(c) = cause {
//!         text.push_str(": ");
//!         text.push_str(&c.to_string());
//!         cause = c.source();
//!     }
//!     text
//! }
//! # let e = biotls::Error::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
//! # assert_eq!(chain(&e), e.to_string());
//! ```
//!
//! (or `anyhow`'s `{:#}`) shows each text once.

use std::fmt;
use std::io;
use std::sync::Arc;

/// Everything that can go wrong in biotls.
///
/// `Error` is `Clone` (payloads are shared behind an `Arc`) because one failure can
/// complete several requests: a failed handshake is reported to the handshake callback
/// and to the read callback, and every queued write is cancelled with the same cause. It
/// is three words (24 bytes on 64-bit targets), cheap to move.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system I/O error on the transport: a connection refused or reset, a
    /// broken pipe, an address in use, a failed `epoll` call. Transparent: `Display`
    /// is the `io::Error`'s text (Node: `ECONNRESET`, ...; see [`Error::io_kind`]).
    Io(Arc<io::Error>),
    /// The handle was closed, or the id is stale (its handle is gone) or belongs to
    /// another loop.
    Closed,
    /// The request was cancelled because its handle was closed before it completed.
    Cancelled,
    /// A connect, TLS handshake or idle timeout expired; [`Timeout`] says which. The
    /// handle is failed; close it.
    TimedOut(Timeout),
    /// The call is not valid in the handle's current state (for example `write` after
    /// `shutdown`, or `start_read` while already reading).
    InvalidState(&'static str),
    /// The TLS handshake failed for a reason other than our verification of the peer's
    /// certificate: a fatal alert sent or received (the peer refused our certificate, no
    /// common protocol version, cipher or ALPN protocol), a malformed message, or the
    /// transport ending before the handshake completed.
    Handshake(TlsFailure),
    /// We rejected the peer's certificate during the handshake (a client checking the
    /// server, or a server requiring client certificates); [`VerifyError`] carries
    /// OpenSSL's verify code and its [`VerifyKind`].
    Verification(VerifyError),
    /// The transport reached end of stream after the handshake without the peer's
    /// TLS close_notify alert: the data may have been cut short by an attacker.
    Truncated,
    /// A TLS failure after the handshake: a fatal alert received (with TLS 1.3, a
    /// server refusing the client's certificate shows up here, at the client's first
    /// read after its handshake completed) or sent (a corrupted record), or another
    /// protocol error.
    Tls(TlsFailure),
    /// Invalid configuration: an unreadable certificate or key, a bad address, ...
    Config(String),
    /// The stream under a [`Tls`](crate::Tls) handle was closed while the `Tls` still
    /// used it (someone closed the inner stream instead of the `Tls`). The `Tls` is
    /// failed; close it.
    TransportClosed,
}

impl Error {
    /// The I/O error kind, if this is an [`Error::Io`].
    pub fn io_kind(&self) -> Option<io::ErrorKind> {
        match self {
            Error::Io(e) => Some(e.kind()),
            _ => None,
        }
    }

    /// The kind of certificate verification failure, if this is an
    /// [`Error::Verification`].
    pub fn verify_kind(&self) -> Option<VerifyKind> {
        match self {
            Error::Verification(v) => Some(v.kind()),
            _ => None,
        }
    }

    /// The fatal TLS alert that ended the connection, and whether we sent or received
    /// it, for [`Error::Handshake`], [`Error::Tls`] and [`Error::Verification`] (where it
    /// is the alert we sent to refuse the certificate).
    pub fn alert(&self) -> Option<TlsAlert> {
        match self {
            Error::Handshake(f) | Error::Tls(f) => f.alert(),
            Error::Verification(v) => v.alert(),
            _ => None,
        }
    }

    /// Which timeout expired, if this is an [`Error::TimedOut`].
    pub fn timeout(&self) -> Option<Timeout> {
        match self {
            Error::TimedOut(t) => Some(*t),
            _ => None,
        }
    }

    pub(crate) fn config(what: impl fmt::Display) -> Self {
        Error::Config(what.to_string())
    }

    /// An [`Error::Tls`] with our own reason and no alert.
    pub(crate) fn tls(reason: impl Into<String>) -> Self {
        Error::Tls(TlsFailure::new(reason, None))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // Transparent: `source` continues below the `io::Error`, not with it.
            Error::Io(e) => fmt::Display::fmt(e, f),
            Error::Closed => f.write_str("handle is closed"),
            Error::Cancelled => f.write_str("operation cancelled: handle closed"),
            Error::TimedOut(t) => write!(f, "{t}"),
            Error::InvalidState(what) => write!(f, "invalid state: {what}"),
            Error::Handshake(failure) => write!(f, "TLS handshake failed: {failure}"),
            Error::Verification(v) => write!(f, "certificate verify failed: {v}"),
            Error::Truncated => f.write_str(
                "TLS connection truncated: unexpected eof while reading (no close_notify)",
            ),
            Error::Tls(failure) => write!(f, "TLS error: {failure}"),
            Error::Config(what) => write!(f, "configuration error: {what}"),
            Error::TransportClosed => {
                f.write_str("the stream under this TLS handle was closed while in use")
            }
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            // The `io::Error`'s text is our own `Display`; its cause comes next.
            Error::Io(e) => e.source(),
            // The TLS payloads are details of this error's text, not separate causes.
            _ => None,
        }
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error::Io(Arc::new(e))
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Which timeout expired, in [`Error::TimedOut`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Timeout {
    /// The TCP connect did not complete within
    /// [`Tcp::set_connect_timeout`](crate::Tcp::set_connect_timeout).
    Connect,
    /// The TLS handshake did not complete within
    /// [`Tls::set_handshake_timeout`](crate::Tls::set_handshake_timeout) (30 s by
    /// default).
    Handshake,
    /// No ciphertext moved in either direction for the time set with
    /// [`Tls::set_idle_timeout`](crate::Tls::set_idle_timeout).
    Idle,
}

impl fmt::Display for Timeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Timeout::Connect => "connect timed out",
            Timeout::Handshake => "TLS handshake timed out",
            Timeout::Idle => "idle timeout: no TLS traffic either way",
        })
    }
}

/// A TLS alert description (RFC 8446 section 6, RFC 5246 section 7.2, RFC 7301), by its
/// one-byte code on the wire.
///
/// The constants name the registered alerts; compare with them or match on them:
/// `Alert::UNKNOWN_CA`. Codes without a name are kept as they came.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Alert(u8);

/// Registered alert codes and names (IANA "TLS Alerts" registry).
const ALERT_NAMES: &[(u8, &str)] = &[
    (0, "close_notify"),
    (10, "unexpected_message"),
    (20, "bad_record_mac"),
    (21, "decryption_failed"),
    (22, "record_overflow"),
    (30, "decompression_failure"),
    (40, "handshake_failure"),
    (41, "no_certificate"),
    (42, "bad_certificate"),
    (43, "unsupported_certificate"),
    (44, "certificate_revoked"),
    (45, "certificate_expired"),
    (46, "certificate_unknown"),
    (47, "illegal_parameter"),
    (48, "unknown_ca"),
    (49, "access_denied"),
    (50, "decode_error"),
    (51, "decrypt_error"),
    (60, "export_restriction"),
    (70, "protocol_version"),
    (71, "insufficient_security"),
    (80, "internal_error"),
    (86, "inappropriate_fallback"),
    (90, "user_canceled"),
    (100, "no_renegotiation"),
    (109, "missing_extension"),
    (110, "unsupported_extension"),
    (111, "certificate_unobtainable"),
    (112, "unrecognized_name"),
    (113, "bad_certificate_status_response"),
    (114, "bad_certificate_hash_value"),
    (115, "unknown_psk_identity"),
    (116, "certificate_required"),
    (120, "no_application_protocol"),
    (121, "ech_required"),
];

impl Alert {
    /// `close_notify` (0): the orderly end of a connection; never an error here.
    pub const CLOSE_NOTIFY: Alert = Alert(0);
    /// `unexpected_message` (10).
    pub const UNEXPECTED_MESSAGE: Alert = Alert(10);
    /// `bad_record_mac` (20): a record failed to decrypt or authenticate.
    pub const BAD_RECORD_MAC: Alert = Alert(20);
    /// `record_overflow` (22).
    pub const RECORD_OVERFLOW: Alert = Alert(22);
    /// `handshake_failure` (40): no acceptable set of parameters (cipher, group, ...).
    pub const HANDSHAKE_FAILURE: Alert = Alert(40);
    /// `bad_certificate` (42).
    pub const BAD_CERTIFICATE: Alert = Alert(42);
    /// `unsupported_certificate` (43).
    pub const UNSUPPORTED_CERTIFICATE: Alert = Alert(43);
    /// `certificate_revoked` (44).
    pub const CERTIFICATE_REVOKED: Alert = Alert(44);
    /// `certificate_expired` (45).
    pub const CERTIFICATE_EXPIRED: Alert = Alert(45);
    /// `certificate_unknown` (46).
    pub const CERTIFICATE_UNKNOWN: Alert = Alert(46);
    /// `illegal_parameter` (47).
    pub const ILLEGAL_PARAMETER: Alert = Alert(47);
    /// `unknown_ca` (48): the certificate's issuer is not trusted.
    pub const UNKNOWN_CA: Alert = Alert(48);
    /// `access_denied` (49).
    pub const ACCESS_DENIED: Alert = Alert(49);
    /// `decode_error` (50): a message could not be parsed.
    pub const DECODE_ERROR: Alert = Alert(50);
    /// `decrypt_error` (51): a handshake signature or Finished check failed.
    pub const DECRYPT_ERROR: Alert = Alert(51);
    /// `protocol_version` (70): no protocol version in common.
    pub const PROTOCOL_VERSION: Alert = Alert(70);
    /// `insufficient_security` (71).
    pub const INSUFFICIENT_SECURITY: Alert = Alert(71);
    /// `internal_error` (80).
    pub const INTERNAL_ERROR: Alert = Alert(80);
    /// `inappropriate_fallback` (86).
    pub const INAPPROPRIATE_FALLBACK: Alert = Alert(86);
    /// `user_canceled` (90).
    pub const USER_CANCELED: Alert = Alert(90);
    /// `no_renegotiation` (100).
    pub const NO_RENEGOTIATION: Alert = Alert(100);
    /// `missing_extension` (109).
    pub const MISSING_EXTENSION: Alert = Alert(109);
    /// `unsupported_extension` (110).
    pub const UNSUPPORTED_EXTENSION: Alert = Alert(110);
    /// `unrecognized_name` (112): the server knows no host by the SNI name.
    pub const UNRECOGNIZED_NAME: Alert = Alert(112);
    /// `certificate_required` (116): a TLS 1.3 server required a client certificate
    /// and got none.
    pub const CERTIFICATE_REQUIRED: Alert = Alert(116);
    /// `no_application_protocol` (120): no ALPN protocol in common (RFC 7301).
    pub const NO_APPLICATION_PROTOCOL: Alert = Alert(120);

    /// The alert with this description code.
    pub const fn from_code(code: u8) -> Alert {
        Alert(code)
    }

    /// The description code on the wire.
    pub const fn code(self) -> u8 {
        self.0
    }

    /// The registered name (`"handshake_failure"`, `"unknown_ca"`, ...), or `None` for
    /// an unassigned code.
    pub fn name(self) -> Option<&'static str> {
        ALERT_NAMES
            .iter()
            .find(|(code, _)| *code == self.0)
            .map(|(_, name)| *name)
    }
}

impl fmt::Display for Alert {
    /// The registered name, or the code for an unassigned one.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "{}", self.0),
        }
    }
}

impl fmt::Debug for Alert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "Alert({name})"),
            None => write!(f, "Alert({})", self.0),
        }
    }
}

/// A fatal TLS alert and its direction: sent by us, or received from the peer.
///
/// ```
/// use biotls::error::{Alert, TlsAlert};
///
/// let a = TlsAlert::Received(Alert::UNKNOWN_CA);
/// assert_eq!(a.to_string(), "received alert unknown_ca");
/// assert!(matches!(a, TlsAlert::Received(Alert::UNKNOWN_CA)));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TlsAlert {
    /// We sent this alert: we refused something the peer sent.
    Sent(Alert),
    /// The peer sent this alert: it refused something we sent.
    Received(Alert),
}

impl TlsAlert {
    /// The alert, whichever way it went.
    pub fn alert(self) -> Alert {
        match self {
            TlsAlert::Sent(a) | TlsAlert::Received(a) => a,
        }
    }

    /// Whether we sent it.
    pub fn is_sent(self) -> bool {
        matches!(self, TlsAlert::Sent(_))
    }
}

impl fmt::Display for TlsAlert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsAlert::Sent(a) => write!(f, "sent alert {a}"),
            TlsAlert::Received(a) => write!(f, "received alert {a}"),
        }
    }
}

/// The detail of an [`Error::Handshake`] or [`Error::Tls`]: OpenSSL's reason, and the
/// fatal alert if one was sent or received.
///
/// `Display` is the reason, followed by the alert in parentheses when there is one:
/// `no application protocol (sent alert no_application_protocol)`.
#[derive(Clone, PartialEq, Eq)]
pub struct TlsFailure(Arc<FailureInner>);

#[derive(PartialEq, Eq)]
struct FailureInner {
    reason: String,
    alert: Option<TlsAlert>,
}

impl TlsFailure {
    pub(crate) fn new(reason: impl Into<String>, alert: Option<TlsAlert>) -> Self {
        TlsFailure(Arc::new(FailureInner {
            reason: reason.into(),
            alert,
        }))
    }

    /// OpenSSL's reason (for example `"tlsv1 alert unknown ca"`, `"wrong version
    /// number"`, `"unexpected eof while reading"`), or ours.
    pub fn reason(&self) -> &str {
        &self.0.reason
    }

    /// The fatal alert that ended the connection, if any, and its direction.
    pub fn alert(&self) -> Option<TlsAlert> {
        self.0.alert
    }
}

impl fmt::Display for TlsFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.reason)?;
        if let Some(alert) = self.0.alert {
            write!(f, " ({alert})")?;
        }
        Ok(())
    }
}

impl fmt::Debug for TlsFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsFailure")
            .field("reason", &self.0.reason)
            .field("alert", &self.0.alert)
            .finish()
    }
}

/// What kind of certificate verification failure an [`Error::Verification`] is: OpenSSL's
/// verify codes (`X509_V_ERR_*`) grouped by what a user would do about them.
///
/// The names in parentheses are the `err.code` Node.js gives the same failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum VerifyKind {
    /// The certificate is valid but for another host name or IP address than the one
    /// connected to (`X509_V_ERR_HOSTNAME_MISMATCH`, `X509_V_ERR_IP_ADDRESS_MISMATCH`;
    /// Node: `ERR_TLS_CERT_ALTNAME_INVALID`).
    HostnameMismatch,
    /// A certificate in the chain has expired (`X509_V_ERR_CERT_HAS_EXPIRED`; Node:
    /// `CERT_HAS_EXPIRED`).
    Expired,
    /// A certificate in the chain is not valid yet (`X509_V_ERR_CERT_NOT_YET_VALID`;
    /// Node: `CERT_NOT_YET_VALID`), often a clock that is wrong on one side.
    NotYetValid,
    /// The chain does not lead to a trusted CA: the issuer is missing or not trusted
    /// (`X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY`,
    /// `X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT`, `X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE`;
    /// Node: the same names without the prefix).
    UnknownIssuer,
    /// A self-signed certificate that is not trusted, as the peer's own certificate
    /// (`X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT`) or at the top of its chain
    /// (`X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN`; Node: the same names without the prefix).
    SelfSigned,
    /// A certificate in the chain has been revoked (`X509_V_ERR_CERT_REVOKED`; Node:
    /// `CERT_REVOKED`); only with CRL checking turned on.
    Revoked,
    /// Any other verify code: a bad signature, a CA flag or key usage missing, a chain
    /// too long, a rejection by a user-installed verify callback, ...
    Other,
}

impl VerifyKind {
    /// The kind of an OpenSSL verify code (`X509_V_ERR_*`, as returned by
    /// `SslRef::verify_result().as_raw()`).
    pub fn from_code(code: i32) -> VerifyKind {
        use openssl_sys as ffi;
        match code {
            ffi::X509_V_ERR_HOSTNAME_MISMATCH | ffi::X509_V_ERR_IP_ADDRESS_MISMATCH => {
                VerifyKind::HostnameMismatch
            }
            ffi::X509_V_ERR_CERT_HAS_EXPIRED => VerifyKind::Expired,
            ffi::X509_V_ERR_CERT_NOT_YET_VALID => VerifyKind::NotYetValid,
            ffi::X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY
            | ffi::X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT
            | ffi::X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE => VerifyKind::UnknownIssuer,
            ffi::X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT
            | ffi::X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN => VerifyKind::SelfSigned,
            ffi::X509_V_ERR_CERT_REVOKED => VerifyKind::Revoked,
            _ => VerifyKind::Other,
        }
    }
}

impl fmt::Display for VerifyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VerifyKind::HostnameMismatch => "hostname mismatch",
            VerifyKind::Expired => "expired",
            VerifyKind::NotYetValid => "not yet valid",
            VerifyKind::UnknownIssuer => "unknown issuer",
            VerifyKind::SelfSigned => "self-signed",
            VerifyKind::Revoked => "revoked",
            VerifyKind::Other => "other",
        })
    }
}

/// Names of the verify codes whose value is the same in every OpenSSL version this crate
/// builds with (24 and 79 changed meaning in OpenSSL 3.0, so they are left unnamed).
const VERIFY_CODE_NAMES: &[(i32, &str)] = &[
    (0, "X509_V_OK"),
    (1, "X509_V_ERR_UNSPECIFIED"),
    (2, "X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT"),
    (3, "X509_V_ERR_UNABLE_TO_GET_CRL"),
    (4, "X509_V_ERR_UNABLE_TO_DECRYPT_CERT_SIGNATURE"),
    (6, "X509_V_ERR_UNABLE_TO_DECODE_ISSUER_PUBLIC_KEY"),
    (7, "X509_V_ERR_CERT_SIGNATURE_FAILURE"),
    (8, "X509_V_ERR_CRL_SIGNATURE_FAILURE"),
    (9, "X509_V_ERR_CERT_NOT_YET_VALID"),
    (10, "X509_V_ERR_CERT_HAS_EXPIRED"),
    (11, "X509_V_ERR_CRL_NOT_YET_VALID"),
    (12, "X509_V_ERR_CRL_HAS_EXPIRED"),
    (13, "X509_V_ERR_ERROR_IN_CERT_NOT_BEFORE_FIELD"),
    (14, "X509_V_ERR_ERROR_IN_CERT_NOT_AFTER_FIELD"),
    (17, "X509_V_ERR_OUT_OF_MEM"),
    (18, "X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT"),
    (19, "X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN"),
    (20, "X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY"),
    (21, "X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE"),
    (22, "X509_V_ERR_CERT_CHAIN_TOO_LONG"),
    (23, "X509_V_ERR_CERT_REVOKED"),
    (25, "X509_V_ERR_PATH_LENGTH_EXCEEDED"),
    (26, "X509_V_ERR_INVALID_PURPOSE"),
    (27, "X509_V_ERR_CERT_UNTRUSTED"),
    (28, "X509_V_ERR_CERT_REJECTED"),
    (32, "X509_V_ERR_KEYUSAGE_NO_CERTSIGN"),
    (34, "X509_V_ERR_UNHANDLED_CRITICAL_EXTENSION"),
    (37, "X509_V_ERR_INVALID_NON_CA"),
    (50, "X509_V_ERR_APPLICATION_VERIFICATION"),
    (62, "X509_V_ERR_HOSTNAME_MISMATCH"),
    (63, "X509_V_ERR_EMAIL_MISMATCH"),
    (64, "X509_V_ERR_IP_ADDRESS_MISMATCH"),
    (66, "X509_V_ERR_EE_KEY_TOO_SMALL"),
    (67, "X509_V_ERR_CA_KEY_TOO_SMALL"),
    (68, "X509_V_ERR_CA_MD_TOO_WEAK"),
];

/// The detail of an [`Error::Verification`]: OpenSSL's verify code, its [`VerifyKind`],
/// OpenSSL's text for it, and where in the chain it failed.
///
/// `Display` reads `hostname mismatch (X509_V_ERR_HOSTNAME_MISMATCH, code 62)`, with
/// `at depth N` added for a certificate above the peer's own.
#[derive(Clone, PartialEq, Eq)]
pub struct VerifyError(Arc<VerifyInner>);

#[derive(PartialEq, Eq)]
struct VerifyInner {
    code: i32,
    depth: Option<u32>,
    reason: &'static str,
    alert: Option<TlsAlert>,
}

impl VerifyError {
    pub(crate) fn new(
        code: i32,
        depth: Option<u32>,
        reason: &'static str,
        alert: Option<TlsAlert>,
    ) -> Self {
        VerifyError(Arc::new(VerifyInner {
            code,
            depth,
            reason,
            alert,
        }))
    }

    /// What kind of failure this is (from [`code`](Self::code)).
    pub fn kind(&self) -> VerifyKind {
        VerifyKind::from_code(self.0.code)
    }

    /// OpenSSL's verify code, an `X509_V_ERR_*` value (`SslRef::verify_result()`).
    /// `0` (`X509_V_OK`) when a verify callback refused the certificate without saying
    /// why.
    pub fn code(&self) -> i32 {
        self.0.code
    }

    /// The symbolic name of [`code`](Self::code), such as
    /// `"X509_V_ERR_HOSTNAME_MISMATCH"`, for the common codes.
    pub fn code_name(&self) -> Option<&'static str> {
        VERIFY_CODE_NAMES
            .iter()
            .find(|(code, _)| *code == self.0.code)
            .map(|(_, name)| *name)
    }

    /// The position in the peer's chain of the certificate that failed: 0 is the peer's
    /// own, 1 its issuer, and so on. `None` if a verify callback installed through
    /// `context_builder_mut` replaced the crate's, which records it.
    pub fn depth(&self) -> Option<u32> {
        self.0.depth
    }

    /// OpenSSL's text for the code, for example `"certificate has expired"`.
    pub fn reason(&self) -> &'static str {
        self.0.reason
    }

    /// The alert we sent the peer to refuse its certificate, if OpenSSL sent one.
    pub fn alert(&self) -> Option<TlsAlert> {
        self.0.alert
    }
}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.reason)?;
        match self.code_name() {
            Some(name) => write!(f, " ({name}, code {})", self.0.code)?,
            None => write!(f, " (code {})", self.0.code)?,
        }
        match self.0.depth {
            Some(depth) if depth > 0 => write!(f, " at depth {depth}"),
            _ => Ok(()),
        }
    }
}

impl fmt::Debug for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyError")
            .field("kind", &self.kind())
            .field("code", &self.0.code)
            .field("depth", &self.0.depth)
            .field("reason", &self.0.reason)
            .field("alert", &self.0.alert)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn verify_codes_map_to_their_kinds() {
        let cases = [
            (62, VerifyKind::HostnameMismatch),
            (64, VerifyKind::HostnameMismatch),
            (10, VerifyKind::Expired),
            (9, VerifyKind::NotYetValid),
            (20, VerifyKind::UnknownIssuer),
            (2, VerifyKind::UnknownIssuer),
            (21, VerifyKind::UnknownIssuer),
            (18, VerifyKind::SelfSigned),
            (19, VerifyKind::SelfSigned),
            (23, VerifyKind::Revoked),
            (0, VerifyKind::Other),
            (7, VerifyKind::Other),
            (63, VerifyKind::Other),
            (-1, VerifyKind::Other),
            (i32::MAX, VerifyKind::Other),
        ];
        for (code, kind) in cases {
            assert_eq!(VerifyKind::from_code(code), kind, "code {code}");
        }
    }

    #[test]
    fn verify_code_names_match_openssl_sys_constants() {
        use openssl_sys as ffi;
        let named = [
            (
                ffi::X509_V_ERR_HOSTNAME_MISMATCH,
                "X509_V_ERR_HOSTNAME_MISMATCH",
            ),
            (
                ffi::X509_V_ERR_IP_ADDRESS_MISMATCH,
                "X509_V_ERR_IP_ADDRESS_MISMATCH",
            ),
            (
                ffi::X509_V_ERR_CERT_HAS_EXPIRED,
                "X509_V_ERR_CERT_HAS_EXPIRED",
            ),
            (
                ffi::X509_V_ERR_CERT_NOT_YET_VALID,
                "X509_V_ERR_CERT_NOT_YET_VALID",
            ),
            (ffi::X509_V_ERR_CERT_REVOKED, "X509_V_ERR_CERT_REVOKED"),
            (
                ffi::X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT,
                "X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT",
            ),
            (
                ffi::X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN,
                "X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN",
            ),
            (
                ffi::X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY,
                "X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY",
            ),
            (
                ffi::X509_V_ERR_APPLICATION_VERIFICATION,
                "X509_V_ERR_APPLICATION_VERIFICATION",
            ),
        ];
        for (code, name) in named {
            let e = VerifyError::new(code, None, "text", None);
            assert_eq!(e.code_name(), Some(name));
        }
        // Every named code is distinct.
        for (i, (code, _)) in VERIFY_CODE_NAMES.iter().enumerate() {
            assert!(!VERIFY_CODE_NAMES[i + 1..].iter().any(|(c, _)| c == code));
        }
        assert_eq!(VerifyError::new(24, None, "text", None).code_name(), None);
    }

    #[test]
    fn alert_codes_map_to_their_names() {
        let cases = [
            (Alert::HANDSHAKE_FAILURE, 40, "handshake_failure"),
            (Alert::BAD_CERTIFICATE, 42, "bad_certificate"),
            (Alert::CERTIFICATE_EXPIRED, 45, "certificate_expired"),
            (Alert::UNKNOWN_CA, 48, "unknown_ca"),
            (Alert::DECODE_ERROR, 50, "decode_error"),
            (Alert::PROTOCOL_VERSION, 70, "protocol_version"),
            (Alert::CERTIFICATE_REQUIRED, 116, "certificate_required"),
            (
                Alert::NO_APPLICATION_PROTOCOL,
                120,
                "no_application_protocol",
            ),
        ];
        for (alert, code, name) in cases {
            assert_eq!(alert.code(), code);
            assert_eq!(Alert::from_code(code), alert);
            assert_eq!(alert.name(), Some(name));
            assert_eq!(alert.to_string(), name);
        }
        assert_eq!(Alert::from_code(226).name(), None);
        assert_eq!(Alert::from_code(226).to_string(), "226");
        assert_eq!(format!("{:?}", Alert::UNKNOWN_CA), "Alert(unknown_ca)");
        // The table is sorted and without duplicates.
        assert!(ALERT_NAMES.windows(2).all(|w| w[0].0 < w[1].0));
    }

    #[test]
    fn failures_show_the_alert_and_its_direction() {
        let sent = TlsFailure::new(
            "no application protocol",
            Some(TlsAlert::Sent(Alert::NO_APPLICATION_PROTOCOL)),
        );
        assert_eq!(
            Error::Handshake(sent).to_string(),
            "TLS handshake failed: no application protocol \
             (sent alert no_application_protocol)"
        );
        let received = Error::Tls(TlsFailure::new(
            "tlsv13 alert certificate required",
            Some(TlsAlert::Received(Alert::CERTIFICATE_REQUIRED)),
        ));
        assert_eq!(
            received.alert(),
            Some(TlsAlert::Received(Alert::CERTIFICATE_REQUIRED))
        );
        assert!(
            received
                .to_string()
                .ends_with("(received alert certificate_required)")
        );
        assert_eq!(Error::tls("stuck").to_string(), "TLS error: stuck");
        assert_eq!(Error::tls("stuck").alert(), None);
    }

    #[test]
    fn verification_display_names_the_code_and_a_depth_above_the_leaf() {
        let leaf = Error::Verification(VerifyError::new(62, Some(0), "hostname mismatch", None));
        assert_eq!(
            leaf.to_string(),
            "certificate verify failed: hostname mismatch \
             (X509_V_ERR_HOSTNAME_MISMATCH, code 62)"
        );
        assert_eq!(leaf.verify_kind(), Some(VerifyKind::HostnameMismatch));
        let chain = VerifyError::new(
            19,
            Some(1),
            "self-signed certificate in certificate chain",
            None,
        );
        assert_eq!(
            chain.to_string(),
            "self-signed certificate in certificate chain \
             (X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN, code 19) at depth 1"
        );
        assert_eq!(
            VerifyError::new(79, None, "invalid CA certificate", None).to_string(),
            "invalid CA certificate (code 79)"
        );
    }

    #[test]
    fn timeouts_say_which() {
        for (t, text) in [
            (Timeout::Connect, "connect timed out"),
            (Timeout::Handshake, "TLS handshake timed out"),
            (Timeout::Idle, "idle timeout: no TLS traffic either way"),
        ] {
            let e = Error::TimedOut(t);
            assert_eq!(e.timeout(), Some(t));
            assert_eq!(e.to_string(), text);
        }
        assert_eq!(Error::Closed.timeout(), None);
    }

    /// An error with a cause of its own, to see `Io` pass its chain through.
    #[derive(Debug)]
    struct Outer(Inner);
    #[derive(Debug)]
    struct Inner;
    impl fmt::Display for Outer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("proxy refused the connection")
        }
    }
    impl fmt::Display for Inner {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("407 proxy authentication required")
        }
    }
    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }
    impl std::error::Error for Inner {}

    fn every_variant() -> Vec<Error> {
        vec![
            Error::from(io::Error::from(io::ErrorKind::ConnectionReset)),
            Error::from(io::Error::from_raw_os_error(111)),
            Error::from(io::Error::other(Outer(Inner))),
            Error::Closed,
            Error::Cancelled,
            Error::TransportClosed,
            Error::TimedOut(Timeout::Connect),
            Error::TimedOut(Timeout::Handshake),
            Error::TimedOut(Timeout::Idle),
            Error::InvalidState("write after shutdown"),
            Error::Handshake(TlsFailure::new(
                "tlsv1 alert unknown ca",
                Some(TlsAlert::Received(Alert::UNKNOWN_CA)),
            )),
            Error::Handshake(TlsFailure::new("unexpected eof while reading", None)),
            Error::Verification(VerifyError::new(
                10,
                Some(0),
                "certificate has expired",
                Some(TlsAlert::Sent(Alert::CERTIFICATE_EXPIRED)),
            )),
            Error::Truncated,
            Error::Tls(TlsFailure::new(
                "bad record mac",
                Some(TlsAlert::Sent(Alert::BAD_RECORD_MAC)),
            )),
            Error::Config("certs/ca.pem: No such file or directory (os error 2)".into()),
        ]
    }

    #[test]
    fn walking_the_source_chain_never_repeats_a_text() {
        for e in every_variant() {
            let mut texts = vec![e.to_string()];
            let mut cause = e.source();
            while let Some(c) = cause {
                texts.push(c.to_string());
                cause = c.source();
            }
            assert!(texts.iter().all(|t| !t.is_empty()), "{e:?}: {texts:?}");
            for (i, t) in texts.iter().enumerate() {
                for later in &texts[i + 1..] {
                    assert!(
                        !t.contains(later.as_str()) && !later.contains(t.as_str()),
                        "{e:?}: {texts:?}"
                    );
                }
            }
        }
        // Io's cause is the io::Error's own cause, reached without repeating it.
        let proxied = Error::from(io::Error::other(Outer(Inner)));
        assert_eq!(proxied.to_string(), "proxy refused the connection");
        assert_eq!(
            proxied.source().map(|s| s.to_string()).as_deref(),
            Some("407 proxy authentication required")
        );
    }

    #[test]
    fn error_is_small_clone_send_and_sync() {
        fn check<T: Clone + Send + Sync + 'static>() {}
        check::<Error>();
        let words = std::mem::size_of::<Error>() / std::mem::size_of::<usize>();
        assert!(words <= 3, "{} bytes", std::mem::size_of::<Error>());
        for e in every_variant() {
            assert_eq!(e.clone().to_string(), e.to_string());
        }
    }
}
