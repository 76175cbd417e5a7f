//! cargo run --release --example throughput
//!
//! Compares, in one run on loopback, the `Tls` and `Tcp` handles on a loop against
//! blocking sockets (`std::net::TcpStream`, and `openssl::ssl::SslStream` over it) with
//! one thread per connection. Every arm uses the same certificates, TLS 1.3 with
//! TLS_AES_128_GCM_SHA256, and the same loop-based client on its own thread, so the
//! server is the only thing that differs. The figure that separates implementations on
//! a small machine is the server's CPU time per GiB (thread CPU time, summed over the
//! server's threads); MiB/s is capped by the client, which shares the cores.
//!
//! Prints a table with the ratio of each loop arm to its blocking counterpart, then
//! full handshakes per second, full against resumed handshakes (rate and server CPU
//! each), a many-connections run and idle memory per connection.
//! `--json` prints the same as JSON lines; `--help` lists the knobs.

#[path = "../benches/harness/mod.rs"]
mod harness;

use std::cell::Cell;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::rc::Rc;
use std::thread;
use std::time::{Duration, Instant};

use biotls::tls::{ReadOutcome, Tls, TlsConnector, TlsSession};
use biotls::{Loop, Stream, Tcp};
use bytes::{Bytes, BytesMut};
use clap::Parser;
use harness::{Mode, Proto, Running, Server, Setup, run_client, setup};
use openssl::ssl::Ssl;

#[derive(Parser, Debug)]
#[command(about = "biotls loop handles vs blocking sockets, side by side")]
struct Args {
    /// Write sizes in bytes, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1024,16384,65536,1048576"
    )]
    sizes: Vec<usize>,
    /// Payload bytes per arm (quartered for writes under 16 KiB).
    #[arg(long, default_value_t = 128 << 20)]
    bytes: u64,
    /// Runs of each arm (alternating); the table shows the medians.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Full handshakes per arm.
    #[arg(long, default_value_t = 2000)]
    handshakes: u32,
    /// Connections in the many-connections run (0 skips it).
    #[arg(long, default_value_t = 1000)]
    conns: usize,
    /// Bytes each connection echoes in the many-connections run.
    #[arg(long, default_value_t = 1 << 20)]
    conn_bytes: u64,
    /// Idle TLS connections for the memory measurement (0 skips it).
    #[arg(long, default_value_t = 2000)]
    idle: usize,
    /// Also run one-way bulk (client sends, server discards).
    #[arg(long)]
    bulk: bool,
    /// Only these protocols in the bulk/echo table (comma-separated: tls, tcp).
    #[arg(long, value_delimiter = ',', default_value = "tls,tcp")]
    protos: Vec<String>,
    /// Print JSON lines instead of tables.
    #[arg(long)]
    json: bool,
    /// Also load the servers as processes of their own, from this process: the
    /// `tls_echo_server` example (build it first: `cargo build --release --examples`)
    /// against this example's blocking server run as a child; server CPU from
    /// /proc/PID/stat, idle memory from the server process's RSS.
    #[arg(long)]
    processes: bool,
    /// Internal: serve blocking TLS echo on ADDR with CERT and KEY until killed.
    #[arg(long, hide = true, num_args = 3, value_names = ["ADDR", "CERT", "KEY"])]
    serve_blocking: Option<Vec<String>>,
    /// Internal: hold N idle TLS connections to ADDR (used by the memory measurement).
    #[arg(long, hide = true, num_args = 2, value_names = ["ADDR", "N"])]
    idle_client: Option<Vec<String>>,
}

struct Row {
    test: &'static str,
    arm: String,
    size: usize,
    mib_s: f64,
    cpu_per_gib: f64,
}

fn measure(
    setup: &Setup,
    proto: Proto,
    mode: Mode,
    server: Server,
    size: usize,
    bytes: u64,
) -> Row {
    let running = Running::start(setup, server, proto, mode);
    let wall = run_client(
        proto,
        mode,
        running.addr,
        setup.connector.clone(),
        1,
        bytes,
        size,
    );
    let cpu = running.cpu_after(1).as_secs_f64();
    running.stop();
    let gib = bytes as f64 / (1u64 << 30) as f64;
    Row {
        test: if mode == Mode::Echo { "echo" } else { "bulk" },
        arm: arm_name(proto, server),
        size,
        mib_s: bytes as f64 / (1 << 20) as f64 / wall.as_secs_f64(),
        cpu_per_gib: cpu / gib,
    }
}

/// The row with the median of each figure (MiB/s and CPU taken separately).
fn median(mut runs: Vec<Row>) -> Row {
    let mid = runs.len() / 2;
    let mut speeds: Vec<f64> = runs.iter().map(|r| r.mib_s).collect();
    speeds.sort_by(f64::total_cmp);
    runs.sort_by(|a, b| a.cpu_per_gib.total_cmp(&b.cpu_per_gib));
    let mut row = runs.swap_remove(mid);
    row.mib_s = speeds[mid];
    row
}

fn arm_name(proto: Proto, server: Server) -> String {
    match (proto, server) {
        (Proto::Tls, Server::Loop) => "Tls handle",
        (Proto::Tls, Server::Blocking) => "SslStream blocking",
        (Proto::Tcp, Server::Loop) => "Tcp handle",
        (Proto::Tcp, Server::Blocking) => "TcpStream blocking",
    }
    .to_string()
}

fn human(size: usize) -> String {
    if size >= 1 << 20 {
        format!("{} MiB", size >> 20)
    } else {
        format!("{} KiB", size >> 10)
    }
}

fn handshakes(setup: &Setup, server: Server, count: u32) -> (f64, f64) {
    let running = Running::start(setup, server, Proto::Tls, Mode::Echo);
    let wall = handshake_client(setup, running.addr, count);
    let cpu = running.cpu_after(count as usize).as_secs_f64();
    running.stop();
    (count as f64 / wall.as_secs_f64(), cpu / count as f64 * 1e6)
}

/// Sequential blocking client: connect, full handshake, close_notify, wait for the
/// server's; returns the wall time for `count` of them.
fn handshake_client(setup: &Setup, addr: SocketAddr, count: u32) -> Duration {
    let ctx = setup.connector.context().to_owned();
    thread::spawn(move || {
        let start = Instant::now();
        for _ in 0..count {
            let tcp = std::net::TcpStream::connect(addr).expect("connect");
            let mut ssl = Ssl::new(&ctx).expect("ssl");
            ssl.param_mut().set_host("localhost").expect("host");
            let mut s = ssl.connect(tcp).expect("handshake");
            let _ = s.shutdown();
            let mut b = [0u8; 64];
            while matches!(s.ssl_read(&mut b), Ok(n) if n > 0) {}
        }
        start.elapsed()
    })
    .join()
    .expect("client")
}

/// One connection from a `TlsSession` driven over a blocking socket: handshake, our
/// close_notify, then read to the server's (which takes in its session tickets too).
/// Returns whether the handshake was resumed.
fn session_connection(connector: &TlsConnector, addr: SocketAddr) -> bool {
    let mut tcp = std::net::TcpStream::connect(addr).expect("connect");
    tcp.set_nodelay(true).expect("nodelay");
    let mut s = TlsSession::client(connector, "localhost").expect("session");
    let mut buf = vec![0u8; 32 * 1024];
    let mut receive =
        |tcp: &mut std::net::TcpStream, s: &mut TlsSession| match tcp.read(&mut buf).expect("read")
        {
            0 => s.feed_eof(),
            n => s.feed_ciphertext(Bytes::copy_from_slice(&buf[..n])),
        };
    loop {
        let done = s.handshake().expect("handshake");
        if let Some(out) = s.take_ciphertext() {
            tcp.write_all(&out).expect("write");
        }
        if done {
            break;
        }
        receive(&mut tcp, &mut s);
    }
    let resumed = s.info().resumed;
    s.shutdown().expect("shutdown");
    if let Some(out) = s.take_ciphertext() {
        tcp.write_all(&out).expect("write");
    }
    let mut plain = BytesMut::new();
    loop {
        match s.read(&mut plain) {
            Ok(ReadOutcome::Data(_)) => plain.clear(),
            Ok(ReadOutcome::WantRead) => receive(&mut tcp, &mut s),
            Ok(ReadOutcome::Eof) | Err(_) => break,
        }
    }
    resumed
}

/// `count` sequential connections from `session_connection`: (handshakes per second,
/// server CPU µs per handshake, how many were resumed).
fn session_handshakes(
    setup: &Setup,
    server: Server,
    connector: &TlsConnector,
    count: u32,
) -> (f64, f64, u32) {
    let running = Running::start(setup, server, Proto::Tls, Mode::Echo);
    let addr = running.addr;
    // A first connection brings the ticket the measured ones resume.
    session_connection(connector, addr);
    let cpu_before = running.cpu_after(1).as_secs_f64();
    let c = connector.clone();
    let (wall, resumed) = thread::spawn(move || {
        let start = Instant::now();
        let resumed = (0..count).filter(|_| session_connection(&c, addr)).count();
        (start.elapsed(), resumed as u32)
    })
    .join()
    .expect("client");
    let cpu = running.cpu_after(count as usize + 1).as_secs_f64() - cpu_before;
    running.stop();
    (
        count as f64 / wall.as_secs_f64(),
        cpu / count as f64 * 1e6,
        resumed,
    )
}

/// Full against resumed handshakes, with the same client, for both servers.
fn resumption(args: &Args, setup: &Setup) {
    let n = args.handshakes;
    for (server, name) in [
        (Server::Loop, "Tls handle"),
        (Server::Blocking, "SslStream blocking"),
    ] {
        let (full_rate, full_us, _) = session_handshakes(setup, server, &setup.connector, n);
        let (res_rate, res_us, resumed) = session_handshakes(setup, server, &setup.resuming, n);
        if resumed != n {
            eprintln!("warning: only {resumed} of {n} handshakes were resumed");
        }
        let ratio = res_us / full_us;
        if args.json {
            println!(
                "{{\"test\":\"resumption\",\"arm\":\"{name}\",\"full_per_s\":{full_rate:.0},\"full_server_us\":{full_us:.1},\"resumed_per_s\":{res_rate:.0},\"resumed_server_us\":{res_us:.1},\"resumed\":{resumed},\"cpu_ratio\":{ratio:.2}}}"
            );
        } else {
            println!(
                "{name}: full {full_rate:.0}/s, {full_us:.0} µs server CPU each; \
                 resumed {res_rate:.0}/s, {res_us:.0} µs; resumed/full CPU {ratio:.2}"
            );
        }
    }
}

fn main() {
    let args = Args::parse();
    if let Some(idle) = &args.idle_client {
        idle_client(idle);
        return;
    }
    if let Some(spec) = &args.serve_blocking {
        serve_blocking(spec);
        return;
    }
    let mut args = args;
    fit_to_fd_limit(&mut args);
    let setup = setup();
    println!(
        "biotls throughput — {} ({} cores), loopback, TLS 1.3 TLS_AES_128_GCM_SHA256",
        openssl::version::version(),
        thread::available_parallelism().map_or(0, |n| n.get())
    );
    let modes: &[Mode] = if args.bulk {
        &[Mode::Echo, Mode::Bulk]
    } else {
        &[Mode::Echo]
    };
    for &mode in modes {
        for &size in &args.sizes {
            let bytes = if size < 16 * 1024 {
                args.bytes / 4
            } else {
                args.bytes
            };
            for proto in [Proto::Tls, Proto::Tcp] {
                let name = if proto == Proto::Tls { "tls" } else { "tcp" };
                if !args.protos.iter().any(|p| p == name) {
                    continue;
                }
                // Alternate the arms and keep the median of each figure: the machine is
                // shared, and a burst of noise should not decide a ratio.
                let mut ours = Vec::new();
                let mut theirs = Vec::new();
                for _ in 0..args.repeat.max(1) {
                    ours.push(measure(&setup, proto, mode, Server::Loop, size, bytes));
                    theirs.push(measure(&setup, proto, mode, Server::Blocking, size, bytes));
                }
                let (ours, theirs) = (median(ours), median(theirs));
                print_pair(&args, &ours, &theirs);
            }
        }
    }
    if args.handshakes > 0 {
        let (ours_rate, ours_us) = handshakes(&setup, Server::Loop, args.handshakes);
        let (theirs_rate, theirs_us) = handshakes(&setup, Server::Blocking, args.handshakes);
        if args.json {
            println!(
                "{{\"test\":\"handshake\",\"loop_per_s\":{ours_rate:.0},\"loop_server_us\":{ours_us:.1},\"blocking_per_s\":{theirs_rate:.0},\"blocking_server_us\":{theirs_us:.1},\"cpu_ratio\":{:.2}}}",
                ours_us / theirs_us
            );
        } else {
            println!(
                "\nfull handshakes: Tls handle {ours_rate:.0}/s, {ours_us:.0} µs server CPU each; \
                 SslStream blocking {theirs_rate:.0}/s, {theirs_us:.0} µs; CPU ratio {:.2}",
                ours_us / theirs_us
            );
        }
    }
    if args.handshakes > 0 {
        if !args.json {
            println!(
                "\nfull vs resumed TLS 1.3 handshakes (ECDSA P-256 certificate, ticket \
                 resumption with (EC)DHE; client: a TlsSession over a blocking socket):"
            );
        }
        resumption(&args, &setup);
    }
    if args.conns > 0 {
        many_connections(&args, &setup);
    }
    if args.idle > 0 {
        idle_memory(&args, &setup);
    }
    if args.processes {
        processes(&args, &setup);
    }
}

/// Raises the soft file-descriptor limit to the hard limit and scales the connection
/// counts down, saying so, if even that is too low (both ends of the many-connections
/// run live in this process; the idle clients live in a child process).
fn fit_to_fd_limit(args: &mut Args) {
    let limit = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(1024) as usize;
    let spare = 64;
    let conns_max = limit.saturating_sub(spare) / 2;
    if args.conns > conns_max {
        eprintln!(
            "note: file-descriptor limit {limit}: many-connections run scaled down from {} to {conns_max}",
            args.conns
        );
        args.conns = conns_max;
    }
    let idle_max = limit.saturating_sub(spare);
    if args.idle > idle_max {
        eprintln!(
            "note: file-descriptor limit {limit}: idle connections scaled down from {} to {idle_max}",
            args.idle
        );
        args.idle = idle_max;
    }
}

fn print_pair(args: &Args, ours: &Row, theirs: &Row) {
    let cpu_ratio = ours.cpu_per_gib / theirs.cpu_per_gib;
    let speed_ratio = ours.mib_s / theirs.mib_s;
    if args.json {
        for (r, ratio) in [(ours, Some((cpu_ratio, speed_ratio))), (theirs, None)] {
            let ratios = ratio.map_or(String::new(), |(c, s)| {
                format!(",\"cpu_ratio\":{c:.3},\"speed_ratio\":{s:.3}")
            });
            println!(
                "{{\"test\":\"{}\",\"arm\":\"{}\",\"size\":{},\"mib_s\":{:.1},\"server_cpu_s_per_gib\":{:.3}{ratios}}}",
                r.test, r.arm, r.size, r.mib_s, r.cpu_per_gib
            );
        }
        return;
    }
    if ours.arm == "Tls handle" && ours.size == args.sizes[0] {
        println!(
            "\n{:<5} {:>7}  {:<19} {:>9} {:>13}   {:<19} {:>9} {:>13}   {:>9} {:>9}",
            "test",
            "write",
            "loop arm",
            "MiB/s",
            "srv CPU s/GiB",
            "blocking arm",
            "MiB/s",
            "srv CPU s/GiB",
            "CPU ×",
            "MiB/s ×"
        );
    }
    println!(
        "{:<5} {:>7}  {:<19} {:>9.0} {:>13.3}   {:<19} {:>9.0} {:>13.3}   {:>9.2} {:>9.2}",
        ours.test,
        human(ours.size),
        ours.arm,
        ours.mib_s,
        ours.cpu_per_gib,
        theirs.arm,
        theirs.mib_s,
        theirs.cpu_per_gib,
        cpu_ratio,
        speed_ratio
    );
}

fn many_connections(args: &Args, setup: &Setup) {
    let size = 64 * 1024;
    let total = args.conn_bytes * args.conns as u64;
    let mut results = Vec::new();
    for server in [Server::Loop, Server::Blocking] {
        let running = Running::start(setup, server, Proto::Tls, Mode::Echo);
        let wall = run_client(
            Proto::Tls,
            Mode::Echo,
            running.addr,
            setup.connector.clone(),
            args.conns,
            args.conn_bytes,
            size,
        );
        let cpu = running.cpu_after(args.conns).as_secs_f64();
        running.stop();
        let mib_s = total as f64 / (1 << 20) as f64 / wall.as_secs_f64();
        let cpu_gib = cpu / (total as f64 / (1u64 << 30) as f64);
        results.push((mib_s, cpu_gib));
    }
    let (l, b) = (results[0], results[1]);
    if args.json {
        println!(
            "{{\"test\":\"many_connections\",\"conns\":{},\"loop_mib_s\":{:.1},\"loop_cpu_s_per_gib\":{:.3},\"threads_mib_s\":{:.1},\"threads_cpu_s_per_gib\":{:.3},\"speed_ratio\":{:.3}}}",
            args.conns,
            l.0,
            l.1,
            b.0,
            b.1,
            l.0 / b.0
        );
    } else {
        println!(
            "{} TLS connections × {}: one loop {:.0} MiB/s ({:.3} CPU s/GiB); thread per connection {:.0} MiB/s ({:.3}); throughput ratio {:.2}",
            args.conns,
            human(args.conn_bytes as usize),
            l.0,
            l.1,
            b.0,
            b.1,
            l.0 / b.0
        );
    }
}

fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Idle memory per established TLS connection: a loop server in this process, the
/// clients in a child process, and the growth of this process's RSS.
fn idle_memory(args: &Args, setup: &Setup) {
    let running = Running::start(setup, Server::Loop, Proto::Tls, Mode::Echo);
    thread::sleep(Duration::from_millis(100));
    let before = rss_bytes(std::process::id());
    let exe = std::env::current_exe().expect("current exe");
    let mut child = std::process::Command::new(exe)
        .arg("--idle-client")
        .arg(running.addr.to_string())
        .arg(args.idle.to_string())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn idle client");
    let mut out = child.stdout.take().expect("stdout");
    let mut line = [0u8; 6];
    let ok = out.read_exact(&mut line).is_ok() && &line == b"ready\n";
    thread::sleep(Duration::from_millis(300));
    let after = rss_bytes(std::process::id());
    let _ = child.kill();
    let _ = child.wait();
    running.stop();
    if !ok {
        eprintln!("idle memory: the client process failed");
        return;
    }
    let per = after.saturating_sub(before) as f64 / args.idle as f64 / 1024.0;
    if args.json {
        println!(
            "{{\"test\":\"idle_memory\",\"conns\":{},\"kib_per_conn\":{per:.2}}}",
            args.idle
        );
    } else {
        println!(
            "idle memory: {per:.1} KiB per established TLS connection (server RSS growth over {} connections)",
            args.idle
        );
    }
}

fn idle_client(spec: &[String]) {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let addr: SocketAddr = spec[0].parse().expect("addr");
    let n: usize = spec[1].parse().expect("count");
    let _connections = hold_idle(addr, n);
    println!("ready");
    std::io::stdout().flush().ok();
    // Hold the connections until killed.
    loop {
        thread::sleep(Duration::from_secs(60));
    }
}

/// Opens `n` TLS connections to `addr`, each with one echoed byte, and returns the loop
/// that holds them (dropping it closes them).
fn hold_idle(addr: SocketAddr, n: usize) -> Loop {
    // Memory is measured, not trust: this client skips verification.
    let connector = TlsConnector::builder()
        .expect("connector")
        .danger_disable_certificate_verification()
        .build();
    let mut lp = Loop::new().expect("loop");
    // Connect in small waves: the figure is what an established, idle connection holds,
    // not the transient peak of thousands of simultaneous handshakes.
    const WAVE: usize = 16;
    let ready = Rc::new(Cell::new(0usize));
    let mut started = 0;
    while ready.get() < n {
        while started < n && started - ready.get() < WAVE {
            started += 1;
            let tcp = Tcp::connect(&mut lp, addr, |_, _, _| {}).expect("connect");
            let tls = Tls::client(&mut lp, tcp, &connector, "localhost").expect("tls");
            let r = ready.clone();
            // One round trip per connection so the server has finished its handshake too.
            tls.write(&mut lp, &b"x"[..], |_, _, _| {}).expect("write");
            let _ = tls.start_read(&mut lp, move |lp, tls, res| {
                if let Ok(Some(_)) = res {
                    r.set(r.get() + 1);
                    let _ = tls.stop_read(lp);
                }
            });
        }
        lp.run_once().expect("run");
    }
    lp
}

/// `--serve-blocking`: the blocking server of the in-process table, as a process.
fn serve_blocking(spec: &[String]) {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let acceptor = biotls::tls::TlsAcceptor::builder_from_files(&spec[1], &spec[2])
        .map(|mut b| {
            let _ = b
                .context_builder_mut()
                .set_ciphersuites("TLS_AES_128_GCM_SHA256");
            b.build()
        })
        .expect("certificates");
    let listener = std::net::TcpListener::bind(&spec[0]).expect("bind");
    let _running = harness::start_blocking_server_on(
        listener,
        Proto::Tls,
        Mode::Echo,
        acceptor.context().clone(),
    );
    loop {
        thread::sleep(Duration::from_secs(60));
    }
}

/// User plus system CPU time of process `pid` (from /proc, in clock ticks of 10 ms).
fn process_cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // After the command name come the fields from `state` (field 3) on; utime and stime
    // are fields 14 and 15. Some fields can be negative, so index, don't filter.
    let rest: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let field = |n: usize| {
        rest.get(n - 3)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // USER_HZ is 100 on Linux.
    let ticks = field(14) + field(15);
    Duration::from_millis(ticks * 10)
}

/// A server child process, killed on drop.
struct Child {
    proc: std::process::Child,
    addr: SocketAddr,
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.proc.kill();
        let _ = self.proc.wait();
    }
}

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
}

fn spawn_server(mut cmd: std::process::Command, addr: SocketAddr) -> Option<Child> {
    let proc = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| eprintln!("cannot start {cmd:?}: {e}"))
        .ok()?;
    let child = Child { proc, addr };
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        if Instant::now() > deadline {
            eprintln!("{cmd:?} did not start listening on {addr}");
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
    Some(child)
}

/// `--processes`: `tls_echo_server` and the blocking server as processes of their own.
fn processes(args: &Args, setup: &Setup) {
    let exe = std::env::current_exe().expect("current exe");
    let echo_server = exe.with_file_name("tls_echo_server");
    if !echo_server.exists() {
        eprintln!(
            "--processes: {} not found; build it with `cargo build --release --examples`",
            echo_server.display()
        );
        return;
    }
    let dir = std::env::temp_dir().join(format!("biotls-throughput-{}", std::process::id()));
    setup.pki.write_to_dir(&dir).expect("write certificates");
    let (cert, key) = (dir.join("server.pem"), dir.join("server.key"));
    let loop_addr = free_port();
    let mut cmd = std::process::Command::new(&echo_server);
    cmd.arg("--listen")
        .arg(loop_addr.to_string())
        .arg("--cert")
        .arg(&cert)
        .arg("--key")
        .arg(&key);
    let loop_server = spawn_server(cmd, loop_addr);
    let blocking_addr = free_port();
    let mut cmd = std::process::Command::new(&exe);
    cmd.arg("--serve-blocking")
        .arg(blocking_addr.to_string())
        .arg(&cert)
        .arg(&key);
    let blocking_server = spawn_server(cmd, blocking_addr);
    let (Some(ours), Some(theirs)) = (loop_server, blocking_server) else {
        let _ = std::fs::remove_dir_all(&dir);
        return;
    };
    if !args.json {
        println!(
            "\nservers as processes: tls_echo_server vs a blocking SslStream server (thread per connection)"
        );
    }
    let measure = |child: &Child, size: usize, bytes: u64| {
        let before = process_cpu(child.proc.id());
        let wall = run_client(
            Proto::Tls,
            Mode::Echo,
            child.addr,
            setup.connector.clone(),
            1,
            bytes,
            size,
        );
        thread::sleep(Duration::from_millis(50));
        let cpu = process_cpu(child.proc.id())
            .saturating_sub(before)
            .as_secs_f64();
        Row {
            test: "echo",
            arm: String::new(),
            size,
            mib_s: bytes as f64 / (1 << 20) as f64 / wall.as_secs_f64(),
            cpu_per_gib: cpu / (bytes as f64 / (1u64 << 30) as f64),
        }
    };
    for &size in &args.sizes {
        // Twice the in-process payload: process CPU comes in 10 ms ticks.
        let bytes = 2 * if size < 16 * 1024 {
            args.bytes / 4
        } else {
            args.bytes
        };
        let mut a = Vec::new();
        let mut b = Vec::new();
        for _ in 0..args.repeat.max(1) {
            a.push(measure(&ours, size, bytes));
            b.push(measure(&theirs, size, bytes));
        }
        let (mut a, mut b) = (median(a), median(b));
        a.arm = "tls_echo_server".into();
        b.arm = "blocking process".into();
        print_pair(args, &a, &b);
    }
    if args.handshakes > 0 {
        let rate_cpu = |child: &Child| {
            let before = process_cpu(child.proc.id());
            let wall = handshake_client(setup, child.addr, args.handshakes);
            thread::sleep(Duration::from_millis(50));
            let cpu = process_cpu(child.proc.id())
                .saturating_sub(before)
                .as_secs_f64();
            (
                args.handshakes as f64 / wall.as_secs_f64(),
                cpu / args.handshakes as f64 * 1e6,
            )
        };
        let (or, ou) = rate_cpu(&ours);
        let (tr, tu) = rate_cpu(&theirs);
        println!(
            "processes, full handshakes: tls_echo_server {or:.0}/s, {ou:.0} µs server CPU each; blocking {tr:.0}/s, {tu:.0} µs; CPU ratio {:.2}",
            ou / tu
        );
    }
    if args.idle > 0 {
        for child in [&ours, &theirs] {
            let before = rss_bytes(child.proc.id());
            let held = hold_idle(child.addr, args.idle);
            thread::sleep(Duration::from_millis(300));
            let after = rss_bytes(child.proc.id());
            drop(held);
            println!(
                "processes, idle memory: {} {:.1} KiB per established TLS connection (RSS growth over {})",
                if std::ptr::eq(child, &ours) {
                    "tls_echo_server"
                } else {
                    "blocking"
                },
                after.saturating_sub(before) as f64 / args.idle as f64 / 1024.0,
                args.idle
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
