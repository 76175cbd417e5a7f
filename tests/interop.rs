//! Interoperability with TLS peers nobody here wrote: `openssl s_client` / `s_server`,
//! `gnutls-cli` and Python's `ssl` module, against our `Tls` server and client.
//!
//! Every child process is killed on every path (a Drop guard) and every wait is bounded.
//! A missing tool skips its test loudly, unless `CI` is set: then it fails the test.

mod util;

use std::cell::RefCell;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use biotls::error::{Alert, TlsAlert, VerifyKind};
use biotls::pki::Pki;
use biotls::tls::{Tls, TlsAcceptor, TlsConnector};
use biotls::{Error, Loop, Stream, Tcp};
use util::echo_server::EchoServer;
use util::peer::{Guard, TempDir, collect, run_peer, s_server};
use util::{have, run_until};

const LIMIT: Duration = Duration::from_secs(20);

/// A fresh PKI for `localhost` written to a temp dir (`ca.pem`, `server.pem`, ...).
fn pki_in_dir(pki: &Pki) -> TempDir {
    let dir = TempDir::new();
    pki.write_to_dir(&dir.0).unwrap();
    dir
}

fn fresh_pki() -> Pki {
    Pki::generate(&["localhost", "127.0.0.1"]).unwrap()
}

fn s_client(port: u16, dir: &TempDir, version: &str) -> Command {
    let mut cmd = Command::new("openssl");
    cmd.args(["s_client", version, "-connect"])
        .arg(format!("127.0.0.1:{port}"))
        .args([
            "-servername",
            "localhost",
            "-verify_return_error",
            "-CAfile",
        ])
        .arg(dir.file("ca.pem"));
    cmd
}

const LINES: &str = "first line\nsecond line, a little longer\nthird: 0123456789\n";

fn assert_s_client_echo(version_flag: &str, version: &str) {
    if !have("openssl", "version") {
        return;
    }
    let pki = fresh_pki();
    let dir = pki_in_dir(&pki);
    let server = EchoServer::start(pki.acceptor().unwrap());
    let ran = run_peer(
        &mut s_client(server.port, &dir, version_flag),
        LINES.as_bytes(),
        Some(LINES),
        LIMIT,
    );
    assert!(ran.stdout.contains(LINES), "no echo: {ran:#?}");
    assert!(ran.stdout.contains(version), "not {version}: {ran:#?}");
    assert!(ran.status.is_some_and(|s| s.success()), "{ran:#?}");
    assert_eq!(server.ends(1), vec![Ok(())]);
}

#[test]
fn openssl_s_client_tls12_gets_its_lines_echoed() {
    assert_s_client_echo("-tls1_2", "TLSv1.2");
}

#[test]
fn openssl_s_client_tls13_gets_its_lines_echoed() {
    assert_s_client_echo("-tls1_3", "TLSv1.3");
}

#[test]
fn gnutls_cli_gets_its_lines_echoed() {
    if !have("gnutls-cli", "--version") {
        return;
    }
    let pki = fresh_pki();
    let dir = pki_in_dir(&pki);
    let server = EchoServer::start(pki.acceptor().unwrap());
    let ran = run_peer(
        Command::new("gnutls-cli")
            .arg("--x509cafile")
            .arg(dir.file("ca.pem"))
            .arg("-p")
            .arg(server.port.to_string())
            .arg("localhost"),
        LINES.as_bytes(),
        Some(LINES),
        LIMIT,
    );
    assert!(ran.stdout.contains(LINES), "no echo: {ran:#?}");
    assert!(ran.status.is_some_and(|s| s.success()), "{ran:#?}");
    assert_eq!(server.ends(1), vec![Ok(())]);
}

const PYTHON_CLIENT: &str = r#"
import os, socket, ssl, sys
port, cafile, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
ctx = ssl.create_default_context(cafile=cafile)
data = os.urandom(n)
with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
    with ctx.wrap_socket(raw, server_hostname="localhost") as s:
        s.sendall(data)
        got = bytearray()
        while len(got) < n:
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
        if bytes(got) != data:
            sys.exit(f"echo differs: {len(got)} bytes back of {n}")
        version = s.version()
        s.unwrap()  # our close_notify, then the server's
        print(f"OK {n} bytes {version}")
"#;

#[test]
fn python_ssl_gets_random_bytes_echoed_intact() {
    if !have("python3", "--version") {
        return;
    }
    let pki = fresh_pki();
    let dir = pki_in_dir(&pki);
    let server = EchoServer::start(pki.acceptor().unwrap());
    // Small enough that the script may send it all before reading.
    let n = 256 * 1024;
    let ran = run_peer(
        Command::new("python3")
            .args(["-c", PYTHON_CLIENT])
            .arg(server.port.to_string())
            .arg(dir.file("ca.pem"))
            .arg(n.to_string()),
        b"",
        None,
        LIMIT,
    );
    assert!(ran.status.is_some_and(|s| s.success()), "{ran:#?}");
    assert!(
        ran.stdout.contains(&format!("OK {n} bytes TLSv1.3")),
        "{ran:#?}"
    );
    assert_eq!(server.ends(1), vec![Ok(())]);
}

/// Filled in once our client's exchange ends.
type Outcome = Rc<RefCell<Option<Result<Vec<u8>, Error>>>>;

/// Connects our `Tls` client to `port`, writes `data`, and reads until `until` bytes came
/// back or the connection failed. Returns the bytes, or the error.
fn our_client(pki: &Pki, port: u16, data: &'static [u8], until: usize) -> Result<Vec<u8>, Error> {
    let mut lp = Loop::new().unwrap();
    let tcp = Tcp::connect(
        &mut lp,
        SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        |_, _, _| {},
    )
    .unwrap();
    let tls = Tls::client(&mut lp, tcp, &pki.connector().unwrap(), "localhost").unwrap();
    tls.write(&mut lp, data, |_, _, _| {}).unwrap();
    let got = Rc::new(RefCell::new(Vec::new()));
    let result: Outcome = Rc::default();
    let (g, r) = (Rc::clone(&got), Rc::clone(&result));
    tls.start_read(&mut lp, move |lp, tls, read| {
        let end = match read {
            Ok(Some(b)) => {
                g.borrow_mut().extend_from_slice(&b);
                if g.borrow().len() < until {
                    return;
                }
                Ok(g.take())
            }
            Ok(None) => Ok(g.take()),
            Err(e) => Err(e),
        };
        *r.borrow_mut() = Some(end);
        tls.close(lp, |_, _| {});
    })
    .unwrap();
    run_until(&mut lp, LIMIT, || result.borrow().is_some());
    result.take().unwrap()
}

#[test]
fn our_client_gets_a_reversed_line_from_openssl_s_server() {
    if !have("openssl", "version") {
        return;
    }
    let pki = fresh_pki();
    let dir = pki_in_dir(&pki);
    let (_server, port) = s_server(&dir.file("server.pem"), &dir.file("server.key"), &["-rev"]);
    let got = our_client(&pki, port, b"hello interop\n", b"poretni olleh\n".len()).unwrap();
    assert_eq!(String::from_utf8_lossy(&got), "poretni olleh\n");
}

/// Our client against `openssl s_server` serving `cert`/`key`, trusting only
/// `client_pki`'s CA: the handshake must fail verification of `kind` with `code`.
fn assert_refused_files(cert: &str, key: &str, client_pki: &Pki, kind: VerifyKind, code: i32) {
    let (_server, port) = s_server(cert, key, &[]);
    match our_client(client_pki, port, b"never sent\n", 1) {
        Err(Error::Verification(v)) => {
            assert_eq!(v.kind(), kind, "{v:?}");
            assert_eq!(v.code(), code, "{v:?}");
            // s_server sends its leaf only: every failure here is the leaf's.
            assert_eq!(v.depth(), Some(0), "{v:?}");
            assert!(v.alert().is_some_and(|a| a.is_sent()), "{v:?}");
        }
        other => panic!("expected a verification error ({kind:?}), got {other:?}"),
    }
}

/// [`assert_refused_files`] with `server_pki`'s server certificate.
fn assert_refused(server_pki: &Pki, client_pki: &Pki, kind: VerifyKind, code: i32) {
    if !have("openssl", "version") {
        return;
    }
    let dir = pki_in_dir(server_pki);
    let (cert, key) = (dir.file("server.pem"), dir.file("server.key"));
    assert_refused_files(&cert, &key, client_pki, kind, code);
}

#[test]
fn our_client_refuses_a_certificate_for_another_host() {
    let pki = Pki::generate(&["example.org"]).unwrap();
    assert_refused(
        &pki,
        &pki,
        VerifyKind::HostnameMismatch,
        openssl_sys::X509_V_ERR_HOSTNAME_MISMATCH,
    );
}

#[test]
fn our_client_refuses_an_expired_certificate() {
    let pki = Pki::generate_expired_server(&["localhost"]).unwrap();
    assert_refused(
        &pki,
        &pki,
        VerifyKind::Expired,
        openssl_sys::X509_V_ERR_CERT_HAS_EXPIRED,
    );
}

#[test]
fn our_client_refuses_a_certificate_from_an_unknown_ca() {
    assert_refused(
        &fresh_pki(),
        &fresh_pki(),
        VerifyKind::UnknownIssuer,
        openssl_sys::X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY,
    );
}

#[test]
fn our_client_refuses_a_self_signed_certificate() {
    if !have("openssl", "version") {
        return;
    }
    let dir = TempDir::new();
    let (cert, key) = (dir.file("self.pem"), dir.file("self.key"));
    let made = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:P-256", "-nodes", "-days", "30"])
        .args([
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost",
        ])
        .args(["-keyout", &key, "-out", &cert])
        .output()
        .unwrap();
    assert!(made.status.success(), "openssl req: {made:?}");
    assert_refused_files(
        &cert,
        &key,
        &fresh_pki(),
        VerifyKind::SelfSigned,
        openssl_sys::X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT,
    );
}

/// What our client saw: the handshake callback's result, then the read callback's
/// (the bytes read, or the error).
type Seen = (Result<(), Error>, Result<Vec<u8>, Error>);

/// Connects `connector` to `port` without writing, and reads until the first error or
/// end of stream.
fn our_silent_client(connector: &TlsConnector, port: u16) -> Seen {
    let mut lp = Loop::new().unwrap();
    let tcp = Tcp::connect(
        &mut lp,
        SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        |_, _, _| {},
    )
    .unwrap();
    let tls = Tls::client(&mut lp, tcp, connector, "localhost").unwrap();
    let handshake = Rc::new(RefCell::new(None));
    let h = Rc::clone(&handshake);
    tls.on_handshake(&mut lp, move |_, _, r| *h.borrow_mut() = Some(r))
        .unwrap();
    let got = Rc::new(RefCell::new(Vec::new()));
    let result: Outcome = Rc::default();
    let (g, r) = (Rc::clone(&got), Rc::clone(&result));
    tls.start_read(&mut lp, move |lp, tls, read| {
        let end = match read {
            Ok(Some(b)) => return g.borrow_mut().extend_from_slice(&b),
            Ok(None) => Ok(g.take()),
            Err(e) => Err(e),
        };
        *r.borrow_mut() = Some(end);
        tls.close(lp, |_, _| {});
    })
    .unwrap();
    run_until(&mut lp, LIMIT, || result.borrow().is_some());
    let handshake = handshake.take().expect("handshake callback ran");
    (handshake, result.take().unwrap())
}

/// `openssl s_server` requiring a client certificate issued by `ca`'s CA (TLS 1.3).
fn s_server_requiring_client_certs(dir: &TempDir, ca: &TempDir) -> (Guard, u16) {
    let ca_file = ca.file("ca.pem");
    s_server(
        &dir.file("server.pem"),
        &dir.file("server.key"),
        // Without -verify_return_error s_server reports a bad certificate and goes on.
        &[
            "-tls1_3",
            "-Verify",
            "1",
            "-verify_return_error",
            "-CAfile",
            &ca_file,
        ],
    )
}

/// With TLS 1.3 the client's handshake completes before the server has seen the
/// client's certificate: the refusal arrives as an alert at the first read.
fn assert_refused_after_the_handshake(connector: &TlsConnector, port: u16, alert: Alert) {
    match our_silent_client(connector, port) {
        (Ok(()), Err(e @ Error::Tls(_))) => {
            assert_eq!(e.alert(), Some(TlsAlert::Received(alert)), "{e:?}");
        }
        other => panic!("expected on_handshake(Ok), then a received {alert}, got {other:?}"),
    }
}

#[test]
fn openssl_s_server_refusing_a_missing_client_certificate_sends_certificate_required() {
    if !have("openssl", "version") {
        return;
    }
    let pki = fresh_pki();
    let dir = pki_in_dir(&pki);
    let (_server, port) = s_server_requiring_client_certs(&dir, &dir);
    assert_refused_after_the_handshake(
        &pki.connector().unwrap(),
        port,
        Alert::CERTIFICATE_REQUIRED,
    );
}

#[test]
fn openssl_s_server_refusing_an_untrusted_client_certificate_sends_unknown_ca() {
    if !have("openssl", "version") {
        return;
    }
    let pki = fresh_pki();
    let dir = pki_in_dir(&pki);
    let other = pki_in_dir(&fresh_pki());
    let (_server, port) = s_server_requiring_client_certs(&dir, &other);
    let connector = TlsConnector::builder()
        .unwrap()
        .ca_pem(pki.ca_pem.as_bytes())
        .unwrap()
        .client_cert_pem(
            pki.client_chain_pem.as_bytes(),
            pki.client_key_pem.as_bytes(),
        )
        .unwrap()
        .build();
    assert_refused_after_the_handshake(&connector, port, Alert::UNKNOWN_CA);
}

fn mtls_server(pki: &Pki) -> EchoServer {
    let acceptor = TlsAcceptor::builder(
        pki.server_chain_pem.as_bytes(),
        pki.server_key_pem.as_bytes(),
    )
    .unwrap()
    .require_client_cert(pki.ca_pem.as_bytes())
    .unwrap()
    .build();
    EchoServer::start(acceptor)
}

#[test]
fn mtls_server_echoes_to_s_client_with_a_client_certificate() {
    if !have("openssl", "version") {
        return;
    }
    let pki = fresh_pki();
    let dir = pki_in_dir(&pki);
    let server = mtls_server(&pki);
    let ran = run_peer(
        s_client(server.port, &dir, "-tls1_3")
            .arg("-cert")
            .arg(dir.file("client.pem"))
            .arg("-key")
            .arg(dir.file("client.key")),
        LINES.as_bytes(),
        Some(LINES),
        LIMIT,
    );
    assert!(ran.stdout.contains(LINES), "no echo: {ran:#?}");
    assert!(ran.status.is_some_and(|s| s.success()), "{ran:#?}");
    assert_eq!(server.ends(1), vec![Ok(())]);
}

#[test]
fn mtls_server_refuses_s_client_without_a_client_certificate() {
    if !have("openssl", "version") {
        return;
    }
    let pki = fresh_pki();
    let dir = pki_in_dir(&pki);
    let server = mtls_server(&pki);
    let ran = run_peer(
        &mut s_client(server.port, &dir, "-tls1_3"),
        LINES.as_bytes(),
        None,
        LIMIT,
    );
    assert!(!ran.stdout.contains(LINES), "echoed anyway: {ran:#?}");
    assert!(ran.status.is_some_and(|s| !s.success()), "{ran:#?}");
    assert!(ran.stderr.contains("certificate required"), "{ran:#?}");
    match &server.errors(1)[..] {
        [Err(e @ Error::Handshake(_))] => assert_eq!(
            e.alert(),
            Some(TlsAlert::Sent(Alert::CERTIFICATE_REQUIRED)),
            "{e:?}"
        ),
        other => panic!("expected a refused handshake, got {other:?}"),
    }
}

#[test]
fn mtls_server_refuses_s_client_with_a_certificate_from_an_unknown_ca() {
    if !have("openssl", "version") {
        return;
    }
    let pki = fresh_pki();
    let dir = pki_in_dir(&pki);
    let stranger = pki_in_dir(&fresh_pki());
    let server = mtls_server(&pki);
    let ran = run_peer(
        s_client(server.port, &dir, "-tls1_3")
            .arg("-cert")
            .arg(stranger.file("client.pem"))
            .arg("-key")
            .arg(stranger.file("client.key")),
        LINES.as_bytes(),
        None,
        LIMIT,
    );
    assert!(!ran.stdout.contains(LINES), "echoed anyway: {ran:#?}");
    assert!(ran.stderr.contains("unknown ca"), "{ran:#?}");
    // s_client sends its leaf only; its issuer is not among ours.
    match &server.errors(1)[..] {
        [Err(Error::Verification(v))] => {
            assert_eq!(v.kind(), VerifyKind::UnknownIssuer, "{v:?}");
            assert_eq!(v.depth(), Some(0), "{v:?}");
            assert_eq!(v.alert(), Some(TlsAlert::Sent(Alert::UNKNOWN_CA)), "{v:?}");
        }
        other => panic!("expected a refused client certificate, got {other:?}"),
    }
}

fn alpn_server(pki: &Pki) -> EchoServer {
    let acceptor = TlsAcceptor::builder(
        pki.server_chain_pem.as_bytes(),
        pki.server_key_pem.as_bytes(),
    )
    .unwrap()
    .alpn_protocols(&[b"h2", b"http/1.1"])
    .unwrap()
    .build();
    EchoServer::start(acceptor)
}

#[test]
fn openssl_s_client_alpn_gets_the_servers_preferred_protocol() {
    if !have("openssl", "version") {
        return;
    }
    let pki = fresh_pki();
    let dir = pki_in_dir(&pki);
    let server = alpn_server(&pki);
    let ran = run_peer(
        s_client(server.port, &dir, "-tls1_3").args(["-alpn", "http/1.1,h2"]),
        LINES.as_bytes(),
        Some(LINES),
        LIMIT,
    );
    assert!(ran.stdout.contains(LINES), "no echo: {ran:#?}");
    assert!(ran.stdout.contains("ALPN protocol: h2"), "{ran:#?}");
    assert_eq!(server.ends(1), vec![Ok(())]);
}

#[test]
fn openssl_s_client_alpn_without_overlap_is_refused() {
    if !have("openssl", "version") {
        return;
    }
    let pki = fresh_pki();
    let dir = pki_in_dir(&pki);
    let server = alpn_server(&pki);
    let ran = run_peer(
        s_client(server.port, &dir, "-tls1_2").args(["-alpn", "imap"]),
        LINES.as_bytes(),
        None,
        LIMIT,
    );
    assert!(!ran.stdout.contains(LINES), "echoed anyway: {ran:#?}");
    assert!(ran.stderr.contains("no application protocol"), "{ran:#?}");
    match &server.errors(1)[..] {
        [Err(e @ Error::Handshake(_))] => assert_eq!(
            e.alert(),
            Some(TlsAlert::Sent(Alert::NO_APPLICATION_PROTOCOL)),
            "{e:?}"
        ),
        other => panic!("expected a refused handshake, got {other:?}"),
    }
}

#[test]
fn openssl_s_client_without_alpn_is_served_by_an_alpn_server() {
    if !have("openssl", "version") {
        return;
    }
    let pki = fresh_pki();
    let dir = pki_in_dir(&pki);
    let server = alpn_server(&pki);
    let ran = run_peer(
        &mut s_client(server.port, &dir, "-tls1_3"),
        LINES.as_bytes(),
        Some(LINES),
        LIMIT,
    );
    assert!(ran.stdout.contains(LINES), "no echo: {ran:#?}");
    assert!(ran.stdout.contains("No ALPN negotiated"), "{ran:#?}");
}

#[test]
fn openssl_s_client_gets_the_certificate_for_the_name_it_sends() {
    if !have("openssl", "version") {
        return;
    }
    let default = fresh_pki();
    let named: Vec<(&str, Pki)> = ["alpha.test", "beta.test"]
        .into_iter()
        .map(|n| (n, Pki::generate(&[n]).unwrap()))
        .collect();
    let mut builder = TlsAcceptor::builder(
        default.server_chain_pem.as_bytes(),
        default.server_key_pem.as_bytes(),
    )
    .unwrap();
    for (name, pki) in &named {
        builder = builder
            .sni_certificate(
                name,
                pki.server_chain_pem.as_bytes(),
                pki.server_key_pem.as_bytes(),
            )
            .unwrap();
    }
    let server = EchoServer::start(builder.build());
    let mut runs = 0;
    for (name, pki) in named
        .iter()
        .map(|(n, p)| (*n, p))
        .chain([("localhost", &default)])
    {
        let dir = pki_in_dir(pki);
        // s_client checks the chain against this name's CA and the name itself.
        let ran = run_peer(
            Command::new("openssl")
                .args(["s_client", "-connect"])
                .arg(format!("127.0.0.1:{}", server.port))
                .args(["-servername", name, "-verify_hostname", name])
                .args(["-verify_return_error", "-CAfile"])
                .arg(dir.file("ca.pem")),
            LINES.as_bytes(),
            Some(LINES),
            LIMIT,
        );
        runs += 1;
        assert!(ran.stdout.contains(LINES), "{name}: no echo: {ran:#?}");
        let subject = ran
            .stdout
            .lines()
            .find(|l| l.starts_with("subject="))
            .unwrap_or_default()
            .replace(' ', "");
        assert!(
            subject.starts_with(&format!("subject=CN={name},")),
            "{name}: {subject}"
        );
        assert!(
            ran.stdout.contains(&format!("Verified peername: {name}")),
            "{ran:#?}"
        );
        assert!(
            ran.stdout.contains("Verify return code: 0 (ok)"),
            "{ran:#?}"
        );
        assert_eq!(server.ends(runs).last(), Some(&Ok(())));
    }
}

/// The echo and whether the session was resumed, or the error.
type ResumeOutcome = Rc<RefCell<Option<Result<(Vec<u8>, bool), Error>>>>;

/// Like [`our_client`] with a given connector; ends with our close_notify (which keeps
/// the session resumable) and says whether the handshake resumed a session.
fn our_resuming_client(
    connector: &biotls::tls::TlsConnector,
    port: u16,
    data: &'static [u8],
    until: usize,
) -> Result<(Vec<u8>, bool), Error> {
    let mut lp = Loop::new().unwrap();
    let tcp = Tcp::connect(
        &mut lp,
        SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        |_, _, _| {},
    )
    .unwrap();
    let tls = Tls::client(&mut lp, tcp, connector, "localhost").unwrap();
    tls.write(&mut lp, data, |_, _, _| {}).unwrap();
    let got = Rc::new(RefCell::new(Vec::new()));
    let result: ResumeOutcome = Rc::default();
    let (g, r) = (Rc::clone(&got), Rc::clone(&result));
    tls.start_read(&mut lp, move |lp, tls, read| match read {
        Ok(Some(b)) => {
            g.borrow_mut().extend_from_slice(&b);
            if g.borrow().len() >= until && r.borrow().is_none() {
                *r.borrow_mut() = Some(Ok((g.take(), tls.is_resumed(lp))));
                let _ = tls.shutdown(lp, |lp, tls, _| tls.close(lp, |_, _| {}));
            }
        }
        Ok(None) => tls.close(lp, |_, _| {}),
        Err(e) => {
            r.borrow_mut().get_or_insert(Err(e));
            tls.close(lp, |_, _| {});
        }
    })
    .unwrap();
    run_until(&mut lp, LIMIT, || result.borrow().is_some());
    // Let the close_notify go out.
    while lp.run_once().unwrap() {}
    result.take().unwrap()
}

#[test]
fn our_client_resumes_sessions_with_openssl_s_server() {
    if !have("openssl", "version") {
        return;
    }
    let pki = fresh_pki();
    let dir = pki_in_dir(&pki);
    for version in ["-tls1_3", "-tls1_2"] {
        let (_server, port) = s_server(
            &dir.file("server.pem"),
            &dir.file("server.key"),
            &["-rev", version],
        );
        let connector = pki.connector().unwrap();
        let line = b"resume me\n";
        let (got, resumed) = our_resuming_client(&connector, port, line, line.len()).unwrap();
        assert_eq!(got, b"em emuser\n");
        assert!(!resumed, "{version}: first connection resumed");
        let (_, resumed) = our_resuming_client(&connector, port, line, line.len()).unwrap();
        assert!(resumed, "{version}: second connection not resumed");
    }
}

#[test]
fn openssl_s_client_resumes_a_saved_session_with_our_server() {
    if !have("openssl", "version") {
        return;
    }
    let pki = fresh_pki();
    let dir = pki_in_dir(&pki);
    let server = EchoServer::start(pki.acceptor().unwrap());
    let sess = dir.file("session.pem");
    let mut ends = 0;
    for (version, name) in [("-tls1_3", "TLSv1.3"), ("-tls1_2", "TLSv1.2")] {
        let first = run_peer(
            s_client(server.port, &dir, version).args(["-sess_out", &sess]),
            LINES.as_bytes(),
            Some(LINES),
            LIMIT,
        );
        assert!(first.stdout.contains(&format!("New, {name}")), "{first:#?}");
        let second = run_peer(
            s_client(server.port, &dir, version).args(["-sess_in", &sess]),
            LINES.as_bytes(),
            Some(LINES),
            LIMIT,
        );
        assert!(second.stdout.contains(LINES), "no echo: {second:#?}");
        assert!(
            second.stdout.contains(&format!("Reused, {name}")),
            "{version}: not resumed: {second:#?}"
        );
        ends += 2;
        assert_eq!(server.ends(ends), vec![Ok(()); ends]);
    }
}

#[test]
fn our_servers_key_log_matches_openssl_s_clients() {
    if !have("openssl", "version") {
        return;
    }
    let pki = fresh_pki();
    let dir = pki_in_dir(&pki);
    let ours = dir.file("server.keys");
    let theirs = dir.file("client.keys");
    let acceptor = TlsAcceptor::builder(
        pki.server_chain_pem.as_bytes(),
        pki.server_key_pem.as_bytes(),
    )
    .unwrap()
    .keylog_file(&ours)
    .unwrap()
    .build();
    let server = EchoServer::start(acceptor);
    let ran = run_peer(
        s_client(server.port, &dir, "-tls1_3").args(["-keylogfile", &theirs]),
        LINES.as_bytes(),
        Some(LINES),
        LIMIT,
    );
    assert!(ran.stdout.contains(LINES), "no echo: {ran:#?}");
    assert_eq!(server.ends(1), vec![Ok(())]);
    let lines = |path: &str| {
        let mut l: Vec<String> = std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(str::to_owned)
            .collect();
        l.sort();
        l
    };
    let (ours, theirs) = (lines(&ours), lines(&theirs));
    assert_eq!(ours.len(), 5, "{ours:#?}");
    assert_eq!(ours, theirs);
}

#[test]
fn openssl_s_client_key_updates_mid_stream_keep_the_echo_going() {
    if !have("openssl", "version") {
        return;
    }
    let pki = fresh_pki();
    let dir = pki_in_dir(&pki);
    let server = EchoServer::start(pki.acceptor().unwrap());
    let mut child = Guard(
        s_client(server.port, &dir, "-tls1_3")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let (out, _out_thread) = collect(child.0.stdout.take().unwrap());
    let (err, _err_thread) = collect(child.0.stderr.take().unwrap());
    let mut stdin = child.0.stdin.take().unwrap();
    let wait_for = |buf: &Arc<Mutex<Vec<u8>>>, text: &str, count: usize| {
        let deadline = Instant::now() + LIMIT;
        while String::from_utf8_lossy(&buf.lock().unwrap())
            .matches(text)
            .count()
            < count
        {
            assert!(Instant::now() < deadline, "no {text:?} from s_client");
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    // s_client reads a line that is just "K" as a command: a KeyUpdate requesting ours
    // ("k": without the request). One write per line, each after the previous echo.
    for (i, (line, command)) in [("before", "K"), ("between", "k"), ("after", "K")]
        .into_iter()
        .enumerate()
    {
        stdin.write_all(format!("{line}\n").as_bytes()).unwrap();
        wait_for(&out, &format!("{line}\n"), 1);
        stdin.write_all(format!("{command}\n").as_bytes()).unwrap();
        wait_for(&err, "KEYUPDATE", i + 1);
    }
    stdin.write_all(b"last\n").unwrap();
    wait_for(&out, "last\n", 1);
    drop(stdin);
    let text = String::from_utf8_lossy(&out.lock().unwrap()).into_owned();
    assert!(text.contains("before\nbetween\nafter\nlast\n"), "{text}");
    assert_eq!(server.ends(1), vec![Ok(())]);
}
