//! Throw-away PKI for tests and examples (feature `pki`).
//!
//! [`Pki::generate`] makes an ECDSA P-256 CA, a server certificate and a client
//! certificate signed by it, all in PEM. **The keys are generated in memory and meant for
//! tests; anything written with [`Pki::write_to_dir`] is not a production secret.**
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

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
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
        let now = rcgen::date_time_ymd(1970, 1, 1)
            + SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
        let (not_before, not_after) = match validity {
            Validity::TenYears => (now - DAY, now + 3653 * DAY),
            Validity::Expired => (now - 30 * DAY, now - DAY),
        };

        let ca_key = KeyPair::generate().map_err(pki_error)?;
        let mut ca_params = CertificateParams::default();
        ca_params.distinguished_name = dn("biotls test CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        ca_params.not_before = now - DAY;
        ca_params.not_after = now + 3653 * DAY;
        let ca = CertifiedIssuer::self_signed(ca_params, &ca_key).map_err(pki_error)?;
        let ca_pem = ca.pem();

        let names: Vec<String> = server_names.iter().map(|s| (*s).to_owned()).collect();
        let mut server_params = CertificateParams::new(names).map_err(pki_error)?;
        server_params.distinguished_name = dn(server_names
            .first()
            .copied()
            .unwrap_or("biotls test server"));
        server_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        server_params.use_authority_key_identifier_extension = true;
        server_params.not_before = not_before;
        server_params.not_after = not_after;
        let server_key = KeyPair::generate().map_err(pki_error)?;
        let server = server_params
            .signed_by(&server_key, &ca)
            .map_err(pki_error)?;

        let mut client_params = CertificateParams::default();
        client_params.distinguished_name = dn("biotls test client");
        client_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        client_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        client_params.use_authority_key_identifier_extension = true;
        client_params.not_before = not_before;
        client_params.not_after = not_after;
        let client_key = KeyPair::generate().map_err(pki_error)?;
        let client = client_params
            .signed_by(&client_key, &ca)
            .map_err(pki_error)?;

        Ok(Pki {
            server_chain_pem: format!("{}{}", server.pem(), ca_pem),
            server_key_pem: server_key.serialize_pem(),
            client_chain_pem: format!("{}{}", client.pem(), ca_pem),
            client_key_pem: client_key.serialize_pem(),
            ca_key_pem: ca_key.serialize_pem(),
            ca_pem,
        })
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

fn dn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "biotls test PKI");
    dn
}
