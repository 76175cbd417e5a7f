//! [`PeerIdentity`]: who the peer's certificate says it is, in plain strings.

use std::net::IpAddr;

use openssl::nid::Nid;
use openssl::x509::{X509NameRef, X509Ref};

/// The names in the peer's certificate: its subject and subject alternative names, for
/// logging and for authorising a client by its certificate. The certificate itself is
/// [`Tls::peer_certificate`](super::Tls::peer_certificate).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PeerIdentity {
    /// The subject as `CN=client, O=Example` (short names, in the certificate's order).
    pub subject: String,
    /// The subject's common name, if it has one.
    pub common_name: Option<String>,
    /// DNS names among the subject alternative names.
    pub dns_names: Vec<String>,
    /// IP addresses among the subject alternative names.
    pub ip_addresses: Vec<IpAddr>,
    /// E-mail addresses among the subject alternative names.
    pub emails: Vec<String>,
}

fn name_string(name: &X509NameRef) -> String {
    let parts: Vec<String> = name
        .entries()
        .map(|e| {
            let key = e.object().nid().short_name().unwrap_or("?");
            let value = e.data().to_string().unwrap_or_else(|_| String::from("?"));
            format!("{key}={value}")
        })
        .collect();
    parts.join(", ")
}

impl PeerIdentity {
    /// Reads the names of `cert`.
    pub fn of(cert: &X509Ref) -> PeerIdentity {
        let subject = cert.subject_name();
        let common_name = subject
            .entries_by_nid(Nid::COMMONNAME)
            .next()
            .and_then(|e| e.data().to_string().ok());
        let mut id = PeerIdentity {
            subject: name_string(subject),
            common_name,
            dns_names: Vec::new(),
            ip_addresses: Vec::new(),
            emails: Vec::new(),
        };
        for name in cert.subject_alt_names().into_iter().flatten() {
            if let Some(dns) = name.dnsname() {
                id.dns_names.push(dns.to_owned());
            } else if let Some(ip) = name.ipaddress() {
                let ip = match ip.len() {
                    4 => <[u8; 4]>::try_from(ip).ok().map(IpAddr::from),
                    16 => <[u8; 16]>::try_from(ip).ok().map(IpAddr::from),
                    _ => None,
                };
                id.ip_addresses.extend(ip);
            } else if let Some(email) = name.email() {
                id.emails.push(email.to_owned());
            }
        }
        id
    }
}
