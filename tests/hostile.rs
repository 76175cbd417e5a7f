//! Hostile peers against a TLS echo server: each case must end its own connection with a
//! clear error (or cleanly, where the protocol allows), never panic, and leave the loop
//! serving a normal client promptly at the same time. Handshake timeouts are short.
//!
//! The hostile peer is a blocking thread (raw bytes, or a blocking OpenSSL client for
//! cases after the handshake); the server and the normal client share the test's loop.

mod util;

use std::cell::RefCell;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::rc::Rc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use biotls::echo::{EchoEnd, EchoOptions, echo_with};
use biotls::error::{Alert, Timeout, TlsAlert};
use biotls::pki::Pki;
use biotls::tls::{Tls, TlsSession};
use biotls::{Error, Loop, Stream, Tcp, TcpListener};
use openssl::ssl::{SslConnector, SslMethod, SslStream};
use openssl::x509::X509;
use socket2::SockRef;
use util::{run_to_end, run_until};

const LIMIT: Duration = Duration::from_secs(60);
/// A normal client must be served within this, whatever the hostile peer does.
const PROMPT: Duration = Duration::from_secs(2);

/// How the server ended one connection, and when (since the test started).
#[derive(Debug, Clone)]
struct End {
    peer: SocketAddr,
    result: Result<(), Error>,
    at: Duration,
}

struct Setup {
    lp: Loop,
    pki: Pki,
    addr: SocketAddr,
    listener: TcpListener,
    accepted: Rc<RefCell<usize>>,
    ends: Rc<RefCell<Vec<End>>>,
}

/// A TLS echo server (the library's `echo`) whose handles time out their handshake
/// after `handshake_timeout`, recording how every connection ended.
fn setup(handshake_timeout: Duration) -> Setup {
    let pki = Pki::generate(&["localhost"]).unwrap();
    let mut lp = Loop::new().unwrap();
    let listener = TcpListener::bind(&mut lp, "127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr(&lp).unwrap();
    let start = Instant::now();
    let ends: Rc<RefCell<Vec<End>>> = Rc::default();
    let accepted = Rc::new(RefCell::new(0));
    let (acceptor, e, a) = (pki.acceptor().unwrap(), ends.clone(), accepted.clone());
    listener
        .listen(&mut lp, move |lp, _, tcp| {
            let tcp = tcp.unwrap();
            *a.borrow_mut() += 1;
            let peer = tcp.peer_addr(lp).unwrap();
            let tls = Tls::server(lp, tcp, &acceptor).unwrap();
            tls.set_handshake_timeout(lp, Some(handshake_timeout))
                .unwrap();
            let e = e.clone();
            echo_with(lp, tls, EchoOptions::default(), move |_, _, end| {
                e.borrow_mut().push(End {
                    peer,
                    result: match end {
                        EchoEnd::Done => Ok(()),
                        EchoEnd::Failed(err) => Err(err.clone()),
                    },
                    at: start.elapsed(),
                });
            })
            .unwrap();
        })
        .unwrap();
    Setup {
        lp,
        pki,
        addr,
        listener,
        accepted,
        ends,
    }
}

/// A normal client on the loop: writes a line, sends close_notify, expects its echo.
/// Returns its local address and a cell filled with (echo, time taken).
type Normal = Rc<RefCell<Option<(Result<Vec<u8>, Error>, Duration)>>>;

fn normal_client(s: &mut Setup) -> (SocketAddr, Normal) {
    let started = Instant::now();
    let out: Normal = Rc::default();
    let tcp = Tcp::connect(&mut s.lp, s.addr, |_, _, _| {}).unwrap();
    let local = tcp.local_addr(&s.lp).unwrap();
    let tls = Tls::client(&mut s.lp, tcp, &s.pki.connector().unwrap(), "localhost").unwrap();
    tls.write(&mut s.lp, &b"normal client"[..], |_, _, _| {})
        .unwrap();
    tls.shutdown(&mut s.lp, |_, _, _| {}).unwrap();
    let o = out.clone();
    let mut got = Vec::new();
    tls.start_read(&mut s.lp, move |lp, tls, r| {
        let end = match r {
            Ok(Some(b)) => return got.extend_from_slice(&b),
            Ok(None) => Ok(std::mem::take(&mut got)),
            Err(e) => Err(e),
        };
        *o.borrow_mut() = Some((end, started.elapsed()));
        tls.close(lp, |_, _| {});
    })
    .unwrap();
    (local, out)
}

/// Runs one hostile case: starts `hostile` on a thread, waits until the server has
/// accepted `n` connections from it, serves a normal client meanwhile, and returns how
/// the server ended the hostile connections, what the hostile thread reported, and how
/// long the normal client took.
fn run_case<T: Send + 'static>(
    s: &mut Setup,
    n: usize,
    hostile: impl FnOnce(SocketAddr) -> T + Send + 'static,
) -> (Vec<End>, T, Duration) {
    let addr = s.addr;
    let (tx, rx) = mpsc::channel();
    let thread = std::thread::spawn(move || {
        let _ = tx.send(hostile(addr));
    });
    let accepted = s.accepted.clone();
    run_until(&mut s.lp, LIMIT, || *accepted.borrow() >= n);
    let (local, normal) = normal_client(s);
    let ends = s.ends.clone();
    let mut report = None;
    run_until(&mut s.lp, LIMIT, || {
        if report.is_none() {
            report = rx.try_recv().ok();
        }
        normal.borrow().is_some() && report.is_some() && ends.borrow().len() > n
    });
    thread.join().unwrap();
    let (echo, took) = normal.borrow_mut().take().unwrap();
    assert_eq!(echo.unwrap(), b"normal client");
    assert!(took < PROMPT, "the normal client took {took:?}");
    let ends = s.ends.borrow();
    let normal_end = ends.iter().find(|e| e.peer == local).unwrap();
    assert!(normal_end.result.is_ok(), "{normal_end:?}");
    let hostile = ends.iter().filter(|e| e.peer != local).cloned().collect();
    (hostile, report.unwrap(), took)
}

fn finish(mut s: Setup) {
    s.listener.close(&mut s.lp);
    run_to_end(&mut s.lp, LIMIT);
}

/// The only end of a single hostile connection.
fn only(ends: &[End]) -> &End {
    assert_eq!(ends.len(), 1, "{ends:?}");
    &ends[0]
}

/// Reads until EOF or an error; returns the bytes and how it ended.
fn drain(sock: &mut TcpStream) -> (Vec<u8>, String) {
    sock.set_read_timeout(Some(LIMIT)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match sock.read(&mut buf) {
            Ok(0) => return (got, "eof".into()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => return (got, format!("{:?}", e.kind())),
        }
    }
}

/// A real ClientHello for `localhost`, from an in-memory client session.
fn client_hello(pki: &Pki) -> Vec<u8> {
    let mut client = TlsSession::client(&pki.connector().unwrap(), "localhost").unwrap();
    assert!(!client.handshake().unwrap());
    client.take_ciphertext().unwrap().to_vec()
}

/// A blocking OpenSSL client, handshaken, that has had `line` echoed.
fn blocking_client(addr: SocketAddr, ca_pem: &str, line: &[u8]) -> SslStream<TcpStream> {
    let mut b = SslConnector::builder(SslMethod::tls_client()).unwrap();
    b.cert_store_mut()
        .add_cert(X509::from_pem(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let sock = TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(LIMIT)).unwrap();
    let mut tls = b.build().connect("localhost", sock).unwrap();
    tls.write_all(line).unwrap();
    let mut back = vec![0u8; line.len()];
    tls.read_exact(&mut back).unwrap();
    assert_eq!(back, line);
    tls
}

fn assert_handshake_error(end: &End, reason: &str) {
    match &end.result {
        Err(Error::Handshake(f)) => assert!(f.reason().contains(reason), "{reason:?}: {f:?}"),
        Err(e) => panic!("expected a handshake error with {reason:?}, got {e:?}"),
        Ok(()) => panic!("the hostile connection ended cleanly"),
    }
}

#[test]
fn one_mib_of_random_bytes_fails_the_handshake() {
    let mut s = setup(Duration::from_secs(1));
    let (ends, (reply, how), took) = run_case(&mut s, 1, |addr| {
        let mut sock = TcpStream::connect(addr).unwrap();
        let mut x = 0x2545_f491_4f6c_dd1d_u64;
        let junk: Vec<u8> = (0..1 << 20)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        // The server stops reading at the first bad header: the write may fail.
        let _ = sock.write_all(&junk);
        drain(&mut sock)
    });
    let end = only(&ends);
    println!(
        "random bytes: server {:?}; peer got {} bytes then {how}; normal client {took:?}",
        end.result,
        reply.len()
    );
    assert!(matches!(end.result, Err(Error::Handshake(_))), "{end:?}");
    assert!(
        reply.is_empty() || reply[0] == 21,
        "only an alert may come back"
    );
    finish(s);
}

#[test]
fn an_http_request_fails_the_handshake_with_a_clear_reason() {
    let mut s = setup(Duration::from_secs(1));
    let (ends, (reply, how), took) = run_case(&mut s, 1, |addr| {
        let mut sock = TcpStream::connect(addr).unwrap();
        sock.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .unwrap();
        drain(&mut sock)
    });
    let end = only(&ends);
    println!(
        "HTTP request: server {:?}; peer got {} bytes then {how}; normal client {took:?}",
        end.result,
        reply.len()
    );
    assert_handshake_error(end, "http request");
    assert!(
        reply.is_empty() || reply[0] == 21,
        "only an alert may come back"
    );
    finish(s);
}

#[test]
fn a_client_hello_cut_short_then_silence_is_closed_at_the_handshake_timeout() {
    let timeout = Duration::from_millis(1500);
    let mut s = setup(timeout);
    let hello = client_hello(&s.pki);
    let (ends, (how, closed_after), took) = run_case(&mut s, 1, move |addr| {
        let mut sock = TcpStream::connect(addr).unwrap();
        let t = Instant::now();
        sock.write_all(&hello[..hello.len() / 2]).unwrap();
        let (_, how) = drain(&mut sock);
        (how, t.elapsed())
    });
    let end = only(&ends);
    println!(
        "half a ClientHello: server {:?} after {:?}; peer saw {how} after {closed_after:?}; normal client {took:?}",
        end.result, end.at
    );
    assert!(
        matches!(end.result, Err(Error::TimedOut(Timeout::Handshake))),
        "{end:?}"
    );
    assert!(
        closed_after >= timeout - Duration::from_millis(50),
        "{closed_after:?}"
    );
    assert!(closed_after < timeout * 3, "{closed_after:?}");
    assert!(
        took < timeout,
        "the normal client waited for the stalled one"
    );
    finish(s);
}

#[test]
fn five_hundred_stalled_handshakes_do_not_delay_a_normal_client() {
    rlimit::increase_nofile_limit(4096).unwrap();
    const N: usize = 500;
    let timeout = Duration::from_secs(3);
    let mut s = setup(timeout);
    let hello = client_hello(&s.pki);
    let (ends, closed, took) = run_case(&mut s, N, move |addr| {
        let mut socks: Vec<TcpStream> = (0..N)
            .map(|_| {
                let mut sock = TcpStream::connect(addr).unwrap();
                sock.write_all(&hello[..hello.len() / 2]).unwrap();
                sock
            })
            .collect();
        socks
            .iter_mut()
            .map(|s| drain(s).1)
            .filter(|how| how == "eof" || how == "ConnectionReset")
            .count()
    });
    let first = ends.iter().map(|e| e.at).min().unwrap();
    let last = ends.iter().map(|e| e.at).max().unwrap();
    println!(
        "{N} stalled handshakes: all closed between {first:?} and {last:?}; normal client served in {took:?}"
    );
    assert_eq!(closed, N);
    assert_eq!(ends.len(), N);
    assert!(
        ends.iter()
            .all(|e| matches!(e.result, Err(Error::TimedOut(Timeout::Handshake)))),
        "{ends:?}"
    );
    assert!(
        took < timeout,
        "the normal client waited for the stalled ones"
    );
    finish(s);
}

#[test]
fn a_record_header_claiming_a_huge_length_fails_at_once() {
    let mut s = setup(Duration::from_secs(5));
    let (ends, (reply, how), took) = run_case(&mut s, 1, |addr| {
        let mut sock = TcpStream::connect(addr).unwrap();
        // A handshake record of 65535 bytes (the limit is 16 KiB + 256 for this type).
        let mut rec = vec![22, 3, 1, 0xff, 0xff];
        rec.extend_from_slice(&[1u8; 300]);
        sock.write_all(&rec).unwrap();
        drain(&mut sock)
    });
    let end = only(&ends);
    println!(
        "huge record header: server {:?} after {:?}; peer got {} bytes then {how}; normal client {took:?}",
        end.result,
        end.at,
        reply.len()
    );
    assert!(matches!(end.result, Err(Error::Handshake(_))), "{end:?}");
    assert!(end.at < Duration::from_secs(5), "not the timeout: {end:?}");
    finish(s);
}

#[test]
fn a_huge_application_record_header_after_the_handshake_is_a_tls_error() {
    let mut s = setup(Duration::from_secs(5));
    let ca = s.pki.ca_pem.clone();
    let (ends, how, took) = run_case(&mut s, 1, move |addr| {
        let tls = blocking_client(addr, &ca, b"hello");
        let mut sock = tls.get_ref().try_clone().unwrap();
        sock.write_all(&[23, 3, 3, 0xff, 0xff]).unwrap();
        sock.write_all(&[0u8; 1000]).unwrap();
        drain(&mut sock).1
    });
    let end = only(&ends);
    println!(
        "huge application record: server {:?}; peer saw {how}; normal client {took:?}",
        end.result
    );
    match &end.result {
        Err(e @ Error::Tls(_)) => assert_eq!(
            e.alert(),
            Some(TlsAlert::Sent(Alert::RECORD_OVERFLOW)),
            "{e:?}"
        ),
        other => panic!("expected a TLS error, got {other:?}"),
    }
    finish(s);
}

#[test]
fn a_repeated_client_hello_fails_the_handshake() {
    let mut s = setup(Duration::from_secs(5));
    let hello = client_hello(&s.pki);
    let (ends, (reply, how), took) = run_case(&mut s, 1, move |addr| {
        let mut sock = TcpStream::connect(addr).unwrap();
        sock.write_all(&hello).unwrap();
        sock.write_all(&hello).unwrap();
        drain(&mut sock)
    });
    let end = only(&ends);
    println!(
        "repeated ClientHello: server {:?}; peer got {} bytes then {how}; normal client {took:?}",
        end.result,
        reply.len()
    );
    assert!(matches!(end.result, Err(Error::Handshake(_))), "{end:?}");
    assert!(end.at < Duration::from_secs(5), "not the timeout: {end:?}");
    finish(s);
}

#[test]
fn a_tcp_reset_mid_stream_fails_only_that_connection() {
    let mut s = setup(Duration::from_secs(5));
    let ca = s.pki.ca_pem.clone();
    let (ends, (), took) = run_case(&mut s, 1, move |addr| {
        let mut tls = blocking_client(addr, &ca, b"before the reset");
        tls.write_all(&[7u8; 100_000]).unwrap();
        SockRef::from(tls.get_ref())
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(tls); // close with SO_LINGER 0: RST
    });
    let end = only(&ends);
    println!("TCP reset: server {:?}; normal client {took:?}", end.result);
    let e = end.result.as_ref().unwrap_err();
    assert_eq!(
        e.io_kind(),
        Some(std::io::ErrorKind::ConnectionReset),
        "{e:?}"
    );
    finish(s);
}

#[test]
fn the_peer_closing_during_the_handshake_is_a_handshake_error() {
    let mut s = setup(Duration::from_secs(5));
    let hello = client_hello(&s.pki);
    let (ends, how, took) = run_case(&mut s, 1, move |addr| {
        let mut sock = TcpStream::connect(addr).unwrap();
        sock.write_all(&hello[..hello.len() / 2]).unwrap();
        sock.shutdown(Shutdown::Write).unwrap();
        drain(&mut sock).1
    });
    let end = only(&ends);
    println!(
        "close during handshake: server {:?}; peer saw {how}; normal client {took:?}",
        end.result
    );
    assert_handshake_error(end, "unexpected eof");
    finish(s);
}

#[test]
fn data_after_close_notify_is_ignored_and_the_connection_ends_cleanly() {
    let mut s = setup(Duration::from_secs(5));
    let ca = s.pki.ca_pem.clone();
    let (ends, (reply, how), took) = run_case(&mut s, 1, move |addr| {
        let mut tls = blocking_client(addr, &ca, b"last words");
        tls.shutdown().unwrap(); // our close_notify
        let mut sock = tls.get_ref().try_clone().unwrap();
        // Then more: an application-data record header and bytes, and plain text.
        let _ = sock.write_all(&[23, 3, 3, 0, 40]);
        let _ = sock.write_all(&[9u8; 40]);
        let _ = sock.write_all(b"and some plain text after the end\n");
        let mut rest = Vec::new();
        let how = match tls.read_to_end(&mut rest) {
            Ok(_) => "close_notify".to_string(),
            Err(e) => format!("{e}"),
        };
        (rest, how)
    });
    let end = only(&ends);
    println!(
        "data after close_notify: server {:?}; peer got {} more bytes then {how}; normal client {took:?}",
        end.result,
        reply.len()
    );
    assert!(end.result.is_ok(), "{end:?}");
    assert!(
        reply.is_empty(),
        "nothing echoed after close_notify: {reply:?}"
    );
    assert_eq!(how, "close_notify");
    finish(s);
}
