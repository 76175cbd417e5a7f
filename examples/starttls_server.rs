//! cargo run --example starttls_server -- --listen 127.0.0.1:2525
//!
//! A minimal SMTP-style server that upgrades to TLS in the middle of a connection
//! (STARTTLS, RFC 3207), to show `Tls::server_upgrade`:
//!
//! ```text
//! S: 220 biotls ESMTP ready            C: EHLO me
//! S: 250-biotls greets me              S: 250 STARTTLS
//! C: STARTTLS                          S: 220 ready to start TLS
//!    ... TLS handshake ...
//! C: EHLO me   S: 250 biotls greets me
//! C: NOOP      S: 250 ok
//! C: QUIT      S: 221 bye              (close_notify, then the connection closes)
//! ```
//!
//! Try it with `openssl s_client -starttls smtp -crlf -nocommands -connect
//! 127.0.0.1:2525 -CAfile certs/ca.pem` (without `-nocommands`, s_client takes lines
//! starting with Q or R as its own commands) and type `EHLO me`, `NOOP`, `QUIT`.
//!
//! Plaintext a client pipelines after `STARTTLS` (`STARTTLS\r\nNOOP\r\n` in one packet)
//! is handed to TLS as the start of the handshake, where it fails: it is never answered
//! as if it came over TLS (the command-injection class of CVE-2011-0411).
//!
//! The same line code serves both phases: it is written once against `Stream`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;

use biotls::bytes::BytesMut;
use biotls::tls::{Tls, TlsAcceptor};
use biotls::{Loop, Stream, Tcp, TcpListener};
use clap::Parser;

/// Longest command line accepted (RFC 5321: 512 octets); longer ones end the connection.
const MAX_LINE: usize = 512;

#[derive(Parser, Debug)]
#[command(about = "A minimal SMTP-style server with STARTTLS, on biotls")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:2525")]
    listen: SocketAddr,
    /// Certificate chain (PEM, leaf first).
    #[arg(long, default_value = "certs/server.pem")]
    cert: PathBuf,
    /// Private key (PEM).
    #[arg(long, default_value = "certs/server.key")]
    key: PathBuf,
}

/// What the line handler wants next.
enum Next {
    /// Read more lines.
    Continue,
    /// The connection was upgraded to TLS: the `Tls` handle reads from now on.
    Upgraded,
    /// Shut down and close.
    Quit,
}

/// Splits what `s` reads into lines and hands each to `on_line`; enforces `MAX_LINE`.
fn read_lines<S: Stream>(
    lp: &mut Loop,
    s: S,
    mut on_line: impl FnMut(&mut Loop, S, &str, &mut BytesMut) -> Next + 'static,
) -> biotls::Result<()> {
    let mut buf = BytesMut::new();
    s.start_read(lp, move |lp, s, r| {
        let data = match r {
            Ok(Some(data)) => data,
            Ok(None) => {
                let _ = s.shutdown(lp, |lp, s, _| s.close(lp, |_, _| {}));
                return;
            }
            Err(e) => {
                log::info!("{s:?}: {e}");
                s.close(lp, |_, _| {});
                return;
            }
        };
        buf.extend_from_slice(&data);
        while let Some(end) = buf.iter().position(|&b| b == b'\n') {
            let line = buf.split_to(end + 1);
            let text = String::from_utf8_lossy(&line);
            match on_line(lp, s, text.trim_end(), &mut buf) {
                Next::Continue => {}
                Next::Upgraded | Next::Quit => return,
            }
        }
        if buf.len() > MAX_LINE {
            let _ = s.write(lp, b"500 5.5.6 line too long\r\n", |_, _, _| {});
            let _ = s.shutdown(lp, |lp, s, _| s.close(lp, |_, _| {}));
        }
    })
}

/// Replies to the commands both phases share; `None` for the others.
fn common<S: Stream>(lp: &mut Loop, s: S, command: &str, arg: &str, tls: bool) -> Option<Next> {
    let reply: &'static [u8] = match command {
        "EHLO" if tls => {
            let _ = s.write(lp, format!("250 biotls greets {arg}\r\n"), |_, _, _| {});
            return Some(Next::Continue);
        }
        "EHLO" => {
            let text = format!("250-biotls greets {arg}\r\n250 STARTTLS\r\n");
            let _ = s.write(lp, text, |_, _, _| {});
            return Some(Next::Continue);
        }
        "HELO" => b"250 biotls\r\n",
        "NOOP" => b"250 ok\r\n",
        "QUIT" => {
            let _ = s.write(lp, b"221 bye\r\n", |_, _, _| {});
            let _ = s.shutdown(lp, |lp, s, _| s.close(lp, |_, _| {}));
            return Some(Next::Quit);
        }
        _ => return None,
    };
    let _ = s.write(lp, reply, |_, _, _| {});
    Some(Next::Continue)
}

fn split(line: &str) -> (String, &str) {
    let (command, arg) = line.split_once(' ').unwrap_or((line, ""));
    (command.to_ascii_uppercase(), arg.trim())
}

/// The plaintext phase of a connection.
fn plaintext(lp: &mut Loop, tcp: Tcp, acceptor: Rc<TlsAcceptor>) -> biotls::Result<()> {
    tcp.write(lp, b"220 biotls ESMTP ready\r\n", |_, _, _| {})?;
    read_lines(lp, tcp, move |lp, tcp, line, rest| {
        let (command, arg) = split(line);
        if let Some(next) = common(lp, tcp, &command, arg, false) {
            return next;
        }
        if command != "STARTTLS" {
            let _ = tcp.write(
                lp,
                b"530 5.7.0 must issue a STARTTLS command first\r\n",
                |_, _, _| {},
            );
            return Next::Continue;
        }
        // The reply goes out in plaintext before any TLS byte; whatever the client sent
        // after the command is the start of its TLS handshake (or garbage).
        let _ = tcp.write(lp, b"220 ready to start TLS\r\n", |_, _, _| {});
        let read_ahead = rest.split().freeze();
        if !read_ahead.is_empty() {
            log::warn!(
                "{tcp}: {} bytes pipelined after STARTTLS go to TLS",
                read_ahead.len()
            );
        }
        match Tls::server_upgrade(lp, tcp, &acceptor, read_ahead) {
            Ok(tls) => {
                if let Err(e) = secure(lp, tls) {
                    log::info!("{tls}: {e}");
                    tls.close(lp, |_, _| {});
                }
            }
            Err(e) => {
                log::warn!("{tcp}: {e}");
                tcp.close(lp, |_, _| {});
            }
        }
        Next::Upgraded
    })
}

/// The TLS phase of a connection.
fn secure(lp: &mut Loop, tls: Tls) -> biotls::Result<()> {
    tls.on_handshake(lp, |_, tls, r| match r {
        Ok(()) => log::info!("{tls}: TLS established"),
        Err(e) => log::info!("{tls}: TLS handshake failed: {e}"),
    })?;
    read_lines(lp, tls, |lp, tls, line, _| {
        let (command, arg) = split(line);
        if let Some(next) = common(lp, tls, &command, arg, true) {
            return next;
        }
        let reply: &'static [u8] = if command == "STARTTLS" {
            b"503 5.5.1 TLS already active\r\n"
        } else {
            b"502 5.5.2 command not recognized\r\n"
        };
        let _ = tls.write(lp, reply, |_, _, _| {});
        Next::Continue
    })
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args = Args::parse();
    if let Err(e) = run(&args) {
        eprintln!("starttls_server: {e}");
        std::process::exit(1);
    }
}

fn run(args: &Args) -> biotls::Result<()> {
    let acceptor = Rc::new(TlsAcceptor::from_pem_files(&args.cert, &args.key)?);
    let mut lp = Loop::new()?;
    let listener = TcpListener::bind(&mut lp, args.listen)?;
    log::info!("listening on {}", listener.local_addr(&lp)?);
    listener.listen(&mut lp, move |lp, _, accepted| match accepted {
        Ok(tcp) => {
            if let Err(e) = plaintext(lp, tcp, Rc::clone(&acceptor)) {
                log::info!("{tcp}: {e}");
                tcp.close(lp, |_, _| {});
            }
        }
        Err(e) => log::warn!("accept: {e}"),
    })?;
    lp.run()?;
    Ok(())
}
