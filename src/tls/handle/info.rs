//! What a [`Tls`] handle can tell: its failure, the handshake, what was negotiated, the
//! peer's certificate and identity, statistics, OpenSSL's own view.

use openssl::ssl::SslRef;
use openssl::x509::X509;

use super::{Handshake, Tls, st_ref};
use crate::error::{Error, Result};
use crate::event_loop::Loop;
use crate::stream::Stream;
use crate::tls::PeerIdentity;
use crate::tls::session::SessionInfo;
use crate::tls::stats::TlsStats;

impl<S: Stream> Tls<S> {
    /// The error that failed the handle, if one did (the same error every waiting
    /// callback heard, and later calls return). `None` while it is healthy or closed.
    pub fn failure(self, lp: &Loop) -> Option<Error> {
        st_ref::<S>(lp, self.0).and_then(|t| t.failure.clone())
    }

    /// Whether the handshake has completed.
    pub fn is_handshake_complete(self, lp: &Loop) -> bool {
        st_ref::<S>(lp, self.0).is_some_and(|t| matches!(t.handshake, Handshake::Done))
    }

    /// Bytes moved so far and what was negotiated (see [`TlsStats`]).
    ///
    /// # Errors
    /// [`Error::Closed`].
    pub fn stats(self, lp: &Loop) -> Result<TlsStats> {
        let t = st_ref::<S>(lp, self.0).ok_or(Error::Closed)?;
        let info = t.session.info();
        Ok(TlsStats {
            plaintext_in: t.counters.plain_delivered,
            plaintext_out: t.writes.plain_encrypted(),
            ciphertext_in: t.counters.cipher_received,
            ciphertext_out: t.writes.cipher_sent(),
            handshake_duration: t.counters.handshake_duration,
            version: info.version,
            cipher: info.cipher,
            alpn: info.alpn,
            resumed: info.resumed && t.session.is_handshake_complete(),
        })
    }

    /// Whether the handshake resumed an earlier session (TLS 1.3 ticket, TLS 1.2 session
    /// id or ticket) instead of a full handshake. `false` before the handshake completes.
    pub fn is_resumed(self, lp: &Loop) -> bool {
        st_ref::<S>(lp, self.0).is_some_and(|t| t.session.is_resumed())
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

    /// The names in the peer's certificate (subject, DNS names, IP addresses, e-mail
    /// addresses), once the handshake has received it.
    ///
    /// # Errors
    /// [`Error::Closed`].
    pub fn peer_identity(self, lp: &Loop) -> Result<Option<PeerIdentity>> {
        Ok(self.peer_certificate(lp)?.map(|c| PeerIdentity::of(&c)))
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
    /// [`Error::Closed`]; [`Error::InvalidState`] on a server whose client's ClientHello
    /// has not arrived yet: its `SSL` does not exist before (see
    /// [`TlsSession::server`](crate::tls::TlsSession::server)).
    pub fn ssl(self, lp: &Loop) -> Result<&SslRef> {
        st_ref::<S>(lp, self.0)
            .ok_or(Error::Closed)?
            .session
            .ssl()
            .ok_or(Error::InvalidState(
                "no SSL yet: the server waits for the ClientHello",
            ))
    }

    /// The inner stream handle (owned by this `Tls`: use it for queries and socket
    /// options).
    ///
    /// # Errors
    /// [`Error::Closed`].
    pub fn inner(self, lp: &Loop) -> Result<S> {
        Ok(st_ref::<S>(lp, self.0).ok_or(Error::Closed)?.inner)
    }

    /// Ciphertext received from the inner stream and not yet decrypted (0 when closed).
    ///
    /// It stays small: the handle reads the inner stream only while the handshake needs
    /// input or the user is reading, so a peer that sends to a handle whose user stopped
    /// reading fills the transport's buffers (the kernel's, for TCP), not this one.
    pub fn buffered_ciphertext_in(self, lp: &Loop) -> usize {
        st_ref::<S>(lp, self.0).map_or(0, |t| t.session.buffered_ciphertext_in())
    }
}
