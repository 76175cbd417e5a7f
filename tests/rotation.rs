//! Certificate rotation without a restart: `TlsAcceptor::replace` while serving, on
//! several loops and threads; session tickets across replacements; ticket key rotation.

mod util;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use biotls::Error;
use biotls::error::{Alert, TlsAlert, VerifyKind};
use biotls::pki::{Issued, Pki};
use biotls::tls::{
    CrlCheck, DEFAULT_TICKET_KEY_ROTATION, TlsAcceptor, TlsAcceptorBuilder, TlsConnector,
    TlsConnectorBuilder, TlsSession,
};
use openssl::ssl::{SslConnector, SslMethod, SslStream, SslVersion};
use openssl::x509::{X509, X509Ref};
use util::echo_server::EchoServer;
use util::sessions::{self, Ended, connect};

const IO_LIMIT: Duration = Duration::from_secs(10);

fn pki() -> Pki {
    Pki::generate(&["localhost"]).expect("pki")
}

fn serial(cert: &X509Ref) -> Vec<u8> {
    cert.serial_number().to_bn().expect("serial").to_vec()
}

fn leaf_serial(chain_pem: &str) -> Vec<u8> {
    serial(&X509::from_pem(chain_pem.as_bytes()).expect("leaf"))
}

fn served_serial(ended: &Ended) -> Vec<u8> {
    serial(ended.server_cert.as_ref().expect("a server certificate"))
}

fn builder(identity: &Issued) -> TlsAcceptorBuilder {
    TlsAcceptor::builder(identity.chain_pem.as_bytes(), identity.key_pem.as_bytes())
        .expect("acceptor builder")
}

fn connector_builder(pki: &Pki, max: SslVersion) -> TlsConnectorBuilder {
    let mut builder = TlsConnector::builder()
        .unwrap()
        .ca_pem(pki.ca_pem.as_bytes())
        .unwrap();
    builder
        .context_builder_mut()
        .set_max_proto_version(Some(max))
        .unwrap();
    builder
}

fn new_connector(pki: &Pki, max: SslVersion) -> TlsConnector {
    connector_builder(pki, max).build()
}

const VERSIONS: [SslVersion; 2] = [SslVersion::TLS1_3, SslVersion::TLS1_2];

#[test]
fn new_sessions_get_the_replacement_and_a_session_in_progress_keeps_its_certificate() {
    let pki = pki();
    let (a, b) = (
        pki.issue_server(&["localhost"]).unwrap(),
        pki.issue_server(&["localhost"]).unwrap(),
    );
    let acceptor = builder(&a).build();
    let connector = new_connector(&pki, SslVersion::TLS1_3);

    // A session made before the replacement, handshake done, still open.
    let mut old_client = TlsSession::client(&connector, "localhost").unwrap();
    let mut old_server = TlsSession::server(&acceptor).unwrap();
    let (mut ce, mut se) = (None, None);
    sessions::handshake(&mut old_client, &mut old_server, &mut ce, &mut se);
    assert!(ce.is_none() && se.is_none(), "{ce:?} {se:?}");

    let clone = acceptor.clone();
    clone.replace(builder(&b)).expect("replace");
    assert_eq!(
        serial(&acceptor.certificate().unwrap()),
        leaf_serial(&b.chain_pem)
    );

    let fresh = connect(
        &connector_builder(&pki, SslVersion::TLS1_3)
            .session_resumption(false)
            .build(),
        &acceptor,
        "localhost",
    );
    fresh.assert_ok();
    assert_eq!(served_serial(&fresh), leaf_serial(&b.chain_pem));

    // The old session keeps working, on the certificate it started with.
    assert!(
        sessions::echo_line(&mut old_client, &mut old_server, &mut ce, &mut se),
        "{ce:?} {se:?}"
    );
    assert_eq!(
        serial(&old_client.peer_certificate().unwrap()),
        leaf_serial(&a.chain_pem)
    );
}

/// A blocking OpenSSL client on a real socket: the certificate served, and an echo.
fn blocking_client(pki: &Pki, port: u16) -> SslStream<TcpStream> {
    let mut builder = SslConnector::builder(SslMethod::tls_client()).unwrap();
    builder
        .cert_store_mut()
        .add_cert(X509::from_pem(pki.ca_pem.as_bytes()).unwrap())
        .unwrap();
    let tcp = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
    tcp.set_read_timeout(Some(IO_LIMIT)).unwrap();
    tcp.set_write_timeout(Some(IO_LIMIT)).unwrap();
    builder
        .build()
        .connect("localhost", tcp)
        .expect("handshake")
}

fn echo_once(stream: &mut SslStream<TcpStream>, line: &[u8]) {
    stream.write_all(line).unwrap();
    let mut got = vec![0; line.len()];
    stream.read_exact(&mut got).unwrap();
    assert_eq!(got, line);
}

/// close_notify both ways: ours, then the server's (its echo answers ours), so that the
/// server's connection ends cleanly rather than on a closed socket.
fn close(mut stream: SslStream<TcpStream>) {
    stream.shutdown().unwrap();
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
    assert!(rest.is_empty(), "unexpected data: {rest:?}");
    assert!(
        stream
            .get_shutdown()
            .contains(openssl::ssl::ShutdownState::RECEIVED)
    );
}

fn peer_serial(stream: &SslStream<TcpStream>) -> Vec<u8> {
    serial(&stream.ssl().peer_certificate().expect("peer certificate"))
}

#[test]
fn replace_reaches_every_loop_while_established_connections_keep_echoing() {
    let pki = pki();
    let (a, b) = (
        pki.issue_server(&["localhost"]).unwrap(),
        pki.issue_server(&["localhost"]).unwrap(),
    );
    let acceptor = builder(&a).build();
    // Two loops on two threads, each with a clone.
    let servers = [
        EchoServer::start(acceptor.clone()),
        EchoServer::start(acceptor.clone()),
    ];
    let mut old: Vec<_> = servers
        .iter()
        .map(|s| blocking_client(&pki, s.port))
        .collect();
    for stream in &mut old {
        echo_once(stream, b"before\n");
        assert_eq!(peer_serial(stream), leaf_serial(&a.chain_pem));
    }

    // Replaced from a third thread (this one).
    acceptor.replace(builder(&b)).expect("replace");

    for server in &servers {
        let mut new = blocking_client(&pki, server.port);
        echo_once(&mut new, b"after\n");
        assert_eq!(peer_serial(&new), leaf_serial(&b.chain_pem));
        close(new);
    }
    for mut stream in old {
        echo_once(&mut stream, b"still here\n");
        assert_eq!(peer_serial(&stream), leaf_serial(&a.chain_pem));
        close(stream);
    }
    for server in &servers {
        let ends = server.ends(2);
        assert!(ends.iter().all(Result::is_ok), "{ends:?}");
    }
}

#[test]
fn connections_during_repeated_replacements_get_one_whole_configuration_or_the_other() {
    let pki = pki();
    let (a, b) = (
        pki.issue_server(&["localhost"]).unwrap(),
        pki.issue_server(&["localhost"]).unwrap(),
    );
    let acceptor = builder(&a).build();
    let server = EchoServer::start(acceptor.clone());
    let done = Arc::new(AtomicBool::new(false));
    let replacer = {
        let (acceptor, done, a, b) = (acceptor.clone(), Arc::clone(&done), a.clone(), b.clone());
        std::thread::spawn(move || {
            let mut replaced = 0;
            let deadline = Instant::now() + Duration::from_secs(30);
            while !done.load(Ordering::Relaxed) && Instant::now() < deadline && replaced < 2_000 {
                let next = if replaced % 2 == 0 { &b } else { &a };
                acceptor.replace(builder(next)).expect("replace");
                replaced += 1;
            }
            replaced
        })
    };
    let wanted = [leaf_serial(&a.chain_pem), leaf_serial(&b.chain_pem)];
    for i in 0..20 {
        let mut stream = blocking_client(&pki, server.port);
        echo_once(&mut stream, format!("line {i}\n").as_bytes());
        assert!(wanted.contains(&peer_serial(&stream)));
        close(stream);
    }
    done.store(true, Ordering::Relaxed);
    let replaced = replacer.join().expect("replacer thread");
    assert!(replaced > 0);
    let ends = server.ends(20);
    assert!(ends.iter().all(Result::is_ok), "{ends:?}");
}

#[test]
fn sessions_from_before_a_replacement_resume_after_it() {
    let pki = pki();
    let (a, b) = (
        pki.issue_server(&["localhost"]).unwrap(),
        pki.issue_server(&["localhost"]).unwrap(),
    );
    for version in VERSIONS {
        let acceptor = builder(&a).build();
        let connector = new_connector(&pki, version);
        let first = connect(&connector, &acceptor, "localhost");
        first.assert_ok();
        assert!(!first.resumed());
        acceptor.replace(builder(&b)).expect("replace");
        let second = connect(&connector, &acceptor, "localhost");
        second.assert_ok();
        assert!(
            second.resumed(),
            "{version:?}: not resumed after a replacement"
        );
        // Not resumed: the control. A replacement by a fresh acceptor's keys would not.
        let other = builder(&b).build();
        let third = connect(&connector, &other, "localhost");
        third.assert_ok();
        assert!(
            !third.resumed(),
            "{version:?}: another acceptor's keys opened the ticket"
        );
    }
}

#[test]
fn every_resumption_brings_a_fresh_ticket_so_a_client_keeps_resuming() {
    // TLS 1.3 tickets are used once: a resumed handshake must leave the client another.
    let pki = pki();
    let identity = pki.issue_server(&["localhost"]).unwrap();
    for version in VERSIONS {
        let acceptor = builder(&identity).build();
        let connector = new_connector(&pki, version);
        connect(&connector, &acceptor, "localhost").assert_ok();
        for i in 0..10 {
            let next = connect(&connector, &acceptor, "localhost");
            next.assert_ok();
            assert!(
                next.resumed(),
                "{version:?}: connection {i} was not resumed"
            );
        }
    }
}

#[test]
fn with_client_certificates_sessions_resume_only_under_the_same_verification_policy() {
    let pki = pki();
    let server = pki.issue_server(&["localhost"]).unwrap();
    let client = pki.issue_client("rotating client").unwrap();
    let policy = |crl: Option<&str>| {
        let b = builder(&server)
            .require_client_cert(pki.ca_pem.as_bytes())
            .unwrap();
        match crl {
            Some(crl) => b.crl_pem(crl.as_bytes(), CrlCheck::Leaf).unwrap(),
            None => b,
        }
    };
    for version in VERSIONS {
        let acceptor = policy(None).build();
        let connector = connector_builder(&pki, version)
            .client_cert_pem(client.chain_pem.as_bytes(), client.key_pem.as_bytes())
            .unwrap()
            .build();
        connect(&connector, &acceptor, "localhost").assert_ok();
        // Same policy, new server certificate: resumes.
        acceptor.replace(policy(None)).unwrap();
        let same = connect(&connector, &acceptor, "localhost");
        same.assert_ok();
        assert!(same.resumed(), "{version:?}");
        // The client's certificate is revoked now: no resumption around the new CRL.
        let crl = pki.crl(&[&client.chain_pem]).unwrap();
        acceptor.replace(policy(Some(&crl))).unwrap();
        let revoked = connect(&connector, &acceptor, "localhost");
        assert!(!revoked.server_info.resumed, "{version:?}: {revoked:#?}");
        let e = revoked.server_error.expect("the server refuses");
        assert_eq!(
            e.verify_kind(),
            Some(VerifyKind::Revoked),
            "{version:?}: {e:?}"
        );
    }
}

#[test]
fn a_replacement_with_an_expired_certificate_is_refused_and_the_old_one_serves() {
    let pki = pki();
    let a = pki.issue_server(&["localhost"]).unwrap();
    let acceptor = builder(&a).build();
    let expired = Pki::generate_expired_server(&["localhost"]).unwrap();
    let refused = acceptor.replace(
        TlsAcceptor::builder(
            expired.server_chain_pem.as_bytes(),
            expired.server_key_pem.as_bytes(),
        )
        .unwrap(),
    );
    match refused {
        Err(Error::Config(msg)) => assert!(msg.contains("expired"), "{msg}"),
        other => panic!("expected a configuration error, got {other:?}"),
    }
    // An expired SNI certificate is refused the same way.
    let refused = acceptor.replace(
        builder(&a)
            .sni_certificate(
                "old.test",
                expired.server_chain_pem.as_bytes(),
                expired.server_key_pem.as_bytes(),
            )
            .unwrap(),
    );
    assert!(
        matches!(&refused, Err(Error::Config(m)) if m.contains("old.test")),
        "{refused:?}"
    );
    let ended = connect(
        &new_connector(&pki, SslVersion::TLS1_3),
        &acceptor,
        "localhost",
    );
    ended.assert_ok();
    assert_eq!(served_serial(&ended), leaf_serial(&a.chain_pem));
}

#[test]
fn a_ticket_under_the_previous_key_resumes_and_one_two_rotations_old_does_not() {
    let pki = pki();
    let a = pki.issue_server(&["localhost"]).unwrap();
    for version in VERSIONS {
        let acceptor = builder(&a).build();
        assert_eq!(acceptor.ticket_key_rotation(), DEFAULT_TICKET_KEY_ROTATION);

        let connector = new_connector(&pki, version);
        connect(&connector, &acceptor, "localhost").assert_ok();
        acceptor.rotate_ticket_keys().unwrap();
        let once = connect(&connector, &acceptor, "localhost");
        once.assert_ok();
        assert!(
            once.resumed(),
            "{version:?}: a ticket one rotation old did not resume"
        );

        let connector = new_connector(&pki, version);
        connect(&connector, &acceptor, "localhost").assert_ok();
        acceptor.rotate_ticket_keys().unwrap();
        acceptor.rotate_ticket_keys().unwrap();
        let twice = connect(&connector, &acceptor, "localhost");
        twice.assert_ok();
        assert!(
            !twice.resumed(),
            "{version:?}: a ticket two rotations old resumed"
        );
    }
}

#[test]
fn ticket_keys_rotate_on_the_configured_interval() {
    const INTERVAL: Duration = Duration::from_secs(1);
    let pki = pki();
    let a = pki.issue_server(&["localhost"]).unwrap();
    let acceptor = builder(&a).ticket_key_rotation(INTERVAL).unwrap().build();
    assert_eq!(acceptor.ticket_key_rotation(), INTERVAL);

    // Between one and two intervals old: the previous key, still accepted.
    let connector = new_connector(&pki, SslVersion::TLS1_3);
    let issued = Instant::now();
    connect(&connector, &acceptor, "localhost").assert_ok();
    std::thread::sleep(INTERVAL + INTERVAL / 5);
    let later = connect(&connector, &acceptor, "localhost");
    later.assert_ok();
    if issued.elapsed() < 2 * INTERVAL {
        assert!(
            later.resumed(),
            "a ticket from the previous interval did not resume"
        );
    } else {
        eprintln!(
            "SKIPPED the first half: this machine took {:?}",
            issued.elapsed()
        );
    }

    // Over two intervals old: retired.
    let connector = new_connector(&pki, SslVersion::TLS1_3);
    connect(&connector, &acceptor, "localhost").assert_ok();
    std::thread::sleep(2 * INTERVAL + INTERVAL / 5);
    let stale = connect(&connector, &acceptor, "localhost");
    stale.assert_ok();
    assert!(!stale.resumed(), "a ticket over two intervals old resumed");
}

#[test]
fn a_zero_rotation_interval_is_refused() {
    let pki = pki();
    let a = pki.issue_server(&["localhost"]).unwrap();
    let e = builder(&a).ticket_key_rotation(Duration::ZERO).unwrap_err();
    assert!(matches!(e, Error::Config(_)), "{e:?}");
}

#[test]
fn a_replacement_may_change_the_rotation_interval_and_keeps_the_keys() {
    let pki = pki();
    let a = pki.issue_server(&["localhost"]).unwrap();
    let acceptor = builder(&a).build();
    let connector = new_connector(&pki, SslVersion::TLS1_3);
    connect(&connector, &acceptor, "localhost").assert_ok();
    let hour = Duration::from_secs(3600);
    acceptor
        .replace(builder(&a).ticket_key_rotation(hour).unwrap())
        .unwrap();
    assert_eq!(acceptor.ticket_key_rotation(), hour);
    let resumed = connect(&connector, &acceptor, "localhost");
    resumed.assert_ok();
    assert!(resumed.resumed());
    // Without a setting of its own a replacement leaves the interval alone.
    acceptor.replace(builder(&a)).unwrap();
    assert_eq!(acceptor.ticket_key_rotation(), hour);
}

#[test]
fn a_replacement_requiring_client_certificates_is_not_bypassed_by_resumption() {
    // A replacement that starts requiring client certificates: a client without one is
    // refused (TLS 1.3: at its first read), not resumed past the new requirement.
    let pki = pki();
    let a = pki.issue_server(&["localhost"]).unwrap();
    let acceptor = builder(&a).build();
    let connector = new_connector(&pki, SslVersion::TLS1_3);
    connect(&connector, &acceptor, "localhost").assert_ok();
    acceptor
        .replace(
            builder(&a)
                .require_client_cert(pki.ca_pem.as_bytes())
                .unwrap(),
        )
        .unwrap();
    let ended = connect(&connector, &acceptor, "localhost");
    assert!(!ended.server_info.resumed, "{ended:#?}");
    let e = ended.client_error.expect("refused");
    assert_eq!(
        e.alert(),
        Some(TlsAlert::Received(Alert::CERTIFICATE_REQUIRED)),
        "{e:?}"
    );
}
