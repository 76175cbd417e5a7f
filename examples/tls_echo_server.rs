// cargo run --release --example tls_echo_server [-- --listen 127.0.0.1:4433 --client-ca certs/ca.pem]
//
//! A TLS echo server: every accepted `Tcp` is wrapped in `Tls::server` and handed to the
//! same `biotls::echo::echo_with` the TCP echo server uses, unchanged.
//!
//! One misbehaving client (garbage, a failed handshake, a reset) ends only its own
//! connection. Ctrl-C or SIGTERM stops the server with exit code 0; a bind or
//! certificate error exits with 1 and says why.

use std::cell::Cell;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::rc::Rc;

use biotls::echo::{EchoEnd, EchoOptions, echo_with};
use biotls::signal::{SIGINT, SIGTERM};
use biotls::tls::{Tls, TlsAcceptor};
use biotls::{Loop, Signal, Stream, Tcp, TcpListener};
use clap::Parser;

/// Echo everything each TLS client sends back to it.
#[derive(Parser)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:4433")]
    listen: SocketAddr,
    /// Server certificate chain (PEM, leaf first).
    #[arg(long, default_value = "certs/server.pem")]
    cert: PathBuf,
    /// The certificate's private key (PEM).
    #[arg(long, default_value = "certs/server.key")]
    key: PathBuf,
    /// Require client certificates issued by the CAs in this PEM file (mutual TLS).
    #[arg(long)]
    client_ca: Option<PathBuf>,
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

fn acceptor(args: &Args) -> biotls::Result<TlsAcceptor> {
    let mut builder = TlsAcceptor::builder_from_files(&args.cert, &args.key)?;
    if let Some(ca) = &args.client_ca {
        builder = builder.require_client_cert_file(ca)?;
    }
    Ok(builder.build())
}

fn run(args: &Args) -> Result<(), String> {
    let acceptor = acceptor(args).map_err(|e| e.to_string())?;
    let mut lp = Loop::new().map_err(|e| e.to_string())?;
    let listener = TcpListener::bind(&mut lp, args.listen)
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let addr = listener.local_addr(&lp).map_err(|e| e.to_string())?;

    let open = Rc::new(Cell::new(0usize));
    listener
        .listen(&mut lp, move |lp, _, accepted| match accepted {
            Ok(tcp) => serve(lp, tcp, &acceptor, &open),
            // Out of file descriptors and the like: the listener keeps listening.
            Err(e) => log::error!("accept: {e}"),
        })
        .map_err(|e| e.to_string())?;

    let signal = Signal::new(&mut lp).map_err(|e| e.to_string())?;
    signal
        .start(&mut lp, &[SIGINT, SIGTERM], move |lp, signal, signum| {
            log::info!("signal {signum}: shutting down");
            listener.close(lp);
            signal.close(lp);
            lp.stop();
        })
        .map_err(|e| e.to_string())?;

    log::info!("TLS echo server listening on {addr}");
    let ca = match &args.client_ca {
        Some(_) => " -cert certs/client.pem -key certs/client.key",
        None => "",
    };
    println!("In another terminal, try:");
    println!(
        "  openssl s_client -connect {addr} -CAfile certs/ca.pem{ca}\n  \
         cargo run --release --example tls_echo_client -- --connect {addr}{}",
        if ca.is_empty() {
            ""
        } else {
            " --cert certs/client.pem --key certs/client.key"
        }
    );
    lp.run().map_err(|e| e.to_string())?;
    Ok(())
}

/// Wraps one accepted connection in TLS and echoes on it; failures are logged and end
/// only this connection.
fn serve(lp: &mut Loop, tcp: Tcp, acceptor: &TlsAcceptor, open: &Rc<Cell<usize>>) {
    let peer = tcp
        .peer_addr(lp)
        .map_or_else(|_| "?".to_owned(), |a| a.to_string());
    if let Err(e) = tcp.set_nodelay(lp, true) {
        log::warn!("{peer}: set_nodelay: {e}");
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
        Ok(()) => match tls.info(lp) {
            Ok(info) => log::info!(
                "{p}: handshake ok: {} {} (SNI {})",
                info.version,
                info.cipher.as_deref().unwrap_or("?"),
                info.server_name.as_deref().unwrap_or("none"),
            ),
            Err(e) => log::warn!("{p}: {e}"),
        },
        // The echo's read callback gets the same error and closes the handle.
        Err(e) => log::warn!("{p}: {e}"),
    });
    if let Err(e) = handshake {
        log::error!("{peer}: {e}");
    }
    open.set(open.get() + 1);
    let count = Rc::clone(open);
    let started = echo_with(lp, tls, EchoOptions::default(), move |lp, tls: Tls, end| {
        count.set(count.get() - 1);
        match end {
            EchoEnd::Done => log::info!("{peer}: closed ({} open)", count.get()),
            // A failed handshake was logged by its callback already.
            EchoEnd::Failed(e) if !tls.is_handshake_complete(lp) => {
                log::debug!("{peer}: {e} ({} open)", count.get());
                return;
            }
            EchoEnd::Failed(e) => log::warn!("{peer}: {e} ({} open)", count.get()),
        }
        if let Ok(s) = tls.stats(lp) {
            log::info!(
                "{peer}: stats: plaintext in {} out {}, ciphertext in {} out {}, \
                 handshake {:.1} ms, {} {}{}, ALPN {}",
                s.plaintext_in,
                s.plaintext_out,
                s.ciphertext_in,
                s.ciphertext_out,
                s.handshake_duration.map_or(0.0, |d| d.as_secs_f64() * 1e3),
                s.version,
                s.cipher.as_deref().unwrap_or("?"),
                if s.resumed { " (resumed)" } else { "" },
                s.alpn
                    .as_deref()
                    .map_or_else(|| "none".into(), String::from_utf8_lossy),
            );
        }
    });
    if let Err(e) = started {
        log::error!("{e}");
        tls.close(lp, |_, _| {});
    }
}
