//! STARTTLS: wrapping a stream that carried plaintext ([`Tls::server_upgrade`],
//! [`Tls::client_upgrade`]) and giving it back ([`Tls::unwrap`]).

use bytes::Bytes;

use super::{Handshake, Shutdown, Tls, Unwrap, pump, st};
use crate::error::{Error, Result};
use crate::event_loop::Loop;
use crate::stream::Stream;
use crate::tls::session::TlsSession;
use crate::tls::{TlsAcceptor, TlsConnector};

impl<S: Stream> Tls<S> {
    /// STARTTLS, server side: wraps `inner`, which carried plaintext until now, as the
    /// server side of a TLS connection. `read_ahead` is what was already read from
    /// `inner` past the upgrade point (the rest of the chunk that held the `STARTTLS`
    /// command, say): it is handed to TLS as the first ciphertext. Reading passes to the
    /// `Tls` at once: the plaintext reader of `inner` gets no further callback.
    ///
    /// Plaintext the peer pipelined after its upgrade command is therefore never
    /// answered as if it came over TLS (the STARTTLS command-injection class,
    /// CVE-2011-0411): it is not a valid TLS record, and the handshake fails. Write the
    /// reply that allows the upgrade (`220`) before the call: it goes out first.
    ///
    /// # Errors
    /// As [`server`](Tls::server).
    pub fn server_upgrade(
        lp: &mut Loop,
        inner: S,
        acceptor: &TlsAcceptor,
        read_ahead: Bytes,
    ) -> Result<Tls<S>> {
        Tls::wrap(lp, inner, TlsSession::server(acceptor)?, read_ahead)
    }

    /// STARTTLS, client side: as [`server_upgrade`](Tls::server_upgrade), for the client
    /// of a TLS connection to `server_name` (see [`client`](Tls::client)).
    ///
    /// # Errors
    /// As [`client`](Tls::client).
    pub fn client_upgrade(
        lp: &mut Loop,
        inner: S,
        connector: &TlsConnector,
        server_name: &str,
        read_ahead: Bytes,
    ) -> Result<Tls<S>> {
        Tls::wrap(
            lp,
            inner,
            TlsSession::client(connector, server_name)?,
            read_ahead,
        )
    }

    /// Ends TLS and gives the inner stream back for plaintext (Python's
    /// `SSLObject.unwrap`, for protocols that go back to plaintext): sends our
    /// close_notify after the queued writes, reads until the peer's close_notify, and
    /// once every write's callback has run, releases the inner stream and calls `cb`,
    /// from the loop, with it and the bytes that followed the peer's close_notify (the
    /// first plaintext of the next phase). The `Tls` handle is gone then; the inner
    /// stream is not reading (start reading it to go on).
    ///
    /// Application data that arrives before the peer's close_notify goes to the read
    /// callback if one is set (which then hears the end of stream); without one, `cb`
    /// gets [`Error::InvalidState`] and the data stays for a reader: read it, then call
    /// `unwrap` again (writing is over once our close_notify went out). A failure or
    /// `close` meanwhile gives `cb` the error or [`Error::Cancelled`], and the `Tls`
    /// stays (close it).
    ///
    /// Once both close_notifys are through and every write's callback has run, the
    /// handle is handed back on that loop iteration: `start_read` and `on_drain` return
    /// [`Error::InvalidState`] then (a reader or watcher would never run).
    ///
    /// # Errors
    /// [`Error::Closed`]; the handle's failure; [`Error::InvalidState`] before the
    /// handshake completes, after `shutdown`, or while an unwrap is in progress.
    pub fn unwrap(
        self,
        lp: &mut Loop,
        cb: impl FnOnce(&mut Loop, Result<(S, Bytes)>) + 'static,
    ) -> Result<()> {
        lp.check_access(self.0)?;
        let t = st::<S>(lp, self.0).ok_or(Error::Closed)?;
        if let Some(e) = &t.failure {
            return Err(e.clone());
        }
        if !matches!(t.handshake, Handshake::Done) {
            return Err(Error::InvalidState("unwrap before the handshake completed"));
        }
        if t.unwrap.is_some() {
            return Err(Error::InvalidState("an unwrap is in progress"));
        }
        // Open, or an earlier unwrap stopped by data the user had to read first.
        if !matches!(t.shutdown, Shutdown::Open | Shutdown::Unwrapping) {
            return Err(Error::InvalidState("unwrap after shutdown"));
        }
        t.shutdown = Shutdown::Unwrapping;
        t.unwrap = Unwrap::Waiting(Box::new(cb));
        pump::pump::<S>(lp, self.0, false);
        let id = self.0;
        lp.defer(move |lp| pump::pump::<S>(lp, id, true));
        Ok(())
    }
}
