//! Replays the corpus of `tests/corpus/*.bin` (hand-made malformed records and
//! ClientHellos, plus inputs a cargo-fuzz run found interesting) through a server and a
//! client `TlsSession`, with the fuzz targets' own driver: every input must end in an
//! error or a clean `WantRead`, never a panic, and end of stream after it must be an
//! error (none of these inputs can complete a handshake).
//!
//! To fuzz for longer, see README.md (Hardening); `tests/make_corpus.py` rewrites the
//! hand-made inputs.

#[path = "../fuzz/src/lib.rs"]
mod drive;

use std::fs;
use std::path::{Path, PathBuf};

use biotls::Error;
use biotls::error::{Alert, TlsAlert};
use biotls::tls::ReadOutcome;

fn corpus() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "bin"))
        .collect();
    files.sort();
    files
}

fn read(name: &str) -> Vec<u8> {
    fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/corpus")
            .join(name),
    )
    .unwrap()
}

#[test]
fn the_first_bytes_of_an_input_choose_its_chunks() {
    assert!(drive::chunks(&[]).is_empty());
    assert_eq!(drive::chunks(&[0, 1, 2, 3]), [&[1u8, 2, 3][..]]);
    // Two sizes (1 and 3 bytes), used in turn; the last chunk takes what is left.
    let input = [2, 0, 2, 10, 11, 12, 13, 14, 15, 16];
    let expect: [&[u8]; 4] = [&[10], &[11, 12, 13], &[14], &[15, 16]];
    assert_eq!(drive::chunks(&input), expect);
}

#[test]
fn every_corpus_input_fails_or_waits_without_panicking() {
    let files = corpus();
    assert!(files.len() >= 15, "corpus missing: {files:?}");
    for path in files {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let input = fs::read(&path).unwrap();
        assert!(input.len() <= 4096, "{name}: keep corpus inputs small");
        for (side, mut session) in [("server", drive::server()), ("client", drive::client())] {
            let fed = drive::drive(&mut session, &input);
            assert!(
                matches!(fed, Err(_) | Ok(ReadOutcome::WantRead)),
                "{name} ({side}): {fed:?}"
            );
            let ended = drive::finish(&mut session);
            assert!(ended.is_err(), "{name} ({side}) after EOF: {ended:?}");
            println!("{name} ({side}): {fed:?}, then EOF: {ended:?}");
        }
    }
}

/// The error of a fresh session (server or client side) fed a hand-made input.
fn error_for(name: &str, server: bool) -> Error {
    let mut session = if server {
        drive::server()
    } else {
        drive::client()
    };
    match drive::drive(&mut session, &read(name)) {
        Err(e) => e,
        other => panic!("{name}: expected an error, got {other:?}"),
    }
}

#[test]
fn malformed_input_gets_a_handshake_error_naming_the_problem_and_the_alert() {
    const SERVER: bool = true;
    const CLIENT: bool = false;
    let sent = |a| Some(TlsAlert::Sent(a));
    for (name, side, reason, alert) in [
        // Not TLS at all: OpenSSL refuses without an alert.
        ("http-request.bin", SERVER, "http request", None),
        (
            "huge-record-header.bin",
            SERVER,
            "data length too long",
            sent(Alert::RECORD_OVERFLOW),
        ),
        (
            "client-hello-bad-length.bin",
            SERVER,
            "excessive message size",
            sent(Alert::ILLEGAL_PARAMETER),
        ),
        (
            "empty-handshake-records.bin",
            SERVER,
            "record too small",
            sent(Alert::UNEXPECTED_MESSAGE),
        ),
        (
            "sslv2-client-hello.bin",
            SERVER,
            "unsupported protocol",
            sent(Alert::PROTOCOL_VERSION),
        ),
        // A record version whose first byte is not 3 does not look like TLS: no alert.
        (
            "dtls-record-version.bin",
            SERVER,
            "wrong version number",
            None,
        ),
        (
            "fatal-alert-first.bin",
            CLIENT,
            "alert handshake failure",
            Some(TlsAlert::Received(Alert::HANDSHAKE_FAILURE)),
        ),
        // A real ServerHello, answering another client's ClientHello.
        (
            "server-flight.bin",
            CLIENT,
            "invalid session id",
            sent(Alert::ILLEGAL_PARAMETER),
        ),
    ] {
        let e = error_for(name, side);
        match &e {
            Error::Handshake(f) => {
                assert!(f.reason().contains(reason), "{name}: {reason:?} in {e:?}");
                assert_eq!(f.alert(), alert, "{name}: {e:?}");
            }
            other => panic!("{name}: expected a handshake error with {reason:?}, got {other:?}"),
        }
    }
}

#[test]
fn a_client_hello_fed_byte_by_byte_is_answered() {
    let mut session = drive::server();
    let fed = drive::drive(&mut session, &read("client-hello-byte-by-byte.bin"));
    assert!(matches!(fed, Ok(ReadOutcome::WantRead)), "{fed:?}");
    assert!(
        session.info().cipher.is_some(),
        "the server chose a cipher suite: the ClientHello was parsed"
    );
}
