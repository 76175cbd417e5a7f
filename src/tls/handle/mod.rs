//! The `Tls` handle: a [`TlsSession`] pumped over any inner [`Stream`].
//!
//! It owns the session, the plaintext not yet encrypted and the user's callbacks; the
//! inner stream owns the transport. It talks to the inner stream only through the
//! `Stream` trait, so it runs over TCP, a Unix socket, an in-memory `Duplex` or another
//! `Tls`, and it owns that stream while it wraps it: the user's reading and writing
//! calls on the inner stream are refused, and closing it fails the `Tls`.
//!
//! The handle's life is a few small state machines that cannot contradict each other:
//! [`Phase`] (open, closing), [`Handshake`] (running, done, failed), the user's read
//! side (`ReadSide`: stopped, reading, ended with the ending kept for later readers),
//! the write path (`WritePath`: plaintext and requests by offset), [`Shutdown`] (open,
//! queued, sent), the inner stream's reading ([`InnerRead`]: off, on, ended), and the
//! first failure. Every request leaves through one function per way out: acknowledged
//! (`pump::complete_acked`), failed (`pump::fail`) or cancelled (`close`).
//!
//! Modules: `pump` (handshake, encryption, flushing, inner reading, failure),
//! `read_path` (decrypting and delivering, the ending), `write_path` (the pure offset
//! bookkeeping), `close`, `idle` (the idle timeout), `info` (queries), `connect`
//! (`Tls::connect`), `starttls` (upgrades and `unwrap`).

use std::fmt;
use std::marker::PhantomData;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::session::TlsSession;
use super::{TlsAcceptor, TlsConnector};
use crate::drain::Drain;
use crate::error::{Error, Result, Timeout};
use crate::event_loop::Ops;
use crate::event_loop::{DoneCb, Loop, Queue};
use crate::handle::{HandleId, RawId};
use crate::read_side::ReadSide;
use crate::stream::{ReadResult, Stream};
use crate::tcp::Tcp;
use crate::timer::Timer;

mod close;
mod connect;
mod idle;
mod info;
mod pump;
mod read_path;
mod starttls;
mod write_path;

use write_path::{RECORD, WritePath};

/// Default time allowed for a handshake before the handle fails with
/// [`Error::TimedOut`]`(Timeout::Handshake)`.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

type ReadCb<S> = Box<dyn FnMut(&mut Loop, Tls<S>, ReadResult)>;
type CloseCb<S> = Box<dyn FnOnce(&mut Loop, Tls<S>)>;
type HandshakeCb<S> = Box<dyn FnOnce(&mut Loop, Tls<S>, Result<()>)>;
type UnwrapCb<S> = Box<dyn FnOnce(&mut Loop, Result<(S, Bytes)>)>;

/// A TLS stream handle over an inner [`Stream`] (by default [`Tcp`]). Implements
/// [`Stream`] with the same semantics as [`Tcp`].
///
/// The handshake starts as soon as the handle exists, whether or not reading was
/// started; writes made before it completes are queued and encrypted after it. Its
/// outcome goes to the optional [`on_handshake`](Tls::on_handshake) callback (also when
/// set after the handshake: then it runs from the loop with the known outcome).
///
/// A failure (handshake, protocol, transport, timeout) reaches everyone waiting, now or
/// later: the handshake callback, every pending write and a pending shutdown, the
/// current reader after the plaintext decrypted before the failure, and a reader started
/// later. Calls made afterwards return the same error; close the handle.
///
/// End of stream: the peer's close_notify is a clean EOF (`Ok(None)`); a transport EOF
/// without it, after the handshake, is [`Error::Truncated`]; during the handshake it is
/// [`Error::Handshake`]. Plaintext decrypted before either is always delivered first.
///
/// **The inner stream belongs to the `Tls`** while it wraps it: the user's
/// `start_read`, `stop_read`, `write*`, `try_write` and `shutdown` on the inner stream
/// return [`Error::InvalidState`]; queries and socket options still work. Closing the
/// inner stream fails the `Tls` with [`Error::TransportClosed`]; close the `Tls` instead
/// (it closes the inner stream).
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

/// Open for the user, or closing: gone for the user, waiting for the inner stream's
/// close to settle the writes whose ciphertext it had taken.
enum Phase<S: Stream> {
    Open,
    Closing(CloseCb<S>),
}

/// The handshake.
enum Handshake {
    /// In progress; the timer enforces the handshake timeout.
    Running {
        timer: Option<Timer>,
    },
    Done,
    /// Failed: the handle's failure says why.
    Failed,
}

/// Our half-close.
enum Shutdown {
    Open,
    /// Requested: close_notify goes out after the queued writes.
    Queued(DoneCb),
    /// close_notify queued and the inner stream's shutdown requested; the callback
    /// completes with that request's outcome, after every write's callback.
    Sent(DoneCb),
    /// Completed (or failed).
    Done,
    /// [`Tls::unwrap`]: close_notify goes out after the queued writes, and the inner
    /// stream is not shut down (it carries on in plaintext).
    Unwrapping,
}

impl Shutdown {
    /// Takes the callback of a shutdown still waiting (queued or sent), leaving `Done`.
    fn take_waiting(&mut self) -> Option<DoneCb> {
        match std::mem::replace(self, Shutdown::Done) {
            Shutdown::Queued(cb) | Shutdown::Sent(cb) => Some(cb),
            other => {
                *self = other;
                None
            }
        }
    }
}

/// Whether the handle reads the inner stream.
#[derive(Clone, Copy, PartialEq, Eq)]
enum InnerRead {
    Off,
    On,
    /// The inner stream ended (end of stream, error, or closed): no more reading.
    Ended,
}

/// Whether acknowledged writes are being completed right now, directly (from the
/// loop): a pump that a write callback starts must then leave the rest to that loop, so
/// callbacks keep the order of the writes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Completing {
    No,
    Directly,
}

/// Where [`Tls::unwrap`] stands.
enum Unwrap<S: Stream> {
    None,
    /// Waiting for the close_notifies and the writes.
    Waiting(UnwrapCb<S>),
    /// Done: the handle is handed back from the loop, after every callback queued
    /// before (so the unwrap's callback is the handle's last).
    Finishing(UnwrapCb<S>),
}

impl<S: Stream> Unwrap<S> {
    fn is_some(&self) -> bool {
        !matches!(self, Unwrap::None)
    }

    /// Takes the callback, waiting or finishing.
    fn take(&mut self) -> Option<UnwrapCb<S>> {
        match std::mem::replace(self, Unwrap::None) {
            Unwrap::Waiting(cb) | Unwrap::Finishing(cb) => Some(cb),
            Unwrap::None => None,
        }
    }
}

/// The re-entrancy guard of [`pump::pump`].
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pump {
    Idle,
    Running,
    /// Running, and asked to go round once more.
    Again,
}

/// Ciphertext that reading produced (KeyUpdate replies, alerts) and the inner stream has
/// not written yet. Past [`GENERATED_LIMIT`] the handle stops reading the inner stream,
/// so a peer that sends but never reads cannot make it queue replies without bound: it
/// holds at most the limit plus the replies to the last read of the inner stream (each
/// record draws at most one reply, no larger than itself; OpenSSL processes all the
/// records of a read it was given).
#[derive(Default)]
struct Generated {
    /// (ciphertext end offset, bytes) of each such chunk in flight.
    chunks: std::collections::VecDeque<(u64, usize)>,
    in_flight: usize,
}

/// Read-generated ciphertext allowed in flight before inner reading pauses.
const GENERATED_LIMIT: usize = 64 * 1024;

impl Generated {
    fn sent(&mut self, end: u64, len: usize) {
        self.chunks.push_back((end, len));
        self.in_flight += len;
    }

    fn acked(&mut self, acked: u64) {
        while let Some(&(end, len)) = self.chunks.front() {
            if end > acked {
                break;
            }
            self.chunks.pop_front();
            self.in_flight -= len;
        }
    }

    fn over_limit(&self) -> bool {
        self.in_flight > GENERATED_LIMIT
    }
}

/// Counters for [`Tls::stats`].
struct Counters {
    created: Instant,
    handshake_duration: Option<Duration>,
    cipher_received: u64,
    plain_delivered: u64,
}

struct TlsState<S: Stream> {
    inner: S,
    session: TlsSession,
    phase: Phase<S>,
    handshake: Handshake,
    /// Waits for the handshake's outcome.
    on_handshake: Option<HandshakeCb<S>>,
    /// [`Tls::connect`]'s callback: the handshake's outcome, or the connect's failure.
    on_connected: Option<HandshakeCb<S>>,
    /// The handshake timeout in force, for restarting its clock.
    handshake_timeout: Option<Duration>,
    /// [`Tls::unwrap`], while unwrapping.
    unwrap: Unwrap<S>,
    read: ReadSide<ReadCb<S>>,
    writes: WritePath<DoneCb>,
    shutdown: Shutdown,
    /// The first failure: the connection is broken.
    failure: Option<Error>,
    inner_read: InnerRead,
    pump: Pump,
    completing: Completing,
    /// A deferred pump will encrypt the small writes queued meanwhile.
    cork: bool,
    generated: Generated,
    idle: idle::Idle,
    counters: Counters,
    drain: Drain,
}

impl<S: Stream> TlsState<S> {
    /// A `Tls` gets no readiness events and asks for no service (its inner stream's
    /// callbacks and deferred pumps drive it); it hears when its inner stream is closed.
    const OPS: &'static Ops = &Ops {
        owned_closed: close::inner_closed::<S>,
        ..Ops::NONE
    };

    fn is_open(&self) -> bool {
        matches!(self.phase, Phase::Open)
    }

    /// The handshake's outcome, once known.
    fn handshake_outcome(&self) -> Option<Result<()>> {
        match (&self.handshake, &self.failure) {
            (Handshake::Done, _) => Some(Ok(())),
            (_, Some(e)) => Some(Err(e.clone())),
            (Handshake::Failed | Handshake::Running { .. }, None) => None,
        }
    }
}

/// The state of an open handle (not closing).
fn st<S: Stream>(lp: &mut Loop, id: RawId) -> Option<&mut TlsState<S>> {
    st_any::<S>(lp, id).filter(|t| t.is_open())
}

/// The state of an open handle that still takes writes: else its failure, or
/// [`Error::InvalidState`]`(after_shutdown)` once a shutdown was requested.
fn writable<'a, S: Stream>(
    lp: &'a mut Loop,
    id: RawId,
    after_shutdown: &'static str,
) -> Result<&'a mut TlsState<S>> {
    let t = st::<S>(lp, id).ok_or(Error::Closed)?;
    if let Some(e) = &t.failure {
        return Err(e.clone());
    }
    if !matches!(t.shutdown, Shutdown::Open) {
        return Err(Error::InvalidState(after_shutdown));
    }
    Ok(t)
}

/// The state of an open or closing handle.
fn st_any<S: Stream>(lp: &mut Loop, id: RawId) -> Option<&mut TlsState<S>> {
    lp.state::<TlsState<S>>(id)
}

fn st_ref<S: Stream>(lp: &Loop, id: RawId) -> Option<&TlsState<S>> {
    lp.state_ref::<TlsState<S>>(id).filter(|t| t.is_open())
}

/// The handle's write queue: plaintext not yet encrypted, ciphertext not yet handed
/// on, and the inner stream's queue (`None` when closed).
fn queued<S: Stream>(lp: &Loop, id: RawId) -> Option<usize> {
    st_ref::<S>(lp, id).map(|t| {
        t.writes.pending_bytes()
            + t.session.buffered_ciphertext_out()
            + t.inner.write_queue_size(lp)
    })
}

/// Completes the drain watcher if the write queue is at or below its level.
fn check_drain<S: Stream>(lp: &mut Loop, id: RawId) {
    let Some(queued) = queued::<S>(lp, id) else {
        return;
    };
    lp.with_queue::<TlsState<S>, _>(id, |t, q| {
        if t.is_open() {
            t.drain.check(q, queued, |q| schedule_drain::<S>(q, id));
        }
    });
}

/// Queues the drain watcher's re-check (see `drain`).
fn schedule_drain<S: Stream>(q: &mut Queue<'_>, id: RawId) {
    q.defer(move |lp| {
        let Some(queued) = queued::<S>(lp, id) else {
            return;
        };
        let Some(t) = st::<S>(lp, id) else { return };
        if let Some(cb) = t.drain.recheck(queued) {
            cb(lp, Ok(()));
        }
    });
}

/// Calls `inner` as its owner.
fn as_owner<S: Stream, R>(lp: &mut Loop, inner: S, f: impl FnOnce(&mut Loop) -> R) -> R {
    match inner.handle_id() {
        Some(HandleId(id)) => lp.as_owner(id, f),
        None => f(lp),
    }
}

impl<S: Stream> Tls<S> {
    /// Wraps `inner` as the server side of a TLS connection.
    ///
    /// # Errors
    /// [`Error::Config`] if OpenSSL cannot create the session; as
    /// [`with_session`](Tls::with_session).
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
    /// see [`TlsSession::server_with`] and [`TlsSession::client_with`]). The `Tls` owns
    /// `inner` from now on (see the type's docs).
    ///
    /// # Errors
    /// [`Error::Closed`] if `inner` is closed; [`Error::InvalidState`] if another `Tls`
    /// owns it already.
    pub fn with_session(lp: &mut Loop, inner: S, session: TlsSession) -> Result<Tls<S>> {
        Tls::wrap(lp, inner, session, Bytes::new())
    }

    fn wrap(lp: &mut Loop, inner: S, mut session: TlsSession, read_ahead: Bytes) -> Result<Tls<S>> {
        if !inner.is_open(lp) {
            return Err(Error::Closed);
        }
        if let Some(HandleId(inner_id)) = inner.handle_id()
            && lp.owner(inner_id).is_some()
        {
            return Err(Error::InvalidState("the stream is wrapped already"));
        }
        session.feed_ciphertext(read_ahead);
        let state = TlsState {
            inner,
            session,
            phase: Phase::Open,
            handshake: Handshake::Running { timer: None },
            on_handshake: None,
            on_connected: None,
            handshake_timeout: None,
            unwrap: Unwrap::None,
            read: ReadSide::default(),
            writes: WritePath::default(),
            shutdown: Shutdown::Open,
            failure: None,
            inner_read: InnerRead::Off,
            pump: Pump::Idle,
            completing: Completing::No,
            cork: false,
            generated: Generated::default(),
            idle: idle::Idle::default(),
            counters: Counters {
                created: Instant::now(),
                handshake_duration: None,
                cipher_received: 0,
                plain_delivered: 0,
            },
            drain: Drain::default(),
        };
        let id = lp.insert(Box::new(state), TlsState::<S>::OPS);
        if let Some(HandleId(inner_id)) = inner.handle_id() {
            lp.set_owner(inner_id, Some(id));
        }
        // Reading passes to the Tls at once: a plaintext reader of the inner stream
        // hears nothing more (the Tls starts its own reading from the loop).
        let _ = as_owner(lp, inner, |lp| inner.stop_read(lp));
        let tls = Tls(id, PhantomData);
        tls.set_handshake_timeout(lp, Some(DEFAULT_HANDSHAKE_TIMEOUT))?;
        // Start the handshake from the loop: a client's ClientHello goes out, a server
        // starts reading for the peer's.
        lp.defer(move |lp| pump::pump::<S>(lp, id, true));
        Ok(tls)
    }

    /// Sets the callback that receives the handshake's outcome, once, from the loop. Set
    /// after the outcome is known, it runs with that outcome on the next iteration. A
    /// second call replaces the first callback, which then runs with
    /// [`Error::Cancelled`].
    ///
    /// # Errors
    /// [`Error::Closed`].
    pub fn on_handshake(
        self,
        lp: &mut Loop,
        cb: impl FnOnce(&mut Loop, Tls<S>, Result<()>) + 'static,
    ) -> Result<()> {
        let t = st::<S>(lp, self.0).ok_or(Error::Closed)?;
        let known = t.handshake_outcome().is_some();
        if let Some(old) = t.on_handshake.replace(Box::new(cb)) {
            lp.defer(move |lp| old(lp, self, Err(Error::Cancelled)));
        }
        if known {
            // Reported by a pump from the loop, in its place among the other callbacks.
            let id = self.0;
            lp.defer(move |lp| pump::pump::<S>(lp, id, true));
        }
        Ok(())
    }

    /// Fails the handshake with [`Error::TimedOut`]`(Timeout::Handshake)` if it has not
    /// completed within `timeout` from now (`None`, or a timeout too large to represent:
    /// no limit). The default is [`DEFAULT_HANDSHAKE_TIMEOUT`]. Does nothing once the
    /// handshake is over.
    ///
    /// # Errors
    /// [`Error::Closed`].
    pub fn set_handshake_timeout(self, lp: &mut Loop, timeout: Option<Duration>) -> Result<()> {
        let t = st::<S>(lp, self.0).ok_or(Error::Closed)?;
        t.handshake_timeout = timeout;
        let Handshake::Running { timer } = &mut t.handshake else {
            return Ok(());
        };
        let existing = *timer;
        let Some(timeout) = timeout else {
            if let Some(timer) = existing {
                timer.stop(lp)?;
            }
            return Ok(());
        };
        let timer = match existing {
            Some(timer) => timer,
            None => {
                let timer = Timer::new(lp)?;
                timer.unref(lp)?;
                if let Some(TlsState {
                    handshake: Handshake::Running { timer: slot },
                    ..
                }) = st::<S>(lp, self.0)
                {
                    *slot = Some(timer);
                }
                timer
            }
        };
        let id = self.0;
        timer.start(lp, timeout, None, move |lp, _| {
            if st::<S>(lp, id).is_some_and(|t| matches!(t.handshake, Handshake::Running { .. })) {
                pump::fail::<S>(lp, id, Error::TimedOut(Timeout::Handshake));
                pump::pump::<S>(lp, id, true);
            }
        })
    }

    /// Restarts the handshake timeout from now (when the transport connects).
    fn restart_handshake_clock(self, lp: &mut Loop) {
        let timeout = st::<S>(lp, self.0).and_then(|t| t.handshake_timeout);
        let _ = self.set_handshake_timeout(lp, timeout);
    }

    /// Sends a TLS 1.3 KeyUpdate, and with `request_peer` asks the peer to update its
    /// sending keys too. Writes already queued keep flowing (those not yet encrypted go
    /// out under the new keys), and reading goes on; nothing waits for the peer.
    ///
    /// # Errors
    /// [`Error::Closed`]; the handle's failure; [`Error::InvalidState`] before the
    /// handshake completes, after `shutdown`, or on a TLS 1.2 connection.
    pub fn key_update(self, lp: &mut Loop, request_peer: bool) -> Result<()> {
        let t = writable::<S>(lp, self.0, "KeyUpdate after shutdown")?;
        t.session.key_update(request_peer)?;
        pump::pump::<S>(lp, self.0, false);
        Ok(())
    }
}

impl<S: Stream> Stream for Tls<S> {
    fn start_read<F>(self, lp: &mut Loop, mut cb: F) -> Result<()>
    where
        F: FnMut(&mut Loop, Self, ReadResult) + 'static,
    {
        lp.check_access(self.0)?;
        let t = st::<S>(lp, self.0).ok_or(Error::Closed)?;
        if matches!(t.unwrap, Unwrap::Finishing(_)) {
            // The handle is handed back on this iteration: a reader would never run.
            return Err(Error::InvalidState("the handle is being unwrapped"));
        }
        t.read.start(Box::new(move |lp, tls, r| cb(lp, tls, r)));
        let id = self.0;
        // Plaintext or an ending may be waiting: deliver it from the loop.
        lp.defer(move |lp| pump::pump::<S>(lp, id, true));
        Ok(())
    }

    fn stop_read(self, lp: &mut Loop) -> Result<()> {
        lp.check_access(self.0)?;
        st::<S>(lp, self.0).ok_or(Error::Closed)?.read.stop();
        pump::update_inner_reading::<S>(lp, self.0);
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
        lp.check_access(self.0)?;
        let t = writable::<S>(lp, self.0, "write after shutdown")?;
        t.writes.push(bufs, Box::new(move |lp, r| cb(lp, self, r)));
        if t.writes.pending_bytes() >= RECORD || !matches!(t.handshake, Handshake::Done) {
            pump::pump::<S>(lp, self.0, false);
        } else if !t.cork {
            // Small writes are corked until the current callback returns, so that many
            // of them become one record and one write of the inner stream.
            t.cork = true;
            let id = self.0;
            lp.defer(move |lp| {
                if let Some(t) = st::<S>(lp, id) {
                    t.cork = false;
                    pump::pump::<S>(lp, id, true);
                }
            });
        }
        Ok(())
    }

    /// Encrypts at most one record (16 KiB) of `data`, and only while nothing is queued
    /// (no plaintext waiting, nothing in the inner stream's queue) and the handshake is
    /// done; returns how many bytes it took. The record's ciphertext is handed to the
    /// inner stream at once; what the transport cannot take right away waits in the
    /// inner stream's queue, counted by [`write_queue_size`](Stream::write_queue_size),
    /// so repeated calls take nothing more until it has drained.
    fn try_write(self, lp: &mut Loop, data: &[u8]) -> Result<usize> {
        lp.check_access(self.0)?;
        let t = writable::<S>(lp, self.0, "write after shutdown")?;
        let inner = t.inner;
        if !matches!(t.handshake, Handshake::Done)
            || t.writes.has_pending()
            || t.session.buffered_ciphertext_out() > 0
            || data.is_empty()
            || inner.write_queue_size(lp) > 0
        {
            return Ok(0);
        }
        let t = st::<S>(lp, self.0).ok_or(Error::Closed)?;
        let record = &data[..data.len().min(RECORD)];
        let taken = match t.session.write(record) {
            Ok(n) => n,
            Err(e) => {
                pump::fail::<S>(lp, self.0, e.clone());
                return Err(e);
            }
        };
        t.writes.encrypted_directly(taken);
        pump::flush::<S>(lp, self.0, false);
        Ok(taken)
    }

    fn shutdown<F>(self, lp: &mut Loop, cb: F) -> Result<()>
    where
        F: FnOnce(&mut Loop, Self, Result<()>) + 'static,
    {
        lp.check_access(self.0)?;
        let t = writable::<S>(lp, self.0, "already shut down")?;
        t.shutdown = Shutdown::Queued(Box::new(move |lp, r| cb(lp, self, r)));
        pump::pump::<S>(lp, self.0, false);
        Ok(())
    }

    fn on_drain<F>(self, lp: &mut Loop, level: usize, cb: F) -> Result<()>
    where
        F: FnOnce(&mut Loop, Self, Result<()>) + 'static,
    {
        let queued = queued::<S>(lp, self.0).ok_or(Error::Closed)?;
        let t = st::<S>(lp, self.0).ok_or(Error::Closed)?;
        if matches!(t.unwrap, Unwrap::Finishing(_)) {
            return Err(Error::InvalidState("the handle is being unwrapped"));
        }
        let id = self.0;
        let cb: DoneCb = Box::new(move |lp, r| cb(lp, self, r));
        lp.with_queue::<TlsState<S>, _>(id, |t, q| {
            let broken = t.failure.clone();
            t.drain.set(q, level, cb, queued, broken.as_ref(), |q| {
                schedule_drain::<S>(q, id)
            });
        });
        Ok(())
    }

    fn close<F>(self, lp: &mut Loop, cb: F)
    where
        F: FnOnce(&mut Loop, Self) + 'static,
    {
        close::close::<S>(lp, self.0, Box::new(cb));
    }

    fn write_queue_size(self, lp: &Loop) -> usize {
        queued::<S>(lp, self.0).unwrap_or(0)
    }

    fn is_open(self, lp: &Loop) -> bool {
        st_ref::<S>(lp, self.0).is_some()
    }

    fn handle_id(self) -> Option<HandleId> {
        Some(HandleId(self.0))
    }
}
