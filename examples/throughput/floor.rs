//! The in-memory TLS floor: a `TlsSession` pair back to back, no sockets, no loop.
//!
//! The client session encrypts `size`-byte writes (one `SSL_write` each, as the load
//! client does), about 1 MiB at a time; the server session is fed that ciphertext,
//! decrypts every record and encrypts the plaintext again in records of up to 16 KiB;
//! the client decrypts the echo and checks it. Only the server session's work is timed
//! (thread CPU time): one decryption and one encryption of every byte, plus the memory
//! BIO's copies in and out, in the largest batches and records this input allows. That
//! is about the least an OpenSSL-based echo server can spend on TLS per byte.

use std::time::Duration;

use biotls::bytes::{Bytes, BytesMut};
use biotls::tls::{ReadOutcome, TlsAcceptor, TlsConnector, TlsSession};
use cpu_time::ThreadTime;

/// Moves every pending ciphertext chunk from `from` to `to`.
fn pass(from: &mut TlsSession, to: &mut TlsSession) -> bool {
    let mut moved = false;
    while let Some(b) = from.take_ciphertext() {
        to.feed_ciphertext(b);
        moved = true;
    }
    moved
}

fn handshake(client: &mut TlsSession, server: &mut TlsSession) -> Result<(), String> {
    for _ in 0..20 {
        let c = client.handshake().map_err(|e| format!("client: {e}"))?;
        pass(client, server);
        let s = server.handshake().map_err(|e| format!("server: {e}"))?;
        pass(server, client);
        if c && s {
            return Ok(());
        }
    }
    Err("the in-memory handshake did not complete".into())
}

/// Server CPU per GiB (seconds) for echoing `total` bytes in `size`-byte writes.
pub fn tls_floor(
    acceptor: &TlsAcceptor,
    connector: &TlsConnector,
    size: usize,
    total: u64,
) -> Result<f64, String> {
    let mut client = TlsSession::client(connector, "localhost").map_err(|e| e.to_string())?;
    let mut server = TlsSession::server(acceptor).map_err(|e| e.to_string())?;
    handshake(&mut client, &mut server)?;
    // Session tickets and the like, so the data below starts clean.
    let mut sink = BytesMut::new();
    while let Ok(ReadOutcome::Data(_)) = client.read(&mut sink) {
        sink.clear();
    }
    let payload: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    // Batches of about 1 MiB of writes: the client's work and the check stay outside
    // the timed part.
    let per_batch = ((1usize << 20) / size).max(1);
    let mut plain = BytesMut::with_capacity(64 * 1024);
    let mut echoed = BytesMut::with_capacity(64 * 1024);
    let mut server_cpu = Duration::ZERO;
    let mut done = 0u64;
    while done < total {
        let mut batch = Vec::new();
        let mut batch_bytes = 0u64;
        for _ in 0..per_batch {
            if done + batch_bytes >= total {
                break;
            }
            let mut taken = 0;
            while taken < size {
                taken += client
                    .write(&payload[taken..])
                    .map_err(|e| format!("client write: {e}"))?;
            }
            batch_bytes += size as u64;
            while let Some(b) = client.take_ciphertext() {
                batch.push(b);
            }
        }
        // The server's part: what one side of an echo costs in TLS.
        let t = ThreadTime::now();
        for b in batch {
            server.feed_ciphertext(b);
        }
        // Decrypt every record there is, then encrypt it all again in records as large
        // as TLS allows: the least TLS work an echo server can do for this input.
        plain.clear();
        loop {
            match server.read(&mut plain) {
                Ok(ReadOutcome::Data(_)) => {}
                Ok(ReadOutcome::WantRead) => break,
                Ok(ReadOutcome::Eof) => return Err("unexpected close_notify".into()),
                Err(e) => return Err(format!("server read: {e}")),
            }
        }
        server.reserve_ciphertext(plain.len() + plain.len() / 16 + 64);
        let mut off = 0;
        while off < plain.len() {
            off += server
                .write(&plain[off..])
                .map_err(|e| format!("server write: {e}"))?;
        }
        let mut out: Vec<Bytes> = Vec::new();
        while let Some(b) = server.take_ciphertext() {
            out.push(b);
        }
        server_cpu += t.elapsed();
        for b in out {
            client.feed_ciphertext(b);
        }
        let mut got = 0u64;
        loop {
            echoed.clear();
            match client.read(&mut echoed) {
                Ok(ReadOutcome::Data(n)) => {
                    let at = ((done + got) % size as u64) as usize;
                    // Each write is the same payload: check piece by piece.
                    let mut i = 0;
                    while i < n {
                        let pos = (at + i) % size;
                        let k = (size - pos).min(n - i);
                        if echoed[i..i + k] != payload[pos..pos + k] {
                            return Err("the in-memory echo differs".into());
                        }
                        i += k;
                    }
                    got += n as u64;
                }
                Ok(ReadOutcome::WantRead) => break,
                Ok(ReadOutcome::Eof) | Err(_) => return Err("client read failed".into()),
            }
        }
        if got != batch_bytes {
            return Err(format!("echoed {got} of {batch_bytes} bytes in memory"));
        }
        done += batch_bytes;
    }
    Ok(server_cpu.as_secs_f64() / (done as f64 / (1u64 << 30) as f64))
}
