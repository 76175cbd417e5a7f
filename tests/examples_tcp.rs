//! The echo service of the `tcp_echo_server` example (`biotls::echo` over `Tcp`), checked
//! by a peer we did not write: `tests/peers/py_echo_check.py`, Python's own sockets.
//!
//! Needs `python3`. Without it the test is skipped with a loud message, unless the `CI`
//! environment variable is set, where a missing `python3` fails the test.

use std::io::Read;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use biotls::echo::{EchoEnd, EchoOptions, echo_with};
use biotls::{Async, AsyncSender, Loop, TcpListener};

const LIMIT: Duration = Duration::from_secs(60);
const CHECKER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/py_echo_check.py");

/// Whether `python3` can run; skips loudly, or fails under `CI`.
fn have_python3() -> bool {
    match Command::new("python3").arg("--version").output() {
        Ok(out) if out.status.success() => true,
        result => {
            let why = match result {
                Ok(out) => format!("`python3 --version` exited with {}", out.status),
                Err(e) => format!("cannot run python3: {e}"),
            };
            assert!(
                std::env::var_os("CI").is_none(),
                "{why}; python3 is required when CI is set"
            );
            eprintln!("\n*** SKIPPED: {why}; install python3 to run this test ***\n");
            false
        }
    }
}

/// The example's accept-and-echo on a loop thread. Returns its address, a sender that
/// stops it, the loop thread, and a channel with each connection's end.
fn spawn_echo_server() -> (
    SocketAddr,
    AsyncSender,
    JoinHandle<()>,
    mpsc::Receiver<String>,
) {
    let (ready_tx, ready_rx) = mpsc::channel();
    let (end_tx, end_rx) = mpsc::channel();
    let thread = thread::spawn(move || {
        let mut lp = Loop::new().unwrap();
        let listener = TcpListener::bind(&mut lp, "127.0.0.1:0".parse().unwrap()).unwrap();
        listener
            .listen(&mut lp, move |lp, _, accepted| {
                let tcp = accepted.expect("accept");
                tcp.set_nodelay(lp, true).unwrap();
                let end_tx = end_tx.clone();
                echo_with(lp, tcp, EchoOptions::default(), move |_, _, end| {
                    let _ = end_tx.send(match end {
                        EchoEnd::Done => "done".to_string(),
                        EchoEnd::Failed(e) => format!("failed: {e}"),
                    });
                })
                .unwrap();
            })
            .unwrap();
        let (_, stop) = Async::new(&mut lp, move |lp, stop| {
            listener.close(lp);
            stop.close(lp);
            lp.stop();
        })
        .unwrap();
        ready_tx
            .send((listener.local_addr(&lp).unwrap(), stop))
            .unwrap();
        lp.run().unwrap();
    });
    let (addr, stop) = ready_rx.recv_timeout(LIMIT).expect("echo server started");
    (addr, stop, thread, end_rx)
}

/// Runs the checker against `addr`, killing it after `LIMIT`; returns (success, stdout,
/// stderr).
fn run_checker(addr: SocketAddr, nbytes: usize) -> (bool, String, String) {
    let mut child = Command::new("python3")
        .arg(CHECKER)
        .arg(addr.ip().to_string())
        .arg(addr.port().to_string())
        .arg(nbytes.to_string())
        .args(["--timeout", &LIMIT.as_secs().to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn python3");
    let deadline = Instant::now() + LIMIT + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("py_echo_check.py still running after {LIMIT:?}; killed");
        }
        thread::sleep(Duration::from_millis(20));
    };
    let (mut out, mut err) = (String::new(), String::new());
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (status.success(), out, err)
}

#[test]
fn python_peer_gets_eight_mib_echoed_byte_for_byte() {
    if !have_python3() {
        return;
    }
    const NBYTES: usize = 8 << 20;
    let (addr, stop, server, ends) = spawn_echo_server();
    let (ok, out, err) = run_checker(addr, NBYTES);
    assert!(ok, "py_echo_check.py failed:\n{out}{err}");
    assert_eq!(out.trim(), format!("ok {NBYTES} bytes"));
    let end = ends
        .recv_timeout(LIMIT)
        .expect("the server closed the connection");
    assert_eq!(end, "done", "how the server's echo session ended");
    stop.send().unwrap();
    server.join().expect("echo server thread");
}
