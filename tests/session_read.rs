//! `TlsSession::read` lets OpenSSL write into the buffer's spare capacity without
//! zero-filling it first (the one `unsafe` of the data path): it must append exactly the
//! plaintext, after what the buffer holds, whatever the spare capacity held before.

use biotls::pki::Pki;
use biotls::tls::{ReadOutcome, TlsSession};
use bytes::{BufMut, BytesMut};

fn pump(from: &mut TlsSession, to: &mut TlsSession) -> bool {
    match from.take_ciphertext() {
        Some(b) => {
            to.feed_ciphertext(b);
            true
        }
        None => false,
    }
}

fn established() -> (TlsSession, TlsSession) {
    let pki = Pki::generate(&["localhost"]).unwrap();
    let mut client = TlsSession::client(&pki.connector().unwrap(), "localhost").unwrap();
    let mut server = TlsSession::server(&pki.acceptor().unwrap()).unwrap();
    for _ in 0..50 {
        client.handshake().unwrap();
        server.handshake().unwrap();
        if !(pump(&mut client, &mut server) | pump(&mut server, &mut client)) {
            break;
        }
    }
    assert!(client.is_handshake_complete() && server.is_handshake_complete());
    (client, server)
}

/// A buffer holding `prefix`, whose spare capacity (at least `spare` bytes) is full of
/// 0xee bytes that are not part of it.
fn dirty_buffer(prefix: &[u8], spare: usize) -> BytesMut {
    let mut buf = BytesMut::with_capacity(prefix.len() + spare);
    buf.put_bytes(0xee, prefix.len() + spare);
    buf.truncate(0);
    buf.extend_from_slice(prefix);
    buf
}

#[test]
fn read_appends_exactly_the_plaintext_whatever_the_spare_capacity_held() {
    let (mut client, mut server) = established();
    for (i, size) in [1usize, 100, 16 * 1024, 16 * 1024 + 1, 40_000]
        .into_iter()
        .enumerate()
    {
        let data: Vec<u8> = (0..size).map(|j| (j % 251) as u8 ^ i as u8).collect();
        let mut off = 0;
        while off < data.len() {
            off += client.write(&data[off..]).unwrap();
        }
        pump(&mut client, &mut server);
        // Spare room below, at, and above one record.
        let prefix = b"kept in front";
        let mut buf = dirty_buffer(prefix, [10, 16 * 1024, 70_000][i % 3]);
        loop {
            let before = buf.len();
            match server.read(&mut buf).unwrap() {
                ReadOutcome::Data(n) => {
                    assert!(n > 0 && n <= 16 * 1024, "{n}");
                    assert_eq!(buf.len(), before + n);
                }
                ReadOutcome::WantRead => {
                    assert_eq!(buf.len(), before, "WantRead changed the buffer");
                    break;
                }
                ReadOutcome::Eof => panic!("unexpected EOF"),
            }
        }
        assert_eq!(&buf[..prefix.len()], prefix);
        assert_eq!(&buf[prefix.len()..], &data[..], "{size} bytes");
    }
}

#[test]
fn eof_leaves_the_buffer_as_it_was() {
    let (mut client, mut server) = established();
    client.write(b"last").unwrap();
    client.shutdown().unwrap();
    pump(&mut client, &mut server);
    let mut buf = dirty_buffer(b"", 100);
    assert_eq!(server.read(&mut buf).unwrap(), ReadOutcome::Data(4));
    assert_eq!(&buf[..], b"last");
    assert_eq!(server.read(&mut buf).unwrap(), ReadOutcome::Eof);
    assert_eq!(&buf[..], b"last");
}
