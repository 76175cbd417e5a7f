//! Peers we did not write, as child processes: a temp dir for their files, a guard that
//! kills them on every path, bounded runs that collect their output, and
//! `openssl s_server` on a free port.

use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long `s_server` may take to start.
const START_LIMIT: Duration = Duration::from_secs(20);

/// A directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .subsec_nanos();
        let dir = std::env::temp_dir().join(format!(
            "biotls-test-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn file(&self, name: &str) -> String {
        self.0.join(name).to_str().unwrap().to_owned()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process that is killed and reaped when dropped.
pub struct Guard(pub Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Collects a pipe's output on a thread.
pub fn collect(mut pipe: impl Read + Send + 'static) -> (Arc<Mutex<Vec<u8>>>, JoinHandle<()>) {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let b = Arc::clone(&buf);
    let thread = std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = pipe.read(&mut chunk) {
            if n == 0 {
                break;
            }
            b.lock().unwrap().extend_from_slice(&chunk[..n]);
        }
    });
    (buf, thread)
}

/// What a peer process did.
#[derive(Debug)]
pub struct Ran {
    /// `None`: still running at the deadline, then killed.
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `cmd` with `input` on stdin. Stdin stays open until `expect` shows up in stdout
/// (then it is closed, which makes s_client and gnutls-cli close the connection and
/// exit), or until the process exits by itself; after `limit` it is killed.
pub fn run_peer(cmd: &mut Command, input: &[u8], expect: Option<&str>, limit: Duration) -> Ran {
    let mut child = Guard(
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}")),
    );
    let (out, out_thread) = collect(child.0.stdout.take().unwrap());
    let (err, err_thread) = collect(child.0.stderr.take().unwrap());
    let mut stdin = child.0.stdin.take();
    if let Some(s) = stdin.as_mut() {
        s.write_all(input).unwrap();
        s.flush().unwrap();
    }
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.0.kill();
            let _ = child.0.wait();
            break None;
        }
        if let Some(expect) = expect
            && stdin.is_some()
            && String::from_utf8_lossy(&out.lock().unwrap()).contains(expect)
        {
            stdin = None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    drop(stdin);
    drop(child);
    let _ = out_thread.join();
    let _ = err_thread.join();
    let text = |b: &Arc<Mutex<Vec<u8>>>| String::from_utf8_lossy(&b.lock().unwrap()).into_owned();
    Ran {
        status,
        stdout: text(&out),
        stderr: text(&err),
    }
}

/// `openssl s_server` on a free port with `cert`/`key`, once it says "ACCEPT".
pub fn s_server(cert: &str, key: &str, extra: &[&str]) -> (Guard, u16) {
    for _ in 0..5 {
        // s_server cannot listen on port 0: take a free port and hand it over.
        let port = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut child = Guard(
            Command::new("openssl")
                .args(["s_server", "-accept"])
                .arg(format!("127.0.0.1:{port}"))
                .args(["-cert", cert, "-key", key])
                .args(extra)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let (out, _reader) = collect(child.0.stdout.take().unwrap());
        let deadline = Instant::now() + START_LIMIT;
        loop {
            if String::from_utf8_lossy(&out.lock().unwrap()).contains("ACCEPT") {
                return (child, port);
            }
            if child.0.try_wait().unwrap().is_some() {
                break; // the port was taken meanwhile: try another
            }
            assert!(Instant::now() < deadline, "s_server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    panic!("s_server could not listen on any of 5 ports");
}
