//! A server session creates its OpenSSL `SSL` only once the client's ClientHello has
//! arrived: before, it holds the bytes received and nothing else (`tls/hello.rs`).

use biotls::Error;
use biotls::pki::Pki;
use biotls::tls::{TlsAcceptor, TlsSession};
use bytes::Bytes;

/// Moves all pending ciphertext from `from` to `to`; true if anything moved.
fn pump(from: &mut TlsSession, to: &mut TlsSession) -> bool {
    match from.take_ciphertext() {
        Some(b) => {
            to.feed_ciphertext(b);
            true
        }
        None => false,
    }
}

fn handshake(client: &mut TlsSession, server: &mut TlsSession) {
    for _ in 0..50 {
        client.handshake().expect("client handshake");
        server.handshake().expect("server handshake");
        if !(pump(client, server) | pump(server, client)) {
            break;
        }
    }
    assert!(client.is_handshake_complete() && server.is_handshake_complete());
}

fn client_hello(pki: &Pki) -> (TlsSession, Bytes) {
    let mut client = TlsSession::client(&pki.connector().unwrap(), "localhost").unwrap();
    assert!(!client.handshake().unwrap());
    let hello = client.take_ciphertext().expect("ClientHello");
    (client, hello)
}

#[test]
fn half_a_client_hello_creates_no_ssl_and_the_rest_completes_the_handshake() {
    let pki = Pki::generate(&["localhost"]).unwrap();
    let (mut client, hello) = client_hello(&pki);
    let mut server = TlsSession::server(&pki.acceptor().unwrap()).unwrap();
    assert!(server.ssl().is_none());

    let half = hello.len() / 2;
    server.feed_ciphertext(hello.slice(..half));
    assert!(!server.handshake().unwrap());
    assert!(server.ssl().is_none(), "an SSL for half a ClientHello");
    assert!(!server.has_ciphertext());
    assert_eq!(server.buffered_ciphertext_in(), half);
    assert_eq!(server.info().version, "unknown");
    assert!(server.peer_certificate().is_none());

    server.feed_ciphertext(hello.slice(half..));
    assert!(!server.handshake().unwrap());
    assert!(server.ssl().is_some());
    assert!(server.has_ciphertext(), "the server's flight");
    pump(&mut server, &mut client);
    handshake(&mut client, &mut server);
    assert_eq!(server.info().version, "TLSv1.3");
}

#[test]
fn the_end_of_the_transport_in_the_middle_of_a_client_hello_is_a_handshake_error() {
    let pki = Pki::generate(&["localhost"]).unwrap();
    let (_client, hello) = client_hello(&pki);
    let mut server = TlsSession::server(&pki.acceptor().unwrap()).unwrap();
    server.feed_ciphertext(hello.slice(..10));
    server.feed_eof();
    match server.handshake() {
        Err(Error::Handshake(f)) => assert!(f.reason().contains("unexpected eof"), "{f:?}"),
        other => panic!("expected a handshake error, got {other:?}"),
    }
}

#[test]
fn the_ssl_takes_the_configuration_current_when_the_client_hello_arrives() {
    let pki = Pki::generate(&["localhost"]).unwrap();
    let acceptor = pki.acceptor().unwrap();
    let (mut client, hello) = client_hello(&pki);
    let mut server = TlsSession::server(&acceptor).unwrap();
    server.feed_ciphertext(hello.slice(..20));
    assert!(!server.handshake().unwrap());

    // Replaced while the server waits for the rest of the ClientHello.
    let renewed = pki.issue_server(&["localhost"]).unwrap();
    let builder =
        TlsAcceptor::builder(renewed.chain_pem.as_bytes(), renewed.key_pem.as_bytes()).unwrap();
    acceptor.replace(builder).unwrap();

    server.feed_ciphertext(hello.slice(20..));
    handshake(&mut client, &mut server);
    let served = client.peer_certificate().expect("server certificate");
    let expected = acceptor.certificate().expect("current certificate");
    assert_eq!(served.to_der().unwrap(), expected.to_der().unwrap());
}

#[test]
fn configure_runs_when_the_ssl_is_created_and_its_error_fails_the_handshake() {
    let pki = Pki::generate(&["localhost"]).unwrap();
    let acceptor = pki.acceptor().unwrap();
    let (_client, hello) = client_hello(&pki);
    let mut server = TlsSession::server_with(&acceptor, |_| {
        Err(Error::Config(
            "refused by the per-session configuration".into(),
        ))
    })
    .unwrap();
    server.feed_ciphertext(hello.slice(..5));
    assert!(!server.handshake().unwrap(), "not run yet");
    server.feed_ciphertext(hello.slice(5..));
    for _ in 0..2 {
        match server.handshake() {
            Err(Error::Config(msg)) => assert!(msg.contains("refused"), "{msg}"),
            other => panic!("expected the configure error, got {other:?}"),
        }
    }
}

#[test]
fn configure_sees_the_ssl_before_the_handshake() {
    let pki = Pki::generate(&["localhost"]).unwrap();
    let acceptor = pki.acceptor().unwrap();
    let (mut client, hello) = client_hello(&pki);
    let (tx, rx) = std::sync::mpsc::channel();
    let mut server = TlsSession::server_with(&acceptor, move |ssl| {
        tx.send(ssl.state_string_long().to_owned()).unwrap();
        Ok(())
    })
    .unwrap();
    assert!(rx.try_recv().is_err());
    server.feed_ciphertext(hello);
    handshake(&mut client, &mut server);
    let state = rx.try_recv().expect("configure ran");
    assert!(state.contains("before"), "{state}");
}

#[test]
fn sessions_stay_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<TlsSession>();
}
