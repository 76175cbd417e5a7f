//! The `Tls` handle: a [`TlsSession`] pumped over any inner [`Stream`].
//!
//! It owns the session, the plaintext not yet encrypted and the user's callbacks; the
//! inner stream owns the transport. It talks to the inner stream only through the
//! `Stream` trait, so it runs over TCP, a Unix socket or another `Tls`.
//!
//! One function, [`pump`], moves everything: it advances the handshake, encrypts queued
//! plaintext, hands new ciphertext to the inner stream as one write, decrypts and
//! delivers plaintext, and turns inner reading on or off. It is re-entrancy guarded: a
//! user callback that calls back into the handle (a write from the read callback) only
//! marks the pump to go round once more. User callbacks run only from pumps started by
//! the loop (inner stream events, deferred pumps), never inside a user's call.

use std::collections::VecDeque;
use std::fmt;
use std::marker::PhantomData;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use openssl::ssl::SslRef;
use openssl::x509::X509;

use super::config::{TlsAcceptor, TlsConnector};
use super::session::{ReadOutcome, SessionInfo, TlsSession};
use super::stats::TlsStats;
use crate::error::{Error, Result};
use crate::event_loop::{DoneCb, Loop};
use crate::handle::{Ops, RawId};
use crate::stream::{ReadResult, Stream};
use crate::tcp::Tcp;
use crate::timer::Timer;

mod idle;
mod queues;

/// Default time allowed for a handshake before the handle fails with
/// [`Error::TimedOut`]`(Timeout::Handshake)`.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// Plaintext gathered into one record from small writes.
const RECORD: usize = 16 * 1024;
/// Plaintext delivered to the read callback in one call, at most.
const DELIVER_CHUNK: usize = 256 * 1024;

type ReadCb<S> = Box<dyn FnMut(&mut Loop, Tls<S>, ReadResult)>;
type CloseCb<S> = Box<dyn FnOnce(&mut Loop, Tls<S>)>;
type HandshakeCb<S> = Box<dyn FnOnce(&mut Loop, Tls<S>, Result<()>)>;

/// A TLS stream handle over an inner [`Stream`] (by default [`Tcp`]). Implements
/// [`Stream`] with the same semantics as [`Tcp`].
///
/// The handshake starts as soon as the handle exists, whether or not reading was
/// started; writes made before it completes are queued and encrypted after it. Its
/// outcome goes to the optional [`on_handshake`](Tls::on_handshake) callback; a failure
/// then goes to the read callback (if reading), and queued writes fail with it.
///
/// End of stream: the peer's close_notify is a clean EOF (`Ok(None)`); a transport EOF
/// without it, after the handshake, is [`Error::Truncated`]; during the handshake it is
/// [`Error::Handshake`]. Plaintext decrypted before either is always delivered first.
///
/// # Examples
/// ```no_run
/// use biotls::tls::{Tls, TlsConnector};
/// use biotls::{Loop, Stream, Tcp};
///
/// let mut lp = Loop::new()?;
/// let connector = TlsConnector::builder()?.ca_file("certs/ca.pem")?.build();
/// let tcp = Tcp::connect(&mut lp, "127.0.0.1:4433".parse().unwrap(), |_, _, r| {
///     if let Err(e) = r { eprintln!("connect: {e}"); }
/// })?;
/// let tls = Tls::client(&mut lp, tcp, &connector, "localhost")?;
/// tls.write(&mut lp, &b"hello\n"[..], |_, _, _| {})?;
/// tls.start_read(&mut lp, |lp, tls, r| match r {
///     Ok(Some(data)) => print!("{}", String::from_utf8_lossy(&data)),
///     _ => tls.close(lp, |_, _| {}),
/// })?;
/// lp.run()?;
/// # Ok::<(), biotls::Error>(())
/// ```
pub struct Tls<S: Stream = Tcp>(pub(crate) RawId, PhantomData<fn() -> S>);

impl<S: Stream> Clone for Tls<S> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<S: Stream> Copy for Tls<S> {}
impl<S: Stream> PartialEq for Tls<S> {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}
impl<S: Stream> Eq for Tls<S> {}
impl<S: Stream> std::hash::Hash for Tls<S> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}
impl<S: Stream> fmt::Debug for Tls<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tls{:?}", self.0)
    }
}
impl<S: Stream> fmt::Display for Tls<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tls{}", self.0)
    }
}

struct WriteReq {
    /// Plaintext offset of the request's last byte.
    plain_end: u64,
    /// Ciphertext offset of the record that carries its last byte, once encrypted.
    cipher_end: Option<u64>,
    cb: DoneCb,
}

enum ShutdownState {
    Open,
    /// Requested; runs after the handshake and the queued writes.
    Pending(DoneCb),
    /// close_notify queued and the inner stream's shutdown requested.
    Sent,
}

struct TlsState<S: Stream> {
    inner: S,
    session: TlsSession,
    read_cb: Option<ReadCb<S>>,
    reading: bool,
    read_epoch: u64,
    handshake_cb: Option<HandshakeCb<S>>,
    /// The handshake completed and its callback has yet to run.
    handshake_to_report: bool,
    handshake_timer: Option<Timer>,
    idle: idle::Idle,
    /// Plaintext accepted by `write` and not yet encrypted.
    pending: VecDeque<Bytes>,
    pending_bytes: usize,
    plain_queued: u64,
    plain_encrypted: u64,
    reqs: VecDeque<WriteReq>,
    /// How many requests at the front of `reqs` have their `cipher_end`.
    marked: usize,
    /// Ciphertext handed to the inner stream, and ciphertext it reported written.
    cipher_sent: u64,
    cipher_acked: u64,
    shutdown: ShutdownState,
    inner_reading: bool,
    inner_eof: bool,
    /// A clean EOF or an error was delivered: the read side is finished.
    read_finished: bool,
    failed: Option<Error>,
    failure_reported: bool,
    pumping: bool,
    pump_again: bool,
    /// A deferred pump will encrypt the small writes queued meanwhile.
    cork: bool,
    /// Set by `close`: the handle is gone for the user, and waits for the inner stream's
    /// close to settle the writes whose ciphertext it had already taken.
    closing: Option<CloseCb<S>>,
    /// For [`Tls::stats`]: creation time, handshake duration, bytes received and
    /// delivered (the bytes sent are `plain_encrypted` and `cipher_sent`).
    created: Instant,
    handshake_duration: Option<Duration>,
    cipher_received: u64,
    plain_delivered: u64,
}

/// The state of an open handle (not closing).
fn st<S: Stream>(lp: &mut Loop, id: RawId) -> Option<&mut TlsState<S>> {
    st_any::<S>(lp, id).filter(|t| t.closing.is_none())
}

/// The state of an open or closing handle.
fn st_any<S: Stream>(lp: &mut Loop, id: RawId) -> Option<&mut TlsState<S>> {
    lp.state::<TlsState<S>>(id)
}

fn st_ref<S: Stream>(lp: &Loop, id: RawId) -> Option<&TlsState<S>> {
    lp.state_ref::<TlsState<S>>(id)
        .filter(|t| t.closing.is_none())
}

impl<S: Stream> TlsState<S> {
    /// A `Tls` gets no readiness events and asks for no service: its inner stream's
    /// callbacks and deferred pumps drive it.
    const OPS: &'static Ops = &Ops::NONE;
}

impl<S: Stream> Tls<S> {
    /// Wraps `inner` as the server side of a TLS connection.
    ///
    /// # Errors
    /// [`Error::Config`] if OpenSSL cannot create the session; [`Error::Closed`] if
    /// `inner` is closed.
    pub fn server(lp: &mut Loop, inner: S, acceptor: &TlsAcceptor) -> Result<Tls<S>> {
        Tls::with_session(lp, inner, TlsSession::server(acceptor)?)
    }

    /// Wraps `inner` as the client side of a TLS connection to `server_name`, which is
    /// sent as SNI (unless it is an IP address) and verified against the certificate.
    ///
    /// # Errors
    /// As [`server`](Tls::server).
    pub fn client(
        lp: &mut Loop,
        inner: S,
        connector: &TlsConnector,
        server_name: &str,
    ) -> Result<Tls<S>> {
        Tls::with_session(lp, inner, TlsSession::client(connector, server_name)?)
    }

    /// Wraps `inner` with a session made by hand (for per-connection `SslRef` settings,
    /// see [`TlsSession::server_with`] and [`TlsSession::client_with`]).
    ///
    /// # Errors
    /// [`Error::Closed`] if `inner` is closed.
    pub fn with_session(lp: &mut Loop, inner: S, session: TlsSession) -> Result<Tls<S>> {
        if !inner.is_open(lp) {
            return Err(Error::Closed);
        }
        let state = TlsState {
            inner,
            session,
            read_cb: None,
            reading: false,
            read_epoch: 0,
            handshake_cb: None,
            handshake_to_report: false,
            handshake_timer: None,
            idle: idle::Idle::default(),
            pending: VecDeque::new(),
            pending_bytes: 0,
            plain_queued: 0,
            plain_encrypted: 0,
            reqs: VecDeque::new(),
            marked: 0,
            cipher_sent: 0,
            cipher_acked: 0,
            shutdown: ShutdownState::Open,
            inner_reading: false,
            inner_eof: false,
            read_finished: false,
            failed: None,
            failure_reported: false,
            pumping: false,
            pump_again: false,
            cork: false,
            closing: None,
            created: Instant::now(),
            handshake_duration: None,
            cipher_received: 0,
            plain_delivered: 0,
        };
        let id = lp.insert(Box::new(state), TlsState::<S>::OPS);
        let tls = Tls(id, PhantomData);
        tls.set_handshake_timeout(lp, Some(DEFAULT_HANDSHAKE_TIMEOUT))?;
        // Start the handshake from the loop: a client's ClientHello goes out, a server
        // starts reading for the peer's.
        lp.defer(move |lp| pump::<S>(lp, id, true));
        Ok(tls)
    }

    /// Sets the callback that receives the handshake's outcome (once).
    ///
    /// # Errors
    /// [`Error::Closed`].
    pub fn on_handshake(
        self,
        lp: &mut Loop,
        cb: impl FnOnce(&mut Loop, Tls<S>, Result<()>) + 'static,
    ) -> Result<()> {
        let t = st::<S>(lp, self.0).ok_or(Error::Closed)?;
        t.handshake_cb = Some(Box::new(cb));
        Ok(())
    }

    /// Fails the handshake with [`Error::TimedOut`]`(Timeout::Handshake)` if it has not
    /// completed within `timeout` from now (`None`: no limit). The default is
    /// [`DEFAULT_HANDSHAKE_TIMEOUT`].
    ///
    /// # Errors
    /// [`Error::Closed`].
    pub fn set_handshake_timeout(self, lp: &mut Loop, timeout: Option<Duration>) -> Result<()> {
        let t = st::<S>(lp, self.0).ok_or(Error::Closed)?;
        let done = t.session.is_handshake_complete();
        let old = t.handshake_timer.take();
        if let Some(old) = old {
            old.close(lp);
        }
        let (Some(timeout), false) = (timeout, done) else {
            return Ok(());
        };
        let timer = Timer::new(lp)?;
        timer.unref(lp)?;
        let id = self.0;
        timer.start(lp, timeout, None, move |lp, timer| {
            timer.close(lp);
            if let Some(t) = st::<S>(lp, id) {
                t.handshake_timer = None;
                if !t.session.is_handshake_complete() && t.failed.is_none() {
                    t.failed = Some(Error::TimedOut(crate::error::Timeout::Handshake));
                    pump::<S>(lp, id, true);
                }
            }
        })?;
        if let Some(t) = st::<S>(lp, self.0) {
            t.handshake_timer = Some(timer);
        }
        Ok(())
    }

    /// Whether the handshake has completed.
    pub fn is_handshake_complete(self, lp: &Loop) -> bool {
        st_ref::<S>(lp, self.0).is_some_and(|t| t.session.is_handshake_complete())
    }

    /// Sends a TLS 1.3 KeyUpdate, and with `request_peer` asks the peer to update its
    /// sending keys too. Writes already queued keep flowing (those not yet encrypted go
    /// out under the new keys), and reading goes on; nothing waits for the peer.
    ///
    /// # Errors
    /// [`Error::Closed`]; [`Error::InvalidState`] before the handshake completes, after
    /// `shutdown`, or on a TLS 1.2 connection; the handle's earlier failure.
    pub fn key_update(self, lp: &mut Loop, request_peer: bool) -> Result<()> {
        let t = st::<S>(lp, self.0).ok_or(Error::Closed)?;
        if let Some(e) = &t.failed {
            return Err(e.clone());
        }
        if !matches!(t.shutdown, ShutdownState::Open) {
            return Err(Error::InvalidState("KeyUpdate after shutdown"));
        }
        t.session.key_update(request_peer)?;
        pump::<S>(lp, self.0, false);
        Ok(())
    }

    /// Bytes moved so far and what was negotiated (see [`TlsStats`]).
    ///
    /// # Errors
    /// [`Error::Closed`].
    pub fn stats(self, lp: &Loop) -> Result<TlsStats> {
        let t = st_ref::<S>(lp, self.0).ok_or(Error::Closed)?;
        let info = t.session.info();
        Ok(TlsStats {
            plaintext_in: t.plain_delivered,
            plaintext_out: t.plain_encrypted,
            ciphertext_in: t.cipher_received,
            ciphertext_out: t.cipher_sent,
            handshake_duration: t.handshake_duration,
            version: info.version,
            cipher: info.cipher,
            alpn: info.alpn,
            resumed: info.resumed && t.session.is_handshake_complete(),
        })
    }

    /// Whether the handshake resumed an earlier session (TLS 1.3 ticket, TLS 1.2 session
    /// id or ticket) instead of a full handshake. `false` before the handshake completes.
    pub fn is_resumed(self, lp: &Loop) -> bool {
        st_ref::<S>(lp, self.0)
            .is_some_and(|t| t.session.is_handshake_complete() && t.session.ssl().session_reused())
    }

    /// What was negotiated: protocol version, cipher, ALPN protocol, SNI name.
    ///
    /// # Errors
    /// [`Error::Closed`].
    pub fn info(self, lp: &Loop) -> Result<SessionInfo> {
        Ok(st_ref::<S>(lp, self.0).ok_or(Error::Closed)?.session.info())
    }

    /// The peer's certificate, once the handshake has received it.
    ///
    /// # Errors
    /// [`Error::Closed`].
    pub fn peer_certificate(self, lp: &Loop) -> Result<Option<X509>> {
        Ok(st_ref::<S>(lp, self.0)
            .ok_or(Error::Closed)?
            .session
            .peer_certificate())
    }

    /// The peer's certificate chain as sent by the peer.
    ///
    /// # Errors
    /// [`Error::Closed`].
    pub fn peer_cert_chain(self, lp: &Loop) -> Result<Option<Vec<X509>>> {
        Ok(st_ref::<S>(lp, self.0)
            .ok_or(Error::Closed)?
            .session
            .peer_cert_chain())
    }

    /// Escape hatch: OpenSSL's view of the connection.
    ///
    /// # Errors
    /// [`Error::Closed`].
    pub fn ssl(self, lp: &Loop) -> Result<&SslRef> {
        Ok(st_ref::<S>(lp, self.0).ok_or(Error::Closed)?.session.ssl())
    }

    /// The inner stream handle.
    ///
    /// # Errors
    /// [`Error::Closed`].
    pub fn inner(self, lp: &Loop) -> Result<S> {
        Ok(st_ref::<S>(lp, self.0).ok_or(Error::Closed)?.inner)
    }

    fn queue_write(
        self,
        lp: &mut Loop,
        bufs: impl IntoIterator<Item = Bytes>,
        cb: DoneCb,
    ) -> Result<()> {
        let t = st::<S>(lp, self.0).ok_or(Error::Closed)?;
        if !matches!(t.shutdown, ShutdownState::Open) {
            return Err(Error::InvalidState("write after shutdown"));
        }
        if let Some(e) = &t.failed {
            return Err(e.clone());
        }
        for b in bufs {
            if !b.is_empty() {
                t.pending_bytes += b.len();
                t.plain_queued += b.len() as u64;
                t.pending.push_back(b);
            }
        }
        let plain_end = t.plain_queued;
        t.reqs.push_back(WriteReq {
            plain_end,
            cipher_end: None,
            cb,
        });
        if t.pending_bytes >= RECORD || !t.session.is_handshake_complete() {
            pump::<S>(lp, self.0, false);
        } else if !t.cork {
            // Small writes are corked until the current callback returns, so that many
            // of them become one record and one write of the inner stream.
            t.cork = true;
            let id = self.0;
            lp.defer(move |lp| {
                if let Some(t) = st::<S>(lp, id) {
                    t.cork = false;
                    pump::<S>(lp, id, true);
                }
            });
        }
        Ok(())
    }
}

impl<S: Stream> Stream for Tls<S> {
    fn start_read<F>(self, lp: &mut Loop, cb: F) -> Result<()>
    where
        F: FnMut(&mut Loop, Self, ReadResult) + 'static,
    {
        let t = st::<S>(lp, self.0).ok_or(Error::Closed)?;
        t.read_cb = Some(Box::new(cb));
        t.reading = true;
        t.read_epoch += 1;
        t.read_finished = false;
        let id = self.0;
        // Plaintext or an EOF may already be buffered: deliver it from the loop.
        lp.defer(move |lp| pump::<S>(lp, id, true));
        Ok(())
    }

    fn stop_read(self, lp: &mut Loop) -> Result<()> {
        let t = st::<S>(lp, self.0).ok_or(Error::Closed)?;
        t.read_cb = None;
        t.reading = false;
        t.read_epoch += 1;
        update_inner_reading::<S>(lp, self.0);
        Ok(())
    }

    fn write_vectored<F>(
        self,
        lp: &mut Loop,
        bufs: impl IntoIterator<Item = Bytes>,
        cb: F,
    ) -> Result<()>
    where
        F: FnOnce(&mut Loop, Self, Result<()>) + 'static,
    {
        self.queue_write(lp, bufs, Box::new(move |lp, r| cb(lp, self, r)))
    }

    fn try_write(self, lp: &mut Loop, data: &[u8]) -> Result<usize> {
        let t = st::<S>(lp, self.0).ok_or(Error::Closed)?;
        if !matches!(t.shutdown, ShutdownState::Open) {
            return Err(Error::InvalidState("write after shutdown"));
        }
        if let Some(e) = &t.failed {
            return Err(e.clone());
        }
        let inner = t.inner;
        if !t.session.is_handshake_complete()
            || !t.pending.is_empty()
            || inner.write_queue_size(lp) > 0
        {
            return Ok(0);
        }
        // The transport is idle: encrypt all of `data` now; it leaves with the next flush.
        let taken = match st::<S>(lp, self.0) {
            Some(t) => {
                let mut off = 0;
                while off < data.len() {
                    match t.session.write(&data[off..]) {
                        Ok(0) => break,
                        Ok(n) => off += n,
                        Err(e) => return Err(e),
                    }
                }
                t.plain_queued += off as u64;
                t.plain_encrypted += off as u64;
                off
            }
            None => 0,
        };
        flush_ciphertext::<S>(lp, self.0);
        Ok(taken)
    }

    fn shutdown<F>(self, lp: &mut Loop, cb: F) -> Result<()>
    where
        F: FnOnce(&mut Loop, Self, Result<()>) + 'static,
    {
        let t = st::<S>(lp, self.0).ok_or(Error::Closed)?;
        if !matches!(t.shutdown, ShutdownState::Open) {
            return Err(Error::InvalidState("already shut down"));
        }
        if let Some(e) = &t.failed {
            return Err(e.clone());
        }
        t.shutdown = ShutdownState::Pending(Box::new(move |lp, r| cb(lp, self, r)));
        pump::<S>(lp, self.0, false);
        Ok(())
    }

    fn close<F>(self, lp: &mut Loop, cb: F)
    where
        F: FnOnce(&mut Loop, Self) + 'static,
    {
        let id = self.0;
        let Some(t) = st::<S>(lp, id) else {
            return;
        };
        t.closing = Some(Box::new(cb));
        // Writes whose ciphertext the inner stream has taken complete with its outcome
        // (written: Ok, cancelled by its close: Cancelled); `finish_close` cancels the
        // rest afterwards, so callbacks keep the order of the writes.
        let timer = t.handshake_timer.take();
        let inner = t.inner;
        let mut idle = std::mem::take(&mut t.idle);
        if let Some(timer) = timer {
            timer.close(lp);
        }
        idle.stop(lp);
        if inner.is_open(lp) {
            inner.close(lp, move |lp, _| finish_close::<S>(lp, id));
        } else {
            // The user closed the inner stream already: nothing is left to settle.
            lp.defer(move |lp| finish_close::<S>(lp, id));
        }
    }

    fn write_queue_size(self, lp: &Loop) -> usize {
        st_ref::<S>(lp, self.0).map_or(0, |t| {
            t.pending_bytes + t.session.buffered_ciphertext_out() + t.inner.write_queue_size(lp)
        })
    }

    fn is_open(self, lp: &Loop) -> bool {
        st_ref::<S>(lp, self.0).is_some()
    }
}

/// Runs [`progress`] until nothing asked for another round. `from_loop` is true when
/// called from the loop (inner events, deferred pumps): only then may user callbacks run.
fn pump<S: Stream>(lp: &mut Loop, id: RawId, from_loop: bool) {
    {
        let Some(t) = st::<S>(lp, id) else { return };
        if t.pumping {
            t.pump_again = true;
            if from_loop {
                // The running pump may be a user call's, which delivers nothing.
                lp.defer(move |lp| pump::<S>(lp, id, true));
            }
            return;
        }
        t.pumping = true;
    }
    loop {
        progress::<S>(lp, id, from_loop);
        let Some(t) = st::<S>(lp, id) else { return };
        if !t.pump_again {
            t.pumping = false;
            return;
        }
        t.pump_again = false;
    }
}

fn progress<S: Stream>(lp: &mut Loop, id: RawId, from_loop: bool) {
    let Some(t) = st::<S>(lp, id) else { return };
    if t.failed.is_none() && !t.session.is_handshake_complete() {
        match t.session.handshake() {
            Ok(true) => {
                t.handshake_to_report = true;
                t.handshake_duration = Some(t.created.elapsed());
                if let Some(timer) = t.handshake_timer.take() {
                    timer.close(lp);
                }
            }
            Ok(false) => {}
            Err(e) => t.failed = Some(e),
        }
    }
    if let Err(e) = encrypt::<S>(lp, id)
        && let Some(t) = st::<S>(lp, id)
    {
        t.failed.get_or_insert(e);
    }
    // Handshake messages, alerts (also those of a failure), records, close_notify.
    flush_ciphertext::<S>(lp, id);
    complete_acked::<S>(lp, id, false);
    update_inner_reading::<S>(lp, id);
    if !from_loop {
        if st::<S>(lp, id).is_some_and(|t| t.failed.is_some() && !t.failure_reported) {
            lp.defer(move |lp| pump::<S>(lp, id, true));
        }
        return;
    }
    let Some(t) = st::<S>(lp, id) else { return };
    if t.failed.is_some() {
        report_failure::<S>(lp, id);
        return;
    }
    if t.handshake_to_report {
        t.handshake_to_report = false;
        if let Some(cb) = t.handshake_cb.take() {
            cb(lp, Tls(id, PhantomData), Ok(()));
        }
    }
    deliver::<S>(lp, id);
}

/// Encrypts queued plaintext (after the handshake), gathering small writes into records
/// of up to 16 KiB, and queues close_notify once a requested shutdown's writes are in.
fn encrypt<S: Stream>(lp: &mut Loop, id: RawId) -> Result<()> {
    let Some(t) = st::<S>(lp, id) else {
        return Ok(());
    };
    if t.failed.is_some() || !t.session.is_handshake_complete() {
        return Ok(());
    }
    // Room for all of it at once: one allocation instead of a copy per doubling. Each
    // record adds at most 5 (header) + 1 (content type) + 16 (tag) bytes in TLS 1.3,
    // 5 + 8 + 16 in TLS 1.2.
    let records = t.pending_bytes.div_ceil(RECORD);
    if t.pending_bytes > 0 {
        // Encrypt into the loop's output buffer (reclaimed in place when the ciphertext
        // split off it last time has been written and dropped).
        let spare = std::mem::take(&mut lp.cipher_buf);
        let Some(t) = st::<S>(lp, id) else {
            return Ok(());
        };
        if let Some(unused) = t.session.provide_output_buffer(spare) {
            lp.cipher_buf = unused;
        }
    }
    let Some(t) = st::<S>(lp, id) else {
        return Ok(());
    };
    t.session.reserve_ciphertext(t.pending_bytes + records * 32);
    let mut stage: Vec<u8> = Vec::new();
    while let Some(front_len) = t.pending.front().map(Bytes::len) {
        let n = if front_len >= RECORD || t.pending.len() == 1 {
            let Some(front) = t.pending.front_mut() else {
                break;
            };
            let n = t.session.write(front)?;
            front.advance(n);
            if front.is_empty() {
                t.pending.pop_front();
            }
            n
        } else {
            // Several small buffers: one record instead of one each.
            stage.clear();
            stage.reserve(RECORD);
            while stage.len() < RECORD {
                let Some(b) = t.pending.front_mut() else {
                    break;
                };
                let take = b.len().min(RECORD - stage.len());
                stage.extend_from_slice(&b[..take]);
                b.advance(take);
                if b.is_empty() {
                    t.pending.pop_front();
                }
            }
            let mut off = 0;
            while off < stage.len() {
                match t.session.write(&stage[off..])? {
                    0 => return Err(Error::tls("TLS write made no progress")),
                    n => off += n,
                }
            }
            off
        };
        if n == 0 {
            return Err(Error::tls("TLS write made no progress"));
        }
        // `n` is at most the plaintext taken from `pending`, which `pending_bytes` counts.
        t.pending_bytes -= n;
        t.plain_encrypted += n as u64;
        mark_encrypted(t);
    }
    // Zero-length writes at the end of the queue.
    mark_encrypted(t);
    if t.pending.is_empty() && matches!(t.shutdown, ShutdownState::Pending(_)) {
        t.session.shutdown()?;
    }
    Ok(())
}

/// Gives the requests whose plaintext is now all encrypted the ciphertext offset that
/// completes them. `reqs[..marked]` are marked already, so each request is visited once.
fn mark_encrypted<S: Stream>(t: &mut TlsState<S>) {
    let cipher_now = t.cipher_sent + t.session.buffered_ciphertext_out() as u64;
    while let Some(req) = t.reqs.get_mut(t.marked) {
        if req.plain_end > t.plain_encrypted {
            break;
        }
        req.cipher_end = Some(cipher_now);
        t.marked += 1;
    }
}

/// Hands all ciphertext the session produced to the inner stream as one write, and
/// performs a requested shutdown after its close_notify.
fn flush_ciphertext<S: Stream>(lp: &mut Loop, id: RawId) {
    let Some(t) = st::<S>(lp, id) else { return };
    let inner = t.inner;
    let data = t.session.take_ciphertext();
    // The session keeps no buffer between flushes; the loop keeps the larger one.
    let spare = t.session.take_output_buffer();
    if let Some(spare) = spare
        && spare.capacity() > lp.cipher_buf.capacity()
    {
        lp.cipher_buf = spare;
    }
    if let Some(data) = data {
        let Some(t) = st::<S>(lp, id) else { return };
        t.cipher_sent += data.len() as u64;
        let end = t.cipher_sent;
        let queued = inner.write(lp, data, move |lp, _, r| {
            on_inner_written::<S>(lp, id, end, r)
        });
        if let Err(e) = queued
            && let Some(t) = st::<S>(lp, id)
        {
            t.failed.get_or_insert(e);
        }
    }
    let Some(t) = st::<S>(lp, id) else { return };
    if t.session.is_shutdown_sent()
        && matches!(t.shutdown, ShutdownState::Pending(_))
        && let ShutdownState::Pending(cb) = std::mem::replace(&mut t.shutdown, ShutdownState::Sent)
    {
        // The inner shutdown waits for the close_notify write queued above.
        let shut = inner.shutdown(lp, move |lp, _, r| cb(lp, r));
        if let Err(e) = shut
            && let Some(t) = st::<S>(lp, id)
        {
            t.failed.get_or_insert(e);
        }
    }
}

/// After the inner stream closed (its write callbacks have all run): the writes still
/// waiting are cancelled, then the close callback runs and the slot is freed.
fn finish_close<S: Stream>(lp: &mut Loop, id: RawId) {
    let Some(any) = lp.remove(id) else {
        return;
    };
    let Ok(mut t) = any.downcast::<TlsState<S>>() else {
        return;
    };
    let tls = Tls(id, PhantomData);
    if let Some(hs) = t.handshake_cb.take() {
        hs(lp, tls, Err(Error::Cancelled));
    }
    t.marked = 0;
    for req in t.reqs.drain(..) {
        (req.cb)(lp, Err(Error::Cancelled));
    }
    if let ShutdownState::Pending(cb) = std::mem::replace(&mut t.shutdown, ShutdownState::Sent) {
        cb(lp, Err(Error::Cancelled));
    }
    if let Some(cb) = t.closing.take() {
        cb(lp, Tls(id, PhantomData));
    }
}

fn on_inner_written<S: Stream>(lp: &mut Loop, id: RawId, end: u64, r: Result<()>) {
    let now = lp.now();
    let Some(t) = st_any::<S>(lp, id) else { return };
    match r {
        Ok(()) => {
            t.idle.touch(now);
            t.cipher_acked = t.cipher_acked.max(end);
            complete_acked::<S>(lp, id, true);
        }
        Err(_) if t.closing.is_some() => {}
        Err(e) => {
            t.failed.get_or_insert(e);
            pump::<S>(lp, id, true);
        }
    }
}

/// Completes the write requests whose last ciphertext byte the inner stream wrote.
/// `direct`: called from the loop, so callbacks may run now instead of being deferred.
fn complete_acked<S: Stream>(lp: &mut Loop, id: RawId, direct: bool) {
    loop {
        let Some(t) = st_any::<S>(lp, id) else { return };
        let acked = t.cipher_acked;
        if t.reqs
            .front()
            .is_none_or(|r| r.cipher_end.is_none_or(|end| end > acked))
        {
            return;
        }
        let Some(req) = t.reqs.pop_front() else {
            return;
        };
        // The front request had its `cipher_end`, so it was among the `marked`.
        t.marked -= 1;
        if direct {
            (req.cb)(lp, Ok(()));
        } else {
            lp.complete(req.cb, Ok(()));
        }
    }
}

/// Reads the inner stream while the handshake needs input or the user is reading.
fn update_inner_reading<S: Stream>(lp: &mut Loop, id: RawId) {
    let Some(t) = st::<S>(lp, id) else { return };
    let want = t.failed.is_none()
        && !t.inner_eof
        && (!t.session.is_handshake_complete() || (t.reading && !t.read_finished));
    if want == t.inner_reading {
        return;
    }
    t.inner_reading = want;
    let inner = t.inner;
    let result = if want {
        inner.start_read(lp, move |lp, _, r| on_inner_read::<S>(lp, id, r))
    } else {
        inner.stop_read(lp)
    };
    if let Err(e) = result
        && let Some(t) = st::<S>(lp, id)
    {
        t.failed.get_or_insert(e);
    }
}

fn on_inner_read<S: Stream>(lp: &mut Loop, id: RawId, r: ReadResult) {
    let now = lp.now();
    let Some(t) = st::<S>(lp, id) else { return };
    match r {
        Ok(Some(data)) => {
            t.idle.touch(now);
            t.cipher_received += data.len() as u64;
            t.session.feed_ciphertext(data);
        }
        Ok(None) => {
            t.inner_eof = true;
            t.inner_reading = false;
            t.session.feed_eof();
            if !t.session.is_handshake_complete() {
                // Let the session name it ("unexpected eof while reading").
                if let Err(e) = t.session.handshake() {
                    t.failed.get_or_insert(e);
                }
            }
        }
        Err(e) => {
            t.inner_reading = false;
            t.failed.get_or_insert(e);
        }
    }
    pump::<S>(lp, id, true);
}

/// Decrypts and delivers plaintext, then a clean EOF or the error that ended reading.
fn deliver<S: Stream>(lp: &mut Loop, id: RawId) {
    loop {
        let Some(t) = st::<S>(lp, id) else { return };
        if !t.reading || t.read_finished || !t.session.is_handshake_complete() {
            return;
        }
        let mut buf = std::mem::take(&mut lp.plain_buf);
        let Some(t) = st::<S>(lp, id) else { return };
        enum End {
            More,
            WantRead,
            Eof,
            Failed(Error),
        }
        let mut end = End::More;
        // Room for the whole batch up front: growing a buffer that holds plaintext
        // would copy it.
        if buf.capacity() - buf.len() < DELIVER_CHUNK + RECORD {
            buf.reserve(DELIVER_CHUNK + RECORD);
        }
        while buf.len() < DELIVER_CHUNK {
            match t.session.read(&mut buf) {
                Ok(ReadOutcome::Data(_)) => {}
                Ok(ReadOutcome::WantRead) => {
                    end = End::WantRead;
                    break;
                }
                Ok(ReadOutcome::Eof) => {
                    end = End::Eof;
                    break;
                }
                Err(e) => {
                    end = End::Failed(e);
                    break;
                }
            }
        }
        // Decrypting may have produced output (a KeyUpdate reply, an alert).
        let data = buf.split().freeze();
        lp.plain_buf = buf;
        if let Some(t) = st::<S>(lp, id) {
            t.plain_delivered += data.len() as u64;
        }
        flush_ciphertext::<S>(lp, id);
        if !data.is_empty() && !call_read::<S>(lp, id, Ok(Some(data))) {
            return;
        }
        match end {
            End::More => continue,   // more plaintext may be waiting
            End::WantRead => return, // the session wants more ciphertext
            End::Eof => {
                if let Some(t) = st::<S>(lp, id) {
                    t.read_finished = true;
                }
                update_inner_reading::<S>(lp, id);
                call_read::<S>(lp, id, Ok(None));
                return;
            }
            End::Failed(e) => {
                if let Some(t) = st::<S>(lp, id) {
                    t.failed.get_or_insert(e);
                }
                report_failure::<S>(lp, id);
                return;
            }
        }
    }
}

/// Calls the read callback; returns whether reading goes on with the same callback.
fn call_read<S: Stream>(lp: &mut Loop, id: RawId, r: ReadResult) -> bool {
    let Some(t) = st::<S>(lp, id) else {
        return false;
    };
    let epoch = t.read_epoch;
    let finished = !matches!(r, Ok(Some(_)));
    if finished {
        t.reading = false;
        t.read_finished = true;
        t.read_epoch += 1;
    }
    let Some(mut cb) = t.read_cb.take() else {
        return false;
    };
    cb(lp, Tls(id, PhantomData), r);
    match st::<S>(lp, id) {
        Some(t) if !finished && t.read_epoch == epoch && t.read_cb.is_none() => {
            t.read_cb = Some(cb);
            true
        }
        _ => false,
    }
}

/// Reports a failure once: plaintext already decrypted first, then the handshake
/// callback, then the read callback (if reading); queued writes fail with the error.
fn report_failure<S: Stream>(lp: &mut Loop, id: RawId) {
    let Some(t) = st::<S>(lp, id) else { return };
    if t.failure_reported {
        return;
    }
    t.failure_reported = true;
    let Some(err) = t.failed.clone() else { return };
    if let Some(timer) = t.handshake_timer.take() {
        timer.close(lp);
    }
    let Some(t) = st::<S>(lp, id) else { return };
    let mut idle = std::mem::take(&mut t.idle);
    idle.stop(lp);
    let Some(t) = st::<S>(lp, id) else { return };
    t.marked = 0;
    let reqs: Vec<_> = t.reqs.drain(..).collect();
    let shutdown = match std::mem::replace(&mut t.shutdown, ShutdownState::Sent) {
        ShutdownState::Pending(cb) => Some(cb),
        other => {
            t.shutdown = other;
            None
        }
    };
    let hs = t.handshake_cb.take();
    update_inner_reading::<S>(lp, id);
    for req in reqs {
        lp.complete(req.cb, Err(err.clone()));
    }
    if let Some(cb) = shutdown {
        lp.complete(cb, Err(err.clone()));
    }
    if let Some(hs) = hs {
        hs(lp, Tls(id, PhantomData), Err(err.clone()));
    }
    if st::<S>(lp, id).is_some_and(|t| t.reading && !t.read_finished) {
        call_read::<S>(lp, id, Err(err));
    }
}
