//! `cargo xtask bench failover`: the VRRP failover gap as the client sees
//! it, fulcrum against keepalived, in the namespace lab with two lbs
//! (issue 11, "Performance").
//!
//! Setup (like for like): the lab with `lb` (198.18.0.2, priority 150) and
//! `lb2` (198.18.0.3, priority 100) on one bridge and the VIP routed
//! on-link from the client, so whichever lb holds the VIP on eth0 answers
//! ARP for it. Both lbs run the same VRRP daemon, either `fulcrum run`
//! with one `[[vrrp]]` (VRRPv3, VRID 51, preempt, VIP/32) or keepalived
//! (`--vrrp`, `vrrp_version 3`, same VRID, priorities and interval,
//! `virtual_ipaddress` VIP/32 on eth0). What answers on the VIP is the
//! same in both cases: a `fulcrum-backend` on each lb listening on
//! 0.0.0.0:8080, so it answers on the VIP exactly while the node holds
//! the address. This measures VRRP takeover (adverts, timers, address,
//! gratuitous ARP), not the L4 datapath: fulcrum's config also has its
//! usual `[[vip]]` on port 80 (XDP attached, health checks running), but
//! port 8080 is no VIP port, so XDP passes the probes to the kernel.
//!
//! The prober (on the client, as in tests/failover.rs) opens a new TCP
//! connection to VIP:8080 every 10 ms, each on its own thread, and sends
//! one `GET /` (500 ms timeout); the gap is the longest interval without a
//! successful reply in the window from 200 ms before the event to 1 s
//! after the first reply from lb2. The events, on lb (the Master):
//!
//! - crash: the daemon gets SIGKILL and the responder on lb is killed
//!   with it (the node's service is gone; the VIP stays on lb's eth0 as
//!   neither daemon can remove it, and lb's kernel resets the probes until
//!   lb2's gratuitous ARP moves the client). keepalived's parent is
//!   stopped (SIGSTOP) first, so it cannot restart its VRRP child, then
//!   the child and the parent get SIGKILL.
//! - graceful: the daemon gets SIGTERM (priority-0 advert, VIP removed);
//!   the responder stays up.
//!
//! A sniffer on the client (raw socket, protocol 112, group 224.0.0.18)
//! records when lb's adverts arrive, so each crash round also reports the
//! time from lb's last advert to the first reply from lb2: the gap without
//! the random phase of the kill within an advert interval.
//!
//! Rounds interleave fulcrum and keepalived (A B A B) for each advert
//! interval and event; every round starts both daemons from scratch.
//! Medians and maxima are reported. Every wait is bounded; the lab (prefix
//! unique to this run) is torn down on every exit path, processes are
//! stopped by pid first.
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::mem::MaybeUninit;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use fulcrum_lab::{bin_path, host4, in_netns, interrupt, Lab, LabOptions, Proc, LB4, VIP4, web_service_toml};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::{machine, median, now, publish};

const KEEPALIVED: &str = "/usr/sbin/keepalived";
const VRID: u8 = 51;
const PRIORITY_LB: u8 = 150;
const PRIORITY_LB2: u8 = 100;
/// The responder's port on every lb (not a fulcrum VIP port).
const PORT: u16 = 8080;
const PROBE_EVERY: Duration = Duration::from_millis(10);
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// The window starts this long before the event.
const BEFORE: Duration = Duration::from_millis(200);
/// ... and ends this long after the first reply from lb2.
const AFTER: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Daemon {
    Fulcrum,
    Keepalived,
}

impl Daemon {
    fn name(self) -> &'static str {
        match self {
            Daemon::Fulcrum => "fulcrum",
            Daemon::Keepalived => "keepalived",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Event {
    Crash,
    Graceful,
}

impl Event {
    fn name(self) -> &'static str {
        match self {
            Event::Crash => "crash (SIGKILL)",
            Event::Graceful => "graceful stop (SIGTERM)",
        }
    }
}

/// One measured failover.
struct Round {
    gap: Duration,
    /// The event to lb2 holding the VIP (polled every ~10 ms with `ip`).
    takeover: Duration,
    /// lb's last advert seen by the client before the event, to the first
    /// reply from lb2 (None: no advert seen).
    from_last_advert: Option<Duration>,
    failed_probes: usize,
}

pub struct Opts {
    pub rounds: usize,
    pub adverts_ms: Vec<u64>,
    pub fulcrum: Option<PathBuf>,
    pub record: Option<PathBuf>,
}

pub fn run(opts: Opts) -> Result<()> {
    ensure!((1..=30).contains(&opts.rounds), "rounds must be 1..=30");
    ensure!(
        !opts.adverts_ms.is_empty() && opts.adverts_ms.iter().all(|&a| a % 10 == 0 && (10..=10_000).contains(&a)),
        "advert intervals must be whole centiseconds, 10..=10000 ms"
    );
    ensure!(Path::new(KEEPALIVED).exists(), "{KEEPALIVED} not installed (cargo xtask setup installs it)");
    interrupt::install()?;
    let fulcrum = match opts.fulcrum {
        Some(p) => p,
        None => bin_path("fulcrum")?,
    };
    let backend = bin_path("fulcrum-backend")?;
    let keepalived_version = Command::new(KEEPALIVED)
        .arg("--version")
        .output()
        .map(|o| {
            let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
            text.lines().next().unwrap_or("").trim().to_string()
        })
        .unwrap_or_default();
    let machine = machine();
    let prefix = format!("fbfo{}", std::process::id() % 100_000);
    let log_dir = std::env::temp_dir().join(format!("fulcrum-bench-{prefix}"));
    std::fs::create_dir_all(&log_dir).with_context(|| format!("creating {}", log_dir.display()))?;
    eprintln!("bench: lab {prefix}, daemon logs in {}", log_dir.display());
    let lab = Lab::up_with(&prefix, LabOptions { second_lb: true, vip_on_link: true, backend: None }).context("bringing up the lab")?;
    let bench = Bench { lab, fulcrum, backend, log_dir };
    let mut results: BTreeMap<(u64, Event, Daemon), Vec<Round>> = BTreeMap::new();
    let outcome = (|| -> Result<()> {
        for &advert in &opts.adverts_ms {
            for event in [Event::Crash, Event::Graceful] {
                for round in 0..opts.rounds {
                    for daemon in [Daemon::Fulcrum, Daemon::Keepalived] {
                        interrupt::check()?;
                        let label = format!("{} {advert} ms, {}, round {}", daemon.name(), event.name(), round + 1);
                        let r = bench.round(daemon, Duration::from_millis(advert), event, &label).with_context(|| label.clone())?;
                        eprintln!(
                            "bench: {label}: gap {}, takeover {}, from last advert {}, failed probes {}",
                            ms(r.gap),
                            ms(r.takeover),
                            r.from_last_advert.map_or("-".into(), ms),
                            r.failed_probes
                        );
                        results.entry((advert, event, daemon)).or_default().push(r);
                    }
                }
            }
        }
        Ok(())
    })();
    let Bench { lab, .. } = bench;
    let down = lab.down();
    outcome?;
    down.context("tearing the lab down")?;
    publish(&report(&results, &opts.adverts_ms, opts.rounds, &keepalived_version, &machine), opts.record.as_deref())
}

struct Bench {
    lab: Lab,
    fulcrum: PathBuf,
    backend: PathBuf,
    log_dir: PathBuf,
}

/// The VRRP daemon on one lb, stopped (by pid) on drop.
enum Node {
    Fulcrum(Proc),
    Keepalived(Keepalived),
}

impl Node {
    fn crash(&mut self) -> Result<()> {
        match self {
            Node::Fulcrum(p) => p.kill().map(|_| ()),
            Node::Keepalived(k) => k.crash(),
        }
    }

    fn terminate(&mut self) -> Result<()> {
        match self {
            Node::Fulcrum(p) => p.terminate(),
            Node::Keepalived(k) => k.parent.terminate(),
        }
    }

    fn exited(&mut self) -> Result<bool> {
        let p = match self {
            Node::Fulcrum(p) => p,
            Node::Keepalived(k) => &mut k.parent,
        };
        Ok(p.try_wait()?.is_some())
    }

    fn wait_exit(&mut self, limit: Duration) -> Result<()> {
        let p = match self {
            Node::Fulcrum(p) => p,
            Node::Keepalived(k) => &mut k.parent,
        };
        ensure!(p.wait_timeout(limit)?.is_some(), "did not exit within {limit:?} of SIGTERM");
        Ok(())
    }
}

/// keepalived (`--dont-fork --vrrp`) in one namespace: the parent is a
/// [`Proc`]; its VRRP child's pid is read from the `--vrrp_pid` file and
/// killed on drop if it is still keepalived.
struct Keepalived {
    parent: Proc,
    vrrp_pid_file: PathBuf,
}

impl Keepalived {
    fn vrrp_pid(&self) -> Option<i32> {
        let pid: i32 = std::fs::read_to_string(&self.vrrp_pid_file).ok()?.trim().parse().ok()?;
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        (comm.trim() == "keepalived").then_some(pid)
    }

    /// SIGSTOP the parent (so it cannot restart the child), SIGKILL the
    /// VRRP child, SIGKILL the parent.
    fn crash(&mut self) -> Result<()> {
        let child = self.vrrp_pid().context("keepalived's VRRP child is not running")?;
        if self.parent.try_wait()?.is_none() {
            kill(Pid::from_raw(self.parent.pid() as i32), Signal::SIGSTOP)?;
        }
        kill(Pid::from_raw(child), Signal::SIGKILL)?;
        self.parent.kill()?;
        Ok(())
    }
}

impl Drop for Keepalived {
    fn drop(&mut self) {
        let child = self.vrrp_pid();
        let _ = self.parent.stop(Duration::from_secs(3));
        if let Some(pid) = child {
            if std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "keepalived") {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
}

impl Bench {
    /// Starts the VRRP daemon of `daemon` kind on `host`.
    fn start(&self, daemon: Daemon, host: &str, priority: u8, advert: Duration, tag: &str) -> Result<Node> {
        let log_path = self.log_dir.join(format!("{tag}-{host}.log"));
        let log = std::fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
        let dir = self.lab.run_dir().join(format!("{tag}-{host}"));
        std::fs::create_dir_all(&dir)?;
        match daemon {
            Daemon::Fulcrum => {
                let config = dir.join("fulcrum.toml");
                std::fs::write(&config, fulcrum_toml(priority, advert))?;
                let mut cmd = self.lab.command(host, &self.fulcrum);
                cmd.arg("run").arg("--config").arg(&config).env("NO_COLOR", "1");
                cmd.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
                Ok(Node::Fulcrum(self.lab.spawn(cmd)?))
            }
            Daemon::Keepalived => {
                let conf = dir.join("keepalived.conf");
                std::fs::write(&conf, keepalived_conf(priority, advert))?;
                let vrrp_pid_file = dir.join("vrrp.pid");
                let mut cmd = self.lab.command(host, KEEPALIVED);
                cmd.args(["--dont-fork", "--log-console", "--log-detail", "--vrrp", "--use-file"])
                    .arg(&conf)
                    .arg("--pid")
                    .arg(dir.join("keepalived.pid"))
                    .arg("--vrrp_pid")
                    .arg(&vrrp_pid_file);
                cmd.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
                let mut k = Keepalived { parent: self.lab.spawn(cmd)?, vrrp_pid_file };
                let deadline = Instant::now() + Duration::from_secs(5);
                while k.vrrp_pid().is_none() {
                    if k.parent.try_wait()?.is_some() {
                        bail!("keepalived on {host} exited; log {}", log_path.display());
                    }
                    ensure!(Instant::now() < deadline, "keepalived's VRRP child on {host} did not start");
                    std::thread::sleep(Duration::from_millis(20));
                }
                Ok(Node::Keepalived(k))
            }
        }
    }

    fn responder(&self, host: &str) -> Result<Proc> {
        let mut cmd = self.lab.command(host, &self.backend);
        cmd.args(["--name", host, "--listen", &format!("0.0.0.0:{PORT}"), "--health-file"])
            .arg(self.lab.run_dir().join(format!("{host}-responder.unhealthy")))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut p = self.lab.spawn(cmd)?;
        let addr = SocketAddr::from((host4(host).context("lab host")?, PORT));
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let up = in_netns(&self.lab.ns(host), || TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok())?;
            if up {
                return Ok(p);
            }
            ensure!(p.try_wait()?.is_none(), "responder on {host} exited");
            ensure!(Instant::now() < deadline, "responder on {host} not listening");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn holds_vip(&self, host: &str) -> Result<bool> {
        self.lab.has_address(host, VIP4.into())
    }

    /// Back to a clean slate: no VIP on either lb, no XDP program left,
    /// no neighbour entry for the VIP on the client.
    fn reset(&self) -> Result<()> {
        let vip = format!("{VIP4}/32");
        for lb in ["lb", "lb2"] {
            self.lab.exec(lb, &["ip", "addr", "flush", "to", &vip, "dev", "eth0"])?;
            // aya attaches through a bpf_link, gone with the process; this
            // is for a program some other way left behind.
            let _ = self.lab.exec(lb, &["ip", "link", "set", "dev", "eth0", "xdp", "off"]);
        }
        let _ = self.lab.exec("client", &["ip", "neigh", "flush", "to", &VIP4.to_string(), "dev", "eth0"]);
        Ok(())
    }

    fn round(&self, daemon: Daemon, advert: Duration, event: Event, label: &str) -> Result<Round> {
        self.reset()?;
        let tag = format!("{}-{}ms-{}", daemon.name(), advert.as_millis(), label.rsplit(' ').next().unwrap_or("0"));
        let tag = format!("{tag}-{}", if event == Event::Crash { "crash" } else { "graceful" });
        let mut resp_lb = Some(self.responder("lb")?);
        let _resp_lb2 = self.responder("lb2")?;
        let mut lb = Some(self.start(daemon, "lb", PRIORITY_LB, advert, &tag)?);
        let mut lb2 = self.start(daemon, "lb2", PRIORITY_LB2, advert, &tag)?;
        let logs = || format!("logs {}/{tag}-lb*.log", self.log_dir.display());

        // lb Master (holds the VIP), lb2 Backup.
        let deadline = Instant::now() + advert * 4 + Duration::from_secs(15);
        loop {
            interrupt::check()?;
            if self.holds_vip("lb")? && !self.holds_vip("lb2")? {
                break;
            }
            for (h, n) in [("lb", lb.as_mut().unwrap()), ("lb2", &mut lb2)] {
                ensure!(!n.exited()?, "{} on {h} exited; {}", daemon.name(), logs());
            }
            ensure!(Instant::now() < deadline, "lb did not become the only VIP holder; {}", logs());
            std::thread::sleep(Duration::from_millis(20));
        }
        // Let lb2 see several adverts (it learns the Master's interval).
        std::thread::sleep(advert * 3 + Duration::from_millis(300));
        ensure!(self.holds_vip("lb")? && !self.holds_vip("lb2")?, "the VIP moved before the event; {}", logs());

        let sniffer = Sniffer::start(&self.lab)?;
        let prober = Prober::start(&self.lab);
        // Probes answered by lb, every one of the last 300 ms.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            interrupt::check()?;
            std::thread::sleep(Duration::from_millis(100));
            if prober.all_from_since(Instant::now() - Duration::from_millis(300), "lb") {
                break;
            }
            ensure!(Instant::now() < deadline, "probes are not all answered by lb: {:?}", prober.summary());
        }
        // A full interval of adverts seen before the event.
        std::thread::sleep(advert.max(Duration::from_millis(300)));

        let t0 = Instant::now();
        match event {
            Event::Crash => {
                lb.as_mut().unwrap().crash()?;
                resp_lb.as_mut().unwrap().kill()?;
            }
            Event::Graceful => lb.as_mut().unwrap().terminate()?,
        }
        let limit = advert * 4 + Duration::from_secs(3);
        let takeover = loop {
            interrupt::check()?;
            if self.holds_vip("lb2")? {
                break t0.elapsed();
            }
            ensure!(t0.elapsed() < limit, "lb2 did not take the VIP within {limit:?}; {}", logs());
            std::thread::sleep(Duration::from_millis(10));
        };
        let first_lb2 = loop {
            interrupt::check()?;
            if let Some(t) = prober.first_from_since(t0, "lb2") {
                break t;
            }
            ensure!(t0.elapsed() < limit + Duration::from_secs(2), "no reply from lb2: {:?}", prober.summary());
            std::thread::sleep(Duration::from_millis(10));
        };
        std::thread::sleep((first_lb2 + AFTER).saturating_duration_since(Instant::now()));
        let t_end = Instant::now();
        let (gap, failed_probes) = prober.gap(t0 - BEFORE, t_end);
        ensure!(prober.all_from_since(t_end - Duration::from_millis(300), "lb2"), "probes after the takeover: {:?}", prober.summary());
        drop(prober);
        let last_advert = sniffer.last_from_before(LB4, t0);
        drop(sniffer);
        let from_last_advert = last_advert.map(|t| first_lb2 - t);

        if event == Event::Graceful {
            lb.as_mut().unwrap().wait_exit(Duration::from_secs(5))?;
        }
        // Stop in order: lb2's daemon, then lb's leftovers, then responders.
        drop(lb2);
        drop(lb.take());
        drop(resp_lb.take());
        Ok(Round { gap, takeover, from_last_advert, failed_probes })
    }
}

fn fulcrum_toml(priority: u8, advert: Duration) -> String {
    format!(
        r#"{}
[[vrrp]]
name = "vi4"
vrid = {VRID}
priority = {priority}
advert_interval = "{advert}ms"
version = 3
preempt = true
addresses = ["{VIP4}/32"]
"#,
        web_service_toml(Duration::from_millis(500), 2, 2),
        advert = advert.as_millis(),
    )
}

fn keepalived_conf(priority: u8, advert: Duration) -> String {
    format!(
        "global_defs {{\n    router_id fulcrum_bench\n    vrrp_version 3\n}}\n\
         vrrp_instance VI_1 {{\n    state BACKUP\n    interface eth0\n    virtual_router_id {VRID}\n\
         \x20   priority {priority}\n    advert_int {advert}\n\
         \x20   virtual_ipaddress {{\n        {VIP4}/32 dev eth0\n    }}\n}}\n",
        advert = advert.as_secs_f64(),
    )
}

/// One `GET /` on a new connection; the `X-Served-By` value.
fn get(addr: SocketAddr, timeout: Duration) -> Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, timeout).context("connect")?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(s, "GET / HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).context("read")?;
    let (head, _) = resp.split_once("\r\n\r\n").context("no end of headers")?;
    ensure!(head.starts_with("HTTP/1.1 200"), "unexpected response: {head}");
    head.lines()
        .find_map(|l| l.split_once(':').filter(|(k, _)| k.trim().eq_ignore_ascii_case("x-served-by")))
        .map(|(_, v)| v.trim().to_string())
        .context("no X-Served-By")
}

type Replies = Arc<Mutex<Vec<(Instant, Result<String, String>)>>>;

/// A new connection with one request to VIP:8080 every [`PROBE_EVERY`],
/// each on its own thread (a lost SYN does not delay the next probe), from
/// the client's namespace; records when each finished and who answered.
struct Prober {
    replies: Replies,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Prober {
    fn start(lab: &Lab) -> Prober {
        let replies: Replies = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, st) = (replies.clone(), stop.clone());
        let ns = lab.ns("client");
        let thread = std::thread::spawn(move || {
            let _ = in_netns(&ns, move || {
                let addr = SocketAddr::new(VIP4.into(), PORT);
                let mut next = Instant::now();
                let mut probes = Vec::new();
                // Bounded: the bench stops it; a minute is far beyond a round.
                let end = Instant::now() + Duration::from_secs(60);
                while !st.load(Ordering::SeqCst) && Instant::now() < end {
                    let r = r.clone();
                    probes.push(std::thread::spawn(move || {
                        let res = get(addr, PROBE_TIMEOUT).map_err(|e| format!("{e:#}"));
                        r.lock().unwrap().push((Instant::now(), res));
                    }));
                    probes.retain(|p: &std::thread::JoinHandle<()>| !p.is_finished());
                    next += PROBE_EVERY;
                    std::thread::sleep(next.saturating_duration_since(Instant::now()));
                }
                for p in probes {
                    let _ = p.join();
                }
            });
        });
        Prober { replies, stop, thread: Some(thread) }
    }

    /// The longest interval between successive successful replies (or the
    /// window's edges) within `from..=to`, and the failed probes in it.
    fn gap(&self, from: Instant, to: Instant) -> (Duration, usize) {
        let replies = self.replies.lock().unwrap();
        let mut ok: Vec<Instant> = replies.iter().filter(|(t, r)| r.is_ok() && *t >= from && *t <= to).map(|(t, _)| *t).collect();
        ok.sort();
        let failed = replies.iter().filter(|(t, r)| r.is_err() && *t >= from && *t <= to).count();
        let mut gap = Duration::ZERO;
        let mut last = from;
        for t in ok.into_iter().chain(std::iter::once(to)) {
            gap = gap.max(t - last);
            last = t;
        }
        (gap, failed)
    }

    /// Whether some probe finished since `from` and every one was answered by `host`.
    fn all_from_since(&self, from: Instant, host: &str) -> bool {
        let replies = self.replies.lock().unwrap();
        let mut since = replies.iter().filter(|(t, _)| *t >= from).peekable();
        since.peek().is_some() && since.all(|(_, r)| r.as_deref() == Ok(host))
    }

    fn first_from_since(&self, from: Instant, host: &str) -> Option<Instant> {
        self.replies.lock().unwrap().iter().filter(|(t, r)| *t >= from && r.as_deref() == Ok(host)).map(|(t, _)| *t).min()
    }

    /// Outcomes of the last second, counted.
    fn summary(&self) -> BTreeMap<String, usize> {
        let from = Instant::now() - Duration::from_secs(1);
        let mut m = BTreeMap::new();
        for (_, r) in self.replies.lock().unwrap().iter().filter(|(t, _)| *t >= from) {
            *m.entry(r.clone().unwrap_or_else(|e| e)).or_insert(0) += 1;
        }
        m
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

/// Records when VRRP adverts (protocol 112 to 224.0.0.18) reach the
/// client, and from which source address.
struct Sniffer {
    seen: Arc<Mutex<Vec<(Instant, Ipv4Addr)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sniffer {
    fn start(lab: &Lab) -> Result<Sniffer> {
        use socket2::{Domain, Protocol, Socket, Type};
        let client = host4("client").unwrap();
        let socket = in_netns(&lab.ns("client"), move || -> Result<Socket> {
            let s = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(112)))?;
            s.join_multicast_v4(&Ipv4Addr::new(224, 0, 0, 18), &client)?;
            s.set_read_timeout(Some(Duration::from_millis(50)))?;
            Ok(s)
        })??;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (sn, st) = (seen.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = [MaybeUninit::<u8>::uninit(); 2048];
            let end = Instant::now() + Duration::from_secs(60);
            while !st.load(Ordering::SeqCst) && Instant::now() < end {
                if let Ok((_, from)) = socket.recv_from(&mut buf) {
                    if let Some(SocketAddr::V4(a)) = from.as_socket() {
                        sn.lock().unwrap().push((Instant::now(), *a.ip()));
                    }
                }
            }
        });
        Ok(Sniffer { seen, stop, thread: Some(thread) })
    }

    fn last_from_before(&self, src: Ipv4Addr, before: Instant) -> Option<Instant> {
        self.seen.lock().unwrap().iter().filter(|(t, a)| *a == src && *t <= before).map(|(t, _)| *t).max()
    }
}

impl Drop for Sniffer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn secs(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64())
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1e3)
}

fn med_max(v: impl Iterator<Item = Duration>) -> (String, String) {
    let mut v: Vec<f64> = v.map(|d| d.as_secs_f64()).collect();
    if v.is_empty() {
        return ("-".into(), "-".into());
    }
    let max = v.iter().copied().fold(0.0, f64::max);
    (format!("{:.2}", median(&mut v)), format!("{max:.2}"))
}

fn report(results: &BTreeMap<(u64, Event, Daemon), Vec<Round>>, adverts: &[u64], rounds: usize, keepalived: &str, machine: &str) -> String {
    let mut s = format!("\n## failover — {}\n\n", now());
    s.push_str(&format!(
        "`cargo xtask bench failover` ({rounds} rounds per cell, fulcrum and keepalived interleaved A B A B; \
         lab with lb (priority {PRIORITY_LB}) and lb2 (priority {PRIORITY_LB2}), VRRPv3 VRID {VRID}, preempt, VIP {VIP4}/32 on eth0, \
         on-link from the client; on each lb a `fulcrum-backend` on 0.0.0.0:{PORT} answers on the VIP while the lb holds it, \
         for both daemons (VRRP takeover, not the XDP path); probe: new TCP connection + `GET /` to VIP:{PORT} every 10 ms \
         from the client, 500 ms timeout; gap: longest interval without a reply from 200 ms before the event to 1 s after \
         lb2's first reply; crash = SIGKILL of the daemon and of lb's responder (keepalived: parent SIGSTOP, VRRP child and \
         parent SIGKILL), graceful = SIGTERM of the daemon; {keepalived}; {machine})\n\n"
    ));
    s.push_str("| advert | event | fulcrum gap median s | max s | keepalived gap median s | max s | target (fulcrum <= keepalived) |\n");
    s.push_str("|---|---|---:|---:|---:|---:|---|\n");
    for &a in adverts {
        for e in [Event::Crash, Event::Graceful] {
            let f = results.get(&(a, e, Daemon::Fulcrum));
            let k = results.get(&(a, e, Daemon::Keepalived));
            let (fm, fx) = med_max(f.into_iter().flatten().map(|r| r.gap));
            let (km, kx) = med_max(k.into_iter().flatten().map(|r| r.gap));
            let verdict = match (fm.parse::<f64>(), km.parse::<f64>()) {
                (Ok(f), Ok(k)) if f <= k => "met",
                (Ok(_), Ok(_)) => "missed",
                _ => "-",
            };
            s.push_str(&format!("| {a} ms | {} | {fm} | {fx} | {km} | {kx} | {verdict} |\n", e.name()));
        }
    }
    s.push_str("\nTakeover (event to lb2 holding the VIP, polled with `ip` every ~10 ms) and, for crashes, lb's last advert \
                seen by the client to lb2's first reply (the gap without the kill's random phase in the interval), medians in s:\n\n");
    s.push_str("| advert | event | fulcrum takeover | keepalived takeover | fulcrum last advert to reply | keepalived last advert to reply |\n");
    s.push_str("|---|---|---:|---:|---:|---:|\n");
    for &a in adverts {
        for e in [Event::Crash, Event::Graceful] {
            let get = |d| results.get(&(a, e, d)).map(|v| v.as_slice()).unwrap_or(&[]);
            let (ft, _) = med_max(get(Daemon::Fulcrum).iter().map(|r| r.takeover));
            let (kt, _) = med_max(get(Daemon::Keepalived).iter().map(|r| r.takeover));
            let (fl, _) = med_max(get(Daemon::Fulcrum).iter().filter_map(|r| r.from_last_advert));
            let (kl, _) = med_max(get(Daemon::Keepalived).iter().filter_map(|r| r.from_last_advert));
            let (fl, kl) = if e == Event::Crash { (fl, kl) } else { ("-".into(), "-".into()) };
            s.push_str(&format!("| {a} ms | {} | {ft} | {kt} | {fl} | {kl} |\n", e.name()));
        }
    }
    s.push_str("\nPer round gaps in s (failed probes):\n\n");
    for ((a, e, d), rs) in results {
        let list: Vec<String> = rs.iter().map(|r| format!("{} ({})", secs(r.gap), r.failed_probes)).collect();
        s.push_str(&format!("- {a} ms, {}, {}: {}\n", e.name(), d.name(), list.join(", ")));
    }
    s
}
