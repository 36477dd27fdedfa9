//! `cargo xtask demo`: the whole story in under a minute after the build.
//!
//! Builds everything, brings the namespace lab up, starts fulcrum on the
//! lb with `lab/demo.toml`, drives the VIP with wrk from the client and
//! shows the spread over the backends twice: as the backends saw it (their
//! `X-Served-By` answers) and as the XDP program counted it. Then one
//! backend fails its health check and the traffic moves to the others.
//! Through the L7 proxy it also shows a sticky session (curl with a cookie
//! jar) pinned to a backend, and re-stamped to another when that one fails.
//! Last, if `lab/demo.toml` has a `[[vrrp]]` instance, the failover: a
//! second balancer (`lb2`, with `lab/demo-lb2.toml`, the same file but a
//! lower priority) joins as Backup, the client switches to reaching the
//! VIP on-link, and while wrk runs, fulcrum on the lb stops: lb2 takes
//! the VIP over and wrk's connections carry on through it.
//!
//! Everything it starts is torn down on every exit path: the fulcrum
//! process and the lab are guards dropped in that order, and Ctrl-C only
//! raises a flag that the next wait turns into an error.
use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use fulcrum_api::StatsReport as Stats;
use fulcrum_lab::{host4, in_netns, interrupt, Lab, LabOptions, Proc, LB2_4, REALS, VIP4};

/// Namespace prefix of the demo's lab.
const PREFIX: &str = "fulcrum-demo";
/// The demo config's health-check interval and fall count (lab/demo.toml).
const CHECK_INTERVAL: Duration = Duration::from_secs(1);
const CHECK_FALL: u32 = 2;
/// How long fulcrum may take to load and see every backend up.
const ALL_UP_LIMIT: Duration = Duration::from_secs(15);
/// wrk's shape: threads, connections, and the two run lengths.
const WRK_THREADS: &str = "2";
const WRK_CONNECTIONS: &str = "30";
const WRK_FIRST_RUN: &str = "10s";
const WRK_SECOND_RUN: &str = "5s";
/// The L7 listener of lab/demo.toml, on the lb's own address.
const L7_URL: &str = "http://198.18.0.2:8080/";
/// The sticky route of lab/demo.toml (pool `app`).
const STICKY_URL: &str = "http://198.18.0.2:8080/app/";
/// The failover step's wrk run, and when into it the lb's fulcrum stops.
const WRK_FAILOVER_RUN: &str = "6s";
const STOP_AFTER: Duration = Duration::from_secs(2);

/// Runs the demo from the workspace at `root`; errors (including Ctrl-C)
/// come back after everything it started has been torn down.
pub fn run(root: &Path) -> Result<()> {
    interrupt::install()?;
    heading(1, "setup, build, lab up");
    crate::setup::run()?;
    crate::build::all(root)?;
    let started = Instant::now();
    let fulcrum = root.join("target/release/fulcrum");
    let log_path = root.join("target/fulcrum-demo.log");
    let result = story(root, &fulcrum, &log_path);
    if result.is_err() {
        eprintln!("\nthe demo failed; fulcrum's log is {}", log_path.display());
    } else {
        println!("\ndemo done in {:.1} s after the build", started.elapsed().as_secs_f64());
    }
    result
}

/// Steps 1 (lab) to 8; the lab and the fulcrum processes are torn down
/// when this returns, whichever way.
fn story(root: &Path, fulcrum: &Path, log_path: &Path) -> Result<()> {
    // A demo killed hard (SIGKILL) leaves its lab behind; these exact
    // names are the demo's own, so clear them first.
    Lab::down_by_prefix(PREFIX)?;
    // lb2 waits, without a daemon, for the failover step; until then the
    // client routes the VIP via the lb as in the basic lab.
    let mut lab = Lab::up_with(
        PREFIX,
        LabOptions { second_lb: true, vip_on_link: false, backend: Some(root.join("target/release/fulcrum-backend")) },
    )?;
    crate::lab::print_topology(&lab, root);

    heading(2, "start fulcrum on the lb and wait for its health checks");
    let config = root.join("lab/demo.toml");
    let log = fs::File::create(log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let mut cmd = lab.command("lb", fulcrum);
    cmd.arg("run").arg("--config").arg(&config);
    // The log is a file: plain text, no terminal colours.
    cmd.env("NO_COLOR", "1").stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
    println!("$ ip netns exec {} {} run --config {}", lab.ns("lb"), fulcrum.display(), config.display());
    println!("  log: {}", log_path.display());
    // Declared after `lab`, so it is dropped (stopped) before the lab goes.
    let mut daemon = lab.spawn(cmd)?;
    let stats = wait_until(&lab, fulcrum, &mut daemon, ALL_UP_LIMIT, "all 3 backends up", |s| {
        REALS.iter().all(|r| health(s, r) == "up")
    })?;
    let mut log_shown = 0;
    print_health_log(log_path, &mut log_shown)?;
    print_health(&stats);

    heading(3, &format!("wrk -t{WRK_THREADS} -c{WRK_CONNECTIONS} -d{WRK_FIRST_RUN} from the client to http://{VIP4}/"));
    let before = lab.fulcrum_stats(fulcrum)?;
    let served = run_wrk(&lab, root, WRK_FIRST_RUN, &format!("http://{VIP4}/"))?;

    heading(4, "the spread over the backends");
    let after = lab.fulcrum_stats(fulcrum)?;
    print_spread(&served, &before, &after);
    println!(
        "  XDP verdicts during the run: tx {} (sent to a backend), pass_not_vip {}, drop_no_backend {}",
        after.reason("tx").saturating_sub(before.reason("tx")),
        after.reason("pass_not_vip").saturating_sub(before.reason("pass_not_vip")),
        after.reason("drop_no_backend").saturating_sub(before.reason("drop_no_backend")),
    );
    // wrk keeps its connections open, and Maglev hashes connections, not
    // requests: an uneven split of 30 connections is expected.
    if let Some(real) = REALS.iter().find(|r| served.get(**r).copied().unwrap_or(0) == 0) {
        bail!("{real} served nothing: the balancer did not spread the load");
    }

    heading(5, &format!("the L7 path: wrk -t{WRK_THREADS} -c{WRK_CONNECTIONS} -d{WRK_SECOND_RUN} through fulcrum's HTTP proxy at {L7_URL}"));
    let before = lab.fulcrum_stats(fulcrum)?;
    let served = run_wrk(&lab, root, WRK_SECOND_RUN, L7_URL)?;
    let after = lab.fulcrum_stats(fulcrum)?;
    print_l7_spread(&served, &before, &after);
    // The proxy balances requests, not connections: byrequests with equal
    // weights serves each backend a third.
    if let Some(real) = REALS.iter().find(|r| served.get(**r).copied().unwrap_or(0) == 0) {
        bail!("{real} served nothing through the proxy");
    }

    heading(6, &format!("sticky sessions: curl with a cookie jar to {STICKY_URL} (pool app, stickysession=ROUTEID)"));
    let jar = lab.run_dir().join("cookies.txt");
    let sticky_route = sticky_session_on_real1(&lab, &jar)?;

    let wait = CHECK_INTERVAL * CHECK_FALL + Duration::from_secs(1);
    heading(7, &format!("real1 fails its health check; wait interval x fall + 1 s = {} s", wait.as_secs()));
    lab.set_backend_health("real1", false)?;
    println!("  real1's /health now answers 503");
    sleep(wait)?;
    let stats = wait_until(&lab, fulcrum, &mut daemon, Duration::from_secs(2), "real1 down", |s| {
        health(s, "real1") == "down"
    })?;
    print_health_log(log_path, &mut log_shown)?;
    print_health(&stats);
    println!("\n  wrk -d{WRK_SECOND_RUN} again:");
    let before = lab.fulcrum_stats(fulcrum)?;
    let served = run_wrk(&lab, root, WRK_SECOND_RUN, &format!("http://{VIP4}/"))?;
    let after = lab.fulcrum_stats(fulcrum)?;
    print_spread(&served, &before, &after);
    if let Some(n) = served.get("real1").filter(|n| **n > 0) {
        bail!("real1 is down but served {n} responses");
    }
    println!("  real1 got nothing: its connections went to real2 and real3");
    println!("\n  and through the L7 proxy, wrk -d{WRK_SECOND_RUN} {L7_URL}:");
    let before = lab.fulcrum_stats(fulcrum)?;
    let served = run_wrk(&lab, root, WRK_SECOND_RUN, L7_URL)?;
    let after = lab.fulcrum_stats(fulcrum)?;
    print_l7_spread(&served, &before, &after);
    if let Some(n) = served.get("real1").filter(|n| **n > 0) {
        bail!("real1 is down but the proxy sent it {n} requests");
    }
    println!("  real1 got nothing from the proxy either: one health state for L4 and L7");
    println!("\n  the sticky session pinned to real1 ({sticky_route}), with the same cookie jar:");
    let (by, cookie) = curl_sticky(&lab, &jar)?;
    let Some(restamped) = cookie else { bail!("the proxy did not re-stamp the session's cookie after real1 failed") };
    println!("  served by {by}, Set-Cookie: {restamped}: re-stamped to a member that is up");
    if by == "real1" || restamped == sticky_route {
        bail!("the session stayed on the failed real1 ({by}, {restamped})");
    }
    let (again, cookie) = curl_sticky(&lab, &jar)?;
    println!("  and the next request: served by {again}{}", cookie.map(|c| format!(", Set-Cookie: {c}")).unwrap_or_default());
    if again != by {
        bail!("the re-stamped session moved again, from {by} to {again}");
    }

    // Declared after `lab`, so it is stopped before the lab goes.
    let mut daemon2 = None;
    failover(&mut lab, root, fulcrum, &mut daemon, &mut daemon2)?;

    heading(9, "tear down");
    if let Some(mut daemon2) = daemon2 {
        let status = daemon2.stop(Duration::from_secs(5))?;
        println!("  fulcrum on lb2 stopped ({status})");
    }
    let status = daemon.stop(Duration::from_secs(5))?;
    println!("  fulcrum stopped ({status}); XDP detached with it");
    lab.down()?;
    println!("  lab {PREFIX} removed");
    Ok(())
}

/// Step 6: new sessions (an empty jar each) until one lands on real1
/// (`byrequests` takes each member in turn), then more requests with that
/// jar stay there. Returns the session's cookie (`ROUTEID=.r1`).
fn sticky_session_on_real1(lab: &Lab, jar: &Path) -> Result<String> {
    for _ in 0..2 * REALS.len() {
        let _ = fs::remove_file(jar);
        let (by, cookie) = curl_sticky(lab, jar)?;
        let cookie = cookie.with_context(|| format!("a new session on {by} got no ROUTEID cookie"))?;
        println!("$ curl -c {jar} -b {jar} {STICKY_URL}   (new session) -> served by {by}, Set-Cookie: {cookie}", jar = jar.display());
        if by != "real1" {
            continue;
        }
        let mut seen = Vec::new();
        for _ in 0..5 {
            let (by, set) = curl_sticky(lab, jar)?;
            if set.is_some() || by != "real1" {
                bail!("the session left real1: served by {by}, Set-Cookie {set:?}");
            }
            seen.push(by);
        }
        println!("  5 more requests with that jar: {}", seen.join(" "));
        return Ok(cookie);
    }
    bail!("no new session landed on real1 in {} tries", 2 * REALS.len())
}

/// One `curl` from the client to [`STICKY_URL`] that reads and writes the
/// cookie jar `jar`: the backend that answered (`X-Served-By`) and the
/// `ROUTEID` cookie the proxy set, if it set one (`ROUTEID=.r1`).
fn curl_sticky(lab: &Lab, jar: &Path) -> Result<(String, Option<String>)> {
    let jar = jar.to_str().context("cookie jar path")?;
    let head = lab.exec("client", &["curl", "-sS", "--max-time", "2", "-o", "/dev/null", "-D", "-", "-c", jar, "-b", jar, STICKY_URL])?;
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    };
    let by = header("x-served-by").with_context(|| format!("no X-Served-By in {head}"))?;
    let cookie = header("set-cookie").and_then(|c| c.split(';').next().map(str::to_string)).filter(|c| c.starts_with("ROUTEID="));
    Ok((by, cookie))
}

/// Step 8, VRRP failover, if lab/demo.toml configures VRRP: starts fulcrum
/// on lb2 (into `daemon2`), moves the client to on-link VIP routes, stops
/// `daemon` (the lb's) while wrk runs, and shows lb2 carrying on.
fn failover(lab: &mut Lab, root: &Path, fulcrum: &Path, daemon: &mut Proc, daemon2: &mut Option<Proc>) -> Result<()> {
    let instances = lab.vrrp_instances("lb", fulcrum)?;
    if instances.is_empty() {
        heading(8, "failover: skipped, lab/demo.toml has no [[vrrp]] instance");
        return Ok(());
    }
    heading(8, "failover: a second balancer (lb2) joins; the lb's fulcrum stops under load");
    lab.set_backend_health("real1", true)?;
    println!("  real1's /health answers 200 again: both balancers see three backends");
    let config = root.join("lab/demo-lb2.toml");
    let log_path = root.join("target/fulcrum-demo-lb2.log");
    let log = fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let mut cmd = lab.command("lb2", fulcrum);
    cmd.arg("run").arg("--config").arg(&config);
    cmd.env("NO_COLOR", "1").stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
    println!("$ ip netns exec {} {} run --config {}", lab.ns("lb2"), fulcrum.display(), config.display());
    println!("  lb2 is {LB2_4}; log: {}", log_path.display());
    let lb2 = daemon2.insert(lab.spawn(cmd)?);
    // The client stops routing the VIP via the lb and asks by ARP who has
    // it: the VRRP Master, which holds it on eth0, answers.
    lab.set_vip_on_link(true)?;
    println!("  the client now reaches {VIP4} on-link (198.18.1.0/24 dev eth0): the VRRP Master answers its ARP");
    // Both must see real1 up before wrk opens its connections: a flow the
    // lb placed while real1 was still down there may have another real in
    // lb2's table, and would be reset after the handover.
    wait_vrrp(lab, fulcrum, "lb2", lb2, "BACKUP", ALL_UP_LIMIT, |s| REALS.iter().all(|r| health(s, r) == "up"))?;
    wait_vrrp(lab, fulcrum, "lb", daemon, "MASTER", ALL_UP_LIMIT, |s| REALS.iter().all(|r| health(s, r) == "up"))?;
    print_vrrp(lab, fulcrum, &["lb", "lb2"])?;
    // One connection, so that the client has asked who holds the VIP.
    let vip = std::net::SocketAddr::from((VIP4, 80));
    in_netns(&lab.ns("client"), || std::net::TcpStream::connect_timeout(&vip, Duration::from_secs(1)))?
        .with_context(|| format!("connecting to {vip} on-link"))?;
    print_vip_neighbour(lab)?;

    println!("\n  wrk -d{WRK_FAILOVER_RUN} from the client to http://{VIP4}/; after {} s, SIGTERM to the lb's fulcrum:", STOP_AFTER.as_secs());
    let before = lab.fulcrum_stats_on("lb2", fulcrum)?;
    let wrk = start_wrk(lab, root, WRK_FAILOVER_RUN, &format!("http://{VIP4}/"))?;
    sleep(STOP_AFTER)?;
    let stopped = Instant::now();
    daemon.terminate()?;
    let took = wait_vrrp(lab, fulcrum, "lb2", lb2, "MASTER", Duration::from_secs(5), |_| true).map(|_| stopped.elapsed())?;
    println!("  lb2 is MASTER {:.0} ms after the SIGTERM", took.as_secs_f64() * 1000.0);
    let status = daemon.wait_timeout(Duration::from_secs(5))?;
    println!("  the lb's fulcrum exited ({})", status.map_or("still running".to_string(), |s| s.to_string()));
    let served = finish_wrk(wrk, WRK_FAILOVER_RUN)?;
    let after = lab.fulcrum_stats_on("lb2", fulcrum)?;
    print_vrrp(lab, fulcrum, &["lb2"])?;
    print_vip_neighbour(lab)?;
    println!("  responses over the whole run, and the packets lb2's XDP program sent on since it took over:");
    print_spread(&served, &before, &after);
    if after.reason("tx") <= before.reason("tx") {
        bail!("lb2 is MASTER but its XDP program forwarded nothing");
    }
    println!("  wrk's connections opened through the lb went on through lb2: both build the same Maglev tables");
    Ok(())
}

/// Polls the stats of the daemon in `host` until its first VRRP instance is
/// in `state` and `also` holds, at most `limit`.
fn wait_vrrp(
    lab: &Lab,
    fulcrum: &Path,
    host: &str,
    daemon: &mut Proc,
    state: &str,
    limit: Duration,
    also: impl Fn(&Stats) -> bool,
) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = daemon.try_wait()? {
            bail!("fulcrum on {host} exited ({status}) while waiting for {state}");
        }
        let last = match (lab.vrrp_instances(host, fulcrum), lab.fulcrum_stats_on(host, fulcrum)) {
            (Ok(v), Ok(stats)) if v.first().is_some_and(|i| i.state == state) && also(&stats) => return Ok(()),
            (Ok(v), Ok(stats)) => format!("{v:?}; {}", health_line(&stats)),
            (Err(e), _) | (_, Err(e)) => format!("{e:#}"),
        };
        if Instant::now() >= deadline {
            bail!("{host}: no {state} after {limit:?}; last: {last}");
        }
        sleep(Duration::from_millis(20))?;
    }
}

/// One line per VRRP instance of each host's daemon.
fn print_vrrp(lab: &Lab, fulcrum: &Path, hosts: &[&str]) -> Result<()> {
    for host in hosts {
        for i in lab.vrrp_instances(host, fulcrum)? {
            println!("  {host:<4} vrrp {:<6} {:<7} priority {}", i.name, i.state, i.priority);
        }
    }
    Ok(())
}

/// Which lb the client's ARP entry for the VIP points at.
fn print_vip_neighbour(lab: &Lab) -> Result<()> {
    let mac = lab.neighbour("client", VIP4.into())?;
    let owner = lab.lbs().iter().find(|h| lab.mac(h).ok() == mac);
    println!(
        "  the client's ARP entry for {VIP4}: {} ({})",
        mac.as_deref().unwrap_or("none"),
        owner.map_or("no lb".to_string(), |h| h.to_string())
    );
    Ok(())
}

fn heading(n: u32, title: &str) {
    println!("\n=== {n}. {title}");
}

/// Sleeps `d`, waking early with an error on Ctrl-C.
fn sleep(d: Duration) -> Result<()> {
    let deadline = Instant::now() + d;
    while Instant::now() < deadline {
        interrupt::check()?;
        std::thread::sleep(Duration::from_millis(50).min(deadline - Instant::now()));
    }
    Ok(())
}

/// Polls `fulcrum stats` until `done` holds, for at most `limit`; fails if
/// fulcrum exits meanwhile. Early failures to fetch (the admin endpoint not
/// listening yet) count as "not yet".
fn wait_until(
    lab: &Lab,
    fulcrum: &Path,
    daemon: &mut Proc,
    limit: Duration,
    what: &str,
    done: impl Fn(&Stats) -> bool,
) -> Result<Stats> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = daemon.try_wait()? {
            bail!("fulcrum exited ({status}) while waiting for {what}");
        }
        let last = match lab.fulcrum_stats(fulcrum) {
            Ok(stats) if done(&stats) => return Ok(stats),
            Ok(stats) => health_line(&stats),
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() >= deadline {
            bail!("no {what} after {limit:?}; last: {last}");
        }
        sleep(Duration::from_millis(250))?;
    }
}

/// A backend's health as fulcrum reports it ("up", "down", "unknown"), or
/// "missing" if the stats do not list it.
fn health<'a>(stats: &'a Stats, real: &str) -> &'a str {
    let address = host4(real).expect("lab real").to_string();
    stats.backend(&address).map_or("missing", |b| b.health.as_str())
}

fn health_line(stats: &Stats) -> String {
    REALS.iter().map(|r| format!("{r} {}", health(stats, r))).collect::<Vec<_>>().join(", ")
}

fn print_health(stats: &Stats) {
    println!("  fulcrum stats: {}", health_line(stats));
}

/// Shows what fulcrum logged about health since the last call; `shown`
/// is how many bytes of the log earlier calls went through.
fn print_health_log(log_path: &Path, shown: &mut usize) -> Result<()> {
    let log = fs::read_to_string(log_path)?;
    let new = log.get(*shown..).unwrap_or_default();
    // Only whole lines: the daemon may be writing the next one.
    let complete = new.rfind('\n').map_or(0, |i| i + 1);
    *shown += complete;
    println!("  fulcrum's log on health:");
    for line in new[..complete].lines().filter(|l| l.contains("health")) {
        println!("    {line}");
    }
    Ok(())
}

/// Runs wrk from the client against `url` with the served-by script,
/// shows its summary, and returns responses per backend name.
fn run_wrk(lab: &Lab, root: &Path, duration: &str, url: &str) -> Result<BTreeMap<String, u64>> {
    let wrk = start_wrk(lab, root, duration, url)?;
    finish_wrk(wrk, duration)
}

/// Starts wrk as [`run_wrk`] does, without waiting for it.
fn start_wrk(lab: &Lab, root: &Path, duration: &str, url: &str) -> Result<Proc> {
    let script: PathBuf = root.join("lab/served-by.lua");
    let mut cmd = lab.command("client", "wrk");
    cmd.args(["-t", WRK_THREADS, "-c", WRK_CONNECTIONS, "-d", duration, "--timeout", "2s", "-s"])
        .arg(&script)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    lab.spawn(cmd)
}

/// Waits for wrk started by [`start_wrk`] with `duration`, shows its
/// summary, and returns responses per backend name.
fn finish_wrk(mut wrk: Proc, duration: &str) -> Result<BTreeMap<String, u64>> {
    let limit = whole_secs(duration) + Duration::from_secs(10);
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = wrk.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            bail!("wrk still running after {limit:?}");
        }
        sleep(Duration::from_millis(100))?;
    };
    let mut out = String::new();
    wrk.stdout().context("wrk's stdout")?.read_to_string(&mut out)?;
    if !status.success() {
        bail!("wrk failed ({status}): {out}");
    }
    let mut served = BTreeMap::new();
    for line in out.lines() {
        match line.strip_prefix("served-by ").and_then(|rest| rest.split_once(' ')) {
            Some((name, count)) => {
                served.insert(name.to_string(), count.trim().parse::<u64>()?);
            }
            None => println!("  {line}"),
        }
    }
    Ok(served)
}

/// "10s" -> 10 s (wrk's durations in this file are whole seconds).
fn whole_secs(d: &str) -> Duration {
    Duration::from_secs(d.trim_end_matches('s').parse().expect("whole seconds"))
}

/// One row per backend: responses it served (from wrk) and packets XDP
/// sent it during the run (difference of two stats snapshots).
fn print_spread(served: &BTreeMap<String, u64>, before: &Stats, after: &Stats) {
    let total: u64 = served.values().sum();
    let packets = |s: &Stats, real: &str| {
        s.backend(&host4(real).expect("lab real").to_string()).map_or(0, |b| b.packets)
    };
    let total_packets: u64 = REALS.iter().map(|r| packets(after, r).saturating_sub(packets(before, r))).sum();
    println!("  {:<7} {:>6} {:>10} {:>7} {:>13} {:>7}", "backend", "health", "responses", "share", "XDP packets", "share");
    for real in REALS {
        let n = served.get(real).copied().unwrap_or(0);
        let p = packets(after, real).saturating_sub(packets(before, real));
        println!(
            "  {:<7} {:>6} {:>10} {:>6.1}% {:>13} {:>6.1}%",
            real,
            health(after, real),
            n,
            percent(n, total),
            p,
            percent(p, total_packets)
        );
    }
    if let Some(other) = served.keys().find(|k| !REALS.contains(&k.as_str())) {
        println!("  (responses without a known X-Served-By: {other} {})", served[other]);
    }
}

/// One row per backend: responses it served through the proxy (from wrk)
/// and the requests the proxy counted for it during the run.
fn print_l7_spread(served: &BTreeMap<String, u64>, before: &Stats, after: &Stats) {
    let total: u64 = served.values().sum();
    let requests = |s: &Stats, real: &str| {
        s.backend(&host4(real).expect("lab real").to_string()).and_then(|b| b.l7).map_or(0, |l7| l7.requests)
    };
    println!("  {:<7} {:>6} {:>10} {:>7} {:>15}", "backend", "health", "responses", "share", "proxy requests");
    for real in REALS {
        let n = served.get(real).copied().unwrap_or(0);
        println!(
            "  {:<7} {:>6} {:>10} {:>6.1}% {:>15}",
            real,
            health(after, real),
            n,
            percent(n, total),
            requests(after, real).saturating_sub(requests(before, real))
        );
    }
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}
