//! Whole connections between a client and a server `TlsSession`, driven against each
//! other in memory (no sockets, no loop): handshake, one line echoed, close_notify both
//! ways, so that the client keeps the sessions it received for resumption.

use biotls::Error;
use biotls::tls::{ReadOutcome, SessionInfo, TlsAcceptor, TlsConnector, TlsSession};
use bytes::BytesMut;
use openssl::x509::X509;

/// Rounds after which the handshake is taken for a livelock.
const MAX_ROUNDS: usize = 100;
/// `read` calls after which a session is taken for spinning.
const MAX_READS: usize = 10_000;

/// How one connection went.
#[derive(Debug)]
pub struct Ended {
    /// The first error the client saw, if any.
    pub client_error: Option<Error>,
    /// The first error the server saw, if any.
    pub server_error: Option<Error>,
    pub client_info: SessionInfo,
    pub server_info: SessionInfo,
    /// The certificate the server presented (for a resumed session: the one it
    /// presented when the session was made).
    pub server_cert: Option<X509>,
    /// The line came back.
    pub echoed: bool,
}

impl Ended {
    /// Panics unless both sides finished without an error and the line was echoed.
    pub fn assert_ok(&self) {
        assert!(
            self.client_error.is_none() && self.server_error.is_none() && self.echoed,
            "{self:#?}"
        );
    }

    /// Whether both sides agree that the session was resumed.
    pub fn resumed(&self) -> bool {
        assert_eq!(
            self.client_info.resumed, self.server_info.resumed,
            "the two sides disagree: {self:#?}"
        );
        self.client_info.resumed
    }
}

/// Moves all pending ciphertext from `from` to `to`; true if anything moved.
pub fn pump(from: &mut TlsSession, to: &mut TlsSession) -> bool {
    match from.take_ciphertext() {
        Some(b) => {
            to.feed_ciphertext(b);
            true
        }
        None => false,
    }
}

/// Drives both handshakes until neither side produces output; records errors.
pub fn handshake(
    client: &mut TlsSession,
    server: &mut TlsSession,
    client_error: &mut Option<Error>,
    server_error: &mut Option<Error>,
) {
    for _ in 0..MAX_ROUNDS {
        if client_error.is_none()
            && let Err(e) = client.handshake()
        {
            *client_error = Some(e);
        }
        if server_error.is_none()
            && let Err(e) = server.handshake()
        {
            *server_error = Some(e);
        }
        let moved = pump(client, server) | pump(server, client);
        if !moved {
            return;
        }
    }
    panic!("handshake: no quiescence after {MAX_ROUNDS} rounds (livelock)");
}

/// Reads until `WantRead` or `Eof`: the plaintext and the outcome, or the error.
pub fn read_all(s: &mut TlsSession) -> Result<(Vec<u8>, ReadOutcome), Error> {
    let mut buf = BytesMut::new();
    for _ in 0..MAX_READS {
        match s.read(&mut buf)? {
            ReadOutcome::Data(_) => {}
            other => return Ok((buf.to_vec(), other)),
        }
    }
    panic!("read_all: read never returned WantRead or Eof");
}

/// One connection from `connector` (as `name`) to `acceptor`, to its end.
pub fn connect(connector: &TlsConnector, acceptor: &TlsAcceptor, name: &str) -> Ended {
    let mut client = TlsSession::client(connector, name).expect("client session");
    let mut server = TlsSession::server(acceptor).expect("server session");
    run(&mut client, &mut server)
}

/// Runs a connection between two new sessions to its end (see [`connect`]).
pub fn run(client: &mut TlsSession, server: &mut TlsSession) -> Ended {
    let (mut client_error, mut server_error) = (None, None);
    handshake(client, server, &mut client_error, &mut server_error);
    let mut echoed = false;
    if client_error.is_none() && client.is_handshake_complete() {
        echoed = echo_line(client, server, &mut client_error, &mut server_error);
    }
    if echoed {
        close(client, server, &mut client_error, &mut server_error);
    }
    Ended {
        client_info: client.info(),
        server_info: server.info(),
        server_cert: client.peer_certificate(),
        client_error,
        server_error,
        echoed,
    }
}

/// The client sends a line, the server echoes it; returns whether it came back. With
/// TLS 1.3 the client also reads the server's tickets here (and a refusal of its
/// certificate).
pub fn echo_line(
    client: &mut TlsSession,
    server: &mut TlsSession,
    client_error: &mut Option<Error>,
    server_error: &mut Option<Error>,
) -> bool {
    const LINE: &[u8] = b"ping\n";
    if let Err(e) = client.write(LINE) {
        *client_error = Some(e);
        return false;
    }
    pump(client, server);
    if server_error.is_none() {
        match read_all(server) {
            Ok((got, _)) if got == LINE => {
                if let Err(e) = server.write(&got) {
                    *server_error = Some(e);
                }
            }
            Ok(_) => {}
            Err(e) => *server_error = Some(e),
        }
    }
    pump(server, client);
    match read_all(client) {
        Ok((got, _)) => got == LINE,
        Err(e) => {
            *client_error = Some(e);
            false
        }
    }
}

/// close_notify both ways (OpenSSL keeps a client session only after a clean close).
fn close(
    client: &mut TlsSession,
    server: &mut TlsSession,
    client_error: &mut Option<Error>,
    server_error: &mut Option<Error>,
) {
    if let Err(e) = client.shutdown() {
        *client_error = Some(e);
        return;
    }
    pump(client, server);
    match read_all(server) {
        Ok((_, ReadOutcome::Eof)) => {}
        Ok(other) => panic!("server: expected close_notify, got {other:?}"),
        Err(e) => *server_error = Some(e),
    }
    if let Err(e) = server.shutdown() {
        *server_error = Some(e);
    }
    pump(server, client);
    match read_all(client) {
        Ok((_, ReadOutcome::Eof)) => {}
        Ok(other) => panic!("client: expected close_notify, got {other:?}"),
        Err(e) => *client_error = Some(e),
    }
}
