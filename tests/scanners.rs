//! Security defaults as scanners and old clients see them, against a server started here
//! with the `tls_echo_server` example's configuration (`TlsAcceptor::from_pem_files` on
//! `certs/`): no SSLv3/TLS 1.0/1.1, no weak ciphers, no compression, client-initiated
//! renegotiation refused.
//!
//! Needs `sslscan` and `openssl` (Debian packages of the same names). A missing tool
//! skips its test loudly, unless `CI` is set: then it fails the test.

mod util;

use std::io::{Read, Write};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use biotls::Error;
use biotls::error::{Alert, TlsAlert};
use biotls::tls::{TlsAcceptor, TlsConnector, TlsSession};
use openssl::ssl::SslVersion;
use util::echo_server::EchoServer;
use util::have;

const LIMIT: Duration = Duration::from_secs(30);

fn example_acceptor() -> TlsAcceptor {
    let dir = env!("CARGO_MANIFEST_DIR");
    TlsAcceptor::from_pem_files(
        format!("{dir}/certs/server.pem"),
        format!("{dir}/certs/server.key"),
    )
    .unwrap()
}

/// A child process killed and reaped on drop.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `cmd`, feeding `input` as timed steps (bytes, then a pause), then closes stdin;
/// kills it after `LIMIT`.
fn run(cmd: &mut Command, steps: &[(&[u8], Duration)]) -> Output {
    let mut child = Guard(
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}")),
    );
    let readers: Vec<_> = [
        Box::new(child.0.stdout.take().unwrap()) as Box<dyn Read + Send>,
        Box::new(child.0.stderr.take().unwrap()),
    ]
    .into_iter()
    .map(|mut pipe| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            buf
        })
    })
    .collect();
    if let Some(mut stdin) = child.0.stdin.take() {
        for (bytes, pause) in steps {
            // The peer may have gone already: that is an outcome, not a test failure.
            let _ = stdin.write_all(bytes).and_then(|()| stdin.flush());
            std::thread::sleep(*pause);
        }
    }
    let deadline = Instant::now() + LIMIT;
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "{cmd:?} still running after {LIMIT:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut outs = readers.into_iter().map(|r| r.join().unwrap_or_default());
    Output {
        status,
        stdout: outs.next().unwrap_or_default(),
        stderr: outs.next().unwrap_or_default(),
    }
}

/// The value of `name="..."` in one XML tag.
fn attr<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let start = tag.find(&format!(" {name}=\""))? + name.len() + 3;
    let len = tag[start..].find('"')?;
    Some(&tag[start..start + len])
}

/// Every `<element ...>` tag of that name in `xml`.
fn tags<'a>(xml: &'a str, element: &str) -> Vec<&'a str> {
    let open = format!("<{element} ");
    xml.match_indices(&open)
        .filter_map(|(at, _)| xml[at..].find('>').map(|end| &xml[at..at + end]))
        .collect()
}

#[test]
fn sslscan_finds_only_tls12_and_tls13_with_strong_ciphers_and_no_renegotiation() {
    if !have("sslscan", "--version") {
        return;
    }
    let server = EchoServer::start_with(example_acceptor(), Some(Duration::from_secs(5)));
    let out = run(
        Command::new("sslscan")
            .args(["--xml=-", "--no-colour"])
            .arg(format!("127.0.0.1:{}", server.port)),
        &[],
    );
    let xml = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "sslscan failed: {out:?}");

    let protocols = tags(&xml, "protocol");
    let enabled: Vec<String> = protocols
        .iter()
        .filter(|t| attr(t, "enabled") == Some("1"))
        .map(|t| {
            format!(
                "{} {}",
                attr(t, "type").unwrap(),
                attr(t, "version").unwrap()
            )
        })
        .collect();
    assert_eq!(enabled, ["tls 1.2", "tls 1.3"], "{xml}");
    for old in ["ssl 2", "ssl 3", "tls 1.0", "tls 1.1"] {
        assert!(
            protocols.iter().any(|t| {
                format!(
                    "{} {}",
                    attr(t, "type").unwrap(),
                    attr(t, "version").unwrap()
                ) == old
                    && attr(t, "enabled") == Some("0")
            }),
            "sslscan did not report {old} as disabled: {xml}"
        );
    }

    let ciphers = tags(&xml, "cipher");
    assert!(!ciphers.is_empty(), "{xml}");
    for c in &ciphers {
        let name = attr(c, "cipher").unwrap();
        let bits: u32 = attr(c, "bits").unwrap().parse().unwrap();
        let strength = attr(c, "strength").unwrap_or("");
        let version = attr(c, "sslversion").unwrap();
        assert!(matches!(version, "TLSv1.2" | "TLSv1.3"), "{c}");
        assert!(bits >= 128, "short key: {c}");
        assert!(matches!(strength, "strong" | "acceptable"), "weak: {c}");
        // Forward secrecy and AEAD only: no static RSA, no CBC, no RC4/3DES/NULL/EXPORT.
        for bad in [
            "RC4", "DES", "NULL", "EXP", "MD5", "CBC", "ANON", "ADH", "AECDH", "PSK",
        ] {
            assert!(
                !name.to_uppercase().contains(bad),
                "weak cipher {name}: {c}"
            );
        }
        assert!(
            version == "TLSv1.3" || name.starts_with("ECDHE-") || name.starts_with("DHE-"),
            "no forward secrecy: {c}"
        );
        assert!(
            name.contains("GCM") || name.contains("CHACHA20"),
            "not AEAD: {c}"
        );
    }

    let reneg = tags(&xml, "renegotiation");
    assert_eq!(reneg.len(), 1, "{xml}");
    assert_eq!(attr(reneg[0], "supported"), Some("0"), "{xml}");
    // sslscan reports compression only when its OpenSSL can offer it; if it does, it must
    // be off. The wire is checked in `the_server_hello_selects_no_compression`.
    for c in tags(&xml, "compression") {
        assert_eq!(attr(c, "supported"), Some("0"), "{xml}");
    }
    for h in tags(&xml, "heartbleed") {
        assert_eq!(attr(h, "vulnerable"), Some("0"), "{xml}");
    }
    println!(
        "sslscan: enabled {enabled:?}, {} cipher suites",
        ciphers.len()
    );
}

/// The ServerHello of a TLS 1.2 handshake with the example's configuration names
/// compression method 0 (none). TLS 1.3 has no compression at all.
#[test]
fn the_server_hello_selects_no_compression() {
    let mut builder = TlsConnector::builder()
        .unwrap()
        .ca_file(concat!(env!("CARGO_MANIFEST_DIR"), "/certs/ca.pem"))
        .unwrap();
    builder
        .context_builder_mut()
        .set_max_proto_version(Some(SslVersion::TLS1_2))
        .unwrap();
    let mut client = TlsSession::client(&builder.build(), "localhost").unwrap();
    let mut server = TlsSession::server(&example_acceptor()).unwrap();
    assert!(!client.handshake().unwrap());
    server.feed_ciphertext(client.take_ciphertext().unwrap());
    assert!(!server.handshake().unwrap());
    let flight = server.take_ciphertext().unwrap();
    // record header (5), handshake header (4), version (2), random (32), session id
    assert_eq!(flight[0], 22, "a handshake record");
    assert_eq!(flight[5], 2, "a ServerHello");
    let sid_len = flight[5 + 4 + 2 + 32] as usize;
    let at = 5 + 4 + 2 + 32 + 1 + sid_len + 2;
    assert_eq!(&flight[9..11], &[3, 3], "TLS 1.2");
    assert_eq!(flight[at], 0, "compression method");
}

fn s_client(port: u16, args: &[&str]) -> Command {
    let mut cmd = Command::new("openssl");
    cmd.arg("s_client")
        .args(args)
        .arg("-connect")
        .arg(format!("127.0.0.1:{port}"))
        .args(["-servername", "localhost", "-CAfile"])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/certs/ca.pem"));
    cmd
}

fn assert_old_version_refused(flag: &str) {
    if !have("openssl", "version") {
        return;
    }
    let server = EchoServer::start_with(example_acceptor(), Some(Duration::from_secs(5)));
    let out = run(
        &mut s_client(server.port, &[flag, "-cipher", "DEFAULT@SECLEVEL=0"]),
        &[(b"hello\n", Duration::from_millis(300))],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{flag} connected: {out:?}");
    assert!(!stdout.contains("hello"), "echoed over {flag}: {stdout}");
    // s_client's side of it.
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("alert protocol version"),
        "{out:?}"
    );
    match &server.errors(1)[..] {
        [Err(Error::Handshake(f))] => {
            assert!(f.reason().contains("unsupported protocol"), "{f:?}");
            assert_eq!(f.alert(), Some(TlsAlert::Sent(Alert::PROTOCOL_VERSION)));
        }
        other => panic!("expected a refused handshake, got {other:?}"),
    }
}

#[test]
fn openssl_s_client_tls1_0_cannot_connect() {
    assert_old_version_refused("-tls1");
}

#[test]
fn openssl_s_client_tls1_1_cannot_connect() {
    assert_old_version_refused("-tls1_1");
}

#[test]
fn client_initiated_renegotiation_is_refused() {
    if !have("openssl", "version") {
        return;
    }
    let server = EchoServer::start_with(example_acceptor(), Some(Duration::from_secs(5)));
    // TLS 1.2 (1.3 has no renegotiation): a line, then "R" (s_client renegotiates), then
    // another line that must not be echoed.
    let pause = Duration::from_millis(500);
    let out = run(
        &mut s_client(server.port, &["-tls1_2"]),
        &[(b"before\n", pause), (b"R\n", pause), (b"after\n", pause)],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains("before"), "{stdout}");
    assert!(stdout.contains("RENEGOTIATING") || stderr.contains("RENEGOTIATING"));
    assert!(
        stderr.contains("no renegotiation") || stdout.contains("no renegotiation"),
        "{stdout}\n{stderr}"
    );
    assert!(
        !stdout.contains("after"),
        "echoed after renegotiation: {stdout}"
    );
    // Our no_renegotiation is a warning; s_client gives up with a fatal alert of its own.
    match &server.errors(1)[..] {
        [Err(e @ Error::Tls(_))] => assert_eq!(
            e.alert(),
            Some(TlsAlert::Received(Alert::HANDSHAKE_FAILURE)),
            "{e:?}"
        ),
        other => panic!("expected the connection to fail, got {other:?}"),
    }
}
