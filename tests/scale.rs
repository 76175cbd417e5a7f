//! Scale: 5000 concurrent TLS connections on one loop. Both ends live in this process
//! and on the same loop: the library's TLS echo server, and 5000 clients that each send
//! a line, get its echo, and wait until all 5000 have theirs (so all are open at once)
//! before closing with close_notify. Every connection must end cleanly on both sides.
//! Prints the time taken and the memory per connection (RSS growth at the peak / 5000,
//! for both ends together: 10,000 sockets, 10,000 `Tls` handles).
//!
//! Needs about 10,050 file descriptors: the test raises the soft RLIMIT_NOFILE to the
//! hard limit and fails with a clear message if that is too low.

mod util;

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use biotls::echo::{EchoEnd, EchoOptions, echo_with};
use biotls::pki::Pki;
use biotls::tls::{Tls, TlsConnector};
use biotls::{ListenOptions, Loop, Stream, Tcp, TcpListener};
use util::{run_to_end, run_until};

const N: usize = 5000;
/// Descriptors needed: both ends of every connection, the listener, the loop, stdio.
const FDS_NEEDED: u64 = 2 * N as u64 + 50;
/// Handshakes in flight at once: the rest wait, so the listen backlog never overflows
/// (an overflow costs a one-second SYN retransmit).
const WINDOW: usize = 500;
const LIMIT: Duration = Duration::from_secs(120);

#[derive(Default)]
struct Counts {
    started: usize,
    in_flight: usize,
    echoed: usize,
    client_clean: usize,
    server_clean: usize,
    failures: Vec<String>,
}

struct Clients {
    addr: SocketAddr,
    connector: TlsConnector,
    handles: RefCell<Vec<Tls>>,
    counts: RefCell<Counts>,
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Starts clients until `N` are started or `WINDOW` are handshaking.
fn top_up(lp: &mut Loop, clients: &Rc<Clients>) {
    loop {
        {
            let c = clients.counts.borrow();
            if c.started == N || c.in_flight == WINDOW {
                return;
            }
        }
        start_client(lp, clients);
    }
}

fn start_client(lp: &mut Loop, clients: &Rc<Clients>) {
    let line = {
        let mut c = clients.counts.borrow_mut();
        c.started += 1;
        c.in_flight += 1;
        format!("connection {}\n", c.started).into_bytes()
    };
    let tcp = Tcp::connect(lp, clients.addr, |_, _, _| {}).unwrap();
    let tls = Tls::client(lp, tcp, &clients.connector, "localhost").unwrap();
    clients.handles.borrow_mut().push(tls);
    let cl = clients.clone();
    tls.on_handshake(lp, move |lp, _, r| {
        cl.counts.borrow_mut().in_flight -= 1;
        if let Err(e) = r {
            cl.counts
                .borrow_mut()
                .failures
                .push(format!("handshake: {e}"));
        }
        top_up(lp, &cl);
    })
    .unwrap();
    tls.write(lp, line.clone(), |_, _, _| {}).unwrap();
    let cl = clients.clone();
    let mut got = Vec::new();
    tls.start_read(lp, move |lp, tls, r| {
        let mut c = cl.counts.borrow_mut();
        match r {
            Ok(Some(data)) => {
                got.extend_from_slice(&data);
                if got.len() == line.len() {
                    assert_eq!(got, line);
                    c.echoed += 1;
                }
                return;
            }
            Ok(None) if got == line => c.client_clean += 1,
            Ok(None) => c.failures.push(format!("client: short echo {got:?}")),
            Err(e) => c.failures.push(format!("client: {e}")),
        }
        drop(c);
        tls.close(lp, |_, _| {});
    })
    .unwrap();
}

#[test]
fn five_thousand_concurrent_tls_connections_echo_and_close_cleanly() {
    let hard = rlimit::increase_nofile_limit(u64::MAX).unwrap();
    assert!(
        hard >= FDS_NEEDED,
        "this test needs {FDS_NEEDED} file descriptors (both ends of {N} connections in one \
         process), but the hard RLIMIT_NOFILE is {hard}: raise it (ulimit -Hn, limits.conf \
         or the container's nofile limit)"
    );
    let pki = Pki::generate(&["localhost"]).unwrap();
    let mut lp = Loop::new().unwrap();
    let mut opts = ListenOptions::default();
    opts.backlog = 4096;
    let listener = TcpListener::bind_with(&mut lp, "127.0.0.1:0".parse().unwrap(), &opts).unwrap();
    let clients = Rc::new(Clients {
        addr: listener.local_addr(&lp).unwrap(),
        connector: pki.connector().unwrap(),
        handles: RefCell::new(Vec::with_capacity(N)),
        counts: RefCell::default(),
    });
    let (acceptor, cl) = (pki.acceptor().unwrap(), clients.clone());
    listener
        .listen(&mut lp, move |lp, _, tcp| {
            let tls = match tcp.and_then(|tcp| Tls::server(lp, tcp, &acceptor)) {
                Ok(tls) => tls,
                Err(e) => return cl.counts.borrow_mut().failures.push(format!("accept: {e}")),
            };
            let cl = cl.clone();
            echo_with(lp, tls, EchoOptions::default(), move |_, _, end| {
                let mut c = cl.counts.borrow_mut();
                match end {
                    EchoEnd::Done => c.server_clean += 1,
                    EchoEnd::Failed(e) => c.failures.push(format!("server: {e}")),
                }
            })
            .unwrap();
        })
        .unwrap();

    let rss_before = rss_kib();
    let started = Instant::now();
    top_up(&mut lp, &clients);
    let c = clients.clone();
    run_until(&mut lp, LIMIT, || {
        let c = c.counts.borrow();
        assert!(c.failures.is_empty(), "{:?}", c.failures);
        c.echoed == N
    });
    let open_after = started.elapsed();
    let rss_peak = rss_kib();

    // All N connections are open and have echoed: now close them all.
    for tls in clients.handles.borrow().iter() {
        tls.shutdown(&mut lp, |_, _, _| {}).unwrap();
    }
    let c = clients.clone();
    run_until(&mut lp, LIMIT.saturating_sub(started.elapsed()), || {
        let c = c.counts.borrow();
        assert!(c.failures.is_empty(), "{:?}", c.failures);
        c.client_clean == N && c.server_clean == N
    });
    let all_closed = started.elapsed();
    listener.close(&mut lp);
    run_to_end(&mut lp, Duration::from_secs(10));

    let per_conn = (rss_peak.saturating_sub(rss_before)) as f64 / N as f64;
    println!(
        "{N} TLS connections ({}): all open and echoed after {open_after:.2?}, all closed \
         cleanly after {all_closed:.2?}; RSS {rss_before} KiB -> {rss_peak} KiB at the \
         peak: {per_conn:.1} KiB per connection, both ends in this process (client + \
         server handle, 2 sockets)",
        if cfg!(debug_assertions) {
            "debug build"
        } else {
            "release build"
        },
    );
}
