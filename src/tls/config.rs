//! TLS client configuration ([`TlsConnector`]), and the helpers it shares with the
//! server's ([`TlsAcceptor`](super::TlsAcceptor), in `tls/acceptor.rs`): reading PEM
//! files, identities, ALPN lists, key logs.
//!
//! A `TlsConnector` wraps a reference-counted OpenSSL `SSL_CTX`, so cloning it is cheap
//! and one configuration serves any number of sessions.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use std::sync::{Arc, Mutex};

use openssl::pkey::PKey;
use openssl::ssl::{
    SslConnector, SslContextBuilder, SslContextRef, SslMethod, SslMode, SslOptions,
    SslSessionCacheMode, SslVerifyMode, SslVersion,
};
use openssl::x509::X509;
use openssl::x509::store::X509StoreBuilder;

use super::ossl::{self, stack_message};
use super::resume::{self, SessionCache};
use super::revocation::{self, CrlCheck};
use crate::{Error, Result};

pub(super) fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
}

/// Runs `f`, prefixing its configuration error with `path`.
pub(super) fn with_path<T>(path: &Path, f: impl FnOnce(&[u8]) -> Result<T>) -> Result<T> {
    let data = read_file(path)?;
    f(&data).map_err(|e| match e {
        Error::Config(msg) => Error::Config(format!("{}: {msg}", path.display())),
        other => other,
    })
}

pub(super) fn parse_certs(what: &str, pem: &[u8]) -> Result<Vec<X509>> {
    let certs = X509::stack_from_pem(pem)
        .map_err(|e| Error::Config(format!("{what}: {}", stack_message(&e))))?;
    if certs.is_empty() {
        return Err(Error::Config(format!(
            "{what}: no certificate found in PEM"
        )));
    }
    Ok(certs)
}

/// Installs a certificate chain (leaf first) and its private key into `ctx`; returns the
/// leaf.
pub(super) fn set_identity(
    ctx: &mut SslContextBuilder,
    chain_pem: &[u8],
    key_pem: &[u8],
) -> Result<X509> {
    let mut certs = parse_certs("certificate chain", chain_pem)?.into_iter();
    let leaf = certs
        .next()
        .ok_or_else(|| Error::config("certificate chain: no certificate found in PEM"))?;
    let key = PKey::private_key_from_pem(key_pem)
        .map_err(|e| Error::Config(format!("private key: {}", stack_message(&e))))?;
    ctx.set_certificate(&leaf)
        .map_err(|e| Error::Config(format!("certificate: {}", stack_message(&e))))?;
    for cert in certs {
        ctx.add_extra_chain_cert(cert)
            .map_err(|e| Error::Config(format!("certificate chain: {}", stack_message(&e))))?;
    }
    ctx.set_private_key(&key)
        .map_err(|e| Error::Config(format!("private key: {}", stack_message(&e))))?;
    ctx.check_private_key().map_err(|e| {
        Error::Config(format!(
            "private key does not match the certificate: {}",
            stack_message(&e)
        ))
    })?;
    Ok(leaf)
}

/// Adds every certificate in `pem` to `ctx`'s trust store; returns them.
fn add_trusted(ctx: &mut SslContextBuilder, what: &str, pem: &[u8]) -> Result<Vec<X509>> {
    let certs = parse_certs(what, pem)?;
    for cert in &certs {
        ctx.cert_store_mut()
            .add_cert(cert.clone())
            .map_err(|e| Error::Config(format!("{what}: {}", stack_message(&e))))?;
    }
    Ok(certs)
}

/// Loads the system's CA certificates into `ctx`; returns how many locations loaded.
///
/// Works with the system OpenSSL and with a vendored one whose compiled-in default
/// directory differs: `SSL_CERT_FILE` / `SSL_CERT_DIR` (a `:`-separated list) are honored
/// first, then the usual locations found by `openssl-probe`.
fn load_system_roots(ctx: &mut SslContextBuilder) -> usize {
    let mut files: Vec<PathBuf> = Vec::new();
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(file) = std::env::var_os("SSL_CERT_FILE") {
        files.push(PathBuf::from(file));
    }
    if let Some(list) = std::env::var_os("SSL_CERT_DIR") {
        dirs.extend(std::env::split_paths(&list));
    }
    let probe = openssl_probe::probe();
    files.extend(probe.cert_file);
    dirs.extend(probe.cert_dir);

    let mut loaded = 0;
    let mut seen: Vec<PathBuf> = Vec::new();
    for file in files {
        if seen.contains(&file) || !file.is_file() {
            continue;
        }
        match ctx.load_verify_locations(Some(&file), None) {
            Ok(()) => loaded += 1,
            Err(e) => log::warn!("{}: {}", file.display(), stack_message(&e)),
        }
        seen.push(file);
    }
    for dir in dirs {
        if seen.contains(&dir) || !dir.is_dir() {
            continue;
        }
        match ctx.load_verify_locations(None, Some(&dir)) {
            Ok(()) => loaded += 1,
            Err(e) => log::warn!("{}: {}", dir.display(), stack_message(&e)),
        }
        seen.push(dir);
    }
    loaded
}

/// Encodes ALPN protocol names in the wire format (each prefixed by its length).
pub(super) fn alpn_wire(protocols: &[&[u8]]) -> Result<Vec<u8>> {
    if protocols.is_empty() {
        return Err(Error::config("ALPN: empty protocol list"));
    }
    let mut wire = Vec::new();
    for p in protocols {
        let len = u8::try_from(p.len())
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| Error::config("ALPN: a protocol name must be 1 to 255 bytes"))?;
        wire.push(len);
        wire.extend_from_slice(p);
    }
    Ok(wire)
}

/// Splits an ALPN wire-format list into its names (a malformed tail is ignored).
pub(super) fn alpn_names(mut wire: &[u8]) -> Vec<&[u8]> {
    let mut names = Vec::new();
    while let Some((&len, rest)) = wire.split_first() {
        let Some((name, tail)) = rest.split_at_checked(len as usize) else {
            break;
        };
        names.push(name);
        wire = tail;
    }
    names
}

/// A key log file shared by every context that logs to it.
pub(super) type KeyLog = Arc<Mutex<File>>;

/// Opens (creates, appends to) a key log file.
pub(super) fn open_keylog(path: &Path) -> Result<KeyLog> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| Error::Config(format!("key log {}: {e}", path.display())))?;
    Ok(Arc::new(Mutex::new(file)))
}

/// Makes `ctx` append each secret it derives to `log`, one NSS key log line each.
pub(super) fn set_keylog(ctx: &mut SslContextBuilder, log: KeyLog) {
    ctx.set_keylog_callback(move |_, line| {
        // One `write` per line: appends from several contexts or processes do not mix.
        let mut text = String::with_capacity(line.len() + 1);
        text.push_str(line);
        text.push('\n');
        if let Ok(mut file) = log.lock()
            && let Err(e) = file.write_all(text.as_bytes())
        {
            log::warn!("biotls: key log: {e}");
        }
    });
}

/// Client-side TLS configuration: trusted CAs, an optional client certificate, policy.
///
/// Cheap to clone (it wraps a reference-counted `SSL_CTX`). Create sessions with
/// [`TlsSession::client`](super::TlsSession::client).
#[derive(Clone)]
pub struct TlsConnector {
    connector: SslConnector,
    verify: bool,
    /// Sessions to resume, shared by the clones of this connector.
    cache: Option<Arc<SessionCache>>,
}

impl fmt::Debug for TlsConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConnector")
            .field("verify", &self.verify)
            .field("session_resumption", &self.cache.is_some())
            .finish_non_exhaustive()
    }
}

impl TlsConnector {
    /// Starts a client configuration.
    ///
    /// Defaults: TLS 1.2 minimum, certificate and host name verification on, no
    /// renegotiation, partial writes enabled, and the system's CA certificates as trust
    /// roots unless CAs are added with [`ca_pem`](TlsConnectorBuilder::ca_pem) /
    /// [`ca_file`](TlsConnectorBuilder::ca_file).
    pub fn builder() -> Result<TlsConnectorBuilder> {
        let mut ctx = SslConnector::builder(SslMethod::tls_client())
            .map_err(|e| Error::Config(format!("TLS client context: {}", stack_message(&e))))?;
        // Start from an empty trust store: `SslConnector::builder` installed OpenSSL's
        // compiled-in default paths, which would stay trusted next to `ca_pem` (and point
        // nowhere useful with a vendored OpenSSL). `build` loads the system roots if no
        // CA was configured.
        let store = X509StoreBuilder::new()
            .map_err(|e| Error::Config(format!("TLS client context: {}", stack_message(&e))))?;
        ctx.set_cert_store(store.build());
        // The callback keeps OpenSSL's verdict; it records where a chain failed.
        ctx.set_verify_callback(SslVerifyMode::PEER, ossl::record_verify_depth);
        ctx.set_min_proto_version(Some(SslVersion::TLS1_2))
            .map_err(|e| Error::Config(format!("TLS client context: {}", stack_message(&e))))?;
        ctx.set_mode(
            SslMode::ENABLE_PARTIAL_WRITE
                | SslMode::ACCEPT_MOVING_WRITE_BUFFER
                | SslMode::RELEASE_BUFFERS,
        );
        ctx.set_options(SslOptions::NO_COMPRESSION | SslOptions::NO_RENEGOTIATION);
        Ok(TlsConnectorBuilder {
            ctx,
            roots_configured: false,
            verify: true,
            resumption: true,
            crl_check: None,
        })
    }

    /// The OpenSSL context.
    pub fn context(&self) -> &SslContextRef {
        self.connector.context()
    }

    pub(crate) fn connector(&self) -> &SslConnector {
        &self.connector
    }

    pub(crate) fn verifies_certificates(&self) -> bool {
        self.verify
    }

    pub(crate) fn session_cache(&self) -> Option<&SessionCache> {
        self.cache.as_deref()
    }

    /// Number of resumable sessions held for `server_name` (0 with resumption off).
    pub fn cached_sessions(&self, server_name: &str) -> usize {
        self.cache.as_ref().map_or(0, |c| c.len(server_name))
    }
}

/// Builds a [`TlsConnector`].
pub struct TlsConnectorBuilder {
    ctx: openssl::ssl::SslConnectorBuilder,
    roots_configured: bool,
    verify: bool,
    resumption: bool,
    crl_check: Option<CrlCheck>,
}

impl fmt::Debug for TlsConnectorBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConnectorBuilder")
            .field("roots_configured", &self.roots_configured)
            .field("verify", &self.verify)
            .field("crl_check", &self.crl_check)
            .finish_non_exhaustive()
    }
}

impl TlsConnectorBuilder {
    /// Trusts the CA certificates in `pem` (one or more). Once any CA is added this way,
    /// the system roots are not loaded unless [`system_roots`](Self::system_roots) is
    /// called too.
    pub fn ca_pem(mut self, pem: &[u8]) -> Result<Self> {
        add_trusted(&mut self.ctx, "CA certificate", pem)?;
        self.roots_configured = true;
        Ok(self)
    }

    /// Like [`ca_pem`](Self::ca_pem), reading a PEM file.
    pub fn ca_file(self, path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        with_path(path, |pem| self.ca_pem(pem))
    }

    /// Trusts the system's CA certificates: `SSL_CERT_FILE` / `SSL_CERT_DIR` if set,
    /// else the usual locations of the platform (found with `openssl-probe`, so this also
    /// works with a vendored OpenSSL whose built-in default directory is elsewhere).
    ///
    /// Fails with [`Error::Config`] if no CA file or directory was found.
    pub fn system_roots(mut self) -> Result<Self> {
        if load_system_roots(&mut self.ctx) == 0 {
            return Err(Error::config(
                "no system CA certificates found (set SSL_CERT_FILE or SSL_CERT_DIR)",
            ));
        }
        self.roots_configured = true;
        Ok(self)
    }

    /// Presents a client certificate chain (leaf first) with its PEM private key, for
    /// servers that require mutual TLS.
    pub fn client_cert_pem(mut self, chain_pem: &[u8], key_pem: &[u8]) -> Result<Self> {
        set_identity(&mut self.ctx, chain_pem, key_pem)?;
        Ok(self)
    }

    /// Like [`client_cert_pem`](Self::client_cert_pem), reading PEM files.
    pub fn client_cert_files(self, chain: impl AsRef<Path>, key: impl AsRef<Path>) -> Result<Self> {
        let (chain, key) = (chain.as_ref(), key.as_ref());
        let chain_pem = read_file(chain)?;
        let key_pem = read_file(key)?;
        self.client_cert_pem(&chain_pem, &key_pem)
            .map_err(|e| match e {
                Error::Config(msg) => {
                    Error::Config(format!("{} / {}: {msg}", chain.display(), key.display()))
                }
                other => other,
            })
    }

    /// Checks the server's certificate chain against the certificate revocation lists in
    /// `crl_pem` (one or more PEM `X509 CRL` blocks): a server whose certificate is
    /// revoked fails the handshake with [`Error::Verification`] of kind
    /// [`VerifyKind::Revoked`](crate::error::VerifyKind::Revoked). `check` says which
    /// certificates of the chain are checked (if called several times,
    /// [`CrlCheck::Chain`] wins).
    ///
    /// OCSP is not checked. Each certificate checked needs a CRL from its issuer here,
    /// else the handshake fails (`X509_V_ERR_UNABLE_TO_GET_CRL`): with
    /// [`system_roots`](Self::system_roots), that is every public CA a server may use.
    /// A CRL past its `nextUpdate` fails every handshake it applies to.
    ///
    /// # Errors
    /// [`Error::Config`] if `crl_pem` holds no CRL, one that does not parse, or one that
    /// is not valid now (`thisUpdate` in the future, `nextUpdate` past).
    ///
    /// # Examples
    /// ```no_run
    /// use biotls::tls::{CrlCheck, TlsConnector};
    ///
    /// let connector = TlsConnector::builder()?
    ///     .ca_file("certs/ca.pem")?
    ///     .crl_file("certs/crl.pem", CrlCheck::Chain)?
    ///     .build();
    /// # let _ = connector;
    /// # Ok::<(), biotls::Error>(())
    /// ```
    pub fn crl_pem(mut self, crl_pem: &[u8], check: CrlCheck) -> Result<Self> {
        let crls = revocation::parse_crls(crl_pem)?;
        let check = self.crl_check.map_or(check, |c| c.max(check));
        revocation::apply(&mut self.ctx, &crls, check)?;
        self.crl_check = Some(check);
        Ok(self)
    }

    /// Like [`crl_pem`](Self::crl_pem), reading a PEM file.
    pub fn crl_file(self, path: impl AsRef<Path>, check: CrlCheck) -> Result<Self> {
        let path = path.as_ref();
        with_path(path, |pem| self.crl_pem(pem, check))
    }

    /// **Dangerous**: accepts any server certificate, for any host name.
    ///
    /// The connection is then encrypted but not authenticated: anyone on the path can
    /// impersonate the server and read everything. Use only for tests against a server
    /// you control.
    pub fn danger_disable_certificate_verification(mut self) -> Self {
        self.ctx.set_verify(SslVerifyMode::NONE);
        self.verify = false;
        self
    }

    /// Offers ALPN (RFC 7301) `protocols`, most preferred first. The server's choice is in
    /// [`SessionInfo::alpn`](super::SessionInfo::alpn) (`None` if the server ignored ALPN).
    ///
    /// # Errors
    /// [`Error::Config`] for an empty list or a name that is empty or over 255 bytes.
    ///
    /// # Examples
    /// ```no_run
    /// use biotls::tls::TlsConnector;
    ///
    /// let connector = TlsConnector::builder()?.alpn_protocols(&[b"h2", b"http/1.1"])?.build();
    /// # let _ = connector;
    /// # Ok::<(), biotls::Error>(())
    /// ```
    pub fn alpn_protocols(mut self, protocols: &[&[u8]]) -> Result<Self> {
        let wire = alpn_wire(protocols)?;
        self.ctx
            .set_alpn_protos(&wire)
            .map_err(|e| Error::Config(format!("ALPN: {}", stack_message(&e))))?;
        Ok(self)
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
        set_keylog(&mut self.ctx, open_keylog(path.as_ref())?);
        Ok(self)
    }

    /// Turns client-side session resumption on (the default) or off.
    ///
    /// With it on, the connector and its clones share a cache of sessions by server name
    /// (the `server_name` given to [`Tls::client`](super::Tls::client)): the TLS 1.3
    /// tickets or TLS 1.2 sessions a server sends are kept, and the next connection to
    /// the same name offers one, skipping the certificate exchange and its signature if
    /// the server accepts. [`Tls::is_resumed`](super::Tls::is_resumed) tells whether it
    /// did. A TLS 1.3 ticket is used once; a TLS 1.2 session is reused.
    ///
    /// Sessions are stored when they arrive (a TLS 1.3 server sends its tickets after the
    /// handshake, so the client must read for a moment); OpenSSL discards a client
    /// session whose connection ended without our close_notify.
    pub fn session_resumption(mut self, enabled: bool) -> Self {
        self.resumption = enabled;
        self
    }

    /// The underlying OpenSSL context builder, for settings this builder does not wrap
    /// (verify callbacks, groups, protocol versions, ...).
    pub fn context_builder_mut(&mut self) -> &mut SslContextBuilder {
        &mut self.ctx
    }

    /// Finishes the configuration. If no CA was configured and verification is on, the
    /// system roots are loaded (a warning is logged if none are found; handshakes then
    /// fail verification).
    pub fn build(mut self) -> TlsConnector {
        if self.verify && !self.roots_configured && load_system_roots(&mut self.ctx) == 0 {
            log::warn!(
                "biotls: no system CA certificates found; set SSL_CERT_FILE or SSL_CERT_DIR"
            );
        }
        let cache = match (self.resumption, resume::key_index()) {
            (true, Some(index)) => {
                let cache = Arc::new(SessionCache::default());
                let store = Arc::clone(&cache);
                self.ctx.set_session_cache_mode(
                    SslSessionCacheMode::CLIENT | SslSessionCacheMode::NO_INTERNAL,
                );
                self.ctx.set_new_session_callback(move |ssl, session| {
                    if let Some(name) = ssl.ex_data(index) {
                        store.put(name, session);
                    }
                });
                Some(cache)
            }
            _ => None,
        };
        TlsConnector {
            connector: self.ctx.build(),
            verify: self.verify,
            cache,
        }
    }
}
