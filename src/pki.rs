//! Throw-away PKI for tests and examples (feature `pki`).
//!
//! [`Pki::generate`] makes an ECDSA P-256 CA, a server certificate and a client
//! certificate signed by it, all in PEM; the same CA issues more certificates
//! ([`Pki::issue_server`], [`Pki::issue_client`]) and certificate revocation lists
//! ([`Pki::crl`]). **The keys are generated in memory and meant for tests; anything
//! written with [`Pki::write_to_dir`] is not a production secret.**
//!
//! ```no_run
//! # fn main() -> biotls::Result<()> {
//! let pki = biotls::pki::Pki::generate(&["localhost", "127.0.0.1"])?;
//! let acceptor = pki.acceptor()?;   // serves server_chain_pem
//! let connector = pki.connector()?; // trusts ca_pem
//! # let _ = (acceptor, connector);
//! # Ok(())
//! # }
//! ```

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use openssl::x509::X509;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CertifiedIssuer,
    DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair,
    KeyUsagePurpose, RevocationReason, RevokedCertParams, SerialNumber, SigningKey,
};

use crate::tls::{TlsAcceptor, TlsConnector};
use crate::{Error, Result};

const DAY: Duration = Duration::from_secs(24 * 60 * 60);

fn pki_error(e: rcgen::Error) -> Error {
    Error::Config(format!("pki: {e}"))
}

/// A CA with a server and a client certificate, all PEM-encoded.
#[derive(Clone)]
#[non_exhaustive]
pub struct Pki {
    /// The CA certificate (trust anchor for both sides).
    pub ca_pem: String,
    /// The CA's private key (PKCS#8).
    pub ca_key_pem: String,
    /// The server certificate followed by the CA certificate.
    pub server_chain_pem: String,
    /// The server's private key (PKCS#8).
    pub server_key_pem: String,
    /// The client certificate (for mutual TLS) followed by the CA certificate.
    pub client_chain_pem: String,
    /// The client's private key (PKCS#8).
    pub client_key_pem: String,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki").finish_non_exhaustive()
    }
}

/// Validity of the generated end-entity certificates.
#[derive(Clone, Copy)]
enum Validity {
    /// From a day ago to ten years from now.
    TenYears,
    /// Expired: from 30 days ago to yesterday.
    Expired,
}

impl Pki {
    /// Generates a CA, a server certificate for `server_names` (DNS names; IP literals
    /// such as `127.0.0.1` or `::1` become IP SANs) and a client certificate, valid for
    /// ten years from now.
    pub fn generate(server_names: &[&str]) -> Result<Pki> {
        Self::generate_inner(server_names, Validity::TenYears)
    }

    /// Like [`generate`](Self::generate), but the server (and client) certificates have
    /// already expired (yesterday); the CA is valid. For testing verification failures.
    pub fn generate_expired_server(server_names: &[&str]) -> Result<Pki> {
        Self::generate_inner(server_names, Validity::Expired)
    }

    fn generate_inner(server_names: &[&str], validity: Validity) -> Result<Pki> {
        let ca_key = KeyPair::generate().map_err(pki_error)?;
        let ca = CertifiedIssuer::self_signed(ca_params(), &ca_key).map_err(pki_error)?;
        let ca_pem = ca.pem();
        let server = issue(&ca, &ca_pem, server_params(server_names)?, validity)?;
        let client = issue(&ca, &ca_pem, client_params("biotls test client"), validity)?;
        Ok(Pki {
            server_chain_pem: server.chain_pem,
            server_key_pem: server.key_pem,
            client_chain_pem: client.chain_pem,
            client_key_pem: client.key_pem,
            ca_key_pem: ca_key.serialize_pem(),
            ca_pem,
        })
    }

    /// The CA as an issuer again, from its key (its name and usages are fixed).
    fn ca(&self) -> Result<Issuer<'static, KeyPair>> {
        let key = KeyPair::from_pem(&self.ca_key_pem).map_err(pki_error)?;
        Ok(Issuer::new(ca_params(), key))
    }

    /// Issues another server certificate for `server_names` (as [`generate`](Self::generate)
    /// does: DNS names, IP literals as IP SANs), valid for ten years, with a new key and
    /// a serial number of its own: for example the renewed certificate of a rotation.
    pub fn issue_server(&self, server_names: &[&str]) -> Result<Issued> {
        issue(
            &self.ca()?,
            &self.ca_pem,
            server_params(server_names)?,
            Validity::TenYears,
        )
    }

    /// Issues another client certificate with this common name, valid for ten years.
    pub fn issue_client(&self, common_name: &str) -> Result<Issued> {
        issue(
            &self.ca()?,
            &self.ca_pem,
            client_params(common_name),
            Validity::TenYears,
        )
    }

    /// A certificate revocation list of this CA (PEM) revoking the leaf certificate of
    /// each chain in `revoked` (PEM, leaf first: a [`Issued::chain_pem`] or
    /// [`server_chain_pem`](Self::server_chain_pem)), valid from a day ago for ten years.
    pub fn crl(&self, revoked: &[&str]) -> Result<String> {
        self.crl_until(revoked, SystemTime::now() + 3653 * DAY)
    }

    /// Like [`crl`](Self::crl), with `next_update` as the CRL's `nextUpdate` (in the past
    /// for an expired CRL); its `thisUpdate` is a day before that or a day ago, whichever
    /// is earlier.
    pub fn crl_until(&self, revoked: &[&str], next_update: SystemTime) -> Result<String> {
        let now = rcgen::date_time_ymd(1970, 1, 1) + since_epoch(SystemTime::now());
        let next_update = rcgen::date_time_ymd(1970, 1, 1) + since_epoch(next_update);
        let this_update = (now - DAY).min(next_update - DAY);
        let mut revoked_certs = Vec::with_capacity(revoked.len());
        for chain in revoked {
            let leaf = X509::from_pem(chain.as_bytes())
                .map_err(|e| Error::Config(format!("pki: revoked certificate: {e}")))?;
            let serial = leaf
                .serial_number()
                .to_bn()
                .map_err(|e| Error::Config(format!("pki: serial number: {e}")))?
                .to_vec();
            revoked_certs.push(RevokedCertParams {
                serial_number: SerialNumber::from_slice(&serial),
                revocation_time: this_update,
                reason_code: Some(RevocationReason::KeyCompromise),
                invalidity_date: None,
            });
        }
        let seconds = since_epoch(SystemTime::now()).as_secs();
        let params = CertificateRevocationListParams {
            this_update,
            next_update,
            crl_number: SerialNumber::from_slice(&seconds.to_be_bytes()),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        params
            .signed_by(&self.ca()?)
            .and_then(|crl| crl.pem())
            .map_err(pki_error)
    }

    /// A server configuration with the server certificate (default settings).
    pub fn acceptor(&self) -> Result<TlsAcceptor> {
        Ok(TlsAcceptor::builder(
            self.server_chain_pem.as_bytes(),
            self.server_key_pem.as_bytes(),
        )?
        .build())
    }

    /// A client configuration that trusts only this CA.
    pub fn connector(&self) -> Result<TlsConnector> {
        Ok(TlsConnector::builder()?
            .ca_pem(self.ca_pem.as_bytes())?
            .build())
    }

    /// Writes `ca.pem ca.key server.pem server.key client.pem client.key` into `dir`
    /// (created if missing). `server.pem` and `client.pem` hold the chain (leaf, then CA).
    pub fn write_to_dir(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::Config(format!("{}: {e}", dir.display())))?;
        let files = [
            ("ca.pem", &self.ca_pem),
            ("ca.key", &self.ca_key_pem),
            ("server.pem", &self.server_chain_pem),
            ("server.key", &self.server_key_pem),
            ("client.pem", &self.client_chain_pem),
            ("client.key", &self.client_key_pem),
        ];
        for (name, contents) in files {
            let path = dir.join(name);
            std::fs::write(&path, contents)
                .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        }
        Ok(())
    }
}

/// A certificate issued by a [`Pki`]'s CA, and its key.
#[derive(Clone)]
#[non_exhaustive]
pub struct Issued {
    /// The certificate followed by the CA certificate.
    pub chain_pem: String,
    /// Its private key (PKCS#8).
    pub key_pem: String,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued").finish_non_exhaustive()
    }
}

impl Issued {
    /// Writes `{stem}.pem` (the chain) and `{stem}.key` into `dir` (created if missing).
    pub fn write_to_dir(&self, dir: impl AsRef<Path>, stem: &str) -> Result<()> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::Config(format!("{}: {e}", dir.display())))?;
        for (ext, contents) in [("pem", &self.chain_pem), ("key", &self.key_pem)] {
            let path = dir.join(format!("{stem}.{ext}"));
            std::fs::write(&path, contents)
                .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        }
        Ok(())
    }
}

/// Time since the Unix epoch (rcgen's dates are the epoch plus this).
fn since_epoch(t: SystemTime) -> Duration {
    t.duration_since(UNIX_EPOCH).unwrap_or_default()
}

fn ca_params() -> CertificateParams {
    let now = rcgen::date_time_ymd(1970, 1, 1) + since_epoch(SystemTime::now());
    let mut params = CertificateParams::default();
    params.distinguished_name = dn("biotls test CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = now - DAY;
    params.not_after = now + 3653 * DAY;
    params
}

fn server_params(server_names: &[&str]) -> Result<CertificateParams> {
    let names: Vec<String> = server_names.iter().map(|s| (*s).to_owned()).collect();
    let mut params = CertificateParams::new(names).map_err(pki_error)?;
    params.distinguished_name = dn(server_names
        .first()
        .copied()
        .unwrap_or("biotls test server"));
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    Ok(params)
}

fn client_params(common_name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(common_name);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params
}

/// Signs an end-entity certificate from `params` with a new key and a random serial.
fn issue(
    ca: &Issuer<'_, impl SigningKey>,
    ca_pem: &str,
    mut params: CertificateParams,
    validity: Validity,
) -> Result<Issued> {
    let now = rcgen::date_time_ymd(1970, 1, 1) + since_epoch(SystemTime::now());
    let (not_before, not_after) = match validity {
        Validity::TenYears => (now - DAY, now + 3653 * DAY),
        Validity::Expired => (now - 30 * DAY, now - DAY),
    };
    params.not_before = not_before;
    params.not_after = not_after;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    // 16 random bytes, the top bit clear so that the DER integer is positive: every
    // certificate has a serial of its own, which a CRL names.
    let mut serial = [0u8; 16];
    openssl::rand::rand_bytes(&mut serial)
        .map_err(|e| Error::Config(format!("pki: serial number: {e}")))?;
    serial[0] = (serial[0] & 0x7f) | 0x01;
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    let key = KeyPair::generate().map_err(pki_error)?;
    let cert = params.signed_by(&key, ca).map_err(pki_error)?;
    Ok(Issued {
        chain_pem: format!("{}{ca_pem}", cert.pem()),
        key_pem: key.serialize_pem(),
    })
}

fn dn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "biotls test PKI");
    dn
}
