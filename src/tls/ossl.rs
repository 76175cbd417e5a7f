//! OpenSSL glue: reading OpenSSL's error queue, the FFI calls the `openssl` crate does
//! not bind (`SSL_key_update`, adding a CRL to a trust store, the session ticket key
//! callback), and the per-`SSL` record of what the error queue does not say (the alert
//! we sent, the depth of a failed certificate).
//!
//! This module owns every declared foreign function of the crate; each `unsafe` block is
//! allowed item by item with its safety argument. It builds no [`Error`](crate::Error)
//! itself and never panics (its callbacks run inside OpenSSL, across `extern "C"`).

use std::os::raw::{c_int, c_uchar};
use std::sync::atomic::{AtomicU16, AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};

use foreign_types::ForeignTypeRef;
use openssl::error::ErrorStack;
use openssl::ex_data::Index;
use openssl::ssl::{self, ErrorCode, Ssl, SslContext, SslContextBuilder, SslRef, SslStream};
use openssl::x509::store::X509StoreBuilderRef;
use openssl::x509::{X509CrlRef, X509StoreContext, X509StoreContextRef};

use super::tickets::{KEY_NAME_LEN, TicketKey, TicketKeys};

use crate::error::{Alert, TlsAlert};

/// `ERR_LIB_SSL`.
const LIB_SSL: c_int = 20;
/// `SSL_R_CERTIFICATE_VERIFY_FAILED`.
const R_CERTIFICATE_VERIFY_FAILED: c_int = 134;
/// `SSL_R_UNEXPECTED_EOF_WHILE_READING` (OpenSSL 3).
const R_UNEXPECTED_EOF_WHILE_READING: c_int = 294;
/// OpenSSL's text for a transport EOF without close_notify.
pub(crate) const UNEXPECTED_EOF: &str = "unexpected eof while reading";
/// `SSL_AD_REASON_OFFSET`: a received alert is reported as reason 1000 + its code
/// (`SSL_R_SSLV3_ALERT_*`, `SSL_R_TLSV1_ALERT_*`).
const ALERT_REASON_OFFSET: c_int = openssl_sys::SSL_AD_REASON_OFFSET;

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

/// The alert code in a reason code of the SSL library, if it reports a received alert.
fn alert_of_reason(library: c_int, reason: c_int) -> Option<Alert> {
    if library != LIB_SSL {
        return None;
    }
    let code = reason.checked_sub(ALERT_REASON_OFFSET)?;
    u8::try_from(code).ok().map(Alert::from_code)
}

/// The fatal alert the peer sent, if OpenSSL reported one in `e`'s error stack.
pub(crate) fn received_alert(e: &ssl::Error) -> Option<Alert> {
    e.ssl_error()?
        .errors()
        .iter()
        .find_map(|err| alert_of_reason(err.library_code(), err.reason_code()))
}

/// The alert that ended the session, if any: one the peer sent (from `e`'s error stack),
/// else a fatal one we sent (recorded by the info callback).
pub(crate) fn failure_alert(ssl: &SslRef, e: &ssl::Error) -> Option<TlsAlert> {
    received_alert(e)
        .map(TlsAlert::Received)
        .or_else(|| sent_alert(ssl).map(TlsAlert::Sent))
}

/// What the error queue does not tell, recorded per `SSL` by callbacks during the
/// handshake. Atomics only because ex-data must be `Sync`; one thread drives an `SSL`.
struct Observed {
    /// `0x100 | code` of the first fatal alert we sent; 0 if none.
    sent_alert: AtomicU16,
    /// `depth + 1` of the first certificate that failed verification; 0 if none.
    verify_depth: AtomicU32,
}

fn observed_index() -> Option<Index<Ssl, Observed>> {
    static INDEX: OnceLock<Option<Index<Ssl, Observed>>> = OnceLock::new();
    *INDEX.get_or_init(|| Ssl::new_ex_index().ok())
}

fn observed(ssl: &SslRef) -> Option<&Observed> {
    ssl.ex_data(observed_index()?)
}

/// `SSL_CB_ALERT | SSL_CB_WRITE`: the info callback reports an alert we sent.
const CB_WRITE_ALERT: c_int = 0x4000 | 0x08;
/// Alert level "fatal" (the high byte of the info callback's value for an alert).
const LEVEL_FATAL: c_int = 2;

// Declaring foreign functions is `unsafe_code` too; their callers are below, one each.
#[allow(unsafe_code)]
unsafe extern "C" {
    /// `int SSL_key_update(SSL *s, int updatetype)` (OpenSSL 1.1.1+).
    fn SSL_key_update(s: *mut openssl_sys::SSL, updatetype: c_int) -> c_int;
    /// `void SSL_set_info_callback(SSL *ssl, void (*cb)(const SSL *ssl, int type, int
    /// val))`.
    fn SSL_set_info_callback(
        ssl: *mut openssl_sys::SSL,
        cb: Option<unsafe extern "C" fn(*const openssl_sys::SSL, c_int, c_int)>,
    );
    /// `int X509_STORE_add_crl(X509_STORE *xs, X509_CRL *x)`: adds `x` to the store,
    /// taking a reference of its own (`X509_CRL_up_ref`); 1 on success.
    fn X509_STORE_add_crl(xs: *mut openssl_sys::X509_STORE, x: *mut openssl_sys::X509_CRL)
    -> c_int;
}

/// OpenSSL's info callback: records the first fatal alert we send. Called for every
/// state change of the handshake and every alert (35 times per full TLS 1.3 handshake,
/// client and server together); all it does for the others is one comparison. Measured
/// over 5 x 1000 in-memory handshakes, alternating with and without [`observe`], the
/// medians were 805 and 809 us per handshake pair: no difference beyond the noise.
#[allow(unsafe_code)]
unsafe extern "C" fn info_callback(ssl: *const openssl_sys::SSL, kind: c_int, value: c_int) {
    if kind & CB_WRITE_ALERT != CB_WRITE_ALERT || value >> 8 != LEVEL_FATAL || ssl.is_null() {
        return;
    }
    // SAFETY: OpenSSL calls this with the live `SSL` whose alert it is writing, for the
    // duration of the call; the reference does not outlive it. We only read ex-data
    // through it (atomics), never mutate the `SSL`; `cast_mut` is for `from_ptr`'s type.
    let ssl = unsafe { SslRef::from_ptr(ssl.cast_mut()) };
    if let Some(seen) = observed(ssl) {
        let code = u16::try_from(value & 0xff).unwrap_or(0);
        let _ =
            seen.sent_alert
                .compare_exchange(0, 0x100 | code, Ordering::Relaxed, Ordering::Relaxed);
    }
}

/// Prepares `ssl` for [`sent_alert`] and [`verify_depth`]: attaches the record and our
/// info callback (replacing any info callback of its context). Without it (an `SSL` not
/// made by [`TlsSession`](super::TlsSession)) both simply return `None`.
#[allow(unsafe_code)]
pub(crate) fn observe(ssl: &mut SslRef) {
    let Some(index) = observed_index() else {
        return;
    };
    ssl.set_ex_data(
        index,
        Observed {
            sent_alert: AtomicU16::new(0),
            verify_depth: AtomicU32::new(0),
        },
    );
    // SAFETY: `ssl` is a live `SSL` that we borrow mutably, so nothing else uses it
    // during the call. The declaration matches OpenSSL's prototype, and `info_callback`
    // has the callback's C signature; as a plain function it outlives every `SSL`.
    unsafe { SSL_set_info_callback(ssl.as_ptr(), Some(info_callback)) };
}

/// The first fatal alert we sent on `ssl`, if [`observe`] was called on it.
pub(crate) fn sent_alert(ssl: &SslRef) -> Option<Alert> {
    let value = observed(ssl)?.sent_alert.load(Ordering::Relaxed);
    let code = value.checked_sub(0x100)?;
    u8::try_from(code).ok().map(Alert::from_code)
}

/// The chain depth of the first certificate that failed verification on `ssl`, if
/// [`observe`] was called on it and [`record_verify_depth`] is its verify callback.
pub(crate) fn verify_depth(ssl: &SslRef) -> Option<u32> {
    observed(ssl)?
        .verify_depth
        .load(Ordering::Relaxed)
        .checked_sub(1)
}

/// A verify callback that changes nothing (it returns OpenSSL's own verdict) and
/// records the depth of the first failure, for [`verify_depth`].
pub(crate) fn record_verify_depth(preverify_ok: bool, ctx: &mut X509StoreContextRef) -> bool {
    if !preverify_ok
        && let Ok(index) = X509StoreContext::ssl_idx()
        && let Some(seen) = ctx.ex_data(index).and_then(observed)
    {
        let depth = ctx.error_depth().saturating_add(1);
        let _ = seen
            .verify_depth
            .compare_exchange(0, depth, Ordering::Relaxed, Ordering::Relaxed);
    }
    preverify_ok
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

/// Adds `crl` to the trust store `store`; OpenSSL keeps a reference of its own, so the
/// caller may drop `crl` afterwards.
#[allow(unsafe_code)]
pub(crate) fn store_add_crl(
    store: &mut X509StoreBuilderRef,
    crl: &X509CrlRef,
) -> Result<(), ErrorStack> {
    // SAFETY: both pointers are live for the whole call: `store` is borrowed mutably (so
    // no other Rust code uses it meanwhile), `crl` shared. The declaration matches
    // OpenSSL's prototype. `X509_STORE_add_crl` does not modify `crl`; it takes a
    // reference (`X509_CRL_up_ref`) for the store, which therefore never points at freed
    // memory when our `X509Crl` is dropped. A CRL already in the store is not an error.
    if unsafe { X509_STORE_add_crl(store.as_ptr(), crl.as_ptr()) } == 1 {
        Ok(())
    } else {
        Err(ErrorStack::get())
    }
}

/// `SSL_CTRL_SET_TLSEXT_TICKET_KEY_CB`: the ctrl behind the
/// `SSL_CTX_set_tlsext_ticket_key_cb` macro.
const CTRL_SET_TLSEXT_TICKET_KEY_CB: c_int = 72;
/// The size of the `iv` buffer OpenSSL passes (`EVP_MAX_IV_LENGTH`); AES-CBC uses all 16.
const TICKET_IV_LEN: usize = 16;

/// The C type of OpenSSL's (pre-3.0) ticket key callback: `int (*)(SSL *s, unsigned char
/// key_name[16], unsigned char iv[EVP_MAX_IV_LENGTH], EVP_CIPHER_CTX *ctx, HMAC_CTX
/// *hctx, int enc)`.
type TicketKeyCallback = unsafe extern "C" fn(
    *mut openssl_sys::SSL,
    *mut c_uchar,
    *mut c_uchar,
    *mut openssl_sys::EVP_CIPHER_CTX,
    *mut openssl_sys::HMAC_CTX,
    c_int,
) -> c_int;

/// The `SSL_CTX` ex-data slot holding the ticket key ring of a server context.
fn ticket_keys_index() -> Option<Index<SslContext, Arc<TicketKeys>>> {
    static INDEX: OnceLock<Option<Index<SslContext, Arc<TicketKeys>>>> = OnceLock::new();
    *INDEX.get_or_init(|| SslContext::new_ex_index().ok())
}

/// Makes `ctx` encrypt and decrypt session tickets (TLS 1.3 tickets and TLS 1.2 session
/// tickets) with the keys of `keys` instead of a key of its own. Returns `false` if
/// OpenSSL refused (a build without the deprecated 1.1.1 API): the context then keeps
/// its own random key.
///
/// This uses the ticket callback with an `HMAC_CTX`, deprecated since OpenSSL 3.0 but
/// present in every build this crate links (1.1.1 and 3.x); its 3.0 successor
/// (`SSL_CTX_set_tlsext_ticket_key_evp_cb`) would make the crate require OpenSSL 3.
#[allow(unsafe_code)]
pub(crate) fn set_ticket_keys(ctx: &mut SslContextBuilder, keys: Arc<TicketKeys>) -> bool {
    let Some(index) = ticket_keys_index() else {
        return false;
    };
    ctx.set_ex_data(index, keys);
    let callback: TicketKeyCallback = ticket_key_callback;
    // SAFETY: `ctx` is a live `SSL_CTX` borrowed mutably. For this ctrl code OpenSSL
    // stores the function pointer and calls it only as a ticket key callback, with the
    // C signature `TicketKeyCallback` declares (the `SSL_CTX_set_tlsext_ticket_key_cb`
    // macro performs the same cast to `void (*)(void)`); function pointers of the two
    // types have the same size and representation. `ticket_key_callback` is a plain
    // function, so it outlives every context. The ring it reads is owned by `ctx`'s
    // ex-data, set above, and freed with the context.
    let set = unsafe {
        let generic = std::mem::transmute::<TicketKeyCallback, unsafe extern "C" fn()>(callback);
        openssl_sys::SSL_CTX_callback_ctrl__fixed_rust(
            ctx.as_ptr(),
            CTRL_SET_TLSEXT_TICKET_KEY_CB,
            Some(generic),
        )
    };
    set == 1
}

/// Sets up the cipher and HMAC contexts OpenSSL passes for one ticket.
#[allow(unsafe_code)]
fn init_ticket_crypto(
    cipher: *mut openssl_sys::EVP_CIPHER_CTX,
    hmac: *mut openssl_sys::HMAC_CTX,
    key: &TicketKey,
    iv: &[u8; TICKET_IV_LEN],
    encrypt: bool,
) -> bool {
    let null = std::ptr::null_mut();
    // SAFETY: `cipher` and `hmac` are the non-null contexts OpenSSL passed to the ticket
    // callback for this ticket, live for the call. The keys are 32 bytes, as
    // AES-256-CBC and the HMAC key length given require, and `iv` is the 16 bytes
    // AES-CBC reads. OpenSSL copies the key material; nothing keeps our pointers.
    unsafe {
        let aes = openssl_sys::EVP_aes_256_cbc();
        let cipher_ok = if encrypt {
            openssl_sys::EVP_EncryptInit_ex(cipher, aes, null, key.aes.as_ptr(), iv.as_ptr())
        } else {
            openssl_sys::EVP_DecryptInit_ex(cipher, aes, null, key.aes.as_ptr(), iv.as_ptr())
        };
        let hmac_ok = openssl_sys::HMAC_Init_ex(
            hmac,
            key.hmac.as_ptr().cast(),
            key.hmac.len() as c_int,
            openssl_sys::EVP_sha256(),
            null,
        );
        cipher_ok == 1 && hmac_ok == 1
    }
}

/// OpenSSL's ticket key callback: in encryption mode (`enc == 1`) names the current key
/// and sets up the contexts with a fresh IV (1; 0 issues no ticket); in decryption mode
/// finds the key by name (2, which tells OpenSSL to issue a new ticket, for the previous
/// key and for every TLS 1.3 resumption; 1 for a TLS 1.2 ticket under the current key;
/// 0 for an unknown or retired key: a full handshake).
/// -1 (a failed handshake) only if OpenSSL's own crypto setup fails.
#[allow(unsafe_code)]
unsafe extern "C" fn ticket_key_callback(
    ssl: *mut openssl_sys::SSL,
    key_name: *mut c_uchar,
    iv: *mut c_uchar,
    cipher: *mut openssl_sys::EVP_CIPHER_CTX,
    hmac: *mut openssl_sys::HMAC_CTX,
    enc: c_int,
) -> c_int {
    if ssl.is_null() || key_name.is_null() || iv.is_null() || cipher.is_null() || hmac.is_null() {
        return -1;
    }
    // SAFETY: OpenSSL calls this with the live `SSL` whose ticket it handles, for the
    // duration of the call; we only read its context's ex-data through it.
    let ssl = unsafe { SslRef::from_ptr(ssl) };
    let Some(keys) = ticket_keys_index().and_then(|i| ssl.ssl_context().ex_data(i)) else {
        // Not one of our contexts (a caller switched it): no ticket, no resumption.
        return 0;
    };
    if enc == 1 {
        // SAFETY: in encryption mode OpenSSL passes `key_name` as its 16-byte
        // (`TLSEXT_KEYNAME_LENGTH`) output buffer and `iv` as its `EVP_MAX_IV_LENGTH`
        // (16) output buffer, both writable for the call; they do not overlap each other
        // or anything we hold.
        let (name, iv) = unsafe {
            (
                &mut *key_name.cast::<[u8; KEY_NAME_LEN]>(),
                &mut *iv.cast::<[u8; TICKET_IV_LEN]>(),
            )
        };
        let Some(key) = keys.encryption_key() else {
            return 0;
        };
        if openssl::rand::rand_bytes(iv).is_err() {
            return -1;
        }
        name.copy_from_slice(&key.name);
        if init_ticket_crypto(cipher, hmac, &key, iv, true) {
            1
        } else {
            -1
        }
    } else {
        // SAFETY: in decryption mode both point into the received ticket, which OpenSSL
        // checked to be long enough for the 16-byte name and the 16-byte IV before
        // calling; we only read them, during the call.
        let (name, iv) = unsafe {
            (
                &*key_name.cast_const().cast::<[u8; KEY_NAME_LEN]>(),
                &*iv.cast_const().cast::<[u8; TICKET_IV_LEN]>(),
            )
        };
        match keys.decryption_key(name) {
            None => 0,
            Some((key, current)) if init_ticket_crypto(cipher, hmac, &key, iv, false) => {
                // TLS 1.3 tickets are used once: without "renew" OpenSSL issues no new
                // ticket after a resumption, and a client resuming every time runs out.
                let tls13 = ssl.version2() != Some(openssl::ssl::SslVersion::TLS1_2);
                if current && !tls13 { 1 } else { 2 }
            }
            Some(_) => -1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn received_alert_reasons_map_to_alert_codes() {
        // SSL_R_TLSV1_ALERT_UNKNOWN_CA, SSL_R_TLSV13_ALERT_CERTIFICATE_REQUIRED,
        // SSL_R_TLSV1_ALERT_NO_APPLICATION_PROTOCOL, SSL_R_SSLV3_ALERT_HANDSHAKE_FAILURE.
        for (reason, alert) in [
            (1048, Alert::UNKNOWN_CA),
            (1116, Alert::CERTIFICATE_REQUIRED),
            (1120, Alert::NO_APPLICATION_PROTOCOL),
            (1040, Alert::HANDSHAKE_FAILURE),
            (1070, Alert::PROTOCOL_VERSION),
        ] {
            assert_eq!(alert_of_reason(LIB_SSL, reason), Some(alert), "{reason}");
        }
        // Not alerts: other SSL reasons, other libraries, out of range.
        assert_eq!(alert_of_reason(LIB_SSL, R_CERTIFICATE_VERIFY_FAILED), None);
        assert_eq!(alert_of_reason(LIB_SSL, 999), None);
        assert_eq!(alert_of_reason(LIB_SSL, 1256), None);
        assert_eq!(alert_of_reason(LIB_SSL, c_int::MIN), None);
        assert_eq!(alert_of_reason(11, 1048), None);
    }
}
