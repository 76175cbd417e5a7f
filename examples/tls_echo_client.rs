// cargo run --release --example tls_echo_client [-- --connect 127.0.0.1:4433 --bytes 67108864]
//
//! A TLS echo client for `tls_echo_server` (or any TLS echo service).
//!
//! Interactive by default: lines typed on stdin are sent, echoes are printed as they
//! arrive; at the end of stdin it sends close_notify and waits (up to 5 s) for the server
//! to close. With `--bytes N` it streams N bytes of a seeded pseudo-random pattern with
//! bounded memory, verifies every echoed byte and prints the throughput.
//!
//! Exit codes: 0 success, 1 failure (the reason is printed), 2 usage error.

use std::cell::{Cell, RefCell};
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use biotls::bytes::Bytes;
use biotls::error::{Alert, Timeout, TlsAlert, VerifyKind};
use biotls::tls::{CrlCheck, Tls, TlsConnector};
use biotls::{Async, Error, Loop, Stream, Tcp, Timer};
use clap::Parser;

/// Time allowed for the server to close after our close_notify.
const CLOSE_WAIT: Duration = Duration::from_secs(5);
/// `--bytes`: plaintext written per request, and the write queue kept at most.
const CHUNK: usize = 256 * 1024;
const HIGH_WATER: usize = 4 * 1024 * 1024;
/// `--bytes`: fail if no echoed byte arrives for this long.
const STALL: Duration = Duration::from_secs(10);
const SEED: u64 = 0x6269_6f74_6c73;

/// Connect to a TLS echo server and check what comes back.
#[derive(Parser)]
struct Args {
    /// Server address: `ip:port` or `host:port`.
    #[arg(long, default_value = "127.0.0.1:4433")]
    connect: String,
    /// CA certificates (PEM) that the server's certificate must chain to.
    #[arg(long, default_value = "certs/ca.pem")]
    ca: PathBuf,
    /// Name sent as SNI and verified against the server's certificate.
    #[arg(long, default_value = "localhost")]
    server_name: String,
    /// Client certificate chain (PEM) for mutual TLS; needs `--key`.
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// The client certificate's private key (PEM); needs `--cert`.
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    /// Refuse a server whose certificate is revoked by the CRLs in this PEM file (the
    /// issuer of each certificate checked needs a CRL here).
    #[arg(long, value_name = "FILE")]
    crl: Option<PathBuf>,
    /// With --crl: check every certificate of the server's chain, not only its own.
    #[arg(long, requires = "crl")]
    crl_chain: bool,
    /// Give up connecting (and handshaking) after this many seconds.
    #[arg(long, default_value_t = 5.0, value_parser = parse_seconds)]
    connect_timeout: f64,
    /// Instead of stdin, send N bytes of a pseudo-random pattern and verify the echo.
    #[arg(long, value_name = "N")]
    bytes: Option<u64>,
}

fn parse_seconds(s: &str) -> Result<f64, String> {
    match s.trim_end_matches('s').parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(v),
        _ => Err(format!("`{s}` is not a positive number of seconds")),
    }
}

/// How the client ended: `Ok` with a message for stderr, or the failure.
type Outcome = Rc<RefCell<Option<Result<String, String>>>>;

fn finish(lp: &mut Loop, outcome: &Outcome, result: Result<String, String>) {
    let mut o = outcome.borrow_mut();
    if o.is_none() {
        *o = Some(result);
        lp.stop();
    }
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let args = Args::parse();
    let result = run(&args);
    // Flush echoes before the verdict; the stdin thread, if any, ends with the process.
    let _ = std::io::stdout().flush();
    match result {
        Ok(msg) => {
            if !msg.is_empty() {
                println!("{msg}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tls_echo_client: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The error's text and, for the failures a user can act on, what to try. `Display`
/// carries the detail: "certificate verify failed: hostname mismatch
/// (X509_V_ERR_HOSTNAME_MISMATCH, code 62)", "TLS error: tlsv13 alert certificate
/// required (received alert certificate_required)".
fn explain(e: &Error) -> String {
    let hint = match (e.verify_kind(), e.alert(), e.timeout()) {
        (Some(VerifyKind::HostnameMismatch), _, _) => {
            "the certificate is for another name: check --server-name"
        }
        (Some(VerifyKind::UnknownIssuer | VerifyKind::SelfSigned), _, _) => {
            "the server's certificate does not chain to --ca"
        }
        (Some(VerifyKind::Expired | VerifyKind::NotYetValid), _, _) => {
            "outside the certificate's validity period: check it and the clocks"
        }
        (Some(VerifyKind::Revoked), _, _) => {
            "the server's certificate (or its issuer's) is on the CRL given with --crl"
        }
        (_, Some(TlsAlert::Received(Alert::CERTIFICATE_REQUIRED)), _) => {
            "the server requires a client certificate: --cert and --key"
        }
        (_, Some(TlsAlert::Received(Alert::UNKNOWN_CA | Alert::BAD_CERTIFICATE)), _) => {
            "the server refused our client certificate"
        }
        (_, Some(TlsAlert::Received(Alert::CERTIFICATE_REVOKED)), _) => {
            "the server's CRL revokes our client certificate"
        }
        (_, Some(TlsAlert::Received(Alert::PROTOCOL_VERSION)), _) => {
            "no TLS version in common (this client speaks TLS 1.2 and 1.3)"
        }
        (_, Some(TlsAlert::Received(Alert::NO_APPLICATION_PROTOCOL)), _) => {
            "the server wants an ALPN protocol this client does not offer"
        }
        (_, _, Some(Timeout::Handshake)) => "the peer did not complete a TLS handshake: is it TLS?",
        _ => return e.to_string(),
    };
    format!("{e}\n  hint: {hint}")
}

fn connector(args: &Args) -> biotls::Result<TlsConnector> {
    let mut builder = TlsConnector::builder()?.ca_file(&args.ca)?;
    if let (Some(cert), Some(key)) = (&args.cert, &args.key) {
        builder = builder.client_cert_files(cert, key)?;
    }
    if let Some(crl) = &args.crl {
        let check = if args.crl_chain {
            CrlCheck::Chain
        } else {
            CrlCheck::Leaf
        };
        builder = builder.crl_file(crl, check)?;
    }
    Ok(builder.build())
}

fn run(args: &Args) -> Result<String, String> {
    let connector = connector(args).map_err(|e| e.to_string())?;
    let mut lp = Loop::new().map_err(|e| e.to_string())?;
    let outcome: Outcome = Rc::new(RefCell::new(None));
    let timeout = Duration::from_secs_f64(args.connect_timeout);

    let o = Rc::clone(&outcome);
    let target = args.connect.clone();
    let connected = Rc::new(Cell::new(false));
    let c = Rc::clone(&connected);
    let tcp = Tcp::connect_host(&mut lp, &args.connect, move |lp, tcp, r| match r {
        Ok(()) => {
            c.set(true);
            let _ = tcp.set_nodelay(lp, true);
        }
        Err(e) => finish(
            lp,
            &o,
            Err(format!("cannot connect to {target}: {}", explain(&e))),
        ),
    })
    .map_err(|e| e.to_string())?;
    tcp.set_connect_timeout(&mut lp, timeout)
        .map_err(|e| e.to_string())?;
    let tls =
        Tls::client(&mut lp, tcp, &connector, &args.server_name).map_err(|e| e.to_string())?;
    // The handshake timer runs from now, so it covers the connect: allow as long again.
    tls.set_handshake_timeout(&mut lp, Some(timeout * 2))
        .map_err(|e| e.to_string())?;
    let o = Rc::clone(&outcome);
    let target = args.connect.clone();
    let started = Rc::new(Cell::new(Instant::now()));
    let s = Rc::clone(&started);
    tls.on_handshake(&mut lp, move |lp, tls, r| match r {
        Ok(()) => {
            s.set(Instant::now());
            if let Ok(info) = tls.info(lp) {
                eprintln!(
                    "connected to {target}: {} {}",
                    info.version,
                    info.cipher.as_deref().unwrap_or("?")
                );
            }
        }
        // The failed connect may reach the handshake before the connect callback.
        Err(e) if !connected.get() => {
            finish(
                lp,
                &o,
                Err(format!("cannot connect to {target}: {}", explain(&e))),
            );
        }
        Err(e) => finish(lp, &o, Err(explain(&e))),
    })
    .map_err(|e| e.to_string())?;

    match args.bytes {
        Some(total) => bulk(&mut lp, tls, total, &outcome, started)?,
        None => interactive(&mut lp, tls, &outcome)?,
    }
    lp.run().map_err(|e| e.to_string())?;
    let result = outcome.borrow_mut().take();
    tls.close(&mut lp, |_, _| {});
    result.unwrap_or_else(|| Err("the event loop ended without an outcome".to_owned()))
}

/// What the stdin thread hands to the loop.
enum Input {
    Line(Vec<u8>),
    End,
}

fn interactive(lp: &mut Loop, tls: Tls, outcome: &Outcome) -> Result<(), String> {
    let (tx, rx) = mpsc::channel::<Input>();
    let o = Rc::clone(outcome);
    let (_input, sender) = Async::new(lp, move |lp, input| {
        while let Ok(msg) = rx.try_recv() {
            match msg {
                Input::Line(line) => {
                    let o2 = Rc::clone(&o);
                    let queued = tls.write(lp, line, move |lp, _, r| {
                        if let Err(e) = r {
                            finish(lp, &o2, Err(e.to_string()));
                        }
                    });
                    if let Err(e) = queued {
                        finish(lp, &o, Err(e.to_string()));
                    }
                }
                Input::End => {
                    input.close(lp);
                    close_notify(lp, tls, &o);
                    return;
                }
            }
        }
    })
    .map_err(|e| e.to_string())?;
    // stdin may be a file or /dev/null, which epoll refuses: read it on a thread.
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        loop {
            let mut line = Vec::new();
            match stdin.read_until(b'\n', &mut line) {
                Ok(0) => break,
                Ok(_) => {
                    if tx.send(Input::Line(line)).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    eprintln!("tls_echo_client: stdin: {e}");
                    break;
                }
            }
            let _ = sender.send();
        }
        let _ = tx.send(Input::End);
        let _ = sender.send();
    });

    let o = Rc::clone(outcome);
    tls.start_read(lp, move |lp, _, r| match r {
        Ok(Some(data)) => {
            let mut out = std::io::stdout().lock();
            if let Err(e) = out.write_all(&data).and_then(|()| out.flush()) {
                finish(lp, &o, Err(format!("stdout: {e}")));
            }
        }
        Ok(None) => finish(lp, &o, Ok(String::new())),
        Err(e) => finish(lp, &o, Err(explain(&e))),
    })
    .map_err(|e| e.to_string())
}

/// Sends close_notify and fails if the server has not closed within [`CLOSE_WAIT`]; the
/// read callback reports the server's close.
fn close_notify(lp: &mut Loop, tls: Tls, outcome: &Outcome) {
    let o = Rc::clone(outcome);
    if let Err(e) = tls.shutdown(lp, move |lp, _, r| {
        if let Err(e) = r {
            finish(lp, &o, Err(e.to_string()));
        }
    }) {
        finish(lp, outcome, Err(e.to_string()));
        return;
    }
    let o = Rc::clone(outcome);
    let started = Timer::new(lp).and_then(|timer| {
        timer.unref(lp)?;
        timer.start(lp, CLOSE_WAIT, None, move |lp, timer| {
            timer.close(lp);
            let msg = format!(
                "the server did not close the connection within {} s of our close_notify",
                CLOSE_WAIT.as_secs()
            );
            finish(lp, &o, Err(msg));
        })
    });
    if let Err(e) = started {
        finish(lp, outcome, Err(e.to_string()));
    }
}

/// The deterministic pattern byte at `pos` (a 64-bit mix of seed and position), so the
/// receiver can verify every byte without keeping a copy.
fn pattern_byte(pos: u64) -> u8 {
    let mut x = SEED ^ pos.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x as u8
}

struct Bulk {
    total: u64,
    sent: Cell<u64>,
    received: Cell<u64>,
    last_progress: Cell<Instant>,
    outcome: Outcome,
}

/// Queues pattern bytes while the write queue is under [`HIGH_WATER`]; each completed
/// write calls it again, so memory stays bounded whatever the total.
fn write_more(lp: &mut Loop, tls: Tls, bulk: &Rc<Bulk>) {
    while bulk.sent.get() < bulk.total && tls.write_queue_size(lp) < HIGH_WATER {
        let at = bulk.sent.get();
        let len = (bulk.total - at).min(CHUNK as u64);
        let chunk: Vec<u8> = (at..at + len).map(pattern_byte).collect();
        bulk.sent.set(at + len);
        let b = Rc::clone(bulk);
        let queued = tls.write(lp, Bytes::from(chunk), move |lp, tls, r| match r {
            Ok(()) => write_more(lp, tls, &b),
            Err(e) => finish(lp, &b.outcome, Err(e.to_string())),
        });
        if let Err(e) = queued {
            finish(lp, &bulk.outcome, Err(e.to_string()));
            return;
        }
    }
}

fn bulk(
    lp: &mut Loop,
    tls: Tls,
    total: u64,
    outcome: &Outcome,
    started: Rc<Cell<Instant>>,
) -> Result<(), String> {
    let bulk = Rc::new(Bulk {
        total,
        sent: Cell::new(0),
        received: Cell::new(0),
        last_progress: Cell::new(Instant::now()),
        outcome: Rc::clone(outcome),
    });
    write_more(lp, tls, &bulk);

    let watchdog = Timer::new(lp).map_err(|e| e.to_string())?;
    watchdog.unref(lp).map_err(|e| e.to_string())?;
    let b = Rc::clone(&bulk);
    watchdog
        .start(
            lp,
            Duration::from_secs(1),
            Some(Duration::from_secs(1)),
            move |lp, _| {
                if b.last_progress.get().elapsed() >= STALL {
                    let msg = format!(
                        "no echo for {} s ({} of {} bytes verified)",
                        STALL.as_secs(),
                        b.received.get(),
                        b.total
                    );
                    finish(lp, &b.outcome, Err(msg));
                }
            },
        )
        .map_err(|e| e.to_string())?;

    let b = Rc::clone(&bulk);
    let verified_at: Rc<Cell<Option<Instant>>> = Rc::new(Cell::new(None));
    let v = Rc::clone(&verified_at);
    tls.start_read(lp, move |lp, tls, r| match r {
        Ok(Some(data)) => {
            b.last_progress.set(Instant::now());
            let at = b.received.get();
            if at + data.len() as u64 > b.total {
                let msg = format!(
                    "received {} bytes, more than the {} sent",
                    at + data.len() as u64,
                    b.total
                );
                return finish(lp, &b.outcome, Err(msg));
            }
            if let Some(i) = (0..data.len()).find(|&i| data[i] != pattern_byte(at + i as u64)) {
                let pos = at + i as u64;
                let msg = format!(
                    "echo mismatch at byte {pos}: expected {:#04x}, got {:#04x}",
                    pattern_byte(pos),
                    data[i]
                );
                return finish(lp, &b.outcome, Err(msg));
            }
            b.received.set(at + data.len() as u64);
            if b.received.get() == b.total {
                v.set(Some(Instant::now()));
                close_notify(lp, tls, &b.outcome);
            }
        }
        Ok(None) => {
            let (got, total) = (b.received.get(), b.total);
            let result = match v.get() {
                Some(done) => {
                    let secs = done.duration_since(started.get()).as_secs_f64();
                    let mib = total as f64 / (1024.0 * 1024.0);
                    Ok(format!(
                        "verified {total} bytes ({mib:.1} MiB) in {secs:.3} s: {:.1} MiB/s",
                        if secs > 0.0 {
                            mib / secs
                        } else {
                            f64::INFINITY
                        }
                    ))
                }
                None => Err(format!(
                    "the server closed the connection after {got} of {total} bytes"
                )),
            };
            finish(lp, &b.outcome, result);
        }
        Err(e @ Error::Truncated) => {
            let msg = format!("{e} after {} of {} bytes", b.received.get(), b.total);
            finish(lp, &b.outcome, Err(msg));
        }
        Err(e) => finish(lp, &b.outcome, Err(explain(&e))),
    })
    .map_err(|e| e.to_string())?;
    if total == 0 {
        verified_at.set(Some(Instant::now()));
        close_notify(lp, tls, outcome);
    }
    Ok(())
}
