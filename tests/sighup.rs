//! The `tls_echo_server` example as a process, reloading its files on SIGHUP: checked
//! with `openssl s_client` (which certificate is served, session resumption, a revoked
//! client certificate) and with a blocking OpenSSL client that keeps a connection open
//! across reloads.
//!
//! Needs `openssl`; without it the tests are skipped loudly, unless `CI` is set, where
//! they fail. The example is built on demand (see `tests/util/example.rs`).

mod util;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use biotls::pki::{Issued, Pki};
use openssl::ssl::{ShutdownState, SslConnector, SslMethod, SslStream};
use openssl::x509::{X509, X509Ref};
use util::example::EchoServerProcess;
use util::have;
use util::peer::{Ran, TempDir, run_peer};

const LIMIT: Duration = Duration::from_secs(20);
const RELOADED: &str = "SIGHUP: reloaded configuration";
const KEPT: &str = "SIGHUP: kept the previous configuration";
/// What s_client sends; its echo ends the run.
const LINE: &str = "rotation check\n";

fn pki() -> Pki {
    Pki::generate(&["localhost", "127.0.0.1"]).expect("pki")
}

fn serial_hex(cert: &X509Ref) -> String {
    cert.serial_number()
        .to_bn()
        .and_then(|bn| bn.to_hex_str().map(|s| s.to_string()))
        .expect("serial")
}

fn leaf_serial(identity: &Issued) -> String {
    serial_hex(&X509::from_pem(identity.chain_pem.as_bytes()).expect("leaf"))
}

/// Replaces `stem.pem` and `stem.key` in `dir` the way a certificate manager should: each
/// written beside and renamed over the old one.
fn install(dir: &TempDir, stem: &str, chain: &str, key: &str) {
    for (ext, contents) in [("pem", chain), ("key", key)] {
        let tmp = dir.0.join(format!("{stem}.{ext}.new"));
        std::fs::write(&tmp, contents).unwrap();
        std::fs::rename(&tmp, dir.0.join(format!("{stem}.{ext}"))).unwrap();
    }
}

/// A directory with `ca.pem` and `server.pem`/`server.key` holding `identity`.
fn setup(pki: &Pki, identity: &Issued) -> TempDir {
    let dir = TempDir::new();
    std::fs::write(dir.0.join("ca.pem"), &pki.ca_pem).unwrap();
    install(&dir, "server", &identity.chain_pem, &identity.key_pem);
    dir
}

fn start(dir: &TempDir, extra: &[&str]) -> EchoServerProcess {
    let mut args = vec![
        "--cert".to_owned(),
        dir.file("server.pem"),
        "--key".to_owned(),
        dir.file("server.key"),
        "--loops".to_owned(),
        "2".to_owned(),
    ];
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    EchoServerProcess::start(args)
}

fn s_client(server: &EchoServerProcess, dir: &TempDir, extra: &[&str]) -> Command {
    let mut cmd = Command::new("openssl");
    cmd.args(["s_client", "-connect"])
        .arg(server.addr.to_string())
        .args([
            "-servername",
            "localhost",
            "-verify_return_error",
            "-CAfile",
        ])
        .arg(dir.file("ca.pem"))
        .args(extra);
    cmd
}

/// Runs s_client until its line comes back (or it ends by itself).
fn run_s_client(server: &EchoServerProcess, dir: &TempDir, extra: &[&str]) -> Ran {
    run_peer(
        &mut s_client(server, dir, extra),
        LINE.as_bytes(),
        Some(LINE),
        LIMIT,
    )
}

/// The serial number of the certificate s_client was served, after an echo.
fn s_client_serial(server: &EchoServerProcess, dir: &TempDir) -> String {
    let ran = run_s_client(server, dir, &[]);
    assert!(
        ran.stdout.contains(LINE),
        "no echo: {ran:#?}\n{}",
        server.log()
    );
    let cert = X509::from_pem(ran.stdout.as_bytes()).expect("s_client prints the certificate");
    serial_hex(&cert)
}

/// A connection kept open across reloads: a blocking OpenSSL client.
fn open_connection(pki: &Pki, addr: SocketAddr) -> SslStream<TcpStream> {
    let mut builder = SslConnector::builder(SslMethod::tls_client()).unwrap();
    builder
        .cert_store_mut()
        .add_cert(X509::from_pem(pki.ca_pem.as_bytes()).unwrap())
        .unwrap();
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(LIMIT)).unwrap();
    tcp.set_write_timeout(Some(LIMIT)).unwrap();
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

fn close(mut stream: SslStream<TcpStream>) {
    stream.shutdown().unwrap();
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
    assert!(rest.is_empty(), "unexpected data: {rest:?}");
    assert!(stream.get_shutdown().contains(ShutdownState::RECEIVED));
}

#[test]
fn sighup_serves_the_new_certificate_while_an_old_connection_keeps_echoing() {
    if !have("openssl", "version") {
        return;
    }
    let pki = pki();
    let (a, b) = (
        pki.issue_server(&["localhost"]).unwrap(),
        pki.issue_server(&["localhost"]).unwrap(),
    );
    let dir = setup(&pki, &a);
    let server = start(&dir, &[]);
    let mut old = open_connection(&pki, server.addr);
    echo_once(&mut old, b"before the reload\n");
    assert_eq!(s_client_serial(&server, &dir), leaf_serial(&a));

    install(&dir, "server", &b.chain_pem, &b.key_pem);
    server.sighup();
    let line = server.wait_for(RELOADED, 1);
    assert!(
        line.contains(&format!("serial {}", leaf_serial(&b))),
        "{line}"
    );
    assert!(
        line.contains("CN=localhost") && line.contains("expires"),
        "{line}"
    );

    // Several connections, spread over both loops by the kernel.
    for _ in 0..4 {
        assert_eq!(s_client_serial(&server, &dir), leaf_serial(&b));
    }
    echo_once(&mut old, b"after the reload\n");
    let still = old.ssl().peer_certificate().expect("peer certificate");
    assert_eq!(serial_hex(&still), leaf_serial(&a));
    close(old);
}

#[test]
fn sighup_with_unusable_files_keeps_serving_the_previous_certificate() {
    if !have("openssl", "version") {
        return;
    }
    let pki = pki();
    let (a, b) = (
        pki.issue_server(&["localhost"]).unwrap(),
        pki.issue_server(&["localhost"]).unwrap(),
    );
    let expired = Pki::generate_expired_server(&["localhost"]).unwrap();
    let dir = setup(&pki, &a);
    let server = start(&dir, &[]);

    let bad: [(&str, &str, &str); 3] = [
        // Garbage instead of PEM.
        (
            "this is not a certificate\n",
            &a.key_pem,
            "no certificate found",
        ),
        // A certificate with another certificate's key.
        (&b.chain_pem, &a.key_pem, "mismatch"),
        // An expired certificate.
        (
            &expired.server_chain_pem,
            &expired.server_key_pem,
            "expired",
        ),
    ];
    for (n, (chain, key, why)) in bad.into_iter().enumerate() {
        install(&dir, "server", chain, key);
        server.sighup();
        let line = server.wait_for(KEPT, n + 1);
        assert!(line.contains(why), "{why:?} not in {line}");
        assert_eq!(
            s_client_serial(&server, &dir),
            leaf_serial(&a),
            "after {why:?}"
        );
    }
    assert_eq!(server.count(RELOADED), 0, "{}", server.log());

    // Fixed files are taken at the next SIGHUP.
    install(&dir, "server", &b.chain_pem, &b.key_pem);
    server.sighup();
    server.wait_for(RELOADED, 1);
    assert_eq!(s_client_serial(&server, &dir), leaf_serial(&b));
}

#[test]
fn sessions_resume_across_a_sighup_reload() {
    if !have("openssl", "version") {
        return;
    }
    let pki = pki();
    let identities = [
        pki.issue_server(&["localhost"]).unwrap(),
        pki.issue_server(&["localhost"]).unwrap(),
        pki.issue_server(&["localhost"]).unwrap(),
    ];
    let dir = setup(&pki, &identities[0]);
    let server = start(&dir, &[]);
    let session = dir.file("session.pem");
    for (i, (flag, name)) in [("-tls1_3", "TLSv1.3"), ("-tls1_2", "TLSv1.2")]
        .into_iter()
        .enumerate()
    {
        let first = run_s_client(&server, &dir, &[flag, "-sess_out", &session]);
        assert!(first.stdout.contains(&format!("New, {name}")), "{first:#?}");

        let next = &identities[i + 1];
        install(&dir, "server", &next.chain_pem, &next.key_pem);
        server.sighup();
        server.wait_for(RELOADED, i + 1);

        let second = run_s_client(&server, &dir, &[flag, "-sess_in", &session]);
        assert!(second.stdout.contains(LINE), "no echo: {second:#?}");
        assert!(
            second.stdout.contains(&format!("Reused, {name}")),
            "{name}: not resumed across the reload: {second:#?}\n{}",
            server.log()
        );
        // A full handshake now gets the new certificate.
        assert_eq!(s_client_serial(&server, &dir), leaf_serial(next));
    }
}

#[test]
fn sighup_reloads_the_crl_and_s_client_with_a_revoked_certificate_is_refused() {
    if !have("openssl", "version") {
        return;
    }
    let pki = pki();
    let server_id = pki.issue_server(&["localhost"]).unwrap();
    let good = pki.issue_client("good client").unwrap();
    let doomed = pki.issue_client("doomed client").unwrap();
    let dir = setup(&pki, &server_id);
    good.write_to_dir(&dir.0, "good").unwrap();
    doomed.write_to_dir(&dir.0, "doomed").unwrap();
    std::fs::write(dir.0.join("crl.pem"), pki.crl(&[]).unwrap()).unwrap();
    let ca = dir.file("ca.pem");
    let crl = dir.file("crl.pem");
    let server = start(&dir, &["--client-ca", &ca, "--crl", &crl]);
    let as_client = |stem: &str| {
        let (cert, key) = (
            dir.file(&format!("{stem}.pem")),
            dir.file(&format!("{stem}.key")),
        );
        run_s_client(&server, &dir, &["-cert", &cert, "-key", &key])
    };

    let ran = as_client("doomed");
    assert!(ran.stdout.contains(LINE), "not yet revoked: {ran:#?}");

    // Its CA revokes it; the server learns at the next SIGHUP.
    let tmp = dir.0.join("crl.pem.new");
    std::fs::write(&tmp, pki.crl(&[&doomed.chain_pem]).unwrap()).unwrap();
    std::fs::rename(&tmp, dir.0.join("crl.pem")).unwrap();
    server.sighup();
    server.wait_for(RELOADED, 1);

    let ran = as_client("doomed");
    assert!(!ran.stdout.contains(LINE), "revoked, yet echoed: {ran:#?}");
    let said = format!("{}{}", ran.stdout, ran.stderr);
    assert!(
        said.contains("certificate revoked") && said.contains("alert number 44"),
        "s_client did not report the certificate_revoked alert: {ran:#?}"
    );
    let refused = server.wait_for("X509_V_ERR_CERT_REVOKED", 1);
    assert!(refused.contains("revoked"), "{refused}");

    let ran = as_client("good");
    assert!(
        ran.stdout.contains(LINE),
        "the good client was refused: {ran:#?}"
    );
}
