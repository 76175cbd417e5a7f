//! The examples as processes of their own: built on demand (`cargo build --example`,
//! into the target directory this test runs from, so the build is a no-op after
//! `cargo test`), then run like a user would, with their log on stderr collected.

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::peer::{Guard, collect};

/// Time for the server to start (the example may need building first) and to log what a
/// test waits for.
const START_LIMIT: Duration = Duration::from_secs(300);
const LOG_LIMIT: Duration = Duration::from_secs(30);

/// The path of example `name`'s executable, built with the profile of this test binary.
///
/// The test binary lives in `<target>/<profile>/deps/`; the example goes to
/// `<target>/<profile>/examples/`.
pub fn example_path(name: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    let exe = std::env::current_exe().expect("current exe");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("<target>/<profile>/deps/<test>")
        .to_path_buf();
    let target_dir = profile_dir.parent().expect("<target>").to_path_buf();
    let built = BUILT.get_or_init(Mutex::default);
    let mut built = built.lock().unwrap_or_else(|e| e.into_inner());
    if !built.iter().any(|n| n == name) {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--quiet", "--example", name, "--target-dir"])
            .arg(&target_dir)
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        if profile_dir.file_name() == Some(OsStr::new("release")) {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("running cargo build");
        assert!(status.success(), "cargo build --example {name}: {status}");
        built.push(name.to_owned());
    }
    profile_dir.join("examples").join(name)
}

/// `tls_echo_server` running as a child process on an ephemeral loopback port; killed
/// when dropped.
pub struct EchoServerProcess {
    child: Guard,
    pub addr: SocketAddr,
    log: Arc<Mutex<Vec<u8>>>,
    _reader: JoinHandle<()>,
}

impl EchoServerProcess {
    /// Starts `tls_echo_server --listen 127.0.0.1:0 ARGS` (log level `info`) and waits
    /// until it says where it listens.
    pub fn start<I, S>(args: I) -> EchoServerProcess
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        EchoServerProcess::start_example("tls_echo_server", args)
    }

    /// Starts example `name` with `--listen 127.0.0.1:0 ARGS` (log level `info`) and
    /// waits until it logs "listening on ADDR".
    pub fn start_example<I, S>(name: &str, args: I) -> EchoServerProcess
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut child = Guard(
            Command::new(example_path(name))
                .args(["--listen", "127.0.0.1:0"])
                .args(args)
                .env("RUST_LOG", "info")
                .env("RUST_LOG_STYLE", "never")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap_or_else(|e| panic!("spawning {name}: {e}")),
        );
        let (log, reader) = collect(child.0.stderr.take().expect("stderr"));
        let deadline = Instant::now() + START_LIMIT;
        let addr = loop {
            let text = String::from_utf8_lossy(&log.lock().unwrap()).into_owned();
            if let Some(addr) = text
                .split("listening on ")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|a| a.parse().ok())
            {
                break addr;
            }
            if let Some(status) = child.0.try_wait().expect("try_wait") {
                panic!("{name} exited with {status}:\n{text}");
            }
            assert!(Instant::now() < deadline, "{name} did not start:\n{text}");
            std::thread::sleep(Duration::from_millis(20));
        };
        EchoServerProcess {
            child,
            addr,
            log,
            _reader: reader,
        }
    }

    /// Everything the server logged so far.
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&self.log.lock().unwrap()).into_owned()
    }

    /// How many times `text` appears in the log.
    pub fn count(&self, text: &str) -> usize {
        self.log().matches(text).count()
    }

    /// Waits until `text` appears in the log at least `n` times; returns the line of
    /// the `n`-th.
    pub fn wait_for(&self, text: &str, n: usize) -> String {
        let deadline = Instant::now() + LOG_LIMIT;
        loop {
            let log = self.log();
            if let Some(line) = log.lines().filter(|l| l.contains(text)).nth(n - 1) {
                return line.to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "no {n} x {text:?} in the server's log:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGHUP (through the shell's `kill`, present on every system that runs
    /// these tests).
    pub fn sighup(&self) {
        let pid = self.child.0.id().to_string();
        let status = Command::new("sh")
            .args(["-c", "kill -HUP \"$1\"", "sh", &pid])
            .status()
            .expect("running sh");
        assert!(status.success(), "kill -HUP {pid}: {status}");
    }
}
