//! The fulcrum namespace lab: a one-armed load-balancer topology built from
//! network namespaces, veth pairs and a bridge, with real HTTP backends.
//!
//! ```text
//!  {prefix}-client  eth0 198.18.0.10 fd00:18::10 ─┐
//!  {prefix}-lb      eth0 198.18.0.2  fd00:18::2  ─┤  br0 in {prefix}-sw
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
//! Used by `cargo xtask lab`, `cargo xtask demo` and the end-to-end tests.
//! It owns the namespaces and processes it creates and removes them (by
//! exact name and pid) on `down`, on drop, or from another process with
//! [`Lab::down_by_prefix`].
pub mod interrupt;

mod netns;
mod proc;
mod xdp_pass;

use std::fs;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
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
/// The client's address on the lab segment.
pub const CLIENT4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
/// The reals' names, in address order (real1 = .11, real2 = .12, ...).
pub const REALS: [&str; 3] = ["real1", "real2", "real3"];

/// Every host of the lab except the switch, with its last address octet
/// (the same number is the last group of its IPv6 address).
const HOSTS: [(&str, u8); 5] =
    [("client", 10), ("lb", 2), ("real1", 11), ("real2", 12), ("real3", 13)];
/// The namespace holding the bridge.
const SWITCH: &str = "sw";
/// Where per-lab state lives: pid file, health files, backend logs.
const RUN_ROOT: &str = "/run/fulcrum-lab";
/// How long a backend may take to start listening.
const BACKEND_START: Duration = Duration::from_secs(5);

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

/// A running lab. Dropping it tears everything down, as [`Lab::down`] does.
pub struct Lab {
    prefix: String,
    run_dir: PathBuf,
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

    /// Builds the topology (module docs) in namespaces named `{prefix}-sw`,
    /// `{prefix}-client`, `{prefix}-lb`, `{prefix}-real1..3`, and starts
    /// `backend` (a `fulcrum-backend`) in every real, listening on port 80
    /// of all addresses. Returns once every backend accepts connections.
    /// Fails if any of these namespaces already exists (a leftover: remove
    /// it with [`Lab::down_by_prefix`]); on failure, what was created is
    /// removed again.
    pub fn up_with_backend(prefix: &str, backend: &Path) -> Result<Lab> {
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
        let mut lab = Lab { prefix: prefix.to_string(), run_dir, backends: Vec::new(), armed: true };
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
        let mut cmd = self.command("lb", fulcrum);
        cmd.args(["stats", "--json"]);
        let json = run_checked(&mut cmd)?;
        serde_json::from_str(&json).with_context(|| format!("parsing fulcrum stats: {json}"))
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
        for (host, _) in HOSTS {
            run_checked(Command::new("ip").args(["netns", "add", &self.ns(host)]))?;
        }
        let ip_sw = |args: &[&str]| run_checked(Command::new("ip").args(["-n", &sw]).args(args));
        ip_sw(&["link", "set", "lo", "up"])?;
        ip_sw(&["link", "add", "br0", "type", "bridge"])?;
        ip_sw(&["link", "set", "br0", "up"])?;
        for (host, _) in HOSTS {
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
        if host == "client" {
            ip(&["route", "add", &format!("{VIP4}/32"), "via", &LB4.to_string()])?;
            ip(&["-6", "route", "add", &format!("{VIP6}/128"), "via", &LB6.to_string()])?;
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
        cmd.args(["--name", real, "--listen", "0.0.0.0:80", "--listen", "[::]:80", "--health-file"])
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
