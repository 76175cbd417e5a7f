//! The in-process harness used by `benches/throughput.rs` and by `examples/throughput
//! --in-process`: servers on threads of the calling process (a loop with `Tls`/`Tcp`
//! handles, or blocking `SslStream`/`TcpStream` with a thread per connection, CPU from
//! thread clocks), and one loop-based client used against all of them.
#![allow(dead_code)]

use std::cell::{Cell, RefCell};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use biotls::echo::{EchoOptions, echo_with};
use biotls::pki::Pki;
use biotls::tls::{Tls, TlsAcceptor, TlsConnector};
use biotls::{Async, Loop, Stream, Tcp, TcpListener};
use bytes::Bytes;
use cpu_time::ThreadTime;
use openssl::ssl::{Ssl, SslContext, SslStream};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Proto {
    Tls,
    Tcp,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Mode {
    Echo,
    Bulk,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Server {
    Loop,
    Blocking,
}

pub struct Setup {
    /// The certificates behind `acceptor` (servers in other processes load them).
    pub pki: Pki,
    pub acceptor: TlsAcceptor,
    /// Full handshakes only (resumption off), so every arm pays the same handshakes.
    pub connector: TlsConnector,
    /// The same with session resumption, for the resumed-handshake measurement.
    pub resuming: TlsConnector,
}

pub fn setup() -> Setup {
    let pki = Pki::generate(&["localhost"]).expect("generate certificates");
    let mut acceptor = TlsAcceptor::builder(
        pki.server_chain_pem.as_bytes(),
        pki.server_key_pem.as_bytes(),
    )
    .expect("acceptor");
    acceptor
        .context_builder_mut()
        .set_ciphersuites("TLS_AES_128_GCM_SHA256")
        .expect("cipher suite");
    let connector = |resumption: bool| {
        let mut connector = TlsConnector::builder()
            .and_then(|b| b.ca_pem(pki.ca_pem.as_bytes()))
            .expect("connector")
            .session_resumption(resumption);
        connector
            .context_builder_mut()
            .set_ciphersuites("TLS_AES_128_GCM_SHA256")
            .expect("cipher suite");
        connector.build()
    };
    Setup {
        acceptor: acceptor.build(),
        connector: connector(false),
        resuming: connector(true),
        pki,
    }
}

/// Server-side accounting, shared with the server threads.
#[derive(Default)]
pub struct Stats {
    /// CPU nanoseconds of the server's threads: the loop thread stores its running total
    /// after every connection; each blocking thread adds its own when it finishes.
    cpu_ns: AtomicU64,
    /// CPU nanoseconds of a blocking server's accept thread (its running total, stored
    /// after every accept: thread creation is part of the thread-per-connection model).
    accept_ns: AtomicU64,
    /// Connections the server has finished with.
    closed: AtomicUsize,
}

pub fn spawn_named<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> thread::JoinHandle<T> {
    thread::Builder::new()
        .name(name.to_string())
        .spawn(f)
        .expect("spawn thread")
}

/// A running server: its address, its accounting, and how to stop it.
pub struct Running {
    pub addr: SocketAddr,
    stats: Arc<Stats>,
    join: Option<thread::JoinHandle<()>>,
    stop: Option<Box<dyn FnOnce() + Send>>,
}

impl Running {
    pub fn start(setup: &Setup, server: Server, proto: Proto, mode: Mode) -> Running {
        match server {
            Server::Loop => start_loop_server(proto, mode, setup.acceptor.clone()),
            Server::Blocking => {
                start_blocking_server(proto, mode, setup.acceptor.context().clone())
            }
        }
    }

    /// Server CPU time so far, once `connections` connections have been finished with
    /// (waits up to 10 s for the server to account for the last ones).
    pub fn cpu_after(&self, connections: usize) -> Duration {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.stats.closed.load(Ordering::Acquire) < connections && Instant::now() < deadline {
            thread::sleep(Duration::from_micros(100));
        }
        Duration::from_nanos(
            self.stats.cpu_ns.load(Ordering::Acquire)
                + self.stats.accept_ns.load(Ordering::Acquire),
        )
    }

    /// Stops the server and waits for its threads.
    pub fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            stop();
        }
        if let Some(join) = self.join.take() {
            join.join().expect("server thread");
        }
    }
}

fn thread_cpu_ns() -> u64 {
    ThreadTime::now().as_duration().as_nanos() as u64
}

fn start_loop_server(proto: Proto, mode: Mode, acceptor: TlsAcceptor) -> Running {
    let stats: Arc<Stats> = Arc::default();
    let (tx, rx) = std::sync::mpsc::channel();
    let st = Arc::clone(&stats);
    let join = spawn_named("loop-server", move || {
        let mut lp = Loop::new().expect("loop");
        let listener = TcpListener::bind(&mut lp, "127.0.0.1:0".parse().unwrap()).expect("bind");
        let (_stop, sender) = Async::new(&mut lp, move |lp, a| {
            listener.close(lp);
            a.close(lp);
        })
        .expect("async");
        tx.send((listener.local_addr(&lp).expect("addr"), sender))
            .ok();
        listener
            .listen(&mut lp, move |lp, _, accepted| {
                let Ok(tcp) = accepted else { return };
                let _ = tcp.set_nodelay(lp, true);
                let st = Arc::clone(&st);
                let on_close = move || {
                    st.cpu_ns.store(thread_cpu_ns(), Ordering::Release);
                    st.closed.fetch_add(1, Ordering::AcqRel);
                };
                match proto {
                    Proto::Tcp => serve(lp, tcp, mode, on_close),
                    Proto::Tls => match Tls::server(lp, tcp, &acceptor) {
                        Ok(tls) => serve(lp, tls, mode, on_close),
                        Err(e) => eprintln!("server: {e}"),
                    },
                }
            })
            .expect("listen");
        lp.run().expect("run");
    });
    let (addr, sender) = rx.recv().expect("server started");
    Running {
        addr,
        stats,
        join: Some(join),
        stop: Some(Box::new(move || {
            let _ = sender.send();
        })),
    }
}

fn serve<S: Stream>(lp: &mut Loop, s: S, mode: Mode, on_close: impl FnOnce() + 'static) {
    match mode {
        Mode::Echo => {
            let _ = echo_with(lp, s, EchoOptions::default(), move |_, _, _| on_close());
        }
        Mode::Bulk => {
            let mut on_close = Some(on_close);
            let _ = s.start_read(lp, move |lp, s, r| {
                if matches!(r, Ok(Some(_))) {
                    return;
                }
                if let Some(f) = on_close.take() {
                    f();
                }
                match r {
                    Ok(_) => {
                        let _ = s.shutdown(lp, |lp, s, _| s.close(lp, |_, _| {}));
                    }
                    Err(_) => s.close(lp, |_, _| {}),
                }
            });
        }
    }
}

fn start_blocking_server(proto: Proto, mode: Mode, ctx: SslContext) -> Running {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    start_blocking_server_on(listener, proto, mode, ctx)
}

/// The blocking server (an accept thread, then a thread per connection) on `listener`.
pub fn start_blocking_server_on(
    listener: std::net::TcpListener,
    proto: Proto,
    mode: Mode,
    ctx: SslContext,
) -> Running {
    let stats: Arc<Stats> = Arc::default();
    let addr = listener.local_addr().expect("addr");
    let st = Arc::clone(&stats);
    let stopping = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop_flag = Arc::clone(&stopping);
    let join = spawn_named("accept", move || {
        let mut workers = Vec::new();
        for conn in listener.incoming() {
            if stop_flag.load(Ordering::Acquire) {
                break;
            }
            let Ok(tcp) = conn else { continue };
            let conn_st = Arc::clone(&st);
            let ctx = ctx.clone();
            workers.push(spawn_named("blocking-conn", move || {
                let st = conn_st;
                let start = ThreadTime::now();
                let _ = tcp.set_nodelay(true);
                match proto {
                    Proto::Tcp => blocking_serve(tcp, mode),
                    Proto::Tls => {
                        if let Ok(Ok(s)) = Ssl::new(&ctx).map(|ssl| ssl.accept(tcp)) {
                            blocking_serve(SslIo(s), mode);
                        }
                    }
                }
                st.cpu_ns
                    .fetch_add(start.elapsed().as_nanos() as u64, Ordering::AcqRel);
                st.closed.fetch_add(1, Ordering::AcqRel);
            }));
            st.accept_ns.store(thread_cpu_ns(), Ordering::Release);
        }
        for w in workers {
            let _ = w.join();
        }
    });
    Running {
        addr,
        stats,
        join: Some(join),
        stop: Some(Box::new(move || {
            // Wake the accept loop, which then sees the flag.
            stopping.store(true, Ordering::Release);
            let _ = std::net::TcpStream::connect(addr);
        })),
    }
}

/// `SslStream` with `Read`/`Write` that treat a close_notify as EOF.
pub struct SslIo(SslStream<std::net::TcpStream>);

impl Read for SslIo {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self.0.ssl_read(buf) {
            Ok(n) => Ok(n),
            Err(e) if e.code() == openssl::ssl::ErrorCode::ZERO_RETURN => Ok(0),
            Err(e) => Err(std::io::Error::other(e)),
        }
    }
}

impl Write for SslIo {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.ssl_write(buf).map_err(std::io::Error::other)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub trait Finish {
    fn finish(&mut self);
}
impl Finish for std::net::TcpStream {
    fn finish(&mut self) {
        let _ = self.shutdown(std::net::Shutdown::Write);
    }
}
impl Finish for SslIo {
    fn finish(&mut self) {
        let _ = self.0.shutdown();
    }
}

pub fn blocking_serve<T: Read + Write + Finish>(mut s: T, mode: Mode) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if mode == Mode::Echo && s.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
    s.finish();
}

/// The client: `conns` connections on one loop, each writing `per_conn` bytes in
/// `size`-byte writes with at most `window` bytes queued, and (echo) reading them back.
/// Returns the wall time from first connect to the last connection's end.
pub fn run_client(
    proto: Proto,
    mode: Mode,
    addr: SocketAddr,
    connector: TlsConnector,
    conns: usize,
    per_conn: u64,
    size: usize,
) -> Duration {
    spawn_named("client", move || {
        let mut lp = Loop::new().expect("loop");
        let chunk = Bytes::from(vec![0x5a; size]);
        let window = (4 * size).max(256 * 1024);
        let done = Rc::new(Cell::new(0usize));
        let failed = Rc::new(RefCell::new(None));
        let start = Instant::now();
        for _ in 0..conns {
            let tcp = Tcp::connect(&mut lp, addr, |_, _, _| {}).expect("connect");
            let _ = tcp.set_nodelay(&lp, true);
            let (d, f) = (done.clone(), failed.clone());
            match proto {
                Proto::Tcp => drive(&mut lp, tcp, mode, chunk.clone(), per_conn, window, d, f),
                Proto::Tls => {
                    let tls = Tls::client(&mut lp, tcp, &connector, "localhost").expect("tls");
                    drive(&mut lp, tls, mode, chunk.clone(), per_conn, window, d, f)
                }
            }
        }
        while done.get() < conns {
            if let Some(e) = failed.borrow_mut().take() {
                panic!("client: {e}");
            }
            lp.run_once().expect("run");
        }
        let elapsed = start.elapsed();
        lp.run().ok();
        elapsed
    })
    .join()
    .expect("client thread")
}

struct Flow {
    chunk: Bytes,
    left: u64,
    window: usize,
    expect: u64,
    finished_writing: bool,
}

/// Writes while the queue is under the window, then shuts down; reads until EOF.
#[allow(clippy::too_many_arguments)]
fn drive<S: Stream>(
    lp: &mut Loop,
    s: S,
    mode: Mode,
    chunk: Bytes,
    per_conn: u64,
    window: usize,
    done: Rc<Cell<usize>>,
    failed: Rc<RefCell<Option<biotls::Error>>>,
) {
    let flow = Rc::new(RefCell::new(Flow {
        chunk,
        left: per_conn,
        window,
        expect: if mode == Mode::Echo { per_conn } else { 0 },
        finished_writing: false,
    }));
    fill(lp, s, &flow, &failed);
    let f2 = failed.clone();
    let received = Rc::new(Cell::new(0u64));
    let _ = s.start_read(lp, move |lp, s, r| match r {
        Ok(Some(b)) => received.set(received.get() + b.len() as u64),
        Ok(None) => {
            if received.get() != flow.borrow().expect {
                *f2.borrow_mut() = Some(biotls::Error::InvalidState("short echo"));
            }
            done.set(done.get() + 1);
            s.close(lp, |_, _| {});
        }
        Err(e) => {
            *f2.borrow_mut() = Some(e);
            s.close(lp, |_, _| {});
        }
    });
}

fn fill<S: Stream>(
    lp: &mut Loop,
    s: S,
    flow: &Rc<RefCell<Flow>>,
    failed: &Rc<RefCell<Option<biotls::Error>>>,
) {
    loop {
        let mut f = flow.borrow_mut();
        if f.finished_writing {
            return;
        }
        if f.left == 0 {
            f.finished_writing = true;
            drop(f);
            let _ = s.shutdown(lp, |_, _, _| {});
            return;
        }
        if s.write_queue_size(lp) >= f.window {
            return;
        }
        let n = (f.chunk.len() as u64).min(f.left) as usize;
        let data = f.chunk.slice(..n);
        f.left -= n as u64;
        drop(f);
        let (fl, fa) = (flow.clone(), failed.clone());
        let r = s.write(lp, data, move |lp, s, r| match r {
            Ok(()) => fill(lp, s, &fl, &fa),
            Err(e) => {
                fa.borrow_mut().get_or_insert(e);
            }
        });
        if let Err(e) = r {
            failed.borrow_mut().get_or_insert(e);
            return;
        }
    }
}
