//! A small namespace lab for the VRRP shell tests: `n` routers and an
//! observer on one bridge.
//!
//! ```text
//!  {prefix}-r1   eth0 198.19.{net}.1  fd00:19:{net}::1  ─┐
//!  {prefix}-r2   eth0 198.19.{net}.2  fd00:19:{net}::2  ─┤  br0 in {prefix}-sw
//!  ...                                                   │  (snooping off)
//!  {prefix}-obs  eth0 198.19.{net}.100 fd00:19:{net}::100┘
//! ```
//!
//! Every namespace name starts with a prefix unique to this process and
//! lab (`vr{pid}x{n}`), and `{net}` differs per lab too. The veths are
//! created inside the namespaces (none in the host's), and dropping the
//! lab deletes the namespaces, which removes everything else.
#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use fulcrum_lab::{in_netns, run_checked};
use fulcrum_vrrp::shell::{self, Instance, InstanceConfig, StateChange};

static LABS: AtomicU32 = AtomicU32::new(0);

pub struct VrrpLab {
    pub prefix: String,
    pub net: u8,
    pub routers: usize,
    created: Vec<String>,
}

pub fn ip(args: &[&str]) -> Result<String> {
    run_checked(Command::new("ip").args(args))
}

fn sysctl(ns: &str, key: &str, value: &str) -> Result<()> {
    run_checked(Command::new("ip").args([
        "netns",
        "exec",
        ns,
        "sysctl",
        "-qw",
        &format!("{key}={value}"),
    ]))
    .map(drop)
}

impl VrrpLab {
    pub fn up(routers: usize) -> Result<VrrpLab> {
        if !is_root() {
            bail!("the VRRP shell tests need root (namespaces, raw sockets)");
        }
        let n = LABS.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let prefix = format!("vr{pid}x{n}");
        let net = ((pid.wrapping_mul(7) + n * 13) % 200 + 20) as u8;
        let mut lab = VrrpLab {
            prefix,
            net,
            routers,
            created: Vec::new(),
        };
        lab.build().context("building the VRRP lab")?;
        Ok(lab)
    }

    pub fn ns(&self, host: &str) -> String {
        format!("{}-{host}", self.prefix)
    }

    pub fn router(&self, i: usize) -> String {
        self.ns(&format!("r{i}"))
    }

    pub fn observer(&self) -> String {
        self.ns("obs")
    }

    pub fn addr4(&self, host_octet: u8) -> Ipv4Addr {
        Ipv4Addr::new(198, 19, self.net, host_octet)
    }

    pub fn addr6(&self, host: u16) -> Ipv6Addr {
        Ipv6Addr::new(0xfd00, 0x19, u16::from(self.net), 0, 0, 0, 0, host)
    }

    /// The IPv4 VIP of this lab.
    pub fn vip4(&self) -> Ipv4Addr {
        self.addr4(200)
    }

    /// The IPv6 VIP of this lab.
    pub fn vip6(&self) -> Ipv6Addr {
        self.addr6(0x200)
    }

    fn build(&mut self) -> Result<()> {
        let sw = self.ns("sw");
        let mut hosts: Vec<(String, u8)> = (1..=self.routers)
            .map(|i| (self.router(i), i as u8))
            .collect();
        hosts.push((self.observer(), 100));
        for ns in std::iter::once(&sw).chain(hosts.iter().map(|(n, _)| n)) {
            ip(&["netns", "add", ns])?;
            self.created.push(ns.clone());
            // Addresses usable at once: no duplicate address detection.
            sysctl(ns, "net.ipv6.conf.default.accept_dad", "0")?;
            sysctl(ns, "net.ipv6.conf.all.accept_dad", "0")?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        // Multicast snooping off: the bridge floods 224.0.0.18 / ff02::12
        // without waiting for membership reports.
        ip(&[
            "-n",
            &sw,
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "mcast_snooping",
            "0",
            "forward_delay",
            "0",
        ])?;
        ip(&["-n", &sw, "link", "set", "br0", "up"])?;
        for (i, (ns, octet)) in hosts.iter().enumerate() {
            let port = format!("p{i}");
            ip(&[
                "-n", &sw, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                ns,
            ])?;
            ip(&["-n", &sw, "link", "set", &port, "master", "br0", "up"])?;
            let a4 = format!("{}/24", self.addr4(*octet));
            let a6 = format!("{}/64", self.addr6(u16::from(*octet)));
            ip(&["-n", ns, "addr", "add", &a4, "dev", "eth0"])?;
            ip(&["-n", ns, "addr", "add", &a6, "dev", "eth0", "nodad"])?;
            ip(&["-n", ns, "link", "set", "eth0", "up"])?;
        }
        Ok(())
    }

    /// Sets router `i`'s switch port up or down (its eth0 loses carrier):
    /// a network partition.
    pub fn set_port(&self, i: usize, up: bool) -> Result<()> {
        let port = format!("p{}", i - 1);
        ip(&[
            "-n",
            &self.ns("sw"),
            "link",
            "set",
            &port,
            if up { "up" } else { "down" },
        ])
        .map(drop)
    }

    /// Whether `addr` is on eth0 of namespace `ns` (`ip -n NS addr`).
    pub fn has_addr(&self, ns: &str, addr: IpAddr) -> bool {
        ip(&["-n", ns, "-o", "addr", "show", "dev", "eth0"])
            .map(|out| {
                out.split_whitespace()
                    .any(|w| w.split('/').next() == Some(&addr.to_string()))
            })
            .unwrap_or(false)
    }

    /// The namespaces (of routers 1..=n) holding `addr` on eth0.
    pub fn holders(&self, addr: IpAddr) -> Vec<usize> {
        (1..=self.routers)
            .filter(|i| self.has_addr(&self.router(*i), addr))
            .collect()
    }

    /// eth0's MAC address in `ns`.
    pub fn mac(&self, ns: &str) -> Result<String> {
        let out = ip(&["-n", ns, "-o", "link", "show", "dev", "eth0"])?;
        let mut words = out.split_whitespace();
        while let Some(w) = words.next() {
            if w == "link/ether" {
                return Ok(words.next().context("no MAC after link/ether")?.to_string());
            }
        }
        bail!("no MAC in {out}")
    }

    /// The observer's neighbour entry for `addr`: its MAC, if any.
    pub fn observer_neighbour(&self, addr: IpAddr) -> Option<String> {
        let out = ip(&["-n", &self.observer(), "neigh", "show", &addr.to_string()]).ok()?;
        let mut words = out.split_whitespace();
        while let Some(w) = words.next() {
            if w == "lladdr" {
                return words.next().map(str::to_string);
            }
        }
        None
    }

    /// Whether the observer reaches `addr`: a UDP datagram to port 9
    /// from the observer's namespace comes back as an ICMP port
    /// unreachable (ECONNREFUSED on the connected socket) within a second.
    /// (No `ping` binary needed; it also resolves the neighbour entry.)
    pub fn observer_reaches(&self, addr: IpAddr) -> bool {
        in_netns(&self.observer(), move || -> std::io::Result<bool> {
            let any: IpAddr = if addr.is_ipv4() { Ipv4Addr::UNSPECIFIED.into() } else { Ipv6Addr::UNSPECIFIED.into() };
            let s = std::net::UdpSocket::bind((any, 0))?;
            s.connect((addr, 9))?;
            s.set_read_timeout(Some(Duration::from_secs(1)))?;
            s.send(b"probe")?;
            let mut b = [0u8; 16];
            Ok(matches!(s.recv(&mut b), Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused))
        })
        .map(|r| r.unwrap_or(false))
        .unwrap_or(false)
    }

    /// Starts an instance in router `i`'s namespace.
    pub fn spawn(
        &self,
        i: usize,
        cfg: InstanceConfig,
    ) -> Result<(Instance, mpsc::Receiver<StateChange>)> {
        let (tx, rx) = mpsc::channel();
        let inst = in_netns(&self.router(i), move || shell::spawn(cfg, tx))??;
        Ok((inst, rx))
    }
}

impl Drop for VrrpLab {
    fn drop(&mut self) {
        for ns in self.created.iter().rev() {
            if let Err(e) = ip(&["netns", "del", ns]) {
                eprintln!("removing namespace {ns}: {e}");
            }
        }
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

/// Polls `cond` every 10 ms until it holds or `within` passes.
pub fn wait_for(within: Duration, what: &str, mut cond: impl FnMut() -> bool) -> Result<()> {
    let end = Instant::now() + within;
    loop {
        if cond() {
            return Ok(());
        }
        if Instant::now() >= end {
            bail!("timed out after {within:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The next report on `rx` entering `state`, within `within`.
pub fn wait_state(
    rx: &mpsc::Receiver<StateChange>,
    state: fulcrum_vrrp::State,
    within: Duration,
) -> Result<StateChange> {
    let end = Instant::now() + within;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(c) if c.state == state => return Ok(c),
            Ok(_) => {}
            Err(_) => bail!("no transition to {state} within {within:?}"),
        }
    }
}
