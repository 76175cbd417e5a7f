//! Certificate revocation lists: parsing them, refusing stale ones, and turning CRL
//! checking on in an OpenSSL context ([`CrlCheck`]).
//!
//! OpenSSL does the checking during certificate verification; a revoked certificate
//! fails the handshake with `X509_V_ERR_CERT_REVOKED`, which the crate reports as
//! [`Error::Verification`] of kind [`VerifyKind::Revoked`](crate::error::VerifyKind::Revoked).
//! OCSP (stapled or queried) is not checked.

use std::cmp::Ordering;

use openssl::asn1::{Asn1Time, Asn1TimeRef};
use openssl::ssl::SslContextBuilder;
use openssl::x509::X509Crl;
use openssl::x509::verify::X509VerifyFlags;

use super::ossl::{self, stack_message};
use crate::{Error, Result};

const BEGIN: &[u8] = b"-----BEGIN X509 CRL-----";
const END: &[u8] = b"-----END X509 CRL-----";

/// Which certificates of the peer's chain are checked against the configured CRLs.
///
/// Either way, every certificate checked needs a CRL from its issuer among the CRLs
/// given: without one the handshake fails with `X509_V_ERR_UNABLE_TO_GET_CRL` (fail
/// closed). A CRL whose `nextUpdate` has passed fails it with
/// `X509_V_ERR_CRL_HAS_EXPIRED`: reload a fresh CRL before then.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum CrlCheck {
    /// The peer's own certificate only (OpenSSL's `X509_V_FLAG_CRL_CHECK`): a CRL from
    /// its issuer is needed.
    Leaf,
    /// Every certificate of the peer's chain up to and including the trust anchor
    /// (`X509_V_FLAG_CRL_CHECK_ALL`): a CRL from each issuer is needed, the root's own
    /// for the root and the certificates it issued.
    Chain,
}

impl CrlCheck {
    fn flags(self) -> X509VerifyFlags {
        match self {
            CrlCheck::Leaf => X509VerifyFlags::CRL_CHECK,
            CrlCheck::Chain => X509VerifyFlags::CRL_CHECK | X509VerifyFlags::CRL_CHECK_ALL,
        }
    }
}

/// The byte ranges of the PEM CRL blocks in `pem`.
fn pem_blocks(pem: &[u8]) -> Vec<&[u8]> {
    let mut blocks = Vec::new();
    let mut rest = pem;
    while let Some(start) = find(rest, BEGIN) {
        let Some(tail) = rest.get(start..) else { break };
        let Some(end) = find(tail, END) else { break };
        let stop = end + END.len();
        if let Some(block) = tail.get(..stop) {
            blocks.push(block);
        }
        rest = tail.get(stop..).unwrap_or_default();
    }
    blocks
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn compare_now(time: &Asn1TimeRef, now: &Asn1TimeRef) -> Result<Ordering> {
    time.compare(now)
        .map_err(|e| Error::Config(format!("CRL: {}", stack_message(&e))))
}

/// Parses every CRL in `pem` (one or more `X509 CRL` blocks). Refuses an input with
/// none, and a CRL that is not valid now (its `thisUpdate` in the future or its
/// `nextUpdate` past): OpenSSL would fail every handshake it applies to.
pub(crate) fn parse_crls(pem: &[u8]) -> Result<Vec<X509Crl>> {
    let blocks = pem_blocks(pem);
    if blocks.is_empty() {
        return Err(Error::config("CRL: no X509 CRL found in PEM"));
    }
    let now = Asn1Time::days_from_now(0)
        .map_err(|e| Error::Config(format!("CRL: {}", stack_message(&e))))?;
    let mut crls = Vec::with_capacity(blocks.len());
    for block in blocks {
        let crl = X509Crl::from_pem(block)
            .map_err(|e| Error::Config(format!("CRL: {}", stack_message(&e))))?;
        let issuer = issuer_text(&crl);
        if compare_now(crl.last_update(), &now)? == Ordering::Greater {
            return Err(Error::Config(format!(
                "CRL of {issuer}: not valid before {}",
                crl.last_update()
            )));
        }
        if let Some(next) = crl.next_update()
            && compare_now(next, &now)? != Ordering::Greater
        {
            return Err(Error::Config(format!(
                "CRL of {issuer}: expired at {next} (its nextUpdate)"
            )));
        }
        crls.push(crl);
    }
    Ok(crls)
}

/// The issuer's common name (or its whole name) for messages.
fn issuer_text(crl: &X509Crl) -> String {
    let name = crl.issuer_name();
    let cn = name
        .entries_by_nid(openssl::nid::Nid::COMMONNAME)
        .next()
        .and_then(|e| e.data().to_string().ok());
    cn.unwrap_or_else(|| format!("{name:?}"))
}

/// Adds `crls` to `ctx`'s trust store and turns on checking in `check` mode.
pub(crate) fn apply(ctx: &mut SslContextBuilder, crls: &[X509Crl], check: CrlCheck) -> Result<()> {
    for crl in crls {
        ossl::store_add_crl(ctx.cert_store_mut(), crl)
            .map_err(|e| Error::Config(format!("CRL: {}", stack_message(&e))))?;
    }
    ctx.verify_param_mut()
        .set_flags(check.flags())
        .map_err(|e| Error::Config(format!("CRL checking: {}", stack_message(&e))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_blocks_finds_each_crl_and_ignores_the_rest() {
        let one = b"-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n";
        let mut two = b"junk\n".to_vec();
        two.extend_from_slice(one);
        two.extend_from_slice(b"-----BEGIN CERTIFICATE-----\nBBBB\n-----END CERTIFICATE-----\n");
        two.extend_from_slice(one);
        assert_eq!(pem_blocks(&two).len(), 2);
        assert_eq!(pem_blocks(one), vec![&one[..one.len() - 1]]);
        // A block without its end, or nothing at all.
        assert!(pem_blocks(b"-----BEGIN X509 CRL-----\nAAAA").is_empty());
        assert!(pem_blocks(b"").is_empty());
    }

    #[test]
    fn input_without_a_crl_is_refused() {
        for input in [
            &b""[..],
            b"not a crl",
            b"-----BEGIN X509 CRL-----\n!!\n-----END X509 CRL-----",
        ] {
            let Err(e) = parse_crls(input) else {
                panic!("{input:?} parsed as a CRL");
            };
            assert!(matches!(e, Error::Config(_)), "{e:?}");
            assert!(e.to_string().contains("CRL"), "{e}");
        }
    }
}
