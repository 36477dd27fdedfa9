//! Interoperability with keepalived (the Debian package, 2.2.7 here): a
//! fulcrum instance and a keepalived instance in one virtual router, in
//! the namespace lab (tests/common), VRRPv2 with a PASS password, VRRPv3
//! over IPv4 and VRRPv3 over IPv6. Each must elect the right Master and
//! hand over both ways.
//! Needs root; skipped (with a message) when keepalived is not installed.

mod common;

use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use common::{wait_for, wait_state, VrrpLab};
use fulcrum_vrrp::shell::{Garp, InstanceConfig, Vip};
use fulcrum_vrrp::{Centiseconds, Ipv4ChecksumMode, Reason, State, Version};

const KEEPALIVED: &str = "/usr/sbin/keepalived";

/// keepalived running in one namespace, stopped (SIGTERM, then SIGKILL
/// by pid) on drop. keepalived forks a VRRP child; its pid is in the
/// `-r` pid file and it is killed too if it outlives the parent.
struct Keepalived {
    child: Child,
    dir: PathBuf,
}

impl Keepalived {
    fn start(ns: &str, dir: &Path, conf: &str) -> Result<Keepalived> {
        fs::create_dir_all(dir)?;
        let conf_path = dir.join("keepalived.conf");
        fs::write(&conf_path, conf)?;
        let log = fs::File::create(dir.join("keepalived.log"))?;
        let child = Command::new("ip")
            .args(["netns", "exec", ns, KEEPALIVED, "--dont-fork", "--log-console", "--log-detail", "--vrrp"])
            .arg("--use-file")
            .arg(&conf_path)
            .arg("--pid")
            .arg(dir.join("keepalived.pid"))
            .arg("--vrrp_pid")
            .arg(dir.join("vrrp.pid"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting keepalived")?;
        let k = Keepalived { child, dir: dir.to_path_buf() };
        wait_for(Duration::from_secs(5), "keepalived's VRRP process", || k.vrrp_pid().is_some())?;
        Ok(k)
    }

    fn vrrp_pid(&self) -> Option<u32> {
        fs::read_to_string(self.dir.join("vrrp.pid")).ok()?.trim().parse().ok()
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.join("keepalived.log")).unwrap_or_default()
    }

    /// SIGTERM: keepalived's Master sends priority 0 and removes the VIP.
    fn stop(&mut self) -> Result<()> {
        signal(self.child.id(), "TERM");
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        anyhow::bail!("keepalived did not stop on SIGTERM")
    }
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill").args([&format!("-{sig}"), &pid.to_string()]).stderr(Stdio::null()).status();
}

impl Drop for Keepalived {
    fn drop(&mut self) {
        let vrrp = self.vrrp_pid();
        if self.child.try_wait().ok().flatten().is_none() {
            signal(self.child.id(), "KILL");
            let _ = self.child.wait();
        }
        if let Some(pid) = vrrp {
            // Only if it is still keepalived (the pid may have been reused).
            if fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "keepalived") {
                signal(pid, "KILL");
            }
        }
        let _ = fs::remove_dir_all(&self.dir);
        // The parent, if no other test's directory is left in it.
        if let Some(parent) = self.dir.parent() {
            let _ = fs::remove_dir(parent);
        }
    }
}

fn keepalived_conf(version: Version, priority: u8, advert: &str, vip: IpAddr) -> String {
    let auth = match version {
        Version::V2 => "    authentication {\n        auth_type PASS\n        auth_pass s3cret\n    }\n",
        Version::V3 => "",
    };
    format!(
        "global_defs {{\n    router_id fulcrum_interop\n    vrrp_version {v}\n}}\n\
         vrrp_instance VI_1 {{\n    state BACKUP\n    interface eth0\n    virtual_router_id 51\n\
         \x20   priority {priority}\n    advert_int {advert}\n{auth}\
         \x20   virtual_ipaddress {{\n        {vip}/{len} dev eth0\n    }}\n}}\n",
        v = version.number(),
        len = host_prefix(vip),
    )
}

/// 32 for IPv4, 128 for IPv6: keepalived's default, and ours.
fn host_prefix(vip: IpAddr) -> u8 {
    if vip.is_ipv4() { 32 } else { 128 }
}

fn fulcrum_conf(version: Version, priority: u8, interval: Centiseconds, vip: IpAddr) -> InstanceConfig {
    InstanceConfig {
        name: "fulcrum".into(),
        interface: "eth0".into(),
        vrid: 51,
        version,
        priority,
        advert_interval: interval,
        preempt: true,
        preempt_delay: Duration::ZERO,
        password: (version == Version::V2).then(|| b"s3cret".to_vec()),
        vips: vec![Vip { address: vip, prefix_len: host_prefix(vip) }],
        unicast_peers: Vec::new(),
        v4_checksum: Ipv4ChecksumMode::default(),
        garp: Garp::default(),
        hmac: None,
        wait_for_forwarding: None,
        virtual_mac: false,
    }
}

/// fulcrum in r1, keepalived in r2:
/// 1. fulcrum (200) vs keepalived (100): fulcrum is Master, keepalived
///    accepts it (no VIP on r2).
/// 2. fulcrum stops: keepalived takes over (Skew_Time).
/// 3. fulcrum restarts and preempts keepalived.
/// 4. fulcrum at priority 50: keepalived (100) preempts it; fulcrum is a
///    Backup accepting keepalived's adverts.
/// 5. keepalived stops (SIGTERM, priority 0): fulcrum takes over.
fn interop(version: Version, interval: Centiseconds, advert: &str, v6: bool) -> Result<()> {
    if !Path::new(KEEPALIVED).exists() {
        eprintln!("SKIPPED: {KEEPALIVED} not installed (apt-get install keepalived)");
        return Ok(());
    }
    let lab = VrrpLab::up(2)?;
    let vip = if v6 { IpAddr::V6(lab.vip6()) } else { IpAddr::V4(lab.vip4()) };
    let dir = PathBuf::from("/run/fulcrum-vrrp-tests").join(&lab.prefix);
    let mdi = |_p: u8| interval.as_duration() * 4; // generous: 3 intervals + skew
    let mut ka = Keepalived::start(&lab.router(2), &dir, &keepalived_conf(version, 100, advert, vip))?;
    let result = (|| -> Result<()> {
        // 1.
        let (f, rx) = lab.spawn(1, fulcrum_conf(version, 200, interval, vip))?;
        wait_state(&rx, State::Master, Duration::from_secs(6))?;
        wait_for(Duration::from_secs(6), "the VIP on fulcrum only", || lab.holders(vip) == vec![1])?;
        std::thread::sleep(mdi(100));
        assert_eq!(f.state(), State::Master);
        assert_eq!(lab.holders(vip), vec![1], "keepalived stays Backup");
        // 2.
        let stop = Instant::now();
        f.stop();
        wait_for(Duration::from_secs(3), "keepalived taking the VIP", || lab.holders(vip) == vec![2])?;
        eprintln!("{version:?} fulcrum stop -> keepalived Master: {:?}", stop.elapsed());
        // 3.
        let (f, rx) = lab.spawn(1, fulcrum_conf(version, 200, interval, vip))?;
        let m = wait_state(&rx, State::Master, mdi(200) + Duration::from_secs(2))?;
        assert!(matches!(m.reason, Reason::Preempting { priority: 100, .. }), "{m:?}");
        wait_for(Duration::from_secs(3), "keepalived releasing the VIP", || lab.holders(vip) == vec![1])?;
        assert!(f.counters().adverts_accepted >= 1, "fulcrum accepts keepalived's adverts");
        f.stop();
        wait_for(Duration::from_secs(3), "keepalived taking the VIP back", || lab.holders(vip) == vec![2])?;
        // 4.
        let (f, rx) = lab.spawn(1, fulcrum_conf(version, 50, interval, vip))?;
        std::thread::sleep(mdi(50) + interval.as_duration());
        assert_eq!(f.state(), State::Backup, "keepalived (100) stays Master over fulcrum (50)");
        assert_eq!(lab.holders(vip), vec![2]);
        let c = f.counters();
        assert!(c.adverts_accepted >= 2, "{c:?}");
        assert!(c.discards.is_empty(), "no discards of keepalived's adverts: {c:?}");
        // 5.
        let stop = Instant::now();
        ka.stop()?;
        let m = wait_state(&rx, State::Master, Duration::from_secs(3))?;
        assert_eq!(m.reason, Reason::MasterResigned);
        eprintln!("{version:?} keepalived stop -> fulcrum Master: {:?}", m.at - stop);
        wait_for(Duration::from_secs(3), "the VIP on fulcrum only", || lab.holders(vip) == vec![1])?;
        f.stop();
        Ok(())
    })();
    if result.is_err() {
        eprintln!("keepalived log:\n{}", ka.log());
    }
    result
}

#[test]
fn keepalived_vrrpv2_with_password() -> Result<()> {
    interop(Version::V2, Centiseconds::from_secs(1), "1", false)
}

#[test]
fn keepalived_vrrpv3() -> Result<()> {
    interop(Version::V3, Centiseconds(50), "0.5", false)
}

/// VRRPv3 over IPv6 (RFC 9568 section 5.1.2): adverts to ff02::12 from
/// link-local sources, the VIP announced by unsolicited NA.
#[test]
fn keepalived_vrrpv3_ipv6() -> Result<()> {
    interop(Version::V3, Centiseconds(50), "0.5", true)
}
