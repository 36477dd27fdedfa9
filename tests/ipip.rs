//! IPIP end to end: the reals sit on another L3 network, behind a router,
//! and run `fulcrum decap`; real HTTP flows through the VIP.
//!
//! The topology is built here (the shared lab is one L2 segment), from
//! `fulcrum-lab`'s helpers, under a per-run prefix, and removed on every
//! exit path (the `Topology` guard's drop):
//!
//! ```text
//!  {p}-client 198.18.4.10 ─┐ br-a 198.18.4.1          br-b 198.18.5.1 ┌─ {p}-real1 198.18.5.11
//!  {p}-lb     198.18.4.2  ─┘      ({p}-router, forwarding)             └─ {p}-real2 198.18.5.12
//!  VIP 198.18.6.1: the client routes it via the lb; the reals hold it on lo.
//! ```
//!
//! The lb encapsulates to each real's address with the router's MAC
//! (`mac` in the backend's configuration: the next hop); the router
//! forwards the IPIP packets like any other (this kernel has no ipip
//! module, so nothing decapsulates them on the way); `fulcrum decap` on
//! each real's eth0 strips the outer header; the real answers the client
//! directly through the router (DSR). Needs root.
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use fulcrum_lab::{bin_path, in_netns, netns_command, run_checked, Proc};

const VIP: &str = "198.18.6.1";
const REALS: [(&str, &str); 2] = [("real1", "198.18.5.11"), ("real2", "198.18.5.12")];

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

    fn up() -> Result<Topology> {
        let prefix = format!("fi{:x}", std::process::id() & 0xffff);
        let dir = std::env::temp_dir().join(format!("{prefix}-ipip"));
        std::fs::create_dir_all(&dir)?;
        let t = Topology { prefix, procs: Vec::new(), dir };
        for host in ["client", "lb", "router", "real1", "real2"] {
            run_checked(Command::new("ip").args(["netns", "add", &t.ns(host)]))?;
            t.ip(host, "link set lo up")?;
        }
        t.exec("router", "sysctl", &["-qw", "net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0"])?;
        for (bridge, addr) in [("br-a", "198.18.4.1/24"), ("br-b", "198.18.5.1/24")] {
            t.ip("router", &format!("link add {bridge} type bridge"))?;
            t.ip("router", &format!("addr add {addr} dev {bridge}"))?;
            t.ip("router", &format!("link set {bridge} up"))?;
        }
        let hosts = [
            ("client", "p-client", "br-a", "198.18.4.10/24", "198.18.4.1"),
            ("lb", "p-lb", "br-a", "198.18.4.2/24", "198.18.4.1"),
            ("real1", "p-real1", "br-b", "198.18.5.11/24", "198.18.5.1"),
            ("real2", "p-real2", "br-b", "198.18.5.12/24", "198.18.5.1"),
        ];
        for (host, port, bridge, addr, gateway) in hosts {
            t.ip("router", &format!("link add {port} type veth peer name eth0 netns {}", t.ns(host)))?;
            t.ip("router", &format!("link set {port} master {bridge} up"))?;
            t.ip(host, &format!("addr add {addr} dev eth0"))?;
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
        t.ip("client", &format!("route add {VIP}/32 via 198.18.4.2"))?;
        Ok(t)
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        // Processes first (their drop stops them), then the namespaces.
        self.procs.clear();
        for host in ["client", "lb", "router", "real1", "real2"] {
            let _ = Command::new("ip").args(["netns", "del", &self.ns(host)]).status();
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

/// One HTTP GET to the VIP from the client namespace: the body.
fn get(ns: &str) -> Result<String> {
    in_netns(ns, || -> Result<String> {
        let addr: SocketAddr = format!("{VIP}:80").parse()?;
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
    let mut t = Topology::up()?;
    let router_mac = t.exec("router", "cat", &["/sys/class/net/br-a/address"])?.trim().to_string();
    let fulcrum = bin_path("fulcrum")?;
    let backend = bin_path("fulcrum-backend")?;
    for (real, addr) in REALS {
        let _ = addr;
        t.ip(real, &format!("addr add {VIP}/32 dev lo"))?;
        let health = t.dir.join(format!("{real}.health")).display().to_string();
        t.spawn(real, &backend, &["--name", real, "--listen", "0.0.0.0:80", "--health-file", &health], &format!("{real}.log"))?;
        t.spawn(real, &fulcrum, &["decap", "--interface", "eth0", "--vip", VIP], &format!("{real}-decap.log"))?;
    }
    let backends: String = REALS
        .iter()
        .map(|(_, addr)| format!("[[pool.backend]]\naddress = \"{addr}\"\nmac = \"{router_mac}\"\n"))
        .collect();
    let config = format!(
        "interface = \"eth0\"\n[admin]\nlisten = \"127.0.0.1:9180\"\n[datapath]\nconn_table_size = 65536\nipip_source_v4 = \"198.18.7.0/24\"\n\
         [[vip]]\nname = \"web\"\naddress = \"{VIP}\"\nport = 80\nprotocol = \"tcp\"\nscheduler = \"maglev\"\npool = \"web\"\nforwarding = \"ipip\"\n\
         [[pool]]\nname = \"web\"\n[pool.health_check]\ntype = \"http\"\npath = \"/health\"\ninterval = \"200ms\"\ntimeout = \"150ms\"\nrise = 1\n{backends}"
    );
    let config_path = t.dir.join("fulcrum.toml");
    std::fs::write(&config_path, config)?;
    let config_arg = config_path.display().to_string();
    t.spawn("lb", &fulcrum, &["run", "--config", &config_arg], "lb.log")?;

    // Until both reals are up and in the table: any request answered.
    let client = t.ns("client");
    let start = Instant::now();
    while get(&client).is_err() {
        if start.elapsed() > Duration::from_secs(20) {
            let log = std::fs::read_to_string(t.dir.join("lb.log")).unwrap_or_default();
            bail!("no answer through the VIP within 20 s; lb log:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_millis(500));
    let mut served = std::collections::BTreeMap::new();
    for _ in 0..40 {
        *served.entry(get(&client)?).or_insert(0) += 1;
    }
    assert_eq!(served.values().sum::<u32>(), 40);
    assert!(served.keys().all(|name| REALS.iter().any(|(r, _)| r == name)), "{served:?}");
    assert_eq!(served.len(), 2, "both routed reals served: {served:?}");
    // The packets came through the decap program: it logs its counters
    // when SIGTERM detaches it.
    for mut proc in t.procs.drain(..) {
        proc.stop(Duration::from_secs(5))?;
    }
    for (real, _) in REALS {
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
