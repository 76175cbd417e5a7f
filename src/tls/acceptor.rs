//! Server configuration: [`TlsAcceptor`] and its builder.
//!
//! A `TlsAcceptor` is a shared slot holding the current OpenSSL server context. Every
//! clone refers to the same slot, on any thread, and [`TlsAcceptor::replace`] swaps the
//! context in it: sessions created afterwards use the new one, sessions already created
//! keep the context they were made from (each `SSL` holds a reference to its own
//! `SSL_CTX`). The session ticket keys belong to the slot, not to a context, so they
//! survive replacements (see `tls/tickets.rs` for their rotation).

use std::cmp::Ordering;
use std::fmt;
use std::path::Path;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use openssl::asn1::Asn1Time;
use openssl::sha::Sha256;
use openssl::ssl::{
    AlpnError, NameType, SniError, SslAcceptor, SslAcceptorBuilder, SslContext, SslContextBuilder,
    SslMethod, SslMode, SslOptions, SslVerifyMode,
};
use openssl::x509::{X509, X509Crl};

use super::config::{
    KeyLog, alpn_names, alpn_wire, open_keylog, parse_certs, read_file, set_identity, set_keylog,
    with_path,
};
use super::ossl::{self, stack_message};
use super::revocation::{self, CrlCheck};
use super::tickets::{DEFAULT_TICKET_KEY_ROTATION, TicketKeys};
use crate::{Error, Result};

/// Session id context of a server that verifies no client certificates. With client
/// verification it is a digest of the policy instead (see `session_id_context`).
const SESSION_ID_CONTEXT: &[u8] = b"biotls";

/// TLS 1.3 session tickets sent after a full handshake, by default (OpenSSL's own
/// default is 2). Each costs the server an ASN.1 encoding, an encryption and an HMAC,
/// about 4 % of a full handshake's CPU; most clients keep one.
pub const DEFAULT_SESSION_TICKETS: usize = 1;

/// A server's ALPN selection callback: the SNI name (if any) and the client's offers, in
/// the client's order; returns the chosen protocol or `None` to refuse the connection.
type AlpnSelect = dyn for<'a> Fn(Option<&str>, &[&'a [u8]]) -> Option<&'a [u8]> + Send + Sync;

/// Server-side TLS configuration: a certificate chain, its key, and policy; replaceable
/// while serving.
///
/// Cheap to clone, `Send` and `Sync`: clones share one configuration slot, so a
/// [`replace`](Self::replace) through any clone, on any thread, is seen by all of them
/// (every loop of a multi-loop server) for the connections they accept afterwards.
/// A server session takes the configuration current when its client's ClientHello
/// arrives (it creates its `SSL` then), and keeps it from then on. Create
/// sessions with [`TlsSession::server`](super::TlsSession::server) or
/// [`Tls::server`](super::Tls::server).
///
/// Session tickets (TLS 1.3 and TLS 1.2) are encrypted with keys that belong to the
/// acceptor and outlive replacements; they rotate every 12 hours by default
/// ([`TlsAcceptorBuilder::ticket_key_rotation`]), and the previous key stays valid for
/// decryption for one more interval.
#[derive(Clone)]
pub struct TlsAcceptor {
    shared: Arc<Shared>,
}

struct Shared {
    /// The current configuration. Read once per accepted connection (a read lock and a
    /// reference count increment): measured at 9 ns in a release build, 20 to 100 ns
    /// with two threads reading at once in a tight loop, against about 850 µs for a full
    /// TLS 1.3 handshake pair in memory. Written by `replace`.
    current: RwLock<SslContext>,
    tickets: Arc<TicketKeys>,
}

impl fmt::Debug for TlsAcceptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsAcceptor")
            .field("ticket_key_rotation", &self.shared.tickets.interval())
            .finish_non_exhaustive()
    }
}

impl TlsAcceptor {
    /// Starts a server configuration from a PEM certificate chain (leaf first, then
    /// intermediates) and the leaf's PEM private key.
    ///
    /// Defaults: Mozilla's "intermediate" profile (v5: TLS 1.2 minimum, TLS 1.3
    /// preferred), no compression, no renegotiation, no client certificate requested,
    /// partial writes enabled, session tickets with keys rotated every 12 hours, one
    /// TLS 1.3 ticket per full handshake ([`TlsAcceptorBuilder::session_tickets`]).
    pub fn builder(chain_pem: &[u8], key_pem: &[u8]) -> Result<TlsAcceptorBuilder> {
        let (ctx, leaf) = server_context(chain_pem, key_pem)?;
        Ok(TlsAcceptorBuilder {
            ctx,
            leaf,
            names: Vec::new(),
            alpn: None,
            client_cas: Vec::new(),
            crls: Vec::new(),
            crl_check: None,
            keylog: None,
            ticket_key_rotation: None,
            session_tickets: None,
        })
    }

    /// Like [`builder`](Self::builder), reading the chain and the key from PEM files.
    pub fn builder_from_files(
        chain: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<TlsAcceptorBuilder> {
        let (chain, key) = (chain.as_ref(), key.as_ref());
        let chain_pem = read_file(chain)?;
        let key_pem = read_file(key)?;
        Self::builder(&chain_pem, &key_pem).map_err(|e| match e {
            Error::Config(msg) => {
                Error::Config(format!("{} / {}: {msg}", chain.display(), key.display()))
            }
            other => other,
        })
    }

    /// A server configuration with the defaults of [`builder`](Self::builder), from PEM
    /// files.
    pub fn from_pem_files(chain: impl AsRef<Path>, key: impl AsRef<Path>) -> Result<Self> {
        Ok(Self::builder_from_files(chain, key)?.build())
    }

    /// The OpenSSL context of the current configuration (a new reference to it: a later
    /// [`replace`](Self::replace) does not change the one returned).
    pub fn context(&self) -> SslContext {
        // A writer only assigns, so a poisoned lock still holds a whole context.
        self.shared
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The leaf certificate the current configuration serves by default (to clients
    /// whose SNI name matches no [`sni_certificate`](TlsAcceptorBuilder::sni_certificate)).
    pub fn certificate(&self) -> Option<X509> {
        self.context().certificate().map(ToOwned::to_owned)
    }

    /// Replaces the configuration of this acceptor and of all its clones with the one
    /// `builder` describes (Node's `server.setSecureContext`). Connections accepted
    /// afterwards, on every loop and thread, use the new certificate chain, key, SNI
    /// certificates, client CAs, CRLs and ALPN list, and so do connections accepted
    /// earlier whose ClientHello has not arrived yet (a server session creates its
    /// OpenSSL `SSL` when it has); the others keep the configuration they started with
    /// and are not disturbed.
    ///
    /// The session ticket keys are kept, so clients resume sessions from before the
    /// replacement, unless the client verification policy changed (client CAs, CRLs or
    /// [`CrlCheck`] mode): the session id context is a digest of that policy, and
    /// OpenSSL resumes no session from another context, so that a client whose
    /// certificate was revoked cannot skip the new check by resuming. The TLS 1.2
    /// server-side session cache (session ids, for clients without tickets) is not
    /// carried over: those clients make one full handshake after a replacement. The
    /// ticket key rotation interval changes only if `builder` set one.
    ///
    /// Build the builder first (reading files, parsing PEM, checking that each key
    /// matches its certificate): any failure there leaves this acceptor as it was.
    ///
    /// # Errors
    /// [`Error::Config`], and the current configuration keeps serving, if the default
    /// or an SNI leaf certificate has expired (its `notAfter` is past): a replacement is
    /// the moment an operator can still keep a working certificate. (A certificate not
    /// valid yet is accepted: a freshly issued one may be a few seconds ahead of this
    /// clock.) [`TlsAcceptorBuilder::build`] refuses nothing; check
    /// [`certificate`](Self::certificate) at start-up if that matters.
    ///
    /// # Examples
    /// ```no_run
    /// use biotls::tls::TlsAcceptor;
    ///
    /// let acceptor = TlsAcceptor::from_pem_files("certs/server.pem", "certs/server.key")?;
    /// // ... serving; the certificate was renewed on disk:
    /// match TlsAcceptor::builder_from_files("certs/server.pem", "certs/server.key")
    ///     .and_then(|builder| acceptor.replace(builder))
    /// {
    ///     Ok(()) => println!("serving {:?}", acceptor.certificate().map(|c| c.serial_number().to_bn())),
    ///     Err(e) => eprintln!("kept the previous configuration: {e}"),
    /// }
    /// # Ok::<(), biotls::Error>(())
    /// ```
    pub fn replace(&self, builder: TlsAcceptorBuilder) -> Result<()> {
        builder.check_validity()?;
        if let Some(interval) = builder.ticket_key_rotation {
            self.shared.tickets.set_interval(interval);
        }
        let ctx = builder.build_context(&self.shared.tickets);
        *self
            .shared
            .current
            .write()
            .unwrap_or_else(PoisonError::into_inner) = ctx;
        Ok(())
    }

    /// Makes a new session ticket key current now, ahead of the schedule: tickets issued
    /// under the current key still resume (and are replaced by new ones); tickets from
    /// before the previous rotation do not. Use it after a suspected key compromise
    /// (twice in a row retires every key in use), or to drive rotation from a schedule of
    /// your own.
    ///
    /// # Errors
    /// [`Error::Config`] if OpenSSL's random generator failed; the keys are unchanged.
    pub fn rotate_ticket_keys(&self) -> Result<()> {
        if self.shared.tickets.rotate() {
            Ok(())
        } else {
            Err(Error::config(
                "session ticket keys: OpenSSL's random generator failed",
            ))
        }
    }

    /// How long a session ticket key encrypts new tickets before the next one takes
    /// over (see [`TlsAcceptorBuilder::ticket_key_rotation`]).
    pub fn ticket_key_rotation(&self) -> Duration {
        self.shared.tickets.interval()
    }
}

/// A server context with the defaults of [`TlsAcceptor::builder`] and one identity; and
/// that identity's leaf.
fn server_context(chain_pem: &[u8], key_pem: &[u8]) -> Result<(SslAcceptorBuilder, X509)> {
    let mut builder = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls())
        .map_err(|e| Error::Config(format!("TLS server context: {}", stack_message(&e))))?;
    let leaf = set_identity(&mut builder, chain_pem, key_pem)?;
    builder.set_mode(
        SslMode::ENABLE_PARTIAL_WRITE
            | SslMode::ACCEPT_MOVING_WRITE_BUFFER
            | SslMode::RELEASE_BUFFERS,
    );
    builder.set_options(SslOptions::NO_COMPRESSION | SslOptions::NO_RENEGOTIATION);
    set_num_tickets(&mut builder, DEFAULT_SESSION_TICKETS)?;
    set_session_id_context(&mut builder, SESSION_ID_CONTEXT)?;
    Ok((builder, leaf))
}

fn set_num_tickets(ctx: &mut SslContextBuilder, count: usize) -> Result<()> {
    ctx.set_num_tickets(count)
        .map_err(|e| Error::Config(format!("session tickets: {}", stack_message(&e))))
}

fn set_session_id_context(ctx: &mut SslContextBuilder, sid: &[u8]) -> Result<()> {
    ctx.set_session_id_context(sid)
        .map_err(|e| Error::Config(format!("session id context: {}", stack_message(&e))))
}

/// The session id context for a client verification policy: sessions (and tickets)
/// resume only under the same policy, so a changed CA list or CRL makes every client
/// verify its certificate again. 32 bytes, OpenSSL's maximum.
fn session_id_context(cas: &[X509], crls: &[X509Crl], check: Option<CrlCheck>) -> Result<Vec<u8>> {
    if cas.is_empty() && crls.is_empty() {
        return Ok(SESSION_ID_CONTEXT.to_vec());
    }
    let der_error = |e: openssl::error::ErrorStack| {
        Error::Config(format!("session id context: {}", stack_message(&e)))
    };
    let mut digest = Sha256::new();
    digest.update(SESSION_ID_CONTEXT);
    for ca in cas {
        digest.update(&ca.to_der().map_err(der_error)?);
    }
    for crl in crls {
        digest.update(&crl.to_der().map_err(der_error)?);
    }
    digest.update(&[match check {
        None => 0,
        Some(CrlCheck::Leaf) => 1,
        Some(CrlCheck::Chain) => 2,
    }]);
    Ok(digest.finish().to_vec())
}

/// Builds a [`TlsAcceptor`], or a replacement for one ([`TlsAcceptor::replace`]).
///
/// Settings made with its methods apply to the default certificate's context and to
/// every per-name context added with [`sni_certificate`](Self::sni_certificate) alike,
/// whatever the order of the calls.
pub struct TlsAcceptorBuilder {
    /// The default certificate's context (also the session and ticket-key context).
    ctx: SslAcceptorBuilder,
    /// The default certificate.
    leaf: X509,
    /// SNI name (lowercase, possibly `*.domain`) -> its context and leaf, in the order
    /// added.
    names: Vec<(String, SslAcceptorBuilder, X509)>,
    alpn: Option<Arc<AlpnSelect>>,
    /// CAs for client certificates (mutual TLS), if required.
    client_cas: Vec<X509>,
    /// CRLs for client certificates, and how to check them.
    crls: Vec<X509Crl>,
    crl_check: Option<CrlCheck>,
    keylog: Option<KeyLog>,
    ticket_key_rotation: Option<Duration>,
    /// Set by `session_tickets`, for the SNI contexts added after it.
    session_tickets: Option<usize>,
}

impl fmt::Debug for TlsAcceptorBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsAcceptorBuilder")
            .field("sni_names", &self.names.len())
            .field("client_cas", &self.client_cas.len())
            .field("crls", &self.crls.len())
            .field("crl_check", &self.crl_check)
            .finish_non_exhaustive()
    }
}

impl TlsAcceptorBuilder {
    /// Every context of this builder: the default one, then the per-name ones.
    fn contexts(&mut self) -> impl Iterator<Item = &mut SslAcceptorBuilder> {
        std::iter::once(&mut self.ctx).chain(self.names.iter_mut().map(|(_, ctx, _)| ctx))
    }

    /// Sets the session id context for the current policy on every context.
    fn update_session_id_context(&mut self) -> Result<()> {
        let sid = session_id_context(&self.client_cas, &self.crls, self.crl_check)?;
        for ctx in self.contexts() {
            set_session_id_context(ctx, &sid)?;
        }
        Ok(())
    }

    /// Requires clients to present a certificate issued by one of the CAs in `ca_pem`
    /// (mutual TLS). The handshake fails if the client sends none or an untrusted one.
    /// The CAs are also sent to clients as the list of acceptable issuers.
    pub fn require_client_cert(mut self, ca_pem: &[u8]) -> Result<Self> {
        let cas = parse_certs("client CA", ca_pem)?;
        for ctx in self.contexts() {
            require_client_cas(ctx, &cas)?;
        }
        self.client_cas.extend(cas);
        self.update_session_id_context()?;
        Ok(self)
    }

    /// Like [`require_client_cert`](Self::require_client_cert), reading the CAs from a
    /// PEM file.
    pub fn require_client_cert_file(self, path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        with_path(path, |pem| self.require_client_cert(pem))
    }

    /// Checks client certificates against the certificate revocation lists in `crl_pem`
    /// (one or more PEM `X509 CRL` blocks): a revoked certificate fails the handshake
    /// with [`Error::Verification`] of kind
    /// [`VerifyKind::Revoked`](crate::error::VerifyKind::Revoked) on the server, and the
    /// client receives a `certificate_revoked` alert. `check` says which certificates of
    /// the client's chain are checked (if called several times, [`CrlCheck::Chain`]
    /// wins). Meaningful with [`require_client_cert`](Self::require_client_cert).
    ///
    /// OCSP is not checked. Each certificate checked needs a CRL from its issuer here,
    /// else the handshake fails (`X509_V_ERR_UNABLE_TO_GET_CRL`); a CRL past its
    /// `nextUpdate` fails every handshake it applies to, so reload fresh CRLs with
    /// [`TlsAcceptor::replace`]. Changing the CRLs makes clients verify their
    /// certificates again rather than resume.
    ///
    /// # Errors
    /// [`Error::Config`] if `crl_pem` holds no CRL, one that does not parse, or one that
    /// is not valid now (`thisUpdate` in the future, `nextUpdate` past).
    ///
    /// # Examples
    /// ```no_run
    /// use biotls::tls::{CrlCheck, TlsAcceptor};
    ///
    /// let acceptor = TlsAcceptor::builder_from_files("certs/server.pem", "certs/server.key")?
    ///     .require_client_cert_file("certs/ca.pem")?
    ///     .crl_file("certs/crl.pem", CrlCheck::Leaf)?
    ///     .build();
    /// # let _ = acceptor;
    /// # Ok::<(), biotls::Error>(())
    /// ```
    pub fn crl_pem(mut self, crl_pem: &[u8], check: CrlCheck) -> Result<Self> {
        let crls = revocation::parse_crls(crl_pem)?;
        let check = self.crl_check.map_or(check, |c| c.max(check));
        for ctx in self.contexts() {
            revocation::apply(ctx, &crls, check)?;
        }
        self.crls.extend(crls);
        self.crl_check = Some(check);
        self.update_session_id_context()?;
        Ok(self)
    }

    /// Like [`crl_pem`](Self::crl_pem), reading a PEM file.
    pub fn crl_file(self, path: impl AsRef<Path>, check: CrlCheck) -> Result<Self> {
        let path = path.as_ref();
        with_path(path, |pem| self.crl_pem(pem, check))
    }

    /// Negotiates ALPN (RFC 7301) with the server's `protocols`, in the server's order of
    /// preference: the first of them that the client also offers is selected.
    ///
    /// A client that offers none of them is refused with a `no_application_protocol`
    /// alert; a client that offers no ALPN at all is served without a protocol. Without
    /// this call (or [`alpn_select`](Self::alpn_select)) the server ignores what clients
    /// offer. The choice is in [`SessionInfo::alpn`](super::SessionInfo::alpn).
    ///
    /// # Errors
    /// [`Error::Config`] for an empty list or a name that is empty or over 255 bytes.
    ///
    /// # Examples
    /// ```no_run
    /// use biotls::tls::TlsAcceptor;
    ///
    /// let acceptor = TlsAcceptor::builder_from_files("certs/server.pem", "certs/server.key")?
    ///     .alpn_protocols(&[b"h2", b"http/1.1"])?
    ///     .build();
    /// # let _ = acceptor;
    /// # Ok::<(), biotls::Error>(())
    /// ```
    pub fn alpn_protocols(self, protocols: &[&[u8]]) -> Result<Self> {
        alpn_wire(protocols)?; // validates the names
        let ours: Vec<Vec<u8>> = protocols.iter().map(|p| p.to_vec()).collect();
        Ok(self.alpn_select(move |_, offered| {
            // Ours first: the server's preference decides.
            ours.iter()
                .find_map(|p| offered.iter().find(|o| **o == p.as_slice()).copied())
        }))
    }

    /// Selects the ALPN protocol with `select`, called with the SNI name the client sent
    /// (if any) and the protocols it offers (in its order). Returning `None` refuses the
    /// connection with a `no_application_protocol` alert. Not called for clients that
    /// offer no ALPN. Replaces [`alpn_protocols`](Self::alpn_protocols).
    pub fn alpn_select<F>(mut self, select: F) -> Self
    where
        F: for<'a> Fn(Option<&str>, &[&'a [u8]]) -> Option<&'a [u8]> + Send + Sync + 'static,
    {
        self.alpn = Some(Arc::new(select));
        self
    }

    /// Serves the certificate chain `chain_pem` (leaf first) with `key_pem` to clients
    /// whose SNI name is `name` (case-insensitive; `*.example.com` matches one label).
    /// Clients sending another name, or none, get the default certificate given to
    /// [`TlsAcceptor::builder`]. May be called for any number of names; the first match
    /// wins, exact names before wildcards.
    ///
    /// The per-name contexts share every other setting of this builder (ALPN, client
    /// certificate verification and CRLs, key logging, session id context), and the
    /// session cache and ticket keys of the default context. Settings made through
    /// [`context_builder_mut`](Self::context_builder_mut) apply to the default context only.
    ///
    /// # Errors
    /// [`Error::Config`] for an empty name, or a chain or key that cannot be used.
    ///
    /// # Examples
    /// ```no_run
    /// use biotls::tls::TlsAcceptor;
    ///
    /// let acceptor = TlsAcceptor::builder_from_files("certs/server.pem", "certs/server.key")?
    ///     .sni_certificate_files("api.example.com", "certs/api.pem", "certs/api.key")?
    ///     .build();
    /// # let _ = acceptor;
    /// # Ok::<(), biotls::Error>(())
    /// ```
    pub fn sni_certificate(mut self, name: &str, chain_pem: &[u8], key_pem: &[u8]) -> Result<Self> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if name.is_empty() {
            return Err(Error::config("SNI certificate: empty server name"));
        }
        let named = |e| match e {
            Error::Config(msg) => Error::Config(format!("SNI certificate for {name}: {msg}")),
            other => other,
        };
        let (mut ctx, leaf) = server_context(chain_pem, key_pem).map_err(named)?;
        // The policy set so far; later calls apply to this context too.
        if !self.client_cas.is_empty() {
            require_client_cas(&mut ctx, &self.client_cas).map_err(named)?;
        }
        if let Some(check) = self.crl_check {
            revocation::apply(&mut ctx, &self.crls, check).map_err(named)?;
        }
        if let Some(count) = self.session_tickets {
            set_num_tickets(&mut ctx, count).map_err(named)?;
        }
        let sid = session_id_context(&self.client_cas, &self.crls, self.crl_check)?;
        set_session_id_context(&mut ctx, &sid)?;
        self.names.push((name, ctx, leaf));
        Ok(self)
    }

    /// Like [`sni_certificate`](Self::sni_certificate), reading PEM files.
    pub fn sni_certificate_files(
        self,
        name: &str,
        chain: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<Self> {
        let (chain, key) = (chain.as_ref(), key.as_ref());
        let chain_pem = read_file(chain)?;
        let key_pem = read_file(key)?;
        self.sni_certificate(name, &chain_pem, &key_pem)
            .map_err(|e| match e {
                Error::Config(msg) => {
                    Error::Config(format!("{} / {}: {msg}", chain.display(), key.display()))
                }
                other => other,
            })
    }

    /// **Debugging aid**: appends the secrets of every connection to `path` in the
    /// SSLKEYLOGFILE format of NSS (one `LABEL <client random> <secret>` line per
    /// secret), which lets Wireshark and similar tools decrypt a packet capture of the
    /// traffic. Off by default; anyone who can read the file can decrypt the connections,
    /// so never turn it on in production. The file is created if missing and written
    /// from the loop thread (one small blocking write per secret).
    ///
    /// # Errors
    /// [`Error::Config`] if the file cannot be opened for appending.
    pub fn keylog_file(mut self, path: impl AsRef<Path>) -> Result<Self> {
        self.keylog = Some(open_keylog(path.as_ref())?);
        Ok(self)
    }

    /// Sets how long a session ticket key encrypts new tickets before a new key takes
    /// over (12 hours by default). A key keeps decrypting for one more interval, so a
    /// ticket resumes for at most two intervals (and no longer than OpenSSL's session
    /// timeout, two hours by default), and a stolen key opens the tickets of one
    /// interval only. Keys are kept in memory only, never written anywhere.
    ///
    /// Given to [`TlsAcceptor::replace`], it changes the interval of the acceptor's
    /// existing keys (which are kept).
    ///
    /// # Errors
    /// [`Error::Config`] for a zero interval.
    pub fn ticket_key_rotation(mut self, interval: Duration) -> Result<Self> {
        if interval.is_zero() {
            return Err(Error::config(
                "session ticket key rotation: the interval must not be zero",
            ));
        }
        self.ticket_key_rotation = Some(interval);
        Ok(self)
    }

    /// Sets how many TLS 1.3 session tickets the server sends after a full handshake:
    /// [`DEFAULT_SESSION_TICKETS`] (1) unless set; OpenSSL's own default is 2. A
    /// resumed handshake always sends one new ticket (when `count` is not 0), so a
    /// client that resumes one connection after another never runs out. A client that
    /// opens several connections at once resumes as many of them as it holds tickets
    /// (a TLS 1.3 ticket is used once): raise `count` for such clients, at about 4 % of
    /// a full handshake's server CPU per extra ticket. 0 sends none, which ends TLS 1.3
    /// resumption (TLS 1.2 session tickets are not affected:
    /// [`SslOptions::NO_TICKET`](openssl::ssl::SslOptions::NO_TICKET) through
    /// [`context_builder_mut`](Self::context_builder_mut) turns those off).
    ///
    /// # Errors
    /// [`Error::Config`] if OpenSSL refuses the setting.
    pub fn session_tickets(mut self, count: usize) -> Result<Self> {
        for ctx in self.contexts() {
            set_num_tickets(ctx, count)?;
        }
        self.session_tickets = Some(count);
        Ok(self)
    }

    /// The underlying OpenSSL context builder of the default certificate, for settings
    /// this builder does not wrap (verify callbacks, groups, ...). Session tickets are
    /// encrypted by the acceptor's ticket keys through OpenSSL's ticket key callback,
    /// which `build` installs over any set here.
    pub fn context_builder_mut(&mut self) -> &mut SslContextBuilder {
        &mut self.ctx
    }

    /// Finishes the configuration, with a new set of session ticket keys.
    pub fn build(self) -> TlsAcceptor {
        let interval = self
            .ticket_key_rotation
            .unwrap_or(DEFAULT_TICKET_KEY_ROTATION);
        let tickets = Arc::new(TicketKeys::new(interval));
        let ctx = self.build_context(&tickets);
        TlsAcceptor {
            shared: Arc::new(Shared {
                current: RwLock::new(ctx),
                tickets,
            }),
        }
    }

    /// Refuses a leaf certificate that has expired.
    fn check_validity(&self) -> Result<()> {
        let now = Asn1Time::days_from_now(0)
            .map_err(|e| Error::Config(format!("clock: {}", stack_message(&e))))?;
        let leaves = std::iter::once(("the default certificate".to_owned(), &self.leaf)).chain(
            self.names
                .iter()
                .map(|(name, _, leaf)| (format!("the certificate for {name}"), leaf)),
        );
        for (what, leaf) in leaves {
            let expired = leaf
                .not_after()
                .compare(&now)
                .map_err(|e| Error::Config(format!("{what}: {}", stack_message(&e))))?
                != Ordering::Greater;
            if expired {
                return Err(Error::Config(format!(
                    "{what} expired at {}",
                    leaf.not_after()
                )));
            }
        }
        Ok(())
    }

    /// The OpenSSL context of this configuration, with `tickets` as its ticket keys.
    fn build_context(self, tickets: &Arc<TicketKeys>) -> SslContext {
        let TlsAcceptorBuilder {
            mut ctx,
            names,
            alpn,
            keylog,
            ..
        } = self;
        let mut exact: Vec<(String, SslContext)> = Vec::new();
        let mut wildcard: Vec<(String, SslContext)> = Vec::new();
        for (name, mut named, _) in names {
            if let Some(select) = &alpn {
                set_alpn_select(&mut named, Arc::clone(select));
            }
            if let Some(log) = &keylog {
                set_keylog(&mut named, Arc::clone(log));
            }
            // OpenSSL encrypts tickets with the callback of the context a session started
            // on (the default one); installed here as well for a caller that switches.
            set_ticket_keys(&mut named, tickets);
            let built = named.build().into_context();
            match name.strip_prefix("*.") {
                Some(domain) => wildcard.push((domain.to_owned(), built)),
                None => exact.push((name, built)),
            }
        }
        if let Some(select) = alpn {
            set_alpn_select(&mut ctx, select);
        }
        if let Some(log) = keylog {
            set_keylog(&mut ctx, log);
        }
        set_ticket_keys(&mut ctx, tickets);
        if !exact.is_empty() || !wildcard.is_empty() {
            ctx.set_servername_callback(move |ssl, _alert| {
                let Some(name) = ssl.servername(NameType::HOST_NAME) else {
                    return Ok(()); // no SNI: the default certificate
                };
                let name = name.trim_end_matches('.').to_ascii_lowercase();
                let parent = name.split_once('.').map(|(_, rest)| rest);
                let found = exact
                    .iter()
                    .find(|(n, _)| *n == name)
                    .or_else(|| wildcard.iter().find(|(d, _)| Some(d.as_str()) == parent));
                match found {
                    // Switches certificate and key (and the verify store, which holds the
                    // same CAs and CRLs); the session cache and ticket keys stay the
                    // default's.
                    Some((_, named)) => ssl
                        .set_ssl_context(named)
                        .map_err(|_| SniError::ALERT_FATAL),
                    None => Ok(()), // an unknown name: the default certificate
                }
            });
        }
        ctx.build().into_context()
    }
}

/// Installs the acceptor's ticket keys in `ctx`; logs if OpenSSL refused.
fn set_ticket_keys(ctx: &mut SslContextBuilder, tickets: &Arc<TicketKeys>) {
    if !ossl::set_ticket_keys(ctx, Arc::clone(tickets)) {
        ossl::clear_error_queue();
        log::warn!(
            "biotls: this OpenSSL refused the session ticket key callback: tickets do not \
             survive TlsAcceptor::replace and their key does not rotate"
        );
    }
}

/// Makes `ctx` require client certificates issued by `cas`, and name them to clients.
fn require_client_cas(ctx: &mut SslContextBuilder, cas: &[X509]) -> Result<()> {
    for ca in cas {
        let added = ctx
            .cert_store_mut()
            .add_cert(ca.clone())
            .and_then(|()| ctx.add_client_ca(ca));
        added.map_err(|e| Error::Config(format!("client CA: {}", stack_message(&e))))?;
    }
    // The callback keeps OpenSSL's verdict; it records where a chain failed.
    ctx.set_verify_callback(
        SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT,
        ossl::record_verify_depth,
    );
    Ok(())
}

/// Installs the ALPN selection callback on a server context.
fn set_alpn_select(ctx: &mut SslContextBuilder, select: Arc<AlpnSelect>) {
    ctx.set_alpn_select_callback(move |ssl, client| {
        let offered = alpn_names(client);
        let name = ssl.servername(NameType::HOST_NAME);
        // RFC 7301 3.2: no protocol in common is a fatal no_application_protocol alert.
        select(name, &offered).ok_or(AlpnError::ALERT_FATAL)
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn acceptor_is_send_and_sync() {
        assert_send_sync::<TlsAcceptor>();
    }
}
