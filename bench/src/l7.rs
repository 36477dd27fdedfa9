//! `l7`: the L7 proxy (fulcrum-l7) against nginx and HAProxy from Debian,
//! each with one worker, in one run, interleaved, medians of rounds.
//!
//! Setup, all on 127.0.0.1 with ports picked free at start, configs in a
//! temporary directory, every process started by us and killed by pid:
//!
//! - backend: nginx (one process, `master_process off`) answering every
//!   path with `return 200 "hello\n"` (6-byte body), access log off;
//! - fulcrum: this binary re-executed as `fulcrum-bench l7-proxy` (one
//!   worker, io_uring unless `--polling`), one route `/` to the backend;
//! - nginx: one process, `proxy_http_version 1.1`, `Connection ""`,
//!   upstream `keepalive 64`, X-Forwarded-For/-Proto like fulcrum;
//! - HAProxy: `nbthread 1`, `http-reuse always`, `option forwardfor`.
//!
//! Pinning (2 CPUs): every proxy runs on `--proxy-cpu` (taskset), the
//! backend, wrk and the constant-rate client on `--load-cpu`. So the proxy
//! under test owns one core, and the backend and load generator share the
//! other, identically for all three. A `direct` row (wrk to the backend)
//! shows that ceiling.
//!
//! Measurements:
//! 1. closed loop: `wrk -t1 -c<connections> -d<secs>` with keep-alive,
//!    per round A B C (D) in turn; req/s and wrk's latency percentiles
//!    (p50/p99/p99.9 from a Lua `done` hook); medians over rounds. Beside
//!    them the proxy's CPU time per request: utime+stime (`/proc/PID/stat`)
//!    of the proxy process and its child processes (nginx's workers under
//!    its master) over the wrk run, divided by the requests wrk counted.
//!    On a shared machine req/s moves with the neighbours' load; CPU per
//!    request much less, so it is the figure to compare between runs;
//! 2. constant rate: this crate's hdrhistogram client at a fixed rate
//!    (default 60% of the slowest proxy's median), latency counted from
//!    each request's scheduled send time when the connection was still
//!    busy with the previous one (coordinated omission corrected, as wrk2);
//! 3. memory: freshly started proxies, 10,000 idle keep-alive client
//!    connections (one request each, then idle), RSS delta / connections;
//!    again after a burst of 8 requests on each connection;
//! 4. two workers: the closed loop again with two workers per proxy
//!    (fulcrum `workers = 2`, nginx `worker_processes 2` under its master,
//!    HAProxy `nbthread 2`), each proxy allowed both CPUs; backend and wrk
//!    stay on the load CPU, so one worker shares it with them, alike for
//!    all three.
use std::{
    cell::RefCell,
    fmt::Write as _,
    io::{Read, Write},
    net::{SocketAddr, TcpListener as StdListener, TcpStream as StdStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    rc::Rc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use nix::{
    sys::signal::{kill, Signal},
    unistd::Pid,
};

/// Options of `fulcrum-bench l7`.
pub struct Opts {
    pub rounds: usize,
    pub secs: u64,
    pub connections: u32,
    pub proxy_cpu: usize,
    pub load_cpu: usize,
    pub idle: usize,
    pub rate: Option<u64>,
    pub rate_rounds: usize,
    pub polling: bool,
    pub two_workers: bool,
    pub record: Option<PathBuf>,
    /// Only the memory row (see [`memory_row`]).
    pub memory_only: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Fulcrum,
    Nginx,
    Haproxy,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Fulcrum => "fulcrum-l7",
            Kind::Nginx => "nginx",
            Kind::Haproxy => "HAProxy",
        }
    }
}

const KINDS: [Kind; 3] = [Kind::Fulcrum, Kind::Nginx, Kind::Haproxy];

/// A child process killed (SIGTERM, then SIGKILL) when dropped.
struct Proc {
    name: String,
    child: Child,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let pid = Pid::from_raw(self.child.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        eprintln!("l7: {} (pid {}) ignored SIGTERM; killing", self.name, pid);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<u16> {
    Ok(StdListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn wait_listening(addr: SocketAddr, p: &mut Proc) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if StdStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if let Ok(Some(st)) = p.child.try_wait() {
            bail!("{} exited before listening on {addr}: {st}", p.name);
        }
        if Instant::now() > deadline {
            bail!("{} does not listen on {addr} after 5 s", p.name);
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Starts `prog` with `args` on the CPUs `cpus` (a taskset list: `0`, `0,1`).
fn spawn(name: &str, cpus: &str, prog: &Path, args: &[String], log: &Path) -> Result<Proc> {
    let out = std::fs::File::create(log)?;
    let child = Command::new("taskset")
        .arg("-c")
        .arg(cpus)
        .arg(prog)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .with_context(|| format!("starting {name} ({})", prog.display()))?;
    Ok(Proc { name: name.to_string(), child })
}

fn which(prog: &str) -> Result<PathBuf> {
    for dir in ["/usr/sbin", "/usr/bin", "/sbin", "/bin", "/usr/local/bin", "/usr/local/sbin"] {
        let p = Path::new(dir).join(prog);
        if p.exists() {
            return Ok(p);
        }
    }
    bail!("{prog} not found; install it: apt-get install -y nginx haproxy wrk")
}

struct Setup {
    dir: PathBuf,
    backend: SocketAddr,
    addrs: [SocketAddr; 3],
    polling: bool,
    /// The proxies' CPUs (taskset list) and worker count.
    proxy_cpus: String,
    workers: usize,
}

impl Setup {
    fn addr(&self, k: Kind) -> SocketAddr {
        self.addrs[KINDS.iter().position(|&x| x == k).unwrap()]
    }

    /// With one worker nginx runs as that worker alone (`master_process
    /// off`); more need the master to start them.
    fn nginx_conf(&self, name: &str, workers: usize, body: &str) -> Result<PathBuf> {
        let d = self.dir.join(name);
        std::fs::create_dir_all(&d)?;
        let conf = format!(
            "worker_processes {workers};\nmaster_process {};\ndaemon off;\nworker_rlimit_nofile 40000;\n\
             error_log {d}/error.log warn;\npid {d}/nginx.pid;\n\
             events {{ worker_connections 30000; multi_accept on; }}\n\
             http {{\n  access_log off;\n  keepalive_requests 100000000;\n  keepalive_timeout 60s;\n\
             client_body_temp_path {d}/cb;\n  proxy_temp_path {d}/pt;\n  fastcgi_temp_path {d}/ft;\n\
             uwsgi_temp_path {d}/ut;\n  scgi_temp_path {d}/st;\n{body}}}\n",
            if workers > 1 { "on" } else { "off" },
            d = d.display()
        );
        let p = d.join("nginx.conf");
        std::fs::write(&p, conf)?;
        Ok(p)
    }

    fn start_backend(&self, cpu: usize) -> Result<Proc> {
        let body = format!(
            "  server {{\n    listen {} backlog=4096;\n    location / {{ default_type text/plain; return 200 \"hello\\n\"; }}\n  }}\n",
            self.backend
        );
        let conf = self.nginx_conf("backend", 1, &body)?;
        let mut p = spawn(
            "backend nginx",
            &cpu.to_string(),
            &which("nginx")?,
            &["-p".into(), self.dir.join("backend").display().to_string(), "-c".into(), conf.display().to_string()],
            &self.dir.join("backend.log"),
        )?;
        wait_listening(self.backend, &mut p)?;
        Ok(p)
    }

    fn start(&self, k: Kind) -> Result<Proc> {
        let addr = self.addr(k);
        let log = self.dir.join(format!("{}.log", k.name()));
        let mut p = match k {
            Kind::Fulcrum => {
                let mut args = vec![
                    "l7-proxy".to_string(),
                    "--listen".into(),
                    addr.to_string(),
                    "--backend".into(),
                    self.backend.to_string(),
                ];
                if self.polling {
                    args.push("--polling".into());
                }
                args.extend(["--workers".into(), self.workers.to_string()]);
                spawn("fulcrum-l7", &self.proxy_cpus, &std::env::current_exe()?, &args, &log)?
            }
            Kind::Nginx => {
                let body = format!(
                    "  upstream be {{\n    server {};\n    keepalive 64;\n    keepalive_requests 100000000;\n  }}\n\
                     \x20 server {{\n    listen {} backlog=4096;\n    location / {{\n      proxy_pass http://be;\n\
                     \x20     proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n\
                     \x20     proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n\
                     \x20     proxy_set_header X-Forwarded-Proto $scheme;\n    }}\n  }}\n",
                    self.backend, addr
                );
                let conf = self.nginx_conf("proxy-nginx", self.workers, &body)?;
                spawn(
                    "nginx",
                    &self.proxy_cpus,
                    &which("nginx")?,
                    &["-p".into(), self.dir.join("proxy-nginx").display().to_string(), "-c".into(), conf.display().to_string()],
                    &log,
                )?
            }
            Kind::Haproxy => {
                let conf = format!(
                    "global\n  nbthread {}\n  maxconn 9950\n  ulimit-n 20000\n\n\
                     defaults\n  mode http\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n\
                     \x20 timeout http-keep-alive 60s\n  timeout http-request 10s\n  option http-keep-alive\n\
                     \x20 option forwardfor\n  http-reuse always\n\n\
                     frontend fe\n  bind {addr}\n  maxconn 9950\n  default_backend be\n\n\
                     backend be\n  server s1 {}\n",
                    self.workers,
                    self.backend
                );
                let p = self.dir.join("haproxy.cfg");
                std::fs::write(&p, conf)?;
                spawn("HAProxy", &self.proxy_cpus, &which("haproxy")?, &["-db".into(), "-f".into(), p.display().to_string()], &log)?
            }
        };
        wait_listening(addr, &mut p)?;
        Ok(p)
    }
}

/// One closed-loop wrk run.
#[derive(Default, Clone, Copy)]
struct WrkRun {
    rps: f64,
    p50: f64,
    p99: f64,
    p999: f64,
    errors: u64,
    /// Requests wrk completed in the run.
    requests: u64,
    /// The proxy's CPU time (user + system) per completed request, µs;
    /// `None` for the direct row (no proxy measured).
    cpu_us: Option<f64>,
}

/// Clock ticks per second of `/proc/PID/stat` times (`USER_HZ`).
fn clock_ticks() -> f64 {
    use nix::unistd::{sysconf, SysconfVar};
    // Linux's USER_HZ is 100 wherever sysconf would fail.
    sysconf(SysconfVar::CLK_TCK).ok().flatten().map_or(100.0, |t| t as f64)
}

/// utime + stime of one process (all its threads), in clock ticks
/// (proc(5), fields 14 and 15 of `/proc/PID/stat`).
fn stat_ticks(pid: u32) -> Option<(u64, u32)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: the
    // fields after it start behind the last ')'.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): ppid is field 4, utime 14, stime 15.
    let ppid = f.get(1)?.parse().ok()?;
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some((ticks, ppid))
}

/// CPU seconds (user + system) used so far by process `pid` and its
/// direct children (nginx's master and its workers; fulcrum's and
/// HAProxy's workers are threads of the one process).
fn cpu_secs(pid: u32) -> f64 {
    let mut ticks = stat_ticks(pid).map_or(0, |(t, _)| t);
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(child) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
            if let Some((t, ppid)) = stat_ticks(child) {
                if ppid == pid {
                    ticks += t;
                }
            }
        }
    }
    ticks as f64 / clock_ticks()
}

/// Time the threads of process `pid` spent runnable but waiting for a
/// CPU, ms (second field of `/proc/PID/task/TID/schedstat`). Beside a
/// constant-rate run it shows how much of the tail is the proxy waiting
/// behind other processes on its CPU rather than its own work.
fn run_delay_ms(pid: u32) -> f64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0.0 };
    let ns: u64 = tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()))
        .sum();
    ns as f64 / 1e6
}

const WRK_LUA: &str = r#"
done = function(summary, latency, requests)
  io.write(string.format("BENCH_LAT %d %d %d\n", latency:percentile(50), latency:percentile(99), latency:percentile(99.9)))
  local e = summary.errors
  io.write(string.format("BENCH_ERR %d\n", e.connect + e.read + e.write + e.status + e.timeout))
end
"#;

/// One wrk run against `addr`; with `proxy` (a pid), that process's CPU
/// time per request over the run.
fn wrk(dir: &Path, cpu: usize, addr: SocketAddr, conns: u32, secs: u64, proxy: Option<u32>) -> Result<WrkRun> {
    let script = dir.join("report.lua");
    if !script.exists() {
        std::fs::write(&script, WRK_LUA)?;
    }
    let cpu_before = proxy.map(cpu_secs);
    let mut child = Command::new("taskset")
        .args(["-c", &cpu.to_string(), "wrk", "-t1"])
        .arg(format!("-c{conns}"))
        .arg(format!("-d{secs}s"))
        .args(["--timeout", "2s", "-s"])
        .arg(&script)
        .arg(format!("http://{addr}/"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting wrk (apt-get install -y wrk)")?;
    let deadline = Instant::now() + Duration::from_secs(secs + 15);
    loop {
        if child.try_wait()?.is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("wrk against {addr} did not finish in {} s", secs + 15);
        }
        thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output()?;
    let cpu_used = proxy.zip(cpu_before).map(|(pid, before)| cpu_secs(pid) - before);
    let text = String::from_utf8_lossy(&out.stdout);
    let mut r = WrkRun::default();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.first() {
            Some(&"Requests/sec:") => r.rps = f[1].parse()?,
            Some(&"BENCH_LAT") => {
                r.p50 = f[1].parse::<f64>()? / 1000.0;
                r.p99 = f[2].parse::<f64>()? / 1000.0;
                r.p999 = f[3].parse::<f64>()? / 1000.0;
            }
            Some(&"BENCH_ERR") => r.errors = f[1].parse()?,
            Some(&"Non-2xx") => r.errors += f.last().unwrap_or(&"0").parse::<u64>().unwrap_or(0),
            // "  1234567 requests in 5.00s, 123.45MB read"
            Some(n) if f.get(1) == Some(&"requests") && f.get(2) == Some(&"in") => r.requests = n.parse()?,
            _ => {}
        }
    }
    if r.rps == 0.0 {
        bail!("wrk against {addr}: no result\n{text}\n{}", String::from_utf8_lossy(&out.stderr));
    }
    if let Some(used) = cpu_used {
        if r.requests == 0 {
            bail!("wrk against {addr}: no request count\n{text}");
        }
        r.cpu_us = Some(used * 1e6 / r.requests as f64);
    }
    Ok(r)
}

/// Raises the soft (and, as root, the hard) open-file limit; children
/// inherit it.
fn raise_nofile(want: u64) -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if setrlimit(Resource::RLIMIT_NOFILE, want, want).is_ok() {
        return want;
    }
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap_or((1024, 1024));
    let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    hard
}

fn pin_this_thread(cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    if set.set(cpu).is_ok() {
        let _ = nix::sched::sched_setaffinity(Pid::from_raw(0), &set);
    }
}

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";

/// Length of a complete response at the start of `buf`, if there is one
/// (Content-Length framing only, which every server here uses).
fn response_len(buf: &[u8]) -> Result<Option<usize>> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..end])?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("unexpected response: {}", head.lines().next().unwrap_or(""));
    }
    let cl = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case("content-length").then(|| v.trim().parse::<usize>().ok())?
        })
        .context("response without Content-Length")?;
    let total = end + 4 + cl;
    Ok((buf.len() >= total).then_some(total))
}

/// Constant-rate latency (µs histogram) against `addr`: `conns`
/// connections, `rate` requests per second in total, for `secs`.
fn constant_rate(addr: SocketAddr, conns: u32, rate: u64, secs: u64, cpu: usize) -> Result<(Histogram<u64>, u64, u64)> {
    thread::scope(|s| {
        s.spawn(move || {
            pin_this_thread(cpu);
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(constant_rate_async(addr, conns, rate, secs))
        })
        .join()
        .map_err(|_| anyhow::anyhow!("constant-rate client panicked"))?
    })
}

async fn constant_rate_async(addr: SocketAddr, conns: u32, rate: u64, secs: u64) -> Result<(Histogram<u64>, u64, u64)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let hist = Rc::new(RefCell::new(Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?));
    let mut streams = Vec::new();
    for _ in 0..conns {
        let s = tokio::net::TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        streams.push(s);
    }
    let interval = Duration::from_nanos(1_000_000_000 * u64::from(conns) / rate);
    let start = Instant::now() + Duration::from_millis(100);
    let end = start + Duration::from_secs(secs);
    let local = tokio::task::LocalSet::new();
    let mut tasks = Vec::new();
    for (i, mut s) in streams.into_iter().enumerate() {
        let hist = hist.clone();
        let offset = interval * i as u32 / conns;
        tasks.push(local.spawn_local(async move {
            let mut buf = vec![0u8; 16 * 1024];
            let mut prev_done = start;
            let (mut sent_n, mut errs) = (0u64, 0u64);
            for k in 0u32.. {
                let intended = start + offset + interval * k;
                if intended >= end {
                    break;
                }
                if Instant::now() < intended {
                    tokio::time::sleep_until(intended.into()).await;
                }
                let sent = Instant::now();
                // Late because the previous exchange was still running: the
                // server's delay, counted from the schedule. Late only
                // because of our timer: counted from the actual send.
                let origin = if prev_done > intended { intended } else { sent };
                if s.write_all(REQUEST).await.is_err() {
                    errs += 1;
                    break;
                }
                let mut have = 0;
                let ok = loop {
                    match s.read(&mut buf[have..]).await {
                        Ok(0) | Err(_) => break false,
                        Ok(n) => have += n,
                    }
                    match response_len(&buf[..have]) {
                        Ok(Some(_)) => break true,
                        Ok(None) if have < buf.len() => {}
                        _ => break false,
                    }
                };
                let done = Instant::now();
                if !ok {
                    errs += 1;
                    break;
                }
                sent_n += 1;
                let _ = hist.borrow_mut().record((done - origin).as_micros().max(1) as u64);
                prev_done = done;
            }
            (sent_n, errs)
        }));
    }
    let (n, e) = local
        .run_until(async move {
            let (mut n, mut e) = (0, 0);
            for t in tasks {
                let (a, b) = t.await.unwrap_or((0, 1));
                n += a;
                e += b;
            }
            (n, e)
        })
        .await;
    let h = hist.borrow().clone();
    Ok((h, n, e))
}

/// One constant-rate run's figures, ms.
#[derive(Clone, Copy)]
struct RateRun {
    p50: f64,
    p99: f64,
    p999: f64,
    max: f64,
    requests: u64,
    errors: u64,
    /// The proxy's run-queue wait over the run (see [`run_delay_ms`]).
    cpu_wait_ms: f64,
}

impl RateRun {
    fn from(h: &Histogram<u64>, requests: u64, errors: u64) -> RateRun {
        let q = |x: f64| h.value_at_quantile(x) as f64 / 1000.0;
        RateRun {
            p50: q(0.5),
            p99: q(0.99),
            p999: q(0.999),
            max: h.max() as f64 / 1000.0,
            requests,
            errors,
            cpu_wait_ms: 0.0,
        }
    }
}

/// `fulcrum-bench l7-rate`: one constant-rate run against `addr` (any
/// proxy), for interleaving by hand; one line of µs figures.
pub fn rate_once(addr: SocketAddr, rate: u64, secs: u64, conns: u32, cpu: usize) -> Result<()> {
    let (h, n, e) = constant_rate(addr, conns, rate, secs, cpu)?;
    println!(
        "p50_us={} p99_us={} p999_us={} max_us={} requests={n} errors={e}",
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999),
        h.max()
    );
    Ok(())
}

fn rss_kib(pid: u32) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:").and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok()))
        .context("no VmRSS")
}

/// One request on a blocking connection, leaving it open.
fn one_request(s: &mut StdStream, buf: &mut [u8]) -> Result<()> {
    s.write_all(REQUEST)?;
    let mut have = 0;
    loop {
        let n = s.read(&mut buf[have..])?;
        if n == 0 {
            bail!("closed by the proxy");
        }
        have += n;
        if response_len(&buf[..have])?.is_some() {
            return Ok(());
        }
    }
}

/// Requests each connection sends back to back in the memory row's
/// second measurement (a page load, a burst of API calls) before it
/// idles: fulcrum then waits for the next request with a receive in
/// flight (a "hot" connection, docs/l7.md), and parks it only after
/// taking that receive back.
const BURST: usize = 8;

/// RSS growth in bytes per idle keep-alive connection, each having sent
/// `requests` requests back to back.
fn idle_memory(p: &Proc, addr: SocketAddr, n: usize, requests: usize) -> Result<(f64, u64, u64)> {
    let mut buf = vec![0u8; 16 * 1024];
    // Warm: a few connections and requests so first-use allocations are in
    // the baseline.
    for _ in 0..10 {
        let mut s = StdStream::connect(addr)?;
        one_request(&mut s, &mut buf)?;
    }
    thread::sleep(Duration::from_millis(300));
    let before = rss_kib(p.pid())?;
    let t0 = Instant::now();
    let mut held = Vec::with_capacity(n);
    for i in 0..n {
        let mut s = StdStream::connect(addr).with_context(|| format!("connection {i}"))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        for _ in 0..requests {
            one_request(&mut s, &mut buf).with_context(|| format!("request on connection {i}"))?;
        }
        held.push(s);
    }
    // Well within every idle timeout (fulcrum's header read timeout 10 s).
    thread::sleep(Duration::from_millis(500));
    let after = rss_kib(p.pid())?;
    let elapsed = t0.elapsed();
    if elapsed > Duration::from_secs(8 * requests as u64) {
        eprintln!("l7: opening {n} connections took {elapsed:?}; some may have timed out");
    }
    drop(held);
    Ok(((after.saturating_sub(before)) as f64 * 1024.0 / n as f64, before, after))
}

/// The bench's scratch directory and its proxies' addresses (three free
/// loopback ports and the backend's), after checking that the descriptor
/// limit allows `o.idle` idle connections.
fn prepare(o: &Opts) -> Result<(std::path::PathBuf, Setup)> {
    let nofile = raise_nofile(65536);
    if (nofile as usize) < o.idle + 1000 {
        bail!("RLIMIT_NOFILE is {nofile}; {} idle connections need more", o.idle);
    }
    let dir = std::env::temp_dir().join(format!("fulcrum-bench-l7-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let setup = Setup {
        dir: dir.clone(),
        backend: SocketAddr::from(([127, 0, 0, 1], free_port()?)),
        addrs: [
            SocketAddr::from(([127, 0, 0, 1], free_port()?)),
            SocketAddr::from(([127, 0, 0, 1], free_port()?)),
            SocketAddr::from(([127, 0, 0, 1], free_port()?)),
        ],
        polling: o.polling,
        proxy_cpus: o.proxy_cpu.to_string(),
        workers: 1,
    };
    Ok((dir, setup))
}

/// Memory per idle connection of each proxy in `KINDS` order, one fresh
/// process per proxy and measurement: after one request per connection,
/// and after a burst of [`BURST`]; each (bytes per connection, RSS before
/// KiB, after KiB).
type IdleMemory = [(f64, u64, u64); 2];

fn idle_memories(setup: &Setup, idle: usize) -> Result<Vec<IdleMemory>> {
    let mut mem = Vec::new();
    for &k in &KINDS {
        let mut m = [(0.0, 0, 0); 2];
        for (slot, requests) in m.iter_mut().zip([1, BURST]) {
            let p = setup.start(k)?;
            *slot = idle_memory(&p, setup.addr(k), idle, requests)
                .with_context(|| format!("idle connections to {} ({requests} requests each)", k.name()))?;
            eprintln!("l7: idle memory {} after {requests} request(s): {:.0} B/conn ({} -> {} KiB)", k.name(), slot.0, slot.1, slot.2);
        }
        mem.push(m);
    }
    Ok(mem)
}

/// The memory table of [`idle_memories`]' results, and the ratios to HAProxy's.
fn memory_table(r: &mut String, idle: usize, mem: &[IdleMemory]) -> Result<()> {
    writeln!(
        r,
        "| {idle} idle keep-alive client connections (fresh process) | RSS before KiB | after KiB | bytes/conn | \
         after a burst of {BURST} requests each: bytes/conn |"
    )?;
    writeln!(r, "|---|---:|---:|---:|---:|")?;
    for (i, [(per, b, a), (burst, _, _)]) in mem.iter().enumerate() {
        writeln!(r, "| {} | {b} | {a} | {per:.0} | {burst:.0} |", KINDS[i].name())?;
    }
    writeln!(
        r,
        "\nfulcrum/HAProxy memory per idle connection {:.2}x (target <= 1.0); after a burst {:.2}x.",
        mem[0][0].0 / mem[2][0].0,
        mem[0][1].0 / mem[2][1].0
    )?;
    Ok(())
}

/// `l7 --memory-only`: step 3 of [`run`] alone (memory per idle
/// connection, one fresh process per proxy), with its table.
fn memory_row(o: &Opts) -> Result<()> {
    let (dir, setup) = prepare(o)?;
    let backend = setup.start_backend(o.load_cpu)?;
    let mem = idle_memories(&setup, o.idle)?;
    drop(backend);
    let mut r = String::new();
    writeln!(r, "\n## l7 memory — {}\n", crate::now())?;
    writeln!(
        r,
        "`fulcrum-bench l7 --memory-only{}` (the memory row of `cargo xtask bench l7` alone: per proxy a fresh process \
         pinned to CPU {}, backend (nginx `return 200`) on CPU {}; fulcrum driver {}; {}; {})\n",
        if o.polling { " --polling" } else { "" },
        o.proxy_cpu,
        o.load_cpu,
        if o.polling { "polling" } else { "io_uring" },
        versions(),
        crate::machine()
    )?;
    memory_table(&mut r, o.idle, &mem)?;
    let _ = std::fs::remove_dir_all(&dir);
    crate::publish(&r, o.record.as_deref())
}

fn med(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    crate::median(&mut v)
}

pub fn run(o: Opts) -> Result<()> {
    if o.memory_only {
        return memory_row(&o);
    }
    let (dir, setup) = prepare(&o)?;
    let versions = versions();
    let backend = setup.start_backend(o.load_cpu)?;

    // 1. Closed loop, interleaved.
    let mut procs: Vec<Proc> = KINDS.iter().map(|&k| setup.start(k)).collect::<Result<_>>()?;
    let pids: Vec<u32> = procs.iter().map(Proc::pid).collect();
    let (runs, summary) = closed_loop(&setup, &o, "", &pids)?;
    // 2. Constant rate.
    let slowest = summary[..KINDS.len()].iter().map(|r| r.rps).fold(f64::INFINITY, f64::min);
    let rate = o.rate.unwrap_or(((slowest * 0.6) / 1000.0).floor().max(1.0) as u64 * 1000);
    // Interleaved rounds, the order rotated each round, so no proxy always
    // runs first (or right after the same neighbour).
    let mut cr: Vec<Vec<RateRun>> = vec![Vec::new(); KINDS.len()];
    for round in 0..o.rate_rounds.max(1) {
        for j in 0..KINDS.len() {
            let i = (j + round) % KINDS.len();
            let k = KINDS[i];
            let waited = run_delay_ms(pids[i]);
            let (h, n, e) = constant_rate(setup.addr(k), o.connections, rate, o.secs, o.load_cpu)?;
            let mut r = RateRun::from(&h, n, e);
            r.cpu_wait_ms = run_delay_ms(pids[i]) - waited;
            eprintln!(
                "l7: constant rate {rate}/s round {} {}: p50 {:.0} µs p99 {:.0} µs p99.9 {:.0} µs max {:.0} µs, waited for its CPU {:.0} ms",
                round + 1,
                k.name(),
                r.p50 * 1e3,
                r.p99 * 1e3,
                r.p999 * 1e3,
                r.max * 1e3,
                r.cpu_wait_ms
            );
            cr[i].push(r);
        }
    }
    drop(procs.drain(..));

    // 3. Memory per idle connection, one fresh proxy at a time.
    let mem = if o.idle > 0 { idle_memories(&setup, o.idle)? } else { Vec::new() };
    // 4. Two workers per proxy, on both CPUs.
    let two = if o.two_workers {
        let setup2 = Setup { proxy_cpus: format!("{},{}", o.proxy_cpu, o.load_cpu), workers: 2, ..setup };
        let procs: Vec<Proc> = KINDS.iter().map(|&k| setup2.start(k)).collect::<Result<_>>()?;
        let pids: Vec<u32> = procs.iter().map(Proc::pid).collect();
        let (runs2, summary2) = closed_loop(&setup2, &o, "two workers ", &pids)?;
        drop(procs);
        Some((runs2, summary2))
    } else {
        None
    };
    drop(backend);

    // Report.
    let mut r = String::new();
    writeln!(r, "\n## l7 — {}\n", crate::now())?;
    writeln!(
        r,
        "`cargo xtask bench l7{}` ({} interleaved rounds of {} s, medians; wrk -t1 -c{} keep-alive, 6-byte body; \
         one proxy worker pinned to CPU {} with taskset, backend (nginx `return 200`) and load generator on CPU {}; \
         fulcrum driver {}; {}; {})\n",
        if o.polling { " --polling" } else { "" },
        o.rounds,
        o.secs,
        o.connections,
        o.proxy_cpu,
        o.load_cpu,
        if o.polling { "polling" } else { "io_uring" },
        versions,
        crate::machine()
    )?;
    closed_loop_table(&mut r, "closed loop (wrk)", &summary, &runs, "", true)?;
    if let Some((runs2, summary2)) = &two {
        let title = format!("closed loop, two workers on CPUs {},{}", o.proxy_cpu, o.load_cpu);
        closed_loop_table(&mut r, &title, summary2, runs2, "Two workers: ", false)?;
    }
    writeln!(
        r,
        "| constant rate {rate} req/s, {} conns, CO-corrected (hdrhistogram), medians of {} interleaved rounds of {} s | p50 ms | p99 ms | p99.9 ms | max ms | waited for CPU ms | requests | errors |",
        o.connections,
        o.rate_rounds.max(1),
        o.secs
    )?;
    writeln!(r, "|---|---:|---:|---:|---:|---:|---:|---:|")?;
    for (i, runs) in cr.iter().enumerate() {
        let m = |f: fn(&RateRun) -> f64| med(&runs.iter().map(f).collect::<Vec<_>>());
        let (n, e) = runs.iter().fold((0, 0), |(n, e), r| (n + r.requests, e + r.errors));
        writeln!(
            r,
            "| {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.0} | {n} | {e} |",
            KINDS[i].name(),
            m(|r| r.p50),
            m(|r| r.p99),
            m(|r| r.p999),
            m(|r| r.max),
            m(|r| r.cpu_wait_ms)
        )?;
    }
    writeln!(r)?;
    for (i, runs) in cr.iter().enumerate() {
        let p99: Vec<String> = runs.iter().map(|r| format!("{:.2} ({:.0})", r.p99, r.cpu_wait_ms)).collect();
        writeln!(r, "Constant rate per round p99 ms (ms waited for the CPU), {}: {}", KINDS[i].name(), p99.join(" "))?;
    }
    if !mem.is_empty() {
        writeln!(r)?;
        memory_table(&mut r, o.idle, &mem)?;
    }
    let _ = std::fs::remove_dir_all(&dir);
    crate::publish(&r, o.record.as_deref())
}

/// The closed loop for `setup`'s proxies (already started): warm-up, then
/// `o.rounds` interleaved rounds of each proxy and the backend direct.
/// Returns every run per row and the rows' medians (errors summed).
/// `pids` are the proxies' processes, in `KINDS` order.
fn closed_loop(setup: &Setup, o: &Opts, label: &str, pids: &[u32]) -> Result<(Vec<Vec<WrkRun>>, Vec<WrkRun>)> {
    for &k in &KINDS {
        // Warm-up: upstream connections, allocator, caches.
        wrk(&setup.dir, o.load_cpu, setup.addr(k), o.connections, 1, None)?;
    }
    let mut runs: Vec<Vec<WrkRun>> = vec![Vec::new(); KINDS.len() + 1];
    for round in 0..o.rounds {
        for (i, &k) in KINDS.iter().enumerate() {
            let r = wrk(&setup.dir, o.load_cpu, setup.addr(k), o.connections, o.secs, Some(pids[i]))?;
            eprintln!(
                "l7: {label}round {} {}: {:.0} req/s p50 {:.3} ms p99 {:.3} ms, {:.2} µs CPU/request",
                round + 1,
                k.name(),
                r.rps,
                r.p50,
                r.p99,
                r.cpu_us.unwrap_or(f64::NAN)
            );
            runs[i].push(r);
        }
        let r = wrk(&setup.dir, o.load_cpu, setup.backend, o.connections, o.secs, None)?;
        eprintln!("l7: {label}round {} direct: {:.0} req/s", round + 1, r.rps);
        runs[KINDS.len()].push(r);
    }
    let summary = runs
        .iter()
        .map(|rs| {
            let f = |g: fn(&WrkRun) -> f64| med(&rs.iter().map(g).collect::<Vec<_>>());
            let cpu: Vec<f64> = rs.iter().filter_map(|r| r.cpu_us).collect();
            WrkRun {
                rps: f(|r| r.rps),
                p50: f(|r| r.p50),
                p99: f(|r| r.p99),
                p999: f(|r| r.p999),
                errors: rs.iter().map(|r| r.errors).sum(),
                requests: rs.iter().map(|r| r.requests).sum(),
                cpu_us: (!cpu.is_empty()).then(|| med(&cpu)),
            }
        })
        .collect();
    Ok((runs, summary))
}

/// `name r1 r2 ...; name ...`: every round's req/s per proxy.
fn per_round(runs: &[Vec<WrkRun>]) -> String {
    KINDS
        .iter()
        .enumerate()
        .map(|(i, k)| format!("{} {}", k.name(), runs[i].iter().map(|x| format!("{:.0}", x.rps)).collect::<Vec<_>>().join(" ")))
        .collect::<Vec<_>>()
        .join("; ")
}

/// `name c1 c2 ...; name ...`: every round's CPU µs per request per proxy.
fn per_round_cpu(runs: &[Vec<WrkRun>]) -> String {
    KINDS
        .iter()
        .enumerate()
        .map(|(i, k)| format!("{} {}", k.name(), runs[i].iter().map(|x| format!("{:.2}", x.cpu_us.unwrap_or(f64::NAN))).collect::<Vec<_>>().join(" ")))
        .collect::<Vec<_>>()
        .join("; ")
}

/// One closed-loop table: a row per proxy and the direct row, then the
/// ratio line and the per-round figures.
fn closed_loop_table(r: &mut String, title: &str, summary: &[WrkRun], runs: &[Vec<WrkRun>], ratio_label: &str, targets: bool) -> Result<()> {
    writeln!(r, "| {title} | req/s | CPU µs/request | p50 ms | p99 ms | p99.9 ms | errors |")?;
    writeln!(r, "|---|---:|---:|---:|---:|---:|---:|")?;
    for (i, s) in summary.iter().enumerate() {
        let name = KINDS.get(i).map_or("backend direct (no proxy)", |k| k.name());
        let cpu = s.cpu_us.map_or("—".to_string(), |c| format!("{c:.2}"));
        writeln!(r, "| {name} | {:.0} | {cpu} | {:.3} | {:.3} | {:.3} | {} |", s.rps, s.p50, s.p99, s.p999, s.errors)?;
    }
    let (f, n, h) = (&summary[0], &summary[1], &summary[2]);
    let cpu_ratio = |a: &WrkRun, b: &WrkRun| a.cpu_us.zip(b.cpu_us).map_or(f64::NAN, |(a, b)| a / b);
    let (t1, t2, t3) = if targets { (" (target >= 1.0)", " (target >= 1.2)", " (target <= 1.0)") } else { ("", "", "") };
    writeln!(
        r,
        "\n{ratio_label}fulcrum/HAProxy req/s {:.2}x{t1}, fulcrum/nginx {:.2}x{t2}; \
         p99 fulcrum/HAProxy {:.2}x, fulcrum/nginx {:.2}x{t3}; \
         CPU per request fulcrum/HAProxy {:.2}x, fulcrum/nginx {:.2}x (lower is better).\n",
        f.rps / h.rps,
        f.rps / n.rps,
        f.p99 / h.p99,
        f.p99 / n.p99,
        cpu_ratio(f, h),
        cpu_ratio(f, n)
    )?;
    writeln!(r, "Per round req/s: {}\n", per_round(runs))?;
    writeln!(r, "Per round CPU µs/request: {}\n", per_round_cpu(runs))?;
    Ok(())
}

fn versions() -> String {
    let out = |cmd: &str, arg: &str| {
        Command::new(cmd)
            .arg(arg)
            .output()
            .map(|o| {
                let t = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
                t.lines().next().unwrap_or("").trim().to_string()
            })
            .unwrap_or_default()
    };
    format!("{}, {}", out("nginx", "-v"), out("haproxy", "-v"))
}

/// `fulcrum-bench l7-proxy`: fulcrum-l7 with `workers` workers, one route
/// `/` to `backend`, until SIGTERM or SIGINT.
pub fn serve_proxy(listen: SocketAddr, backend: SocketAddr, polling: bool, max_idle: usize, workers: usize) -> Result<()> {
    use fulcrum_l7::*;
    use nix::sys::signal::{SigSet, SigmaskHow};
    raise_nofile(65536);
    // Block the signals before any thread starts, so every thread inherits
    // the mask and the main thread takes them with sigwait.
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None)?;
    let snap = shared(Snapshot {
        listeners: vec![ListenerRoutes {
            address: listen,
            routes: vec![Route { host: HostMatch::Any, path_prefix: "/".into(), pool: 0, preserve_host: false, proxy_pass_reverse: false }],
        }],
        pools: vec![Pool::new("bench", LbMethod::ByRequests, vec![Member::new(backend, 1)])],
    });
    let mut cfg = ProxyConfig::new(vec![listen]);
    cfg.workers = workers;
    cfg.max_idle_per_member = max_idle;
    cfg.backlog = 4096;
    if polling {
        cfg.driver = DriverChoice::Polling;
    }
    let proxy = Proxy::start(cfg, snap).context("starting fulcrum-l7")?;
    eprintln!("fulcrum-l7 on {:?}, driver {:?}", proxy.local_addrs(), proxy.driver());
    set.wait()?;
    proxy.shutdown();
    Ok(())
}
