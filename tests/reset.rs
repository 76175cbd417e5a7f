//! A TCP reset (the peer closes with SO_LINGER 0) reaches the reader as
//! `Io(ConnectionReset)`, for a plain `Tcp` and through a `Tls`, also when the handle has
//! writes queued: the kernel reports a reset once, to whichever call comes first, and a
//! write that got it must not leave the reader with a plain end of stream.

mod util;

use std::cell::RefCell;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::rc::Rc;
use std::sync::mpsc;
use std::time::Duration;

use biotls::pki::Pki;
use biotls::tls::Tls;
use biotls::{Error, Loop, ReadResult, Stream, TcpListener, Timer};
use bytes::Bytes;
use openssl::ssl::{SslConnector, SslMethod};
use openssl::x509::X509;
use socket2::SockRef;
use util::{run_to_end, run_until};

const LIMIT: Duration = Duration::from_secs(30);
/// More than loopback's socket buffers on both ends hold, so writes stay queued.
const QUEUED: usize = 32 << 20;

/// What the server side saw: how reading ended, and how its big write ended.
#[derive(Default)]
struct Seen {
    read_end: Option<Result<(), Error>>,
    write: Option<Result<(), Error>>,
    queued_when_reset: usize,
}

/// Collects one connection's reads: once `hello` arrived, notes the write queue's size
/// and signals `go` from a timer, so the reset comes as an event while the loop waits
/// (not as the next read of the read loop in progress); records how reading ended, and
/// closes the handle.
fn reader<S: Stream>(
    seen: Rc<RefCell<Seen>>,
    go: mpsc::Sender<()>,
) -> impl FnMut(&mut Loop, S, ReadResult) + 'static {
    let mut got = 0;
    move |lp, s, r| match r {
        Ok(Some(data)) => {
            got += data.len();
            if got == 5 {
                seen.borrow_mut().queued_when_reset = s.write_queue_size(lp);
                let go = go.clone();
                let timer = Timer::new(lp).unwrap();
                timer
                    .start(lp, Duration::from_millis(1), None, move |lp, timer| {
                        timer.close(lp);
                        let _ = go.send(());
                    })
                    .unwrap();
            }
        }
        end => {
            seen.borrow_mut().read_end = Some(end.map(|_| ()));
            s.close(lp, |_, _| {});
        }
    }
}

/// Sends `hello` on `sock`, waits for `go`, then resets the connection.
fn say_hello_then_reset<T: Read + Write>(mut stream: T, sock: &TcpStream, go: mpsc::Receiver<()>) {
    stream.write_all(b"hello").unwrap();
    go.recv_timeout(LIMIT).unwrap();
    SockRef::from(sock)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(stream); // with SO_LINGER 0: RST
}

fn check(seen: &Seen) {
    assert!(seen.queued_when_reset > 0, "the test needs writes queued");
    match &seen.read_end {
        Some(Err(e)) => assert_eq!(e.io_kind(), Some(ErrorKind::ConnectionReset), "{e:?}"),
        other => panic!("expected Io(ConnectionReset), got {other:?}"),
    }
    // With the error, or cancelled by the close in the read callback.
    assert!(
        matches!(&seen.write, Some(Err(_))),
        "the queued write must fail: {:?}",
        seen.write
    );
}

fn listen(lp: &mut Loop) -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind(lp, "127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr(lp).unwrap();
    (listener, addr)
}

#[test]
fn a_reset_reaches_a_tcp_reader_as_connection_reset_while_writes_are_queued() {
    let mut lp = Loop::new().unwrap();
    let (listener, addr) = listen(&mut lp);
    let (go, wait) = mpsc::channel();
    let seen: Rc<RefCell<Seen>> = Rc::default();
    let s = seen.clone();
    let mut go = Some(go);
    listener
        .listen(&mut lp, move |lp, _, tcp| {
            let tcp = tcp.unwrap();
            let s2 = s.clone();
            tcp.write(lp, Bytes::from(vec![0u8; QUEUED]), move |_, _, r| {
                s2.borrow_mut().write = Some(r);
            })
            .unwrap();
            let go = go.take().unwrap();
            tcp.start_read(lp, reader(s.clone(), go)).unwrap();
        })
        .unwrap();
    let peer = std::thread::spawn(move || {
        let sock = TcpStream::connect(addr).unwrap();
        let stream = sock.try_clone().unwrap();
        say_hello_then_reset(stream, &sock, wait);
    });
    run_until(&mut lp, LIMIT, || {
        let s = seen.borrow();
        s.read_end.is_some() && s.write.is_some()
    });
    peer.join().unwrap();
    check(&seen.borrow());
    listener.close(&mut lp);
    run_to_end(&mut lp, LIMIT);
}

#[test]
fn a_reset_reaches_a_tls_reader_as_connection_reset_not_truncated() {
    let pki = Pki::generate(&["localhost"]).unwrap();
    let mut lp = Loop::new().unwrap();
    let (listener, addr) = listen(&mut lp);
    let (go, wait) = mpsc::channel();
    let seen: Rc<RefCell<Seen>> = Rc::default();
    let (s, acceptor) = (seen.clone(), pki.acceptor().unwrap());
    let mut go = Some(go);
    listener
        .listen(&mut lp, move |lp, _, tcp| {
            let tls = Tls::server(lp, tcp.unwrap(), &acceptor).unwrap();
            let s2 = s.clone();
            tls.write(lp, Bytes::from(vec![0u8; QUEUED]), move |_, _, r| {
                s2.borrow_mut().write = Some(r);
            })
            .unwrap();
            let go = go.take().unwrap();
            tls.start_read(lp, reader(s.clone(), go)).unwrap();
        })
        .unwrap();
    let ca = pki.ca_pem.clone();
    let peer = std::thread::spawn(move || {
        let mut b = SslConnector::builder(SslMethod::tls_client()).unwrap();
        b.cert_store_mut()
            .add_cert(X509::from_pem(ca.as_bytes()).unwrap())
            .unwrap();
        let sock = TcpStream::connect(addr).unwrap();
        sock.set_read_timeout(Some(LIMIT)).unwrap();
        let tls = b
            .build()
            .connect("localhost", sock.try_clone().unwrap())
            .unwrap();
        say_hello_then_reset(tls, &sock, wait);
    });
    run_until(&mut lp, LIMIT, || {
        let s = seen.borrow();
        s.read_end.is_some() && s.write.is_some()
    });
    peer.join().unwrap();
    check(&seen.borrow());
    listener.close(&mut lp);
    run_to_end(&mut lp, LIMIT);
}
