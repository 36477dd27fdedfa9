//! fulcrum's benchmarks, run by `cargo xtask bench ...` (which builds the
//! eBPF objects and the release binaries first and passes `--record
//! bench/RESULTS.md`).
//!
//! - `xdp`: the XDP program timed with `BPF_PROG_TEST_RUN` against the
//!   datapath floor (see [`xdp`]).
//! - `xdp-pps`: forwarded packets/s on one CPU, fulcrum's XDP program
//!   against the kernel's forwarding with nftables DNAT (see [`xdp_pps`]).
//! - `control-plane`: the daemon in the namespace lab with 1, 16 and 64
//!   VIPs: start to tables applied, health change to tables updated,
//!   rebuild CPU, control-loop stalls, SIGTERM to exit (see
//!   [`control_plane`]).
//! - `l7`: the L7 proxy against nginx and HAProxy (one worker each):
//!   req/s, latency (closed loop and constant rate), memory per idle
//!   connection (see [`l7`]).
//! - `failover`: the VRRP failover gap the client sees, fulcrum against
//!   keepalived in the lab with two lbs (see [`failover`]).
//!
//! Method (DESIGN.md, "How we measure"): figures are medians over rounds,
//! results are appended to `bench/RESULTS.md` with the command and machine.
mod control_plane;
mod failover;
mod katran;
mod l7;
mod xdp;
mod xdp_pps;

use std::{fs::OpenOptions, io::Write, path::Path, path::PathBuf};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "fulcrum-bench")]
struct Cli {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Subcommand)]
enum Bench {
    /// ns per packet of the XDP program vs the MAC-swap floor.
    Xdp {
        /// Runs per kernel call.
        #[arg(long, default_value_t = 1_000_000)]
        repeat: u32,
        /// Interleaved rounds; the median is reported.
        #[arg(long, default_value_t = 7)]
        rounds: usize,
        /// CPU to pin to.
        #[arg(long, default_value_t = 1)]
        cpu: usize,
        /// Connection-table size in flows (default: the daemon's). The SYN
        /// rows write `repeat` x `rounds` new flows each: a table larger
        /// than twice that never evicts.
        #[arg(long)]
        conn_table_size: Option<u32>,
        /// Katran's `balancer.bpf.o`, built out of tree (bench/RESULTS.md
        /// gives the commands): adds Katran's rows, behind the same
        /// harness, and the fulcrum/Katran ratios net of the floor.
        #[arg(long)]
        katran_object: Option<PathBuf>,
        /// Append the results to this file (bench/RESULTS.md by xtask).
        #[arg(long)]
        record: Option<PathBuf>,
    },
    /// Forwarded packets/s on one CPU in a namespace lab: fulcrum's XDP
    /// program vs the kernel's forwarding with nftables DNAT (and a MAC
    /// swap reflector), a live-frames XDP generator, interleaved rounds.
    XdpPps {
        /// Interleaved rounds (after one warm-up round); medians reported.
        #[arg(long, default_value_t = 7)]
        rounds: usize,
        /// Frames the generator sends per arm and round.
        #[arg(long, default_value_t = 2_000_000)]
        frames: u32,
        /// Distinct flows (UDP source ports), cycled.
        #[arg(long, default_value_t = 1024)]
        flows: u32,
        /// CPU for the generator (and so for the whole path).
        #[arg(long, default_value_t = 1)]
        cpu: usize,
        /// Append the results to this file (bench/RESULTS.md by xtask).
        #[arg(long)]
        record: Option<PathBuf>,
    },
    /// The daemon in the namespace lab: startup, health-change and
    /// rebuild times, loop stalls and shutdown with 1, 16 and 64 VIPs.
    ControlPlane {
        /// VIP counts to measure, in order.
        #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
        vips: Vec<usize>,
        /// Health flips of real1 per VIP count (each: down, then up).
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Pause between `/stats` polls, in milliseconds.
        #[arg(long, default_value_t = 2)]
        poll_ms: u64,
        /// The `fulcrum` binary (default: next to this one, or FULCRUM_BIN_DIR).
        #[arg(long)]
        fulcrum: Option<PathBuf>,
        /// Append the results to this file (bench/RESULTS.md by xtask).
        #[arg(long)]
        record: Option<PathBuf>,
    },
    /// fulcrum-l7 vs nginx and HAProxy, one worker each: wrk req/s and
    /// latency, constant-rate latency, memory per idle connection.
    L7 {
        /// Interleaved rounds; medians are reported.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Seconds per wrk run.
        #[arg(long, default_value_t = 5)]
        secs: u64,
        /// wrk connections (keep-alive).
        #[arg(long, default_value_t = 50)]
        connections: u32,
        /// CPU for the proxy under test.
        #[arg(long, default_value_t = 0)]
        proxy_cpu: usize,
        /// CPU for the backend and the load generators.
        #[arg(long, default_value_t = 1)]
        load_cpu: usize,
        /// Idle connections for the memory measurement (0: skip). 9,900, not
        /// 10,000: the hard RLIMIT_NOFILE here is 20,000 and HAProxy wants two
        /// descriptors per `maxconn`.
        #[arg(long, default_value_t = 9_900)]
        idle: usize,
        /// Constant-rate run's req/s (default: 60% of the slowest proxy's median).
        #[arg(long)]
        rate: Option<u64>,
        /// Interleaved constant-rate rounds (each proxy once per round, the
        /// order rotated); the table reports medians over rounds.
        #[arg(long, default_value_t = 5)]
        rate_rounds: usize,
        /// Run fulcrum-l7 on the polling driver instead of io_uring.
        #[arg(long)]
        polling: bool,
        /// Also run the closed loop with two workers (threads or processes)
        /// per proxy, spread over both CPUs; `--no-two-workers` skips it.
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        two_workers: bool,
        /// Only the memory row (idle connections, one fresh process per
        /// proxy): no backend load, no closed loop, no constant rate.
        #[arg(long)]
        memory_only: bool,
        /// Append the results to this file (bench/RESULTS.md by xtask).
        #[arg(long)]
        record: Option<PathBuf>,
    },
    /// VRRP failover gap as the client sees it, fulcrum vs keepalived, in
    /// the lab with two lbs: SIGKILL and SIGTERM of the Master.
    Failover {
        /// Rounds per daemon, event and advert interval (interleaved).
        #[arg(long, default_value_t = 7)]
        rounds: usize,
        /// Advert intervals in milliseconds (whole centiseconds).
        #[arg(long, value_delimiter = ',', default_value = "1000,100")]
        adverts: Vec<u64>,
        /// The `fulcrum` binary (default: next to this one, or FULCRUM_BIN_DIR).
        #[arg(long)]
        fulcrum: Option<PathBuf>,
        /// Append the results to this file (bench/RESULTS.md by xtask).
        #[arg(long)]
        record: Option<PathBuf>,
    },
    /// (internal) one constant-rate run of `l7` against `addr`: prints
    /// p50/p99/p99.9/max in µs, requests and errors on one line.
    #[command(hide = true)]
    L7Rate {
        #[arg(long)]
        addr: std::net::SocketAddr,
        #[arg(long)]
        rate: u64,
        #[arg(long, default_value_t = 5)]
        secs: u64,
        #[arg(long, default_value_t = 50)]
        connections: u32,
        #[arg(long, default_value_t = 1)]
        cpu: usize,
    },
    /// (internal) fulcrum-l7, started by `l7`.
    #[command(hide = true)]
    L7Proxy {
        #[arg(long)]
        listen: std::net::SocketAddr,
        #[arg(long)]
        backend: std::net::SocketAddr,
        #[arg(long)]
        polling: bool,
        #[arg(long, default_value_t = 64)]
        max_idle: usize,
        #[arg(long, default_value_t = 1)]
        workers: usize,
    },
}

fn main() -> Result<()> {
    match Cli::parse().bench {
        Bench::Xdp { repeat, rounds, cpu, conn_table_size, katran_object, record } => {
            xdp::run(repeat, rounds, cpu, conn_table_size, katran_object, record)
        }
        Bench::XdpPps { rounds, frames, flows, cpu, record } => xdp_pps::run(rounds, frames, flows, cpu, record),
        Bench::ControlPlane { vips, rounds, poll_ms, fulcrum, record } => control_plane::run(&vips, rounds, poll_ms, fulcrum, record),
        Bench::L7 { rounds, secs, connections, proxy_cpu, load_cpu, idle, rate, rate_rounds, polling, two_workers, memory_only, record } => {
            l7::run(l7::Opts { rounds, secs, connections, proxy_cpu, load_cpu, idle, rate, rate_rounds, polling, two_workers, record, memory_only })
        }
        Bench::L7Rate { addr, rate, secs, connections, cpu } => l7::rate_once(addr, rate, secs, connections, cpu),
        Bench::Failover { rounds, adverts, fulcrum, record } => {
            failover::run(failover::Opts { rounds, adverts_ms: adverts, fulcrum, record })
        }
        Bench::L7Proxy { listen, backend, polling, max_idle, workers } => l7::serve_proxy(listen, backend, polling, max_idle, workers),
    }
}

/// Prints `report` and appends it to `record`, if given.
fn publish(report: &str, record: Option<&Path>) -> Result<()> {
    print!("{report}");
    if let Some(path) = record {
        let mut f = OpenOptions::new().create(true).append(true).open(path).with_context(|| format!("opening {}", path.display()))?;
        f.write_all(report.as_bytes())?;
        println!("\nrecorded in {}", path.display());
    }
    Ok(())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn now() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string()))
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cpu}, {} CPUs, Linux {}", std::thread::available_parallelism().map_or(0, |n| n.get()), kernel.trim())
}
