//! The fulcrum namespace lab: a one-armed load-balancer topology built from
//! network namespaces, veth pairs and a bridge, with real HTTP backends.
//!
//! ```text
//!  {prefix}-client  eth0 198.18.0.10 fd00:18::10 ─┐
//!  {prefix}-lb      eth0 198.18.0.2  fd00:18::2  ─┤  br0 in {prefix}-sw
//! [{prefix}-lb2     eth0 198.18.0.3  fd00:18::3  ─┤] (option second_lb)
//!  {prefix}-real1   eth0 198.18.0.11 fd00:18::11 ─┤  (one L2 segment)
//!  {prefix}-real2   eth0 198.18.0.12 fd00:18::12 ─┤
//!  {prefix}-real3   eth0 198.18.0.13 fd00:18::13 ─┘
//! ```
//!
//! The client routes the VIP (198.18.1.1, fd00:18:1::1) via the lb; every
//! real holds the VIP on `lo` and does not answer ARP for it (L2 DSR), so
//! replies go straight back to the client. The lb does not forward in the
//! kernel: the VIP is only reachable while fulcrum's XDP program is
//! attached to the lb's `eth0`. The switch-side end of every veth pair
//! runs an XDP pass program so that frames sent back with `XDP_TX` are
//! delivered (see `xdp_pass`).
//!
//! Two options of [`Lab::up_with`] ([`LabOptions`]) turn it into a VRRP
//! pair, for the failover tests and the demo:
//!
//! - `second_lb` adds `{prefix}-lb2` (198.18.0.3, fd00:18::3) on the same
//!   bridge, set up like the lb (pass program on its switch-side end,
//!   checksum offload off). The bridge then has multicast snooping off, so
//!   VRRP adverts to 224.0.0.18 / ff02::12 reach every port whether or not
//!   a membership report was seen. Both lbs get `arp_ignore=1` and
//!   `arp_announce=2`: each answers ARP for the addresses on its own eth0
//!   (its own, and the VIP while it is the VRRP Master and holds it there),
//!   and never uses another address as an ARP source.
//! - `vip_on_link` replaces the client's `VIP via lb` routes with on-link
//!   routes (`198.18.1.0/24 dev eth0`, `fd00:18:1::/64 dev eth0`): the
//!   client resolves the VIP itself (ARP / neighbour solicitation), so
//!   whichever lb holds the VIP on eth0 answers and receives its traffic,
//!   and a gratuitous ARP or unsolicited NA moves it. The reals never
//!   answer: they hold the VIP on `lo` with `arp_ignore=1` (IPv4), and
//!   IPv6 answers solicitations only for addresses of the receiving
//!   interface. [`Lab::set_vip_on_link`] switches at run time.
//!
//! Sysctls checked for that mode: `rp_filter` (strict or loose) passes
//! everything here, since every source is reached back through eth0; the
//! switch namespace's `bridge-nf-call-*` do not matter for well-formed
//! ARP, VRRP and TCP frames (they would for hostile ones, see
//! docs/architecture.md); the client needs no `arp_accept`, since a
//! gratuitous ARP updates an entry it already has, which is the only case
//! a failover needs.
//!
//! Used by `cargo xtask lab`, `cargo xtask demo` and the end-to-end tests.
//! It owns the namespaces and processes it creates and removes them (by
//! exact name and pid) on `down`, on drop, or from another process with
//! [`Lab::down_by_prefix`].
pub mod interrupt;

mod netns;
mod proc;
mod xdp_pass;

use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

pub use netns::{in_netns, netns_command, run_checked};
pub use proc::Proc;

/// The IPv4 VIP the client routes via the lb and every real holds on `lo`.
pub const VIP4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
/// The IPv6 VIP, same role as [`VIP4`].
pub const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x18, 1, 0, 0, 0, 0, 1);
/// The lb's address on the lab segment.
pub const LB4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// The lb's IPv6 address on the lab segment.
pub const LB6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x18, 0, 0, 0, 0, 0, 2);
/// The second lb's address on the lab segment ([`LabOptions::second_lb`]).
pub const LB2_4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 3);
/// The second lb's IPv6 address on the lab segment.
pub const LB2_6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x18, 0, 0, 0, 0, 0, 3);
/// The client's on-link route for the IPv4 VIP ([`LabOptions::vip_on_link`]).
pub const VIP4_NET: &str = "198.18.1.0/24";
/// The client's on-link route for the IPv6 VIP.
pub const VIP6_NET: &str = "fd00:18:1::/64";
/// The client's address on the lab segment.
pub const CLIENT4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
/// The UDP port every real's backend answers on (`--udp-port`), with its
/// name followed by the datagram's payload, on each of its addresses.
pub const UDP_ECHO_PORT: u16 = 53;
/// The reals' names, in address order (real1 = .11, real2 = .12, ...).
pub const REALS: [&str; 3] = ["real1", "real2", "real3"];

/// Every host of the lab except the switch, with its last address octet
/// (the same number is the last group of its IPv6 address).
/// `lb2` exists only with [`LabOptions::second_lb`].
const HOSTS: [(&str, u8); 6] =
    [("client", 10), ("lb", 2), ("lb2", 3), ("real1", 11), ("real2", 12), ("real3", 13)];
/// The optional host of [`HOSTS`].
const SECOND_LB: &str = "lb2";
/// The namespace holding the bridge.
const SWITCH: &str = "sw";
/// Where per-lab state lives: pid file, health files, backend logs.
const RUN_ROOT: &str = "/run/fulcrum-lab";
/// How long a backend may take to start listening.
const BACKEND_START: Duration = Duration::from_secs(5);

/// The `[[pool]]` section named `web` of a fulcrum configuration over the
/// lab's three reals (weight 1 each), with an HTTP check of `/health` on
/// port 80 every `interval` (timeout 400 ms), `rise` and `fall`: the pool
/// the lab's tests, benches and demo configurations balance.
pub fn web_pool_toml(interval: Duration, rise: u32, fall: u32) -> String {
    let backends: String =
        REALS.iter().map(|r| format!("\n[[pool.backend]]\naddress = \"{}\"\nweight = 1\n", host4(r).expect("a lab real"))).collect();
    format!(
        "[[pool]]\nname = \"web\"\n\n[pool.health_check]\ntype = \"http\"\nmethod = \"GET\"\npath = \"/health\"\nexpect_status = 200\ninterval = \"{}ms\"\ntimeout = \"400ms\"\nrise = {rise}\nfall = {fall}\n{backends}",
        interval.as_millis()
    )
}

/// A whole fulcrum configuration for the lab's lb: `eth0`, the admin API
/// on 127.0.0.1:9180, the TCP VIP "web" ([`VIP4`]:80, Maglev) over
/// [`web_pool_toml`]. Tests and benches append their own sections.
pub fn web_service_toml(interval: Duration, rise: u32, fall: u32) -> String {
    format!(
        "interface = \"eth0\"\n\n[admin]\nlisten = \"127.0.0.1:9180\"\n\n[[vip]]\nname = \"web\"\naddress = \"{VIP4}\"\nport = 80\nprotocol = \"tcp\"\nscheduler = \"maglev\"\npool = \"web\"\n\n{}",
        web_pool_toml(interval, rise, fall)
    )
}

/// The IPv4 address of a lab host (`"client"`, `"lb"`, `"real1"`...).
pub fn host4(host: &str) -> Option<Ipv4Addr> {
    HOSTS.iter().find(|(h, _)| *h == host).map(|(_, n)| Ipv4Addr::new(198, 18, 0, *n))
}

/// The IPv6 address of a lab host: `fd00:18::<n>` with the same `n` as in
/// its IPv4 address, written in hex digits that read like the decimal.
pub fn host6(host: &str) -> Option<Ipv6Addr> {
    HOSTS.iter().find(|(h, _)| *h == host).map(|(_, n)| {
        // "::11" in the lab's addressing plan is the hex group 0x11.
        let group = u16::from_str_radix(&n.to_string(), 16).expect("decimal digits are hex digits");
        Ipv6Addr::new(0xfd00, 0x18, 0, 0, 0, 0, 0, group)
    })
}

/// Where a workspace binary lives: `FULCRUM_BIN_DIR` if set, otherwise the
/// cargo profile directory (`target/debug` or `target/release`) of the
/// running executable. Test binaries live in `<profile>/deps`, so their
/// parent's parent is used. Errors if the file is not there.
pub fn bin_path(name: &str) -> Result<PathBuf> {
    let dir = match std::env::var_os("FULCRUM_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let exe = std::env::current_exe().context("locating the current executable")?;
            let mut dir = exe.parent().context("executable has no directory")?.to_path_buf();
            if dir.file_name().is_some_and(|n| n == "deps") {
                dir.pop();
            }
            dir
        }
    };
    let path = dir.join(name);
    if !path.is_file() {
        bail!(
            "{} not found (looked in {}; FULCRUM_BIN_DIR overrides): \
             build it with cargo build --bins; cargo xtask test does",
            name,
            dir.display()
        );
    }
    Ok(path)
}

/// What [`Lab::up_with`] builds beyond the basic topology.
#[derive(Debug, Clone, Default)]
pub struct LabOptions {
    /// Add `lb2` (198.18.0.3, fd00:18::3), a second load balancer on the
    /// same bridge, set up like `lb` (module docs).
    pub second_lb: bool,
    /// Route the VIPs on-link from the client instead of via the lb, so
    /// that the VRRP Master's ARP answers decide where they go.
    pub vip_on_link: bool,
    /// The `fulcrum-backend` binary; `None`: the one [`bin_path`] finds.
    pub backend: Option<PathBuf>,
}

/// One VRRP instance as a daemon's `fulcrum stats --json` reports it
/// (its `vrrp` array): read from the JSON, so it needs nothing more of
/// the API types than these fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VrrpInstance {
    pub name: String,
    /// "MASTER", "BACKUP", "INIT" or "FAULT".
    pub state: String,
    pub priority: u8,
}

/// A running lab. Dropping it tears everything down, as [`Lab::down`] does.
pub struct Lab {
    prefix: String,
    run_dir: PathBuf,
    options: LabOptions,
    backends: Vec<(String, Proc)>,
    /// False once torn down or kept, so that drop does nothing.
    armed: bool,
}

impl Lab {
    /// Brings the lab up under `prefix` with the `fulcrum-backend` found by
    /// [`bin_path`]. See [`Lab::up_with_backend`].
    pub fn up(prefix: &str) -> Result<Lab> {
        Lab::up_with_backend(prefix, &bin_path("fulcrum-backend")?)
    }

    /// [`Lab::up_with_backend`] with [`LabOptions`]: a second lb, on-link
    /// VIP routes, a given backend binary.
    pub fn up_with(prefix: &str, options: LabOptions) -> Result<Lab> {
        let backend = match &options.backend {
            Some(path) => path.clone(),
            None => bin_path("fulcrum-backend")?,
        };
        Lab::build(prefix, &backend, options)
    }

    /// Builds the topology (module docs) in namespaces named `{prefix}-sw`,
    /// `{prefix}-client`, `{prefix}-lb`, `{prefix}-real1..3`, and starts
    /// `backend` (a `fulcrum-backend`) in every real, listening on port 80
    /// of all addresses (and UDP on [`UDP_ECHO_PORT`]). Returns once every
    /// backend accepts connections. Fails if any of these namespaces
    /// already exists (a leftover: remove it with [`Lab::down_by_prefix`]);
    /// on failure, what was created is removed again.
    pub fn up_with_backend(prefix: &str, backend: &Path) -> Result<Lab> {
        Lab::build(prefix, backend, LabOptions::default())
    }

    fn build(prefix: &str, backend: &Path, options: LabOptions) -> Result<Lab> {
        validate_prefix(prefix)?;
        for name in namespace_names(prefix) {
            if Path::new("/run/netns").join(&name).exists() {
                bail!("namespace {name} already exists: remove the old lab with `cargo xtask lab down --prefix {prefix}`");
            }
        }
        ensure_bpffs()?;
        let run_dir = Path::new(RUN_ROOT).join(prefix);
        fs::create_dir_all(&run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
        // From here on, drop cleans up whatever exists.
        let mut lab = Lab { prefix: prefix.to_string(), run_dir, options, backends: Vec::new(), armed: true };
        lab.build_topology()?;
        for real in REALS {
            lab.start_backend(real, backend)?;
        }
        lab.write_pid_file()?;
        for real in REALS {
            lab.wait_backend(real)?;
        }
        Ok(lab)
    }

    /// The namespace name of a lab host: `lab.ns("lb")` is `"{prefix}-lb"`.
    pub fn ns(&self, host: &str) -> String {
        format!("{}-{}", self.prefix, host)
    }

    /// The load balancers of this lab: `["lb"]`, or `["lb", "lb2"]` with
    /// [`LabOptions::second_lb`].
    pub fn lbs(&self) -> &'static [&'static str] {
        if self.options.second_lb {
            &["lb", SECOND_LB]
        } else {
            &["lb"]
        }
    }

    /// The options the lab was brought up with.
    pub fn options(&self) -> &LabOptions {
        &self.options
    }

    /// The prefix every namespace of this lab starts with.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The lab's state directory (`/run/fulcrum-lab/{prefix}`), removed on
    /// teardown: a place for the lab's own files, such as a test's config.
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// Makes backend `real` ("real1"...) fail (`healthy = false`) or pass
    /// its `/health` check, by creating or removing its health file.
    pub fn set_backend_health(&self, real: &str, healthy: bool) -> Result<()> {
        if !REALS.contains(&real) {
            bail!("no backend named {real}; the lab has {REALS:?}");
        }
        let file = self.health_file(real);
        if healthy {
            match fs::remove_file(&file) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(e).with_context(|| format!("removing {}", file.display()))
                }
                _ => Ok(()),
            }
        } else {
            fs::write(&file, b"unhealthy\n").with_context(|| format!("writing {}", file.display()))
        }
    }

    /// A command that runs `program` inside the namespace of lab host
    /// `host` (through `ip netns exec`); add arguments and stdio as usual.
    pub fn command(&self, host: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        netns_command(&self.ns(host), program)
    }

    /// The statistics of the fulcrum daemon running in the lb namespace:
    /// runs `fulcrum stats --json` (the binary at `fulcrum`) there, where
    /// the daemon's admin API listens.
    pub fn fulcrum_stats(&self, fulcrum: &Path) -> Result<fulcrum_api::StatsReport> {
        self.fulcrum_stats_on("lb", fulcrum)
    }

    /// [`Lab::fulcrum_stats`] of the daemon in `host`'s namespace ("lb2"...),
    /// at the default admin address (127.0.0.1:9180, which every lb
    /// namespace has its own of).
    pub fn fulcrum_stats_on(&self, host: &str, fulcrum: &Path) -> Result<fulcrum_api::StatsReport> {
        let json = self.fulcrum_stats_text(host, fulcrum)?;
        serde_json::from_str(&json).with_context(|| format!("parsing fulcrum stats: {json}"))
    }

    /// The raw `fulcrum stats --json` of the daemon in `host`, as a JSON
    /// value: for fields the API types may not have yet.
    pub fn fulcrum_stats_json(&self, host: &str, fulcrum: &Path) -> Result<serde_json::Value> {
        let json = self.fulcrum_stats_text(host, fulcrum)?;
        serde_json::from_str(&json).with_context(|| format!("parsing fulcrum stats: {json}"))
    }

    /// The VRRP instances of the daemon in `host` (the `vrrp` array of its
    /// stats; empty if there is none).
    pub fn vrrp_instances(&self, host: &str, fulcrum: &Path) -> Result<Vec<VrrpInstance>> {
        vrrp_instances(&self.fulcrum_stats_json(host, fulcrum)?)
    }

    fn fulcrum_stats_text(&self, host: &str, fulcrum: &Path) -> Result<String> {
        let mut cmd = self.command(host, fulcrum);
        cmd.args(["stats", "--json"]);
        run_checked(&mut cmd)
    }

    /// Whether `addr` is on `host`'s eth0 (a VRRP Master's VIP is).
    pub fn has_address(&self, host: &str, addr: IpAddr) -> Result<bool> {
        let out = run_checked(Command::new("ip").args(["-n", &self.ns(host), "-o", "addr", "show", "dev", "eth0"]))?;
        let want = addr.to_string();
        Ok(out.split_whitespace().any(|w| w.split('/').next() == Some(want.as_str())))
    }

    /// The MAC address of `host`'s eth0.
    pub fn mac(&self, host: &str) -> Result<String> {
        let out = run_checked(Command::new("ip").args(["-n", &self.ns(host), "-o", "link", "show", "dev", "eth0"]))?;
        word_after(&out, "link/ether").with_context(|| format!("no MAC in {out}"))
    }

    /// The link-layer address of `host`'s neighbour entry for `addr`, if
    /// it has one with an address (any state but INCOMPLETE / FAILED).
    pub fn neighbour(&self, host: &str, addr: IpAddr) -> Result<Option<String>> {
        let out = run_checked(Command::new("ip").args(["-n", &self.ns(host), "neigh", "show", &addr.to_string(), "dev", "eth0"]))?;
        Ok(word_after(&out, "lladdr"))
    }

    /// Switches the client's routes to the VIPs: on-link (`true`, see
    /// [`LabOptions::vip_on_link`]) or via the lb (`false`, as [`Lab::up`]
    /// sets them). Existing neighbour entries for the VIPs are flushed, so
    /// the next packet asks again.
    pub fn set_vip_on_link(&mut self, on_link: bool) -> Result<()> {
        let ns = self.ns("client");
        let ip = |args: &[&str]| run_checked(Command::new("ip").args(["-n", &ns]).args(args));
        let (v4_on, v6_on) = (VIP4_NET.to_string(), VIP6_NET.to_string());
        let (v4_via, v6_via) = (format!("{VIP4}/32"), format!("{VIP6}/128"));
        if on_link {
            ip(&["route", "del", &v4_via])?;
            ip(&["-6", "route", "del", &v6_via])?;
            ip(&["route", "add", &v4_on, "dev", "eth0"])?;
            ip(&["-6", "route", "add", &v6_on, "dev", "eth0"])?;
        } else {
            ip(&["route", "del", &v4_on])?;
            ip(&["-6", "route", "del", &v6_on])?;
            ip(&["route", "add", &v4_via, "via", &LB4.to_string()])?;
            ip(&["-6", "route", "add", &v6_via, "via", &LB6.to_string()])?;
        }
        for vip in [VIP4.to_string(), VIP6.to_string()] {
            // Nothing to flush is fine.
            let _ = ip(&["neigh", "flush", "to", &vip, "dev", "eth0"]);
        }
        self.options.vip_on_link = on_link;
        Ok(())
    }

    /// Runs `args` (program first) inside `host`'s namespace to completion
    /// and returns its stdout; errors with its stderr if it fails.
    pub fn exec(&self, host: &str, args: &[&str]) -> Result<String> {
        let (program, rest) = args.split_first().context("exec needs a program")?;
        let mut cmd = self.command(host, program);
        cmd.args(rest);
        run_checked(&mut cmd)
    }

    /// Starts `cmd` (typically from [`Lab::command`]) as a [`Proc`], which
    /// stops it when dropped. Drop it before the lab so that it is stopped
    /// before its namespace goes away.
    pub fn spawn(&self, cmd: Command) -> Result<Proc> {
        Proc::spawn(cmd)
    }

    /// Tears the lab down (stops the backends, deletes the namespaces and
    /// the state directory). Returns the first error, after trying all.
    pub fn down(mut self) -> Result<()> {
        self.teardown()
    }

    /// Leaves the lab running after this value is gone (for `cargo xtask
    /// lab up`); remove it later with [`Lab::down_by_prefix`].
    pub fn keep(mut self) {
        for (_, backend) in self.backends.drain(..) {
            backend.detach();
        }
        self.armed = false;
    }

    /// Removes the lab `prefix` from another process: kills the backends
    /// recorded in its pid file (only if the pid still runs a
    /// `fulcrum-backend`), deletes the namespaces named exactly
    /// `{prefix}-sw`, `{prefix}-client`... and the state directory.
    /// What is already gone is not an error.
    pub fn down_by_prefix(prefix: &str) -> Result<()> {
        validate_prefix(prefix)?;
        let run_dir = Path::new(RUN_ROOT).join(prefix);
        let pid_file = run_dir.join("pids");
        match fs::read_to_string(&pid_file) {
            Ok(text) => {
                for pid in text.lines().filter_map(|l| l.split_whitespace().nth(1)?.parse().ok()) {
                    proc::stop_foreign(pid, "fulcrum-backend", Duration::from_secs(2));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("reading {}", pid_file.display())),
        }
        remove_lab(prefix, &run_dir)
    }

    fn teardown(&mut self) -> Result<()> {
        if !self.armed {
            return Ok(());
        }
        self.armed = false;
        let mut first_err = None;
        for (real, mut backend) in self.backends.drain(..) {
            if let Err(e) = backend.stop(Duration::from_secs(2)) {
                first_err.get_or_insert(e.context(format!("stopping backend {real}")));
            }
        }
        if let Err(e) = remove_lab(&self.prefix, &self.run_dir) {
            first_err.get_or_insert(e);
        }
        first_err.map_or(Ok(()), Err)
    }

    fn build_topology(&self) -> Result<()> {
        let sw = self.ns(SWITCH);
        run_checked(Command::new("ip").args(["netns", "add", &sw]))?;
        for host in self.hosts() {
            run_checked(Command::new("ip").args(["netns", "add", &self.ns(host)]))?;
        }
        let ip_sw = |args: &[&str]| run_checked(Command::new("ip").args(["-n", &sw]).args(args));
        ip_sw(&["link", "set", "lo", "up"])?;
        if self.options.second_lb {
            // VRRP adverts are multicast: flood them to every port instead
            // of waiting for the bridge to learn who listens.
            ip_sw(&["link", "add", "br0", "type", "bridge", "mcast_snooping", "0"])?;
        } else {
            ip_sw(&["link", "add", "br0", "type", "bridge"])?;
        }
        ip_sw(&["link", "set", "br0", "up"])?;
        for host in self.hosts() {
            let ns = self.ns(host);
            // The pair is created in the switch namespace, so the switch-side
            // end can carry the plain host name (no 15-character problem and
            // no clash between labs), and the other end lands in the host's
            // namespace as eth0.
            ip_sw(&["link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", &ns])?;
            ip_sw(&["link", "set", host, "master", "br0"])?;
            ip_sw(&["link", "set", host, "up"])?;
            // The lb sends frames back out of its eth0 with XDP_TX; the
            // switch-side end only delivers them with an XDP program of its
            // own (see xdp_pass). Every host gets one, so any of them may
            // run an XDP_TX program.
            xdp_pass::attach_pass(&sw, host)?;
            self.configure_host(host)?;
        }
        Ok(())
    }

    /// The hosts this lab has: [`HOSTS`] without `lb2` unless asked for.
    fn hosts(&self) -> Vec<&'static str> {
        HOSTS.iter().map(|(h, _)| *h).filter(|h| *h != SECOND_LB || self.options.second_lb).collect()
    }

    fn configure_host(&self, host: &str) -> Result<()> {
        let ns = self.ns(host);
        let ip = |args: &[&str]| run_checked(Command::new("ip").args(["-n", &ns]).args(args));
        let v4 = format!("{}/24", host4(host).expect("known host"));
        let v6 = format!("{}/64", host6(host).expect("known host"));
        ip(&["link", "set", "lo", "up"])?;
        // No duplicate address detection on eth0, for the link-local address
        // too: while it is tentative (a second or two after link up) the
        // kernel sends no neighbour solicitations, so a real could not
        // answer an IPv6 client it has not talked to yet.
        run_checked(netns_command(&ns, "sysctl").args(["-q", "-w", "net.ipv6.conf.eth0.accept_dad=0"]))?;
        ip(&["addr", "add", &v4, "dev", "eth0"])?;
        // nodad: the address is usable at once instead of after DAD's delay.
        ip(&["addr", "add", &v6, "dev", "eth0", "nodad"])?;
        ip(&["link", "set", "eth0", "up"])?;
        // A veth leaves the TCP/UDP checksum of what it sends to be filled
        // in "by the hardware" (CHECKSUM_PARTIAL), which never happens on a
        // frame that XDP_TX re-sends: the real would drop it as corrupt.
        // Computing checksums in software makes frames on the lab segment
        // complete, as on a real wire.
        run_checked(netns_command(&ns, "ethtool").args(["-K", "eth0", "tx", "off"]))?;
        if host == "client" && self.options.vip_on_link {
            ip(&["route", "add", VIP4_NET, "dev", "eth0"])?;
            ip(&["-6", "route", "add", VIP6_NET, "dev", "eth0"])?;
        } else if host == "client" {
            ip(&["route", "add", &format!("{VIP4}/32"), "via", &LB4.to_string()])?;
            ip(&["-6", "route", "add", &format!("{VIP6}/128"), "via", &LB6.to_string()])?;
        }
        if host.starts_with("lb") && (self.options.second_lb || self.options.vip_on_link) {
            // A VRRP Master holds the VIP on eth0 and must answer ARP for
            // it there (arp_ignore=1 does: the address is on the asking
            // interface); arp_announce=2 keeps its own address as the
            // source of its ARP requests. Set on `all` and eth0, as for
            // the reals.
            for dev in ["all", "eth0"] {
                for (key, value) in [("arp_ignore", "1"), ("arp_announce", "2")] {
                    let setting = format!("net.ipv4.conf.{dev}.{key}={value}");
                    run_checked(netns_command(&ns, "sysctl").args(["-q", "-w", &setting]))?;
                }
            }
        }
        if host.starts_with("real") {
            ip(&["addr", "add", &format!("{VIP4}/32"), "dev", "lo"])?;
            ip(&["addr", "add", &format!("{VIP6}/128"), "dev", "lo", "nodad"])?;
            // L2 DSR: the real accepts VIP traffic but must neither answer
            // ARP for the VIP (arp_ignore=1: only for addresses of the
            // asking interface) nor use it as ARP source (arp_announce=2).
            // The kernel takes the max of `all` and the interface's value.
            for dev in ["all", "eth0"] {
                for (key, value) in [("arp_ignore", "1"), ("arp_announce", "2")] {
                    let setting = format!("net.ipv4.conf.{dev}.{key}={value}");
                    run_checked(netns_command(&ns, "sysctl").args(["-q", "-w", &setting]))?;
                }
            }
        }
        Ok(())
    }

    fn health_file(&self, real: &str) -> PathBuf {
        self.run_dir.join(format!("{real}.unhealthy"))
    }

    fn start_backend(&mut self, real: &str, backend: &Path) -> Result<()> {
        // A leftover file from an earlier lab with this prefix would start
        // the backend unhealthy.
        self.set_backend_health(real, true)?;
        let log_path = self.run_dir.join(format!("{real}.log"));
        let log = fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
        let mut cmd = self.command(real, backend);
        cmd.args(["--name", real, "--listen", "0.0.0.0:80", "--listen", "[::]:80"])
            .args(["--udp-port", &UDP_ECHO_PORT.to_string(), "--health-file"])
            .arg(self.health_file(real))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let proc = Proc::spawn(cmd).with_context(|| format!("starting backend {real}"))?;
        self.backends.push((real.to_string(), proc));
        Ok(())
    }

    /// Waits (bounded) until `real`'s backend accepts connections on its
    /// own address, failing early if it exited.
    fn wait_backend(&mut self, real: &str) -> Result<()> {
        let addr = SocketAddr::from((host4(real).expect("known real"), 80));
        let deadline = Instant::now() + BACKEND_START;
        loop {
            let connected = in_netns(&self.ns(real), || {
                TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            })?;
            if connected {
                return Ok(());
            }
            let (_, proc) = self.backends.iter_mut().find(|(r, _)| r == real).expect("started");
            if let Some(status) = proc.try_wait()? {
                bail!(
                    "backend {real} exited with {status}; see {}",
                    self.run_dir.join(format!("{real}.log")).display()
                );
            }
            if Instant::now() > deadline {
                bail!("backend {real} not listening on {addr} after {BACKEND_START:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn write_pid_file(&self) -> Result<()> {
        let text: String =
            self.backends.iter().map(|(real, p)| format!("{real} {}\n", p.pid())).collect();
        let path = self.run_dir.join("pids");
        fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            eprintln!("fulcrum-lab: teardown of {}: {e:#}", self.prefix);
        }
    }
}

/// The names of every namespace a lab with this prefix owns.
fn namespace_names(prefix: &str) -> Vec<String> {
    std::iter::once(SWITCH)
        .chain(HOSTS.iter().map(|(h, _)| *h))
        .map(|h| format!("{prefix}-{h}"))
        .collect()
}

/// The `vrrp` array of a `fulcrum stats --json` document.
pub fn vrrp_instances(stats: &serde_json::Value) -> Result<Vec<VrrpInstance>> {
    let Some(list) = stats.get("vrrp") else { return Ok(Vec::new()) };
    let list = list.as_array().with_context(|| format!("stats field vrrp is not an array: {list}"))?;
    list.iter()
        .map(|v| {
            let text = |key: &str| v.get(key).and_then(|x| x.as_str()).map(str::to_string);
            Ok(VrrpInstance {
                name: text("name").with_context(|| format!("vrrp entry without name: {v}"))?,
                state: text("state").with_context(|| format!("vrrp entry without state: {v}"))?,
                priority: v
                    .get("priority")
                    .and_then(|p| p.as_u64())
                    .and_then(|p| u8::try_from(p).ok())
                    .with_context(|| format!("vrrp entry without priority: {v}"))?,
            })
        })
        .collect()
}

/// The whitespace-separated word after `key` in `text`.
fn word_after(text: &str, key: &str) -> Option<String> {
    let mut words = text.split_whitespace();
    while let Some(w) = words.next() {
        if w == key {
            return words.next().map(str::to_string);
        }
    }
    None
}

/// Deletes the lab's namespaces (exact names; missing ones are fine) and
/// its state directory.
fn remove_lab(prefix: &str, run_dir: &Path) -> Result<()> {
    let mut first_err = None;
    for name in namespace_names(prefix) {
        if !Path::new("/run/netns").join(&name).exists() {
            continue;
        }
        if let Err(e) = run_checked(Command::new("ip").args(["netns", "del", &name])) {
            first_err.get_or_insert(e);
        }
    }
    match fs::remove_dir_all(run_dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            first_err.get_or_insert(anyhow::Error::new(e).context(format!("removing {}", run_dir.display())));
        }
        _ => {}
    }
    first_err.map_or(Ok(()), Err)
}

/// Prefixes become namespace and directory names: keep them plain.
fn validate_prefix(prefix: &str) -> Result<()> {
    let ok = !prefix.is_empty()
        && prefix.len() <= 32
        && prefix.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !ok {
        bail!("lab prefix {prefix:?} must be 1-32 characters of [A-Za-z0-9_-]");
    }
    Ok(())
}

/// XDP tooling expects bpffs at /sys/fs/bpf; mount it if it is missing.
fn ensure_bpffs() -> Result<()> {
    let mounts = fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
    let mounted = mounts.lines().any(|l| {
        let mut f = l.split_whitespace();
        let (_, dir, fstype) = (f.next(), f.next(), f.next());
        dir == Some("/sys/fs/bpf") && fstype == Some("bpf")
    });
    if !mounted {
        run_checked(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))?;
    }
    Ok(())
}
