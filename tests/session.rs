//! Back-to-back tests of the sans-I/O `TlsSession`: a client and a server session driven
//! against each other in memory, with no sockets and no loop.

use std::sync::OnceLock;

use biotls::Error;
use biotls::error::{Alert, TlsAlert, VerifyKind};
use biotls::pki::Pki;
use biotls::tls::{ReadOutcome, TlsAcceptor, TlsConnector, TlsSession};
use bytes::{Bytes, BytesMut};
use openssl::nid::Nid;
use openssl::ssl::SslVersion;

/// Rounds after which `drive` assumes a livelock.
const MAX_ROUNDS: usize = 100;

fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| Pki::generate(&["localhost", "127.0.0.1", "::1"]).expect("generate pki"))
}

fn pair(server_name: &str) -> (TlsSession, TlsSession) {
    let acceptor = pki().acceptor().expect("acceptor");
    let connector = pki().connector().expect("connector");
    pair_with(&connector, &acceptor, server_name)
}

fn pair_with(
    connector: &TlsConnector,
    acceptor: &TlsAcceptor,
    server_name: &str,
) -> (TlsSession, TlsSession) {
    let client = TlsSession::client(connector, server_name).expect("client session");
    let server = TlsSession::server(acceptor).expect("server session");
    (client, server)
}

/// Moves all pending ciphertext from `from` to `to`; true if anything moved.
fn pump(from: &mut TlsSession, to: &mut TlsSession) -> bool {
    match from.take_ciphertext() {
        Some(b) => {
            to.feed_ciphertext(b);
            true
        }
        None => false,
    }
}

/// Drives both handshakes, moving ciphertext both ways until neither side produces
/// output. Returns each side's last `handshake()` result (client, server).
fn drive(
    client: &mut TlsSession,
    server: &mut TlsSession,
) -> (biotls::Result<bool>, biotls::Result<bool>) {
    for _ in 0..MAX_ROUNDS {
        let c = client.handshake();
        let s = server.handshake();
        let moved = pump(client, server) | pump(server, client);
        if !moved {
            return (c, s);
        }
    }
    panic!("drive: no quiescence after {MAX_ROUNDS} rounds (livelock)");
}

fn handshake_ok(client: &mut TlsSession, server: &mut TlsSession) {
    let (c, s) = drive(client, server);
    assert!(c.expect("client handshake"), "client handshake incomplete");
    assert!(s.expect("server handshake"), "server handshake incomplete");
    assert!(client.is_handshake_complete() && server.is_handshake_complete());
}

/// Reads until `WantRead` or `Eof`; returns the plaintext and the final outcome.
fn read_all(s: &mut TlsSession) -> biotls::Result<(Vec<u8>, ReadOutcome)> {
    let mut buf = BytesMut::new();
    for _ in 0..1_000_000 {
        match s.read(&mut buf)? {
            ReadOutcome::Data(n) => assert!(n > 0, "Data(0)"),
            other => return Ok((buf.to_vec(), other)),
        }
    }
    panic!("read_all: read never returned WantRead/Eof");
}

/// Writes all of `data` (looping over partial writes).
fn write_all(s: &mut TlsSession, data: &[u8]) {
    let mut off = 0;
    while off < data.len() {
        let n = s.write(&data[off..]).expect("write");
        assert!(n > 0, "write made no progress after the handshake");
        off += n;
    }
}

/// Sends `data` from `from` to `to` and returns what `to` decrypted.
fn transfer(from: &mut TlsSession, to: &mut TlsSession, data: &[u8]) -> Vec<u8> {
    write_all(from, data);
    pump(from, to);
    let (got, outcome) = read_all(to).expect("read");
    assert_eq!(outcome, ReadOutcome::WantRead);
    got
}

#[test]
fn handshake_completes_with_tls13_by_default() {
    let (mut c, mut s) = pair("localhost");
    assert!(!c.is_handshake_complete());
    assert!(
        !c.handshake().expect("first client step"),
        "needs server reply"
    );
    handshake_ok(&mut c, &mut s);
    assert_eq!(c.info().version, "TLSv1.3");
    assert_eq!(s.info().version, "TLSv1.3");
    // Idempotent after completion.
    assert!(c.handshake().expect("again"));
    assert!(s.handshake().expect("again"));
    assert!(!c.is_server() && s.is_server());
}

#[test]
fn tls12_can_be_forced_on_one_side_and_carries_data() {
    let mut builder = TlsAcceptor::builder(
        pki().server_chain_pem.as_bytes(),
        pki().server_key_pem.as_bytes(),
    )
    .expect("acceptor builder");
    builder
        .context_builder_mut()
        .set_max_proto_version(Some(SslVersion::TLS1_2))
        .expect("max version");
    let acceptor = builder.build();
    let connector = pki().connector().expect("connector");
    let (mut c, mut s) = pair_with(&connector, &acceptor, "localhost");
    handshake_ok(&mut c, &mut s);
    assert_eq!(c.info().version, "TLSv1.2");
    assert_eq!(s.info().version, "TLSv1.2");
    assert_eq!(transfer(&mut c, &mut s, b"over tls 1.2"), b"over tls 1.2");
    assert_eq!(transfer(&mut s, &mut c, b"reply"), b"reply");
}

#[test]
fn data_flows_both_ways_including_one_mebibyte() {
    let (mut c, mut s) = pair("localhost");
    handshake_ok(&mut c, &mut s);
    assert_eq!(transfer(&mut c, &mut s, b"ping"), b"ping");
    // The client also consumes the server's session tickets here.
    assert_eq!(transfer(&mut s, &mut c, b"pong"), b"pong");

    let big: Vec<u8> = (0..1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(transfer(&mut c, &mut s, &big), big);
    assert_eq!(transfer(&mut s, &mut c, &big), big);
    assert_eq!(s.buffered_ciphertext_in(), 0);
    assert_eq!(c.buffered_ciphertext_in(), 0);
}

#[test]
fn partial_write_returns_after_one_record() {
    let (mut c, mut s) = pair("localhost");
    handshake_ok(&mut c, &mut s);
    let data = vec![7u8; 100_000];
    let n = c.write(&data).expect("write");
    assert!(n > 0 && n <= 16 * 1024, "wrote {n}");
    assert!(c.has_ciphertext());
    assert!(c.buffered_ciphertext_out() > n);
}

/// Moves pending ciphertext one byte at a time, letting `to` step its handshake after
/// each byte; true if anything moved.
fn trickle(from: &mut TlsSession, to: &mut TlsSession) -> bool {
    let Some(b) = from.take_ciphertext() else {
        return false;
    };
    for i in 0..b.len() {
        to.feed_ciphertext(b.slice(i..i + 1));
        let _ = to.handshake().expect("handshake on partial input");
    }
    true
}

#[test]
fn ciphertext_delivered_one_byte_at_a_time_still_works() {
    let (mut c, mut s) = pair("localhost");
    let mut rounds = 0;
    loop {
        rounds += 1;
        assert!(rounds < MAX_ROUNDS, "handshake livelock");
        let c_done = c.handshake().expect("client handshake");
        let s_done = s.handshake().expect("server handshake");
        let moved = trickle(&mut c, &mut s) | trickle(&mut s, &mut c);
        if c_done && s_done && !moved {
            break;
        }
    }

    write_all(&mut c, b"byte by byte");
    let ct = c.take_ciphertext().expect("ciphertext");
    let mut got = Vec::new();
    let mut buf = BytesMut::new();
    for i in 0..ct.len() {
        s.feed_ciphertext(ct.slice(i..i + 1));
        loop {
            match s.read(&mut buf).expect("read") {
                ReadOutcome::Data(_) => {}
                ReadOutcome::WantRead => break,
                ReadOutcome::Eof => panic!("unexpected eof"),
            }
        }
        got.extend_from_slice(&buf.split());
        if i + 1 < ct.len() {
            assert!(got.is_empty(), "plaintext before the record was complete");
        }
    }
    assert_eq!(got, b"byte by byte");
}

#[test]
fn close_notify_is_reported_as_eof_after_pending_data() {
    let (mut c, mut s) = pair("localhost");
    handshake_ok(&mut c, &mut s);
    write_all(&mut c, b"last words");
    c.shutdown().expect("shutdown");
    c.shutdown().expect("second shutdown is a no-op");
    assert!(c.is_shutdown_sent());
    assert!(matches!(c.write(b"more"), Err(Error::InvalidState(_))));
    pump(&mut c, &mut s);
    let (got, outcome) = read_all(&mut s).expect("read");
    assert_eq!(got, b"last words");
    assert_eq!(outcome, ReadOutcome::Eof);
    assert!(s.received_close_notify());
    assert_eq!(
        s.read(&mut BytesMut::new()).expect("read after eof"),
        ReadOutcome::Eof
    );

    // The server answers with its own close_notify; the client sees a clean EOF too.
    s.shutdown().expect("server shutdown");
    pump(&mut s, &mut c);
    let (_, outcome) = read_all(&mut c).expect("client read");
    assert_eq!(outcome, ReadOutcome::Eof);
}

#[test]
fn transport_eof_without_close_notify_is_truncation_after_buffered_plaintext() {
    let (mut c, mut s) = pair("localhost");
    handshake_ok(&mut c, &mut s);
    write_all(&mut c, b"first");
    write_all(&mut c, b"second");
    pump(&mut c, &mut s);
    s.feed_eof();
    let mut buf = BytesMut::new();
    let mut outcome = s.read(&mut buf);
    while let Ok(ReadOutcome::Data(_)) = outcome {
        outcome = s.read(&mut buf);
    }
    assert_eq!(
        &buf[..],
        b"firstsecond",
        "plaintext delivered before the error"
    );
    assert!(matches!(outcome, Err(Error::Truncated)), "{outcome:?}");
    // The session stays failed.
    assert!(matches!(s.read(&mut buf), Err(Error::Truncated)));
    assert!(matches!(s.write(b"x"), Err(Error::Truncated)));
    assert!(!s.received_close_notify());
}

#[test]
fn corrupted_record_is_a_tls_error_and_the_alert_reaches_the_peer() {
    let (mut c, mut s) = pair("localhost");
    handshake_ok(&mut c, &mut s);
    // Let the client process the server's session tickets first.
    assert_eq!(read_all(&mut c).expect("tickets").1, ReadOutcome::WantRead);
    let _ = c.take_ciphertext();
    write_all(&mut c, b"this record will be corrupted");
    let ct = c.take_ciphertext().expect("ciphertext");
    let mut bad = ct.to_vec();
    let last = bad.len() - 1;
    bad[last] ^= 0x01;
    s.feed_ciphertext(Bytes::from(bad));
    let err = s.read(&mut BytesMut::new()).expect_err("corrupted record");
    match &err {
        Error::Tls(f) => assert!(
            f.reason().contains("bad record mac") || f.reason().contains("decrypt"),
            "{f:?}"
        ),
        other => panic!("expected Error::Tls, got {other:?}"),
    }
    assert_eq!(err.alert(), Some(TlsAlert::Sent(Alert::BAD_RECORD_MAC)));
    assert!(matches!(s.read(&mut BytesMut::new()), Err(Error::Tls(_))));
    // The server wrote a fatal alert; the client reports it.
    assert!(s.has_ciphertext(), "alert available to flush");
    pump(&mut s, &mut c);
    match read_all(&mut c) {
        Err(e @ Error::Tls(_)) => assert_eq!(
            e.alert(),
            Some(TlsAlert::Received(Alert::BAD_RECORD_MAC)),
            "{e:?}"
        ),
        other => panic!("expected Error::Tls from the alert, got {other:?}"),
    }
}

#[test]
fn unknown_ca_fails_verification() {
    let other = Pki::generate(&["localhost"]).expect("other pki");
    let connector = other.connector().expect("connector");
    let acceptor = pki().acceptor().expect("acceptor");
    let (mut c, mut s) = pair_with(&connector, &acceptor, "localhost");
    let (cr, sr) = drive(&mut c, &mut s);
    // The server sends its leaf and its CA: the chain ends in a self-signed root that the
    // client does not trust.
    match cr {
        Err(Error::Verification(v)) => {
            assert_eq!(v.kind(), VerifyKind::SelfSigned, "{v:?}");
            assert_eq!(v.code(), openssl_sys::X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN);
            assert_eq!(v.depth(), Some(1), "the CA, above the leaf");
            assert_eq!(v.alert(), Some(TlsAlert::Sent(Alert::UNKNOWN_CA)));
        }
        other => panic!("expected Verification, got {other:?}"),
    }
    // The client's alert reached the server.
    match sr {
        Err(e @ Error::Handshake(_)) => assert_eq!(
            e.alert(),
            Some(TlsAlert::Received(Alert::UNKNOWN_CA)),
            "{e:?}"
        ),
        other => panic!("expected Handshake on the server, got {other:?}"),
    }
    // Sticky.
    assert!(matches!(c.handshake(), Err(Error::Verification(_))));
    assert!(matches!(
        c.read(&mut BytesMut::new()),
        Err(Error::Verification(_))
    ));
}

#[test]
fn wrong_hostname_fails_verification() {
    let (mut c, mut s) = pair("example.com");
    let (cr, _) = drive(&mut c, &mut s);
    match cr {
        Err(Error::Verification(v)) => {
            assert_eq!(v.kind(), VerifyKind::HostnameMismatch);
            assert_eq!(v.code(), openssl_sys::X509_V_ERR_HOSTNAME_MISMATCH);
            assert_eq!(v.reason(), "hostname mismatch");
            assert_eq!(v.depth(), Some(0));
        }
        other => panic!("expected Verification, got {other:?}"),
    }
}

#[test]
fn ip_literal_is_verified_as_ip_without_sni() {
    let (mut c, mut s) = pair("127.0.0.1");
    handshake_ok(&mut c, &mut s);
    assert_eq!(s.info().server_name, None, "no SNI for an IP literal");
    assert_eq!(c.info().server_name.as_deref(), Some("127.0.0.1"));

    let (mut c, mut s) = pair("::1");
    handshake_ok(&mut c, &mut s);

    let (mut c, mut s) = pair("10.1.2.3");
    match drive(&mut c, &mut s).0 {
        Err(Error::Verification(v)) => {
            assert_eq!(v.kind(), VerifyKind::HostnameMismatch);
            assert_eq!(v.code(), openssl_sys::X509_V_ERR_IP_ADDRESS_MISMATCH);
        }
        other => panic!("expected Verification, got {other:?}"),
    }
}

#[test]
fn expired_certificate_fails_verification() {
    let expired = Pki::generate_expired_server(&["localhost"]).expect("pki");
    let (mut c, mut s) = pair_with(
        &expired.connector().expect("connector"),
        &expired.acceptor().expect("acceptor"),
        "localhost",
    );
    match drive(&mut c, &mut s).0 {
        Err(Error::Verification(v)) => {
            assert_eq!(v.kind(), VerifyKind::Expired);
            assert_eq!(v.code(), openssl_sys::X509_V_ERR_CERT_HAS_EXPIRED);
            assert_eq!(v.depth(), Some(0));
            assert_eq!(v.alert(), Some(TlsAlert::Sent(Alert::CERTIFICATE_EXPIRED)));
        }
        other => panic!("expected Verification, got {other:?}"),
    }
}

#[test]
fn disabled_verification_accepts_an_untrusted_wrong_host() {
    let connector = TlsConnector::builder()
        .expect("builder")
        .danger_disable_certificate_verification()
        .build();
    let acceptor = pki().acceptor().expect("acceptor");
    let (mut c, mut s) = pair_with(&connector, &acceptor, "not-the-host.example");
    handshake_ok(&mut c, &mut s);
    assert!(c.peer_certificate().is_some());
}

#[test]
fn eof_during_handshake_is_a_handshake_error() {
    // Server side: the ClientHello arrives, then the transport ends.
    let (mut c, mut s) = pair("localhost");
    assert!(!c.handshake().expect("client hello"));
    pump(&mut c, &mut s);
    s.feed_eof();
    match s.handshake() {
        Err(Error::Handshake(f)) => assert_eq!(f.reason(), "unexpected eof while reading"),
        other => panic!("expected Handshake, got {other:?}"),
    }
    // Client side: the server hangs up before answering.
    c.feed_eof();
    match c.handshake() {
        Err(Error::Handshake(f)) => assert_eq!(f.reason(), "unexpected eof while reading"),
        other => panic!("expected Handshake, got {other:?}"),
    }
    // Reading reports the same failure.
    assert!(matches!(
        c.read(&mut BytesMut::new()),
        Err(Error::Handshake(_))
    ));
}

#[test]
fn garbage_fed_to_a_server_is_a_handshake_error() {
    let acceptor = pki().acceptor().expect("acceptor");
    let mut s = TlsSession::server(&acceptor).expect("server");
    s.feed_ciphertext(Bytes::from_static(&[0x42; 64]));
    match s.handshake() {
        Err(Error::Handshake(f)) => assert!(
            !f.reason().is_empty() && !f.reason().contains('\n'),
            "{f:?}"
        ),
        other => panic!("expected Handshake, got {other:?}"),
    }
}

#[test]
fn http_request_fed_to_a_server_is_a_handshake_error() {
    let acceptor = pki().acceptor().expect("acceptor");
    let mut s = TlsSession::server(&acceptor).expect("server");
    s.feed_ciphertext(Bytes::from_static(
        b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
    ));
    match s.handshake() {
        Err(Error::Handshake(f)) => {
            assert_eq!(f.reason(), "http request");
            assert_eq!(f.alert(), None, "not TLS: no alert");
        }
        other => panic!("expected Handshake, got {other:?}"),
    }
}

fn mtls_acceptor() -> TlsAcceptor {
    TlsAcceptor::builder(
        pki().server_chain_pem.as_bytes(),
        pki().server_key_pem.as_bytes(),
    )
    .expect("builder")
    .require_client_cert(pki().ca_pem.as_bytes())
    .expect("client CA")
    .build()
}

#[test]
fn mtls_rejects_a_client_without_a_certificate() {
    let acceptor = mtls_acceptor();
    let connector = pki().connector().expect("connector");
    let (mut c, mut s) = pair_with(&connector, &acceptor, "localhost");
    let (cr, sr) = drive(&mut c, &mut s);
    match sr {
        Err(Error::Handshake(f)) => {
            assert!(f.reason().contains("certificate"), "{f:?}");
            assert_eq!(f.alert(), Some(TlsAlert::Sent(Alert::CERTIFICATE_REQUIRED)));
        }
        other => panic!("expected the server to refuse, got {other:?}"),
    }
    // In TLS 1.3 the client finishes first and learns of the refusal from the alert.
    let client_err = match cr {
        Ok(true) => read_all(&mut c).expect_err("client must see the alert"),
        Ok(false) => panic!("client handshake stuck"),
        Err(e) => e,
    };
    match client_err {
        Error::Tls(f) => assert_eq!(
            f.alert(),
            Some(TlsAlert::Received(Alert::CERTIFICATE_REQUIRED)),
            "{f:?}"
        ),
        other => panic!("unexpected client error {other:?}"),
    }
}

#[test]
fn mtls_accepts_a_client_with_a_certificate() {
    let acceptor = mtls_acceptor();
    let connector = TlsConnector::builder()
        .expect("builder")
        .ca_pem(pki().ca_pem.as_bytes())
        .expect("ca")
        .client_cert_pem(
            pki().client_chain_pem.as_bytes(),
            pki().client_key_pem.as_bytes(),
        )
        .expect("client cert")
        .build();
    let (mut c, mut s) = pair_with(&connector, &acceptor, "localhost");
    handshake_ok(&mut c, &mut s);
    assert_eq!(transfer(&mut c, &mut s, b"authenticated"), b"authenticated");
    let peer = s.peer_certificate().expect("client certificate");
    let cn = peer
        .subject_name()
        .entries_by_nid(Nid::COMMONNAME)
        .next()
        .expect("CN");
    assert_eq!(cn.data().to_string().expect("utf8"), "biotls test client");
}

#[test]
fn session_info_reports_version_cipher_and_sni() {
    let (mut c, mut s) = pair("localhost");
    let before = c.info();
    assert!(before.cipher.is_none() || !c.is_handshake_complete());
    handshake_ok(&mut c, &mut s);
    let si = s.info();
    let ci = c.info();
    assert_eq!(si.version, "TLSv1.3");
    assert_eq!(si.server_name.as_deref(), Some("localhost"));
    assert_eq!(ci.server_name.as_deref(), Some("localhost"));
    let cipher = si.cipher.clone().expect("cipher");
    assert!(cipher.starts_with("TLS_"), "{cipher}");
    assert_eq!(ci.cipher, si.cipher);
    assert_eq!(si.alpn, None);
    assert!(!si.resumed && !ci.resumed);
    // The server sent leaf + CA.
    let chain = c.peer_cert_chain().expect("chain");
    assert_eq!(chain.len(), 2);
    assert!(
        s.peer_certificate().is_none(),
        "no client certificate requested"
    );
    // Debug output carries no secrets but is informative.
    let dbg = format!("{c:?}");
    assert!(
        dbg.contains("TlsSession") && dbg.contains("TLSv1.3"),
        "{dbg}"
    );
}

#[test]
fn write_and_shutdown_before_the_handshake_are_invalid_state() {
    let (mut c, _s) = pair("localhost");
    assert!(matches!(c.write(b"early"), Err(Error::InvalidState(_))));
    assert!(matches!(c.shutdown(), Err(Error::InvalidState(_))));
    assert_eq!(
        c.read(&mut BytesMut::new()).expect("read drives handshake"),
        ReadOutcome::WantRead
    );
    assert!(c.has_ciphertext(), "ClientHello produced by read");
}

#[test]
fn config_errors_name_the_file_and_reason() {
    let missing = std::path::Path::new("/nonexistent/biotls/ca.pem");
    let err = TlsConnector::builder()
        .expect("builder")
        .ca_file(missing)
        .expect_err("missing file");
    match err {
        Error::Config(msg) => assert!(msg.starts_with("/nonexistent/biotls/ca.pem: "), "{msg}"),
        other => panic!("expected Config, got {other:?}"),
    }
    let err =
        TlsAcceptor::builder(b"not a pem", pki().server_key_pem.as_bytes()).expect_err("bad pem");
    assert!(matches!(err, Error::Config(_)), "{err:?}");
    // A key that does not match the certificate.
    let other = Pki::generate(&["localhost"]).expect("pki");
    let err = TlsAcceptor::builder(
        pki().server_chain_pem.as_bytes(),
        other.server_key_pem.as_bytes(),
    )
    .expect_err("mismatched key");
    match err {
        Error::Config(msg) => assert!(
            msg.contains("mismatch") || msg.contains("does not match"),
            "{msg}"
        ),
        other => panic!("expected Config, got {other:?}"),
    }
}

#[test]
fn sample_certs_load_from_files() {
    let dir = std::env::temp_dir().join(format!("biotls-session-test-{}", std::process::id()));
    pki().write_to_dir(&dir).expect("write pki");
    let acceptor = TlsAcceptor::from_pem_files(dir.join("server.pem"), dir.join("server.key"))
        .expect("acceptor from files");
    let connector = TlsConnector::builder()
        .expect("builder")
        .ca_file(dir.join("ca.pem"))
        .expect("ca file")
        .client_cert_files(dir.join("client.pem"), dir.join("client.key"))
        .expect("client cert files")
        .build();
    let (mut c, mut s) = pair_with(&connector, &acceptor, "localhost");
    handshake_ok(&mut c, &mut s);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn default_connector_verifies_against_system_roots_only() {
    // No CA configured: the system roots are used, and the throw-away test CA is not
    // among them, so verification is on and fails.
    let connector = TlsConnector::builder().expect("builder").build();
    let acceptor = pki().acceptor().expect("acceptor");
    let (mut c, mut s) = pair_with(&connector, &acceptor, "localhost");
    let verdict = drive(&mut c, &mut s).0;
    assert!(
        matches!(verdict, Err(ref e) if e.verify_kind() == Some(VerifyKind::SelfSigned)),
        "{verdict:?}"
    );
}

#[test]
fn configured_ca_replaces_the_default_trust_store() {
    let connector = TlsConnector::builder()
        .expect("builder")
        .ca_pem(pki().ca_pem.as_bytes())
        .expect("ca")
        .build();
    let trusted = connector.context().cert_store().all_certificates();
    assert_eq!(trusted.len(), 1, "only the configured CA is trusted");
}

#[test]
fn system_roots_load_from_the_probed_locations() {
    let probe = openssl_probe::probe();
    let connector = TlsConnector::builder().expect("builder").system_roots();
    if probe.cert_file.is_none() && probe.cert_dir.is_empty() {
        assert!(
            matches!(connector, Err(Error::Config(_))),
            "no roots on this system"
        );
        return;
    }
    let connector = connector.expect("system roots").build();
    if probe.cert_file.is_some() {
        // A CA bundle file is loaded eagerly (a directory is looked up lazily).
        assert!(
            !connector
                .context()
                .cert_store()
                .all_certificates()
                .is_empty()
        );
    }
}

#[test]
fn a_partial_record_does_not_pin_the_shared_buffer_it_came_from() {
    let (mut client, mut server) = pair("localhost");
    handshake_ok(&mut client, &mut server);
    write_all(&mut client, &[1u8; 10_000]);
    let record = client.take_ciphertext().expect("a record");
    // The record arrives as a slice of a larger shared buffer (like the loop's read
    // buffer), cut in the middle.
    let mut shared = BytesMut::with_capacity(256 * 1024);
    shared.extend_from_slice(&record);
    shared.resize(256 * 1024, 0);
    let shared = shared.freeze();
    server.feed_ciphertext(shared.slice(..record.len() / 2));
    let (got, outcome) = read_all(&mut server).expect("read");
    assert!(got.is_empty());
    assert_eq!(outcome, ReadOutcome::WantRead);
    // OpenSSL took the partial record into its own buffer: a stalled peer cannot keep
    // the loop's large read buffer alive through the session.
    assert_eq!(server.buffered_ciphertext_in(), 0);
    assert!(
        shared.is_unique(),
        "the session still refers to the shared buffer"
    );
    // The rest of the record completes it: nothing was lost by the copy.
    server.feed_ciphertext(record.slice(record.len() / 2..));
    let (got, _) = read_all(&mut server).expect("read");
    assert_eq!(got, vec![1u8; 10_000]);
}
