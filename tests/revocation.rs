//! Certificate revocation lists: a server refusing revoked client certificates, our
//! client refusing a revoked server certificate (ours in memory, `openssl s_server`, and
//! the `tls_echo_client` example with `--crl`), leaf-only and whole-chain checking, and
//! the refusals' typed errors. The server side against `openssl s_client` is in
//! `tests/sighup.rs` (with a CRL reloaded on SIGHUP).

mod util;

use std::cell::RefCell;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::rc::Rc;
use std::time::{Duration, SystemTime};

use biotls::error::{Alert, TlsAlert, VerifyKind};
use biotls::pki::{Issued, Pki};
use biotls::tls::{
    CrlCheck, Tls, TlsAcceptor, TlsAcceptorBuilder, TlsConnector, TlsConnectorBuilder,
};
use biotls::{Error, Loop, Stream, Tcp};
use openssl::ssl::SslVersion;
use util::echo_server::EchoServer;
use util::example::example_path;
use util::peer::{TempDir, run_peer, s_server};
use util::sessions::{Ended, connect};
use util::{have, run_to_end, run_until};

const LIMIT: Duration = Duration::from_secs(20);

const VERSIONS: [SslVersion; 2] = [SslVersion::TLS1_3, SslVersion::TLS1_2];
/// `X509_V_ERR_CERT_REVOKED`, `X509_V_ERR_UNABLE_TO_GET_CRL`.
const CERT_REVOKED: i32 = 23;
const UNABLE_TO_GET_CRL: i32 = 3;

fn acceptor_builder(server: &Issued) -> TlsAcceptorBuilder {
    TlsAcceptor::builder(server.chain_pem.as_bytes(), server.key_pem.as_bytes()).unwrap()
}

fn mutual(pki: &Pki, crl: &str, check: CrlCheck) -> TlsAcceptor {
    let server = pki.issue_server(&["localhost"]).unwrap();
    acceptor_builder(&server)
        .require_client_cert(pki.ca_pem.as_bytes())
        .unwrap()
        .crl_pem(crl.as_bytes(), check)
        .unwrap()
        .build()
}

fn client_builder(pki: &Pki, version: SslVersion) -> TlsConnectorBuilder {
    let mut b = TlsConnector::builder()
        .unwrap()
        .ca_pem(pki.ca_pem.as_bytes())
        .unwrap()
        .session_resumption(false);
    b.context_builder_mut()
        .set_max_proto_version(Some(version))
        .unwrap();
    b
}

fn client_with(pki: &Pki, version: SslVersion, identity: &Issued) -> TlsConnector {
    client_builder(pki, version)
        .client_cert_pem(identity.chain_pem.as_bytes(), identity.key_pem.as_bytes())
        .unwrap()
        .build()
}

/// The server refused the client's certificate as revoked, and the client heard a
/// `certificate_revoked` alert.
fn assert_client_refused_as_revoked(ended: &Ended, version: SslVersion) {
    let server = ended
        .server_error
        .as_ref()
        .unwrap_or_else(|| panic!("{version:?}: served: {ended:#?}"));
    assert_eq!(
        server.verify_kind(),
        Some(VerifyKind::Revoked),
        "{version:?}: {server:?}"
    );
    let Error::Verification(v) = server else {
        unreachable!()
    };
    assert_eq!((v.code(), v.depth()), (CERT_REVOKED, Some(0)), "{v:?}");
    assert_eq!(
        server.alert(),
        Some(TlsAlert::Sent(Alert::CERTIFICATE_REVOKED)),
        "{server:?}"
    );
    assert!(
        server.to_string().contains("X509_V_ERR_CERT_REVOKED"),
        "{server}"
    );
    let client = ended
        .client_error
        .as_ref()
        .expect("the client hears the refusal");
    assert_eq!(
        client.alert(),
        Some(TlsAlert::Received(Alert::CERTIFICATE_REVOKED)),
        "{client:?}"
    );
}

#[test]
fn a_revoked_client_certificate_is_refused_with_the_revoked_kind() {
    let pki = Pki::generate(&["localhost"]).unwrap();
    let good = pki.issue_client("good client").unwrap();
    let revoked = pki.issue_client("revoked client").unwrap();
    let crl = pki.crl(&[&revoked.chain_pem]).unwrap();
    for check in [CrlCheck::Leaf, CrlCheck::Chain] {
        let acceptor = mutual(&pki, &crl, check);
        for version in VERSIONS {
            let ended = connect(
                &client_with(&pki, version, &revoked),
                &acceptor,
                "localhost",
            );
            assert_client_refused_as_revoked(&ended, version);
            connect(&client_with(&pki, version, &good), &acceptor, "localhost").assert_ok();
        }
    }
}

#[test]
fn without_a_crl_from_the_issuer_the_check_fails_closed() {
    let pki = Pki::generate(&["localhost"]).unwrap();
    let other = Pki::generate(&["localhost"]).unwrap();
    let good = pki.issue_client("good client").unwrap();
    // A CRL, but another CA's: nothing says whether our client is revoked.
    let acceptor = mutual(&pki, &other.crl(&[]).unwrap(), CrlCheck::Leaf);
    let ended = connect(
        &client_with(&pki, SslVersion::TLS1_3, &good),
        &acceptor,
        "localhost",
    );
    let e = ended.server_error.expect("refused");
    let Error::Verification(v) = &e else {
        panic!("{e:?}")
    };
    assert_eq!(v.code(), UNABLE_TO_GET_CRL, "{v:?}");
    assert_eq!(e.verify_kind(), Some(VerifyKind::Other));
}

#[test]
fn a_revoked_server_certificate_is_refused_by_our_client() {
    let pki = Pki::generate(&["localhost"]).unwrap();
    let good = pki.issue_server(&["localhost"]).unwrap();
    let revoked = pki.issue_server(&["localhost"]).unwrap();
    let crl = pki.crl(&[&revoked.chain_pem]).unwrap();
    for check in [CrlCheck::Leaf, CrlCheck::Chain] {
        for version in VERSIONS {
            let connector = client_builder(&pki, version)
                .crl_pem(crl.as_bytes(), check)
                .unwrap()
                .build();
            let ended = connect(&connector, &acceptor_builder(&revoked).build(), "localhost");
            let e = ended
                .client_error
                .as_ref()
                .unwrap_or_else(|| panic!("{version:?}: trusted: {ended:#?}"));
            assert_eq!(
                e.verify_kind(),
                Some(VerifyKind::Revoked),
                "{version:?} {check:?}: {e:?}"
            );
            let Error::Verification(v) = e else {
                unreachable!()
            };
            assert_eq!((v.code(), v.depth()), (CERT_REVOKED, Some(0)), "{v:?}");
            // The same client trusts the server whose certificate is not revoked.
            connect(&connector, &acceptor_builder(&good).build(), "localhost").assert_ok();
        }
    }
}

#[test]
fn client_verification_and_crls_apply_to_sni_certificates_added_after_them() {
    let pki = Pki::generate(&["localhost", "alpha.test"]).unwrap();
    let default = pki.issue_server(&["localhost"]).unwrap();
    let alpha = pki.issue_server(&["alpha.test"]).unwrap();
    let good = pki.issue_client("good client").unwrap();
    let revoked = pki.issue_client("revoked client").unwrap();
    let crl = pki.crl(&[&revoked.chain_pem]).unwrap();
    let acceptor = acceptor_builder(&default)
        .require_client_cert(pki.ca_pem.as_bytes())
        .unwrap()
        .crl_pem(crl.as_bytes(), CrlCheck::Leaf)
        .unwrap()
        .sni_certificate(
            "alpha.test",
            alpha.chain_pem.as_bytes(),
            alpha.key_pem.as_bytes(),
        )
        .unwrap()
        .build();
    let ended = connect(
        &client_with(&pki, SslVersion::TLS1_3, &good),
        &acceptor,
        "alpha.test",
    );
    ended.assert_ok();
    let names = ended.server_cert.unwrap().subject_alt_names().unwrap();
    assert_eq!(
        names.iter().next().and_then(|n| n.dnsname()),
        Some("alpha.test")
    );
    let ended = connect(
        &client_with(&pki, SslVersion::TLS1_3, &revoked),
        &acceptor,
        "alpha.test",
    );
    assert_client_refused_as_revoked(&ended, SslVersion::TLS1_3);
    let ended = connect(
        &client_builder(&pki, SslVersion::TLS1_3).build(),
        &acceptor,
        "alpha.test",
    );
    assert_eq!(
        ended.client_error.and_then(|e| e.alert()),
        Some(TlsAlert::Received(Alert::CERTIFICATE_REQUIRED))
    );
}

#[test]
fn a_crl_that_is_not_valid_now_is_refused_by_the_builders() {
    let pki = Pki::generate(&["localhost"]).unwrap();
    let server = pki.issue_server(&["localhost"]).unwrap();
    let expired = pki
        .crl_until(&[], SystemTime::now() - Duration::from_secs(3600))
        .unwrap();
    let e = acceptor_builder(&server)
        .crl_pem(expired.as_bytes(), CrlCheck::Leaf)
        .unwrap_err();
    assert!(
        matches!(&e, Error::Config(m) if m.contains("expired")),
        "{e:?}"
    );
    let e = client_builder(&pki, SslVersion::TLS1_3)
        .crl_pem(expired.as_bytes(), CrlCheck::Chain)
        .unwrap_err();
    assert!(
        matches!(&e, Error::Config(m) if m.contains("expired")),
        "{e:?}"
    );
    let e = client_builder(&pki, SslVersion::TLS1_3)
        .crl_pem(pki.ca_pem.as_bytes(), CrlCheck::Leaf)
        .unwrap_err();
    assert!(
        matches!(&e, Error::Config(m) if m.contains("no X509 CRL")),
        "{e:?}"
    );
}

#[test]
fn a_crl_file_that_cannot_be_read_names_its_path() {
    let e = TlsConnector::builder()
        .unwrap()
        .crl_file("/nonexistent/crl.pem", CrlCheck::Leaf)
        .unwrap_err();
    assert!(
        matches!(&e, Error::Config(m) if m.contains("/nonexistent/crl.pem")),
        "{e:?}"
    );
}

/// Our `Tls` client's handshake with the server on `port`.
fn our_handshake(connector: &TlsConnector, port: u16) -> Result<(), Error> {
    let mut lp = Loop::new().unwrap();
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let tcp = Tcp::connect(&mut lp, addr, |_, _, _| {}).unwrap();
    let tls = Tls::client(&mut lp, tcp, connector, "localhost").unwrap();
    let result: Rc<RefCell<Option<Result<(), Error>>>> = Rc::default();
    let r = Rc::clone(&result);
    tls.on_handshake(&mut lp, move |lp, tls, outcome| {
        *r.borrow_mut() = Some(outcome);
        tls.close(lp, |_, _| {});
    })
    .unwrap();
    run_until(&mut lp, LIMIT, || result.borrow().is_some());
    run_to_end(&mut lp, LIMIT);
    result.take().expect("a handshake outcome")
}

#[test]
fn our_client_refuses_openssl_s_server_with_a_revoked_certificate() {
    if !have("openssl", "version") {
        return;
    }
    let pki = Pki::generate(&["localhost"]).unwrap();
    let good = pki.issue_server(&["localhost"]).unwrap();
    let revoked = pki.issue_server(&["localhost"]).unwrap();
    let dir = TempDir::new();
    good.write_to_dir(&dir.0, "good").unwrap();
    revoked.write_to_dir(&dir.0, "revoked").unwrap();
    let crl = pki.crl(&[&revoked.chain_pem]).unwrap();
    for check in [CrlCheck::Leaf, CrlCheck::Chain] {
        let connector = client_builder(&pki, SslVersion::TLS1_3)
            .crl_pem(crl.as_bytes(), check)
            .unwrap()
            .build();
        let (_server, port) = s_server(&dir.file("revoked.pem"), &dir.file("revoked.key"), &[]);
        let e = our_handshake(&connector, port).expect_err("a revoked server was trusted");
        assert_eq!(
            e.verify_kind(),
            Some(VerifyKind::Revoked),
            "{check:?}: {e:?}"
        );
        assert!(e.to_string().contains("X509_V_ERR_CERT_REVOKED"), "{e}");
        let (_server, port) = s_server(&dir.file("good.pem"), &dir.file("good.key"), &[]);
        our_handshake(&connector, port).expect("the good server");
    }
}

#[test]
fn tls_echo_client_with_a_crl_refuses_a_revoked_server_and_says_why() {
    let pki = Pki::generate(&["localhost"]).unwrap();
    let good = pki.issue_server(&["localhost"]).unwrap();
    let revoked = pki.issue_server(&["localhost"]).unwrap();
    let dir = TempDir::new();
    std::fs::write(dir.0.join("ca.pem"), &pki.ca_pem).unwrap();
    std::fs::write(
        dir.0.join("crl.pem"),
        pki.crl(&[&revoked.chain_pem]).unwrap(),
    )
    .unwrap();
    let client = |port: u16| {
        run_peer(
            Command::new(example_path("tls_echo_client"))
                .args([
                    "--connect",
                    &format!("127.0.0.1:{port}"),
                    "--bytes",
                    "65536",
                ])
                .args(["--ca", &dir.file("ca.pem"), "--crl", &dir.file("crl.pem")]),
            b"",
            None,
            LIMIT,
        )
    };

    let server = EchoServer::start(acceptor_builder(&revoked).build());
    let ran = client(server.port);
    assert!(ran.status.is_some_and(|s| s.code() == Some(1)), "{ran:#?}");
    assert!(ran.stderr.contains("X509_V_ERR_CERT_REVOKED"), "{ran:#?}");
    assert!(ran.stderr.contains("on the CRL"), "no hint: {ran:#?}");

    let server = EchoServer::start(acceptor_builder(&good).build());
    let ran = client(server.port);
    assert!(ran.status.is_some_and(|s| s.success()), "{ran:#?}");
    assert!(ran.stdout.contains("verified 65536 bytes"), "{ran:#?}");
}
