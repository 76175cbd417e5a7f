//! STARTTLS both ways: the `starttls_server` example against `openssl s_client
//! -starttls smtp`, against plaintext pipelined after `STARTTLS` (never answered over
//! TLS), and against a client written on this crate (`Tls::client_upgrade`); and
//! `Tls::unwrap` back to plaintext with the bytes that followed close_notify.

mod util;

use std::cell::RefCell;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::time::Duration;

use biotls::bytes::{Bytes, BytesMut};
use biotls::pki::Pki;
use biotls::tls::{Tls, TlsConnector};
use biotls::{Loop, Stream, Tcp};
use util::example::EchoServerProcess;
use util::{run_to_end, run_until};

const LIMIT: Duration = Duration::from_secs(30);

fn certs(file: &str) -> String {
    format!("{}/certs/{file}", env!("CARGO_MANIFEST_DIR"))
}

fn server() -> EchoServerProcess {
    EchoServerProcess::start_example(
        "starttls_server",
        [
            "--cert",
            &certs("server.pem"),
            "--key",
            &certs("server.key"),
        ],
    )
}

#[test]
fn openssl_s_client_starttls_smtp_gets_its_commands_answered_over_tls() {
    if !util::have("openssl", "version") {
        return;
    }
    let server = server();
    let mut child = util::peer::Guard(
        Command::new("openssl")
            .args([
                "s_client",
                "-starttls",
                "smtp",
                "-crlf",
                "-nocommands",
                "-quiet",
            ])
            .args([
                "-connect",
                &server.addr.to_string(),
                "-CAfile",
                &certs("ca.pem"),
            ])
            .args(["-verify_return_error"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl s_client"),
    );
    let mut stdin = child.0.stdin.take().unwrap();
    let stdout = child.0.stdout.take().unwrap();
    let lines = std::thread::spawn(move || {
        let mut got = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let done = line.starts_with("221");
            got.push(line);
            if done {
                break;
            }
        }
        got
    });
    // s_client has done EHLO and STARTTLS itself; these go over TLS.
    stdin.write_all(b"EHLO tester\nNOOP\nQUIT\n").unwrap();
    let deadline = std::time::Instant::now() + LIMIT;
    while !lines.is_finished() {
        assert!(std::time::Instant::now() < deadline, "s_client got no 221");
        std::thread::sleep(Duration::from_millis(20));
    }
    let got = lines.join().unwrap();
    drop(stdin);
    assert!(
        got.iter().any(|l| l == "250 biotls greets tester"),
        "{got:?}"
    );
    assert!(got.iter().any(|l| l == "250 ok"), "{got:?}");
    assert_eq!(got.last().map(String::as_str), Some("221 bye"), "{got:?}");
    server.wait_for("TLS established", 1);
}

/// Reads one CRLF-terminated line.
fn line(sock: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut byte = [0u8; 1];
    while !out.ends_with(b"\r\n") {
        assert_eq!(sock.read(&mut byte).unwrap(), 1, "closed after {out:?}");
        out.push(byte[0]);
    }
    String::from_utf8_lossy(&out).trim_end().to_owned()
}

#[test]
fn plaintext_pipelined_after_starttls_is_never_answered_over_tls() {
    let server = server();
    let mut sock = TcpStream::connect(server.addr).unwrap();
    sock.set_read_timeout(Some(LIMIT)).unwrap();
    assert!(line(&mut sock).starts_with("220 "));
    sock.write_all(b"EHLO tester\r\n").unwrap();
    assert!(line(&mut sock).starts_with("250-"));
    assert_eq!(line(&mut sock), "250 STARTTLS");
    // The injection: a command pipelined in plaintext right behind STARTTLS.
    sock.write_all(b"STARTTLS\r\nNOOP\r\n").unwrap();
    assert!(line(&mut sock).starts_with("220 "));
    // The server took "NOOP\r\n" as the start of the TLS handshake, which fails: what
    // comes back is at most a TLS alert and the end of the connection, never a reply.
    let mut rest = Vec::new();
    let _ = sock.read_to_end(&mut rest);
    assert!(
        !rest.windows(3).any(|w| w == b"250"),
        "answered after STARTTLS: {rest:?}"
    );
    if let Some(&first) = rest.first() {
        assert_eq!(first, 0x15, "not a TLS alert: {rest:?}");
    }
    server.wait_for("pipelined after STARTTLS", 1);
    server.wait_for("TLS handshake failed", 1);
}

/// A line-based client on this crate: replies are checked in order; on `220 ready`
/// it upgrades with `Tls::client_upgrade`.
#[test]
fn a_client_on_this_crate_upgrades_in_the_middle_of_a_connection() {
    let server = server();
    let connector = TlsConnector::builder()
        .unwrap()
        .ca_file(certs("ca.pem"))
        .unwrap()
        .build();
    let mut lp = Loop::new().unwrap();
    let seen: Rc<RefCell<Vec<String>>> = Rc::new(RefCell::new(Vec::new()));
    let tcp = Tcp::connect(&mut lp, server.addr, |_, _, r| r.unwrap()).unwrap();
    let s = Rc::clone(&seen);
    let mut buf = BytesMut::new();
    tcp.start_read(&mut lp, move |lp, tcp, r| {
        buf.extend_from_slice(&r.unwrap().expect("data before TLS"));
        while let Some(end) = buf.windows(2).position(|w| w == b"\r\n") {
            let line = String::from_utf8_lossy(&buf.split_to(end + 2))
                .trim_end()
                .to_owned();
            s.borrow_mut().push(line.clone());
            if line.starts_with("220 biotls") {
                tcp.write(lp, b"EHLO tester\r\n", |_, _, _| {}).unwrap();
            } else if line == "250 STARTTLS" {
                tcp.write(lp, b"STARTTLS\r\n", |_, _, _| {}).unwrap();
            } else if line.starts_with("220 ready") {
                let rest = buf.split().freeze();
                let tls = Tls::client_upgrade(lp, tcp, &connector, "localhost", rest).unwrap();
                secure_client(lp, tls, Rc::clone(&s));
                return;
            }
        }
    })
    .unwrap();
    run_until(&mut lp, LIMIT, || {
        seen.borrow().last().map(String::as_str) == Some("eof")
    });
    assert_eq!(
        seen.borrow()[4..],
        ["250 biotls greets tester", "250 ok", "221 bye", "eof"]
    );
    run_to_end(&mut lp, LIMIT);
}

fn secure_client(lp: &mut Loop, tls: Tls, seen: Rc<RefCell<Vec<String>>>) {
    tls.write(lp, b"EHLO tester\r\nNOOP\r\nQUIT\r\n", |_, _, r| r.unwrap())
        .unwrap();
    let mut buf = BytesMut::new();
    tls.start_read(lp, move |lp, tls, r| match r.unwrap() {
        Some(data) => {
            buf.extend_from_slice(&data);
            while let Some(end) = buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&buf.split_to(end + 2))
                    .trim_end()
                    .to_owned();
                seen.borrow_mut().push(line);
            }
        }
        None => {
            seen.borrow_mut().push("eof".into());
            tls.close(lp, |_, _| {});
        }
    })
    .unwrap();
}

// ---- unwrap ----

#[test]
fn unwrap_returns_the_stream_and_the_plaintext_that_followed_close_notify() {
    let pki = Pki::generate(&["localhost"]).unwrap();
    let mut lp = Loop::new().unwrap();
    let (a, b) = util::tcp_pair(&mut lp);
    let client = Tls::client(&mut lp, a, &pki.connector().unwrap(), "localhost").unwrap();
    let server = Tls::server(&mut lp, b, &pki.acceptor().unwrap()).unwrap();
    let log: Rc<RefCell<Vec<String>>> = Rc::new(RefCell::new(Vec::new()));
    // Over TLS first.
    client
        .write(&mut lp, b"secret", |_, _, r| r.unwrap())
        .unwrap();
    let l = Rc::clone(&log);
    server
        .start_read(&mut lp, move |lp, server, r| match r.unwrap() {
            Some(d) => {
                l.borrow_mut()
                    .push(format!("tls {}", String::from_utf8_lossy(&d)));
                let l2 = Rc::clone(&l);
                server
                    .unwrap(lp, move |lp, r| {
                        let (inner, rest) = r.expect("server unwrap");
                        l2.borrow_mut().push(format!(
                            "server unwrapped, rest {:?}",
                            String::from_utf8_lossy(&rest)
                        ));
                        read_plain(lp, inner, rest, Rc::clone(&l2));
                    })
                    .unwrap();
            }
            None => l.borrow_mut().push("server eof".into()),
        })
        .unwrap();
    let l = Rc::clone(&log);
    client
        .on_handshake(&mut lp, move |lp, client, r| {
            r.unwrap();
            let l2 = Rc::clone(&l);
            client
                .unwrap(lp, move |lp, r| {
                    let (inner, rest) = r.expect("client unwrap");
                    assert!(rest.is_empty());
                    l2.borrow_mut().push("client unwrapped".into());
                    // Plaintext right behind our close_notify.
                    inner
                        .write(lp, b"plain after", |_, _, r| r.unwrap())
                        .unwrap();
                    inner
                        .shutdown(lp, |lp, inner, _| inner.close(lp, |_, _| {}))
                        .unwrap();
                })
                .unwrap();
        })
        .unwrap();
    run_until(&mut lp, LIMIT, || {
        log.borrow().iter().any(|e| e.starts_with("plain eof"))
    });
    let log = log.borrow();
    assert_eq!(log[0], "tls secret");
    assert!(log.contains(&"server eof".to_owned()), "{log:?}");
    assert!(log.contains(&"client unwrapped".to_owned()), "{log:?}");
    let plain: String = log
        .iter()
        .filter_map(|e| e.strip_prefix("plain "))
        .filter(|e| *e != "eof")
        .collect();
    let rest: String = log
        .iter()
        .filter_map(|e| e.strip_prefix("server unwrapped, rest "))
        .map(|r| r.trim_matches('"').to_owned())
        .collect();
    assert_eq!(format!("{rest}{plain}"), "plain after", "{log:?}");
    drop(log);
    run_to_end(&mut lp, LIMIT);
    assert_eq!(lp.handle_count(), 0);
}

fn read_plain(lp: &mut Loop, inner: Tcp, _rest: Bytes, log: Rc<RefCell<Vec<String>>>) {
    inner
        .start_read(lp, move |lp, inner, r| match r.unwrap() {
            Some(d) => log
                .borrow_mut()
                .push(format!("plain {}", String::from_utf8_lossy(&d))),
            None => {
                log.borrow_mut().push("plain eof".into());
                inner.close(lp, |_, _| {});
            }
        })
        .unwrap();
}
