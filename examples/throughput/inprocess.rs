//! `--in-process`: what the older in-process mode measured.
//!
//! That mode ran the servers on threads of the benchmark process (server CPU from
//! thread CPU clocks) and loaded them with a client written with this crate's `Loop`,
//! on another thread of the same process. Its figures disagreed with an outside
//! harness. This runs the same two servers (the `Tls` handle on a loop, and blocking
//! `SslStream` with a thread per connection) in a 2 × 2 matrix:
//!
//! - client: the old one (`benches/harness`: `Tls` handles on a `Loop`, in a thread of
//!   this process), or the load client of the main mode (mio + `TlsSession`, this
//!   process's main thread);
//! - server: in this process (the old accounting: thread CPU) or a process of its own
//!   (`tls_echo_server`, `--serve blocking-tls`; process CPU clock).
//!
//! for one-connection echo at each write size and for `--many-conns` connections
//! (which, in the old mode, all connected at once, with their handshakes inside the
//! measured CPU). Each cell is the median of `--repeat` runs, the arms alternating.

use std::collections::HashMap;
use std::time::Duration;

use crate::client::{self, Fleet};
use crate::harness::{self, Mode, Running, Server};
use crate::servers::{Kind, Launcher};
use crate::{Args, Stat, TempDir, gib, human, prepare_binaries};

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum ClientKind {
    /// `harness::run_client`: `Tls` handles on a `Loop`, a thread of this process; every
    /// connection connects at once.
    Loop,
    /// `client::Fleet`: mio + `TlsSession` on this thread; connections established
    /// first (64 handshakes in flight), then echo.
    Mio,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Placement {
    Thread,
    Process,
}

struct Run {
    cpu: f64,
    wall: f64,
    bytes: u64,
}

struct Env {
    setup: harness::Setup,
    launcher: Launcher,
    timeout: Duration,
}

/// One measurement: server CPU (whole server life for threads; from just before the
/// first connection to settled after the last for processes) and client wall time.
fn measure(
    env: &Env,
    client: ClientKind,
    place: Placement,
    server: Server,
    conns: usize,
    per_conn: u64,
    size: usize,
) -> std::io::Result<Run> {
    enum Target {
        Thread(Running),
        Process(crate::servers::ServerProcess),
    }
    let target = match place {
        Placement::Thread => Target::Thread(Running::start(
            &env.setup,
            server,
            harness::Proto::Tls,
            Mode::Echo,
        )),
        Placement::Process => Target::Process(env.launcher.start(match server {
            Server::Loop => Kind::Biotls,
            Server::Blocking => Kind::Blocking,
        })?),
    };
    let (addr, cpu0) = match &target {
        Target::Thread(r) => (r.addr, Duration::ZERO),
        Target::Process(p) => (p.addr, p.cpu()),
    };
    let wall = match client {
        ClientKind::Loop => harness::run_client(
            harness::Proto::Tls,
            Mode::Echo,
            addr,
            env.setup.connector.clone(),
            conns,
            per_conn,
            size,
        ),
        ClientKind::Mio => {
            let mut fleet = Fleet::new(
                addr,
                client::Proto::Tls(env.setup.connector.clone()),
                env.timeout,
            )?;
            let start = std::time::Instant::now();
            fleet.establish(conns, 64)?;
            // The old client's window, so that only the client's code differs.
            let window = (4 * size as u64).max(256 << 10);
            fleet.echo(per_conn, size, window)?;
            fleet.close()?;
            start.elapsed()
        }
    };
    let cpu = match target {
        Target::Thread(r) => {
            // The old accounting: thread CPU, summed when connections end.
            let c = r.cpu_after(conns);
            r.stop();
            c
        }
        Target::Process(mut p) => {
            let c = p.cpu_settled(Duration::from_secs(2)).saturating_sub(cpu0);
            p.check_alive()?;
            c
        }
    };
    Ok(Run {
        cpu: cpu.as_secs_f64(),
        wall: wall.as_secs_f64(),
        bytes: per_conn * conns as u64,
    })
}

pub fn run(args: &Args) -> i32 {
    let (echo_server, _) = prepare_binaries(args, false);
    let Some(echo_server) = echo_server else {
        eprintln!("--in-process needs tls_echo_server, which could not be built");
        return 1;
    };
    let setup = harness::setup();
    let dir = std::env::temp_dir().join(format!("biotls-inprocess-{}", std::process::id()));
    let _cleanup = TempDir(dir.clone());
    setup.pki.write_to_dir(&dir).expect("write certificates");
    let env = Env {
        launcher: Launcher {
            tls_echo_server: echo_server,
            before: None,
            tokio_echo: None,
            myself: std::env::current_exe().expect("current exe"),
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
            log_dir: dir.clone(),
            perf: None,
            wrap: Vec::new(),
            label: Default::default(),
            seq: Default::default(),
        },
        setup,
        timeout: Duration::from_secs(args.timeout),
    };
    println!("## What the in-process mode measured\n");
    println!(
        "Server CPU ms per GiB echoed, median of {} alternating runs (range); the ratio is \
         biotls / blocking. Thread: the server on a thread of this process, CPU from thread \
         clocks (the old mode). Process: the server as a process of its own, its process \
         CPU clock. Client loop: the old client (`Tls` handles on a `Loop`, a thread of \
         this process); client mio: the main mode's client (this process's main thread), \
         with the old client's window (4 writes or 256 KiB in flight, the larger).\n",
        args.repeat.max(1)
    );
    println!(
        "| workload | client | server in | biotls CPU ms/GiB | blocking CPU ms/GiB | ratio | biotls MiB/s | blocking MiB/s |"
    );
    println!("|---|---|---|---:|---:|---:|---:|---:|");
    let mut failures = 0;
    let mut workloads: Vec<(String, usize, u64, usize)> = Vec::new();
    if args.wants("echo") {
        for &s in &args.sizes {
            let label = format!("echo {}, 1 conn", human(s as u64));
            workloads.push((label, 1, args.bytes, s));
        }
    }
    if args.wants("many") && args.many_conns > 0 {
        workloads.push((
            format!("{} conns × {}", args.many_conns, human(args.many_bytes)),
            args.many_conns,
            args.many_bytes,
            args.multi_size,
        ));
    }
    for (label, conns, per_conn, size) in workloads {
        let mut results: HashMap<(ClientKind, Placement, Server), Vec<Run>> = HashMap::new();
        eprint!("  {label} ");
        let combos = [
            (ClientKind::Loop, Placement::Thread),
            (ClientKind::Loop, Placement::Process),
            (ClientKind::Mio, Placement::Thread),
            (ClientKind::Mio, Placement::Process),
        ];
        for rep in 0..args.repeat.max(1) {
            for &(client, place) in &combos {
                let mut servers = [Server::Loop, Server::Blocking];
                if rep % 2 == 1 {
                    servers.reverse();
                }
                for server in servers {
                    match measure(&env, client, place, server, conns, per_conn, size) {
                        Ok(r) => {
                            eprint!(".");
                            results.entry((client, place, server)).or_default().push(r);
                        }
                        Err(e) => {
                            failures += 1;
                            eprintln!("\n  FAILED: {label} {client:?} {place:?} {server:?}: {e}");
                        }
                    }
                }
            }
        }
        eprintln!();
        for &(client, place) in &combos {
            let stat = |server: Server, f: &dyn Fn(&Run) -> f64| {
                results
                    .get(&(client, place, server))
                    .and_then(|v| Stat::of(&v.iter().map(f).collect::<Vec<_>>()))
            };
            let cpu = |r: &Run| r.cpu * 1e3 / gib(r.bytes);
            let speed = |r: &Run| r.bytes as f64 / (1 << 20) as f64 / r.wall;
            let (Some(a), Some(b)) = (stat(Server::Loop, &cpu), stat(Server::Blocking, &cpu))
            else {
                continue;
            };
            let (sa, sb) = (
                stat(Server::Loop, &speed).map_or(0.0, |s| s.median),
                stat(Server::Blocking, &speed).map_or(0.0, |s| s.median),
            );
            if args.json {
                println!(
                    "{{\"test\":\"in_process\",\"workload\":\"{label}\",\"client\":\"{client:?}\",\"server_in\":\"{place:?}\",\"biotls_cpu_ms_per_gib\":{},\"blocking_cpu_ms_per_gib\":{},\"ratio\":{:.4},\"biotls_mib_s\":{sa:.1},\"blocking_mib_s\":{sb:.1}}}",
                    a.json(),
                    b.json(),
                    a.median / b.median
                );
            } else {
                println!(
                    "| {label} | {} | {} | {} | {} | {:.2} | {sa:.0} | {sb:.0} |",
                    match client {
                        ClientKind::Loop => "loop (old)",
                        ClientKind::Mio => "mio",
                    },
                    match place {
                        Placement::Thread => "thread (old)",
                        Placement::Process => "process",
                    },
                    a.show(0),
                    b.show(0),
                    a.median / b.median
                );
            }
        }
    }
    if failures > 0 { 1 } else { 0 }
}
