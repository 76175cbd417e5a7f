//! OpenSSL glue: reading OpenSSL's error queue, and the FFI calls the `openssl` crate
//! does not bind.
//!
//! This module owns every declared foreign function of the crate; each `unsafe` block is
//! allowed item by item with its safety argument. It builds no [`Error`](crate::Error)
//! itself and never panics.

use std::os::raw::c_int;

use foreign_types::ForeignTypeRef;
use openssl::error::ErrorStack;
use openssl::ssl::{self, ErrorCode, SslStream};

/// `ERR_LIB_SSL`.
const LIB_SSL: c_int = 20;
/// `SSL_R_CERTIFICATE_VERIFY_FAILED`.
const R_CERTIFICATE_VERIFY_FAILED: c_int = 134;
/// `SSL_R_UNEXPECTED_EOF_WHILE_READING` (OpenSSL 3).
const R_UNEXPECTED_EOF_WHILE_READING: c_int = 294;
/// OpenSSL's text for a transport EOF without close_notify.
pub(crate) const UNEXPECTED_EOF: &str = "unexpected eof while reading";

/// Drains OpenSSL's per-thread error queue so a later failure reports only its own errors.
pub(crate) fn clear_error_queue() {
    let _ = ErrorStack::get();
}

/// The reason text of the first error in `stack` (for example "wrong version number").
pub(crate) fn stack_reason(stack: &ErrorStack) -> Option<String> {
    stack
        .errors()
        .first()
        .map(|e| e.reason().map_or_else(|| e.to_string(), str::to_owned))
}

/// A readable message for an `ErrorStack` from a configuration or setup call.
pub(crate) fn stack_message(stack: &ErrorStack) -> String {
    stack_reason(stack).unwrap_or_else(|| "unknown OpenSSL error".to_owned())
}

/// The reason text of an `ssl::Error`.
pub(crate) fn ssl_error_reason(e: &ssl::Error) -> String {
    if let Some(reason) = e.ssl_error().and_then(stack_reason) {
        return reason;
    }
    if let Some(io) = e.io_error() {
        return io.to_string();
    }
    e.to_string()
}

fn stack_has(e: &ssl::Error, reason: c_int, text: &str) -> bool {
    e.ssl_error().is_some_and(|stack| {
        stack.errors().iter().any(|err| {
            (err.library_code() == LIB_SSL && err.reason_code() == reason)
                || err.reason() == Some(text)
        })
    })
}

/// Whether `e` means "the transport ended without a close_notify".
pub(crate) fn is_unexpected_eof(e: &ssl::Error) -> bool {
    match e.code() {
        ErrorCode::SYSCALL => e.ssl_error().is_none_or(|s| s.errors().is_empty()),
        ErrorCode::SSL => stack_has(e, R_UNEXPECTED_EOF_WHILE_READING, UNEXPECTED_EOF),
        _ => false,
    }
}

/// Whether `e` is OpenSSL's "certificate verify failed" (the details are in
/// `SslRef::verify_result`).
pub(crate) fn is_verify_failure(e: &ssl::Error) -> bool {
    e.code() == ErrorCode::SSL
        && stack_has(e, R_CERTIFICATE_VERIFY_FAILED, "certificate verify failed")
}

// Declaring a foreign function is `unsafe_code` too; its one caller is below.
#[allow(unsafe_code)]
unsafe extern "C" {
    /// `int SSL_key_update(SSL *s, int updatetype)` (OpenSSL 1.1.1+), not bound by the
    /// `openssl` crate.
    fn SSL_key_update(s: *mut openssl_sys::SSL, updatetype: c_int) -> c_int;
}

/// `SSL_KEY_UPDATE_NOT_REQUESTED` / `SSL_KEY_UPDATE_REQUESTED`.
const KEY_UPDATE_NOT_REQUESTED: c_int = 0;
const KEY_UPDATE_REQUESTED: c_int = 1;

/// Marks `stream`'s established TLS 1.3 session to send a KeyUpdate. Returns whether
/// OpenSSL accepted.
#[allow(unsafe_code)]
pub(crate) fn request_key_update<S>(stream: &mut SslStream<S>, request_peer: bool) -> bool {
    let kind = if request_peer {
        KEY_UPDATE_REQUESTED
    } else {
        KEY_UPDATE_NOT_REQUESTED
    };
    let ssl = stream.ssl().as_ptr();
    // SAFETY: `ssl` is a live `SSL*` owned by `stream`, which we borrow mutably for the
    // whole call, so no other Rust code uses the `SSL` meanwhile (the `openssl` crate
    // offers no `&mut SslRef` inside an `SslStream`, hence the pointer from `&SslRef`).
    // The declaration matches OpenSSL's prototype, `kind` is one of the two values it
    // accepts, and it checks the rest itself (handshake finished, no pending write
    // retry), failing with 0 rather than misbehaving. It calls back into no Rust code.
    unsafe { SSL_key_update(ssl, kind) == 1 }
}
