//! `Pipe` (Unix-domain stream) handles: the `Stream` contract as over TCP, and TLS over
//! a `Pipe` with nothing but the `Stream` interface.

mod util;

use std::cell::{Cell, RefCell};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use biotls::echo::{EchoOptions, echo};
use biotls::pki::Pki;
use biotls::tls::Tls;
use biotls::{Error, Loop, Pipe, PipeListener, Stream};
use bytes::Bytes;
use util::{pattern, run_to_end, run_until};

const LIMIT: Duration = Duration::from_secs(60);

/// A socket path in the temp dir, removed before use and on drop.
struct SockPath(PathBuf);

impl SockPath {
    fn new(tag: &str) -> SockPath {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("biotls-pipe-{}-{tag}-{n}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        SockPath(path)
    }
}

impl Drop for SockPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Sends `total` bytes of a pattern through `stream` to an echo, in 1 MiB writes, then
/// shuts down; returns (bytes echoed intact, clean EOF seen).
fn echo_client<S: Stream>(
    lp: &mut Loop,
    stream: S,
    total: usize,
) -> (Rc<Cell<usize>>, Rc<Cell<bool>>) {
    const CHUNK: usize = 1 << 20;
    for i in 0..total.div_ceil(CHUNK) {
        let len = CHUNK.min(total - i * CHUNK);
        let chunk = Bytes::from(pattern(5, (i * CHUNK) as u64, len));
        stream.write(lp, chunk, |_, _, r| r.unwrap()).unwrap();
    }
    assert!(stream.write_queue_size(lp) > 0);
    stream.shutdown(lp, |_, _, r| r.unwrap()).unwrap();
    let (got, eof) = (Rc::new(Cell::new(0)), Rc::new(Cell::new(false)));
    let (g, e) = (got.clone(), eof.clone());
    stream
        .start_read(lp, move |lp, s, r| match r.unwrap() {
            Some(b) => {
                let at = g.get();
                assert!(
                    b[..] == pattern(5, at as u64, b.len())[..],
                    "corrupt at {at}"
                );
                g.set(at + b.len());
            }
            None => {
                e.set(true);
                s.close(lp, |_, _| {});
            }
        })
        .unwrap();
    (got, eof)
}

#[test]
fn a_pipe_listener_echoes_eight_mib_and_ends_with_a_clean_eof() {
    let path = SockPath::new("echo");
    let mut lp = Loop::new().unwrap();
    let listener = PipeListener::bind(&mut lp, &path.0).unwrap();
    assert_eq!(listener.local_path(&lp).unwrap(), path.0);
    listener
        .listen(&mut lp, |lp, _, accepted| {
            echo(lp, accepted.unwrap(), EchoOptions::default()).unwrap();
        })
        .unwrap();
    let connected = Rc::new(Cell::new(false));
    let c = connected.clone();
    let pipe = Pipe::connect(&mut lp, &path.0, move |_, _, r| {
        r.unwrap();
        c.set(true);
    })
    .unwrap();
    assert!(!connected.get(), "connect callback ran inside connect");
    assert!(format!("{pipe}").starts_with("pipe#"));
    let (got, eof) = echo_client(&mut lp, pipe, 8 << 20);
    run_until(&mut lp, LIMIT, || eof.get());
    assert!(connected.get());
    assert_eq!(got.get(), 8 << 20);
    assert!(!pipe.is_open(&lp));
    listener.close(&mut lp);
    run_to_end(&mut lp, LIMIT);
}

#[test]
fn connecting_to_a_missing_path_fails_in_the_callback() {
    let path = SockPath::new("missing");
    let mut lp = Loop::new().unwrap();
    let events = Rc::new(RefCell::new(Vec::new()));
    let e = events.clone();
    let pipe = Pipe::connect(&mut lp, &path.0, move |_, _, res| {
        e.borrow_mut()
            .push(format!("connect {:?}", res.unwrap_err().io_kind()));
    })
    .unwrap();
    // The failure is known inside `connect`, but as for one found later, a write made
    // before the connect callback ran queues and fails after it, with its error.
    let e = events.clone();
    pipe.write(&mut lp, &b"x"[..], move |_, _, res| {
        e.borrow_mut()
            .push(format!("write {:?}", res.unwrap_err().io_kind()));
    })
    .unwrap();
    assert!(events.borrow().is_empty());
    run_to_end(&mut lp, LIMIT);
    assert_eq!(
        *events.borrow(),
        ["connect Some(NotFound)", "write Some(NotFound)"]
    );
    // From then on the stream is broken: writes are refused with the connect's error.
    let refused = pipe.write(&mut lp, &b"x"[..], |_, _, _| panic!("write callback ran"));
    assert_eq!(
        refused.unwrap_err().io_kind(),
        Some(std::io::ErrorKind::NotFound)
    );
    pipe.close(&mut lp, |_, _| {});
    run_to_end(&mut lp, LIMIT);
}

#[test]
fn a_pipe_pair_carries_data_both_ways_and_close_cancels_writes() {
    let mut lp = Loop::new().unwrap();
    let (a, b) = Pipe::pair(&mut lp).unwrap();
    echo(&mut lp, b, EchoOptions::default()).unwrap();
    let (got, eof) = echo_client(&mut lp, a, 300_000);
    run_until(&mut lp, LIMIT, || eof.get());
    assert_eq!(got.get(), 300_000);

    let (c, d) = Pipe::pair(&mut lp).unwrap();
    // Far more than the socket buffers hold: most of it is still queued at close.
    let cancelled = Rc::new(Cell::new(false));
    let k = cancelled.clone();
    c.write(&mut lp, vec![0u8; 64 << 20], move |_, _, r| {
        k.set(matches!(r, Err(Error::Cancelled)));
    })
    .unwrap();
    c.close(&mut lp, |_, _| {});
    d.close(&mut lp, |_, _| {});
    run_to_end(&mut lp, LIMIT);
    assert!(cancelled.get());
    assert!(matches!(
        c.write(&mut lp, &b"x"[..], |_, _, _| {}),
        Err(Error::Closed)
    ));
}

#[test]
fn tls_runs_over_a_pipe_and_resumes_its_session() {
    let pki = Pki::generate(&["localhost"]).unwrap();
    let acceptor = pki.acceptor().unwrap();
    let connector = pki.connector().unwrap();
    let path = SockPath::new("tls");
    let mut lp = Loop::new().unwrap();
    let listener = PipeListener::bind(&mut lp, &path.0).unwrap();
    let resumed = Rc::new(RefCell::new(Vec::new()));
    let r = resumed.clone();
    listener
        .listen(&mut lp, move |lp, _, accepted| {
            let tls: Tls<Pipe> = Tls::server(lp, accepted.unwrap(), &acceptor).unwrap();
            let r = r.clone();
            tls.on_handshake(lp, move |lp, tls, res| {
                res.unwrap();
                r.borrow_mut().push(tls.is_resumed(lp));
            })
            .unwrap();
            echo(lp, tls, EchoOptions::default()).unwrap();
        })
        .unwrap();
    for total in [4 << 20, 1000] {
        let pipe = Pipe::connect(&mut lp, &path.0, |_, _, r| r.unwrap()).unwrap();
        let tls = Tls::client(&mut lp, pipe, &connector, "localhost").unwrap();
        let (got, eof) = echo_client(&mut lp, tls, total);
        run_until(&mut lp, LIMIT, || eof.get());
        assert_eq!(got.get(), total);
    }
    listener.close(&mut lp);
    run_to_end(&mut lp, LIMIT);
    assert_eq!(*resumed.borrow(), [false, true]);
}
