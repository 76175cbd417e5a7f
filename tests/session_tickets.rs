//! How many TLS 1.3 session tickets a server sends: one after a full handshake by
//! default (`DEFAULT_SESSION_TICKETS`), as many as `session_tickets` asks, and one after
//! every resumption.

use biotls::pki::Pki;
use biotls::tls::{DEFAULT_SESSION_TICKETS, ReadOutcome, TlsAcceptor, TlsConnector, TlsSession};
use bytes::BytesMut;

fn pump(from: &mut TlsSession, to: &mut TlsSession) -> bool {
    match from.take_ciphertext() {
        Some(b) => {
            to.feed_ciphertext(b);
            true
        }
        None => false,
    }
}

/// A full exchange: handshake, then the client reads what follows it (the tickets) and
/// both sides close. Returns whether the session was resumed.
fn connect(connector: &TlsConnector, acceptor: &TlsAcceptor) -> bool {
    let mut client = TlsSession::client(connector, "localhost").unwrap();
    let mut server = TlsSession::server(acceptor).unwrap();
    let mut buf = BytesMut::new();
    for _ in 0..50 {
        client.handshake().unwrap();
        server.handshake().unwrap();
        if client.is_handshake_complete() {
            while let ReadOutcome::Data(_) = client.read(&mut buf).unwrap() {}
        }
        if !(pump(&mut client, &mut server) | pump(&mut server, &mut client)) {
            break;
        }
    }
    assert!(client.is_handshake_complete() && server.is_handshake_complete());
    // OpenSSL keeps a client session only after a clean close.
    client.shutdown().unwrap();
    server.shutdown().unwrap();
    pump(&mut client, &mut server);
    pump(&mut server, &mut client);
    assert_eq!(client.read(&mut buf).unwrap(), ReadOutcome::Eof);
    client.is_resumed()
}

fn tickets_after_one_full_handshake(acceptor: &TlsAcceptor, pki: &Pki) -> usize {
    let connector = pki.connector().unwrap();
    assert!(!connect(&connector, acceptor));
    connector.cached_sessions("localhost")
}

#[test]
fn a_full_handshake_sends_one_ticket_by_default() {
    let pki = Pki::generate(&["localhost"]).unwrap();
    assert_eq!(DEFAULT_SESSION_TICKETS, 1);
    let acceptor = pki.acceptor().unwrap();
    assert_eq!(tickets_after_one_full_handshake(&acceptor, &pki), 1);
}

#[test]
fn session_tickets_sets_the_count_and_zero_sends_none() {
    let pki = Pki::generate(&["localhost"]).unwrap();
    for count in [0, 2, 3] {
        let acceptor = TlsAcceptor::builder(
            pki.server_chain_pem.as_bytes(),
            pki.server_key_pem.as_bytes(),
        )
        .and_then(|b| b.session_tickets(count))
        .unwrap()
        .build();
        assert_eq!(
            tickets_after_one_full_handshake(&acceptor, &pki),
            count,
            "session_tickets({count})"
        );
    }
}

#[test]
fn every_resumption_brings_a_new_ticket() {
    let pki = Pki::generate(&["localhost"]).unwrap();
    let acceptor = pki.acceptor().unwrap();
    let connector = pki.connector().unwrap();
    assert!(!connect(&connector, &acceptor));
    for i in 0..5 {
        assert!(connect(&connector, &acceptor), "resumption {i}");
        assert_eq!(
            connector.cached_sessions("localhost"),
            1,
            "after resumption {i}"
        );
    }
}
