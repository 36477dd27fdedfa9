//! VRRP as the daemon runs it: one `fulcrum-vrrp` instance per `[[vrrp]]`
//! section, each on its own thread (so nothing the control loop does can
//! delay an advertisement), reporting state changes that become
//! observations: a VIP owned by an instance is forwarded only while that
//! instance is MASTER here.
use std::{collections::HashMap, future::Future, net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr}, process::Stdio, sync::mpsc as std_mpsc, time::Duration};

use anyhow::{Context, Result};
use fulcrum_api::VrrpStats;
use fulcrum_config::{Config, TrackKind, VrrpAuthKey, VrrpConfig};
use fulcrum_state::Effective;
use fulcrum_vrrp::{
    auth::Key,
    shell::{self, Garp, Instance, InstanceConfig, StateChange, SyncGroup, Vip},
    track::{effective_priority, Tracked},
    Centiseconds, Ipv4ChecksumMode, Reason, State, Version,
};
use tokio::sync::mpsc;

/// The running instances.
pub struct Vrrp {
    instances: Vec<(VrrpConfig, Instance)>,
    /// What tracking last made of each instance's priority.
    tracked: Vec<Tracked>,
    /// Results of the conditions checked off the control loop (scripts,
    /// `xdp`, `l7`) by (instance, track) index; each counts as failing
    /// until its first check reports, so a node never claims MASTER on an
    /// unchecked condition.
    scripts: HashMap<(usize, usize), bool>,
    /// The script and probe runners; dropping them stops them.
    runners: Vec<tokio::task::JoinHandle<()>>,
    /// The L7 listeners' addresses, for `l7` tracks (changing them needs
    /// a restart, so they are fixed for the daemon's life).
    listeners: Vec<SocketAddr>,
    /// The XDP program the daemon attached (it attaches before VRRP
    /// starts), as the interface reported it then: an `xdp` track fails
    /// when the interface has no program or another one.
    xdp_program: Option<u32>,
}

/// A tracked script's result: instance index, track index, whether it
/// exited 0 in time.
pub type ScriptResult = (usize, usize, bool);

impl Vrrp {
    /// Starts every configured instance; their state changes arrive on
    /// `changes`, starting with each one's first state.
    ///
    /// # Errors
    /// An instance's interface, sockets or addresses could not be set up
    /// (needs CAP_NET_RAW and CAP_NET_ADMIN).
    pub fn start(config: &Config, changes: mpsc::UnboundedSender<StateChange>) -> Result<Vrrp> {
        // The instances report on a std channel from their own threads; a
        // forwarding thread hands each report to the tokio loop.
        let (tx, rx) = std_mpsc::channel::<StateChange>();
        std::thread::Builder::new()
            .name("fulcrum-vrrp-reports".into())
            .spawn(move || {
                while let Ok(change) = rx.recv() {
                    if changes.send(change).is_err() {
                        return;
                    }
                }
            })
            .context("starting the VRRP report thread")?;
        // One shell group per [[vrrp_sync_group]]: its members' threads
        // make each other follow directly, not through the control loop.
        let groups: Vec<(String, Vec<String>, SyncGroup)> = config
            .vrrp_sync_groups()
            .into_iter()
            .map(|g| {
                let handle = SyncGroup::new(g.name.clone(), g.instances.len());
                (g.name, g.instances, handle)
            })
            .collect();
        let mut instances = Vec::with_capacity(config.vrrp.len());
        for v in &config.vrrp {
            let cfg = instance_config(v).with_context(|| format!("VRRP instance {}", v.name))?;
            let member = v.sync_group.as_ref().and_then(|name| {
                let (_, members, handle) = groups.iter().find(|(n, _, _)| n == name)?;
                Some((handle, members.iter().position(|m| *m == v.name)?))
            });
            // The shell sets up netlink on a runtime of its own, which may
            // not start on a thread of the daemon's tokio runtime: spawn
            // from a plain thread (the network namespace is the same).
            let spawned = std::thread::scope(|scope| {
                scope
                    .spawn(|| match member {
                        Some((group, index)) => shell::spawn_synced(cfg, tx.clone(), group, index),
                        None => shell::spawn(cfg, tx.clone()),
                    })
                    .join()
                    .expect("spawning a VRRP instance does not panic")
            });
            let instance = spawned
                .with_context(|| format!("starting VRRP instance {} (VRID {} on {})", v.name, v.vrid, v.interface))?;
            tracing::info!(instance = %v.name, vrid = v.vrid, interface = %v.interface, priority = v.priority, "VRRP instance started");
            instances.push((v.clone(), instance));
        }
        let tracked = instances.iter().map(|(v, _)| Tracked::Priority(v.priority)).collect();
        let tracks_xdp = config.vrrp.iter().flat_map(|v| &v.track).any(|t| matches!(t.kind, TrackKind::Xdp { .. }));
        let xdp_program = if tracks_xdp {
            // Blocking netlink: from a plain thread, not the runtime's.
            let interface = config.interface.clone();
            let id = std::thread::spawn(move || shell::xdp_program_id(&interface))
                .join()
                .expect("an rtnetlink request does not panic")
                .with_context(|| format!("reading the XDP program of {}", config.interface))?;
            tracing::info!(interface = %config.interface, program = ?id, "VRRP tracks this XDP program");
            id
        } else {
            None
        };
        let listeners = config.listeners.iter().map(|l| l.address).collect();
        Ok(Vrrp { instances, tracked, scripts: HashMap::new(), runners: Vec::new(), listeners, xdp_program })
    }

    /// Starts one task per tracked script, and per `xdp` or `l7` track,
    /// reporting on `results`: their checks block (a process, a netlink
    /// request, a connect), so they run off the control loop, which only
    /// reads their last results in [`Vrrp::track`]. Call from inside the
    /// tokio runtime.
    pub fn start_scripts(&mut self, results: mpsc::UnboundedSender<ScriptResult>) {
        for (i, (v, _)) in self.instances.iter().enumerate() {
            for (j, track) in v.track.iter().enumerate() {
                let results = results.clone();
                let report = move |ok| results.send((i, j, ok)).is_ok();
                match &track.kind {
                    TrackKind::Script { command, interval, timeout } => {
                        let (command, interval, timeout) = (command.clone(), *interval, *timeout);
                        self.runners.push(tokio::spawn(run_script(command, interval, timeout, report)));
                    }
                    TrackKind::Xdp { interface } => {
                        let (interface, expected) = (interface.clone(), self.xdp_program);
                        let check = move || xdp_attached(interface.clone(), expected);
                        self.runners.push(tokio::spawn(run_probe(PROBE_EVERY, check, report)));
                    }
                    TrackKind::L7 => {
                        let listeners = self.listeners.clone();
                        let check = move || listeners_accept(listeners.clone());
                        self.runners.push(tokio::spawn(run_probe(PROBE_EVERY, check, report)));
                    }
                    TrackKind::Pool { .. } | TrackKind::Interface { .. } => {}
                }
            }
        }
    }

    /// Records a script's result.
    pub fn script_result(&mut self, (instance, track, ok): ScriptResult) {
        self.scripts.insert((instance, track), ok);
    }

    /// Evaluates every tracked condition against `effective` (pools), the
    /// interfaces' state and the scripts' last results, and hands each
    /// instance its new priority or FAULT when that changed.
    pub fn track(&mut self, effective: &Effective) {
        for (i, (v, instance)) in self.instances.iter().enumerate() {
            let conditions = v.track.iter().enumerate().map(|(j, t)| {
                let holds = match &t.kind {
                    TrackKind::Pool { pool, min_up } => {
                        effective.pool(pool).map_or(0, |p| p.active().count()) >= *min_up as usize
                    }
                    TrackKind::Interface { name } => interface_up(name),
                    TrackKind::Script { .. } | TrackKind::Xdp { .. } | TrackKind::L7 => {
                        self.scripts.get(&(i, j)).copied().unwrap_or(false)
                    }
                };
                (t.weight, holds)
            });
            let now = effective_priority(v.priority, conditions);
            if now == self.tracked[i] {
                continue;
            }
            tracing::info!(instance = %v.name, from = ?self.tracked[i], to = ?now, "VRRP tracking changed the instance's priority");
            match now {
                Tracked::Fault => instance.set_fault(true),
                Tracked::Priority(p) => {
                    if self.tracked[i] == Tracked::Fault {
                        instance.set_fault(false);
                    }
                    instance.set_priority(p);
                }
            }
            self.tracked[i] = now;
        }
    }

    /// A callable that tells instance `name` the datapath now forwards
    /// its addresses, so a new MASTER may claim and announce them; to run
    /// once the writer has applied the state that forwards them.
    pub fn ready_signal(&self, name: &str) -> impl FnOnce() + Send + 'static {
        let signal = self.instances.iter().find(|(v, _)| v.name == name).map(|(_, i)| i.forwarding_ready_signal());
        move || {
            if let Some(signal) = signal {
                signal();
            }
        }
    }

    /// Runs the notify command `change` calls for, if one is configured,
    /// without waiting for it.
    pub fn notify(&self, change: &StateChange) {
        let Some((v, _)) = self.instances.iter().find(|(v, _)| v.name == change.instance) else { return };
        let command = match (change.state, &change.reason) {
            (_, Reason::Shutdown) => &v.notify.stop,
            (State::Master, _) => &v.notify.master,
            (State::Backup, _) => &v.notify.backup,
            (State::Fault, _) => &v.notify.fault,
            (State::Initialize, _) => return,
        };
        let Some(argv) = command else { return };
        let mut cmd = notify_command(argv, change);
        let name = v.name.clone();
        tokio::spawn(async move {
            let result = match cmd.spawn() {
                Ok(mut child) => tokio::time::timeout(NOTIFY_TIMEOUT, child.wait()).await,
                Err(err) => Ok(Err(err)),
            };
            match result {
                Ok(Ok(status)) if status.success() => tracing::debug!(instance = %name, "notify command done"),
                Ok(Ok(status)) => tracing::warn!(instance = %name, %status, "notify command failed"),
                Ok(Err(err)) => tracing::warn!(instance = %name, error = %err, "notify command could not run"),
                Err(_) => tracing::warn!(instance = %name, "notify command still running after {NOTIFY_TIMEOUT:?}: killed"),
            }
        });
    }

    /// Whether `config` asks for exactly the instances running: instances
    /// own sockets and threads, so changing them needs a restart.
    pub fn runs(&self, config: &Config) -> bool {
        self.instances.len() == config.vrrp.len() && self.instances.iter().zip(&config.vrrp).all(|((a, _), b)| a == b)
    }

    /// Each instance's state, priority and counters.
    pub fn stats(&self) -> Vec<VrrpStats> {
        self.instances
            .iter()
            .map(|(v, instance)| {
                let counters = instance.counters();
                VrrpStats {
                    name: v.name.clone(),
                    vrid: v.vrid,
                    interface: v.interface.clone(),
                    state: instance.state().to_string(),
                    priority: instance.priority(),
                    configured_priority: v.priority,
                    master_address: instance.master_address().map(|a| a.to_string()),
                    addresses: v.addresses.iter().map(|(a, p)| format!("{a}/{p}")).collect(),
                    adverts_sent: counters.adverts_sent,
                    adverts_accepted: counters.adverts_accepted,
                    transitions: counters.transitions,
                    discards: counters.discards.iter().map(|(k, n)| (k.to_string(), *n)).collect(),
                }
            })
            .collect()
    }

    /// Stops every instance gracefully: a MASTER sends priority 0 so a
    /// BACKUP takes over after Skew_Time, and releases its addresses.
    pub fn stop(self) {
        for runner in &self.runners {
            runner.abort();
        }
        for (_, instance) in self.instances {
            instance.stop();
        }
    }
}

/// The longest a new MASTER waits for the datapath before claiming its
/// addresses: far above an apply (milliseconds), far below any advert
/// timeout that matters.
const FORWARDING_WAIT: Duration = Duration::from_millis(200);

/// How long a notify command may run before it is killed.
const NOTIFY_TIMEOUT: Duration = Duration::from_secs(60);

/// The notify command for `change`: `argv` run directly (never through a
/// shell, so no configuration text is ever interpreted), with the
/// instance, VRID, new state and reason in its environment.
fn notify_command(argv: &[String], change: &StateChange) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .env("FULCRUM_VRRP_INSTANCE", &change.instance)
        .env("FULCRUM_VRRP_VRID", change.vrid.to_string())
        .env("FULCRUM_VRRP_STATE", change.state.to_string())
        .env("FULCRUM_VRRP_REASON", format!("{:?}", change.reason))
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

/// Runs `command` every `interval`, killing a run that outlasts
/// `timeout`, and reports each outcome until `report` returns false.
async fn run_script(command: Vec<String>, interval: Duration, timeout: Duration, report: impl Fn(bool) -> bool) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let mut cmd = tokio::process::Command::new(&command[0]);
        cmd.args(&command[1..]).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).kill_on_drop(true);
        let ok = match cmd.spawn() {
            Ok(mut child) => matches!(tokio::time::timeout(timeout, child.wait()).await, Ok(Ok(status)) if status.success()),
            Err(_) => false,
        };
        if !report(ok) {
            return;
        }
    }
}

/// How often `xdp` and `l7` tracks are checked.
const PROBE_EVERY: Duration = Duration::from_millis(500);

/// How long an `l7` track's connect to a listener may take.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// Runs `check` every `interval` and reports each outcome until `report`
/// returns false.
async fn run_probe<F, Fut>(interval: Duration, mut check: F, report: impl Fn(bool) -> bool)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if !report(check().await) {
            return;
        }
    }
}

/// Whether `interface` has an XDP program attached (rtnetlink's IFLA_XDP),
/// and it is `expected` when that is known: someone's `ip link set dev
/// eth0 xdp off` (or a program of theirs in its place) fails the track.
async fn xdp_attached(interface: String, expected: Option<u32>) -> bool {
    let id = tokio::task::spawn_blocking(move || shell::xdp_program_id(&interface)).await;
    match id {
        Ok(Ok(Some(id))) => expected.is_none_or(|e| e == id),
        _ => false,
    }
}

/// Whether every L7 listener accepts a TCP connection (closed at once;
/// the proxy sees an empty connection). An unspecified listener address
/// is tried on the loopback address of its family.
async fn listeners_accept(listeners: Vec<SocketAddr>) -> bool {
    if listeners.is_empty() {
        return false;
    }
    for address in listeners {
        let target = connect_address(address);
        match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(target)).await {
            Ok(Ok(_)) => {}
            Ok(Err(err)) => {
                tracing::debug!(listener = %address, error = %err, "VRRP l7 track: listener refuses");
                return false;
            }
            Err(_) => {
                tracing::debug!(listener = %address, "VRRP l7 track: listener does not accept in time");
                return false;
            }
        }
    }
    true
}

/// Where to connect to reach a listener bound to `address`.
fn connect_address(address: SocketAddr) -> SocketAddr {
    match address.ip() {
        IpAddr::V4(a) if a.is_unspecified() => SocketAddr::new(Ipv4Addr::LOCALHOST.into(), address.port()),
        IpAddr::V6(a) if a.is_unspecified() => SocketAddr::new(Ipv6Addr::LOCALHOST.into(), address.port()),
        _ => address,
    }
}

/// Whether `name`'s operational state lets traffic through: `up`, or
/// `unknown` (virtual devices without carrier reporting).
fn interface_up(name: &str) -> bool {
    std::fs::read_to_string(format!("/sys/class/net/{name}/operstate"))
        .is_ok_and(|s| matches!(s.trim(), "up" | "unknown"))
}

/// The shell's configuration of `v`; reads its HMAC key file, if any (the
/// key is never logged: [`Key`]'s Debug shows its length only).
fn instance_config(v: &VrrpConfig) -> Result<InstanceConfig> {
    let hmac = match &v.auth_key {
        None => None,
        Some(VrrpAuthKey::File(path)) => {
            let bytes = std::fs::read(path).with_context(|| format!("reading auth_key_file {}", path.display()))?;
            Some(Key::from_file_contents(bytes).with_context(|| format!("auth_key_file {}", path.display()))?)
        }
        Some(VrrpAuthKey::Inline(key)) => {
            tracing::warn!(instance = %v.name, "VRRP auth_key is inline in the configuration file; prefer auth_key_file (a file only root reads)");
            Some(Key::new(key.as_bytes().to_vec()).context("auth_key")?)
        }
    };
    if hmac.is_some() {
        tracing::info!(instance = %v.name, "VRRP adverts carry fulcrum's non-standard HMAC-SHA256 trailer: only fulcrum peers with the same key are heard");
    }
    Ok(InstanceConfig {
        name: v.name.clone(),
        interface: v.interface.clone(),
        vrid: v.vrid,
        version: if v.version == 2 { Version::V2 } else { Version::V3 },
        priority: v.priority,
        // Validated: whole centiseconds (v3) or seconds (v2), in range.
        advert_interval: Centiseconds((v.advert_interval.as_millis() / 10) as u16),
        preempt: v.preempt,
        preempt_delay: v.preempt_delay,
        password: v.password.as_ref().map(|p| p.as_bytes().to_vec()),
        vips: v.addresses.iter().map(|&(address, prefix_len)| Vip { address, prefix_len }).collect(),
        unicast_peers: v.unicast_peers.clone(),
        v4_checksum: Ipv4ChecksumMode::default(),
        garp: Garp { repeat: 5, delay: Duration::from_millis(100) },
        hmac,
        // The control loop confirms once the datapath forwards the
        // addresses (see `Vrrp::forwarding_ready`); a stuck loop cannot
        // keep a MASTER from claiming them for longer than this.
        wait_for_forwarding: Some(FORWARDING_WAIT),
        virtual_mac: v.virtual_mac,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    /// The `interface` track: `lo` (operstate `unknown`, as virtual devices
    /// report) passes; a missing interface fails.
    #[test]
    fn interface_track_reads_the_operational_state() {
        assert!(interface_up("lo"));
        assert!(!interface_up("fulcrum-none0"));
    }

    #[tokio::test]
    async fn notify_runs_argv_with_the_state_in_its_environment() {
        let dir = std::env::temp_dir().join(format!("fulcrum-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("out");
        let argv: Vec<String> = vec![
            "/bin/sh".into(),
            "-c".into(),
            "echo \"$1 $FULCRUM_VRRP_INSTANCE $FULCRUM_VRRP_VRID $FULCRUM_VRRP_STATE\" > \"$2\"".into(),
            "notify".into(),
            "arg; rm -rf /".into(),
            out.display().to_string(),
        ];
        let change = StateChange {
            instance: "vi4".into(),
            vrid: 51,
            from: State::Backup,
            state: State::Master,
            reason: Reason::MasterDown,
            forwarding: true,
            at: Instant::now(),
        };
        let status = notify_command(&argv, &change).status().await.unwrap();
        assert!(status.success());
        // The argument arrives as one word, never interpreted.
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "arg; rm -rf / vi4 51 MASTER\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn l7_track_needs_every_listener_to_accept() {
        let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let a_addr = a.local_addr().unwrap();
        // Bound, not listening: its port refuses connections, and stays
        // ours (a closed port could be taken by a parallel test).
        let closed = tokio::net::TcpSocket::new_v4().unwrap();
        closed.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let closed_addr = closed.local_addr().unwrap();
        // An unspecified address is tried on loopback.
        let a_any = SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), a_addr.port());
        assert_eq!(connect_address(a_any), a_addr);
        assert!(listeners_accept(vec![a_any, a_addr]).await);
        assert!(!listeners_accept(vec![a_addr, closed_addr]).await);
        assert!(!listeners_accept(Vec::new()).await);
    }

    #[tokio::test]
    async fn xdp_track_fails_without_a_program() {
        // Loopback has no XDP program here; an unknown interface fails too.
        assert!(!xdp_attached("lo".into(), None).await);
        assert!(!xdp_attached("fulcrum-no-such-if".into(), None).await);
    }

    #[tokio::test]
    async fn scripts_report_success_failure_and_timeout() {
        let results = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        for (argv, want) in [
            (vec!["/bin/true".to_owned()], true),
            (vec!["/bin/false".to_owned()], false),
            (vec!["/bin/sleep".to_owned(), "5".to_owned()], false),
            (vec!["/nonexistent/program".to_owned()], false),
        ] {
            let sink = std::sync::Arc::clone(&results);
            let started = Instant::now();
            run_script(argv, Duration::from_millis(100), Duration::from_millis(200), move |ok| {
                sink.lock().unwrap().push(ok);
                false
            })
            .await;
            assert!(started.elapsed() < Duration::from_secs(3));
            assert_eq!(results.lock().unwrap().pop(), Some(want));
        }
    }
}
