//! Recipes: the tasks users of Node's `tls`, Python's `ssl` or tokio-rustls reach for,
//! each a complete program (compiled and run as a test; the ones that need a server run
//! their own, on loopback or over an in-memory [`Duplex`](crate::Duplex)).
//!
//! - [A TLS client in one call](#a-tls-client-in-one-call)
//! - [A line-protocol server, with partial lines](#a-line-protocol-server-with-partial-lines)
//! - [A producer that respects backpressure](#a-producer-that-respects-backpressure)
//! - [Mutual TLS](#mutual-tls)
//! - [STARTTLS](#starttls)
//! - [Testing a protocol over `Tls<Duplex>`](#testing-a-protocol-over-tlsduplex)
//! - [When a TLS 1.3 server refuses the client's certificate](#when-a-tls-13-server-refuses-the-clients-certificate)
//!
//! # A TLS client in one call
//!
//! [`Tls::connect`](crate::Tls::connect) resolves the name, connects (Happy Eyeballs
//! over IPv6 and IPv4), and handshakes with SNI and verification against the host; its
//! callback runs once with the outcome. Writes made meanwhile are queued.
//!
//! ```
//! use biotls::pki::Pki;
//! use biotls::tls::Tls;
//! use biotls::{Loop, Stream, TcpListener};
//!
//! # fn main() -> biotls::Result<()> {
//! let pki = Pki::generate(&["localhost"])?; // a throw-away CA, for this example
//! let mut lp = Loop::new()?;
//! # let acceptor = pki.acceptor()?;
//! # let listener = TcpListener::bind(&mut lp, "127.0.0.1:0".parse().unwrap())?;
//! # let port = listener.local_addr(&lp)?.port();
//! # listener.listen(&mut lp, move |lp, listener, tcp| {
//! #     let tls = Tls::server(lp, tcp.unwrap(), &acceptor).unwrap();
//! #     biotls::echo::echo(lp, tls, Default::default()).unwrap();
//! #     listener.close(lp);
//! # })?;
//! let tls = Tls::connect(&mut lp, &pki.connector()?, &format!("localhost:{port}"), |lp, tls, r| {
//!     if let Err(e) = r {
//!         eprintln!("could not connect: {e}");
//!         tls.close(lp, |_, _| {});
//!     }
//! })?;
//! tls.write(&mut lp, b"hello\n", |_, _, _| {})?;
//! tls.start_read(&mut lp, |lp, tls, r| {
//!     if let Ok(Some(line)) = r {
//!         assert_eq!(&line[..], b"hello\n");
//!     }
//!     tls.close(lp, |_, _| {});
//! })?;
//! lp.run()?;
//! # Ok(())
//! # }
//! ```
//!
//! # A line-protocol server, with partial lines
//!
//! A read callback gets whatever arrived: part of a line, or several. Keep the partial
//! line in a buffer; bound it, so a peer that never sends a newline cannot grow it.
//! Written against [`Stream`](crate::Stream), the same code serves TCP and TLS.
//!
//! ```
//! use biotls::bytes::BytesMut;
//! use biotls::{Duplex, Loop, Stream};
//!
//! /// Answers each line with its length; ends the connection on a line over 1 KiB.
//! fn serve<S: Stream>(lp: &mut Loop, s: S) -> biotls::Result<()> {
//!     let mut partial = BytesMut::new();
//!     s.start_read(lp, move |lp, s, r| match r {
//!         Ok(Some(data)) => {
//!             partial.extend_from_slice(&data);
//!             while let Some(end) = partial.iter().position(|&b| b == b'\n') {
//!                 let line = partial.split_to(end + 1);
//!                 let reply = format!("{}\n", line.len() - 1);
//!                 let _ = s.write(lp, reply, |_, _, _| {});
//!             }
//!             if partial.len() > 1024 {
//!                 let _ = s.write(lp, b"line too long\n", |_, _, _| {});
//!                 let _ = s.shutdown(lp, |lp, s, _| s.close(lp, |_, _| {}));
//!             }
//!         }
//!         Ok(None) => {
//!             let _ = s.shutdown(lp, |lp, s, _| s.close(lp, |_, _| {}));
//!         }
//!         Err(_) => s.close(lp, |_, _| {}),
//!     })
//! }
//!
//! # fn main() -> biotls::Result<()> {
//! let mut lp = Loop::new()?;
//! let (server, client) = Duplex::pair(&mut lp, 4096)?;
//! serve(&mut lp, server)?;
//! // Lines cut anywhere: "hel", "lo\nwor", "ld!\n".
//! for piece in [&b"hel"[..], b"lo\nwor", b"ld!\n"] {
//!     client.write(&mut lp, piece, |_, _, _| {})?;
//! }
//! client.shutdown(&mut lp, |_, _, _| {})?;
//! let replies = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
//! let r = replies.clone();
//! client.start_read(&mut lp, move |lp, client, got| match got.unwrap() {
//!     Some(data) => r.borrow_mut().extend_from_slice(&data),
//!     None => client.close(lp, |_, _| {}),
//! })?;
//! lp.run()?;
//! assert_eq!(&replies.borrow()[..], b"5\n6\n");
//! # Ok(())
//! # }
//! ```
//!
//! # A producer that respects backpressure
//!
//! `write` never blocks: what the transport cannot take is queued. A producer writes
//! while [`write_queue_size`](crate::Stream::write_queue_size) is under a high-water
//! mark, then waits for [`on_drain`](crate::Stream::on_drain) (Node's `'drain'`). A `Tls`
//! counts its plaintext, its ciphertext and its transport's queue, so the same marks
//! work over TCP and TLS. (A `Tls` encrypts queued plaintext straight away: queueing many
//! slices of one shared `Bytes` costs their full size in ciphertext.)
//!
//! ```
//! use biotls::bytes::Bytes;
//! use biotls::{Duplex, Loop, Stream};
//!
//! fn produce<S: Stream>(lp: &mut Loop, s: S, chunk: Bytes, mut left: usize) {
//!     while left > 0 && s.write_queue_size(lp) < 512 << 10 {
//!         let n = chunk.len().min(left);
//!         if s.write(lp, chunk.slice(..n), |_, _, _| {}).is_err() {
//!             return;
//!         }
//!         left -= n;
//!     }
//!     if left == 0 {
//!         let _ = s.shutdown(lp, |_, _, _| {});
//!     } else {
//!         let _ = s.on_drain(lp, 128 << 10, move |lp, s, r| {
//!             if r.is_ok() {
//!                 produce(lp, s, chunk, left);
//!             }
//!         });
//!     }
//! }
//!
//! # fn main() -> biotls::Result<()> {
//! let mut lp = Loop::new()?;
//! let (tx, rx) = Duplex::pair(&mut lp, 64 << 10)?;
//! produce(&mut lp, tx, Bytes::from(vec![b'x'; 16 << 10]), 4 << 20);
//! let got = std::rc::Rc::new(std::cell::Cell::new(0));
//! let g = got.clone();
//! rx.start_read(&mut lp, move |lp, rx, r| match r.unwrap() {
//!     Some(data) => g.set(g.get() + data.len()),
//!     None => {
//!         rx.close(lp, |_, _| {});
//!         tx.close(lp, |_, _| {});
//!     }
//! })?;
//! lp.run()?;
//! assert_eq!(got.get(), 4 << 20);
//! # Ok(())
//! # }
//! ```
//!
//! # Mutual TLS
//!
//! The server requires a client certificate from its CAs; the client presents one. The
//! server reads who the client is from [`Tls::peer_identity`](crate::Tls::peer_identity).
//!
//! ```
//! use biotls::pki::Pki;
//! use biotls::tls::{Tls, TlsAcceptor, TlsConnector};
//! use biotls::{Duplex, Loop, Stream};
//!
//! # fn main() -> biotls::Result<()> {
//! let pki = Pki::generate(&["localhost"])?;
//! let acceptor = TlsAcceptor::builder(pki.server_chain_pem.as_bytes(), pki.server_key_pem.as_bytes())?
//!     .require_client_cert(pki.ca_pem.as_bytes())?
//!     .build();
//! let connector = TlsConnector::builder()?
//!     .ca_pem(pki.ca_pem.as_bytes())?
//!     .client_cert_pem(pki.client_chain_pem.as_bytes(), pki.client_key_pem.as_bytes())?
//!     .build();
//! let mut lp = Loop::new()?;
//! let (a, b) = Duplex::pair(&mut lp, 64 << 10)?; // or a Tcp from a listener
//! let server = Tls::server(&mut lp, a, &acceptor)?;
//! let client = Tls::client(&mut lp, b, &connector, "localhost")?;
//! server.on_handshake(&mut lp, |lp, server, r| {
//!     r.expect("the client's certificate was accepted");
//!     let who = server.peer_identity(lp).unwrap().expect("a client certificate");
//!     println!("client: {}", who.subject);
//!     server.close(lp, |_, _| {});
//! })?;
//! client.on_handshake(&mut lp, |lp, client, r| {
//!     r.expect("handshake");
//!     client.close(lp, |_, _| {});
//! })?;
//! lp.run()?;
//! # Ok(())
//! # }
//! ```
//!
//! # STARTTLS
//!
//! A protocol that starts in plaintext and upgrades (SMTP, IMAP, XMPP). The server
//! writes its "go ahead" reply, then wraps the stream with
//! [`Tls::server_upgrade`](crate::Tls::server_upgrade), handing over what it read past
//! the command; reading passes to the `Tls` at once, so nothing pipelined in plaintext
//! is ever answered over TLS. `examples/starttls_server.rs` is a complete server;
//! [`Tls::unwrap`](crate::Tls::unwrap) goes back to plaintext.
//!
//! ```
//! use biotls::bytes::BytesMut;
//! use biotls::pki::Pki;
//! use biotls::tls::Tls;
//! use biotls::{Duplex, Loop, Stream};
//!
//! # fn main() -> biotls::Result<()> {
//! let pki = Pki::generate(&["localhost"])?;
//! let (acceptor, connector) = (pki.acceptor()?, pki.connector()?);
//! let mut lp = Loop::new()?;
//! let (server, client) = Duplex::pair(&mut lp, 64 << 10)?;
//!
//! // Server: plaintext until "STARTTLS\n", then TLS; echoes what comes over TLS.
//! let mut line = BytesMut::new();
//! server.start_read(&mut lp, move |lp, server, r| {
//!     line.extend_from_slice(&r.unwrap().unwrap());
//!     if let Some(end) = line.iter().position(|&b| b == b'\n') {
//!         assert_eq!(&line[..end], b"STARTTLS");
//!         server.write(lp, b"OK\n", |_, _, _| {}).unwrap();
//!         let rest = line.split_off(end + 1).freeze();
//!         let tls = Tls::server_upgrade(lp, server, &acceptor, rest).unwrap();
//!         biotls::echo::echo(lp, tls, Default::default()).unwrap();
//!     }
//! })?;
//!
//! // Client: asks, waits for "OK\n", upgrades, then talks TLS.
//! client.write(&mut lp, b"STARTTLS\n", |_, _, _| {})?;
//! let mut reply = BytesMut::new();
//! client.start_read(&mut lp, move |lp, client, r| {
//!     reply.extend_from_slice(&r.unwrap().unwrap());
//!     if reply.len() >= 3 {
//!         assert_eq!(&reply[..3], b"OK\n");
//!         let rest = reply.split_off(3).freeze();
//!         let tls = Tls::client_upgrade(lp, client, &connector, "localhost", rest).unwrap();
//!         tls.write(lp, b"secret", |_, _, _| {}).unwrap();
//!         tls.start_read(lp, |lp, tls, r| {
//!             assert_eq!(&r.unwrap().unwrap()[..], b"secret");
//!             tls.close(lp, |_, _| {});
//!         })
//!         .unwrap();
//!     }
//! })?;
//! lp.run()?;
//! # Ok(())
//! # }
//! ```
//!
//! # Testing a protocol over `Tls<Duplex>`
//!
//! [`Duplex::pair`](crate::Duplex::pair) gives two connected in-memory streams with a
//! bounded buffer each way (what `tokio::io::duplex` gives async code), so a protocol
//! can be tested over real TLS with no sockets, deterministically;
//! [`Duplex::inject_fault`](crate::Duplex::inject_fault) makes the transport misbehave
//! (partial writes, resets, an end of stream without close_notify).
//!
//! ```
//! use biotls::duplex::Fault;
//! use biotls::pki::Pki;
//! use biotls::tls::Tls;
//! use biotls::{Duplex, Error, Loop, Stream};
//!
//! # fn main() -> biotls::Result<()> {
//! let pki = Pki::generate(&["localhost"])?;
//! let mut lp = Loop::new()?;
//! let (a, b) = Duplex::pair(&mut lp, 16 << 10)?;
//! let server = Tls::server(&mut lp, a, &pki.acceptor()?)?;
//! let client = Tls::client(&mut lp, b, &pki.connector()?, "localhost")?;
//! client.write(&mut lp, b"cut short", move |lp, _, r| {
//!     r.unwrap();
//!     // The transport ends with no close_notify: the server must call it truncation.
//!     a.inject_fault(lp, Fault::Eof).unwrap();
//! })?;
//! server.start_read(&mut lp, |lp, server, r| match r {
//!     Ok(Some(data)) => assert_eq!(&data[..], b"cut short"),
//!     Err(Error::Truncated) => server.close(lp, |_, _| {}),
//!     other => panic!("{other:?}"),
//! })?;
//! lp.run_once()?;
//! while server.is_open(&lp) {
//!     lp.run_once()?;
//! }
//! client.close(&mut lp, |_, _| {});
//! lp.run()?;
//! # Ok(())
//! # }
//! ```
//!
//! # When a TLS 1.3 server refuses the client's certificate
//!
//! In TLS 1.3 the client's handshake completes before the server has checked the
//! client's certificate: the client's `on_handshake` gets `Ok`, and the server's refusal
//! arrives as an alert at the client's first read, as [`Error::Tls`](crate::Error::Tls)
//! with the alert received (`certificate_required` without a certificate, `unknown_ca`
//! or `bad_certificate` for one the server does not trust). The server's own handshake
//! callback gets the failure.
//!
//! ```
//! use biotls::error::{Alert, TlsAlert};
//! use biotls::pki::Pki;
//! use biotls::tls::{Tls, TlsAcceptor};
//! use biotls::{Duplex, Loop, Stream};
//!
//! # fn main() -> biotls::Result<()> {
//! let pki = Pki::generate(&["localhost"])?;
//! let acceptor = TlsAcceptor::builder(pki.server_chain_pem.as_bytes(), pki.server_key_pem.as_bytes())?
//!     .require_client_cert(pki.ca_pem.as_bytes())?
//!     .build();
//! let mut lp = Loop::new()?;
//! let (a, b) = Duplex::pair(&mut lp, 64 << 10)?;
//! let server = Tls::server(&mut lp, a, &acceptor)?;
//! let client = Tls::client(&mut lp, b, &pki.connector()?, "localhost")?; // no certificate
//! server.on_handshake(&mut lp, |lp, server, r| {
//!     assert!(r.is_err(), "the server refuses");
//!     server.close(lp, |_, _| {});
//! })?;
//! client.on_handshake(&mut lp, |_, _, r| r.expect("the client's side completes"))?;
//! client.start_read(&mut lp, |lp, client, r| {
//!     let e = r.unwrap_err();
//!     assert_eq!(e.alert(), Some(TlsAlert::Received(Alert::CERTIFICATE_REQUIRED)));
//!     client.close(lp, |_, _| {});
//! })?;
//! lp.run()?;
//! # Ok(())
//! # }
//! ```
