//! A TLS echo server on tokio and tokio-openssl, written the way a user of those crates
//! would write one: the multi-thread runtime (`#[tokio::main]`'s default: one worker
//! per core), an accept loop, one task per connection, `SslStream::accept`, then a
//! read/write loop with a 16 KiB buffer (one TLS record) until the peer's close_notify,
//! and our own close_notify after it.
//!
//! ```text
//! tokio-echo [--listen ADDR] [--cert PEM] [--key PEM] [--tcp] [--workers N]
//! ```
//!
//! The TLS configuration is OpenSSL's, through `SslAcceptor::mozilla_intermediate_v5`
//! (TLS 1.2 minimum, TLS 1.3 preferred, OpenSSL's default groups and session tickets)
//! with one certificate chain and key. `--tcp` serves plain TCP echo instead (the same
//! loop over the `TcpStream`). Errors on one connection end that connection only.
//! Stops on SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;

use openssl::ssl::{Ssl, SslAcceptor, SslContext, SslFiletype, SslMethod};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_openssl::SslStream;

struct Args {
    listen: SocketAddr,
    cert: String,
    key: String,
    tcp: bool,
    workers: usize,
}

const USAGE: &str =
    "usage: tokio-echo [--listen ADDR] [--cert PEM] [--key PEM] [--tcp] [--workers N]

  --listen ADDR   address to listen on (default 127.0.0.1:4434)
  --cert PEM      certificate chain, leaf first (default certs/server.pem)
  --key PEM       the certificate's private key (default certs/server.key)
  --tcp           plain TCP echo instead of TLS
  --workers N     runtime worker threads (default: tokio's, one per core)";

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        listen: "127.0.0.1:4434".parse().map_err(|e| format!("{e}"))?,
        cert: "certs/server.pem".into(),
        key: "certs/server.key".into(),
        tcp: false,
        workers: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--listen" => {
                args.listen = value("--listen")?
                    .parse()
                    .map_err(|e| format!("--listen: {e}"))?
            }
            "--cert" => args.cert = value("--cert")?,
            "--key" => args.key = value("--key")?,
            "--tcp" => args.tcp = true,
            "--workers" => {
                args.workers = value("--workers")?
                    .parse()
                    .map_err(|e| format!("--workers: {e}"))?
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    Ok(args)
}

fn tls_context(args: &Args) -> Result<SslContext, openssl::error::ErrorStack> {
    let mut builder = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls())?;
    builder.set_certificate_chain_file(&args.cert)?;
    builder.set_private_key_file(&args.key, SslFiletype::PEM)?;
    builder.check_private_key()?;
    Ok(builder.build().into_context())
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("tokio-echo: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if args.workers > 0 {
        builder.worker_threads(args.workers);
    }
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tokio-echo: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tokio-echo: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: Args) -> Result<(), String> {
    let ctx = if args.tcp {
        None
    } else {
        Some(Arc::new(tls_context(&args).map_err(|e| {
            format!("certificate {} / key {}: {e}", args.cert, args.key)
        })?))
    };
    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    println!(
        "tokio-echo: {} echo on {addr}",
        if args.tcp { "TCP" } else { "TLS" }
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| e.to_string())?;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = term.recv() => return Ok(()),
        };
        let tcp = match accepted {
            Ok((tcp, _)) => tcp,
            // Out of file descriptors and the like: keep listening.
            Err(e) => {
                eprintln!("tokio-echo: accept: {e}");
                continue;
            }
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            // A failing peer ends its own connection; nothing to report.
            let _ = match ctx {
                Some(ctx) => serve_tls(&ctx, tcp).await,
                None => echo(tcp).await,
            };
        });
    }
}

async fn serve_tls(ctx: &SslContext, tcp: TcpStream) -> std::io::Result<()> {
    let ssl = Ssl::new(ctx).map_err(std::io::Error::other)?;
    let mut stream = SslStream::new(ssl, tcp).map_err(std::io::Error::other)?;
    Pin::new(&mut stream)
        .accept()
        .await
        .map_err(std::io::Error::other)?;
    echo(stream).await
}

/// Echoes until the peer's end of stream (close_notify over TLS), then shuts down our
/// side (close_notify over TLS).
async fn echo<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S) -> std::io::Result<()> {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        stream.write_all(&buf[..n]).await?;
    }
    stream.shutdown().await
}
