// cargo run --release --example tls_echo_server [-- --listen 127.0.0.1:4433 --loops 2 --alpn h2,http/1.1]
//
//! A TLS echo server: every accepted `Tcp` is wrapped in `Tls::server` and handed to the
//! same `biotls::echo::echo_with` the TCP echo server uses, unchanged.
//!
//! `--loops N` runs N loops on N threads, each with its own listener on the same port
//! (`SO_REUSEPORT`: the kernel spreads connections across them). `--alpn`, `--sni` and
//! `--keylog` expose the TLS features for anyone to try with `openssl s_client`; session
//! resumption (TLS 1.3 tickets, TLS 1.2 tickets and session ids) is on unless
//! `--no-resumption`. At the default log level each connection gives one line, when it
//! closes (with its statistics) or when its handshake fails; `RUST_LOG=debug` adds the
//! handshake's details. Nothing is logged while data flows.
//!
//! SIGHUP reloads `--cert`, `--key`, `--sni`, `--client-ca` and `--crl` from their files
//! (`TlsAcceptor::replace`): connections accepted afterwards, on every loop, use the new
//! configuration, established ones keep theirs, and session tickets from before still
//! resume. One line is logged: the new certificate's subject, serial and expiry, or why
//! the previous configuration was kept (an unreadable file, bad PEM, a key that does not
//! match, an expired certificate or CRL).
//!
//! One misbehaving client (garbage, a failed handshake, a reset) ends only its own
//! connection. Ctrl-C or SIGTERM stops the server with exit code 0; a bind or
//! certificate error at start-up exits with 1 and says why.

use std::cell::Cell;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::mpsc;

use biotls::echo::{EchoEnd, EchoOptions, echo_with};
use biotls::error::{Alert, Timeout, TlsAlert};
use biotls::openssl::ssl::SslSessionCacheMode;
use biotls::openssl::x509::X509;
use biotls::signal::{SIGHUP, SIGINT, SIGTERM};
use biotls::tls::{CrlCheck, Tls, TlsAcceptor, TlsAcceptorBuilder};
use biotls::{Async, AsyncSender, Error, ListenOptions, Loop, Signal, Stream, Tcp, TcpListener};
use clap::Parser;

/// Echo everything each TLS client sends back to it.
#[derive(Parser, Clone)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:4433")]
    listen: SocketAddr,
    /// Default server certificate chain (PEM, leaf first).
    #[arg(long, default_value = "certs/server.pem")]
    cert: PathBuf,
    /// The default certificate's private key (PEM).
    #[arg(long, default_value = "certs/server.key")]
    key: PathBuf,
    /// Require client certificates issued by the CAs in this PEM file (mutual TLS).
    #[arg(long)]
    client_ca: Option<PathBuf>,
    /// Refuse client certificates revoked by the CRLs in this PEM file (needs
    /// --client-ca; each client certificate's issuer needs a CRL here).
    #[arg(long, value_name = "FILE", requires = "client_ca")]
    crl: Option<PathBuf>,
    /// With --crl: check every certificate of the client's chain, not only its own.
    #[arg(long, requires = "crl")]
    crl_chain: bool,
    /// Event loops, one thread each, sharing the port (SO_REUSEPORT).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    loops: u16,
    /// ALPN protocols, comma-separated, in the server's order of preference. Clients
    /// offering none of them are refused; clients offering no ALPN are served.
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    alpn: Vec<String>,
    /// Serve another certificate to clients sending this SNI name (repeatable); other
    /// names, and none, get --cert/--key. NAME may be `*.example.com`.
    #[arg(long, value_name = "NAME=CERT,KEY", value_parser = parse_sni)]
    sni: Vec<(String, PathBuf, PathBuf)>,
    /// Debugging aid: append every connection's secrets to FILE (SSLKEYLOGFILE format,
    /// for Wireshark). Anyone who can read it can decrypt the traffic.
    #[arg(long, value_name = "FILE")]
    keylog: Option<PathBuf>,
    /// Turn off session resumption (no tickets, no session cache).
    #[arg(long)]
    no_resumption: bool,
}

fn parse_sni(spec: &str) -> Result<(String, PathBuf, PathBuf), String> {
    let (name, files) = spec.split_once('=').ok_or("expected NAME=CERT,KEY")?;
    let (cert, key) = files.split_once(',').ok_or("expected NAME=CERT,KEY")?;
    if name.is_empty() || cert.is_empty() || key.is_empty() {
        return Err("expected NAME=CERT,KEY".into());
    }
    Ok((name.to_owned(), cert.into(), key.into()))
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tls_echo_server: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The configuration the arguments describe, read from the files as they are now (at
/// start-up, and again on every SIGHUP).
fn configuration(args: &Args) -> biotls::Result<TlsAcceptorBuilder> {
    let mut builder = TlsAcceptor::builder_from_files(&args.cert, &args.key)?;
    for (name, cert, key) in &args.sni {
        builder = builder.sni_certificate_files(name, cert, key)?;
    }
    if let Some(ca) = &args.client_ca {
        builder = builder.require_client_cert_file(ca)?;
    }
    if let Some(crl) = &args.crl {
        let check = if args.crl_chain {
            CrlCheck::Chain
        } else {
            CrlCheck::Leaf
        };
        builder = builder.crl_file(crl, check)?;
    }
    if !args.alpn.is_empty() {
        let protocols: Vec<&[u8]> = args.alpn.iter().map(|p| p.as_bytes()).collect();
        builder = builder.alpn_protocols(&protocols)?;
    }
    if let Some(path) = &args.keylog {
        builder = builder.keylog_file(path)?;
    }
    if args.no_resumption {
        let ctx = builder.context_builder_mut();
        ctx.set_session_cache_mode(SslSessionCacheMode::OFF);
        ctx.set_num_tickets(0)
            .map_err(|e| biotls::Error::Config(e.to_string()))?;
        ctx.set_options(biotls::openssl::ssl::SslOptions::NO_TICKET);
    }
    Ok(builder)
}

/// A certificate for the log: subject, serial number and expiry.
fn describe(cert: Option<X509>) -> String {
    let Some(cert) = cert else {
        return "no certificate".to_owned();
    };
    let subject: Vec<String> = cert
        .subject_name()
        .entries()
        .map(|e| {
            let key = e.object().nid().short_name().unwrap_or("?");
            let value = e.data().to_string().unwrap_or_else(|_| "?".to_owned());
            format!("{key}={value}")
        })
        .collect();
    let serial = cert
        .serial_number()
        .to_bn()
        .and_then(|bn| bn.to_hex_str().map(|s| s.to_string()))
        .unwrap_or_else(|_| "?".to_owned());
    format!(
        "{}, serial {serial}, expires {}",
        subject.join(", "),
        cert.not_after()
    )
}

/// SIGHUP: reads the files again and replaces the configuration of every loop, or keeps
/// the previous one; logs one line either way.
fn reload(args: &Args, acceptor: &TlsAcceptor) {
    match configuration(args).and_then(|builder| acceptor.replace(builder)) {
        Ok(()) => log::info!(
            "SIGHUP: reloaded configuration: serving {}",
            describe(acceptor.certificate())
        ),
        Err(e) => log::error!("SIGHUP: kept the previous configuration: {e}"),
    }
}

/// Binds one loop's listener and serves TLS echo on it.
fn listen(
    lp: &mut Loop,
    addr: SocketAddr,
    loops: u16,
    acceptor: TlsAcceptor,
    index: u16,
) -> Result<TcpListener, String> {
    let mut opts = ListenOptions::default();
    opts.reuse_port = loops > 1;
    let listener = TcpListener::bind_with(lp, addr, &opts)
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let open = Rc::new(Cell::new(0usize));
    listener
        .listen(lp, move |lp, _, accepted| match accepted {
            Ok(tcp) => serve(lp, tcp, &acceptor, &open, index),
            // Out of file descriptors and the like: the listener keeps listening.
            Err(e) => log::error!("accept: {e}"),
        })
        .map_err(|e| e.to_string())?;
    Ok(listener)
}

fn run(args: &Args) -> Result<(), String> {
    let acceptor = configuration(args).map_err(|e| e.to_string())?.build();
    if let Some(path) = &args.keylog {
        log::warn!("writing TLS secrets to {} (debugging only)", path.display());
    }
    let mut lp = Loop::new().map_err(|e| e.to_string())?;
    let listener = listen(&mut lp, args.listen, args.loops, acceptor.clone(), 0)?;
    // Port 0 picked a port: the other loops bind that one.
    let addr = listener.local_addr(&lp).map_err(|e| e.to_string())?;

    // Loops 1..N, each on its own thread; each hands back a sender that stops it.
    let mut workers = Vec::new();
    let mut stops: Vec<AsyncSender> = Vec::new();
    for index in 1..args.loops {
        let (tx, rx) = mpsc::channel();
        let acceptor = acceptor.clone();
        let loops = args.loops;
        let thread = std::thread::Builder::new()
            .name(format!("loop-{index}"))
            .spawn(move || {
                let started = Loop::new().map_err(|e| e.to_string()).and_then(|mut lp| {
                    let listener = listen(&mut lp, addr, loops, acceptor, index)?;
                    let (_stop, sender) = Async::new(&mut lp, move |lp, stop| {
                        listener.close(lp);
                        stop.close(lp);
                        lp.stop();
                    })
                    .map_err(|e| e.to_string())?;
                    Ok((lp, sender))
                });
                match started {
                    Ok((mut lp, sender)) => {
                        let _ = tx.send(Ok(sender));
                        if let Err(e) = lp.run() {
                            log::error!("loop {index}: {e}");
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                }
            })
            .map_err(|e| format!("loop thread: {e}"))?;
        stops.push(rx.recv().map_err(|e| e.to_string())??);
        workers.push(thread);
    }

    // Every loop holds a clone of `acceptor`: one replacement reaches them all.
    let hup = Signal::new(&mut lp).map_err(|e| e.to_string())?;
    let reload_args = args.clone();
    let current = acceptor.clone();
    hup.start(&mut lp, &[SIGHUP], move |_, _, _| {
        reload(&reload_args, &current)
    })
    .map_err(|e| e.to_string())?;
    let signal = Signal::new(&mut lp).map_err(|e| e.to_string())?;
    signal
        .start(&mut lp, &[SIGINT, SIGTERM], move |lp, signal, signum| {
            log::info!("signal {signum}: shutting down");
            listener.close(lp);
            hup.close(lp);
            signal.close(lp);
            for stop in &stops {
                let _ = stop.send();
            }
            lp.stop();
        })
        .map_err(|e| e.to_string())?;

    log::info!(
        "TLS echo server listening on {addr} ({} loop{})",
        args.loops,
        if args.loops == 1 { "" } else { "s" }
    );
    let ca = match &args.client_ca {
        Some(_) => " -cert certs/client.pem -key certs/client.key",
        None => "",
    };
    let alpn = match args.alpn.first() {
        Some(p) => format!(" -alpn {p}"),
        None => String::new(),
    };
    println!("In another terminal, try:");
    println!(
        "  openssl s_client -connect {addr} -CAfile certs/ca.pem{ca}{alpn}\n  \
         cargo run --release --example tls_echo_client -- --connect {addr}{}",
        if ca.is_empty() {
            ""
        } else {
            " --cert certs/client.pem --key certs/client.key"
        }
    );
    lp.run().map_err(|e| e.to_string())?;
    for worker in workers {
        let _ = worker.join();
    }
    Ok(())
}

/// A failed handshake as the log shows it: the error (its `Display` names the alert and
/// which side sent it, or the verify code) and what it usually means on a server.
fn handshake_failure(e: &Error) -> String {
    let meaning = match (e.verify_kind(), e.alert(), e.timeout()) {
        (Some(kind), _, _) => format!("the client's certificate was refused ({kind})"),
        (_, Some(TlsAlert::Received(Alert::UNKNOWN_CA | Alert::BAD_CERTIFICATE)), _) => {
            "the client does not trust our certificate".into()
        }
        (_, Some(TlsAlert::Sent(Alert::CERTIFICATE_REQUIRED)), _) => {
            "the client sent no certificate (--client-ca requires one)".into()
        }
        (_, Some(TlsAlert::Sent(Alert::NO_APPLICATION_PROTOCOL)), _) => {
            "no ALPN protocol in common (--alpn)".into()
        }
        (_, Some(TlsAlert::Sent(Alert::PROTOCOL_VERSION)), _) => {
            "the client offered only protocol versions older than TLS 1.2".into()
        }
        (_, _, Some(Timeout::Handshake)) => "the client stalled during the handshake".into(),
        _ => return e.to_string(),
    };
    format!("{e}: {meaning}")
}

/// Wraps one accepted connection in TLS and echoes on it; failures end only this
/// connection.
///
/// At the default log level a connection gives at most one line: when it closes (with
/// its statistics), or when its handshake fails. The handshake's details are logged at
/// debug level; nothing is logged while data flows.
fn serve(lp: &mut Loop, tcp: Tcp, acceptor: &TlsAcceptor, open: &Rc<Cell<usize>>, index: u16) {
    let peer = tcp
        .peer_addr(lp)
        .map_or_else(|_| "?".to_owned(), |a| format!("[loop {index}] {a}"));
    if let Err(e) = tcp.set_nodelay(lp, true) {
        log::debug!("{peer}: set_nodelay: {e}");
    }
    let tls = match Tls::server(lp, tcp, acceptor) {
        Ok(tls) => tls,
        Err(e) => {
            log::error!("{peer}: {e}");
            tcp.close(lp, |_, _| {});
            return;
        }
    };
    let p = peer.clone();
    let handshake = tls.on_handshake(lp, move |lp, tls, r| match r {
        Ok(()) => {
            if log::log_enabled!(log::Level::Debug)
                && let Ok(info) = tls.info(lp)
            {
                log::debug!(
                    "{p}: handshake ok: {} {}{} (SNI {}, ALPN {})",
                    info.version,
                    info.cipher.as_deref().unwrap_or("?"),
                    if info.resumed { ", resumed" } else { "" },
                    info.server_name.as_deref().unwrap_or("none"),
                    info.alpn
                        .as_deref()
                        .map_or_else(|| "none".into(), String::from_utf8_lossy),
                );
            }
        }
        // The connection's one line; the echo's end callback stays quiet about it.
        Err(e) => log::warn!("{p}: handshake failed: {}", handshake_failure(&e)),
    });
    if let Err(e) = handshake {
        log::error!("{peer}: {e}");
        tls.close(lp, |_, _| {});
        return;
    }
    open.set(open.get() + 1);
    let count = Rc::clone(open);
    let name = peer.clone();
    let started = echo_with(lp, tls, EchoOptions::default(), move |lp, tls: Tls, end| {
        count.set(count.get() - 1);
        if let EchoEnd::Failed(e) = end
            && !tls.is_handshake_complete(lp)
        {
            // Logged by the handshake callback already.
            log::debug!("{peer}: {e} ({} open)", count.get());
            return;
        }
        let stats = tls.stats(lp).map_or_else(
            |_| String::new(),
            |s| {
                let sni = tls
                    .info(lp)
                    .ok()
                    .and_then(|i| i.server_name)
                    .map_or_else(String::new, |n| format!(", SNI {n}"));
                format!(
                    ": {} {}{}{sni}, ALPN {}, handshake {:.1} ms, plaintext in {} out {}, \
                     ciphertext in {} out {}",
                    s.version,
                    s.cipher.as_deref().unwrap_or("?"),
                    if s.resumed { " (resumed)" } else { "" },
                    s.alpn
                        .as_deref()
                        .map_or_else(|| "none".into(), String::from_utf8_lossy),
                    s.handshake_duration.map_or(0.0, |d| d.as_secs_f64() * 1e3),
                    s.plaintext_in,
                    s.plaintext_out,
                    s.ciphertext_in,
                    s.ciphertext_out,
                )
            },
        );
        match end {
            EchoEnd::Done => log::info!("{peer}: closed ({} open){stats}", count.get()),
            EchoEnd::Failed(e) => log::warn!("{peer}: {e} ({} open){stats}", count.get()),
        }
    });
    if let Err(e) = started {
        log::error!("{name}: {e}");
        tls.close(lp, |_, _| {});
    }
}
