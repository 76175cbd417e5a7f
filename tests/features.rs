//! TLS features between our own client and server over loopback: ALPN, SNI certificate
//! selection, session resumption, key logging, KeyUpdate, per-handle stats.

mod util;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use biotls::echo::{EchoOptions, echo, echo_with};
use biotls::error::{Alert, TlsAlert, VerifyKind};
use biotls::pki::Pki;
use biotls::tls::{ReadOutcome, SessionInfo, Tls, TlsAcceptor, TlsConnector, TlsSession};
use biotls::{Duplex, Error, Loop, Stream, Tcp, TcpListener, Timer};
use bytes::{Bytes, BytesMut};
use openssl::ssl::{SslOptions, SslVersion};
use openssl::x509::X509;
use util::{pattern, run_to_end, run_until};

const LIMIT: Duration = Duration::from_secs(30);

fn pki() -> Pki {
    Pki::generate(&["localhost"]).unwrap()
}

fn acceptor_builder(pki: &Pki) -> biotls::tls::TlsAcceptorBuilder {
    TlsAcceptor::builder(
        pki.server_chain_pem.as_bytes(),
        pki.server_key_pem.as_bytes(),
    )
    .unwrap()
}

fn connector_builder(pki: &Pki) -> biotls::tls::TlsConnectorBuilder {
    TlsConnector::builder()
        .unwrap()
        .ca_pem(pki.ca_pem.as_bytes())
        .unwrap()
}

/// Handshake outcomes seen by the server, in order.
type ServerSide = Rc<RefCell<Vec<Result<SessionInfo, Error>>>>;

/// Serves `stream` as a TLS echo server, recording the handshake's outcome.
fn serve<S: Stream>(lp: &mut Loop, stream: S, acceptor: &TlsAcceptor, seen: &ServerSide) {
    let tls = Tls::server(lp, stream, acceptor).unwrap();
    let s = seen.clone();
    tls.on_handshake(lp, move |lp, tls, r| {
        s.borrow_mut().push(r.map(|()| tls.info(lp).unwrap()));
    })
    .unwrap();
    echo(lp, tls, EchoOptions::default()).unwrap();
}

/// What our client saw once the echo came back.
#[derive(Debug)]
struct Seen {
    info: SessionInfo,
    /// The DNS names of the server's certificate.
    cert_names: Vec<String>,
}

/// Our client's outcome: what it saw, or the error.
type ClientSide = Rc<RefCell<Option<Result<Seen, Error>>>>;

fn dns_names(cert: Option<X509>) -> Vec<String> {
    cert.and_then(|c| c.subject_alt_names())
        .map(|names| {
            names
                .iter()
                .filter_map(|n| n.dnsname().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Over `stream`, as a client of `name`: sends a line, waits for its echo, shuts down
/// cleanly.
fn client<S: Stream>(lp: &mut Loop, stream: S, connector: &TlsConnector, name: &str) -> ClientSide {
    let out: ClientSide = Rc::default();
    let tls = Tls::client(lp, stream, connector, name).unwrap();
    tls.write(lp, &b"ping\n"[..], |_, _, _| {}).unwrap();
    let o = out.clone();
    let got = Rc::new(RefCell::new(Vec::new()));
    tls.start_read(lp, move |lp, tls, r| match r {
        Ok(Some(b)) => {
            got.borrow_mut().extend_from_slice(&b);
            if got.borrow().as_slice() == b"ping\n" {
                *o.borrow_mut() = Some(Ok(Seen {
                    info: tls.info(lp).unwrap(),
                    cert_names: dns_names(tls.peer_certificate(lp).unwrap()),
                }));
                // A clean close keeps the session resumable.
                let _ = tls.shutdown(lp, |lp, tls, _| tls.close(lp, |_, _| {}));
            }
        }
        Ok(None) => tls.close(lp, |_, _| {}),
        Err(e) => {
            if o.borrow().is_none() {
                *o.borrow_mut() = Some(Err(e));
            }
            tls.close(lp, |_, _| {});
        }
    })
    .unwrap();
    out
}

/// One connection: the client's and the server's view.
fn exchange(
    acceptor: TlsAcceptor,
    connector: &TlsConnector,
    name: &str,
) -> (Result<Seen, Error>, Result<SessionInfo, Error>) {
    // Only a transport is needed: an in-memory one.
    let mut lp = Loop::new().unwrap();
    let (a, b) = Duplex::pair(&mut lp, 64 << 10).unwrap();
    let seen: ServerSide = Rc::default();
    serve(&mut lp, a, &acceptor, &seen);
    let c = client(&mut lp, b, connector, name);
    run_until(&mut lp, LIMIT, || {
        c.borrow().is_some() && !seen.borrow().is_empty()
    });
    // Both ends finish with close_notify: a server session freed without it would be
    // dropped from the server's session cache.
    run_to_end(&mut lp, LIMIT);
    let client = c.borrow_mut().take().unwrap();
    let server = seen.borrow_mut().remove(0);
    (client, server)
}

#[test]
fn alpn_selects_by_the_servers_preference() {
    let pki = pki();
    let acceptor = acceptor_builder(&pki)
        .alpn_protocols(&[b"h2", b"http/1.1"])
        .unwrap()
        .build();
    let connector = connector_builder(&pki)
        .alpn_protocols(&[b"http/1.1", b"h2"])
        .unwrap()
        .build();
    let (c, s) = exchange(acceptor, &connector, "localhost");
    assert_eq!(c.unwrap().info.alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(s.unwrap().alpn.as_deref(), Some(&b"h2"[..]));
}

#[test]
fn alpn_without_overlap_is_refused_with_no_application_protocol() {
    let pki = pki();
    let acceptor = acceptor_builder(&pki)
        .alpn_protocols(&[b"h2"])
        .unwrap()
        .build();
    let connector = connector_builder(&pki)
        .alpn_protocols(&[b"imap"])
        .unwrap()
        .build();
    let (c, s) = exchange(acceptor, &connector, "localhost");
    // The server refuses with the alert; the client receives it.
    match s {
        Err(e @ Error::Handshake(_)) => assert_eq!(
            e.alert(),
            Some(TlsAlert::Sent(Alert::NO_APPLICATION_PROTOCOL)),
            "{e:?}"
        ),
        other => panic!("expected the server to refuse, got {other:?}"),
    }
    match c {
        Err(Error::Handshake(f)) => {
            assert_eq!(
                f.alert(),
                Some(TlsAlert::Received(Alert::NO_APPLICATION_PROTOCOL)),
                "{f:?}"
            );
            assert!(f.reason().contains("no application protocol"), "{f:?}");
        }
        other => panic!("expected a refused handshake, got {other:?}"),
    }
}

#[test]
fn a_client_offering_no_alpn_is_served_without_a_protocol() {
    let pki = pki();
    let acceptor = acceptor_builder(&pki)
        .alpn_protocols(&[b"h2"])
        .unwrap()
        .build();
    let (c, s) = exchange(acceptor, &pki.connector().unwrap(), "localhost");
    assert_eq!(c.unwrap().info.alpn, None);
    assert_eq!(s.unwrap().alpn, None);
}

#[test]
fn a_server_without_alpn_ignores_the_clients_offer() {
    let pki = pki();
    let connector = connector_builder(&pki)
        .alpn_protocols(&[b"h2"])
        .unwrap()
        .build();
    let (c, s) = exchange(pki.acceptor().unwrap(), &connector, "localhost");
    assert_eq!(c.unwrap().info.alpn, None);
    assert_eq!(s.unwrap().alpn, None);
}

#[test]
fn alpn_select_callback_sees_the_offers_and_the_server_name() {
    let pki = pki();
    let acceptor = acceptor_builder(&pki)
        .alpn_select(|name, offered| {
            assert_eq!(name, Some("localhost"));
            assert_eq!(offered, [&b"a"[..], b"b", b"c"]);
            offered.last().copied()
        })
        .build();
    let connector = connector_builder(&pki)
        .alpn_protocols(&[b"a", b"b", b"c"])
        .unwrap()
        .build();
    let (c, _) = exchange(acceptor, &connector, "localhost");
    assert_eq!(c.unwrap().info.alpn.as_deref(), Some(&b"c"[..]));
}

#[test]
fn alpn_rejects_empty_and_oversized_names() {
    let pki = pki();
    assert!(matches!(
        acceptor_builder(&pki).alpn_protocols(&[]),
        Err(Error::Config(_))
    ));
    assert!(matches!(
        connector_builder(&pki).alpn_protocols(&[b""]),
        Err(Error::Config(_))
    ));
    let long = [b'x'; 256];
    assert!(matches!(
        connector_builder(&pki).alpn_protocols(&[&long]),
        Err(Error::Config(_))
    ));
}

/// A server for `localhost`/127.0.0.1 by default, `alpha.test` and `*.beta.test` by SNI,
/// each from its own CA; and a connector trusting all three CAs.
fn sni_setup(alpn: bool) -> (TlsAcceptor, TlsConnector) {
    let default = Pki::generate(&["localhost", "127.0.0.1"]).unwrap();
    let alpha = Pki::generate(&["alpha.test"]).unwrap();
    let beta = Pki::generate(&["*.beta.test"]).unwrap();
    let mut builder = acceptor_builder(&default)
        .sni_certificate(
            "alpha.test",
            alpha.server_chain_pem.as_bytes(),
            alpha.server_key_pem.as_bytes(),
        )
        .unwrap()
        .sni_certificate(
            "*.beta.test",
            beta.server_chain_pem.as_bytes(),
            beta.server_key_pem.as_bytes(),
        )
        .unwrap();
    let mut connector = connector_builder(&default);
    if alpn {
        builder = builder.alpn_protocols(&[b"h2"]).unwrap();
        connector = connector.alpn_protocols(&[b"h2"]).unwrap();
    }
    let connector = connector
        .ca_pem(alpha.ca_pem.as_bytes())
        .unwrap()
        .ca_pem(beta.ca_pem.as_bytes())
        .unwrap()
        .build();
    (builder.build(), connector)
}

#[test]
fn sni_selects_the_certificate_for_each_name() {
    for (name, cert) in [
        ("alpha.test", "alpha.test"),
        ("ALPHA.test", "alpha.test"),
        ("www.beta.test", "*.beta.test"),
        ("localhost", "localhost"),
    ] {
        let (acceptor, connector) = sni_setup(false);
        // The client verifies the certificate against `name`, so a wrong pick fails.
        let (c, s) = exchange(acceptor, &connector, name);
        let c = c.unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(c.cert_names[0], cert, "{name}");
        assert_eq!(s.unwrap().server_name.as_deref(), Some(name));
    }
}

#[test]
fn an_unknown_or_absent_name_gets_the_default_certificate() {
    let (acceptor, connector) = sni_setup(false);
    // An IP address sends no SNI.
    let (c, s) = exchange(acceptor, &connector, "127.0.0.1");
    assert_eq!(c.unwrap().cert_names[0], "localhost");
    assert_eq!(s.unwrap().server_name, None);

    let (acceptor, connector) = sni_setup(false);
    let (c, s) = exchange(acceptor, &connector, "gamma.test");
    match c {
        Err(e) => assert_eq!(e.verify_kind(), Some(VerifyKind::HostnameMismatch), "{e:?}"),
        other => panic!("expected the default certificate to mismatch, got {other:?}"),
    }
    assert!(s.is_err() || s.unwrap().server_name.as_deref() == Some("gamma.test"));
}

#[test]
fn per_name_contexts_share_alpn() {
    let (acceptor, connector) = sni_setup(true);
    let (c, _) = exchange(acceptor, &connector, "alpha.test");
    let c = c.unwrap();
    assert_eq!(c.cert_names[0], "alpha.test");
    assert_eq!(c.info.alpn.as_deref(), Some(&b"h2"[..]));
}

#[test]
fn per_name_contexts_share_client_certificate_verification() {
    let default = Pki::generate(&["localhost"]).unwrap();
    let alpha = Pki::generate(&["alpha.test"]).unwrap();
    let acceptor = acceptor_builder(&default)
        .sni_certificate(
            "alpha.test",
            alpha.server_chain_pem.as_bytes(),
            alpha.server_key_pem.as_bytes(),
        )
        .unwrap()
        .require_client_cert(default.ca_pem.as_bytes())
        .unwrap()
        .build();
    // Without a client certificate: refused on the per-name context too.
    let connector = connector_builder(&alpha).build();
    let (_, s) = exchange(acceptor.clone(), &connector, "alpha.test");
    assert!(
        matches!(&s, Err(e @ Error::Handshake(_))
            if e.alert() == Some(TlsAlert::Sent(Alert::CERTIFICATE_REQUIRED))),
        "{s:?}"
    );
    // With one: served.
    let connector = connector_builder(&alpha)
        .client_cert_pem(
            default.client_chain_pem.as_bytes(),
            default.client_key_pem.as_bytes(),
        )
        .unwrap()
        .build();
    let (c, s) = exchange(acceptor, &connector, "alpha.test");
    assert_eq!(c.unwrap().cert_names[0], "alpha.test");
    assert!(s.is_ok(), "{s:?}");
}

/// Two connections with the same connector: (first, second) as the client and the server
/// saw them.
fn twice(acceptor: &TlsAcceptor, connector: &TlsConnector) -> [(Seen, SessionInfo); 2] {
    let mut out = Vec::new();
    for _ in 0..2 {
        let (c, s) = exchange(acceptor.clone(), connector, "localhost");
        out.push((c.unwrap(), s.unwrap()));
    }
    out.try_into().unwrap()
}

#[test]
fn tls13_sessions_resume_with_a_ticket() {
    let pki = pki();
    let acceptor = pki.acceptor().unwrap();
    let connector = pki.connector().unwrap();
    let [(c1, s1), (c2, s2)] = twice(&acceptor, &connector);
    assert_eq!(c1.info.version, "TLSv1.3");
    assert!(!c1.info.resumed && !s1.resumed);
    assert!(c2.info.resumed && s2.resumed);
    // The server's certificate is known from the first handshake.
    assert_eq!(c2.cert_names, ["localhost"]);
    // Tickets are used once: the second connection brought new ones.
    assert!(connector.cached_sessions("localhost") >= 1);
}

fn tls12_connector(pki: &Pki) -> TlsConnector {
    let mut builder = connector_builder(pki);
    builder
        .context_builder_mut()
        .set_max_proto_version(Some(SslVersion::TLS1_2))
        .unwrap();
    builder.build()
}

#[test]
fn tls12_sessions_resume_with_a_ticket() {
    let pki = pki();
    let connector = tls12_connector(&pki);
    let [(c1, _), (c2, s2)] = twice(&pki.acceptor().unwrap(), &connector);
    assert_eq!(c1.info.version, "TLSv1.2");
    assert!(!c1.info.resumed);
    assert!(c2.info.resumed && s2.resumed);
    // A TLS 1.2 session is kept for further connections.
    assert_eq!(connector.cached_sessions("localhost"), 1);
}

#[test]
fn tls12_sessions_resume_from_the_servers_session_cache_without_tickets() {
    let pki = pki();
    let mut builder = acceptor_builder(&pki);
    builder
        .context_builder_mut()
        .set_options(SslOptions::NO_TICKET);
    let [(_, s1), (c2, s2)] = twice(&builder.build(), &tls12_connector(&pki));
    assert!(!s1.resumed);
    assert!(c2.info.resumed && s2.resumed);
}

#[test]
fn sessions_resume_with_client_certificates() {
    let pki = pki();
    let acceptor = acceptor_builder(&pki)
        .require_client_cert(pki.ca_pem.as_bytes())
        .unwrap()
        .build();
    for connector in [
        connector_builder(&pki),
        // TLS 1.2 resumption needs the session id context set on the server.
        TlsConnector::builder()
            .unwrap()
            .ca_pem(pki.ca_pem.as_bytes())
            .unwrap(),
    ]
    .into_iter()
    .enumerate()
    .map(|(i, mut b)| {
        if i == 1 {
            b.context_builder_mut()
                .set_max_proto_version(Some(SslVersion::TLS1_2))
                .unwrap();
        }
        b.client_cert_pem(
            pki.client_chain_pem.as_bytes(),
            pki.client_key_pem.as_bytes(),
        )
        .unwrap()
        .build()
    }) {
        let [(_, s1), (c2, s2)] = twice(&acceptor, &connector);
        assert!(!s1.resumed);
        assert!(c2.info.resumed && s2.resumed, "{:?}", c2.info);
    }
}

#[test]
fn without_resumption_every_handshake_is_full() {
    let pki = pki();
    let connector = connector_builder(&pki).session_resumption(false).build();
    let [(_, _), (c2, s2)] = twice(&pki.acceptor().unwrap(), &connector);
    assert!(!c2.info.resumed && !s2.resumed);
    assert_eq!(connector.cached_sessions("localhost"), 0);
}

#[test]
fn a_session_is_offered_only_to_the_name_it_came_from() {
    let pki = Pki::generate(&["localhost", "127.0.0.1"]).unwrap();
    let connector = pki.connector().unwrap();
    let acceptor = pki.acceptor().unwrap();
    let (c1, _) = exchange(acceptor.clone(), &connector, "localhost");
    assert!(!c1.unwrap().info.resumed);
    let (c2, _) = exchange(acceptor, &connector, "127.0.0.1");
    assert!(!c2.unwrap().info.resumed);
}

/// A file path under the temp dir, removed on drop.
struct TempFile(std::path::PathBuf);

impl TempFile {
    fn new(tag: &str) -> TempFile {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        TempFile(
            std::env::temp_dir().join(format!("biotls-features-{}-{tag}-{n}", std::process::id())),
        )
    }

    /// The key log lines, as (label, client random, secret).
    fn keylog(&self) -> Vec<(String, String, String)> {
        let text = std::fs::read_to_string(&self.0).unwrap_or_default();
        text.lines()
            .map(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                assert_eq!(f.len(), 3, "not an NSS key log line: {l:?}");
                let hex = |s: &str| s.bytes().all(|b| b.is_ascii_hexdigit());
                assert!(hex(f[1]) && f[1].len() == 64, "client random: {l:?}");
                assert!(hex(f[2]) && f[2].len() >= 64, "secret: {l:?}");
                (f[0].to_owned(), f[1].to_owned(), f[2].to_owned())
            })
            .collect()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn labels(lines: &[(String, String, String)]) -> Vec<&str> {
    let mut l: Vec<&str> = lines.iter().map(|(label, _, _)| label.as_str()).collect();
    l.sort_unstable();
    l
}

#[test]
fn key_log_writes_nss_lines_on_both_sides() {
    let pki = pki();
    for tls12 in [false, true] {
        let (server_log, client_log) = (TempFile::new("srv"), TempFile::new("cli"));
        let acceptor = acceptor_builder(&pki)
            .keylog_file(&server_log.0)
            .unwrap()
            .build();
        let mut connector = connector_builder(&pki).keylog_file(&client_log.0).unwrap();
        if tls12 {
            connector
                .context_builder_mut()
                .set_max_proto_version(Some(SslVersion::TLS1_2))
                .unwrap();
        }
        let (c, _) = exchange(acceptor, &connector.build(), "localhost");
        c.unwrap();
        let (server, client) = (server_log.keylog(), client_log.keylog());
        let expected: &[&str] = if tls12 {
            &["CLIENT_RANDOM"]
        } else {
            &[
                "CLIENT_HANDSHAKE_TRAFFIC_SECRET",
                "CLIENT_TRAFFIC_SECRET_0",
                "EXPORTER_SECRET",
                "SERVER_HANDSHAKE_TRAFFIC_SECRET",
                "SERVER_TRAFFIC_SECRET_0",
            ]
        };
        assert_eq!(labels(&server), expected);
        // Both ends derived the same secrets for the same connection.
        let mut sorted_server = server.clone();
        let mut sorted_client = client.clone();
        sorted_server.sort();
        sorted_client.sort();
        assert_eq!(sorted_server, sorted_client);
    }
}

#[test]
fn key_log_covers_connections_on_sni_contexts() {
    let default = pki();
    let alpha = Pki::generate(&["alpha.test"]).unwrap();
    let log = TempFile::new("sni");
    let acceptor = acceptor_builder(&default)
        .sni_certificate(
            "alpha.test",
            alpha.server_chain_pem.as_bytes(),
            alpha.server_key_pem.as_bytes(),
        )
        .unwrap()
        .keylog_file(&log.0)
        .unwrap()
        .build();
    let (c, _) = exchange(acceptor, &connector_builder(&alpha).build(), "alpha.test");
    assert_eq!(c.unwrap().cert_names[0], "alpha.test");
    assert!(labels(&log.keylog()).contains(&"SERVER_TRAFFIC_SECRET_0"));
}

#[test]
fn key_log_fails_early_on_a_bad_path() {
    let pki = pki();
    let bad = std::env::temp_dir().join("biotls-no-such-dir/keylog");
    assert!(matches!(
        connector_builder(&pki).keylog_file(&bad),
        Err(Error::Config(_))
    ));
    assert!(matches!(
        acceptor_builder(&pki).keylog_file(&bad),
        Err(Error::Config(_))
    ));
}

/// Moves ciphertext between two sessions until neither has any; returns the plaintext
/// each received (to client, to server).
fn shuttle(client: &mut TlsSession, server: &mut TlsSession) -> (Vec<u8>, Vec<u8>) {
    let (mut to_client, mut to_server) = (Vec::new(), Vec::new());
    for _ in 0..1000 {
        let _ = client.handshake().unwrap();
        let _ = server.handshake().unwrap();
        let moved = step(client, server, &mut to_server) | step(server, client, &mut to_client);
        if !moved && !client.has_ciphertext() && !server.has_ciphertext() {
            return (to_client, to_server);
        }
    }
    panic!("shuttle: no quiescence (livelock)");
}

/// Moves `from`'s ciphertext to `to` and reads what `to` can decrypt into `got`.
fn step(from: &mut TlsSession, to: &mut TlsSession, got: &mut Vec<u8>) -> bool {
    let moved = match from.take_ciphertext() {
        Some(b) => {
            to.feed_ciphertext(b);
            true
        }
        None => false,
    };
    let mut buf = BytesMut::new();
    while let ReadOutcome::Data(_) = to.read(&mut buf).unwrap() {}
    got.extend_from_slice(&buf);
    moved
}

fn write_all(s: &mut TlsSession, mut data: &[u8]) {
    while !data.is_empty() {
        let n = s.write(data).unwrap();
        data = &data[n..];
    }
}

#[test]
fn key_update_with_request_makes_the_peer_answer_before_its_next_record() {
    let pki = pki();
    let mut client = TlsSession::client(&pki.connector().unwrap(), "localhost").unwrap();
    let mut server = TlsSession::server(&pki.acceptor().unwrap()).unwrap();
    assert!(matches!(
        client.key_update(true),
        Err(Error::InvalidState(_))
    ));
    shuttle(&mut client, &mut server);
    write_all(&mut client, b"before");
    client.key_update(true).unwrap();
    write_all(&mut client, b" after");
    // The KeyUpdate sits between the two records.
    let sent = client.take_ciphertext().unwrap();
    server.feed_ciphertext(sent);
    let mut got = BytesMut::new();
    while let ReadOutcome::Data(_) = server.read(&mut got).unwrap() {}
    assert_eq!(&got[..], b"before after");
    // OpenSSL answers the request with its own KeyUpdate ahead of its next record: one
    // 27-byte KeyUpdate record (5 header, 4 + 1 message, 1 type, 16 tag) before the
    // 26-byte record of "pong".
    assert!(!server.has_ciphertext());
    write_all(&mut server, b"pong");
    let reply = server.take_ciphertext().unwrap();
    assert_eq!(reply.len(), 27 + 26);
    client.feed_ciphertext(reply);
    // Both directions work under the new keys, and again after a server-side update.
    server.key_update(false).unwrap();
    write_all(&mut server, b"!");
    write_all(&mut client, b"ping");
    let (to_client, to_server) = shuttle(&mut client, &mut server);
    assert_eq!(to_client, b"pong!");
    assert_eq!(to_server, b"ping");
    // Without a request, the peer's next record comes alone.
    write_all(&mut client, b"pong");
    assert_eq!(client.take_ciphertext().unwrap().len(), 26);
}

#[test]
fn key_update_is_refused_on_tls12() {
    let pki = pki();
    let mut client = TlsSession::client(&tls12_connector(&pki), "localhost").unwrap();
    let mut server = TlsSession::server(&pki.acceptor().unwrap()).unwrap();
    shuttle(&mut client, &mut server);
    assert!(matches!(
        client.key_update(false),
        Err(Error::InvalidState(_))
    ));
    assert!(matches!(
        server.key_update(true),
        Err(Error::InvalidState(_))
    ));
}

#[test]
fn key_updates_on_both_handles_with_writes_in_flight_lose_nothing() {
    const TOTAL: usize = 16 << 20;
    const CHUNK: usize = 256 << 10;
    let pki = pki();
    let acceptor = pki.acceptor().unwrap();
    let mut lp = Loop::new().unwrap();
    let listener = TcpListener::bind(&mut lp, "127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr(&lp).unwrap();
    let server_updates = Rc::new(Cell::new(0u32));
    let su = server_updates.clone();
    listener
        .listen(&mut lp, move |lp, _, accepted| {
            let tls = Tls::server(lp, accepted.unwrap(), &acceptor).unwrap();
            echo(lp, tls, EchoOptions::default()).unwrap();
            // The server updates its keys every few milliseconds while it echoes.
            let timer = Timer::new(lp).unwrap();
            let su = su.clone();
            let tick = Duration::from_millis(3);
            timer
                .start(lp, tick, Some(tick), move |lp, timer| {
                    if !tls.is_open(lp) {
                        timer.close(lp);
                    } else if tls.is_handshake_complete(lp) && tls.key_update(lp, true).is_ok() {
                        su.set(su.get() + 1);
                    }
                })
                .unwrap();
        })
        .unwrap();

    let tcp = Tcp::connect(&mut lp, addr, |_, _, r| r.unwrap()).unwrap();
    let tls = Tls::client(&mut lp, tcp, &pki.connector().unwrap(), "localhost").unwrap();
    // Queued before the handshake, so most of it is in flight at the first update.
    for i in 0..TOTAL / CHUNK {
        let chunk = Bytes::from(pattern(7, (i * CHUNK) as u64, CHUNK));
        tls.write(&mut lp, chunk, |_, _, r| r.unwrap()).unwrap();
    }
    tls.on_handshake(&mut lp, |lp, tls, r| {
        r.unwrap();
        tls.key_update(lp, true).unwrap();
    })
    .unwrap();
    let received = Rc::new(Cell::new(0usize));
    let client_updates = Rc::new(Cell::new(0u32));
    let (r, cu) = (received.clone(), client_updates.clone());
    tls.start_read(&mut lp, move |lp, tls, res| match res.unwrap() {
        Some(b) => {
            let at = r.get();
            assert!(
                b[..] == pattern(7, at as u64, b.len())[..],
                "corrupt at {at}"
            );
            r.set(at + b.len());
            // Updates from inside the read callback, with the echo still in flight.
            if (at + b.len()) / (1 << 20) > at / (1 << 20) {
                tls.key_update(lp, cu.get() % 2 == 0).unwrap();
                cu.set(cu.get() + 1);
            }
            if r.get() == TOTAL {
                let _ = tls.shutdown(lp, |lp, tls, _| tls.close(lp, |_, _| {}));
            }
        }
        None => tls.close(lp, |_, _| {}),
    })
    .unwrap();
    run_until(&mut lp, Duration::from_secs(120), || {
        received.get() == TOTAL
    });
    listener.close(&mut lp);
    run_to_end(&mut lp, LIMIT);
    assert!(client_updates.get() >= 10, "{}", client_updates.get());
    assert!(server_updates.get() >= 1, "{}", server_updates.get());
}

#[test]
fn stats_count_plaintext_and_ciphertext_both_ways() {
    const N: usize = 100_000;
    let pki = pki();
    let acceptor = acceptor_builder(&pki)
        .alpn_protocols(&[b"echo"])
        .unwrap()
        .build();
    let connector = connector_builder(&pki)
        .alpn_protocols(&[b"echo"])
        .unwrap()
        .build();
    let mut lp = Loop::new().unwrap();
    let listener = TcpListener::bind(&mut lp, "127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr(&lp).unwrap();
    let server_stats = Rc::new(RefCell::new(None));
    let ss = server_stats.clone();
    listener
        .listen(&mut lp, move |lp, _, accepted| {
            let tls = Tls::server(lp, accepted.unwrap(), &acceptor).unwrap();
            assert_eq!(tls.stats(lp).unwrap().handshake_duration, None);
            let ss = ss.clone();
            echo_with(lp, tls, EchoOptions::default(), move |lp, tls: Tls, _| {
                *ss.borrow_mut() = Some(tls.stats(lp).unwrap());
            })
            .unwrap();
        })
        .unwrap();
    let tcp = Tcp::connect(&mut lp, addr, |_, _, _| {}).unwrap();
    let tls = Tls::client(&mut lp, tcp, &connector, "localhost").unwrap();
    tls.write(&mut lp, Bytes::from(pattern(3, 0, N)), |_, _, r| r.unwrap())
        .unwrap();
    let client_stats = Rc::new(RefCell::new(None));
    let (cs, got) = (client_stats.clone(), Rc::new(Cell::new(0)));
    tls.start_read(&mut lp, move |lp, tls, r| match r.unwrap() {
        Some(b) => {
            got.set(got.get() + b.len());
            if got.get() == N {
                *cs.borrow_mut() = Some(tls.stats(lp).unwrap());
                let _ = tls.shutdown(lp, |_, _, _| {});
            }
        }
        None => tls.close(lp, |_, _| {}),
    })
    .unwrap();
    run_until(&mut lp, LIMIT, || server_stats.borrow().is_some());
    listener.close(&mut lp);
    run_to_end(&mut lp, LIMIT);
    let c = client_stats.borrow_mut().take().unwrap();
    let s = server_stats.borrow_mut().take().unwrap();
    for st in [&c, &s] {
        assert_eq!((st.plaintext_in, st.plaintext_out), (N as u64, N as u64));
        // Records cost at least 22 bytes each (7 records of 16 KiB), plus the handshake.
        assert!(st.ciphertext_in > N as u64 + 7 * 22, "{st:?}");
        assert!(st.ciphertext_out > N as u64 + 7 * 22, "{st:?}");
        assert!(st.handshake_duration.is_some_and(|d| d < LIMIT), "{st:?}");
        assert_eq!(st.version, "TLSv1.3");
        assert!(st.cipher.is_some());
        assert_eq!(st.alpn.as_deref(), Some(&b"echo"[..]));
        assert!(!st.resumed);
    }
    // What one side sent, the other received (the client's close_notify came after the
    // client's snapshot, the server's after the client's).
    assert!(s.ciphertext_in >= c.ciphertext_out);
    assert!(c.ciphertext_in <= s.ciphertext_out);
}
