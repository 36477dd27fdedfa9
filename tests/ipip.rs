//! IPIP and IP6IP6 end to end: the reals sit on another L3 network,
//! behind a router, and run `fulcrum decap`; real HTTP flows through the
//! VIP.
//!
//! The topology is built here (the shared lab is one L2 segment), from
//! `fulcrum-lab`'s helpers, under a per-run prefix, and removed on every
//! exit path (the `Topology` guard's drop). IPv4 (IPv6 alike, in
//! fd00:18:4::/64, fd00:18:5::/64, VIP fd00:18:6::1):
//!
//! ```text
//!  {p}-client 198.18.4.10 ─┐ br-a 198.18.4.1          br-b 198.18.5.1 ┌─ {p}-real1 198.18.5.11
//!  {p}-lb     198.18.4.2  ─┘      ({p}-router, forwarding)             └─ {p}-real2 198.18.5.12
//!  VIP 198.18.6.1: the client routes it via the lb; the reals hold it on lo.
//! ```
//!
//! The lb encapsulates to each real's address; the configuration gives no
//! MAC for the reals, so the lb finds the next hop itself: the route to
//! each real goes via the router, so frames carry the router's MAC (from
//! the lb's neighbour entry for the router, which the health checks
//! resolve). The router forwards the IPIP packets like any other (this
//! kernel has no ipip module, so nothing decapsulates them on the way);
//! `fulcrum decap` on each real's eth0 strips the outer header; the real
//! answers the client directly through the router (DSR). Needs root.
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use fulcrum_lab::{bin_path, in_netns, netns_command, run_checked, Proc};

/// One address family's addresses for the topology.
struct Addressing {
    /// Namespace prefix tag, so the two tests never share names.
    tag: &'static str,
    vip: &'static str,
    client: &'static str,
    lb: &'static str,
    /// The router's addresses on the client/lb side and on the reals' side.
    router_a: &'static str,
    router_b: &'static str,
    prefix_len: u8,
    host_len: u8,
    reals: [(&'static str, &'static str); 2],
    /// The `[datapath]` line giving the outer source prefix.
    source: &'static str,
    /// `ip addr add` flags: IPv6 addresses skip duplicate address detection.
    addr_flags: &'static str,
    /// Where the reals' HTTP servers listen.
    listen: &'static str,
}

const V4: Addressing = Addressing {
    tag: "4",
    vip: "198.18.6.1",
    client: "198.18.4.10",
    lb: "198.18.4.2",
    router_a: "198.18.4.1",
    router_b: "198.18.5.1",
    prefix_len: 24,
    host_len: 32,
    reals: [("real1", "198.18.5.11"), ("real2", "198.18.5.12")],
    source: "ipip_source_v4 = \"198.18.7.0/24\"",
    addr_flags: "",
    listen: "0.0.0.0:80",
};

const V6: Addressing = Addressing {
    tag: "6",
    vip: "fd00:18:6::1",
    client: "fd00:18:4::10",
    lb: "fd00:18:4::2",
    router_a: "fd00:18:4::1",
    router_b: "fd00:18:5::1",
    prefix_len: 64,
    host_len: 128,
    reals: [("real1", "fd00:18:5::11"), ("real2", "fd00:18:5::12")],
    source: "ipip_source_v6 = \"fd00:18:7::/112\"",
    addr_flags: " nodad",
    listen: "[::]:80",
};

/// The namespaces and processes of one run; dropped, it stops the
/// processes and deletes the namespaces by exact name.
struct Topology {
    prefix: String,
    procs: Vec<Proc>,
    dir: PathBuf,
}

impl Topology {
    fn ns(&self, host: &str) -> String {
        format!("{}-{host}", self.prefix)
    }

    fn ip(&self, host: &str, args: &str) -> Result<String> {
        let mut cmd = Command::new("ip");
        cmd.arg("-n").arg(self.ns(host)).args(args.split_whitespace());
        run_checked(&mut cmd)
    }

    fn exec(&self, host: &str, program: &str, args: &[&str]) -> Result<String> {
        run_checked(netns_command(&self.ns(host), program).args(args))
    }

    fn spawn(&mut self, host: &str, program: &std::path::Path, args: &[&str], log: &str) -> Result<()> {
        let log = std::fs::File::create(self.dir.join(log))?;
        let mut cmd = netns_command(&self.ns(host), program);
        cmd.args(args).stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
        self.procs.push(Proc::spawn(cmd)?);
        Ok(())
    }

    fn up(a: &Addressing) -> Result<Topology> {
        // Unique per test in this process: tests run in parallel threads.
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let prefix = format!("fi{}{:x}{n}", a.tag, std::process::id() & 0xffff);
        let dir = std::env::temp_dir().join(format!("{prefix}-ipip"));
        std::fs::create_dir_all(&dir)?;
        let t = Topology { prefix, procs: Vec::new(), dir };
        for host in ["client", "lb", "router", "real1", "real2"] {
            run_checked(Command::new("ip").args(["netns", "add", &t.ns(host)]))?;
            t.ip(host, "link set lo up")?;
        }
        t.exec(
            "router",
            "sysctl",
            &["-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1", "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0"],
        )?;
        let flags = a.addr_flags;
        for (bridge, addr) in [("br-a", a.router_a), ("br-b", a.router_b)] {
            t.ip("router", &format!("link add {bridge} type bridge"))?;
            t.ip("router", &format!("addr add {addr}/{} dev {bridge}{flags}", a.prefix_len))?;
            t.ip("router", &format!("link set {bridge} up"))?;
        }
        let hosts = [
            ("client", "p-client", "br-a", a.client, a.router_a),
            ("lb", "p-lb", "br-a", a.lb, a.router_a),
            ("real1", "p-real1", "br-b", a.reals[0].1, a.router_b),
            ("real2", "p-real2", "br-b", a.reals[1].1, a.router_b),
        ];
        for (host, port, bridge, addr, gateway) in hosts {
            t.ip("router", &format!("link add {port} type veth peer name eth0 netns {}", t.ns(host)))?;
            t.ip("router", &format!("link set {port} master {bridge} up"))?;
            t.ip(host, &format!("addr add {addr}/{} dev eth0{flags}", a.prefix_len))?;
            t.ip(host, "link set eth0 up")?;
            t.ip(host, &format!("route add default via {gateway}"))?;
            // A veth leaves TCP checksums partial; XDP_TX never completes them.
            t.exec(host, "ethtool", &["-K", "eth0", "tx", "off"])?;
            t.exec(host, "sysctl", &["-qw", "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.eth0.rp_filter=0"])?;
        }
        // The lb's XDP_TX frames reach the router's port only if it runs
        // an XDP program (drivers/net/veth.c, veth_xdp_flush).
        let pass = pass_object()?;
        t.ip("router", &format!("link set dev p-lb xdpdrv obj {} sec xdp", pass.display()))?;
        t.ip("client", &format!("route add {}/{} via {}", a.vip, a.host_len, a.lb))?;
        Ok(t)
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        // Processes first (their drop stops them), then the namespaces.
        self.procs.clear();
        for host in ["client", "lb", "router", "router2", "real1", "real2"] {
            let _ = Command::new("ip").args(["netns", "del", &self.ns(host)]).stderr(Stdio::null()).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The pass program built beside the datapath (see fulcrum-lab's xdp_pass).
fn pass_object() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let target = exe
        .ancestors()
        .find(|d| d.join("ebpf/bpfel-unknown-none/release/fulcrum-xdp-pass").is_file())
        .context("no fulcrum-xdp-pass build above the test binary: run `cargo xtask build-ebpf`")?;
    Ok(target.join("ebpf/bpfel-unknown-none/release/fulcrum-xdp-pass"))
}

/// One HTTP GET to `vip` port 80 from the client namespace: the body.
fn get(ns: &str, vip: &str) -> Result<String> {
    in_netns(ns, || -> Result<String> {
        let addr = SocketAddr::new(vip.parse()?, 80);
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.write_all(b"GET / HTTP/1.1\r\nHost: vip\r\nConnection: close\r\n\r\n")?;
        let mut response = String::new();
        s.read_to_string(&mut response)?;
        if !response.starts_with("HTTP/1.1 200") {
            bail!("unexpected response {response:?}");
        }
        Ok(response.split("\r\n\r\n").nth(1).unwrap_or_default().trim().to_string())
    })?
}

#[test]
fn http_flows_through_an_ipip_vip_to_routed_reals() -> Result<()> {
    http_flows_to_routed_reals(&V4)
}

#[test]
fn http_flows_through_an_ip6ip6_vip_to_routed_reals() -> Result<()> {
    http_flows_to_routed_reals(&V6)
}

/// Brings the topology up, starts the reals, their decap programs and
/// the lb (no `mac` for the reals: the lb resolves their next hop), and
/// waits until both reals have answered through the VIP.
fn start(a: &Addressing) -> Result<Topology> {
    let mut t = Topology::up(a)?;
    let fulcrum = bin_path("fulcrum")?;
    let backend = bin_path("fulcrum-backend")?;
    for (real, _) in a.reals {
        t.ip(real, &format!("addr add {}/{} dev lo{}", a.vip, a.host_len, a.addr_flags))?;
        let health = t.dir.join(format!("{real}.health")).display().to_string();
        t.spawn(real, &backend, &["--name", real, "--listen", a.listen, "--health-file", &health], &format!("{real}.log"))?;
        t.spawn(real, &fulcrum, &["decap", "--interface", "eth0", "--vip", a.vip], &format!("{real}-decap.log"))?;
    }
    let backends: String = a.reals.iter().map(|(_, addr)| format!("[[pool.backend]]\naddress = \"{addr}\"\n")).collect();
    let config = format!(
        "interface = \"eth0\"\n[admin]\nlisten = \"127.0.0.1:9180\"\n[datapath]\nconn_table_size = 65536\n{}\n\
         [[vip]]\nname = \"web\"\naddress = \"{}\"\nport = 80\nprotocol = \"tcp\"\nscheduler = \"maglev\"\npool = \"web\"\nforwarding = \"ipip\"\n\
         [[pool]]\nname = \"web\"\n[pool.health_check]\ntype = \"http\"\npath = \"/health\"\ninterval = \"200ms\"\ntimeout = \"150ms\"\nrise = 1\n{backends}",
        a.source, a.vip
    );
    let config_path = t.dir.join("fulcrum.toml");
    std::fs::write(&config_path, config)?;
    let config_arg = config_path.display().to_string();
    t.spawn("lb", &fulcrum, &["run", "--config", &config_arg], "lb.log")?;
    t.wait_both_reals(a, Duration::from_secs(20))?;
    Ok(t)
}

impl Topology {
    /// Requests through the VIP until both reals have answered, at most `limit`.
    fn wait_both_reals(&self, a: &Addressing, limit: Duration) -> Result<()> {
        let client = self.ns("client");
        let start = Instant::now();
        let mut seen = std::collections::BTreeSet::new();
        while seen.len() < a.reals.len() {
            if start.elapsed() > limit {
                let log = std::fs::read_to_string(self.dir.join("lb.log")).unwrap_or_default();
                let stats = bin_path("fulcrum")
                    .and_then(|f| self.exec("lb", &f.display().to_string(), &["stats"]))
                    .unwrap_or_else(|e| format!("(no stats: {e:#})"));
                bail!("not both reals answered through the VIP within {limit:?} (saw {seen:?}); lb stats:\n{stats}\nlb log:\n{log}");
            }
            match get(&client, a.vip) {
                Ok(name) => {
                    seen.insert(name);
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
        Ok(())
    }

    /// The MAC the lb's daemon sends `real`'s frames to (`fulcrum stats`).
    fn lb_mac_for(&self, real: &str) -> Result<Option<String>> {
        let fulcrum = bin_path("fulcrum")?;
        let json = self.exec("lb", &fulcrum.display().to_string(), &["stats", "--json"])?;
        let stats: fulcrum_api::StatsReport = serde_json::from_str(&json).context("parsing fulcrum stats")?;
        Ok(stats.backend(real).and_then(|b| b.mac.clone()))
    }
}

fn http_flows_to_routed_reals(a: &Addressing) -> Result<()> {
    let mut t = start(a)?;
    let client = t.ns("client");
    let mut served = std::collections::BTreeMap::new();
    for _ in 0..40 {
        *served.entry(get(&client, a.vip)?).or_insert(0) += 1;
    }
    assert_eq!(served.values().sum::<u32>(), 40);
    assert!(served.keys().all(|name| a.reals.iter().any(|(r, _)| r == name)), "{served:?}");
    assert_eq!(served.len(), 2, "both routed reals served: {served:?}");
    // The packets came through the decap program: it logs its counters
    // when SIGTERM detaches it.
    for mut proc in t.procs.drain(..) {
        proc.stop(Duration::from_secs(5))?;
    }
    for (real, _) in a.reals {
        let log = std::fs::read_to_string(t.dir.join(format!("{real}-decap.log")))?;
        let decapsulated: u64 = log
            .split_whitespace()
            .find_map(|w| w.split("decapsulated=").nth(1))
            .and_then(|n| n.trim_end_matches(|c: char| !c.is_ascii_digit()).parse().ok())
            .with_context(|| format!("no decap counters in {real}'s log:\n{log}"))?;
        assert!(decapsulated > 0, "{real}: {log}");
    }
    Ok(())
}

/// The reals' next hop follows a route change: a second router joins both
/// networks, the lb's route to the reals' network moves to it, and the lb
/// sends to the new router's MAC (once its neighbour entry exists, which
/// the health checks through the new route create); HTTP keeps flowing.
#[test]
fn routed_reals_follow_a_route_change_to_another_router() -> Result<()> {
    let a = &V4;
    let t = start(a)?;
    let router_mac = t.exec("router", "cat", &["/sys/class/net/br-a/address"])?.trim().to_string();
    let real = a.reals[0].1;
    assert_eq!(t.lb_mac_for(real)?.as_deref(), Some(router_mac.as_str()), "the first router's MAC");

    // router2: 198.18.4.3 on the client/lb side, 198.18.5.3 on the reals'.
    run_checked(Command::new("ip").args(["netns", "add", &t.ns("router2")]))?;
    t.ip("router2", "link set lo up")?;
    t.exec("router2", "sysctl", &["-qw", "net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0"])?;
    for (port, bridge, addr) in [("q-a", "br-a", "198.18.4.3/24"), ("q-b", "br-b", "198.18.5.3/24")] {
        let inside = if bridge == "br-a" { "a0" } else { "b0" };
        t.ip("router", &format!("link add {port} type veth peer name {inside} netns {}", t.ns("router2")))?;
        t.ip("router", &format!("link set {port} master {bridge} up"))?;
        t.ip("router2", &format!("addr add {addr} dev {inside}"))?;
        t.ip("router2", &format!("link set {inside} up"))?;
        t.exec("router2", "ethtool", &["-K", inside, "tx", "off"])?;
    }
    let router2_mac = t.exec("router2", "cat", &["/sys/class/net/a0/address"])?.trim().to_string();
    t.ip("lb", "route add 198.18.5.0/24 via 198.18.4.3")?;

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mac = t.lb_mac_for(real)?;
        if mac.as_deref() == Some(router2_mac.as_str()) {
            break;
        }
        if Instant::now() > deadline {
            bail!("the lb still sends {real}'s frames to {mac:?}, not router2's {router2_mac}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // HTTP keeps flowing through the VIP, and through router2: it
    // forwards the encapsulated requests. (Not "both reals": in about one
    // run in four here, real1's health checks through router2 time out
    // while real2's pass, and real1 leaves the table; a lab effect this
    // test does not chase, since it is about where the lb sends.)
    // Ip: ForwDatagrams of router2's /proc/net/snmp (a header line, then
    // a line of values).
    let forwarded = || -> Result<u64> {
        let snmp = t.exec("router2", "cat", &["/proc/net/snmp"])?;
        let mut ip = snmp.lines().filter(|l| l.starts_with("Ip: "));
        let (names, values) = (ip.next().context("no Ip: header")?, ip.next().context("no Ip: values")?);
        let column = names.split_whitespace().position(|n| n == "ForwDatagrams").context("no ForwDatagrams")?;
        Ok(values.split_whitespace().nth(column).context("short Ip: line")?.parse()?)
    };
    let before = forwarded()?;
    let client = t.ns("client");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut answered = 0;
    while answered < 20 {
        match get(&client, a.vip) {
            Ok(_) => answered += 1,
            Err(e) if Instant::now() > deadline => bail!("no answer through the VIP after the route change: {e:#}"),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
    let after = forwarded()?;
    // Each request is at least SYN, ACK + request, FIN from the client.
    assert!(after >= before + 3 * 20, "router2 forwarded {} datagrams for 20 requests", after - before);
    Ok(())
}
