//! cargo bench
//!
//! Criterion benchmarks, in one process (see `benches/harness`): the `Tls` and `Tcp`
//! handles on a loop, and blocking `SslStream` and `TcpStream` servers with a thread per
//! connection, all on threads of this process against the same loop client on another.
//! Write sizes 1 KiB, 16 KiB, 64 KiB and 1 MiB; echo and one-way bulk.
//!
//! A quick before/after tool for the data path while developing. The published figures
//! come from `cargo run --release --example throughput`, which runs every server as a
//! process of its own under a client that does not use the `Loop` (and adds tokio); the
//! README says how the two placements compare. Here the loop client's window is 4 writes
//! or 256 KiB and it coalesces small writes into larger records, so "1 KiB" measures
//! 16 KiB records.
//!
//! Two groups per workload: `*_wall` measures wall time per transfer (MiB/s), and
//! `*_server_cpu` reports the server's CPU time per transfer as its "time", so
//! criterion's throughput figure there is bytes per server CPU second. HTML reports with
//! plots land in `target/criterion/`.

mod harness;

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use harness::{Mode, Proto, Running, Server, run_client, setup};

const SIZES: [usize; 4] = [1024, 16 * 1024, 64 * 1024, 1024 * 1024];
const ARMS: [(Proto, Server, &str); 4] = [
    (Proto::Tls, Server::Loop, "tls_handle"),
    (Proto::Tls, Server::Blocking, "sslstream_blocking"),
    (Proto::Tcp, Server::Loop, "tcp_handle"),
    (Proto::Tcp, Server::Blocking, "tcpstream_blocking"),
];

fn throughput(c: &mut Criterion) {
    let setup = setup();
    for (mode, name) in [(Mode::Echo, "echo"), (Mode::Bulk, "bulk")] {
        for (group_name, measure_cpu) in [
            (format!("{name}_wall"), false),
            (format!("{name}_server_cpu"), true),
        ] {
            let mut group = c.benchmark_group(group_name);
            group.sample_size(10);
            group.warm_up_time(Duration::from_millis(500));
            group.measurement_time(Duration::from_secs(2));
            for size in SIZES {
                let payload: u64 = if size < 16 * 1024 { 1 << 20 } else { 8 << 20 };
                group.throughput(Throughput::Bytes(payload));
                for (proto, server, arm) in ARMS {
                    let running = Running::start(&setup, server, proto, mode);
                    let mut served = 0usize;
                    group.bench_function(BenchmarkId::new(arm, size), |b| {
                        b.iter_custom(|iters| {
                            let cpu_before = running.cpu_after(served);
                            let mut wall = Duration::ZERO;
                            for _ in 0..iters {
                                wall += run_client(
                                    proto,
                                    mode,
                                    running.addr,
                                    setup.connector.clone(),
                                    1,
                                    payload,
                                    size,
                                );
                                served += 1;
                            }
                            if measure_cpu {
                                running.cpu_after(served).saturating_sub(cpu_before)
                            } else {
                                wall
                            }
                        })
                    });
                    running.stop();
                }
            }
            group.finish();
        }
    }
}

criterion_group!(benches, throughput);
criterion_main!(benches);
