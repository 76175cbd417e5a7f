//! Typed errors from real handshakes, driven back to back in memory: each certificate
//! failure gives its `VerifyKind`, OpenSSL's code and the depth; each refusal names the
//! alert and which side sent it. (Against other implementations: `tests/interop.rs`,
//! `tests/scanners.rs`; timeouts: `tests/tcp.rs`, `tests/tls.rs`, `tests/tls_idle.rs`.)

use biotls::error::{Alert, TlsAlert, VerifyKind};
use biotls::pki::Pki;
use biotls::tls::{ReadOutcome, TlsAcceptor, TlsConnector, TlsSession};
use biotls::{Error, Result};
use bytes::BytesMut;
use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::PKey;
use openssl::x509::extension::SubjectAlternativeName;
use openssl::x509::{X509, X509NameBuilder};

/// Rounds after which `drive` assumes a livelock.
const MAX_ROUNDS: usize = 100;

/// Moves ciphertext both ways until neither side produces any; returns each side's last
/// `handshake()` result (client, server).
fn drive(client: &mut TlsSession, server: &mut TlsSession) -> (Result<bool>, Result<bool>) {
    for _ in 0..MAX_ROUNDS {
        let c = client.handshake();
        let s = server.handshake();
        let mut moved = false;
        if let Some(b) = client.take_ciphertext() {
            server.feed_ciphertext(b);
            moved = true;
        }
        if let Some(b) = server.take_ciphertext() {
            client.feed_ciphertext(b);
            moved = true;
        }
        if !moved {
            return (c, s);
        }
    }
    panic!("drive: no quiescence after {MAX_ROUNDS} rounds (livelock)");
}

/// The client's error: from its handshake, or (TLS 1.3: the server judges the client's
/// certificate after the client finished) from its first read.
fn client_error(client: &mut TlsSession, handshake: Result<bool>) -> Error {
    match handshake {
        Err(e) => e,
        Ok(true) => match client.read(&mut BytesMut::new()) {
            Err(e) => e,
            Ok(outcome) => panic!("the client read {outcome:?} instead of an error"),
        },
        Ok(false) => panic!("the client's handshake is stuck"),
    }
}

/// A self-signed P-256 certificate for `localhost`, valid from `from` to `until` days
/// from now, and its key, in PEM.
fn self_signed(from: i64, until: u32) -> (Vec<u8>, Vec<u8>) {
    let key = PKey::from_ec_key(
        EcKey::generate(&EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap()).unwrap(),
    )
    .unwrap();
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", "localhost").unwrap();
    let name = name.build();
    let mut serial = BigNum::new().unwrap();
    serial.rand(64, MsbOption::MAYBE_ZERO, false).unwrap();
    let mut cert = X509::builder().unwrap();
    cert.set_version(2).unwrap();
    cert.set_serial_number(&serial.to_asn1_integer().unwrap())
        .unwrap();
    cert.set_subject_name(&name).unwrap();
    cert.set_issuer_name(&name).unwrap();
    cert.set_pubkey(&key).unwrap();
    let not_before = if from >= 0 {
        Asn1Time::days_from_now(u32::try_from(from).unwrap()).unwrap()
    } else {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        Asn1Time::from_unix((secs as i64) + from * 86_400).unwrap()
    };
    cert.set_not_before(&not_before).unwrap();
    cert.set_not_after(&Asn1Time::days_from_now(until).unwrap())
        .unwrap();
    let san = SubjectAlternativeName::new()
        .dns("localhost")
        .build(&cert.x509v3_context(None, None))
        .unwrap();
    cert.append_extension(san).unwrap();
    cert.sign(&key, MessageDigest::sha256()).unwrap();
    (
        cert.build().to_pem().unwrap(),
        key.private_key_to_pem_pkcs8().unwrap(),
    )
}

fn connector_trusting(ca_pem: &[u8]) -> TlsConnector {
    TlsConnector::builder()
        .unwrap()
        .ca_pem(ca_pem)
        .unwrap()
        .build()
}

/// The client's verification error against a server with `cert`/`key`.
fn client_verify_error(connector: &TlsConnector, cert: &[u8], key: &[u8]) -> Error {
    let acceptor = TlsAcceptor::builder(cert, key).unwrap().build();
    let mut c = TlsSession::client(connector, "localhost").unwrap();
    let mut s = TlsSession::server(&acceptor).unwrap();
    let (cr, _) = drive(&mut c, &mut s);
    client_error(&mut c, cr)
}

#[test]
fn an_untrusted_self_signed_server_certificate_is_self_signed_at_depth_zero() {
    let (cert, key) = self_signed(-1, 30);
    let other = Pki::generate(&["localhost"]).unwrap();
    let e = client_verify_error(&connector_trusting(other.ca_pem.as_bytes()), &cert, &key);
    match &e {
        Error::Verification(v) => {
            assert_eq!(v.kind(), VerifyKind::SelfSigned);
            assert_eq!(
                v.code(),
                openssl_sys::X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT
            );
            assert_eq!(
                v.code_name(),
                Some("X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT")
            );
            assert_eq!(v.depth(), Some(0));
            assert_eq!(v.reason(), "self-signed certificate");
        }
        other => panic!("expected a verification error, got {other:?}"),
    }
    assert_eq!(
        e.to_string(),
        "certificate verify failed: self-signed certificate \
         (X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT, code 18)"
    );
}

#[test]
fn a_certificate_valid_from_tomorrow_is_not_yet_valid() {
    let (cert, key) = self_signed(1, 30);
    // Trusted as its own anchor: only its validity period is wrong.
    let e = client_verify_error(&connector_trusting(&cert), &cert, &key);
    assert_eq!(e.verify_kind(), Some(VerifyKind::NotYetValid), "{e:?}");
    match &e {
        Error::Verification(v) => {
            assert_eq!(v.code(), openssl_sys::X509_V_ERR_CERT_NOT_YET_VALID);
            assert_eq!(v.depth(), Some(0));
        }
        other => panic!("expected a verification error, got {other:?}"),
    }
}

#[test]
fn a_trusted_self_signed_certificate_within_its_validity_is_accepted() {
    // The control for the two tests above: the same kind of certificate, trusted and
    // valid, passes; so what they pin is the validity and the trust, nothing else.
    let (cert, key) = self_signed(-1, 30);
    let acceptor = TlsAcceptor::builder(&cert, &key).unwrap().build();
    let mut c = TlsSession::client(&connector_trusting(&cert), "localhost").unwrap();
    let mut s = TlsSession::server(&acceptor).unwrap();
    let (cr, sr) = drive(&mut c, &mut s);
    assert!(cr.unwrap() && sr.unwrap());
}

#[test]
fn a_server_refusing_a_client_certificate_names_it_and_the_client_receives_unknown_ca() {
    let pki = Pki::generate(&["localhost"]).unwrap();
    let stranger = Pki::generate(&["localhost"]).unwrap();
    let acceptor = TlsAcceptor::builder(
        pki.server_chain_pem.as_bytes(),
        pki.server_key_pem.as_bytes(),
    )
    .unwrap()
    .require_client_cert(pki.ca_pem.as_bytes())
    .unwrap()
    .build();
    let connector = TlsConnector::builder()
        .unwrap()
        .ca_pem(pki.ca_pem.as_bytes())
        .unwrap()
        .client_cert_pem(
            stranger.client_chain_pem.as_bytes(),
            stranger.client_key_pem.as_bytes(),
        )
        .unwrap()
        .build();
    let mut c = TlsSession::client(&connector, "localhost").unwrap();
    let mut s = TlsSession::server(&acceptor).unwrap();
    let (cr, sr) = drive(&mut c, &mut s);
    // The client sends its leaf and its CA: a self-signed root the server does not trust.
    match sr {
        Err(Error::Verification(v)) => {
            assert_eq!(v.kind(), VerifyKind::SelfSigned, "{v:?}");
            assert_eq!(v.code(), openssl_sys::X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN);
            assert_eq!(v.depth(), Some(1));
            assert_eq!(v.alert(), Some(TlsAlert::Sent(Alert::UNKNOWN_CA)));
        }
        other => panic!("expected the server to refuse the certificate, got {other:?}"),
    }
    let e = client_error(&mut c, cr);
    assert!(
        matches!(e, Error::Tls(_)),
        "TLS 1.3: after the handshake: {e:?}"
    );
    assert_eq!(e.alert(), Some(TlsAlert::Received(Alert::UNKNOWN_CA)));
    assert_eq!(e.verify_kind(), None, "the client verified nothing wrong");
}

#[test]
fn a_verify_callback_refusing_a_chain_is_other_without_a_depth() {
    let pki = Pki::generate(&["localhost"]).unwrap();
    let mut builder = TlsConnector::builder()
        .unwrap()
        .ca_pem(pki.ca_pem.as_bytes())
        .unwrap();
    // A user's own callback (pinning, say) replaces the crate's, which records depths.
    builder
        .context_builder_mut()
        .set_verify_callback(openssl::ssl::SslVerifyMode::PEER, |_, _| false);
    let e = client_verify_error(
        &builder.build(),
        pki.server_chain_pem.as_bytes(),
        pki.server_key_pem.as_bytes(),
    );
    match &e {
        Error::Verification(v) => {
            assert_eq!(v.kind(), VerifyKind::Other, "{v:?}");
            assert_eq!(v.depth(), None, "{v:?}");
        }
        other => panic!("expected a verification error, got {other:?}"),
    }
}

#[test]
fn a_server_without_a_protocol_version_in_common_sends_protocol_version() {
    let pki = Pki::generate(&["localhost"]).unwrap();
    let mut acceptor = TlsAcceptor::builder(
        pki.server_chain_pem.as_bytes(),
        pki.server_key_pem.as_bytes(),
    )
    .unwrap();
    acceptor
        .context_builder_mut()
        .set_min_proto_version(Some(openssl::ssl::SslVersion::TLS1_3))
        .unwrap();
    let mut connector = TlsConnector::builder()
        .unwrap()
        .ca_pem(pki.ca_pem.as_bytes())
        .unwrap();
    connector
        .context_builder_mut()
        .set_max_proto_version(Some(openssl::ssl::SslVersion::TLS1_2))
        .unwrap();
    let mut c = TlsSession::client(&connector.build(), "localhost").unwrap();
    let mut s = TlsSession::server(&acceptor.build()).unwrap();
    let (cr, sr) = drive(&mut c, &mut s);
    let server = sr.expect_err("server refuses");
    assert_eq!(
        server.alert(),
        Some(TlsAlert::Sent(Alert::PROTOCOL_VERSION)),
        "{server:?}"
    );
    let client = client_error(&mut c, cr);
    assert!(matches!(client, Error::Handshake(_)), "{client:?}");
    assert_eq!(
        client.alert(),
        Some(TlsAlert::Received(Alert::PROTOCOL_VERSION))
    );
    // Each side's text says which way the alert went.
    assert!(
        server
            .to_string()
            .ends_with("(sent alert protocol_version)"),
        "{server}"
    );
    assert!(
        client
            .to_string()
            .ends_with("(received alert protocol_version)"),
        "{client}"
    );
}

#[test]
fn a_close_notify_sent_earlier_is_not_the_alert_of_a_later_failure() {
    // close_notify is an alert on the wire (a warning) but not a failure: it is never
    // the alert of an error that follows it.
    let pki = Pki::generate(&["localhost"]).unwrap();
    let mut c = TlsSession::client(&pki.connector().unwrap(), "localhost").unwrap();
    let mut s = TlsSession::server(&pki.acceptor().unwrap()).unwrap();
    let (cr, sr) = drive(&mut c, &mut s);
    assert!(cr.unwrap() && sr.unwrap());
    c.shutdown().unwrap();
    let _ = c.take_ciphertext();
    // The server still writes; the record is corrupted on the way.
    assert_eq!(s.write(b"after your close_notify").unwrap(), 23);
    let mut record = s.take_ciphertext().unwrap().to_vec();
    let last = record.len() - 1;
    record[last] ^= 1;
    c.feed_ciphertext(record.into());
    let mut buf = BytesMut::new();
    let e = loop {
        match c.read(&mut buf) {
            Ok(ReadOutcome::Data(_)) => {}
            Ok(other) => panic!("read {other:?} from a corrupted record"),
            Err(e) => break e,
        }
    };
    assert!(matches!(e, Error::Tls(_)), "{e:?}");
    // After our close_notify OpenSSL sends nothing more, not even bad_record_mac: the
    // failure has no alert, and certainly not the close_notify.
    assert_eq!(e.alert(), None, "{e:?}");
}
