//! The sans-I/O TLS session: an OpenSSL `SSL` over an in-memory duplex.
//!
//! [`TlsSession`] never touches a socket. Ciphertext received from the peer is fed in
//! with [`TlsSession::feed_ciphertext`] / [`TlsSession::feed_eof`]; ciphertext to send is
//! taken out with [`TlsSession::take_ciphertext`]. Plaintext goes in with
//! [`TlsSession::write`] and comes out of [`TlsSession::read`].
//!
//! # Memory BIO route
//!
//! The session uses the safe route: `openssl::ssl::SslStream` over a private in-memory
//! duplex. Its receive side is a queue of the [`Bytes`] chunks the transport delivered (no
//! copy on the way in; OpenSSL's read out of the queue is the only copy), its send side a
//! [`BytesMut`] that OpenSSL appends to and that is split off whole by `take_ciphertext`
//! (no copy on the way out). This needs no `unsafe` and no `openssl-sys`. One `unsafe`
//! line is there for speed: [`TlsSession::read`] lets `SSL_read` write into the spare
//! capacity of the caller's buffer without zero-filling it first (`mark_filled`), which
//! cost 2 % of a server's CPU at 64 KiB writes and 6.5 % at 1 KiB.
//!
//! # A server's `SSL` waits for the ClientHello
//!
//! A server session creates its OpenSSL `SSL` only once the client's ClientHello has
//! arrived (or something OpenSSL must refuse at once: see `tls/hello.rs`). Until then it
//! holds the bytes received, at most one record's worth (16 KiB + 5), and no `SSL`: a
//! peer that stalls in the middle of its ClientHello costs a few hundred bytes, not the
//! `SSL`'s 20 KiB and more. The `SSL` is made from the acceptor's configuration at that
//! moment (see [`TlsSession::server`]).

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, Read, Write};
use std::sync::{Mutex, PoisonError};

use bytes::{Buf, Bytes, BytesMut};
use openssl::error::ErrorStack;
use openssl::ssl::{self, ErrorCode, NameType, Ssl, SslRef, SslSessionRef, SslStream};
use openssl::x509::X509;

use super::acceptor::TlsAcceptor;
use super::config::TlsConnector;
use super::hello::Hello;
use super::ossl::{self, clear_error_queue, ssl_error_reason, stack_message};
use super::resume;
use crate::error::{TlsAlert, TlsFailure, VerifyError};
use crate::{Error, Result};

/// Maximum plaintext in one TLS record.
const MAX_RECORD_PLAINTEXT: usize = 16 * 1024;

/// The in-memory transport under the `SslStream`.
#[derive(Default)]
struct MemDuplex {
    /// Ciphertext fed in and not yet read by OpenSSL.
    rx: VecDeque<Bytes>,
    /// Total bytes in `rx`.
    rx_len: usize,
    /// The transport reached end of stream (nothing more will be fed).
    eof: bool,
    /// Ciphertext written by OpenSSL and not yet taken.
    tx: BytesMut,
}

impl MemDuplex {
    /// A transport holding `rx`, already received, and the end if `eof`.
    fn with_input(rx: VecDeque<Bytes>, eof: bool) -> MemDuplex {
        MemDuplex {
            rx_len: rx.iter().map(Bytes::len).sum(),
            rx,
            eof,
            tx: BytesMut::new(),
        }
    }
}

impl Read for MemDuplex {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let mut copied = 0;
        while copied < buf.len() {
            let Some(front) = self.rx.front_mut() else {
                break;
            };
            let Some(dst) = buf.get_mut(copied..) else {
                break;
            };
            let n = front.len().min(dst.len());
            if let (Some(d), Some(s)) = (dst.get_mut(..n), front.get(..n)) {
                d.copy_from_slice(s);
            }
            front.advance(n);
            copied += n;
            if front.is_empty() {
                self.rx.pop_front();
            }
        }
        // Cannot underflow: `copied` came out of `rx`, whose total `rx_len` counts.
        self.rx_len -= copied;
        if copied == 0 && !self.eof {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(copied)
    }
}

impl Write for MemDuplex {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.tx.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The result of one [`TlsSession::read`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadOutcome {
    /// This many bytes of plaintext were appended to the buffer. Call `read` again.
    Data(usize),
    /// OpenSSL needs more ciphertext before it can produce plaintext: feed some.
    WantRead,
    /// The peer sent its close_notify alert: a clean end of stream. Later reads return
    /// `Eof` again.
    Eof,
}

/// What was negotiated, for logging and for the application.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionInfo {
    /// The protocol version, as OpenSSL names it: `"TLSv1.3"`, `"TLSv1.2"`, or
    /// `"unknown"` before the handshake.
    pub version: &'static str,
    /// The cipher suite's OpenSSL name, for example `"TLS_AES_256_GCM_SHA384"`.
    pub cipher: Option<String>,
    /// The protocol chosen by ALPN, if any.
    pub alpn: Option<Vec<u8>>,
    /// On a server: the SNI host name the client sent. On a client: the name it asked
    /// for (host name or IP literal) when the session was created.
    pub server_name: Option<String>,
    /// Whether the session was resumed from an earlier one.
    pub resumed: bool,
}

/// A TLS session without I/O: an OpenSSL `SSL` over a memory transport.
///
/// Drive it like this: feed what the transport received (`feed_ciphertext`,
/// `feed_eof`), call `handshake` until it returns `Ok(true)`, then call `read` until it
/// returns `WantRead` or `Eof`, `write` plaintext, and after every call send what
/// `take_ciphertext` returns (handshake messages, session tickets, KeyUpdate replies,
/// alerts, close_notify).
///
/// After a fatal error the session stays failed: every later `handshake`, `read`,
/// `write` and `shutdown` returns the same error. Any alert OpenSSL produced on the way
/// remains available from `take_ciphertext`, and the error names it
/// ([`Error::alert`]): received alerts come from OpenSSL's error queue, sent ones from
/// an info callback each session installs on its `SSL` (a `configure` closure of
/// [`server_with`](Self::server_with) / [`client_with`](Self::client_with) that installs
/// its own replaces it, and sent alerts then go unnamed).
pub struct TlsSession {
    /// The OpenSSL session over the memory transport; `None` while a server session
    /// waits for the ClientHello (`waiting`).
    stream: Option<SslStream<MemDuplex>>,
    waiting: Option<Box<Waiting>>,
    is_server: bool,
    handshake_done: bool,
    shutdown_sent: bool,
    close_notify_received: bool,
    failed: Option<Error>,
    requested_name: Option<String>,
    /// An `SSL_write` returned WANT_* and must be retried with the same data before
    /// anything else is written (never happens over the memory transport, which takes
    /// everything; tracked so `key_update` can rely on it).
    write_retry_pending: bool,
}

/// A per-session adjustment of a server's `SSL`, run when the `SSL` is created.
type Configure = Box<dyn FnOnce(&mut SslRef) -> Result<()> + Send>;

/// A server session before its `SSL` exists.
struct Waiting {
    /// The configuration to create the `SSL` from (its current one, then).
    acceptor: TlsAcceptor,
    /// Only ever used through `&mut` (`into_inner`); the mutex keeps the session `Sync`.
    configure: Mutex<Option<Configure>>,
    hello: Hello,
}

impl fmt::Debug for TlsSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsSession")
            .field("is_server", &self.is_server)
            .field("handshake_complete", &self.handshake_done)
            .field("waiting_for_client_hello", &self.waiting.is_some())
            .field(
                "version",
                &self.ssl().map_or("unknown", |s| s.version_str()),
            )
            .field("ciphertext_in", &self.buffered_ciphertext_in())
            .field("ciphertext_out", &self.buffered_ciphertext_out())
            .field("shutdown_sent", &self.shutdown_sent)
            .field("close_notify_received", &self.close_notify_received)
            .field("failed", &self.failed)
            .finish()
    }
}

fn setup_error(what: &str, stack: &ErrorStack) -> Error {
    Error::Config(format!("{what}: {}", stack_message(stack)))
}

/// Offers `session` for resumption on a new client `ssl`. A failure only means a full
/// handshake.
#[allow(unsafe_code)]
fn offer_session(ssl: &mut SslRef, session: &SslSessionRef) {
    // SAFETY: `set_session` requires `session` to belong to the `SslContext` that `ssl`
    // was created from. `ssl` comes from `TlsConnector::connector()`'s context, and the
    // session from that connector's cache, which only that context's new-session
    // callback fills (the cache and the context are created together in
    // `TlsConnectorBuilder::build` and shared only by clones of that connector).
    if unsafe { ssl.set_session(session) }.is_err() {
        clear_error_queue();
    }
}

/// Counts the `n` bytes `SSL_read` wrote at the start of `buf`'s spare capacity as part
/// of `buf`, and returns `n`. `n` must be what `ssl_read_uninit` returned for a slice of
/// at least `n` bytes taken from the start of `buf.spare_capacity_mut()`.
#[allow(unsafe_code)]
fn mark_filled(buf: &mut BytesMut, n: usize) -> usize {
    let n = n.min(buf.capacity() - buf.len());
    // SAFETY: `n` does not exceed the spare capacity (checked above), and those `n`
    // bytes are initialised: `ssl_read_uninit` returns the count `SSL_read_ex` reports,
    // which is the number of bytes it wrote, contiguously from the start of the slice it
    // was given (OpenSSL copies the record's plaintext there and never reports more than
    // the slice's length), and the caller gave it the start of this spare capacity with
    // nothing in between that could move or shrink `buf`.
    unsafe { buf.set_len(buf.len() + n) };
    n
}

impl TlsSession {
    fn new(
        stream: Option<SslStream<MemDuplex>>,
        waiting: Option<Box<Waiting>>,
        is_server: bool,
        requested_name: Option<String>,
    ) -> TlsSession {
        TlsSession {
            stream,
            waiting,
            is_server,
            handshake_done: false,
            shutdown_sent: false,
            close_notify_received: false,
            failed: None,
            requested_name,
            write_retry_pending: false,
        }
    }

    /// Creates a server-side session from `acceptor`'s configuration.
    ///
    /// The session creates its OpenSSL `SSL` when the client's ClientHello has arrived
    /// (see the module docs), from the configuration `acceptor` holds at that moment: a
    /// [`TlsAcceptor::replace`] before then applies to this session too; the `SSL` then
    /// keeps its configuration whatever happens to the acceptor. Until then
    /// [`ssl`](Self::ssl) returns `None`.
    ///
    /// # Errors
    /// None today: the `SSL` is created later, and its errors come from
    /// [`handshake`](Self::handshake).
    pub fn server(acceptor: &TlsAcceptor) -> Result<Self> {
        Ok(Self::waiting(acceptor, None))
    }

    /// Like [`server`](Self::server), but lets `configure` adjust this session's `SSL`
    /// before the handshake starts (the per-session counterpart of
    /// [`TlsAcceptorBuilder::context_builder_mut`](super::TlsAcceptorBuilder::context_builder_mut)).
    ///
    /// `configure` runs when the `SSL` is created, once the ClientHello has arrived,
    /// inside the [`handshake`](Self::handshake) (or [`read`](Self::read)) call that
    /// creates it; an error it returns fails the session and is returned by that call.
    ///
    /// # Errors
    /// None today (see [`server`](Self::server)).
    pub fn server_with(
        acceptor: &TlsAcceptor,
        configure: impl FnOnce(&mut SslRef) -> Result<()> + Send + 'static,
    ) -> Result<Self> {
        Ok(Self::waiting(acceptor, Some(Box::new(configure))))
    }

    fn waiting(acceptor: &TlsAcceptor, configure: Option<Configure>) -> TlsSession {
        let waiting = Waiting {
            acceptor: acceptor.clone(),
            configure: Mutex::new(configure),
            hello: Hello::default(),
        };
        Self::new(None, Some(Box::new(waiting)), true, None)
    }

    /// Creates the server's `SSL` from the acceptor's current configuration and hands
    /// it the bytes received so far.
    fn start_server(&mut self) -> Result<()> {
        let Some(waiting) = self.waiting.take() else {
            return Ok(());
        };
        let Waiting {
            acceptor,
            configure,
            hello,
        } = *waiting;
        let mut ssl =
            Ssl::new(&acceptor.context()).map_err(|e| setup_error("creating TLS session", &e))?;
        ssl.set_accept_state();
        // Before `configure`, so that an info callback of the caller's own wins.
        ossl::observe(&mut ssl);
        if let Some(configure) = configure
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner)
        {
            configure(&mut ssl)?;
        }
        let eof = hello.eof();
        let io = MemDuplex::with_input(hello.into_chunks(), eof);
        let stream =
            SslStream::new(ssl, io).map_err(|e| setup_error("creating TLS session", &e))?;
        self.stream = Some(stream);
        Ok(())
    }

    /// Creates a client-side session that connects to `server_name`.
    ///
    /// `server_name` is sent as SNI unless it is an IP literal, and the server's
    /// certificate is checked against it (as a DNS name, or as an IP address for an IP
    /// literal) unless verification was disabled with
    /// [`TlsConnectorBuilder::danger_disable_certificate_verification`](super::TlsConnectorBuilder::danger_disable_certificate_verification).
    pub fn client(connector: &TlsConnector, server_name: &str) -> Result<Self> {
        Self::client_with(connector, server_name, |_| Ok(()))
    }

    /// Like [`client`](Self::client), but lets `configure` adjust this session's `SSL`
    /// (ALPN protocols, a session to resume, ...) before the handshake starts.
    pub fn client_with(
        connector: &TlsConnector,
        server_name: &str,
        configure: impl FnOnce(&mut SslRef) -> Result<()>,
    ) -> Result<Self> {
        let mut cfg = connector
            .connector()
            .configure()
            .map_err(|e| setup_error("creating TLS session", &e))?;
        let verify = connector.verifies_certificates();
        cfg.set_verify_hostname(verify);
        let mut ssl = cfg.into_ssl(server_name).map_err(|e| {
            Error::Config(format!(
                "server name {server_name:?}: {}",
                stack_message(&e)
            ))
        })?;
        ssl.set_connect_state();
        // Before `configure`, so that an info callback of the caller's own wins.
        ossl::observe(&mut ssl);
        if let (Some(cache), Some(index)) = (connector.session_cache(), resume::key_index()) {
            ssl.set_ex_data(index, server_name.to_owned());
            if let Some(session) = cache.get(server_name) {
                offer_session(&mut ssl, &session);
            }
        }
        configure(&mut ssl)?;
        let stream = SslStream::new(ssl, MemDuplex::default())
            .map_err(|e| setup_error("creating TLS session", &e))?;
        Ok(Self::new(
            Some(stream),
            None,
            false,
            Some(server_name.to_owned()),
        ))
    }

    /// Queues ciphertext received from the peer. The chunk is kept as is (no copy); empty
    /// chunks are ignored.
    pub fn feed_ciphertext(&mut self, data: Bytes) {
        if data.is_empty() {
            return;
        }
        if let Some(waiting) = &mut self.waiting {
            waiting.hello.feed(data);
        } else if let Some(stream) = &mut self.stream {
            let io = stream.get_mut();
            io.rx_len += data.len();
            io.rx.push_back(data);
        }
    }

    /// Records that the transport reached end of stream: once the queued ciphertext is
    /// consumed, OpenSSL sees EOF. After the handshake, EOF without the peer's
    /// close_notify makes `read` fail with [`Error::Truncated`].
    pub fn feed_eof(&mut self) {
        if let Some(waiting) = &mut self.waiting {
            waiting.hello.feed_eof();
        } else if let Some(stream) = &mut self.stream {
            stream.get_mut().eof = true;
        }
    }

    /// Bytes of ciphertext fed in but not yet consumed by OpenSSL (for a server waiting
    /// for the ClientHello: the bytes held).
    pub fn buffered_ciphertext_in(&self) -> usize {
        match (&self.waiting, &self.stream) {
            (Some(waiting), _) => waiting.hello.len(),
            (None, Some(stream)) => stream.get_ref().rx_len,
            (None, None) => 0,
        }
    }

    /// Whether there is ciphertext to send to the peer.
    pub fn has_ciphertext(&self) -> bool {
        self.stream
            .as_ref()
            .is_some_and(|s| !s.get_ref().tx.is_empty())
    }

    /// Takes all pending ciphertext as one chunk (split off the output buffer, no copy),
    /// or `None` if there is none.
    pub fn take_ciphertext(&mut self) -> Option<Bytes> {
        let tx = &mut self.stream.as_mut()?.get_mut().tx;
        if tx.is_empty() {
            None
        } else {
            // The rest of the capacity stays: `take_output_buffer` hands it on, so that
            // an idle session holds none (see `provide_output_buffer`).
            Some(tx.split().freeze())
        }
    }

    /// Lends the session a buffer to encrypt into, so that one buffer can serve many
    /// sessions (the `Tls` handle keeps one per loop). Used only while no ciphertext is
    /// pending; otherwise `buf` is handed back.
    ///
    /// Allocating a fresh output buffer for every batch costs page faults once buffers
    /// are large; a shared one is reclaimed in place once the ciphertext split off it has
    /// been written and dropped.
    pub fn provide_output_buffer(&mut self, buf: BytesMut) -> Option<BytesMut> {
        let Some(stream) = &mut self.stream else {
            return Some(buf);
        };
        let tx = &mut stream.get_mut().tx;
        if tx.is_empty() {
            *tx = buf;
            tx.clear();
            None
        } else {
            Some(buf)
        }
    }

    /// Takes the output buffer, with its spare capacity, once its ciphertext has been
    /// taken (`None` while ciphertext is pending). The session keeps no buffer.
    pub fn take_output_buffer(&mut self) -> Option<BytesMut> {
        let tx = &mut self.stream.as_mut()?.get_mut().tx;
        tx.is_empty().then(|| std::mem::take(tx))
    }

    /// Makes room for `additional` bytes of ciphertext, so encrypting a large write does
    /// not grow (and copy) the output buffer record by record.
    pub fn reserve_ciphertext(&mut self, additional: usize) {
        if let Some(stream) = &mut self.stream {
            stream.get_mut().tx.reserve(additional);
        }
    }

    /// Bytes of ciphertext waiting to be taken with [`take_ciphertext`](Self::take_ciphertext).
    pub fn buffered_ciphertext_out(&self) -> usize {
        self.stream.as_ref().map_or(0, |s| s.get_ref().tx.len())
    }

    fn fail(&mut self, e: Error) -> Error {
        self.failed = Some(e.clone());
        e
    }

    fn check_failed(&self) -> Result<()> {
        match &self.failed {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    /// The reason and the alert of a failed OpenSSL call.
    fn failure(&self, e: &ssl::Error) -> TlsFailure {
        let alert = match self.ssl() {
            Some(ssl) => ossl::failure_alert(ssl, e),
            None => ossl::received_alert(e).map(TlsAlert::Received),
        };
        TlsFailure::new(ssl_error_reason(e), alert)
    }

    fn handshake_error(&self, e: &ssl::Error) -> Error {
        let Some(ssl) = self.ssl() else {
            return Error::Handshake(self.failure(e));
        };
        if ossl::is_verify_failure(e) {
            let result = ssl.verify_result();
            let reason = if result == openssl::x509::X509VerifyResult::OK {
                "certificate verify failed"
            } else {
                result.error_string()
            };
            let alert = ossl::sent_alert(ssl).map(TlsAlert::Sent);
            let depth = ossl::verify_depth(ssl);
            return Error::Verification(VerifyError::new(result.as_raw(), depth, reason, alert));
        }
        match e.code() {
            ErrorCode::SYSCALL if ossl::is_unexpected_eof(e) => Error::Handshake(TlsFailure::new(
                ossl::UNEXPECTED_EOF,
                ossl::failure_alert(ssl, e),
            )),
            ErrorCode::ZERO_RETURN => Error::Handshake(TlsFailure::new(
                "peer sent close_notify during the handshake",
                None,
            )),
            _ => Error::Handshake(self.failure(e)),
        }
    }

    /// Drives the handshake with the ciphertext fed so far.
    ///
    /// Returns `Ok(true)` once the handshake is complete (and on every later call),
    /// `Ok(false)` when more ciphertext from the peer is needed. Send
    /// [`take_ciphertext`](Self::take_ciphertext) after each call either way.
    ///
    /// Errors: [`Error::Verification`] when we reject the peer's certificate (OpenSSL's
    /// verify code and its [`VerifyKind`](crate::error::VerifyKind), e.g. a hostname
    /// mismatch), [`Error::Handshake`] for anything else, with the alert sent or received
    /// if there was one, including EOF before the handshake completed.
    pub fn handshake(&mut self) -> Result<bool> {
        self.check_failed()?;
        if self.handshake_done {
            return Ok(true);
        }
        if let Some(waiting) = &self.waiting {
            if !waiting.hello.is_ready() {
                return Ok(false);
            }
            if let Err(e) = self.start_server() {
                return Err(self.fail(e));
            }
        }
        let Some(stream) = &mut self.stream else {
            return Ok(false);
        };
        clear_error_queue();
        match stream.do_handshake() {
            Ok(()) => {
                self.handshake_done = true;
                Ok(true)
            }
            Err(e) if matches!(e.code(), ErrorCode::WANT_READ | ErrorCode::WANT_WRITE) => Ok(false),
            Err(e) => {
                let err = self.handshake_error(&e);
                Err(self.fail(err))
            }
        }
    }

    /// Whether the handshake has completed.
    pub fn is_handshake_complete(&self) -> bool {
        self.handshake_done
    }

    /// Decrypts at most one record's worth of plaintext into `buf`'s spare room
    /// (reserving 16 KiB when there is less), appending to what `buf` already holds.
    ///
    /// Call it in a loop until it returns [`ReadOutcome::WantRead`] or
    /// [`ReadOutcome::Eof`]: OpenSSL may hold more decrypted data than one call returns.
    /// Before the handshake completes, `read` drives the handshake first. Post-handshake
    /// messages (session tickets, KeyUpdate) are handled transparently; a KeyUpdate reply
    /// shows up in [`take_ciphertext`](Self::take_ciphertext).
    ///
    /// Errors: [`Error::Truncated`] when the transport ended without close_notify (after
    /// all plaintext received before it was returned), [`Error::Tls`] for a bad record
    /// (we send an alert) or a fatal alert received (with TLS 1.3, a server refusing our
    /// client certificate), and the handshake errors of [`handshake`](Self::handshake).
    pub fn read(&mut self, buf: &mut BytesMut) -> Result<ReadOutcome> {
        self.check_failed()?;
        if !self.handshake()? {
            return Ok(ReadOutcome::WantRead);
        }
        if self.close_notify_received {
            return Ok(ReadOutcome::Eof);
        }
        let Some(stream) = &mut self.stream else {
            return Ok(ReadOutcome::WantRead);
        };
        if buf.capacity() - buf.len() < MAX_RECORD_PLAINTEXT {
            buf.reserve(MAX_RECORD_PLAINTEXT);
        }
        // One `SSL_read` returns at most one record. OpenSSL writes into the spare
        // capacity as it is: no zero-filling first.
        let room = (buf.capacity() - buf.len()).min(MAX_RECORD_PLAINTEXT);
        clear_error_queue();
        let result = stream.ssl_read_uninit(&mut buf.spare_capacity_mut()[..room]);
        match result {
            Ok(n) => Ok(ReadOutcome::Data(mark_filled(buf, n.min(room)))),
            Err(e) => self.read_error(&e),
        }
    }

    /// Encrypts plaintext from `data`, returning how many bytes were taken.
    ///
    /// With partial writes enabled (the acceptor and connector do this), `write` returns
    /// after each record (at most 16 KiB): the caller loops until all of `data` is taken.
    /// It never blocks, since the ciphertext goes to memory; take it with
    /// [`take_ciphertext`](Self::take_ciphertext). `Ok(0)` means nothing was taken (only
    /// for empty `data`, or if OpenSSL needs input first, which does not happen without
    /// renegotiation).
    ///
    /// Errors: [`Error::InvalidState`] before the handshake completes or after
    /// [`shutdown`](Self::shutdown); [`Error::Tls`] if OpenSSL fails.
    pub fn write(&mut self, data: &[u8]) -> Result<usize> {
        self.check_failed()?;
        if !self.handshake_done {
            return Err(Error::InvalidState(
                "write before the TLS handshake completed",
            ));
        }
        if self.shutdown_sent {
            return Err(Error::InvalidState("write after TLS shutdown"));
        }
        if data.is_empty() {
            return Ok(0);
        }
        let Some(stream) = &mut self.stream else {
            return Err(Error::InvalidState(
                "write before the TLS handshake completed",
            ));
        };
        clear_error_queue();
        match stream.ssl_write(data) {
            Ok(n) => {
                self.write_retry_pending = false;
                Ok(n)
            }
            Err(e) if matches!(e.code(), ErrorCode::WANT_READ | ErrorCode::WANT_WRITE) => {
                self.write_retry_pending = true;
                Ok(0)
            }
            Err(e) => {
                let err = Error::Tls(self.failure(&e));
                Err(self.fail(err))
            }
        }
    }

    /// Sends a TLS 1.3 KeyUpdate: our sending keys change from the next record on, and
    /// with `request_peer` the peer is asked to update its sending keys too (its reply
    /// shows up as ciphertext after a later [`read`](Self::read)). Take the message with
    /// [`take_ciphertext`](Self::take_ciphertext). Plaintext written afterwards is
    /// encrypted with the new keys; nothing is lost or reordered.
    ///
    /// # Errors
    /// [`Error::InvalidState`] before the handshake completes, after
    /// [`shutdown`](Self::shutdown), with TLS 1.2 (which has no KeyUpdate), or while a
    /// partial write is pending; [`Error::Tls`] if OpenSSL refuses; the session's
    /// earlier fatal error.
    pub fn key_update(&mut self, request_peer: bool) -> Result<()> {
        self.check_failed()?;
        if !self.handshake_done {
            return Err(Error::InvalidState(
                "KeyUpdate before the handshake completed",
            ));
        }
        if self.shutdown_sent {
            return Err(Error::InvalidState("KeyUpdate after TLS shutdown"));
        }
        let Some(stream) = &mut self.stream else {
            return Err(Error::InvalidState(
                "KeyUpdate before the handshake completed",
            ));
        };
        if stream.ssl().version2() != Some(ssl::SslVersion::TLS1_3) {
            return Err(Error::InvalidState("KeyUpdate needs TLS 1.3"));
        }
        if self.write_retry_pending {
            return Err(Error::InvalidState(
                "KeyUpdate while a partial write is pending",
            ));
        }
        clear_error_queue();
        if !ossl::request_key_update(stream, request_peer) {
            let stack = ErrorStack::get();
            return Err(Error::tls(format!("KeyUpdate: {}", stack_message(&stack))));
        }
        // The request only marks the session; the handshake machinery writes the
        // message now (into the memory transport, so it completes at once).
        clear_error_queue();
        match stream.do_handshake() {
            Ok(()) => Ok(()),
            Err(e) if matches!(e.code(), ErrorCode::WANT_READ | ErrorCode::WANT_WRITE) => Ok(()),
            Err(e) => {
                let err = Error::Tls(self.failure(&e));
                Err(self.fail(err))
            }
        }
    }

    /// Queues our close_notify alert (once; later calls do nothing). Take it with
    /// [`take_ciphertext`](Self::take_ciphertext). This does not wait for the peer's
    /// close_notify; keep reading to see it as [`ReadOutcome::Eof`].
    ///
    /// Errors: [`Error::InvalidState`] before the handshake completes, or the session's
    /// earlier fatal error.
    pub fn shutdown(&mut self) -> Result<()> {
        self.check_failed()?;
        if self.shutdown_sent {
            return Ok(());
        }
        if !self.handshake_done {
            return Err(Error::InvalidState(
                "TLS shutdown before the handshake completed",
            ));
        }
        let Some(stream) = &mut self.stream else {
            return Err(Error::InvalidState(
                "TLS shutdown before the handshake completed",
            ));
        };
        clear_error_queue();
        match stream.shutdown() {
            Ok(_) => {
                self.shutdown_sent = true;
                Ok(())
            }
            Err(e) if matches!(e.code(), ErrorCode::WANT_READ | ErrorCode::WANT_WRITE) => {
                self.shutdown_sent = true;
                Ok(())
            }
            Err(e) => {
                let err = Error::Tls(self.failure(&e));
                Err(self.fail(err))
            }
        }
    }

    /// Whether [`shutdown`](Self::shutdown) has queued our close_notify.
    pub fn is_shutdown_sent(&self) -> bool {
        self.shutdown_sent
    }

    /// Whether the peer's close_notify has been read (a `read` returned `Eof`).
    pub fn received_close_notify(&self) -> bool {
        self.close_notify_received
    }

    /// Whether this is the server side.
    pub fn is_server(&self) -> bool {
        self.is_server
    }

    /// The error that failed the session, if any.
    pub fn error(&self) -> Option<&Error> {
        self.failed.as_ref()
    }

    /// What was negotiated (meaningful once the handshake is complete).
    pub fn info(&self) -> SessionInfo {
        let Some(ssl) = self.ssl() else {
            return SessionInfo {
                version: "unknown",
                cipher: None,
                alpn: None,
                server_name: self.requested_name.clone(),
                resumed: false,
            };
        };
        let server_name = if self.is_server {
            ssl.servername(NameType::HOST_NAME).map(str::to_owned)
        } else {
            self.requested_name.clone()
        };
        SessionInfo {
            version: ssl.version_str(),
            cipher: ssl.current_cipher().map(|c| c.name().to_owned()),
            alpn: ssl.selected_alpn_protocol().map(<[u8]>::to_vec),
            server_name,
            resumed: ssl.session_reused(),
        }
    }

    /// Whether the handshake resumed an earlier session (`false` before it completes).
    pub fn is_resumed(&self) -> bool {
        self.handshake_done && self.ssl().is_some_and(SslRef::session_reused)
    }

    /// The peer's certificate, if it sent one.
    pub fn peer_certificate(&self) -> Option<X509> {
        self.ssl()?.peer_certificate()
    }

    /// The certificate chain the peer sent, if any. As in OpenSSL, on the server side it
    /// does not include the client's leaf certificate (see
    /// [`peer_certificate`](Self::peer_certificate)).
    pub fn peer_cert_chain(&self) -> Option<Vec<X509>> {
        self.ssl()?
            .peer_cert_chain()
            .map(|chain| chain.iter().map(|c| c.to_owned()).collect())
    }

    /// The underlying OpenSSL session, for queries this type does not wrap; `None` for a
    /// server session still waiting for the ClientHello (see
    /// [`server`](Self::server)), which has no `SSL` yet.
    ///
    /// There is no `ssl_mut`: the `openssl` crate gives no mutable access to the `SSL`
    /// inside an `SslStream`. Adjust a session before its handshake with
    /// [`server_with`](Self::server_with) / [`client_with`](Self::client_with).
    pub fn ssl(&self) -> Option<&SslRef> {
        self.stream.as_ref().map(SslStream::ssl)
    }

    /// Looks at what comes next without consuming application data: `Data(n)` if
    /// plaintext is ready (it stays for [`read`](Self::read)), `Eof` once the peer's
    /// close_notify is read (it is consumed), `WantRead` if more ciphertext is needed.
    /// Post-handshake messages before the data are processed as by `read`.
    ///
    /// # Errors
    /// As [`read`](Self::read).
    pub fn peek(&mut self) -> Result<ReadOutcome> {
        self.check_failed()?;
        if !self.handshake()? {
            return Ok(ReadOutcome::WantRead);
        }
        if self.close_notify_received {
            return Ok(ReadOutcome::Eof);
        }
        let Some(stream) = &mut self.stream else {
            return Ok(ReadOutcome::WantRead);
        };
        clear_error_queue();
        let mut byte = [0u8; 1];
        match stream.ssl_peek(&mut byte) {
            Ok(n) => Ok(ReadOutcome::Data(n)),
            Err(e) => self.read_error(&e),
        }
    }

    /// What an `SSL_read` or `SSL_peek` error means for the reader: the peer's
    /// close_notify is the end of the stream, a want is "feed more", a TCP-level end
    /// without close_notify is truncation, anything else fails the session.
    fn read_error(&mut self, e: &ssl::Error) -> Result<ReadOutcome> {
        match e.code() {
            ErrorCode::ZERO_RETURN => {
                self.close_notify_received = true;
                Ok(ReadOutcome::Eof)
            }
            ErrorCode::WANT_READ | ErrorCode::WANT_WRITE => Ok(ReadOutcome::WantRead),
            _ if ossl::is_unexpected_eof(e) => Err(self.fail(Error::Truncated)),
            _ => {
                let err = Error::Tls(self.failure(e));
                Err(self.fail(err))
            }
        }
    }

    /// Takes the bytes fed in that OpenSSL has not read, once the peer's close_notify
    /// has been read: what the peer sent after it (plaintext of the next phase, for a
    /// protocol that goes back to plaintext, as `Tls::unwrap` does). OpenSSL reads
    /// records exactly (no read-ahead), so nothing after the close_notify is consumed.
    ///
    /// # Errors
    /// [`Error::InvalidState`] before the peer's close_notify was read.
    pub fn take_unread(&mut self) -> Result<Bytes> {
        if !self.close_notify_received {
            return Err(Error::InvalidState(
                "unread bytes are taken after the peer's close_notify",
            ));
        }
        let Some(stream) = &mut self.stream else {
            return Ok(Bytes::new());
        };
        let io = stream.get_mut();
        io.rx_len = 0;
        let mut chunks = std::mem::take(&mut io.rx);
        Ok(match chunks.len() {
            0 => Bytes::new(),
            1 => chunks.pop_front().unwrap_or_default(),
            _ => {
                let mut all = BytesMut::new();
                for c in chunks {
                    all.extend_from_slice(&c);
                }
                all.freeze()
            }
        })
    }
}
