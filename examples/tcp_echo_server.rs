// cargo run --release --example tcp_echo_server -- --listen 127.0.0.1:7000
//
//! A TCP echo server: every accepted connection is handed to `biotls::echo`, which is
//! written against the `Stream` trait (the TLS echo server runs the same code over `Tls`).
//!
//! Logs go to stderr; `RUST_LOG=debug` shows more. Ctrl-C or SIGTERM stops it (exit 0).

use std::cell::Cell;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::rc::Rc;

use biotls::echo::{EchoEnd, EchoOptions, echo_with};
use biotls::signal::{SIGINT, SIGTERM};
use biotls::{Loop, Signal, TcpListener};
use clap::{CommandFactory, Parser};

/// Echo every byte back to its sender, over plain TCP.
#[derive(Parser)]
#[command(name = "tcp_echo_server")]
struct Args {
    /// Address to listen on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7000")]
    listen: SocketAddr,
    /// Stop reading a peer while more than this many echoed bytes wait to be sent.
    #[arg(long, value_name = "BYTES", default_value_t = EchoOptions::default().high_water)]
    high_water: usize,
    /// Resume reading it once the queue has drained to this many bytes.
    #[arg(long, value_name = "BYTES", default_value_t = EchoOptions::default().low_water)]
    low_water: usize,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args = Args::parse();
    if args.low_water > args.high_water {
        Args::command()
            .error(
                clap::error::ErrorKind::ArgumentConflict,
                "--low-water must not be greater than --high-water",
            )
            .exit();
    }
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tcp_echo_server: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), String> {
    let opts = EchoOptions {
        high_water: args.high_water,
        low_water: args.low_water,
    };
    let mut lp = Loop::new().map_err(|e| format!("cannot create the event loop: {e}"))?;
    let listener = TcpListener::bind(&mut lp, args.listen)
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let addr = listener.local_addr(&lp).map_err(|e| e.to_string())?;
    log::info!("listening on {addr}");
    println!("Try it from another terminal:");
    println!("  nc {} {}", addr.ip(), addr.port());
    println!(
        "  python3 -c \"import socket; s = socket.create_connection(('{}', {})); \
         s.sendall(b'hello\\n'); s.shutdown(socket.SHUT_WR); print(s.makefile('rb').read())\"",
        addr.ip(),
        addr.port()
    );

    let open = Rc::new(Cell::new(0usize));
    let count = Rc::clone(&open);
    listener
        .listen(&mut lp, move |lp, _, accepted| {
            let tcp = match accepted {
                Ok(tcp) => tcp,
                Err(e) => {
                    log::warn!("accept failed: {e}");
                    return;
                }
            };
            let peer = tcp
                .peer_addr(lp)
                .map_or_else(|_| "unknown peer".to_string(), |a| a.to_string());
            // Echo is latency-bound: do not let Nagle hold back a small reply.
            if let Err(e) = tcp.set_nodelay(lp, true) {
                log::debug!("{peer}: set_nodelay: {e}");
            }
            let count = Rc::clone(&count);
            let on_close = {
                let (count, peer) = (Rc::clone(&count), peer.clone());
                move |_: &mut Loop, _, end: &EchoEnd| {
                    count.set(count.get() - 1);
                    match end {
                        EchoEnd::Done => log::info!("{peer}: closed: peer finished"),
                        EchoEnd::Failed(e) => log::info!("{peer}: closed: {e}"),
                    }
                }
            };
            match echo_with(lp, tcp, opts, on_close) {
                Ok(()) => {
                    count.set(count.get() + 1);
                    log::info!("{peer}: connected ({} open)", count.get());
                }
                Err(e) => log::warn!("{peer}: cannot start echo: {e}"),
            }
        })
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;

    let signal = Signal::new(&mut lp).map_err(|e| e.to_string())?;
    signal
        .start(&mut lp, &[SIGINT, SIGTERM], move |lp, signal, signum| {
            log::info!(
                "signal {signum}: stopping, {} connection(s) open",
                open.get()
            );
            listener.close(lp);
            signal.close(lp);
            lp.stop();
        })
        .map_err(|e| format!("cannot watch SIGINT/SIGTERM: {e}"))?;

    lp.run().map_err(|e| format!("event loop failed: {e}"))?;
    Ok(())
}
