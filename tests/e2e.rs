//! End to end: the real `fulcrum` daemon on the lab's lb, real HTTP
//! backends behind it, requests from the client namespace over TCP.
//!
//! Needs root (namespaces, XDP) and the workspace binaries `fulcrum` and
//! `fulcrum-backend` next to this test's profile directory (`cargo build
//! --bins`; `cargo xtask test` does it). Each test has its own lab prefix
//! and tears everything down on every exit path, panics included.
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use fulcrum_api::StatsReport as Stats;
use fulcrum_lab::{bin_path, host4, in_netns, Lab, Proc, LB4, REALS, VIP4, VIP6, web_pool_toml};

/// Health-check timing of the test config: short, so that the tests wait
/// seconds, not tens of seconds.
const INTERVAL: Duration = Duration::from_millis(500);
const RISE: u32 = 2;
const FALL: u32 = 2;
/// New connections per batch of requests. With three equal backends the
/// chance that Maglev leaves one without any of 60 connections is 3·(2/3)^60.
const BATCH: u32 = 60;
/// The L7 listener of the test config, on the lb's own address.
const L7: SocketAddr = SocketAddr::new(IpAddr::V4(LB4), 8080);

fn config_toml() -> String {
    format!(
        r#"interface = "eth0"

[admin]
listen = "127.0.0.1:9180"

[[vip]]
name = "web"
address = "{VIP4}"
port = 80
protocol = "tcp"
scheduler = "maglev"
pool = "web"

[[vip]]
name = "web6"
address = "{VIP6}"
port = 80
protocol = "tcp"
scheduler = "maglev"
pool = "web"

{pool}
[[listener]]
name = "www"
address = "{L7}"
[[listener.route]]
pool = "web"
"#,
        pool = web_pool_toml(INTERVAL, RISE, FALL),
    )
}

/// A lab with fulcrum running on its lb. Fields drop in order: the daemon
/// stops (detaching XDP) before the lab's namespaces go.
struct Fixture {
    daemon: Option<Proc>,
    fulcrum: PathBuf,
    log: PathBuf,
    lab: Lab,
}

impl Fixture {
    /// Brings up a lab with a prefix unique to this process and test, and
    /// checks the VIP is unreachable before fulcrum runs.
    fn lab_only() -> Fixture {
        static N: AtomicU32 = AtomicU32::new(0);
        let prefix = format!("fe2e{}{}", std::process::id() % 10000, N.fetch_add(1, Ordering::SeqCst));
        let fulcrum = bin_path("fulcrum").unwrap();
        let lab = Lab::up(&prefix).unwrap();
        let log = lab.run_dir().join("fulcrum.log");
        Fixture { daemon: None, fulcrum, log, lab }
    }

    /// Starts fulcrum with the test config and waits until every backend
    /// is up.
    fn start(&mut self) {
        self.start_with(&config_toml(), &REALS);
    }

    /// Starts fulcrum with `toml` and waits until `reals` are up.
    fn start_with(&mut self, toml: &str, reals: &[&str]) {
        let config = self.lab.run_dir().join("fulcrum.toml");
        std::fs::write(&config, toml).unwrap();
        let log = std::fs::File::create(&self.log).unwrap();
        let mut cmd = self.lab.command("lb", &self.fulcrum);
        cmd.arg("run").arg("--config").arg(&config);
        cmd.env("NO_COLOR", "1");
        cmd.stdin(std::process::Stdio::null()).stdout(log.try_clone().unwrap()).stderr(log);
        self.daemon = Some(self.lab.spawn(cmd).unwrap());
        self.wait_health(reals, "up", Duration::from_secs(10)).unwrap();
    }

    fn stats(&self) -> Stats {
        self.lab.fulcrum_stats(&self.fulcrum).unwrap()
    }

    /// Polls the stats until every backend in `reals` has `health`, at most
    /// `limit`. Fetch failures count as "not yet" (the admin endpoint
    /// comes up after the program loads), a daemon exit as failure.
    fn wait_health(&mut self, reals: &[&str], health: &str, limit: Duration) -> Result<Stats> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.daemon.as_mut().context("no daemon")?.try_wait()? {
                bail!("fulcrum exited ({status}) while waiting for {reals:?} {health}");
            }
            let last = match self.lab.fulcrum_stats(&self.fulcrum) {
                Ok(s) if reals.iter().all(|r| backend_health(&s, r) == health) => return Ok(s),
                Ok(s) => format!("{:?}", REALS.map(|r| (r, backend_health(&s, r).to_string()))),
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() >= deadline {
                bail!("{reals:?} not {health} after {limit:?}; last: {last}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Polls the stats until the maps hold the newest effective state.
    fn wait_applied(&self) -> Stats {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let stats = self.stats();
            if stats.control.applied_generation == stats.control.generation {
                return stats;
            }
            assert!(Instant::now() < deadline, "tables not applied after 5 s: {:?}", stats.control);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGHUP to the daemon.
    fn hup(&self) {
        let pid = self.daemon.as_ref().unwrap().pid() as libc::pid_t;
        // SAFETY: plain kill(2) to the daemon this test started.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    }

    /// `BATCH` GET requests to `vip`:80 from the client, each on a new
    /// connection; returns responses per backend name. Any failed request
    /// fails the test: with a healthy backend behind every table entry,
    /// none may be lost.
    fn batch(&self, vip: IpAddr) -> BTreeMap<String, u32> {
        self.batch_at(SocketAddr::new(vip, 80))
    }

    /// `BATCH` GET requests to `addr` from the client, as `batch` does.
    fn batch_at(&self, addr: SocketAddr) -> BTreeMap<String, u32> {
        in_netns(&self.lab.ns("client"), || {
            let mut served = BTreeMap::new();
            for i in 0..BATCH {
                let name = get(addr).unwrap_or_else(|e| panic!("request {i} to {addr}: {e:#}"));
                *served.entry(name).or_insert(0) += 1;
            }
            served
        })
        .unwrap()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // The log lives in the lab's run directory, which goes with the lab:
        // show it now if the test failed.
        if std::thread::panicking() {
            if let Ok(log) = std::fs::read_to_string(&self.log) {
                eprintln!("--- fulcrum log ({}) ---\n{log}--- end of log ---", self.lab.prefix());
            }
        }
    }
}

/// One `GET /` on a new connection; returns the `X-Served-By` backend.
fn get(addr: SocketAddr) -> Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).context("connect")?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.set_write_timeout(Some(Duration::from_secs(2)))?;
    write!(s, "GET / HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).context("read")?;
    let (head, _body) = resp.split_once("\r\n\r\n").context("no end of headers")?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("unexpected response: {head}");
    }
    head.lines()
        .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("x-served-by")))
        .map(|(_, v)| v.trim().to_string())
        .context("no X-Served-By header")
}

fn backend_health<'a>(stats: &'a Stats, real: &str) -> &'a str {
    stats.backend(&host4(real).unwrap().to_string()).map_or("missing", |b| b.health.as_str())
}

fn backend_packets(stats: &Stats, real: &str) -> u64 {
    stats.backend(&host4(real).unwrap().to_string()).map_or(0, |b| b.packets)
}

/// Connecting to the VIP from the client fails (nothing forwards it).
fn assert_vip_unreachable(lab: &Lab, vip: IpAddr) {
    let addr = SocketAddr::new(vip, 80);
    let res = in_netns(&lab.ns("client"), || TcpStream::connect_timeout(&addr, Duration::from_millis(500)))
        .unwrap();
    assert!(res.is_err(), "{addr} answered without fulcrum's XDP program: {res:?}");
}

/// Requests to `vip` spread over all three backends, and fulcrum's XDP
/// counters account for them: every backend's packet counter and the `tx`
/// verdict grew. Before fulcrum starts and after it stops, the VIP is
/// unreachable, so the traffic can only have gone through XDP.
fn vip_reaches_every_backend_through_xdp(vip: IpAddr) {
    let mut f = Fixture::lab_only();
    assert_vip_unreachable(&f.lab, vip);
    f.start();

    let before = f.stats();
    let served = f.batch(vip);
    let after = f.stats();
    for real in REALS {
        assert!(served.get(real).copied().unwrap_or(0) > 0, "{real} served nothing: {served:?}");
        let packets = backend_packets(&after, real) - backend_packets(&before, real);
        assert!(packets > 0, "XDP counted no packets for {real}; responses {served:?}");
    }
    let tx = after.reason("tx") - before.reason("tx");
    // At least SYN, request and FIN of every connection went out with XDP_TX.
    assert!(tx >= 3 * u64::from(BATCH), "tx grew by {tx} for {BATCH} connections");
    let vip_text = vip.to_string();
    let vip_stats = after.vips.iter().find(|v| v.address == vip_text).expect("VIP in stats");
    assert!(vip_stats.packets > 0, "no packets counted for VIP {vip_text}");

    let status = f.daemon.as_mut().unwrap().stop(Duration::from_secs(5)).unwrap();
    assert!(status.success(), "fulcrum did not exit cleanly on SIGTERM: {status}");
    // XDP is detached with the daemon: the VIP is dark again.
    assert_vip_unreachable(&f.lab, vip);
}

#[test]
fn ipv4_vip_reaches_every_backend_through_xdp() {
    vip_reaches_every_backend_through_xdp(VIP4.into());
}

#[test]
fn ipv6_vip_reaches_every_backend_through_xdp() {
    vip_reaches_every_backend_through_xdp(VIP6.into());
}

/// The id of the XDP program on the lb's eth0, if any.
fn xdp_prog_id(lab: &Lab) -> Option<String> {
    let shown = lab.exec("lb", &["ip", "-d", "link", "show", "dev", "eth0"]).unwrap();
    shown.split("prog/xdp id ").nth(1).and_then(|rest| rest.split_whitespace().next()).map(str::to_string)
}

/// The program is attached by netlink, so it outlives a daemon killed
/// without cleanup (SIGKILL) and keeps forwarding with the tables as last
/// written; a new daemon replaces it, and a graceful stop removes it.
#[test]
fn a_killed_daemon_leaves_its_program_forwarding_until_a_restart_replaces_it() {
    let mut f = Fixture::lab_only();
    f.start();
    let first = xdp_prog_id(&f.lab).expect("an XDP program on eth0");
    f.batch(VIP4.into());

    f.daemon.as_mut().unwrap().kill().unwrap();
    assert_eq!(xdp_prog_id(&f.lab).as_deref(), Some(first.as_str()), "the program went with the killed daemon");
    let served = f.batch(VIP4.into());
    assert_eq!(served.len(), REALS.len(), "without its daemon the program still spreads: {served:?}");

    f.start();
    let second = xdp_prog_id(&f.lab).expect("an XDP program on eth0");
    assert_ne!(first, second, "the restarted daemon did not replace the program");
    let before = f.stats();
    f.batch(VIP4.into());
    let after = f.stats();
    assert!(after.reason("tx") > before.reason("tx"), "the new program does not forward");

    let status = f.daemon.as_mut().unwrap().stop(Duration::from_secs(5)).unwrap();
    assert!(status.success(), "fulcrum did not exit cleanly on SIGTERM: {status}");
    assert_eq!(xdp_prog_id(&f.lab), None, "a graceful stop leaves the program attached");
    assert_vip_unreachable(&f.lab, VIP4.into());
}

/// A backend failing `fall` checks gets no new connections within
/// interval × fall + 1 s; after `rise` good checks it serves again.
#[test]
fn failed_backend_leaves_and_rejoins_after_rise() {
    let mut f = Fixture::lab_only();
    f.start();

    f.lab.set_backend_health("real1", false).unwrap();
    std::thread::sleep(INTERVAL * FALL + Duration::from_secs(1));
    let stats = f.stats();
    assert_eq!(backend_health(&stats, "real1"), "down", "stats: {stats:?}");
    let served = f.batch(VIP4.into());
    assert_eq!(served.get("real1"), None, "real1 is down but served: {served:?}");
    assert!(served.contains_key("real2") && served.contains_key("real3"), "{served:?}");

    f.lab.set_backend_health("real1", true).unwrap();
    // `rise` passing checks, one interval apart, plus slack for the check
    // in flight and the table rebuild.
    f.wait_health(&["real1"], "up", INTERVAL * RISE + Duration::from_secs(1)).unwrap();
    let served = f.batch(VIP4.into());
    assert!(served.contains_key("real1"), "real1 is up again but served nothing: {served:?}");
}

/// SIGHUP reloads the file. A bad one is rejected with its file:line:col and
/// the running configuration keeps balancing over all backends; a good one
/// takes effect (here: real1 drained with weight 0).
#[test]
fn reload_rejects_a_bad_config_and_applies_a_good_one() {
    let mut f = Fixture::lab_only();
    f.start();
    let config = f.lab.run_dir().join("fulcrum.toml");
    let hup = |f: &mut Fixture| f.hup();

    let bad = config_toml().replacen("scheduler = \"maglev\"", "scheduler = \"round-robin\"", 1);
    let bad_line = bad.lines().position(|l| l.contains("round-robin")).unwrap() + 1;
    std::fs::write(&config, &bad).unwrap();
    hup(&mut f);
    let want = format!("fulcrum.toml:{bad_line}:");
    wait_log(&f, |log| log.contains("reload rejected") && log.contains(&want))
        .unwrap_or_else(|log| panic!("no rejection naming {want} in the log:\n{log}"));
    let served = f.batch(VIP4.into());
    assert!(REALS.iter().all(|r| served.contains_key(*r)), "old config must keep serving: {served:?}");

    // The first backend in the file is real1.
    std::fs::write(&config, config_toml().replacen("weight = 1", "weight = 0", 1)).unwrap();
    hup(&mut f);
    wait_log(&f, |log| log.contains("configuration reloaded"))
        .unwrap_or_else(|log| panic!("no reload in the log:\n{log}"));
    f.wait_applied();
    let served = f.batch(VIP4.into());
    assert_eq!(served.get("real1"), None, "real1 is drained but served: {served:?}");
    assert!(served.contains_key("real2") && served.contains_key("real3"), "{served:?}");
}

/// Waits up to 5 s for the daemon log to satisfy `done`; the log on timeout.
fn wait_log(f: &Fixture, done: impl Fn(&str) -> bool) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let log = std::fs::read_to_string(&f.log).unwrap_or_default();
        if done(&log) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(log);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Health is kept per checked (address, port, check), not per pool name:
/// renaming the pool and the VIPs on reload neither restarts a check nor
/// takes a backend out of a table for a moment.
#[test]
fn renaming_the_pool_and_vips_on_reload_keeps_every_backend() {
    let mut f = Fixture::lab_only();
    f.start();
    f.wait_applied();
    let config = f.lab.run_dir().join("fulcrum.toml");
    let renamed = config_toml()
        .replace("[[pool]]\nname = \"web\"", "[[pool]]\nname = \"www\"")
        .replace("pool = \"web\"", "pool = \"www\"")
        .replace("name = \"web6\"", "name = \"www6\"")
        .replacen("name = \"web\"", "name = \"www4\"", 1);
    assert!(renamed.contains("name = \"www\"") && renamed.contains("name = \"www4\""), "{renamed}");
    let drops_before = f.stats().reason("drop_no_backend");
    let first_checks = |log: &str| log.matches("at the first check").count();
    let before = first_checks(&std::fs::read_to_string(&f.log).unwrap());
    std::fs::write(&config, renamed).unwrap();
    f.hup();
    wait_log(&f, |log| log.contains("configuration reloaded")).unwrap_or_else(|log| panic!("no reload:\n{log}"));
    let stats = f.wait_applied();
    for vip in &stats.vips {
        assert!(vip.name.starts_with("www"), "{:?}", vip.name);
        assert_eq!(vip.backends_in_table, 3, "{vip:?}");
    }
    assert!(REALS.iter().all(|r| backend_health(&stats, r) == "up"), "{stats:?}");
    let served = f.batch(VIP4.into());
    assert!(REALS.iter().all(|r| served.contains_key(*r)), "{served:?}");
    assert_eq!(f.stats().reason("drop_no_backend"), drops_before);
    let log = std::fs::read_to_string(&f.log).unwrap();
    assert_eq!(first_checks(&log), before, "a rename restarted health checks:\n{log}");
}

/// Idle clients of the admin API cannot exhaust the daemon's descriptors:
/// over its connection limit they are turned away, the rest time out, and
/// health checks (and so the VIP) carry on. 1100 idle connections used to
/// take every backend down with "Too many open files".
#[test]
fn idle_admin_connections_cannot_take_backends_down() {
    let mut f = Fixture::lab_only();
    f.start();
    // This test process holds the 1100 client ends itself.
    // SAFETY: getrlimit/setrlimit on this process with a value we own.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
    let admin: SocketAddr = "127.0.0.1:9180".parse().unwrap();
    let held = in_netns(&f.lab.ns("lb"), || {
        (0..1100).filter_map(|_| TcpStream::connect_timeout(&admin, Duration::from_secs(1)).ok()).collect::<Vec<_>>()
    })
    .unwrap();
    assert!(!held.is_empty());
    // Several check intervals pass with the connections held open.
    std::thread::sleep(INTERVAL * (FALL + 2));
    let served = f.batch(VIP4.into());
    assert!(REALS.iter().all(|r| served.contains_key(*r)), "{served:?}");
    drop(held);
    let stats = f.wait_health(&REALS, "up", Duration::from_secs(10)).unwrap();
    assert_eq!(stats.reason("drop_no_backend"), 0);
    assert!(stats.control.admin.refused > 0, "{:?}", stats.control.admin);
    let log = std::fs::read_to_string(&f.log).unwrap();
    assert!(!log.contains("Too many open files"), "{log}");
    assert!(!log.contains("is DOWN"), "{log}");
}

/// Backend MACs follow the kernel's neighbour table by subscription: a
/// changed entry reaches the datapath within moments, not at the next
/// periodic resync (30 s).
#[test]
fn a_neighbour_change_reaches_the_datapath_at_once() {
    let mut f = Fixture::lab_only();
    f.start();
    let real1 = host4("real1").unwrap().to_string();
    let bogus = "02:00:00:00:00:99";
    f.lab.exec("lb", &["ip", "neigh", "replace", &real1, "lladdr", bogus, "dev", "eth0", "nud", "permanent"]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let stats = f.stats();
        if stats.backend(&real1).and_then(|b| b.mac.as_deref()) == Some(bogus) {
            break;
        }
        assert!(Instant::now() < deadline, "MAC not updated within 3 s: {:?}", stats.backend(&real1));
        std::thread::sleep(Duration::from_millis(50));
    }
    f.lab.exec("lb", &["ip", "neigh", "del", &real1, "dev", "eth0"]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let stats = f.stats();
        let b = stats.backend(&real1).unwrap();
        // The entry is gone until the next check resolves it again; either
        // way the bogus MAC is no longer used.
        if b.mac.as_deref() != Some(bogus) {
            break;
        }
        assert!(Instant::now() < deadline, "deleted entry still used after 3 s: {b:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The L7 proxy balances requests over the pool (byrequests, equal
/// weights) and shares one health state with the XDP path: a backend that
/// fails its checks gets no request through either.
#[test]
fn l7_proxy_spreads_requests_and_skips_a_down_backend() {
    let mut f = Fixture::lab_only();
    f.start();
    let before = f.stats();
    let served = f.batch_at(L7);
    // Each proxy worker runs its own round robin: every backend gets about
    // a third, never none.
    for real in REALS {
        let n = served.get(real).copied().unwrap_or(0);
        assert!((10..=30).contains(&n), "{real} served {n} of {BATCH}: {served:?}");
    }
    let after = f.stats();
    let requests = |s: &Stats, real: &str| s.backend(&host4(real).unwrap().to_string()).and_then(|b| b.l7).map_or(0, |l| l.requests);
    let counted: u64 = REALS.iter().map(|r| requests(&after, r) - requests(&before, r)).sum();
    assert_eq!(counted, u64::from(BATCH), "proxy counters: {:?}", after.pools);
    assert_eq!(after.listeners[0].address, L7.to_string());

    f.lab.set_backend_health("real1", false).unwrap();
    f.wait_health(&["real1"], "down", INTERVAL * FALL + Duration::from_secs(2)).unwrap();
    let served = f.batch_at(L7);
    assert_eq!(served.get("real1"), None, "real1 is down but the proxy used it: {served:?}");
    assert_eq!(served.values().sum::<u32>(), BATCH);
}

/// From the client: `GET /slow/1500` to `addr` on a new connection,
/// started on a thread; returns the status line.
fn slow_request(f: &Fixture, addr: SocketAddr) -> std::thread::JoinHandle<String> {
    let client = f.lab.ns("client");
    std::thread::spawn(move || {
        in_netns(&client, || -> Result<String> {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).context("connect")?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            write!(s, "GET /slow/1500 HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
            let mut resp = String::new();
            s.read_to_string(&mut resp).context("read")?;
            Ok(resp.lines().next().unwrap_or_default().to_string())
        })
        .unwrap()
        .unwrap_or_else(|e| format!("failed: {e:#}"))
    })
}

/// Waits until the proxy has sent a request to some backend.
fn wait_l7_request(f: &Fixture) {
    let sent = |s: &Stats| s.pools.iter().flat_map(|p| &p.backends).filter_map(|b| b.l7).map(|l| l.requests).sum::<u64>();
    let deadline = Instant::now() + Duration::from_secs(3);
    while sent(&f.stats()) == 0 {
        assert!(Instant::now() < deadline, "the slow request never reached a backend");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGHUP applies a new configuration to the L7 proxy without dropping the
/// requests in flight: a request the backend holds for 1.5 s, sent before
/// the reload, is answered 200; requests after it follow the new weights.
#[test]
fn l7_reload_keeps_requests_in_flight() {
    let mut f = Fixture::lab_only();
    f.start();
    let slow = slow_request(&f, L7);
    wait_l7_request(&f);
    let config = f.lab.run_dir().join("fulcrum.toml");
    std::fs::write(&config, config_toml().replacen("weight = 1", "weight = 0", 1)).unwrap();
    f.hup();
    wait_log(&f, |log| log.contains("configuration reloaded")).unwrap_or_else(|log| panic!("no reload in the log:\n{log}"));
    assert_eq!(slow.join().unwrap(), "HTTP/1.1 200 OK", "the request in flight across the reload");
    f.wait_applied();
    let served = f.batch_at(L7);
    assert_eq!(served.get("real1"), None, "real1 is drained but the proxy used it: {served:?}");
}

/// A reload that moves the listener (8080 -> 8081) starts a new proxy on
/// the new address, while the old one finishes its request in flight and
/// then stops listening, as nginx's old workers do.
#[test]
fn l7_reload_moves_the_listener_and_drains_the_old_proxy() {
    let mut f = Fixture::lab_only();
    f.start();
    let moved = SocketAddr::new(L7.ip(), 8081);
    let slow = slow_request(&f, L7);
    wait_l7_request(&f);
    let config = f.lab.run_dir().join("fulcrum.toml");
    std::fs::write(&config, config_toml().replace(&format!("address = \"{L7}\""), &format!("address = \"{moved}\""))).unwrap();
    f.hup();
    wait_log(&f, |log| log.contains("configuration reloaded")).unwrap_or_else(|log| panic!("no reload in the log:\n{log}"));
    let served = f.batch_at(moved);
    assert_eq!(served.values().sum::<u32>(), BATCH, "{served:?}");
    assert_eq!(slow.join().unwrap(), "HTTP/1.1 200 OK", "the old proxy's request in flight");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let refused = in_netns(&f.lab.ns("client"), || TcpStream::connect_timeout(&L7, Duration::from_millis(500)).is_err()).unwrap();
        if refused {
            break;
        }
        assert!(Instant::now() < deadline, "the old listener {L7} still accepts after its drain");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(f.stats().listeners[0].address, moved.to_string());
}

// ---- connection table: long-lived flows across table changes -----------------

/// The config of the long-lived-flows test: the test VIPs, their pool made of
/// `backends` as (real, weight), and a smaller connection table.
fn flows_toml(backends: &[(&str, u32)]) -> String {
    let all = config_toml();
    let mut toml = all[..all.find("[[pool.backend]]").unwrap()].to_string();
    for (real, weight) in backends {
        toml += &format!("[[pool.backend]]\naddress = \"{}\"\nweight = {weight}\n\n", host4(real).unwrap());
    }
    toml + "[datapath]\nconn_table_size = 65536\n"
}

/// One keep-alive connection of the client, sending a request at a time.
struct KeepAlive {
    reader: std::io::BufReader<TcpStream>,
    /// The backend that served its first request.
    backend: String,
}

impl KeepAlive {
    fn open(addr: SocketAddr) -> Result<KeepAlive> {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).context("connect")?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.set_write_timeout(Some(Duration::from_secs(2)))?;
        let mut conn = KeepAlive { reader: std::io::BufReader::new(s), backend: String::new() };
        conn.backend = conn.request()?;
        Ok(conn)
    }

    /// One `GET /` on this connection; the backend that answered.
    fn request(&mut self) -> Result<String> {
        use std::io::BufRead;
        write!(self.reader.get_mut(), "GET / HTTP/1.1\r\nHost: vip\r\n\r\n").context("write")?;
        let (mut length, mut served, mut status) = (0usize, None, String::new());
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line).context("read")? == 0 {
                bail!("connection closed");
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if status.is_empty() {
                status = line.to_string();
            } else if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse()?;
                } else if k.eq_ignore_ascii_case("x-served-by") {
                    served = Some(v.trim().to_string());
                }
            }
        }
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body).context("read body")?;
        if !status.starts_with("HTTP/1.1 200") {
            bail!("unexpected response: {status}");
        }
        served.context("no X-Served-By header")
    }
}

/// What the long-lived connections saw while the test changed the table.
#[derive(Debug, Default)]
struct FlowReport {
    rounds: u64,
    /// (connection index, its backend, what went wrong)
    failures: Vec<(usize, String, String)>,
}

/// Issue 12's lab test: 300 long-lived TCP connections, each sending a
/// request every few tens of milliseconds, survive a real being added,
/// re-weighted, drained and undrained, and marked down (policy `keep`)
/// and up again: no request fails and none is answered by another real,
/// while new connections reach the added or returning real.
#[test]
fn long_lived_connections_survive_table_changes() {
    let mut f = Fixture::lab_only();
    f.start_with(&flows_toml(&[("real1", 1), ("real2", 1)]), &["real1", "real2"]);
    f.wait_applied();
    let addr = SocketAddr::new(VIP4.into(), 80);
    let conns: Vec<KeepAlive> = in_netns(&f.lab.ns("client"), || {
        (0..300).map(|i| KeepAlive::open(addr).unwrap_or_else(|e| panic!("connection {i}: {e:#}"))).collect()
    })
    .unwrap();
    let on = |name: &str| conns.iter().filter(|c| c.backend == name).count();
    assert!(on("real1") > 50 && on("real2") > 50, "300 connections over two reals");

    // Every connection sends a request per round until told to stop.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut conns = conns;
            let mut report = FlowReport::default();
            let mut dead = vec![false; conns.len()];
            while !stop.load(Ordering::SeqCst) {
                for (i, c) in conns.iter_mut().enumerate() {
                    if dead[i] {
                        continue;
                    }
                    match c.request() {
                        Ok(name) if name == c.backend => {}
                        Ok(name) => report.failures.push((i, c.backend.clone(), format!("answered by {name}"))),
                        Err(e) => {
                            dead[i] = true;
                            report.failures.push((i, c.backend.clone(), format!("{e:#}")));
                        }
                    }
                }
                report.rounds += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            report
        })
    };
    let config = f.lab.run_dir().join("fulcrum.toml");
    let reload = |f: &mut Fixture, backends: &[(&str, u32)]| {
        std::fs::write(&config, flows_toml(backends)).unwrap();
        f.hup();
        std::thread::sleep(Duration::from_millis(300));
        f.wait_applied();
        std::thread::sleep(Duration::from_secs(1));
    };

    // Added: real3 joins (its first checks must pass before it takes traffic).
    reload(&mut f, &[("real1", 1), ("real2", 1), ("real3", 1)]);
    f.wait_health(&REALS, "up", Duration::from_secs(10)).unwrap();
    f.wait_applied();
    let served = f.batch(VIP4.into());
    assert!(served.contains_key("real3"), "new connections reach the added real3: {served:?}");
    // Re-weighted.
    reload(&mut f, &[("real1", 1), ("real2", 1), ("real3", 3)]);
    // Drained and back.
    reload(&mut f, &[("real1", 0), ("real2", 1), ("real3", 3)]);
    let served = f.batch(VIP4.into());
    assert!(!served.contains_key("real1"), "drained real1 took new connections: {served:?}");
    reload(&mut f, &[("real1", 1), ("real2", 1), ("real3", 3)]);
    let served = f.batch(VIP4.into());
    assert!(served.contains_key("real1"), "undrained real1 takes new connections: {served:?}");
    // Marked down (policy keep: its connections stay) and up again.
    f.lab.set_backend_health("real2", false).unwrap();
    f.wait_health(&["real2"], "down", INTERVAL * FALL + Duration::from_secs(3)).unwrap();
    f.wait_applied();
    std::thread::sleep(Duration::from_secs(1));
    let served = f.batch(VIP4.into());
    assert!(!served.contains_key("real2"), "down real2 took new connections: {served:?}");
    f.lab.set_backend_health("real2", true).unwrap();
    f.wait_health(&["real2"], "up", INTERVAL * RISE + Duration::from_secs(3)).unwrap();
    f.wait_applied();
    let served = f.batch(VIP4.into());
    assert!(served.contains_key("real2"), "returning real2 takes new connections: {served:?}");
    std::thread::sleep(Duration::from_secs(1));

    stop.store(true, Ordering::SeqCst);
    let report = traffic.join().unwrap();
    assert!(report.rounds > 20, "{report:?}");
    assert!(report.failures.is_empty(), "{} of 300 long-lived connections failed: {:?}", report.failures.len(), report.failures);
    let stats = f.stats();
    assert!(stats.conn_table.hits > 300 * report.rounds / 2, "{:?}", stats.conn_table);
    assert_eq!(stats.conn_table.stale_repicks, 0, "{:?}", stats.conn_table);
    assert_eq!(stats.conn_table.size, 65536);
    assert!(fulcrum_api::render(&stats).contains("conn table: size=65536"));
}
