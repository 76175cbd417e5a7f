//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod contract;
pub mod echo_server;
pub mod example;
pub mod peer;
pub mod raw_peer;
pub mod sessions;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use biotls::{Loop, Timer};

/// Runs `lp` until `done()` is true, failing the test after `limit`. A repeating timer
/// bounds each blocking poll, so the check runs at least every 10 ms.
pub fn run_until(lp: &mut Loop, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    let tick = Timer::new(lp).unwrap();
    tick.start(
        lp,
        Duration::from_millis(10),
        Some(Duration::from_millis(10)),
        |_, _| {},
    )
    .unwrap();
    while !done() {
        assert!(
            Instant::now() < deadline,
            "condition not reached within {limit:?}"
        );
        lp.run_once().unwrap();
    }
    tick.close(lp);
}

/// Runs `lp` until it has nothing left to do, failing the test after `limit`.
pub fn run_to_end(lp: &mut Loop, limit: Duration) {
    let deadline = Instant::now() + limit;
    while lp.run_once().unwrap() {
        assert!(Instant::now() < deadline, "loop still busy after {limit:?}");
    }
}

/// A deterministic pseudo-random byte pattern (xorshift), so a receiver can verify
/// every byte without keeping a copy.
pub fn pattern(seed: u64, offset: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    for i in 0..len as u64 {
        out.push(pattern_byte(seed, offset + i));
    }
    out
}

pub fn pattern_byte(seed: u64, pos: u64) -> u8 {
    let mut x = seed ^ pos.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x as u8
}

/// Whether `tool` runs; if not, skips loudly (or panics under `CI`).
pub fn have(tool: &str, version_arg: &str) -> bool {
    let ok = Command::new(tool)
        .arg(version_arg)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "`{tool}` is required under CI but cannot be run"
        );
        eprintln!("SKIPPED: `{tool}` is not installed");
    }
    ok
}

/// Runs `lp` until it has nothing left to do, with an unref'd tick bounding each poll
/// (so a handle that stays active with nothing to do fails the test instead of blocking
/// it); fails after `limit`.
pub fn run_dry(lp: &mut Loop, limit: Duration) {
    let tick = Timer::new(lp).unwrap();
    let ms = Duration::from_millis(10);
    tick.start(lp, ms, Some(ms), |_, _| {}).unwrap();
    tick.unref(lp).unwrap();
    let start = Instant::now();
    while lp.run_once().unwrap() {
        assert!(start.elapsed() < limit, "the loop is still alive: {lp:?}");
    }
    tick.close(lp);
}

/// A loopback address where connects are refused: a bound socket that never listens
/// (keep it: it holds the port).
pub fn refused_addr() -> (socket2::Socket, std::net::SocketAddr) {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(
        &"127.0.0.1:0"
            .parse::<std::net::SocketAddr>()
            .unwrap()
            .into(),
    )
    .unwrap();
    let addr = s.local_addr().unwrap().as_socket().unwrap();
    (s, addr)
}

/// A loopback address whose SYNs are dropped: a listener with a full backlog (keep
/// both: they hold it full).
pub fn black_hole() -> (
    socket2::Socket,
    Vec<std::net::TcpStream>,
    std::net::SocketAddr,
) {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(
        &"127.0.0.1:0"
            .parse::<std::net::SocketAddr>()
            .unwrap()
            .into(),
    )
    .unwrap();
    s.listen(0).unwrap();
    let addr = s.local_addr().unwrap().as_socket().unwrap();
    let fillers = (0..4)
        .filter_map(|_| {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()
        })
        .collect();
    (s, fillers, addr)
}

/// Two connected `Tcp` handles on `lp`: (the connecting one, the accepted one).
pub fn tcp_pair(lp: &mut Loop) -> (biotls::Tcp, biotls::Tcp) {
    let l = biotls::TcpListener::bind(lp, "127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = l.local_addr(lp).unwrap();
    let got = std::rc::Rc::new(std::cell::Cell::new(None));
    let g = std::rc::Rc::clone(&got);
    l.listen(lp, move |_, _, r| g.set(Some(r.unwrap())))
        .unwrap();
    let client = biotls::Tcp::connect(lp, addr, |_, _, r| r.unwrap()).unwrap();
    run_until(lp, Duration::from_secs(20), || got.get().is_some());
    l.close(lp);
    (client, got.get().unwrap())
}
