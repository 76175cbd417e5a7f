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
