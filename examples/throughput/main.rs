//! cargo run --release --example throughput [-- --help]
//!
//! Measures TLS echo servers side by side, each in a process of its own, under load
//! from this process (a `mio` client with a `TlsSession` per connection: it does not
//! use this crate's `Loop`):
//!
//! - `biotls`: the `tls_echo_server` example (this crate);
//! - `blocking`: `SslStream` over `std::net::TcpStream`, one thread per connection;
//! - `tokio-openssl`: tokio's multi-thread runtime with tokio-openssl
//!   (`peers/tokio-echo`, a package of its own, built here on first use).
//!
//! All on the same vendored OpenSSL, the same certificate (ECDSA P-256) and TLS 1.3 with
//! TLS_AES_128_GCM_SHA256 (the client offers only that suite and checks it was chosen).
//! Server CPU comes from each server process's CPU-time clock (all threads, nanosecond
//! resolution), memory from its resident set (`/proc/PID/status`). Next to the figures
//! come the floor: a plain TCP echo server process under the same client (the kernel's
//! share) and a `TlsSession` pair in memory (the crypto and memory-BIO share).
//!
//! Scenarios: echo over one connection per write size; 100 connections echoing at
//! once; full and resumed handshakes; idle memory per established connection for two
//! key-exchange groups; memory per stalled handshake; 1000 connections, established
//! then echoing. Tables are Markdown; `--json` prints one JSON object per figure.
//! `--in-process` runs the investigation of the older in-process mode instead (see
//! `inprocess.rs`).

mod client;
mod floor;
#[path = "../../benches/harness/mod.rs"]
mod harness;
mod inprocess;
mod servers;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use biotls::pki::Pki;
use biotls::tls::{TlsAcceptor, TlsConnector};
use clap::Parser;

use client::{Fleet, Proto};
use servers::{Kind, Launcher, ServerProcess};

#[derive(Parser, Debug, Clone)]
#[command(
    name = "throughput",
    about = "TLS echo servers side by side: biotls, blocking SslStream, tokio-openssl",
    long_about = "TLS echo servers side by side, each a process of its own, loaded by this \
process (a mio client with a TlsSession per connection, not this crate's Loop): \
tls_echo_server (biotls), a blocking SslStream server with a thread per connection, and \
tokio + tokio-openssl (peers/tokio-echo, built on first use). Server CPU from each \
process's CPU clock; memory from its RSS. Prints Markdown tables with ratios to the \
blocking and the tokio-openssl server, and the floor (plain TCP echo, in-memory TLS).\n\n\
Sizes are in bytes. A full run takes about 2 minutes on 2 cores; --smoke takes seconds."
)]
struct Args {
    /// Servers to measure, comma-separated: biotls, blocking, tokio (and before, which
    /// --before adds).
    #[arg(long, value_delimiter = ',', default_value = "biotls,blocking,tokio")]
    servers: Vec<String>,
    /// Scenarios to run, comma-separated: echo (one connection per write size, with the
    /// floor), window (one size with a limited window), multi (--multi-conns at once),
    /// handshake, idle, stalled, many.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "echo,window,multi,handshake,idle,stalled,many"
    )]
    only: Vec<String>,
    /// echo: write sizes, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1024,16384,65536,1048576"
    )]
    sizes: Vec<usize>,
    /// echo: bytes echoed per run and write size.
    #[arg(long, default_value_t = 256 << 20)]
    bytes: u64,
    /// Runs of each timed arm, servers alternating; tables show the median and the range.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Plaintext a connection may have sent and not yet had back; 0: no limit but the
    /// sockets' (the client writes whenever its socket takes more, like a blocking
    /// client with a reader and a writer thread).
    #[arg(long, default_value_t = 0)]
    window: u64,
    /// window: the one-connection echo at --window-size and the multi scenario again
    /// with this window, to show how much the figures depend on the bytes in flight.
    #[arg(long, default_value_t = 256 << 10)]
    window_check: u64,
    /// window: the write size for --window-check.
    #[arg(long, default_value_t = 64 << 10)]
    window_size: usize,
    /// echo: bytes for the in-memory TLS floor per write size (default: --bytes).
    #[arg(long)]
    floor_bytes: Option<u64>,
    /// multi: connections echoing at once.
    #[arg(long, default_value_t = 100)]
    multi_conns: usize,
    /// multi: bytes each connection echoes.
    #[arg(long, default_value_t = 8 << 20)]
    multi_bytes: u64,
    /// multi and many: write size.
    #[arg(long, default_value_t = 64 << 10)]
    multi_size: usize,
    /// handshake: full handshakes per run (each: connect, handshake, close_notify both
    /// ways); the same number of resumed ones with X25519.
    #[arg(long, default_value_t = 1000)]
    handshakes: usize,
    /// handshake: connections in flight at once.
    #[arg(long, default_value_t = 4)]
    handshake_parallel: usize,
    /// handshake and idle: key-exchange groups the client offers, one measurement each
    /// (OpenSSL names; the client offers only that group).
    #[arg(long, value_delimiter = ',', default_value = "X25519,X25519MLKEM768")]
    groups: Vec<String>,
    /// idle: established TLS connections held open (server RSS growth / count).
    #[arg(long, default_value_t = 2000)]
    idle: usize,
    /// stalled: connections that send half a ClientHello and then nothing.
    #[arg(long, default_value_t = 300)]
    stalled: usize,
    /// many: connections, all established first, then all echoing at once.
    #[arg(long, default_value_t = 1000)]
    many_conns: usize,
    /// many: bytes each connection echoes.
    #[arg(long, default_value_t = 1 << 20)]
    many_bytes: u64,
    /// Handshakes in flight while establishing connections (idle, multi, many).
    #[arg(long, default_value_t = 64)]
    connect_parallel: usize,
    /// A phase that takes longer than this many seconds fails its measurement.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
    /// Small sizes and counts for CI (seconds, every arm once): overrides the sizes,
    /// counts and --repeat.
    #[arg(long)]
    smoke: bool,
    /// Fail (exit status 1) when an arm is skipped because its server could not be
    /// built, or a figure because this OpenSSL lacks a group; also when the CI
    /// environment variable is set.
    #[arg(long)]
    strict: bool,
    /// Print one JSON object per figure instead of tables.
    #[arg(long)]
    json: bool,
    /// Do not run cargo: use the server binaries (tls_echo_server, tokio-echo) already
    /// in the target directory, stale or not; arms whose binary is missing are skipped.
    #[arg(long)]
    no_build: bool,
    /// The tokio-openssl server binary to use instead of building peers/tokio-echo.
    #[arg(long, value_name = "PATH")]
    tokio_echo: Option<PathBuf>,
    /// Adds the arm `before`: another tls_echo_server binary (for example a copy built
    /// from an earlier commit), run like `biotls` and alternating with the other arms,
    /// for before/after comparisons in one sitting.
    #[arg(long, value_name = "PATH")]
    before: Option<PathBuf>,
    /// Run the investigation of the in-process mode instead: the Tls-handle and the
    /// blocking server on a thread of this process or in a process of their own, under
    /// the old Loop client or this mode's client (see the README). Uses --sizes,
    /// --bytes, --repeat, --many-conns, --many-bytes, --multi-size and --only echo,many.
    #[arg(long)]
    in_process: bool,
    /// Record a profile of every server run with `perf record` (DWARF call graphs) into
    /// DIR, one file per run; CPU figures of such a run include the profiler's
    /// overhead. Combine with --servers, --only and --sizes to choose what to profile.
    #[arg(long, value_name = "DIR")]
    perf: Option<PathBuf>,
    /// Runs the biotls servers (biotls, before) under this command, split at spaces: a
    /// heap profiler, for example `valgrind --tool=dhat --dhat-out-file=/tmp/dhat.%p`
    /// (see `dhat_summary.py`). They are stopped with SIGTERM so that it can write its
    /// report. Figures of such a run measure the wrapper too.
    #[arg(long, value_name = "CMD")]
    wrap: Option<String>,
    /// Accepted for older command lines: servers always run as processes now.
    #[arg(long, hide = true)]
    processes: bool,
    /// Internal: serve as a child process (blocking-tls ADDR or blocking-tcp ADDR).
    #[arg(long, hide = true, num_args = 2, value_names = ["KIND", "ADDR"])]
    serve: Option<Vec<String>>,
    /// Internal, with --serve blocking-tls.
    #[arg(long, hide = true)]
    cert: Option<PathBuf>,
    /// Internal, with --serve blocking-tls.
    #[arg(long, hide = true)]
    key: Option<PathBuf>,
}

impl Args {
    fn smoke_sized(&mut self) {
        self.sizes = vec![1024, 65536];
        self.bytes = 8 << 20;
        self.floor_bytes = Some(8 << 20);
        self.repeat = 1;
        self.multi_conns = 10;
        self.multi_bytes = 1 << 20;
        self.handshakes = 50;
        self.idle = 100;
        self.stalled = 20;
        self.many_conns = 50;
        self.many_bytes = 256 << 10;
        self.timeout = 60;
    }

    fn wants(&self, scenario: &str) -> bool {
        self.only.iter().any(|s| s == scenario)
    }

    fn window(&self) -> u64 {
        if self.window == 0 {
            u64::MAX
        } else {
            self.window
        }
    }
}

/// Everything a measurement needs.
struct Ctx {
    args: Args,
    launcher: Launcher,
    kinds: Vec<Kind>,
    /// Client configuration for the data scenarios (X25519, no resumption).
    connector: TlsConnector,
    acceptor: TlsAcceptor,
    pki: Pki,
    timeout: Duration,
    /// Figures that could not be measured, for the exit status.
    failures: Vec<String>,
    /// Figures left out because this OpenSSL cannot do them (a group it lacks).
    skipped: Vec<String>,
}

/// The client's TLS configuration: trusts the run's CA, offers only
/// TLS_AES_128_GCM_SHA256 and `group`, resumes sessions only if asked.
fn connector(pki: &Pki, group: &str, resumption: bool) -> Result<TlsConnector, String> {
    let mut b = TlsConnector::builder()
        .and_then(|b| b.ca_pem(pki.ca_pem.as_bytes()))
        .map_err(|e| e.to_string())?
        .session_resumption(resumption);
    b.context_builder_mut()
        .set_ciphersuites("TLS_AES_128_GCM_SHA256")
        .map_err(|e| format!("cipher suite: {e}"))?;
    b.context_builder_mut()
        .set_groups_list(group)
        .map_err(|e| format!("group {group} (not in this OpenSSL?): {e}"))?;
    Ok(b.build())
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

fn human(size: u64) -> String {
    if size >= 1 << 20 && size.is_multiple_of(1 << 20) {
        format!("{} MiB", size >> 20)
    } else if size >= 1 << 10 && size.is_multiple_of(1 << 10) {
        format!("{} KiB", size >> 10)
    } else {
        format!("{size} B")
    }
}

/// Median and range of a set of runs.
#[derive(Clone, Copy, Debug)]
struct Stat {
    median: f64,
    min: f64,
    max: f64,
    n: usize,
}

impl Stat {
    fn of(values: &[f64]) -> Option<Stat> {
        if values.is_empty() {
            return None;
        }
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Stat {
            median,
            min: v[0],
            max: v[n - 1],
            n,
        })
    }

    /// "620 (590–690)" with `digits` decimals; the range only with several runs.
    fn show(&self, digits: usize) -> String {
        if self.n > 1 {
            format!(
                "{:.d$} ({:.d$}–{:.d$})",
                self.median,
                self.min,
                self.max,
                d = digits
            )
        } else {
            format!("{:.d$}", self.median, d = digits)
        }
    }

    fn json(&self) -> String {
        format!(
            "{{\"median\":{:.4},\"min\":{:.4},\"max\":{:.4},\"runs\":{}}}",
            self.median, self.min, self.max, self.n
        )
    }
}

/// One echo measurement: establishing `conns` connections, then echoing.
#[derive(Clone, Copy, Debug, Default)]
struct EchoRun {
    establish_wall: f64,
    establish_cpu: f64,
    echo_wall: f64,
    echo_cpu: f64,
    /// Minor page faults of the server during the echo phase.
    echo_faults: u64,
    bytes: u64,
}

impl EchoRun {
    fn cpu_ms_per_gib(&self) -> f64 {
        self.echo_cpu * 1e3 / gib(self.bytes)
    }
    fn mib_s(&self) -> f64 {
        self.bytes as f64 / (1 << 20) as f64 / self.echo_wall
    }
    fn faults_per_mib(&self) -> f64 {
        self.echo_faults as f64 / (self.bytes as f64 / (1 << 20) as f64)
    }
}

impl Ctx {
    fn proto(&self, kind: Kind) -> Proto {
        if kind.is_tls() {
            Proto::Tls(self.connector.clone())
        } else {
            Proto::Tcp
        }
    }

    fn start(&self, kind: Kind) -> io::Result<ServerProcess> {
        self.launcher.start(kind)
    }

    /// A fresh server; `conns` connections established (handshake and one byte echoed),
    /// then each echoes `per_conn` bytes in `size`-byte writes, then all close. The echo
    /// phase runs from all established to all closed (close_notify both ways).
    fn echo_run(
        &self,
        kind: Kind,
        conns: usize,
        per_conn: u64,
        size: usize,
        window: u64,
    ) -> io::Result<EchoRun> {
        let mut server = self.start(kind)?;
        let mut fleet = Fleet::new(server.addr, self.proto(kind), self.timeout)?;
        let cpu0 = server.cpu();
        let establish = fleet.establish(conns, self.args.connect_parallel)?;
        let cpu1 = server.cpu_settled(Duration::from_secs(1));
        let faults1 = server.minor_faults();
        let echo = fleet.echo(per_conn, size, window)?;
        let close = fleet.close()?;
        let cpu2 = server.cpu_settled(Duration::from_secs(2));
        let faults2 = server.minor_faults();
        server.check_alive()?;
        server.check_log_lines(conns)?;
        Ok(EchoRun {
            establish_wall: establish.as_secs_f64(),
            establish_cpu: cpu1.saturating_sub(cpu0).as_secs_f64(),
            echo_wall: (echo + close).as_secs_f64(),
            echo_cpu: cpu2.saturating_sub(cpu1).as_secs_f64(),
            echo_faults: faults2.saturating_sub(faults1),
            bytes: per_conn * conns as u64,
        })
    }

    /// Runs `f` for every kind, `repeat` times, alternating the order; a failed run is
    /// reported and left out.
    fn alternate<T>(
        &mut self,
        label: &str,
        kinds: &[Kind],
        mut f: impl FnMut(&Ctx, Kind) -> io::Result<T>,
    ) -> HashMap<Kind, Vec<T>> {
        let mut out: HashMap<Kind, Vec<T>> = HashMap::new();
        eprint!("  {label} ");
        self.launcher.label.replace(label.to_string());
        for rep in 0..self.args.repeat.max(1) {
            let mut order = kinds.to_vec();
            if rep % 2 == 1 {
                order.reverse();
            }
            for kind in order {
                match f(self, kind) {
                    Ok(v) => {
                        eprint!(".");
                        out.entry(kind).or_default().push(v);
                    }
                    Err(e) => {
                        eprintln!("\n  FAILED: {label}, {}: {e}", kind.name());
                        self.failures.push(format!("{label}, {}: {e}", kind.name()));
                    }
                }
            }
        }
        eprintln!();
        out
    }
}

/// "0.91" or "–" when either side is missing.
fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "–".into(),
    }
}

fn ratio_json(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.4}", a / b),
        _ => "null".into(),
    }
}

fn tls_kinds(ctx: &Ctx) -> Vec<Kind> {
    ctx.kinds.clone()
}

fn median_of(map: &HashMap<Kind, Stat>, kind: Kind) -> Option<f64> {
    map.get(&kind).map(|s| s.median)
}

fn window_text(window: u64) -> String {
    if window == u64::MAX {
        "no window (the sockets' buffers limit the bytes in flight)".into()
    } else {
        format!("window {}", human(window))
    }
}

fn window_json(window: u64) -> String {
    if window == u64::MAX {
        "null".into()
    } else {
        window.to_string()
    }
}

/// Echo over one connection per write size, with the floor.
fn scenario_echo(ctx: &mut Ctx, sizes: &[usize], window: u64) {
    let kinds = tls_kinds(ctx);
    let mut all = kinds.clone();
    all.push(Kind::TcpFloor);
    let bytes = ctx.args.bytes;
    let mut md = String::new();
    if !ctx.args.json {
        let _ = writeln!(
            md,
            "\n### Echo over one connection, {} ({} per run, median of {} alternating runs)\n\n\
             Server CPU ms per GiB echoed (range), MiB/s; ratios of the CPU medians (lower is \
             better); floor = plain TCP echo server process + in-memory TLS (TlsSession pair).\n\n\
             | write | server | CPU ms/GiB | MiB/s | × blocking | × tokio-openssl | above floor |\n\
             |---|---|---:|---:|---:|---:|---:|",
            window_text(window),
            human(bytes),
            ctx.args.repeat.max(1)
        );
    }
    let wlabel = if window == u64::MAX {
        String::new()
    } else {
        format!(", window {}", human(window))
    };
    for &size in sizes {
        let runs = ctx.alternate(
            &format!("echo {}{wlabel}", human(size as u64)),
            &all,
            |c, k| c.echo_run(k, 1, bytes, size, window),
        );
        let cpu: HashMap<Kind, Stat> = runs
            .iter()
            .filter_map(|(k, v)| {
                Stat::of(&v.iter().map(EchoRun::cpu_ms_per_gib).collect::<Vec<_>>())
                    .map(|s| (*k, s))
            })
            .collect();
        let speed: HashMap<Kind, Stat> = runs
            .iter()
            .filter_map(|(k, v)| {
                Stat::of(&v.iter().map(EchoRun::mib_s).collect::<Vec<_>>()).map(|s| (*k, s))
            })
            .collect();
        let faults: HashMap<Kind, Stat> = runs
            .iter()
            .filter_map(|(k, v)| {
                Stat::of(&v.iter().map(EchoRun::faults_per_mib).collect::<Vec<_>>())
                    .map(|s| (*k, s))
            })
            .collect();
        // The in-memory TLS floor for this write size.
        let floor_bytes = ctx.args.floor_bytes.unwrap_or(bytes);
        let mut mem = Vec::new();
        for _ in 0..ctx.args.repeat.max(1) {
            match floor::tls_floor(&ctx.acceptor, &ctx.connector, size, floor_bytes) {
                Ok(s) => mem.push(s * 1e3),
                Err(e) => ctx.failures.push(format!("in-memory floor: {e}")),
            }
        }
        let mem = Stat::of(&mem);
        let tcp = cpu.get(&Kind::TcpFloor).copied();
        let floor = match (tcp, mem) {
            (Some(t), Some(m)) => Some(t.median + m.median),
            _ => None,
        };
        let blocking = median_of(&cpu, Kind::Blocking);
        let tokio = median_of(&cpu, Kind::Tokio);
        for &kind in &kinds {
            let (Some(c), Some(s)) = (cpu.get(&kind), speed.get(&kind)) else {
                if !ctx.args.json {
                    let _ = writeln!(
                        md,
                        "| {} | {} | not measured | | | | |",
                        human(size as u64),
                        kind.name()
                    );
                }
                continue;
            };
            if ctx.args.json {
                println!(
                    "{{\"test\":\"echo\",\"conns\":1,\"server\":\"{}\",\"write\":{size},\"window\":{},\"bytes\":{bytes},\"cpu_ms_per_gib\":{},\"mib_s\":{},\"cpu_vs_blocking\":{},\"cpu_vs_tokio\":{},\"floor_ms_per_gib\":{},\"page_faults_per_mib\":{}}}",
                    kind.name(),
                    window_json(window),
                    c.json(),
                    s.json(),
                    ratio_json(Some(c.median), blocking),
                    ratio_json(Some(c.median), tokio),
                    floor.map_or("null".into(), |f| format!("{f:.1}")),
                    faults.get(&kind).map_or("null".into(), Stat::json)
                );
            } else {
                let above = floor.map_or("–".into(), |f| {
                    format!("{:+.0} ({:.2}×)", c.median - f, c.median / f)
                });
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {:.0} | {} | {} | {} |",
                    human(size as u64),
                    kind.name(),
                    c.show(0),
                    s.median,
                    ratio(Some(c.median), blocking),
                    ratio(Some(c.median), tokio),
                    above
                );
            }
        }
        if ctx.args.json {
            if let Some(t) = tcp {
                println!(
                    "{{\"test\":\"floor_tcp\",\"write\":{size},\"window\":{},\"bytes\":{bytes},\"cpu_ms_per_gib\":{},\"mib_s\":{}}}",
                    window_json(window),
                    t.json(),
                    speed.get(&Kind::TcpFloor).map_or("null".into(), Stat::json)
                );
            }
            if let Some(m) = mem {
                println!(
                    "{{\"test\":\"floor_tls_memory\",\"write\":{size},\"bytes\":{floor_bytes},\"cpu_ms_per_gib\":{}}}",
                    m.json()
                );
            }
        } else {
            let _ = writeln!(
                md,
                "| {} | floor: TCP echo + in-memory TLS | {} + {} = {} | {} | | | |",
                human(size as u64),
                tcp.map_or("–".into(), |t| t.show(0)),
                mem.map_or("–".into(), |m| m.show(0)),
                floor.map_or("–".into(), |f| format!("{f:.0}")),
                speed
                    .get(&Kind::TcpFloor)
                    .map_or("–".into(), |s| format!("{:.0} (TCP)", s.median)),
            );
        }
    }
    print!("{md}");
}

/// Many connections echoing at once: `multi` (100 × 8 MiB) or `many` (1000 × 1 MiB).
fn scenario_conns(ctx: &mut Ctx, name: &str, conns: usize, per_conn: u64, window: u64) {
    let kinds = tls_kinds(ctx);
    let size = ctx.args.multi_size;
    let wlabel = if window == u64::MAX {
        String::new()
    } else {
        format!(", window {}", human(window))
    };
    let runs = ctx.alternate(
        &format!("{name}: {conns} × {}{wlabel}", human(per_conn)),
        &kinds,
        |c, k| c.echo_run(k, conns, per_conn, size, window),
    );
    let stat = |f: fn(&EchoRun) -> f64| -> HashMap<Kind, Stat> {
        runs.iter()
            .filter_map(|(k, v)| Stat::of(&v.iter().map(f).collect::<Vec<_>>()).map(|s| (*k, s)))
            .collect()
    };
    let cpu = stat(EchoRun::cpu_ms_per_gib);
    let speed = stat(EchoRun::mib_s);
    let est_wall = stat(|r| r.establish_wall);
    let est_cpu_us = stat(|r| r.establish_cpu * 1e6);
    let overall = stat(|r| r.bytes as f64 / (1 << 20) as f64 / (r.establish_wall + r.echo_wall));
    let (cb, ct) = (
        median_of(&cpu, Kind::Blocking),
        median_of(&cpu, Kind::Tokio),
    );
    let (sb, st) = (
        median_of(&speed, Kind::Blocking),
        median_of(&speed, Kind::Tokio),
    );
    let mut md = String::new();
    if !ctx.args.json {
        let _ = writeln!(
            md,
            "\n### {conns} connections × {} echo, {} writes, {} (median of {} alternating runs)\n\n\
             Establish: all connections' handshakes ({} in flight) and one echoed byte each, \
             wall time and server CPU per connection. Echo: from all established to all \
             closed; server CPU ms per GiB (lower is better) and aggregate MiB/s (higher \
             is better), with ratios; overall: MiB/s including the establishing.\n\n\
             | server | establish s | CPU µs/conn | echo CPU ms/GiB | × blocking | × tokio-openssl | echo MiB/s | × blocking | × tokio-openssl | overall MiB/s |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
            human(per_conn),
            human(size as u64),
            window_text(window),
            ctx.args.repeat.max(1),
            ctx.args.connect_parallel,
        );
    }
    for &kind in &kinds {
        let (Some(c), Some(s), Some(ew), Some(ec), Some(o)) = (
            cpu.get(&kind),
            speed.get(&kind),
            est_wall.get(&kind),
            est_cpu_us.get(&kind),
            overall.get(&kind),
        ) else {
            if !ctx.args.json {
                let _ = writeln!(md, "| {} | not measured | | | | | | | | |", kind.name());
            }
            continue;
        };
        let per_conn_us = Stat {
            median: ec.median / conns as f64,
            min: ec.min / conns as f64,
            max: ec.max / conns as f64,
            n: ec.n,
        };
        if ctx.args.json {
            println!(
                "{{\"test\":\"{name}\",\"conns\":{conns},\"bytes_per_conn\":{per_conn},\"write\":{size},\"window\":{},\"server\":\"{}\",\"establish_s\":{},\"establish_cpu_us_per_conn\":{},\"cpu_ms_per_gib\":{},\"mib_s\":{},\"overall_mib_s\":{},\"cpu_vs_blocking\":{},\"cpu_vs_tokio\":{},\"mib_s_vs_blocking\":{},\"mib_s_vs_tokio\":{}}}",
                window_json(window),
                kind.name(),
                ew.json(),
                per_conn_us.json(),
                c.json(),
                s.json(),
                o.json(),
                ratio_json(Some(c.median), cb),
                ratio_json(Some(c.median), ct),
                ratio_json(Some(s.median), sb),
                ratio_json(Some(s.median), st)
            );
        } else {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.0} |",
                kind.name(),
                ew.show(2),
                per_conn_us.show(0),
                c.show(0),
                ratio(Some(c.median), cb),
                ratio(Some(c.median), ct),
                s.show(0),
                ratio(Some(s.median), sb),
                ratio(Some(s.median), st),
                o.median
            );
        }
    }
    print!("{md}");
}

/// Server CPU µs and wall rate for `count` handshakes with `connector`, after a few
/// unmeasured ones; returns (µs per handshake, handshakes/s, resumed count).
fn handshake_run(
    ctx: &Ctx,
    kind: Kind,
    connector: &TlsConnector,
    count: usize,
) -> io::Result<(f64, f64, usize)> {
    let mut server = ctx.start(kind)?;
    let mut fleet = Fleet::new(server.addr, Proto::Tls(connector.clone()), ctx.timeout)?;
    // Warm-up: first-use costs and, when resuming, enough tickets for every connection
    // in flight (a server sends one or two tickets after a full handshake, one after a
    // resumed one).
    let parallel = ctx.args.handshake_parallel;
    fleet.cycle(5.max(2 * parallel), parallel)?;
    let cpu0 = server.cpu_settled(Duration::from_secs(1));
    let resumed0 = fleet.resumed;
    let wall = fleet.cycle(count, parallel)?;
    let cpu1 = server.cpu_settled(Duration::from_secs(2));
    server.check_alive()?;
    server.check_log_lines(5.max(2 * parallel) + count)?;
    let resumed = fleet.resumed - resumed0;
    Ok((
        cpu1.saturating_sub(cpu0).as_secs_f64() * 1e6 / count as f64,
        count as f64 / wall.as_secs_f64(),
        resumed,
    ))
}

fn scenario_handshake(ctx: &mut Ctx) {
    let kinds = tls_kinds(ctx);
    let count = ctx.args.handshakes;
    let mut md = String::new();
    if !ctx.args.json {
        let _ = writeln!(
            md,
            "\n### Handshakes ({count} per run, {} in flight, median of {} alternating runs)\n\n\
             Each: TCP connect, TLS 1.3 handshake, close_notify both ways, close; server CPU \
             µs per handshake (lower is better), with ratios, and handshakes per second. \
             The client offers one key-exchange group. biotls issues one TLS 1.3 session \
             ticket per full handshake (its default), the others OpenSSL's default two.\n\n\
             | handshake | group | server | CPU µs | × blocking | × tokio-openssl | per s |\n\
             |---|---|---|---:|---:|---:|---:|",
            ctx.args.handshake_parallel,
            ctx.args.repeat.max(1)
        );
    }
    let mut cases: Vec<(&str, String, bool)> = ctx
        .args
        .groups
        .iter()
        .map(|g| ("full", g.clone(), false))
        .collect();
    if let Some(first) = ctx.args.groups.first() {
        cases.push(("resumed", first.clone(), true));
    }
    for (what, group, resume) in cases {
        let conn = match connector(&ctx.pki, &group, resume) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("  handshake {what} {group}: SKIPPED: {e}");
                ctx.skipped.push(format!("handshake {what} {group}: {e}"));
                continue;
            }
        };
        let runs = ctx.alternate(&format!("handshakes, {what}, {group}"), &kinds, |c, k| {
            let r = handshake_run(c, k, &conn, count)?;
            if resume && r.2 != count {
                return Err(io::Error::other(format!(
                    "only {} of {count} handshakes were resumed",
                    r.2
                )));
            }
            if !resume && r.2 != 0 {
                return Err(io::Error::other("a full handshake was resumed"));
            }
            Ok(r)
        });
        let us: HashMap<Kind, Stat> = runs
            .iter()
            .filter_map(|(k, v)| {
                Stat::of(&v.iter().map(|r| r.0).collect::<Vec<_>>()).map(|s| (*k, s))
            })
            .collect();
        let rate: HashMap<Kind, Stat> = runs
            .iter()
            .filter_map(|(k, v)| {
                Stat::of(&v.iter().map(|r| r.1).collect::<Vec<_>>()).map(|s| (*k, s))
            })
            .collect();
        let (b, t) = (median_of(&us, Kind::Blocking), median_of(&us, Kind::Tokio));
        for &kind in &kinds {
            let (Some(u), Some(r)) = (us.get(&kind), rate.get(&kind)) else {
                continue;
            };
            if ctx.args.json {
                println!(
                    "{{\"test\":\"handshake\",\"kind\":\"{what}\",\"group\":\"{group}\",\"server\":\"{}\",\"count\":{count},\"parallel\":{},\"cpu_us\":{},\"per_s\":{},\"cpu_vs_blocking\":{},\"cpu_vs_tokio\":{}}}",
                    kind.name(),
                    ctx.args.handshake_parallel,
                    u.json(),
                    r.json(),
                    ratio_json(Some(u.median), b),
                    ratio_json(Some(u.median), t)
                );
            } else {
                let _ = writeln!(
                    md,
                    "| {what} | {group} | {} | {} | {} | {} | {:.0} |",
                    kind.name(),
                    u.show(0),
                    ratio(Some(u.median), b),
                    ratio(Some(u.median), t),
                    r.median
                );
            }
        }
    }
    print!("{md}");
}

/// Server RSS growth per connection: `n` established idle connections per group, and
/// `stalled` half-ClientHello connections.
fn scenario_memory(ctx: &mut Ctx, idle: bool, stalled: bool) {
    let kinds = tls_kinds(ctx);
    let mut md = String::new();
    if !ctx.args.json {
        let _ = writeln!(
            md,
            "\n### Memory per connection (server RSS growth / connections, one run)\n\n\
             Idle: {} established TLS connections (handshake and one echoed byte each, {} \
             handshakes in flight), the client offering one group. Stalled: {} connections \
             that sent half a ClientHello and nothing more.\n\n\
             | connections | server | KiB per connection | × blocking | × tokio-openssl |\n\
             |---|---|---:|---:|---:|",
            ctx.args.idle, ctx.args.connect_parallel, ctx.args.stalled
        );
    }
    let mut cases: Vec<(String, Option<TlsConnector>)> = Vec::new();
    if idle {
        for g in ctx.args.groups.clone() {
            match connector(&ctx.pki, &g, false) {
                Ok(c) => cases.push((format!("idle, {g}"), Some(c))),
                Err(e) => {
                    eprintln!("  idle {g}: SKIPPED: {e}");
                    ctx.skipped.push(format!("idle {g}: {e}"));
                }
            }
        }
    }
    if stalled {
        cases.push(("stalled handshake".into(), None));
    }
    let hello = match client::client_hello(&ctx.connector) {
        Ok(h) => h,
        Err(e) => {
            ctx.failures.push(format!("ClientHello: {e}"));
            return;
        }
    };
    let half = hello.slice(..hello.len() / 2);
    for (label, conn) in cases {
        let n = if conn.is_some() {
            ctx.args.idle
        } else {
            ctx.args.stalled
        };
        let mut per: HashMap<Kind, f64> = HashMap::new();
        eprint!("  memory, {label} ");
        ctx.launcher.label.replace(format!("memory {label}"));
        for &kind in &kinds {
            let r = (|| -> io::Result<f64> {
                let mut server = ctx.start(kind)?;
                thread::sleep(Duration::from_millis(100));
                let before = server.rss();
                let held: Box<dyn std::any::Any> = match &conn {
                    Some(c) => {
                        let mut fleet =
                            Fleet::new(server.addr, Proto::Tls(c.clone()), ctx.timeout)?;
                        fleet.establish(n, ctx.args.connect_parallel)?;
                        Box::new(fleet)
                    }
                    None => Box::new(client::stall(server.addr, n, &half)?),
                };
                thread::sleep(Duration::from_millis(300));
                let after = server.rss();
                server.check_alive()?;
                // The server goes first, so it never sees these connections end.
                drop(server);
                drop(held);
                Ok(after.saturating_sub(before) as f64 / n as f64 / 1024.0)
            })();
            match r {
                Ok(v) => {
                    eprint!(".");
                    per.insert(kind, v);
                }
                Err(e) => {
                    eprintln!("\n  FAILED: memory, {label}, {}: {e}", kind.name());
                    ctx.failures
                        .push(format!("memory {label}, {}: {e}", kind.name()));
                }
            }
        }
        eprintln!();
        let (b, t) = (
            per.get(&Kind::Blocking).copied(),
            per.get(&Kind::Tokio).copied(),
        );
        for &kind in &kinds {
            let Some(&v) = per.get(&kind) else { continue };
            if ctx.args.json {
                println!(
                    "{{\"test\":\"memory\",\"case\":\"{label}\",\"conns\":{n},\"server\":\"{}\",\"kib_per_conn\":{v:.2},\"vs_blocking\":{},\"vs_tokio\":{}}}",
                    kind.name(),
                    ratio_json(Some(v), b),
                    ratio_json(Some(v), t)
                );
            } else {
                let _ = writeln!(
                    md,
                    "| {n} {label} | {} | {v:.1} | {} | {} |",
                    kind.name(),
                    ratio(Some(v), b),
                    ratio(Some(v), t)
                );
            }
        }
    }
    print!("{md}");
}

/// The directory cargo put this binary's target in (`<target>/release/examples/..`).
fn target_dir() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let profile_dir = exe.parent()?.parent()?;
    Some(profile_dir.parent()?.to_path_buf())
}

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Finds or builds the server binaries.
fn prepare_binaries(args: &Args, want_tokio: bool) -> (Option<PathBuf>, Option<PathBuf>) {
    let target = target_dir();
    let release = target.as_ref().map(|t| t.join("release"));
    let limit = Duration::from_secs(30 * 60);
    let echo_server = release.as_ref().map(|r| r.join("examples/tls_echo_server"));
    let echo_server = match (echo_server, &target) {
        (Some(p), Some(t)) if !args.no_build => {
            // Cheap when up to date; keeps the server in step with the library.
            let ok = servers::cargo_build(
                "tls_echo_server",
                &[
                    "--release",
                    "--manifest-path",
                    &manifest_dir().join("Cargo.toml").to_string_lossy(),
                    "--example",
                    "tls_echo_server",
                ],
                t,
                limit,
            );
            (ok && p.exists()).then_some(p)
        }
        (Some(p), _) => p.exists().then_some(p),
        _ => None,
    };
    let tokio = if !want_tokio {
        None
    } else if let Some(p) = &args.tokio_echo {
        if p.exists() {
            Some(p.clone())
        } else {
            eprintln!("--tokio-echo {}: no such file", p.display());
            None
        }
    } else {
        let p = release.as_ref().map(|r| r.join("tokio-echo"));
        match (p, &target) {
            (Some(p), Some(t)) if !args.no_build => {
                let manifest = manifest_dir().join("peers/tokio-echo/Cargo.toml");
                eprintln!(
                    "The tokio-openssl arm is a package of its own ({}), built into the same \
                     target directory; the first build compiles tokio (under a minute) and \
                     reuses the vendored OpenSSL already built for this crate.",
                    manifest.display()
                );
                let ok = servers::cargo_build(
                    "the tokio-openssl server (peers/tokio-echo)",
                    &[
                        "--release",
                        "--locked",
                        "--manifest-path",
                        &manifest.to_string_lossy(),
                    ],
                    t,
                    limit,
                );
                (ok && p.exists()).then_some(p)
            }
            (Some(p), _) => p.exists().then_some(p),
            _ => None,
        }
    };
    (echo_server, tokio)
}

fn system_line() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    format!(
        "{} cores ({cpu}), Linux {kernel}, {}",
        thread::available_parallelism().map_or(0, |n| n.get()),
        biotls::openssl::version::version()
    )
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Removes the run's temporary directory (certificates, server logs) on the way out.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn main() {
    let mut args = Args::parse();
    if let Some(spec) = &args.serve {
        let r = match spec[0].as_str() {
            "blocking-tls" => match (&args.cert, &args.key) {
                (Some(c), Some(k)) => servers::serve_blocking_tls(&spec[1], c, k),
                _ => Err(io::Error::other(
                    "--serve blocking-tls needs --cert and --key",
                )),
            },
            "blocking-tcp" => servers::serve_blocking_tcp(&spec[1]),
            other => Err(io::Error::other(format!("unknown server {other}"))),
        };
        if let Err(e) = r {
            eprintln!("serve {}: {e}", spec[0]);
            std::process::exit(1);
        }
        return;
    }
    if args.smoke {
        args.smoke_sized();
    }
    // Children die with us: on Ctrl-C or SIGTERM as on panic (ServerProcess::drop).
    if let Ok(mut signals) = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ]) {
        thread::spawn(move || {
            if let Some(sig) = signals.forever().next() {
                servers::kill_all_children();
                eprintln!("\nthroughput: signal {sig}, servers stopped");
                std::process::exit(130);
            }
        });
    }
    let limit = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(1024) as usize;
    let need = args.idle.max(args.many_conns).max(args.stalled) + 64;
    if limit < need {
        eprintln!(
            "note: file-descriptor limit {limit} is below {need}: connection counts scaled down"
        );
        let cap = limit.saturating_sub(64);
        args.idle = args.idle.min(cap);
        args.many_conns = args.many_conns.min(cap);
        args.stalled = args.stalled.min(cap);
        args.multi_conns = args.multi_conns.min(cap);
    }
    if cfg!(debug_assertions) {
        eprintln!(
            "WARNING: this client is a debug build: figures will be skewed. Use \
             `cargo run --release --example throughput`."
        );
    }
    let started = Instant::now();
    let code = if args.in_process {
        inprocess::run(&args)
    } else {
        run(args)
    };
    eprintln!(
        "throughput: done in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    std::process::exit(code);
}

fn run(args: Args) -> i32 {
    let want_tokio = args.servers.iter().any(|s| s.starts_with("tokio"));
    let (echo_server, tokio) = prepare_binaries(&args, want_tokio);
    let pki = Pki::generate(&["localhost"]).expect("generate certificates");
    let dir = std::env::temp_dir().join(format!("biotls-throughput-{}", std::process::id()));
    let _cleanup = TempDir(dir.clone());
    pki.write_to_dir(&dir).expect("write certificates");
    let mut kinds = Vec::new();
    let mut missing = Vec::new();
    let mut names = args.servers.clone();
    if args.before.is_some() && !names.iter().any(|n| n == "before") {
        names.insert(1.min(names.len()), "before".into());
    }
    for name in &names {
        let kind = match name.as_str() {
            "biotls" => Kind::Biotls,
            "before" => Kind::Before,
            "blocking" => Kind::Blocking,
            "tokio" | "tokio-openssl" => Kind::Tokio,
            other => {
                eprintln!("unknown server {other} (biotls, before, blocking, tokio)");
                return 2;
            }
        };
        let present = match kind {
            Kind::Biotls => echo_server.is_some(),
            Kind::Before => args.before.as_ref().is_some_and(|p| p.exists()),
            Kind::Tokio => tokio.is_some(),
            _ => true,
        };
        if present {
            kinds.push(kind);
        } else {
            missing.push(kind.name());
        }
    }
    for m in &missing {
        eprintln!(
            "\n!!!!! SKIPPING the {m} arm: its server could not be built or found (see above). \
             The other arms still run. !!!!!\n"
        );
    }
    let acceptor = TlsAcceptor::builder(
        pki.server_chain_pem.as_bytes(),
        pki.server_key_pem.as_bytes(),
    )
    .map(|mut b| {
        let _ = b
            .context_builder_mut()
            .set_ciphersuites("TLS_AES_128_GCM_SHA256");
        b.build()
    })
    .expect("acceptor");
    let data_group = args.groups.first().cloned().unwrap_or("X25519".into());
    let connector = match connector(&pki, &data_group, false) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("client configuration: {e}");
            return 2;
        }
    };
    let launcher = Launcher {
        tls_echo_server: echo_server.unwrap_or_default(),
        before: args.before.clone(),
        tokio_echo: tokio,
        myself: std::env::current_exe().expect("current exe"),
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
        log_dir: dir.clone(),
        perf: args.perf.clone(),
        wrap: args
            .wrap
            .as_deref()
            .map(|w| w.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default(),
        label: Default::default(),
        seq: Default::default(),
    };
    if let Some(p) = &args.perf
        && let Err(e) = std::fs::create_dir_all(p)
    {
        eprintln!("--perf {}: {e}", p.display());
        return 2;
    }
    let mut ctx = Ctx {
        timeout: Duration::from_secs(args.timeout),
        args,
        launcher,
        kinds,
        connector,
        acceptor,
        pki,
        failures: Vec::new(),
        skipped: Vec::new(),
    };
    let load_start = loadavg();
    if ctx.args.json {
        println!(
            "{{\"test\":\"system\",\"system\":\"{}\",\"loadavg\":\"{load_start}\"}}",
            system_line()
        );
    } else {
        println!("## biotls throughput: TLS echo servers side by side\n");
        println!(
            "- {}; loopback; TLS 1.3 TLS_AES_128_GCM_SHA256, ECDSA P-256 certificate",
            system_line()
        );
        println!(
            "- client: this process (mio + TlsSession, one thread); servers: one process each, started fresh for every run"
        );
        for k in &ctx.kinds {
            println!("- {}: {}", k.name(), k.describe());
        }
        println!("- load average at start: {load_start}");
    }
    let cmdline: Vec<String> = std::env::args().skip(1).collect();
    eprintln!("throughput {}", cmdline.join(" "));
    if ctx.args.wants("echo") {
        let (sizes, window) = (ctx.args.sizes.clone(), ctx.args.window());
        scenario_echo(&mut ctx, &sizes, window);
    }
    let check = ctx.args.window_check;
    if ctx.args.wants("window") && check > 0 {
        let size = ctx.args.window_size;
        scenario_echo(&mut ctx, &[size], check);
    }
    if ctx.args.wants("multi") && ctx.args.multi_conns > 0 {
        let (n, b, w) = (
            ctx.args.multi_conns,
            ctx.args.multi_bytes,
            ctx.args.window(),
        );
        scenario_conns(&mut ctx, "multi", n, b, w);
        if ctx.args.wants("window") && check > 0 {
            scenario_conns(&mut ctx, "multi", n, b, check);
        }
    }
    if ctx.args.wants("handshake") && ctx.args.handshakes > 0 {
        scenario_handshake(&mut ctx);
    }
    let idle = ctx.args.wants("idle") && ctx.args.idle > 0;
    let stalled = ctx.args.wants("stalled") && ctx.args.stalled > 0;
    if idle || stalled {
        scenario_memory(&mut ctx, idle, stalled);
    }
    if ctx.args.wants("many") && ctx.args.many_conns > 0 {
        let (n, b, w) = (ctx.args.many_conns, ctx.args.many_bytes, ctx.args.window());
        scenario_conns(&mut ctx, "many", n, b, w);
    }
    let load_end = loadavg();
    if ctx.args.json {
        println!(
            "{{\"test\":\"end\",\"loadavg\":\"{load_end}\",\"failures\":{}}}",
            ctx.failures.len()
        );
    } else {
        println!("\n- load average at the end: {load_end}");
    }
    let strict = ctx.args.strict || std::env::var_os("CI").is_some();
    let mut missing: Vec<String> = missing.iter().map(|m| format!("the {m} arm")).collect();
    missing.extend(ctx.skipped.iter().cloned());
    if !ctx.failures.is_empty() || (strict && !missing.is_empty()) {
        eprintln!(
            "\nthroughput: {} measurement(s) failed:",
            ctx.failures.len()
        );
        for f in &ctx.failures {
            eprintln!("  - {f}");
        }
        if strict && !missing.is_empty() {
            eprintln!("  - skipped (--strict or CI): {}", missing.join("; "));
        }
        return 1;
    }
    if !missing.is_empty() {
        eprintln!("\nthroughput: skipped: {}", missing.join("; "));
    }
    0
}
