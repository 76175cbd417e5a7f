//! The load client: one thread, `mio` directly (not this crate's `Loop`), and a sans-IO
//! `TlsSession` per connection (or plain TCP for the floor).
//!
//! Every application write of `size` bytes is one `SSL_write` (one TLS record up to
//! 16 KiB, several for larger writes) and its ciphertext one `write` to the socket, as a
//! blocking client would do it; reads take what the socket holds (up to 256 KiB) and
//! decrypt it all. Each connection keeps at most `window` plaintext bytes sent and not
//! yet echoed. Every echoed byte is compared with what was sent; the negotiated protocol
//! and cipher suite are checked on every connection; a connection that fails, or a phase
//! that does not finish before its deadline, fails the run with the reason.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use biotls::bytes::{Bytes, BytesMut};
use biotls::tls::{ReadOutcome, TlsConnector, TlsSession};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

/// The byte at stream offset `i` is `i % PERIOD`: echoed data is checked against it.
const PERIOD: usize = 251;
/// Largest socket read.
const READ_CHUNK: usize = 256 * 1024;
/// The largest write size the pattern covers.
const MAX_WRITE: usize = 16 << 20;

fn pattern() -> &'static [u8] {
    static PATTERN: OnceLock<Vec<u8>> = OnceLock::new();
    PATTERN.get_or_init(|| {
        (0..MAX_WRITE + PERIOD)
            .map(|i| (i % PERIOD) as u8)
            .collect()
    })
}

/// `len` bytes of the stream starting at offset `at`.
fn stream_bytes(at: u64, len: usize) -> &'static [u8] {
    let start = (at % PERIOD as u64) as usize;
    &pattern()[start..start + len]
}

/// How connections reach the server.
#[derive(Clone)]
pub enum Proto {
    Tcp,
    Tls(TlsConnector),
}

/// What a connection does once its handshake (or TCP connect) is complete.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Plan {
    /// Echo one byte (so that the server has finished its side of the handshake), then
    /// wait for the next phase.
    Hold,
    /// Close at once (close_notify), read to the server's, and go.
    Cycle,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    Connecting,
    Handshaking,
    /// Writing up to `target` and reading it back.
    Echoing,
    /// Our end of stream sent (or to be sent once the output drains); reading to the
    /// server's.
    Closing,
    Closed,
}

struct Conn {
    sock: TcpStream,
    tls: Option<TlsSession>,
    state: State,
    plan: Plan,
    /// Plaintext offsets: written so far, to write in this phase, echoed so far.
    written: u64,
    target: u64,
    received: u64,
    /// Output not yet taken by the socket (ciphertext, or plaintext for TCP).
    out: VecDeque<Bytes>,
    out_len: usize,
    /// Application write size and window for this phase.
    size: usize,
    window: u64,
    eof_out: bool,
    eof_in: bool,
}

/// A set of connections to one server, driven phase by phase.
pub struct Fleet {
    poll: Poll,
    events: Events,
    conns: Vec<Option<Conn>>,
    addr: SocketAddr,
    proto: Proto,
    rbuf: Vec<u8>,
    plain: BytesMut,
    deadline: Duration,
    /// Connections completed by `cycle`.
    cycled: usize,
    /// Handshakes that resumed a session.
    pub resumed: usize,
}

fn err(msg: impl Into<String>) -> io::Error {
    io::Error::other(msg.into())
}

impl Fleet {
    /// An empty fleet; every phase must finish within `deadline`.
    pub fn new(addr: SocketAddr, proto: Proto, deadline: Duration) -> io::Result<Fleet> {
        Ok(Fleet {
            poll: Poll::new()?,
            events: Events::with_capacity(1024),
            conns: Vec::new(),
            addr,
            proto,
            rbuf: vec![0u8; READ_CHUNK],
            plain: BytesMut::with_capacity(64 * 1024),
            deadline,
            cycled: 0,
            resumed: 0,
        })
    }

    pub fn len(&self) -> usize {
        self.conns.iter().filter(|c| c.is_some()).count()
    }

    fn open(&mut self, plan: Plan) -> io::Result<()> {
        let sock = TcpStream::connect(self.addr)?;
        let tls = match &self.proto {
            Proto::Tcp => None,
            Proto::Tls(connector) => Some(
                TlsSession::client(connector, "localhost")
                    .map_err(|e| err(format!("client session: {e}")))?,
            ),
        };
        // Reuse a free slot so that cycling connections keeps the table small.
        let slot = match self.conns.iter().position(Option::is_none) {
            Some(i) => i,
            None => {
                self.conns.push(None);
                self.conns.len() - 1
            }
        };
        let mut conn = Conn {
            sock,
            tls,
            state: State::Connecting,
            plan,
            written: 0,
            target: if plan == Plan::Hold { 1 } else { 0 },
            received: 0,
            out: VecDeque::new(),
            out_len: 0,
            size: 1,
            window: 1,
            eof_out: false,
            eof_in: false,
        };
        self.poll.registry().register(
            &mut conn.sock,
            Token(slot),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        self.conns[slot] = Some(conn);
        Ok(())
    }

    /// Opens `n` connections, at most `parallel` at a time in the handshake, each
    /// completing its handshake and echoing one byte; they stay open. Returns the time
    /// taken.
    pub fn establish(&mut self, n: usize, parallel: usize) -> io::Result<Duration> {
        let start = Instant::now();
        let base = self.len();
        let mut opened = 0;
        let established = |c: &Conn| c.state == State::Echoing && c.received == c.target;
        loop {
            let in_progress = self
                .conns
                .iter()
                .flatten()
                .filter(|c| !established(c))
                .count();
            for _ in in_progress..parallel.max(1) {
                if opened == n {
                    break;
                }
                self.open(Plan::Hold)?;
                opened += 1;
            }
            let done = self
                .conns
                .iter()
                .flatten()
                .filter(|c| established(c))
                .count();
            if opened == n && done == base + n {
                return Ok(start.elapsed());
            }
            self.turn(start, "establishing connections")?;
        }
    }

    /// Full handshakes, `count` in all, at most `parallel` at a time: each connection
    /// completes its handshake, sends close_notify, reads the server's and closes.
    pub fn cycle(&mut self, count: usize, parallel: usize) -> io::Result<Duration> {
        let start = Instant::now();
        self.cycled = 0;
        let mut opened = 0;
        while self.cycled < count {
            while opened < count && self.len() < parallel.max(1) {
                self.open(Plan::Cycle)?;
                opened += 1;
            }
            self.turn(start, "handshake cycle")?;
        }
        Ok(start.elapsed())
    }

    /// Every connection writes `bytes` more in `size`-byte writes, at most `window`
    /// ahead of what has come back, and reads the echo. Returns the time taken.
    pub fn echo(&mut self, bytes: u64, size: usize, window: u64) -> io::Result<Duration> {
        assert!(size > 0 && size <= MAX_WRITE, "write size out of range");
        let start = Instant::now();
        for slot in 0..self.conns.len() {
            if let Some(c) = self.conns[slot].as_mut() {
                if c.state != State::Echoing {
                    return Err(err("echo on a connection that is not established"));
                }
                c.target += bytes;
                c.size = size;
                c.window = window.max(size as u64);
            }
            self.drive(slot)?;
        }
        while self.conns.iter().flatten().any(|c| c.received < c.target) {
            self.turn(start, "echo")?;
        }
        Ok(start.elapsed())
    }

    /// Ends every connection: our end of stream, then reading to the server's (for TLS:
    /// its close_notify, a truncation is an error). Returns the time taken.
    pub fn close(&mut self) -> io::Result<Duration> {
        let start = Instant::now();
        for slot in 0..self.conns.len() {
            if let Some(c) = self.conns[slot].as_mut() {
                c.state = State::Closing;
            }
            self.drive(slot)?;
        }
        while self.len() > 0 {
            self.turn(start, "close")?;
        }
        Ok(start.elapsed())
    }

    /// One poll and the events it brings; fails past the deadline.
    fn turn(&mut self, start: Instant, what: &str) -> io::Result<()> {
        let left = self.deadline.saturating_sub(start.elapsed());
        if left.is_zero() {
            let states: Vec<String> = self
                .conns
                .iter()
                .flatten()
                .take(3)
                .map(|c| {
                    format!(
                        "{:?} written {} of {} echoed {}",
                        c.state, c.written, c.target, c.received
                    )
                })
                .collect();
            return Err(err(format!(
                "{what}: no end after {:?} ({} connections open; {})",
                self.deadline,
                self.len(),
                states.join("; ")
            )));
        }
        self.poll
            .poll(&mut self.events, Some(left.min(Duration::from_millis(500))))?;
        let tokens: Vec<usize> = self.events.iter().map(|e| e.token().0).collect();
        for slot in tokens {
            self.drive(slot)?;
        }
        Ok(())
    }

    /// Moves one connection forward as far as its socket allows.
    fn drive(&mut self, slot: usize) -> io::Result<()> {
        let Some(mut c) = self.conns.get_mut(slot).and_then(Option::take) else {
            return Ok(());
        };
        let result = self.step(&mut c);
        match result {
            Ok(()) if c.state == State::Closed => {
                let _ = self.poll.registry().deregister(&mut c.sock);
                if c.plan == Plan::Cycle {
                    self.cycled += 1;
                }
                Ok(())
            }
            Ok(()) => {
                self.conns[slot] = Some(c);
                Ok(())
            }
            Err(e) => Err(err(format!(
                "connection to {} ({:?}, written {}, echoed {}): {e}",
                self.addr, c.state, c.written, c.received
            ))),
        }
    }

    fn step(&mut self, c: &mut Conn) -> io::Result<()> {
        if c.state == State::Connecting {
            match c.sock.peer_addr() {
                Ok(_) => {
                    c.sock.set_nodelay(true)?;
                    c.state = if c.tls.is_some() {
                        State::Handshaking
                    } else {
                        State::Echoing
                    };
                }
                Err(e) if e.kind() == io::ErrorKind::NotConnected => {
                    if let Some(e) = c.sock.take_error()? {
                        return Err(e);
                    }
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        }
        loop {
            let before = (c.written, c.received, c.out_len, c.state, c.eof_in);
            self.read_socket(c)?;
            self.process_input(c)?;
            self.produce_output(c)?;
            flush(c)?;
            if c.state == State::Closed {
                return Ok(());
            }
            if before == (c.written, c.received, c.out_len, c.state, c.eof_in) {
                return Ok(());
            }
        }
    }

    fn read_socket(&mut self, c: &mut Conn) -> io::Result<()> {
        while !c.eof_in {
            match c.sock.read(&mut self.rbuf) {
                Ok(0) => {
                    c.eof_in = true;
                    match &mut c.tls {
                        Some(tls) => tls.feed_eof(),
                        None => {
                            if c.state != State::Closing || c.received < c.target {
                                return Err(err("the server closed the connection early"));
                            }
                        }
                    }
                }
                Ok(n) => {
                    let data = &self.rbuf[..n];
                    match &mut c.tls {
                        Some(tls) => tls.feed_ciphertext(Bytes::copy_from_slice(data)),
                        None => check_echo(c.received, c.written, data).map(|()| {
                            c.received += n as u64;
                        })?,
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn process_input(&mut self, c: &mut Conn) -> io::Result<()> {
        let Some(tls) = &mut c.tls else {
            if c.eof_in && c.state == State::Closing && c.eof_out {
                c.state = State::Closed;
            }
            return Ok(());
        };
        if c.state == State::Handshaking {
            if !tls
                .handshake()
                .map_err(|e| err(format!("handshake: {e}")))?
            {
                return Ok(());
            }
            let info = tls.info();
            if info.version != "TLSv1.3" || info.cipher.as_deref() != Some("TLS_AES_128_GCM_SHA256")
            {
                return Err(err(format!(
                    "negotiated {} {:?}, expected TLSv1.3 TLS_AES_128_GCM_SHA256",
                    info.version, info.cipher
                )));
            }
            if info.resumed {
                self.resumed += 1;
            }
            c.state = match c.plan {
                Plan::Hold => State::Echoing,
                Plan::Cycle => State::Closing,
            };
        }
        loop {
            self.plain.clear();
            match tls.read(&mut self.plain) {
                Ok(ReadOutcome::Data(n)) => {
                    check_echo(c.received, c.written, &self.plain)?;
                    c.received += n as u64;
                }
                Ok(ReadOutcome::WantRead) => {
                    if c.eof_in {
                        return Err(err("end of stream before the server's close_notify"));
                    }
                    return Ok(());
                }
                Ok(ReadOutcome::Eof) => {
                    if c.state != State::Closing || c.received < c.target {
                        return Err(err("the server sent close_notify early"));
                    }
                    if c.out_len == 0 && c.eof_out {
                        c.state = State::Closed;
                    }
                    return Ok(());
                }
                Err(e) => return Err(err(format!("read: {e}"))),
            }
        }
    }

    fn produce_output(&mut self, c: &mut Conn) -> io::Result<()> {
        if matches!(c.state, State::Echoing | State::Closing) {
            // Keep the socket fed with at most one write's output waiting.
            while c.written < c.target
                && c.written - c.received < c.window
                && c.out_len < c.size.max(64 * 1024)
            {
                let n = (c.target - c.written).min(c.size as u64) as usize;
                let data = stream_bytes(c.written, n);
                match &mut c.tls {
                    Some(tls) => {
                        let mut taken = 0;
                        while taken < n {
                            let k = tls
                                .write(&data[taken..])
                                .map_err(|e| err(format!("write: {e}")))?;
                            if k == 0 {
                                return Err(err("TlsSession::write took nothing"));
                            }
                            taken += k;
                        }
                    }
                    None => push(c, Bytes::from_static(data)),
                }
                c.written += n as u64;
                take_ciphertext(c);
            }
        }
        if c.state == State::Closing && !c.eof_out && c.written == c.target {
            match &mut c.tls {
                Some(tls) => {
                    tls.shutdown().map_err(|e| err(format!("shutdown: {e}")))?;
                    c.eof_out = true;
                }
                None => {
                    if c.out_len == 0 {
                        c.sock.shutdown(std::net::Shutdown::Write)?;
                        c.eof_out = true;
                    }
                }
            }
        }
        take_ciphertext(c);
        Ok(())
    }
}

fn push(c: &mut Conn, b: Bytes) {
    if !b.is_empty() {
        c.out_len += b.len();
        c.out.push_back(b);
    }
}

fn take_ciphertext(c: &mut Conn) {
    if let Some(b) = c.tls.as_mut().and_then(TlsSession::take_ciphertext) {
        push(c, b);
    }
}

/// Writes queued output until the socket refuses more.
fn flush(c: &mut Conn) -> io::Result<()> {
    while let Some(front) = c.out.front_mut() {
        match c.sock.write(front) {
            Ok(n) => {
                c.out_len -= n;
                if n == front.len() {
                    c.out.pop_front();
                } else {
                    let _ = front.split_to(n);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Checks that `data`, arriving at echo offset `received`, is what was sent there.
fn check_echo(received: u64, written: u64, data: &[u8]) -> io::Result<()> {
    if received + data.len() as u64 > written {
        return Err(err(format!(
            "the server sent {} bytes more than it was sent",
            received + data.len() as u64 - written
        )));
    }
    if data != stream_bytes(received, data.len()) {
        return Err(err(format!(
            "echoed bytes differ from those sent (at offset {received})"
        )));
    }
    Ok(())
}

/// The first `len` bytes a TLS client sends (its ClientHello, cut short), for the
/// stalled-handshake measurement.
pub fn client_hello(connector: &TlsConnector) -> io::Result<Bytes> {
    let mut s = TlsSession::client(connector, "localhost").map_err(|e| err(e.to_string()))?;
    s.handshake().map_err(|e| err(e.to_string()))?;
    s.take_ciphertext()
        .ok_or_else(|| err("no ClientHello from the client session"))
}

/// Opens `n` connections that each send `hello` and then nothing; dropping the vector
/// closes them.
pub fn stall(addr: SocketAddr, n: usize, hello: &[u8]) -> io::Result<Vec<std::net::TcpStream>> {
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        s.write_all(hello)?;
        held.push(s);
    }
    Ok(held)
}
