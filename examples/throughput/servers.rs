//! The servers under test, each run as a process of its own, and what is read about
//! them from outside: CPU time and resident memory.
//!
//! - `biotls`: the `tls_echo_server` example (this crate's `Tls` handle on one `Loop`).
//! - `blocking`: `openssl::ssl::SslStream` over `std::net::TcpStream`, a thread per
//!   connection (this binary, `--serve blocking-tls`).
//! - `tokio`: tokio + tokio-openssl (`peers/tokio-echo`, built on demand).
//! - `tcp-floor`: plain TCP echo, a thread per connection (`--serve blocking-tcp`).
//!
//! Every child is killed when its `ServerProcess` is dropped, which includes unwinding
//! from a panic; the orchestrator also kills them on SIGINT/SIGTERM (see `main`).

use std::cell::{Cell, RefCell};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use biotls::openssl::ssl::{SslAcceptor, SslFiletype, SslMethod};

/// Process ids of the children alive now, for the signal handler.
pub static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// Makes `cmd`'s process die with this one, however this one ends (even by SIGKILL,
/// which no handler sees): the kernel sends it SIGKILL when its parent thread exits.
/// Children are spawned from the main thread, which lives as long as the process.
pub fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the child between fork and exec and only calls
    // prctl(2) and getppid(2), both async-signal-safe; it allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent may already be gone: then nobody would kill us.
            if libc::getppid() == 1 {
                return Err(io::Error::other("parent exited"));
            }
            Ok(())
        });
    }
}

/// Kills every child still registered (from the signal handler's thread).
pub fn kill_all_children() {
    let pids = CHILDREN.lock().map(|v| v.clone()).unwrap_or_default();
    for pid in pids {
        // SAFETY: kill(2) with a pid we spawned and have not reaped yet (it is removed
        // from CHILDREN before `wait`), so it cannot name another process.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGKILL);
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum Kind {
    Biotls,
    /// Another `tls_echo_server` binary (`--before PATH`), for before/after comparisons
    /// in one sitting.
    Before,
    Blocking,
    Tokio,
    TcpFloor,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Biotls => "biotls",
            Kind::Before => "before",
            Kind::Blocking => "blocking",
            Kind::Tokio => "tokio-openssl",
            Kind::TcpFloor => "TCP floor",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Kind::Biotls => "tls_echo_server (this crate: Tls handles on one Loop)",
            Kind::Before => "another tls_echo_server binary, given with --before",
            Kind::Blocking => {
                "SslStream over std::net::TcpStream, one thread per connection (--serve blocking-tls)"
            }
            Kind::Tokio => {
                "tokio multi-thread runtime + tokio-openssl, a task per connection (peers/tokio-echo)"
            }
            Kind::TcpFloor => {
                "plain TCP echo, one thread per connection, 64 KiB reads (--serve blocking-tcp)"
            }
        }
    }

    pub fn is_tls(self) -> bool {
        self != Kind::TcpFloor
    }
}

/// How to start each kind of server.
pub struct Launcher {
    pub tls_echo_server: PathBuf,
    /// `--before PATH`: the binary of the `before` arm.
    pub before: Option<PathBuf>,
    pub tokio_echo: Option<PathBuf>,
    pub myself: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub log_dir: PathBuf,
    /// `--perf DIR`: record a profile of every server run into DIR.
    pub perf: Option<PathBuf>,
    /// `--wrap CMD`: the command (and its arguments) the biotls servers run under.
    pub wrap: Vec<String>,
    /// The measurement under way, for the profiles' file names.
    pub label: RefCell<String>,
    pub seq: Cell<usize>,
}

/// A server child process, killed on drop (after its profiler, if any, has finished).
pub struct ServerProcess {
    pub kind: Kind,
    pub addr: SocketAddr,
    child: Child,
    log: PathBuf,
    perf: Option<Child>,
    /// Runs under `--wrap`: stopped with SIGTERM, so that the wrapper writes its output.
    wrapped: bool,
}

impl Launcher {
    pub fn start(&self, kind: Kind) -> io::Result<ServerProcess> {
        let addr = free_port()?;
        let mut cmd = match kind {
            Kind::Biotls | Kind::Before => {
                let binary = match kind {
                    Kind::Before => self
                        .before
                        .as_ref()
                        .ok_or_else(|| io::Error::other("no --before binary"))?,
                    _ => &self.tls_echo_server,
                };
                let mut c = match self.wrap.split_first() {
                    Some((wrapper, args)) => {
                        let mut c = Command::new(wrapper);
                        c.args(args).arg(binary);
                        c
                    }
                    None => Command::new(binary),
                };
                c.arg("--listen").arg(addr.to_string());
                c.arg("--cert").arg(&self.cert).arg("--key").arg(&self.key);
                c
            }
            Kind::Blocking => {
                let mut c = Command::new(&self.myself);
                c.args(["--serve", "blocking-tls", &addr.to_string()]);
                c.arg("--cert").arg(&self.cert).arg("--key").arg(&self.key);
                c
            }
            Kind::Tokio => {
                let path = self
                    .tokio_echo
                    .as_ref()
                    .ok_or_else(|| io::Error::other("tokio-echo was not built"))?;
                let mut c = Command::new(path);
                c.arg("--listen").arg(addr.to_string());
                c.arg("--cert").arg(&self.cert).arg("--key").arg(&self.key);
                c
            }
            Kind::TcpFloor => {
                let mut c = Command::new(&self.myself);
                c.args(["--serve", "blocking-tcp", &addr.to_string()]);
                c
            }
        };
        let log = self.log_dir.join(format!(
            "{}-{}.log",
            kind.name().replace(' ', "-"),
            addr.port()
        ));
        die_with_parent(&mut cmd);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .map_err(|e| io::Error::other(format!("cannot start {cmd:?}: {e}")))?;
        if let Ok(mut pids) = CHILDREN.lock() {
            pids.push(child.id());
        }
        let wrapped = !self.wrap.is_empty() && matches!(kind, Kind::Biotls | Kind::Before);
        let mut server = ServerProcess {
            kind,
            addr,
            child,
            log,
            perf: None,
            wrapped,
        };
        // A wrapper such as valgrind takes seconds to start.
        let limit = if wrapped { 60 } else { 10 };
        server.wait_listening(Duration::from_secs(limit))?;
        if let Some(dir) = &self.perf {
            server.perf = Some(self.start_perf(dir, &server)?);
        }
        Ok(server)
    }

    /// `perf record` attached to the server: DWARF call graphs, 999 samples a second.
    fn start_perf(&self, dir: &Path, server: &ServerProcess) -> io::Result<Child> {
        let seq = self.seq.get() + 1;
        self.seq.set(seq);
        let label: String = self
            .label
            .borrow()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let file = dir.join(format!(
            "{seq:03}-{label}-{}.data",
            server.kind.name().replace(' ', "-")
        ));
        let mut cmd = Command::new("perf");
        cmd.args([
            "record",
            "-q",
            "-B",
            "-F",
            "999",
            "--call-graph",
            "dwarf,32768",
        ])
        .arg("-p")
        .arg(server.pid().to_string())
        .arg("-o")
        .arg(&file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        die_with_parent(&mut cmd);
        let child = cmd
            .spawn()
            .map_err(|e| io::Error::other(format!("cannot run perf (--perf): {e}")))?;
        if let Ok(mut pids) = CHILDREN.lock() {
            pids.push(child.id());
        }
        eprint!("[perf: {}]", file.display());
        // perf prints nothing once attached: give it time to.
        thread::sleep(Duration::from_millis(500));
        Ok(child)
    }
}

impl ServerProcess {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until the server accepts connections (one probe connection, closed at
    /// once: before any measurement starts).
    fn wait_listening(&mut self, limit: Duration) -> io::Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Err(io::Error::other(format!(
                    "{} exited ({status}) before listening: {}",
                    self.kind.name(),
                    self.log_tail()
                )));
            }
            if TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok() {
                // Let the server see the probe's end before anything is measured.
                thread::sleep(Duration::from_millis(20));
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(io::Error::other(format!(
                    "{} did not listen on {} within {limit:?}: {}",
                    self.kind.name(),
                    self.addr,
                    self.log_tail()
                )));
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// The process's CPU time (user + system, all threads, dead ones included).
    pub fn cpu(&self) -> Duration {
        process_cpu(self.pid())
    }

    /// CPU time once the server has gone quiet: what it does after the client's last
    /// byte (closing connections) is counted, up to `limit`.
    pub fn cpu_settled(&self, limit: Duration) -> Duration {
        let deadline = Instant::now() + limit;
        let mut last = self.cpu();
        loop {
            thread::sleep(Duration::from_millis(20));
            let now = self.cpu();
            if now == last || Instant::now() > deadline {
                return now;
            }
            last = now;
        }
    }

    /// Minor page faults of the process so far (all threads; `/proc/PID/stat`).
    pub fn minor_faults(&self) -> u64 {
        proc_stat_field(self.pid(), 10)
    }

    /// Resident memory of the process in bytes.
    pub fn rss(&self) -> u64 {
        rss_bytes(self.pid())
    }

    /// Whether the child is still running (a crashed server fails the measurement).
    pub fn check_alive(&mut self) -> io::Result<()> {
        match self.child.try_wait()? {
            None => Ok(()),
            Some(status) => Err(io::Error::other(format!(
                "{} exited ({status}): {}",
                self.kind.name(),
                self.log_tail()
            ))),
        }
    }

    /// Checks the log budget of `tls_echo_server`: at most one line per connection at
    /// the default level, none while data flows. `connections` counts this run's
    /// connections; the probe and the start-up line are allowed for.
    pub fn check_log_lines(&self, connections: usize) -> io::Result<()> {
        // Under --wrap the wrapper writes to the same stderr.
        if !matches!(self.kind, Kind::Biotls | Kind::Before) || self.wrapped {
            return Ok(());
        }
        let lines = std::fs::read_to_string(&self.log)
            .map(|t| t.lines().count())
            .unwrap_or(0);
        let allowed = connections + 2;
        if lines > allowed {
            return Err(io::Error::other(format!(
                "tls_echo_server logged {lines} lines for {connections} connections \
                 (at most one per connection plus start-up allowed): {}",
                self.log_tail()
            )));
        }
        Ok(())
    }

    /// The last lines of the server's stderr, for error messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().rev().take(5).collect();
        if lines.is_empty() {
            "(no output)".into()
        } else {
            lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Some(mut perf) = self.perf.take() {
            // SAFETY: kill(2) on our own child, not yet reaped.
            unsafe {
                libc::kill(perf.id() as libc::pid_t, libc::SIGINT);
            }
            let deadline = Instant::now() + Duration::from_secs(60);
            while matches!(perf.try_wait(), Ok(None)) && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(50));
            }
            let _ = perf.kill();
            if let Ok(mut pids) = CHILDREN.lock() {
                pids.retain(|&p| p != perf.id());
            }
            let _ = perf.wait();
        }
        if self.wrapped {
            // tls_echo_server ends on SIGTERM; a profiler then writes its report.
            // SAFETY: kill(2) on our own child, not yet reaped.
            unsafe {
                libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(120);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = self.child.kill();
        if let Ok(mut pids) = CHILDREN.lock() {
            pids.retain(|&p| p != self.child.id());
        }
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

fn free_port() -> io::Result<SocketAddr> {
    TcpListener::bind("127.0.0.1:0")?.local_addr()
}

/// User plus system CPU time of process `pid`, all its threads, including those that
/// have exited, with nanosecond resolution: the process's CPU-time clock
/// (`clock_getcpuclockid`). Falls back to `/proc/PID/stat` (10 ms ticks) if the clock
/// cannot be read.
pub fn process_cpu(pid: u32) -> Duration {
    let mut clock: libc::clockid_t = 0;
    // SAFETY: clock_getcpuclockid writes one clockid_t through a valid pointer.
    let rc = unsafe { libc::clock_getcpuclockid(pid as libc::pid_t, &mut clock) };
    if rc == 0 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes one timespec through a valid pointer.
        if unsafe { libc::clock_gettime(clock, &mut ts) } == 0 {
            return Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32);
        }
    }
    proc_stat_cpu(pid)
}

/// Field `n` (numbered from 1, as in proc(5)) of `/proc/PID/stat`, or 0.
fn proc_stat_field(pid: u32, n: usize) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // After the command name come the fields from `state` (field 3) on.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(n - 3))
        .and_then(|f| f.parse::<u64>().ok())
        .unwrap_or(0)
}

/// User plus system CPU time from `/proc/PID/stat` (fields 14 and 15), in clock ticks
/// of 10 ms.
pub fn proc_stat_cpu(pid: u32) -> Duration {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let ticks = proc_stat_field(pid, 14) + proc_stat_field(pid, 15);
    Duration::from_nanos(ticks * 1_000_000_000 / hz)
}

pub fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Builds a binary with cargo, streaming cargo's output, bounded by `limit`. Returns
/// false (having said why) if the build failed or took too long.
pub fn cargo_build(what: &str, args: &[&str], target_dir: &Path, limit: Duration) -> bool {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    // Under `cargo run`, this process inherits the variables cargo sets for the package
    // it runs. Some build scripts (ring's) ask to rerun when those change, so passing
    // them on would rebuild them here and again at the next plain `cargo build`.
    for (name, _) in std::env::vars_os() {
        let n = name.to_string_lossy();
        if n.starts_with("CARGO_PKG_")
            || matches!(
                n.as_ref(),
                "CARGO_MANIFEST_DIR"
                    | "CARGO_MANIFEST_PATH"
                    | "CARGO_MANIFEST_LINKS"
                    | "CARGO_CRATE_NAME"
                    | "CARGO_BIN_NAME"
                    | "CARGO_PRIMARY_PACKAGE"
                    | "OUT_DIR"
            )
        {
            cmd.env_remove(&name);
        }
    }
    cmd.arg("build")
        .args(args)
        .arg("--target-dir")
        .arg(target_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    eprintln!("building {what}: {cmd:?}");
    die_with_parent(&mut cmd);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cannot run cargo: {e}");
            return false;
        }
    };
    if let Ok(mut pids) = CHILDREN.lock() {
        pids.push(child.id());
    }
    // Relay cargo's progress lines, prefixed, so a long first build is visibly alive.
    let stderr = child.stderr.take();
    let relay = thread::spawn(move || {
        let Some(stderr) = stderr else { return };
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let line = line.trim();
            if line.starts_with("Compiling")
                || line.starts_with("Blocking")
                || line.starts_with("error")
                || line.starts_with("warning: unused")
                || line.starts_with("Finished")
                || line.contains("failed")
                || line.starts_with("-->")
                || line.starts_with("Updating")
                || line.starts_with("Downloaded")
            {
                eprintln!("    | {line}");
            }
        }
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                eprintln!("building {what}: no result after {limit:?}; stopped it");
                break None;
            }
            Ok(None) => thread::sleep(Duration::from_millis(100)),
            Err(e) => {
                eprintln!("building {what}: {e}");
                break None;
            }
        }
    };
    if let Ok(mut pids) = CHILDREN.lock() {
        pids.retain(|&p| p != child.id());
    }
    let _ = relay.join();
    match status {
        Some(s) if s.success() => true,
        Some(s) => {
            eprintln!("building {what} failed ({s})");
            false
        }
        None => false,
    }
}

/// `--serve blocking-tls ADDR --cert C --key K`: the blocking TLS echo server a user
/// would write with the `openssl` crate: `SslAcceptor::mozilla_intermediate_v5`, an
/// accept loop, a thread per connection, `read`/`write_all` with a 16 KiB buffer until
/// the peer's close_notify, then ours. Runs until killed.
pub fn serve_blocking_tls(addr: &str, cert: &Path, key: &Path) -> io::Result<()> {
    let acceptor = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls())
        .and_then(|mut b| {
            b.set_certificate_chain_file(cert)?;
            b.set_private_key_file(key, SslFiletype::PEM)?;
            b.check_private_key()?;
            Ok(b.build())
        })
        .map_err(io::Error::other)?;
    let listener = TcpListener::bind(addr)?;
    for conn in listener.incoming() {
        let Ok(tcp) = conn else { continue };
        let acceptor = acceptor.clone();
        thread::spawn(move || {
            let _ = tcp.set_nodelay(true);
            let Ok(mut s) = acceptor.accept(tcp) else {
                return;
            };
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                match s.read(&mut buf) {
                    // `SslStream`'s `Read` returns 0 for the peer's close_notify.
                    Ok(0) => {
                        let _ = s.shutdown();
                        return;
                    }
                    Ok(n) => {
                        if s.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                    Err(_) => return,
                }
            }
        });
    }
    Ok(())
}

/// `--serve blocking-tcp ADDR`: plain TCP echo, a thread per connection, 64 KiB
/// reads. The floor: what the kernel's loopback costs an echo server per byte.
pub fn serve_blocking_tcp(addr: &str) -> io::Result<()> {
    let listener = TcpListener::bind(addr)?;
    for conn in listener.incoming() {
        let Ok(mut tcp) = conn else { continue };
        thread::spawn(move || {
            let _ = tcp.set_nodelay(true);
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match tcp.read(&mut buf) {
                    Ok(0) => {
                        let _ = tcp.shutdown(std::net::Shutdown::Write);
                        return;
                    }
                    Ok(n) => {
                        if tcp.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                    Err(_) => return,
                }
            }
        });
    }
    Ok(())
}
