//! VRRP failover end to end: two `fulcrum` daemons, on the lab's `lb`
//! (priority 150) and `lb2` (priority 100), share the IPv4 VIP through one
//! VRRPv3 instance; the client reaches the VIP on-link, so whichever node
//! answers ARP for it (the Master, which holds it on eth0) gets its
//! traffic. The two configurations differ only in the priority, so both
//! nodes build the same Maglev tables and a flow taken over by the other
//! node (a connection-table miss there) goes to the same backend.
//!
//! One test walks through the whole story, because each step starts from
//! the state the previous one left:
//!
//! 1. lb becomes Master, lb2 Backup; new connections reach all three
//!    reals through lb's XDP program only.
//! 2. (a) lb's daemon stops gracefully (SIGTERM: priority-0 advert): lb2
//!    takes over within Skew_Time + slack, and a keep-alive HTTP
//!    connection opened through lb keeps working, on the same backend,
//!    without one failed request.
//! 3. (b) lb's daemon starts again and preempts (higher priority).
//! 4. (c) lb's daemon is killed (SIGKILL: no more adverts): lb2 takes over
//!    within Master_Down_Interval + slack, and its gratuitous ARPs point
//!    the client at it. lb's XDP program outlives its daemon, so the
//!    keep-alive connection survives this too.
//!
//! Throughout, a prober on the client opens a new connection to the VIP
//! every 10 ms; the longest interval between two replies around each
//! failover is the gap the client saw, printed per step.
//!
//! Needs root and the workspace binaries (`cargo build --bins`), like
//! `e2e.rs`.
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use fulcrum_lab::{bin_path, host4, in_netns, Lab, LabOptions, Proc, REALS, VIP4, web_service_toml};

/// VRRP timing of the test config (VRRPv3, centiseconds on the wire).
const ADVERT: Duration = Duration::from_millis(100);
const PRIORITY_LB: u8 = 150;
const PRIORITY_LB2: u8 = 100;
/// What the takeover assertions allow beyond the RFC's times (issue 11,
/// item 8: "within Master_Down_Interval + 100 ms", "within Skew_Time +
/// 100 ms"), measured from the signal to the moment the Backup's kernel
/// owns the VIP. The slack covers: the signal's delivery and (graceful)
/// the daemon's way from SIGTERM to its priority-0 advert; the advert's
/// way through the bridge; the Backup's thread waking on its timer; the
/// new Master's report to its control loop and the datapath apply it waits
/// for before adding the VIP (`wait_for_forwarding`); the netlink add; and
/// the watcher's 1 ms polling. On two shared cores that is tens of ms.
const SLACK: Duration = Duration::from_millis(100);
/// How long the stats may take to show a state the node is already in:
/// they are polled by running `fulcrum stats` (a process per poll).
const STATS_SLACK: Duration = Duration::from_millis(500);
/// Health checks: short, so that a started daemon has its tables soon.
const INTERVAL: Duration = Duration::from_millis(500);
/// How often the prober opens a connection to the VIP.
const PROBE_EVERY: Duration = Duration::from_millis(10);
/// How often the keep-alive connection sends a request.
const FLOW_EVERY: Duration = Duration::from_millis(10);

/// RFC 9568 section 6.1: Skew_Time = ((256 - Priority) * Active_Adver_Interval) / 256,
/// in centiseconds (integer arithmetic, as on the wire).
fn skew_time(priority: u8) -> Duration {
    let cs = (256 - u64::from(priority)) * (ADVERT.as_millis() as u64 / 10) / 256;
    Duration::from_millis(cs * 10)
}

/// RFC 9568 section 6.1: Master_Down_Interval = 3 * Active_Adver_Interval + Skew_Time.
fn master_down_interval(priority: u8) -> Duration {
    ADVERT * 3 + skew_time(priority)
}

fn config_toml(priority: u8) -> String {
    format!(
        r#"{}
[[vrrp]]
name = "vi4"
vrid = 51
priority = {priority}
advert_interval = "{advert}ms"
version = 3
preempt = true
addresses = ["{VIP4}/32"]
"#,
        base_toml(),
        advert = ADVERT.as_millis(),
    )
}

/// [`config_toml`], with lb (only) tracking the pool: fewer than all
/// three reals up costs it 60, so 150 becomes 90, below lb2's 100.
fn tracking_toml(priority: u8) -> String {
    let mut toml = config_toml(priority);
    if priority == PRIORITY_LB {
        toml.push_str(&format!(
            "\n[[vrrp.track]]\nkind = \"pool\"\npool = \"web\"\nmin_up = {}\nweight = -{TRACK_WEIGHT}\n",
            REALS.len()
        ));
    }
    toml
}

/// [`config_toml`], with lb (only) tracking its XDP program (weight -60).
fn xdp_tracking_toml(priority: u8) -> String {
    let mut toml = config_toml(priority);
    if priority == PRIORITY_LB {
        toml.push_str(&format!("\n[[vrrp.track]]\nkind = \"xdp\"\nweight = -{TRACK_WEIGHT}\n"));
    }
    toml
}

/// The tracking test's weight: lb's 150 - 60 = 90 < lb2's 100.
const TRACK_WEIGHT: u8 = 60;

/// The configuration both nodes share, without VRRP.
fn base_toml() -> String {
    web_service_toml(INTERVAL, 2, 2)
}

/// One lb and its daemon.
struct Node {
    host: &'static str,
    priority: u8,
    config: PathBuf,
    log: PathBuf,
    daemon: Option<Proc>,
}

/// The lab with both lbs. Fields drop in order: the daemons stop
/// (detaching XDP) before the lab's namespaces go.
struct Pair {
    nodes: [Node; 2],
    fulcrum: PathBuf,
    lab: Lab,
}

impl Pair {
    fn up() -> Pair {
        Pair::up_with(config_toml)
    }

    /// The lab, with each lb's config from `config(priority)`.
    fn up_with(config_toml: fn(u8) -> String) -> Pair {
        static N: AtomicU32 = AtomicU32::new(0);
        let prefix = format!("ffo{}{}", std::process::id() % 10000, N.fetch_add(1, Ordering::SeqCst));
        let fulcrum = bin_path("fulcrum").unwrap();
        let lab = Lab::up_with(&prefix, LabOptions { second_lb: true, vip_on_link: true, backend: None }).unwrap();
        let node = |host: &'static str, priority: u8| {
            let config = lab.run_dir().join(format!("{host}.toml"));
            std::fs::write(&config, config_toml(priority)).unwrap();
            Node { host, priority, config, log: lab.run_dir().join(format!("{host}.log")), daemon: None }
        };
        let nodes = [node("lb", PRIORITY_LB), node("lb2", PRIORITY_LB2)];
        Pair { nodes, fulcrum, lab }
    }

    fn node(&mut self, host: &str) -> &mut Node {
        self.nodes.iter_mut().find(|n| n.host == host).expect("lab lb")
    }

    /// Starts the daemon of `host`, appending to its log.
    fn start(&mut self, host: &str) {
        let fulcrum = self.fulcrum.clone();
        let mut cmd = self.lab.command(host, &fulcrum);
        let node = self.nodes.iter().find(|n| n.host == host).unwrap();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&node.log).unwrap();
        cmd.arg("run").arg("--config").arg(&node.config);
        cmd.env("NO_COLOR", "1");
        cmd.stdin(std::process::Stdio::null()).stdout(log.try_clone().unwrap()).stderr(log);
        let proc = self.lab.spawn(cmd).unwrap();
        self.node(host).daemon = Some(proc);
    }

    fn stats(&self, host: &str) -> fulcrum_api::StatsReport {
        self.lab.fulcrum_stats_on(host, &self.fulcrum).unwrap()
    }

    /// The state and effective priority of `host`'s instance "vi4", or why
    /// there is none.
    fn vrrp_state(&self, host: &str) -> Result<(String, u8)> {
        let all = self.lab.vrrp_instances(host, &self.fulcrum)?;
        let vi4 = all.iter().find(|i| i.name == "vi4").with_context(|| format!("no vi4 in {all:?}"))?;
        Ok((vi4.state.clone(), vi4.priority))
    }

    /// Polls until `host`'s instance is in `state` with its configured
    /// priority (tracking may lower it for a moment at start, until the
    /// health checks report), at most `limit`; the time it took. Fetch
    /// failures count as "not yet"; the daemon exiting fails.
    fn wait_state(&mut self, host: &str, state: &str, limit: Duration) -> Result<Duration> {
        let configured = self.nodes.iter().find(|n| n.host == host).unwrap().priority;
        let start = Instant::now();
        loop {
            if let Some(daemon) = self.node(host).daemon.as_mut() {
                if let Some(status) = daemon.try_wait()? {
                    bail!("fulcrum on {host} exited ({status}) while waiting for {state}");
                }
            }
            let last = match self.vrrp_state(host) {
                Ok((s, priority)) if s == state && priority == configured => return Ok(start.elapsed()),
                Ok((s, priority)) => format!("{s} at priority {priority}"),
                Err(e) => format!("{e:#}"),
            };
            if start.elapsed() >= limit {
                bail!("{host} not {state} after {limit:?}; last: {last}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Polls until every real is up in `host`'s daemon.
    fn wait_reals_up(&mut self, host: &str, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.node(host).daemon.as_mut().context("no daemon")?.try_wait()? {
                bail!("fulcrum on {host} exited ({status}) while waiting for the reals");
            }
            let last = match self.lab.fulcrum_stats_on(host, &self.fulcrum) {
                Ok(s) if REALS.iter().all(|r| health(&s, r) == "up") => return Ok(()),
                Ok(s) => format!("{:?}", REALS.map(|r| (r, health(&s, r).to_string()))),
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() >= deadline {
                bail!("{host}: reals not all up after {limit:?}; last: {last}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Starts lb, waits for its reals and MASTER, then lb2 and BACKUP.
    fn start_master_then_backup(&mut self) {
        self.start("lb");
        self.wait_reals_up("lb", Duration::from_secs(10)).unwrap();
        self.wait_state("lb", "MASTER", Duration::from_secs(5)).unwrap();
        self.start("lb2");
        self.wait_reals_up("lb2", Duration::from_secs(10)).unwrap();
        self.wait_state("lb2", "BACKUP", Duration::from_secs(5)).unwrap();
    }

    /// Whether `host` holds the VIP on eth0.
    fn holds_vip(&self, host: &str) -> bool {
        self.lab.has_address(host, VIP4.into()).unwrap()
    }

    /// The MAC the client's neighbour entry for the VIP names.
    fn client_vip_neighbour(&self) -> Option<String> {
        self.lab.neighbour("client", VIP4.into()).unwrap()
    }

    /// `host`'s instance vi4 as its stats show it.
    fn vi4(&self, host: &str) -> Result<fulcrum_api::VrrpStats> {
        let stats = self.lab.fulcrum_stats_on(host, &self.fulcrum)?;
        stats.vrrp.into_iter().find(|i| i.name == "vi4").context("no vi4 in the stats")
    }

    /// Polls until `host`'s vi4 is in `state` with effective priority
    /// `priority`, at most `limit`.
    fn wait_vi4(&self, host: &str, state: &str, priority: u8, limit: Duration) -> Result<fulcrum_api::VrrpStats> {
        let start = Instant::now();
        loop {
            let last = match self.vi4(host) {
                Ok(v) if v.state == state && v.priority == priority => return Ok(v),
                Ok(v) => format!("{v:?}"),
                Err(e) => format!("{e:#}"),
            };
            if start.elapsed() >= limit {
                bail!("{host} not {state} at priority {priority} after {limit:?}; last: {last}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Watches, from inside `host`'s namespace, for the moment its kernel
/// owns the VIP: binding a socket to a non-local address fails
/// (`ip_nonlocal_bind` is 0 in a fresh namespace), so the first successful
/// bind is when the address arrived. Polls every millisecond, without a
/// process per poll; gives up after `limit`.
fn watch_vip(lab: &Lab, host: &str, limit: Duration) -> std::thread::JoinHandle<Option<Instant>> {
    let ns = lab.ns(host);
    std::thread::spawn(move || {
        in_netns(&ns, move || {
            let start = Instant::now();
            while start.elapsed() < limit {
                if std::net::UdpSocket::bind(SocketAddr::new(VIP4.into(), 0)).is_ok() {
                    return Some(Instant::now());
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            None
        })
        .unwrap()
    })
}

impl Drop for Pair {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for node in &self.nodes {
                if let Ok(log) = std::fs::read_to_string(&node.log) {
                    eprintln!("--- fulcrum log of {} ({}) ---\n{log}--- end of log ---", node.host, self.lab.prefix());
                }
            }
        }
        for node in &mut self.nodes {
            if let Some(mut daemon) = node.daemon.take() {
                let _ = daemon.stop(Duration::from_secs(5));
            }
        }
    }
}

fn health<'a>(stats: &'a fulcrum_api::StatsReport, real: &str) -> &'a str {
    stats.backend(&host4(real).unwrap().to_string()).map_or("missing", |b| b.health.as_str())
}

/// One `GET /` on a new connection; the `X-Served-By` backend.
fn get(addr: SocketAddr, timeout: Duration) -> Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, timeout).context("connect")?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(s, "GET / HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).context("read")?;
    let (head, _) = resp.split_once("\r\n\r\n").context("no end of headers")?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("unexpected response: {head}");
    }
    served_by(head.lines()).context("no X-Served-By header")
}

fn served_by<'a>(mut lines: impl Iterator<Item = &'a str>) -> Option<String> {
    lines
        .find_map(|l| l.split_once(':').filter(|(k, _)| k.trim().eq_ignore_ascii_case("x-served-by")))
        .map(|(_, v)| v.trim().to_string())
}

/// Runs `f` on a background thread inside the client's namespace (threads
/// it spawns are in that namespace too).
fn in_client<R: Send + 'static>(lab: &Lab, f: impl FnOnce() -> R + Send + 'static) -> std::thread::JoinHandle<R> {
    let ns = lab.ns("client");
    std::thread::spawn(move || in_netns(&ns, f).unwrap())
}

/// The prober: a new connection with one request every [`PROBE_EVERY`],
/// each on its own thread, so that a lost SYN does not delay the next
/// probe. Records when each successful reply arrived, and when each failed
/// probe was sent (a probe whose SYN was lost fails only after its
/// timeout, but says something about the moment it was sent).
struct Prober {
    replies: Arc<Mutex<Vec<Instant>>>,
    failures: Arc<Mutex<Vec<(Instant, String)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Prober {
    fn start(lab: &Lab) -> Prober {
        let replies = Arc::new(Mutex::new(Vec::new()));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, fl, st) = (replies.clone(), failures.clone(), stop.clone());
        let thread = in_client(lab, move || {
            let addr = SocketAddr::new(VIP4.into(), 80);
            let mut next = Instant::now();
            let mut probes = Vec::new();
            while !st.load(Ordering::SeqCst) {
                let (r, fl) = (r.clone(), fl.clone());
                let sent = Instant::now();
                probes.push(std::thread::spawn(move || match get(addr, Duration::from_millis(500)) {
                    Ok(_) => r.lock().unwrap().push(Instant::now()),
                    Err(e) => fl.lock().unwrap().push((sent, format!("{e:#}"))),
                }));
                probes.retain(|p| !p.is_finished());
                next += PROBE_EVERY;
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
            for p in probes {
                let _ = p.join();
            }
        });
        Prober { replies, failures, stop, thread: Some(thread) }
    }

    /// The longest interval between two replies (or the window's edges)
    /// within `from..to`, and the probes sent in it that failed, counted by error.
    fn gap(&self, from: Instant, to: Instant) -> (Duration, std::collections::BTreeMap<String, u32>) {
        let mut times: Vec<Instant> = self.replies.lock().unwrap().iter().copied().filter(|t| *t >= from && *t <= to).collect();
        times.sort();
        let mut gap = Duration::ZERO;
        let mut last = from;
        for t in times.iter().copied().chain(std::iter::once(to)) {
            gap = gap.max(t - last);
            last = t;
        }
        let mut failed = std::collections::BTreeMap::new();
        for (_, e) in self.failures.lock().unwrap().iter().filter(|(t, _)| *t >= from && *t <= to) {
            *failed.entry(e.clone()).or_insert(0) += 1;
        }
        (gap, failed)
    }

    /// Whether every probe sent in `from..` succeeded and some reply came.
    fn all_good_since(&self, from: Instant) -> bool {
        let ok = self.replies.lock().unwrap().iter().any(|t| *t >= from);
        ok && !self.failures.lock().unwrap().iter().any(|(t, _)| *t >= from)
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// When a request of a [`Flow`] finished, and what went wrong if it failed
/// or another backend than the connection's first answered it.
type FlowResults = Arc<Mutex<Vec<(Instant, Result<(), String>)>>>;

/// A keep-alive HTTP connection of the client, sending a request every
/// [`FLOW_EVERY`] on its own thread until stopped; records each result.
/// A failed connection is replaced by a new one, so that every step is
/// measured.
struct Flow {
    results: FlowResults,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Flow {
    fn start(lab: &Lab) -> Flow {
        let results: FlowResults = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (res, st) = (results.clone(), stop.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = in_client(lab, move || {
            let addr = SocketAddr::new(VIP4.into(), 80);
            let open = || -> Result<(BufReader<TcpStream>, String)> {
                let s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).context("connect")?;
                // Long enough for TCP to retransmit across a failover.
                s.set_read_timeout(Some(Duration::from_secs(5)))?;
                s.set_write_timeout(Some(Duration::from_secs(5)))?;
                let mut conn = BufReader::new(s);
                let backend = request(&mut conn)?;
                Ok((conn, backend))
            };
            let mut tx = Some(tx);
            while !st.load(Ordering::SeqCst) {
                let (mut conn, backend) = match open() {
                    Ok(c) => c,
                    Err(e) => {
                        if let Some(tx) = tx.take() {
                            tx.send(Err(format!("{e:#}"))).unwrap();
                            return;
                        }
                        res.lock().unwrap().push((Instant::now(), Err(format!("reconnecting: {e:#}"))));
                        std::thread::sleep(Duration::from_millis(100));
                        continue;
                    }
                };
                if let Some(tx) = tx.take() {
                    tx.send(Ok(())).unwrap();
                }
                while !st.load(Ordering::SeqCst) {
                    let result = match request(&mut conn) {
                        Ok(b) if b == backend => Ok(()),
                        Ok(b) => Err(format!("answered by {b}, not {backend}")),
                        Err(e) => Err(format!("{e:#}")),
                    };
                    let dead = result.is_err();
                    res.lock().unwrap().push((Instant::now(), result));
                    if dead {
                        break;
                    }
                    std::thread::sleep(FLOW_EVERY);
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(5)).expect("flow opened").expect("first request of the flow");
        Flow { results, stop, thread: Some(thread) }
    }

    /// Requests finished in `from..to`, and the failures among them.
    fn report(&self, from: Instant, to: Instant) -> (usize, Vec<String>) {
        let results = self.results.lock().unwrap();
        let window: Vec<_> = results.iter().filter(|(t, _)| *t >= from && *t <= to).collect();
        let bad = window.iter().filter_map(|(_, r)| r.as_ref().err().cloned()).collect();
        (window.len(), bad)
    }
}

impl Drop for Flow {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One `GET /` on a kept-alive connection; the backend that answered.
fn request(conn: &mut BufReader<TcpStream>) -> Result<String> {
    write!(conn.get_mut(), "GET / HTTP/1.1\r\nHost: vip\r\n\r\n").context("write")?;
    let (mut length, mut head) = (0usize, Vec::new());
    loop {
        let mut line = String::new();
        if conn.read_line(&mut line).context("read")? == 0 {
            bail!("connection closed");
        }
        let line = line.trim_end().to_string();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse()?;
            }
        }
        head.push(line);
    }
    let mut body = vec![0; length];
    conn.read_exact(&mut body).context("read body")?;
    if !head.first().is_some_and(|s| s.starts_with("HTTP/1.1 200")) {
        bail!("unexpected response: {head:?}");
    }
    served_by(head.iter().map(String::as_str)).context("no X-Served-By header")
}

/// `n` requests on new connections; responses per backend. Any failure
/// fails the test.
fn batch(lab: &Lab, n: u32) -> std::collections::BTreeMap<String, u32> {
    let addr = SocketAddr::new(VIP4.into(), 80);
    in_netns(&lab.ns("client"), || {
        let mut served = std::collections::BTreeMap::new();
        for i in 0..n {
            let name = get(addr, Duration::from_secs(2)).unwrap_or_else(|e| panic!("request {i} to {addr}: {e:#}"));
            *served.entry(name).or_insert(0) += 1;
        }
        served
    })
    .unwrap()
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

#[test]
fn vrrp_failover_keeps_the_vip_and_its_flows() {
    let mut p = Pair::up();
    let vip: IpAddr = VIP4.into();
    let unreachable = in_netns(&p.lab.ns("client"), || {
        TcpStream::connect_timeout(&SocketAddr::new(vip, 80), Duration::from_millis(500))
    })
    .unwrap();
    assert!(unreachable.is_err(), "the VIP answered before any lb held it");
    let (mac_lb, mac_lb2) = (p.lab.mac("lb").unwrap(), p.lab.mac("lb2").unwrap());

    // 1. lb first, then lb2: one Master, one Backup.
    p.start_master_then_backup();
    // A Backup that heard a higher priority stays Backup.
    std::thread::sleep(master_down_interval(PRIORITY_LB2) * 2);
    assert_eq!(p.vrrp_state("lb").unwrap(), ("MASTER".to_string(), PRIORITY_LB));
    assert_eq!(p.vrrp_state("lb2").unwrap(), ("BACKUP".to_string(), PRIORITY_LB2));
    assert!(p.holds_vip("lb") && !p.holds_vip("lb2"), "the Master alone holds the VIP on eth0");

    let (lb_before, lb2_before) = (p.stats("lb"), p.stats("lb2"));
    let served = batch(&p.lab, 60);
    let (lb_after, lb2_after) = (p.stats("lb"), p.stats("lb2"));
    for real in REALS {
        assert!(served.get(real).copied().unwrap_or(0) > 0, "{real} served nothing: {served:?}");
    }
    assert!(lb_after.reason("tx") - lb_before.reason("tx") >= 3 * 60, "lb's XDP forwarded the batch");
    assert_eq!(lb2_after.reason("tx"), lb2_before.reason("tx"), "the Backup forwarded VIP traffic");
    assert_eq!(p.client_vip_neighbour().as_deref(), Some(mac_lb.as_str()), "the client's ARP entry names lb");
    // Same tables on both nodes: the precondition for flows to survive.
    assert_eq!(lb_after.vips[0].table_digest, lb2_after.vips[0].table_digest, "the nodes' Maglev tables differ");
    assert!(lb_after.vips[0].table_digest.is_some());

    let prober = Prober::start(&p.lab);
    let flow = Flow::start(&p.lab);
    std::thread::sleep(Duration::from_millis(500));
    let mut gaps = Vec::new();
    // Failures of the keep-alive connection, reported together at the end
    // so that one run measures every step.
    let mut flow_failures: Vec<String> = Vec::new();

    // 2. (a) graceful stop of lb: priority 0, lb2 takes over after Skew_Time.
    let lb2_before = p.stats("lb2");
    assert!(!p.holds_vip("lb2"));
    let watcher = watch_vip(&p.lab, "lb2", Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(50));
    let t_stop = Instant::now();
    p.node("lb").daemon.as_mut().unwrap().terminate().unwrap();
    let owned = watcher.join().unwrap().expect("lb2 never owned the VIP after lb's graceful stop");
    let took = owned - t_stop;
    assert!(
        took <= skew_time(PRIORITY_LB2) + SLACK,
        "graceful stop: lb2 owned the VIP {} after SIGTERM; limit Skew_Time {} + {}",
        ms(took),
        ms(skew_time(PRIORITY_LB2)),
        ms(SLACK)
    );
    p.wait_state("lb2", "MASTER", STATS_SLACK).unwrap();
    let vi4 = p.vi4("lb2").unwrap();
    assert_eq!(vi4.master_address.as_deref(), Some(host4("lb2").unwrap().to_string().as_str()), "lb2's stats name itself Master: {vi4:?}");
    let status = p.node("lb").daemon.as_mut().unwrap().wait_timeout(Duration::from_secs(5)).unwrap();
    assert!(status.is_some_and(|s| s.success()), "fulcrum on lb did not exit cleanly on SIGTERM: {status:?}");
    p.node("lb").daemon = None;
    std::thread::sleep(Duration::from_secs(1));
    let t_end = Instant::now();
    let (gap, failed_probes) = prober.gap(t_stop - Duration::from_millis(200), t_end);
    let (requests, bad) = flow.report(t_stop, t_end);
    println!(
        "graceful stop: lb2 owned the VIP {} after SIGTERM (Skew_Time {}), client gap {} (failed probes: {failed_probes:?}), \
         keep-alive: {requests} requests, {} failed",
        ms(took),
        ms(skew_time(PRIORITY_LB2)),
        ms(gap),
        bad.len()
    );
    gaps.push(("graceful stop", gap));
    if !bad.is_empty() {
        flow_failures.push(format!("across the graceful failover: {bad:?}"));
    }
    assert!(requests > 20, "the keep-alive connection made only {requests} requests");
    assert!(!p.holds_vip("lb") && p.holds_vip("lb2"), "the VIP did not move to lb2's eth0");
    assert_eq!(p.client_vip_neighbour().as_deref(), Some(mac_lb2.as_str()), "the client's ARP entry names lb2");
    let lb2_after = p.stats("lb2");
    assert!(lb2_after.reason("tx") > lb2_before.reason("tx"), "lb2's XDP forwarded nothing");
    assert!(
        lb2_after.conn_table.misses > lb2_before.conn_table.misses,
        "lb2 took no flow over (no connection-table miss): {:?}",
        lb2_after.conn_table
    );
    assert!(prober.all_good_since(t_stop + took + Duration::from_millis(500)), "probes fail after the takeover");

    // 3. (b) lb comes back and preempts.
    let t_start = Instant::now();
    p.start("lb");
    let took = p.wait_state("lb", "MASTER", Duration::from_secs(10)).unwrap();
    p.wait_state("lb2", "BACKUP", Duration::from_secs(2)).unwrap();
    let vi4 = p.vi4("lb2").unwrap();
    assert_eq!(vi4.master_address.as_deref(), Some(host4("lb").unwrap().to_string().as_str()), "lb2's stats name lb Master: {vi4:?}");
    assert_eq!((vi4.priority, vi4.configured_priority), (PRIORITY_LB2, PRIORITY_LB2));
    std::thread::sleep(Duration::from_secs(1));
    let t_end = Instant::now();
    let (gap, failed_probes) = prober.gap(t_start, t_end);
    let (requests, bad) = flow.report(t_start, t_end);
    println!(
        "preemption: lb MASTER {} after its start, client gap {} (failed probes: {failed_probes:?}), \
         keep-alive: {requests} requests, {} failed",
        ms(took),
        ms(gap),
        bad.len()
    );
    gaps.push(("preemption", gap));
    if !bad.is_empty() {
        flow_failures.push(format!("across the preemption: {bad:?}"));
    }
    assert!(p.holds_vip("lb") && !p.holds_vip("lb2"), "the VIP did not move back to lb's eth0");
    assert_eq!(p.client_vip_neighbour().as_deref(), Some(mac_lb.as_str()), "the client's ARP entry names lb");
    assert!(prober.all_good_since(t_end - Duration::from_millis(500)), "probes fail after the preemption");

    // 4. (c) lb's daemon crashes: lb2 takes over after Master_Down_Interval.
    assert!(!p.holds_vip("lb2"));
    let watcher = watch_vip(&p.lab, "lb2", Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(50));
    let t_kill = Instant::now();
    p.node("lb").daemon.as_mut().unwrap().kill().unwrap();
    let owned = watcher.join().unwrap().expect("lb2 never owned the VIP after lb's crash");
    let took = owned - t_kill;
    assert!(
        took <= master_down_interval(PRIORITY_LB2) + SLACK,
        "crash: lb2 owned the VIP {} after SIGKILL; limit Master_Down_Interval {} + {}",
        ms(took),
        ms(master_down_interval(PRIORITY_LB2)),
        ms(SLACK)
    );
    p.wait_state("lb2", "MASTER", STATS_SLACK).unwrap();
    p.node("lb").daemon = None;
    std::thread::sleep(Duration::from_secs(1));
    let t_end = Instant::now();
    let (gap, failed_probes) = prober.gap(t_kill - Duration::from_millis(200), t_end);
    let (requests, bad) = flow.report(t_kill, t_end);
    // The killed daemon could not remove the VIP from lb's eth0 (keepalived
    // leaves it too), but its XDP program, attached by netlink, still
    // forwards: until lb2's gratuitous ARPs move the client, the
    // keep-alive connection goes on through lb, then through lb2 to the
    // same backend.
    let stale = p.holds_vip("lb");
    println!(
        "crash (SIGKILL): lb2 owned the VIP {} after the kill (Master_Down_Interval {}), client gap {} (failed probes: {failed_probes:?}), \
         keep-alive: {requests} requests, {} failed{}; VIP left on lb's eth0: {stale}",
        ms(took),
        ms(master_down_interval(PRIORITY_LB2)),
        ms(gap),
        bad.len(),
        bad.first().map(|e| format!(" (first: {e})")).unwrap_or_default()
    );
    gaps.push(("crash", gap));
    if !bad.is_empty() {
        flow_failures.push(format!("across the crash: {bad:?}"));
    }
    assert!(p.holds_vip("lb2"), "lb2 does not hold the VIP");
    assert_eq!(p.client_vip_neighbour().as_deref(), Some(mac_lb2.as_str()), "the client's ARP entry names lb2");
    assert!(prober.all_good_since(t_end - Duration::from_millis(500)), "probes fail after the crash takeover");
    let served = batch(&p.lab, 30);
    assert!(served.len() >= 2, "new connections after the crash takeover: {served:?}");

    drop(flow);
    drop(prober);
    println!("failover gaps as the client saw them (probe every {}): {gaps:?}", ms(PROBE_EVERY));
    assert!(flow_failures.is_empty(), "the keep-alive connection failed {flow_failures:?}");
}

/// The lab's VRRP mode without VRRP: both lbs run fulcrum with the VIP
/// always forwarded, and the test moves the VIP address between their
/// eth0s by hand. The client's on-link route follows whichever lb answers
/// ARP for it, and either lb's XDP program reaches all three reals.
#[test]
fn on_link_vip_follows_the_lb_that_holds_it() {
    let mut p = Pair::up_with(|_| base_toml());
    p.start("lb");
    p.start("lb2");
    p.wait_reals_up("lb", Duration::from_secs(10)).unwrap();
    p.wait_reals_up("lb2", Duration::from_secs(10)).unwrap();
    let vip = format!("{VIP4}/32");
    for (holder, other) in [("lb", "lb2"), ("lb2", "lb")] {
        p.lab.exec(other, &["ip", "addr", "flush", "to", &vip, "dev", "eth0"]).unwrap();
        p.lab.exec(holder, &["ip", "addr", "add", &vip, "dev", "eth0"]).unwrap();
        p.lab.exec("client", &["ip", "neigh", "flush", "to", &VIP4.to_string(), "dev", "eth0"]).unwrap();
        let (h_before, o_before) = (p.stats(holder), p.stats(other));
        let served = batch(&p.lab, 60);
        let (h_after, o_after) = (p.stats(holder), p.stats(other));
        for real in REALS {
            assert!(served.get(real).copied().unwrap_or(0) > 0, "via {holder}: {real} served nothing: {served:?}");
        }
        assert!(h_after.reason("tx") - h_before.reason("tx") >= 3 * 60, "{holder}'s XDP forwarded the batch");
        assert_eq!(o_after.reason("tx"), o_before.reason("tx"), "{other} forwarded VIP traffic");
        let mac = p.lab.mac(holder).unwrap();
        assert_eq!(p.client_vip_neighbour().as_deref(), Some(mac.as_str()), "the client's ARP entry names {holder}");
        assert!(!p.lab.has_address("real1", VIP4.into()).unwrap(), "real1 holds the VIP on lo, not eth0");
    }
}

/// Issue 11 item 8: "A tracked condition failing lowers the priority and
/// hands over; recovering hands back when preemption is on." lb tracks
/// pool web with `min_up = 3` and weight -60; one real failing its health
/// check makes lb's effective priority 90, below lb2's 100, so lb2
/// preempts (RFC 9568 6.4.2: a Backup with Preempt_Mode discards adverts
/// of a lower priority, and its Active_Down_Timer fires); the real
/// recovering gives lb 150 again, and lb preempts back.
#[test]
fn tracked_pool_hands_over_and_back() {
    let mut p = Pair::up_with(tracking_toml);
    let lb_addr = host4("lb").unwrap().to_string();
    let lb2_addr = host4("lb2").unwrap().to_string();
    p.start_master_then_backup();
    let vi4 = p.vi4("lb").unwrap();
    assert_eq!((vi4.priority, vi4.configured_priority), (PRIORITY_LB, PRIORITY_LB), "{vi4:?}");
    assert_eq!(vi4.master_address.as_deref(), Some(lb_addr.as_str()), "{vi4:?}");
    assert!(p.holds_vip("lb") && !p.holds_vip("lb2"));

    // Health checks: fall 2 at 500 ms, then one advert interval.
    let lowered = PRIORITY_LB - TRACK_WEIGHT;
    p.lab.set_backend_health(REALS[0], false).unwrap();
    let lb2 = p.wait_vi4("lb2", "MASTER", PRIORITY_LB2, Duration::from_secs(10)).unwrap();
    assert_eq!(lb2.master_address.as_deref(), Some(lb2_addr.as_str()), "{lb2:?}");
    let lb = p.wait_vi4("lb", "BACKUP", lowered, Duration::from_secs(2)).unwrap();
    assert_eq!(lb.configured_priority, PRIORITY_LB, "{lb:?}");
    assert_eq!(lb.master_address.as_deref(), Some(lb2_addr.as_str()), "lb's stats name lb2 Master: {lb:?}");
    assert!(!p.holds_vip("lb") && p.holds_vip("lb2"), "the VIP did not move to lb2");

    // Recovery: rise 2 at 500 ms; lb preempts with 150 > 100.
    p.lab.set_backend_health(REALS[0], true).unwrap();
    let lb = p.wait_vi4("lb", "MASTER", PRIORITY_LB, Duration::from_secs(10)).unwrap();
    assert_eq!(lb.master_address.as_deref(), Some(lb_addr.as_str()), "{lb:?}");
    let lb2 = p.wait_vi4("lb2", "BACKUP", PRIORITY_LB2, Duration::from_secs(2)).unwrap();
    assert_eq!(lb2.master_address.as_deref(), Some(lb_addr.as_str()), "lb2's stats name lb Master: {lb2:?}");
    assert!(p.holds_vip("lb") && !p.holds_vip("lb2"), "the VIP did not move back to lb");
}

/// Issue 11 item 3, "XDP program attached". fulcrum attaches by netlink
/// (so that the program outlives a crashed daemon), so an operator's
/// `ip link set dev eth0 xdp off` removes it: the track notices and lowers
/// lb's priority to 90, so lb2 (100) takes over.
#[test]
fn tracked_xdp_program_hands_over() {
    let mut p = Pair::up_with(xdp_tracking_toml);
    p.start("lb");
    p.wait_reals_up("lb", Duration::from_secs(10)).unwrap();
    p.wait_vi4("lb", "MASTER", PRIORITY_LB, Duration::from_secs(5)).unwrap();
    p.start("lb2");
    p.wait_reals_up("lb2", Duration::from_secs(10)).unwrap();
    p.wait_vi4("lb2", "BACKUP", PRIORITY_LB2, Duration::from_secs(5)).unwrap();

    let shown = p.lab.exec("lb", &["ip", "-d", "link", "show", "dev", "eth0"]).unwrap();
    assert!(shown.contains("prog/xdp id "), "no XDP program on lb's eth0: {shown}");
    p.lab.exec("lb", &["ip", "link", "set", "dev", "eth0", "xdp", "off"]).unwrap();
    p.wait_vi4("lb", "BACKUP", PRIORITY_LB - TRACK_WEIGHT, Duration::from_secs(5)).unwrap();
    p.wait_vi4("lb2", "MASTER", PRIORITY_LB2, Duration::from_secs(2)).unwrap();
    assert!(!p.holds_vip("lb") && p.holds_vip("lb2"), "the VIP did not move to lb2");
}

/// [`config_toml`] with the RFC 9568 virtual router MAC.
fn vmac_toml(priority: u8) -> String {
    config_toml(priority) + "virtual_mac = true\n"
}

/// `virtual_mac = true` on the instance that owns an L4 VIP (issue 11):
/// the client's neighbour entry for the VIP names 00:00:5e:00:01:33 (VRID
/// 51) and keeps naming it across a failover, lb's XDP program and then
/// lb2's balance the frames sent to that MAC, and a keep-alive connection
/// opened through lb goes on through lb2 without a failed request.
#[test]
fn virtual_mac_vip_keeps_the_clients_neighbour_and_flows_across_a_failover() {
    const VMAC: &str = "00:00:5e:00:01:33";
    let mut p = Pair::up_with(vmac_toml);
    p.start_master_then_backup();
    assert!(p.lab.exec("lb", &["ip", "-o", "addr", "show", "dev", "vrrp.51"]).unwrap().contains(&VIP4.to_string()));

    let lb_before = p.stats("lb");
    let served = batch(&p.lab, 30);
    let lb_after = p.stats("lb");
    assert_eq!(served.len(), REALS.len(), "every real serves through the virtual MAC: {served:?}");
    assert!(lb_after.reason("tx") - lb_before.reason("tx") >= 3 * 30, "lb's XDP forwarded the batch");
    assert_eq!(p.client_vip_neighbour().as_deref(), Some(VMAC), "the client resolves the VIP to the virtual MAC");

    let prober = Prober::start(&p.lab);
    let flow = Flow::start(&p.lab);
    std::thread::sleep(Duration::from_millis(500));
    let lb2_before = p.stats("lb2");
    let t_stop = Instant::now();
    p.node("lb").daemon.as_mut().unwrap().terminate().unwrap();
    p.wait_state("lb2", "MASTER", skew_time(PRIORITY_LB2) + SLACK + STATS_SLACK).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let t_end = Instant::now();
    let (gap, failed_probes) = prober.gap(t_stop - Duration::from_millis(200), t_end);
    let (requests, bad) = flow.report(t_stop, t_end);
    println!(
        "virtual MAC, graceful stop: client gap {} (failed probes: {failed_probes:?}), keep-alive: {requests} requests, {} failed",
        ms(gap),
        bad.len()
    );
    assert!(bad.is_empty(), "the keep-alive connection failed across the failover: {bad:?}");
    assert!(requests > 20, "the keep-alive connection made only {requests} requests");
    assert!(prober.all_good_since(t_end - Duration::from_millis(500)), "probes fail after the failover");
    assert_eq!(p.client_vip_neighbour().as_deref(), Some(VMAC), "the client's entry still names the virtual MAC");
    let lb2_after = p.stats("lb2");
    assert!(lb2_after.reason("tx") > lb2_before.reason("tx"), "lb2's XDP forwards after the takeover");
    drop(flow);
    drop(prober);
}
