//! `cargo xtask bench control-plane`: how fast the daemon's control plane
//! reacts, measured on the real `fulcrum` binary in the namespace lab
//! (issue 9).
//!
//! For each VIP count N (1, 16, 64 by default: distinct ports on the lab's
//! VIP4, Maglev with 65537 slots, one pool of the three lab backends with
//! an HTTP check on /health every 500 ms, rise 1, fall 1):
//!
//! - start: from spawning `fulcrum run` to every VIP's table in the kernel
//!   holding all three backends, as seen by polling `GET /stats`;
//! - health down: real1's /health starts failing; the daemon's own figure
//!   is `control.last_apply.latency_us` (health verdict arriving at the
//!   control loop to the last VIP flipped), read from the first snapshot
//!   in which no VIP's table names real1; the bench also reports its own
//!   wall time from the flip to that snapshot (which includes up to one
//!   check interval plus the check itself);
//! - health up: the same for real1 coming back;
//! - per rebuild: `last_apply.cpu_us`, `wall_us`, `vips_written`,
//!   `tables_built`;
//! - stalls: `control.max_loop_stall_us` (lateness of the daemon's 10 ms
//!   heartbeat, since start) after start and at the end, and the slowest
//!   `/stats` answer the bench saw;
//! - SIGTERM to exit.
//!
//! The bench reads `/stats` itself over TCP from inside the lb namespace
//! (no `fulcrum stats` process per poll) every `POLL` and reports that
//! round trip: an event is seen at most one poll period plus one round
//! trip late. Every wait is bounded; the lab (prefix unique to this run)
//! is torn down on every exit path, the daemon is stopped by pid first.
use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::Stdio,
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use fulcrum_api::{ApplyStats, StatsReport};
use fulcrum_lab::{bin_path, host4, interrupt, Lab, Proc, REALS, VIP4};
use nix::{
    sched::{setns, CloneFlags},
    sys::signal::{kill, Signal},
    unistd::Pid,
};

use crate::{machine, median, now, publish};

/// Where the daemon's admin API listens, inside the lb namespace.
const ADMIN: &str = "127.0.0.1:9180";
const TABLE_SIZE: u32 = 65537;
const CHECK_INTERVAL_MS: u64 = 500;
const CHECK_TIMEOUT_MS: u64 = 400;
/// The backend whose health is flipped.
const FLIPPED: &str = "real1";
/// Bounds on every wait.
const START_LIMIT: Duration = Duration::from_secs(30);
const FLIP_LIMIT: Duration = Duration::from_secs(10);
const EXIT_LIMIT: Duration = Duration::from_secs(20);
/// Before-figures of issue 9, measured by its author on the old code with 64 VIPs.
const BEFORE_START: &str = "12 s";
const BEFORE_HEALTH: &str = "4 s";
const BEFORE_STATS: &str = "3.9 s unanswered";
const BEFORE_SIGTERM: &str = "3.9–10 s";

pub fn run(counts: &[usize], rounds: usize, poll_ms: u64, fulcrum: Option<PathBuf>, record: Option<PathBuf>) -> Result<()> {
    ensure!(!counts.is_empty() && counts.iter().all(|&n| (1..=64).contains(&n)), "VIP counts must be 1..=64 (the datapath's MAX_VIPS)");
    ensure!((1..=50).contains(&rounds), "rounds must be 1..=50");
    ensure!((1..=100).contains(&poll_ms), "poll interval must be 1..=100 ms");
    let poll = Duration::from_millis(poll_ms);
    interrupt::install()?;
    let fulcrum = match fulcrum {
        Some(path) => path,
        None => bin_path("fulcrum")?,
    };
    let machine = machine();
    let load_before = loadavg();
    let prefix = format!("fbcp{}", std::process::id() % 100_000);
    // Logs outlive the lab (whose run directory goes with it).
    let log_dir = std::env::temp_dir().join(format!("fulcrum-bench-{prefix}"));
    std::fs::create_dir_all(&log_dir).with_context(|| format!("creating {}", log_dir.display()))?;
    eprintln!("bench: lab {prefix}, daemon logs in {}", log_dir.display());
    let lab = Lab::up(&prefix).context("bringing up the lab")?;
    let mut results = Vec::new();
    for &n in counts {
        eprintln!("bench: {n} VIPs");
        let log = log_dir.join(format!("fulcrum-{n}vips.log"));
        let r = measure(&lab, &fulcrum, n, rounds, poll, &log).with_context(|| format!("{n} VIPs (daemon log {}): last lines:\n{}", log.display(), tail(&log, 30)))?;
        results.push(r);
    }
    lab.down().context("tearing the lab down")?;
    let machine = format!("{machine}; load average {load_before} before, {} after", loadavg());
    publish(&report(&results, rounds, poll, &fulcrum, &machine), record.as_deref())
}

/// What one VIP count measured.
struct NResult {
    n: usize,
    /// Spawn to every table applied with all three backends.
    start: Duration,
    /// Spawn to the first `/stats` answer.
    first_answer: Duration,
    /// The apply seen in the first snapshot with every table full.
    start_apply: Option<ApplyStats>,
    stall_after_start_us: u64,
    down: Vec<Flip>,
    up: Vec<Flip>,
    stall_end_us: u64,
    /// Slowest `/stats` round trip after the first answer, and the median.
    slowest_stats: Duration,
    median_stats: Duration,
    sigterm: Duration,
    exit: String,
}

/// One health change and its rebuild.
struct Flip {
    /// From changing the backend's health file to the first snapshot with
    /// every table updated (includes the health check's own delay).
    wall: Duration,
    /// From the start of the poll before the observing one to the end of
    /// the observing one: how late the bench may have seen it.
    resolution: Duration,
    apply: ApplyStats,
    /// Applies completed between the last snapshot before the flip and the
    /// observing one (1 when each change is one rebuild).
    applies: u64,
    /// "down #2" and so on.
    label: String,
    /// `max_loop_stall_us` rose from .0 to .1 while waiting before the flip.
    settle_stall: Option<(u64, u64)>,
    /// `max_loop_stall_us` rose from .0 to .1 between the flip and the
    /// observing snapshot.
    stall: Option<(u64, u64)>,
    /// The slowest `/stats` round trip between the flip and the observation.
    slowest_poll: Duration,
}

/// `GET /stats` from inside the lb namespace over plain TCP, from a
/// thread that joined the namespace once (no process or thread per poll).
struct Admin {
    requests: Option<mpsc::Sender<()>>,
    answers: mpsc::Receiver<Result<Vec<u8>>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Round trip of every successful poll.
    times: Vec<Duration>,
}

impl Admin {
    fn new(ns: &str, addr: SocketAddr) -> Result<Admin> {
        let path = format!("/run/netns/{ns}");
        let file = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
        let (requests, inbox) = mpsc::channel::<()>();
        let (outbox, answers) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            if let Err(e) = setns(&file, CloneFlags::CLONE_NEWNET) {
                let _ = outbox.send(Err(anyhow::anyhow!("setns into {path}: {e}")));
                return;
            }
            // Ends when the bench drops its sender.
            while inbox.recv().is_ok() {
                let answer = (|| -> Result<Vec<u8>> {
                    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
                    s.set_read_timeout(Some(Duration::from_secs(5)))?;
                    s.set_write_timeout(Some(Duration::from_secs(5)))?;
                    s.write_all(b"GET /stats HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")?;
                    let mut buf = Vec::with_capacity(64 * 1024);
                    s.read_to_end(&mut buf)?;
                    Ok(buf)
                })();
                if outbox.send(answer).is_err() {
                    return;
                }
            }
        });
        Ok(Admin { requests: Some(requests), answers, thread: Some(thread), times: Vec::new() })
    }

    fn get(&mut self) -> Result<StatsReport> {
        let started = Instant::now();
        self.requests.as_ref().expect("open").send(()).map_err(|_| anyhow::anyhow!("the poller thread is gone"))?;
        // The socket timeouts bound the thread's answer.
        let body = self.answers.recv_timeout(Duration::from_secs(15)).context("the poller thread did not answer")??;
        let split = body.windows(4).position(|w| w == b"\r\n\r\n").context("no end of HTTP headers")?;
        let head = String::from_utf8_lossy(&body[..split]);
        ensure!(head.starts_with("HTTP/1.1 200"), "admin API answered {}", head.lines().next().unwrap_or(""));
        let report = serde_json::from_slice(&body[split + 4..]).context("parsing /stats")?;
        self.times.push(started.elapsed());
        Ok(report)
    }
}

impl Drop for Admin {
    fn drop(&mut self) {
        self.requests = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A small xorshift generator: flips land at a random phase of the check
/// interval instead of locking to it.
struct Phase(u64);

impl Phase {
    fn next_ms(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below
    }
}

fn config_toml(n: usize) -> String {
    let mut out = format!("interface = \"eth0\"\n\n[admin]\nlisten = \"{ADMIN}\"\n");
    for i in 0..n {
        out += &format!(
            "\n[[vip]]\nname = \"v{i}\"\naddress = \"{VIP4}\"\nport = {}\nprotocol = \"tcp\"\nscheduler = \"maglev\"\npool = \"web\"\nmaglev_table_size = {TABLE_SIZE}\n",
            10_000 + i
        );
    }
    out += &format!(
        "\n[[pool]]\nname = \"web\"\n\n[pool.health_check]\ntype = \"http\"\nmethod = \"GET\"\npath = \"/health\"\nexpect_status = 200\nport = 80\ninterval = \"{CHECK_INTERVAL_MS}ms\"\ntimeout = \"{CHECK_TIMEOUT_MS}ms\"\nrise = 1\nfall = 1\n"
    );
    for r in REALS {
        out += &format!("\n[[pool.backend]]\naddress = \"{}\"\nweight = 1\n", real(r));
    }
    out
}

fn real(name: &str) -> Ipv4Addr {
    host4(name).expect("a lab real")
}

/// Every one of the `n` VIPs has its full-size table in the kernel, and
/// `want` says which backends hold slots in it.
fn tables_hold(s: &StatsReport, n: usize, want: &[Ipv4Addr]) -> bool {
    s.vips.len() == n
        && s.vips.iter().all(|v| {
            let holding: Vec<&str> = v.backends.iter().filter(|b| b.slots > 0).map(|b| b.address.as_str()).collect();
            v.table_size == TABLE_SIZE && holding.len() == want.len() && want.iter().all(|a| holding.contains(&a.to_string().as_str()))
        })
}

fn measure(lab: &Lab, fulcrum: &Path, n: usize, rounds: usize, poll: Duration, log_path: &Path) -> Result<NResult> {
    for r in REALS {
        lab.set_backend_health(r, true)?;
    }
    let config = lab.run_dir().join(format!("fulcrum-{n}.toml"));
    std::fs::write(&config, config_toml(n))?;
    let log = std::fs::File::create(log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let mut cmd = lab.command("lb", fulcrum);
    cmd.arg("run").arg("--config").arg(&config).env("NO_COLOR", "1");
    cmd.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
    let mut admin = Admin::new(&lab.ns("lb"), ADMIN.parse().expect("an address"))?;
    let mut phase = Phase(0x9e37_79b9_7f4a_7c15 ^ u64::from(std::process::id()) ^ n as u64);
    let all: Vec<Ipv4Addr> = REALS.iter().map(|r| real(r)).collect();
    let without: Vec<Ipv4Addr> = REALS.iter().filter(|&&r| r != FLIPPED).map(|r| real(r)).collect();

    // Start.
    let spawned = Instant::now();
    let mut daemon = lab.spawn(cmd)?;
    let mut first_answer = None;
    let mut last_err;
    let (start, ready) = loop {
        interrupt::check()?;
        if let Some(status) = daemon.try_wait()? {
            bail!("fulcrum exited ({status}) during start");
        }
        match admin.get() {
            Ok(s) => {
                first_answer.get_or_insert_with(|| spawned.elapsed());
                if tables_hold(&s, n, &all) {
                    break (spawned.elapsed(), s);
                }
                last_err = format!("tables: {:?}", s.vips.iter().map(|v| (v.table_size, v.backends_in_table)).collect::<Vec<_>>());
            }
            Err(e) => last_err = format!("{e:#}"),
        }
        if spawned.elapsed() > START_LIMIT {
            bail!("not every table applied with 3 backends after {START_LIMIT:?}; last: {last_err}");
        }
        std::thread::sleep(poll);
    };
    let first_answer = first_answer.expect("answered");
    // Round trips while the daemon started (connection refused) are not answers.
    admin.times.clear();

    let mut down = Vec::new();
    let mut up = Vec::new();
    let mut last = ready.clone();
    for round in 0..rounds {
        eprintln!("bench: {n} VIPs, flip {}/{rounds}", round + 1);
        last = flip(lab, &mut admin, &mut daemon, &mut phase, poll, format!("down #{}", round + 1), n, false, &without, &last, &mut down)?;
        last = flip(lab, &mut admin, &mut daemon, &mut phase, poll, format!("up #{}", round + 1), n, true, &all, &last, &mut up)?;
    }
    let stall_end_us = last.control.max_loop_stall_us;
    let mut times: Vec<f64> = admin.times.iter().map(Duration::as_secs_f64).collect();
    let slowest_stats = Duration::from_secs_f64(times.iter().copied().fold(0.0, f64::max));
    let median_stats = Duration::from_secs_f64(median(&mut times));

    // SIGTERM to exit.
    let pid = Pid::from_raw(daemon.pid() as i32);
    let signalled = Instant::now();
    kill(pid, Signal::SIGTERM).context("sending SIGTERM to fulcrum")?;
    let (sigterm, exit) = loop {
        if let Some(status) = daemon.try_wait()? {
            break (signalled.elapsed(), status.to_string());
        }
        if signalled.elapsed() > EXIT_LIMIT {
            let status = daemon.stop(Duration::ZERO)?;
            break (signalled.elapsed(), format!("still running after {EXIT_LIMIT:?}, killed ({status})"));
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    Ok(NResult {
        n,
        start,
        first_answer,
        start_apply: ready.control.last_apply.clone(),
        stall_after_start_us: ready.control.max_loop_stall_us,
        down,
        up,
        stall_end_us,
        slowest_stats,
        median_stats,
        sigterm,
        exit,
    })
}

/// Sets real1's health and waits for every table to hold `want`.
#[allow(clippy::too_many_arguments)]
fn flip(
    lab: &Lab,
    admin: &mut Admin,
    daemon: &mut Proc,
    phase: &mut Phase,
    poll: Duration,
    label: String,
    n: usize,
    healthy: bool,
    want: &[Ipv4Addr],
    before: &StatsReport,
    out: &mut Vec<Flip>,
) -> Result<StatsReport> {
    // Settle (the check of the previous flip may still be in flight), then
    // flip at a random phase of the check interval.
    std::thread::sleep(Duration::from_millis(200 + phase.next_ms(CHECK_INTERVAL_MS)));
    let previous = before.control.max_loop_stall_us;
    let before = admin.get()?;
    let settle_stall = (before.control.max_loop_stall_us > previous).then_some((previous, before.control.max_loop_stall_us));
    let polls_before = admin.times.len();
    let flipped = Instant::now();
    lab.set_backend_health(FLIPPED, healthy)?;
    let mut prev_poll = flipped;
    loop {
        interrupt::check()?;
        if let Some(status) = daemon.try_wait()? {
            bail!("fulcrum exited ({status}) after real1 went {}", if healthy { "up" } else { "down" });
        }
        let poll_start = Instant::now();
        let s = admin.get()?;
        let seen = Instant::now();
        if tables_hold(&s, n, want) {
            let apply = s.control.last_apply.clone().context("tables changed but no last_apply")?;
            out.push(Flip {
                wall: seen - flipped,
                resolution: seen - prev_poll,
                apply,
                applies: s.control.applies.saturating_sub(before.control.applies),
                label,
                settle_stall,
                stall: (s.control.max_loop_stall_us > before.control.max_loop_stall_us)
                    .then_some((before.control.max_loop_stall_us, s.control.max_loop_stall_us)),
                slowest_poll: admin.times[polls_before..].iter().max().copied().unwrap_or_default(),
            });
            return Ok(s);
        }
        if flipped.elapsed() > FLIP_LIMIT {
            bail!(
                "real1 {}: tables not updated after {FLIP_LIMIT:?}; real1 health {:?}, tables {:?}, control {:?}",
                if healthy { "up" } else { "down" },
                s.backend(&real(FLIPPED).to_string()).map(|b| (&b.health, &b.check, &b.excluded)),
                s.vips.iter().map(|v| v.backends_in_table).collect::<Vec<_>>(),
                s.control
            );
        }
        prev_poll = poll_start;
        std::thread::sleep(poll);
    }
}

fn flips_of(r: &NResult, down: bool) -> &[Flip] {
    if down {
        &r.down
    } else {
        &r.up
    }
}

/// The 1-minute load average: the machine is shared, and a busy neighbour
/// shows up in stalls.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg").ok().and_then(|s| s.split_whitespace().next().map(str::to_string)).unwrap_or_default()
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1e3;
    if ms >= 100.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{ms:.1} ms")
    }
}

fn us_ms(us: u64) -> String {
    ms(Duration::from_micros(us))
}

/// "median (max)" of `f` over the flips.
fn med_max(flips: &[Flip], f: impl Fn(&Flip) -> f64, fmt: impl Fn(f64) -> String) -> String {
    let mut v: Vec<f64> = flips.iter().map(f).collect();
    if v.is_empty() {
        return "—".into();
    }
    let max = v.iter().copied().fold(f64::MIN, f64::max);
    format!("{} ({})", fmt(median(&mut v)), fmt(max))
}

fn report(results: &[NResult], rounds: usize, poll: Duration, fulcrum: &Path, machine: &str) -> String {
    let fms = |us: f64| us_ms(us as u64);
    let counts = |f: &Flip| format!("{}/{}", f.apply.vips_written, f.apply.tables_built);
    let mut rows: Vec<(String, Vec<String>, &str, &str)> = Vec::new();
    let mut row = |name: &str, cell: &dyn Fn(&NResult) -> String, target: &'static str, before: &'static str| {
        rows.push((name.to_string(), results.iter().map(cell).collect(), target, before));
    };
    row("start → every table applied with 3 backends (bench)", &|r| ms(r.start), "< 1 s", BEFORE_START);
    row("start → first `/stats` answer (bench)", &|r| ms(r.first_answer), "", "");
    row(
        "start apply: latency / wall / CPU; vips_written/tables_built (daemon)",
        &|r| {
            r.start_apply.as_ref().map_or("—".into(), |a| {
                format!("{} / {} / {}; {}/{}", us_ms(a.latency_us), us_ms(a.wall_us), us_ms(a.cpu_us), a.vips_written, a.tables_built)
            })
        },
        "",
        "",
    );
    for (dir, pick) in [("DOWN", true), ("UP", false)] {
        let target = if pick { "< 50 ms" } else { "" };
        let before = if pick { BEFORE_HEALTH } else { "" };
        row(
            &format!("{dir}: verdict → last VIP flipped, `latency_us` (daemon)"),
            &|r| med_max(flips_of(r, pick), |f| f.apply.latency_us as f64, fms),
            target,
            before,
        );
        row(
            &format!("{dir}: /health flipped → every table updated (bench wall, incl. check)"),
            &|r| med_max(flips_of(r, pick), |f| f.wall.as_secs_f64() * 1e6, fms),
            "",
            "",
        );
        row(&format!("{dir}: rebuild `wall_us` (daemon)"), &|r| med_max(flips_of(r, pick), |f| f.apply.wall_us as f64, fms), "", "");
        row(&format!("{dir}: rebuild `cpu_us` (daemon)"), &|r| med_max(flips_of(r, pick), |f| f.apply.cpu_us as f64, fms), "", "");
        row(
            &format!("{dir}: vips_written/tables_built; applies per flip"),
            &|r| {
                let f = flips_of(r, pick);
                let mut c: Vec<String> = f.iter().map(&counts).collect();
                c.dedup();
                let mut a: Vec<u64> = f.iter().map(|f| f.applies).collect();
                a.sort_unstable();
                a.dedup();
                format!("{}; {}", c.join(","), a.iter().map(u64::to_string).collect::<Vec<_>>().join(","))
            },
            "",
            "",
        );
    }
    row("max control-loop stall, through start (daemon)", &|r| us_ms(r.stall_after_start_us), "", "");
    row("max control-loop stall, through all flips (daemon)", &|r| us_ms(r.stall_end_us), "≤ 10 ms", "");
    row("`/stats` round trip after start: median (max) (bench)", &|r| format!("{} ({})", ms(r.median_stats), ms(r.slowest_stats)), "", BEFORE_STATS);
    row("SIGTERM → exit", &|r| format!("{} ({})", ms(r.sigterm), r.exit), "", BEFORE_SIGTERM);

    let resolution: Vec<Duration> = results.iter().flat_map(|r| r.down.iter().chain(&r.up)).map(|f| f.resolution).collect();
    let worst_resolution = resolution.iter().max().copied().unwrap_or_default();
    let mut out = format!(
        "\n## control-plane — {}\n\n`cargo xtask bench control-plane` ({} rounds of real1 down then up per VIP count; \
         VIPs on {VIP4} ports 10000+, maglev {TABLE_SIZE} slots, one pool of 3 backends, HTTP check every \
         {CHECK_INTERVAL_MS} ms, timeout {CHECK_TIMEOUT_MS} ms, rise 1, fall 1; `{}`; {machine})\n\n\
         Daemon figures come from its `/stats` `control` section; bench figures are wall times \
         seen by polling `/stats` every {} ms over TCP inside the lb namespace (each seen at most \
         {} late in this run). Flips land at a random phase of the check interval, so the bench's \
         flip-to-tables wall time is up to one interval plus the check plus the apply. Flip rows: \
         median (max).\n\n",
        now(),
        rounds,
        fulcrum.display(),
        poll.as_millis(),
        ms(worst_resolution),
    );
    out += "| metric |";
    for r in results {
        out += &format!(" {} VIP{} |", r.n, if r.n == 1 { "" } else { "s" });
    }
    out += " target (64 VIPs) | before, 64 VIPs (old code, issue 9 author) |\n|---|";
    for _ in results {
        out += "---:|";
    }
    out += "---|---|\n";
    for (name, cells, target, before) in rows {
        out += &format!("| {name} | {} | {target} | {before} |\n", cells.join(" | "));
    }
    // When the longest stall grew, and the slowest /stats answer per flip.
    let mut notes = Vec::new();
    for r in results {
        let mut rises = Vec::new();
        let mut flips: Vec<&Flip> = r.down.iter().chain(&r.up).collect();
        flips.sort_by_key(|f| f.label.split('#').nth(1).and_then(|k| k.parse::<u32>().ok()).unwrap_or(0) * 2 + u32::from(f.label.starts_with("up")));
        for f in &flips {
            if let Some((a, b)) = f.settle_stall {
                rises.push(format!("before {} {}→{}", f.label, us_ms(a), us_ms(b)));
            }
            if let Some((a, b)) = f.stall {
                rises.push(format!("during {} {}→{} (slowest /stats then {})", f.label, us_ms(a), us_ms(b), ms(f.slowest_poll)));
            }
        }
        if !rises.is_empty() {
            notes.push(format!("{} VIPs: {}", r.n, rises.join("; ")));
        }
    }
    if !notes.is_empty() {
        out += &format!("\nWhere the longest loop stall grew after start: {}.\n", notes.join(". "));
    }
    out
}
