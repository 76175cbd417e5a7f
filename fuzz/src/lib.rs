//! Drives a [`TlsSession`] with untrusted bytes: the body of the fuzz targets
//! (`fuzz_targets/`), and of `tests/malformed_records.rs`, which includes this file so
//! that CI replays the checked-in corpus through exactly what the fuzzers ran.
//!
//! Input format: the first byte gives `k = byte % 8`, the next `k` bytes are chunk sizes
//! used in turn (a size byte `s` feeds `s + 1` bytes), so one input cuts record headers,
//! records and handshake messages at varied places; with `k == 0` the rest is fed as one
//! chunk. After each chunk the session is driven as the `Tls` handle drives it:
//! `handshake` until complete, then `read` until `WantRead` (answering plaintext with a
//! write), taking the ciphertext after each step. An error ends the drive; only a panic
//! (or a sanitizer report) is a bug.

use std::sync::OnceLock;

use biotls::tls::{ReadOutcome, TlsAcceptor, TlsConnector, TlsSession};
use bytes::{Bytes, BytesMut};

/// Reads per step before moving on (a session cannot hold more than a few records).
const MAX_READS: usize = 64;

const SERVER_CHAIN: &[u8] = include_bytes!("../../certs/server.pem");
const SERVER_KEY: &[u8] = include_bytes!("../../certs/server.key");
const CA: &[u8] = include_bytes!("../../certs/ca.pem");

/// Splits `input` into the chunks its first bytes ask for (see the module docs).
pub fn chunks(input: &[u8]) -> Vec<&[u8]> {
    let Some((&first, rest)) = input.split_first() else {
        return Vec::new();
    };
    let k = usize::from(first % 8).min(rest.len());
    let (sizes, mut body) = rest.split_at(k);
    if sizes.is_empty() {
        return if body.is_empty() {
            Vec::new()
        } else {
            vec![body]
        };
    }
    let mut out = Vec::new();
    for &s in sizes.iter().cycle() {
        if body.is_empty() {
            break;
        }
        let (chunk, tail) = body.split_at((usize::from(s) + 1).min(body.len()));
        out.push(chunk);
        body = tail;
    }
    out
}

/// A server session with the sample certificate of `certs/`.
pub fn server() -> TlsSession {
    static ACCEPTOR: OnceLock<TlsAcceptor> = OnceLock::new();
    let acceptor = ACCEPTOR.get_or_init(|| {
        TlsAcceptor::builder(SERVER_CHAIN, SERVER_KEY)
            .expect("certs/server.pem and server.key")
            .build()
    });
    TlsSession::server(acceptor).expect("server session")
}

/// A client session for `localhost` that has sent its ClientHello: the input plays the
/// server.
pub fn client() -> TlsSession {
    static CONNECTOR: OnceLock<TlsConnector> = OnceLock::new();
    let connector = CONNECTOR.get_or_init(|| {
        TlsConnector::builder()
            .and_then(|b| b.ca_pem(CA))
            .expect("certs/ca.pem")
            .build()
    });
    let mut session = TlsSession::client(connector, "localhost").expect("client session");
    let started = session.handshake();
    assert!(matches!(started, Ok(false)), "{started:?}");
    assert!(session.take_ciphertext().is_some(), "no ClientHello");
    session
}

/// Feeds `input` chunk by chunk, driving the session after each. Returns the last
/// step's outcome, or the first error.
pub fn drive(session: &mut TlsSession, input: &[u8]) -> biotls::Result<ReadOutcome> {
    let mut last = Ok(ReadOutcome::WantRead);
    for chunk in chunks(input) {
        session.feed_ciphertext(Bytes::copy_from_slice(chunk));
        last = step(session);
        if last.is_err() {
            break;
        }
    }
    last
}

/// Ends the transport (EOF) and drives the session once more.
pub fn finish(session: &mut TlsSession) -> biotls::Result<ReadOutcome> {
    session.feed_eof();
    step(session)
}

fn step(session: &mut TlsSession) -> biotls::Result<ReadOutcome> {
    let result = advance(session);
    // Handshake messages, alerts, echoed records: produced, then dropped.
    let _ = session.take_ciphertext();
    result
}

fn advance(session: &mut TlsSession) -> biotls::Result<ReadOutcome> {
    if !session.handshake()? {
        return Ok(ReadOutcome::WantRead);
    }
    let mut buf = BytesMut::new();
    for _ in 0..MAX_READS {
        match session.read(&mut buf)? {
            ReadOutcome::Data(_) => {
                session.write(&buf)?;
                buf.clear();
            }
            other => return Ok(other),
        }
    }
    Ok(ReadOutcome::WantRead)
}
