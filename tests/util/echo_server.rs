//! Our TLS echo server (the echo example's code) on its own loop thread, for tests that
//! drive it from external tools.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use biotls::echo::{EchoEnd, EchoOptions, echo_with};
use biotls::tls::{Tls, TlsAcceptor};
use biotls::{Async, AsyncSender, Error, Loop, TcpListener};

const LIMIT: Duration = Duration::from_secs(30);

/// The server, on an ephemeral port; stopped (through an `Async`) and joined on drop.
pub struct EchoServer {
    pub port: u16,
    /// How each connection ended.
    ends: Arc<Mutex<Vec<Result<(), Error>>>>,
    stop: AsyncSender,
    thread: Option<JoinHandle<()>>,
}

impl EchoServer {
    /// Starts the server with the default handshake timeout.
    pub fn start(acceptor: TlsAcceptor) -> EchoServer {
        EchoServer::start_with(acceptor, None)
    }

    /// Starts the server; `handshake_timeout` replaces the default if given.
    pub fn start_with(acceptor: TlsAcceptor, handshake_timeout: Option<Duration>) -> EchoServer {
        let ends = Arc::new(Mutex::new(Vec::new()));
        let e = Arc::clone(&ends);
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            let mut lp = Loop::new().unwrap();
            let listener =
                TcpListener::bind(&mut lp, SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).unwrap();
            let port = listener.local_addr(&lp).unwrap().port();
            listener
                .listen(&mut lp, move |lp, _, accepted| {
                    let Ok(tcp) = accepted else { return };
                    let _ = tcp.set_nodelay(lp, true);
                    let tls = Tls::server(lp, tcp, &acceptor).unwrap();
                    if handshake_timeout.is_some() {
                        tls.set_handshake_timeout(lp, handshake_timeout).unwrap();
                    }
                    let e = Arc::clone(&e);
                    echo_with(lp, tls, EchoOptions::default(), move |_, _, end| {
                        e.lock().unwrap().push(match end {
                            EchoEnd::Done => Ok(()),
                            EchoEnd::Failed(err) => Err(err.clone()),
                        });
                    })
                    .unwrap();
                })
                .unwrap();
            let (_stop, sender) = Async::new(&mut lp, move |lp, stop| {
                listener.close(lp);
                stop.close(lp);
                lp.stop();
            })
            .unwrap();
            tx.send((port, sender)).unwrap();
            lp.run().unwrap();
        });
        let (port, stop) = rx.recv_timeout(LIMIT).expect("echo server did not start");
        EchoServer {
            port,
            ends,
            stop,
            thread: Some(thread),
        }
    }

    /// Waits until `n` connections have ended and returns how: `Ok` or the error's text.
    pub fn ends(&self, n: usize) -> Vec<Result<(), String>> {
        self.errors(n)
            .into_iter()
            .map(|end| end.map_err(|e| e.to_string()))
            .collect()
    }

    /// Waits until `n` connections have ended and returns how.
    pub fn errors(&self, n: usize) -> Vec<Result<(), Error>> {
        let deadline = Instant::now() + LIMIT;
        loop {
            let ends = self.ends.lock().unwrap().clone();
            if ends.len() >= n {
                return ends;
            }
            assert!(Instant::now() < deadline, "server connections did not end");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        let _ = self.stop.send();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
