//! The control loop: the one owner of the configuration and the
//! observations.
//!
//! Every change (a health verdict, a neighbour entry of a backend, a
//! reload) recomputes the effective state and hands the L4 plan made from
//! it to the datapath writer, which applies it on its own thread. The loop
//! itself never writes a map, so nothing it does takes longer than a
//! computation on plain data; a 10 ms heartbeat measures that and the
//! admin API reports the longest stall.
use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use fulcrum_admin::{AdminCounters, AdminRequest, Limits};
use fulcrum_config::{self as config, Config};
use fulcrum_health::{HealthEngine, HealthEvent, Probe};
use fulcrum_l4::{CounterReader, Datapath, Interface, NeighbourChange, Neighbours, Plan, Writer};
use fulcrum_state::{Observed, Verdict};
use tokio::{
    net::TcpListener,
    signal::unix::{signal, SignalKind},
    sync::mpsc,
    time::MissedTickBehavior,
};
use tracing::{error, info, warn};

use crate::{l7::L7, report, vrrp::{ScriptResult, Vrrp}};
use fulcrum_vrrp::shell::StateChange;

/// How often the whole neighbour table is read again, in case a netlink
/// notification was lost (the subscription is the normal path).
const NEIGHBOUR_RESYNC: Duration = Duration::from_secs(30);
/// How often tracked interfaces are looked at (keepalived follows netlink
/// link events; polling sysfs costs one small read per tracked interface).
const TRACK_POLL: Duration = Duration::from_secs(1);
/// The heartbeat period whose lateness measures control-loop stalls.
pub const HEARTBEAT: Duration = Duration::from_millis(10);

/// Runs the daemon with the configuration at `config_path` until SIGINT or
/// SIGTERM; SIGHUP reloads the file (a bad file is rejected and logged, and
/// the running configuration is kept).
///
/// # Errors
/// A bad configuration at startup, a missing interface, the kernel refusing
/// the program, or the admin address being taken. The program is detached
/// on every exit path after it was attached.
pub async fn run(config_path: PathBuf) -> Result<()> {
    match crate::limits::raise_open_files() {
        Ok((soft, hard)) => info!(soft, hard, "open file limit (RLIMIT_NOFILE)"),
        Err(err) => warn!(error = %err, "could not raise the open file limit"),
    }
    let config = config::load(&config_path)?;
    let interface = Interface::lookup(&config.interface)?;
    let options = fulcrum_l4::LoadOptions { conn_table_size: config.datapath.conn_table_size };
    let mut datapath = Datapath::load_with(options).context("loading the XDP program (needs root)")?;
    datapath.set_node(&fulcrum_l4::NodeSettings::for_interface(&interface, &config))?;
    let mode = datapath.attach(&interface.name)?;
    info!(interface = %interface.name, mac = %interface.mac, ?mode, "XDP program attached");
    let counters = datapath.counter_reader()?;
    let writer = Writer::spawn(datapath).context("starting the datapath writer thread")?;

    let listener = TcpListener::bind(config.admin.listen)
        .await
        .with_context(|| format!("admin API: binding {}", config.admin.listen))?;
    info!(listen = %config.admin.listen, "admin API listening (GET /stats)");
    let (admin_tx, admin_rx) = mpsc::channel(16);
    let admin_counters = AdminCounters::new();
    let admin_task =
        tokio::spawn(fulcrum_admin::serve_with_counters(listener, Limits::default(), admin_counters.clone(), admin_tx));

    // Members start unknown (no health verdict yet), so the proxy answers
    // 503 until the first checks pass, as the XDP path drops.
    let l7 = L7::start(&config, &fulcrum_state::effective(&config, &Observed::default()))?;

    let (vrrp_tx, vrrp_rx) = mpsc::unbounded_channel();
    let mut vrrp = Vrrp::start(&config, vrrp_tx)?;
    let (script_tx, script_rx) = mpsc::unbounded_channel();
    vrrp.start_scripts(script_tx);

    let (health_tx, health_rx) = mpsc::unbounded_channel();
    let mut control = Control {
        neighbours: Neighbours::connect(interface.index)?,
        engine: HealthEngine::new(health_tx),
        config,
        observed: Observed::default(),
        writer,
        l7,
        vrrp,
        counters,
        admin_counters,
        max_stall: Duration::ZERO,
    };
    control.neighbours.watch(backend_addresses(&control.config));
    control.resync_neighbours().await;
    control.engine.set_targets(targets(&control.config));
    control.submit(Instant::now());
    let result = control.run_loop(&config_path, health_rx, admin_rx, vrrp_rx, script_rx).await;

    admin_task.abort();
    let Control { engine, writer, l7, vrrp, .. } = control;
    // First hand the VIPs over (priority 0 lets a BACKUP take over after
    // Skew_Time), while this node still forwards for the flows in flight.
    vrrp.stop();
    drop(engine);
    if let Some(l7) = l7 {
        l7.shutdown();
    }
    let mut datapath = writer.shutdown();
    datapath.detach()?;
    info!(interface = %interface.name, "XDP program detached");
    result
}

/// The health checks to run: each distinct probe once, keyed by itself.
fn targets(config: &Config) -> Vec<(Probe, Probe)> {
    fulcrum_state::probes(config).into_iter().map(|p| (p.clone(), p)).collect()
}

/// Every backend's address: whose next hop (the backend itself, or the
/// router to it) the neighbour table must give.
fn backend_addresses(config: &Config) -> Vec<std::net::IpAddr> {
    config.pools.iter().flat_map(|p| &p.backends).map(|b| b.address).collect()
}

/// The loop's state: desired (config) and observed; the writer holds what
/// is applied.
struct Control {
    neighbours: Neighbours,
    engine: HealthEngine<Probe>,
    config: Config,
    observed: Observed,
    writer: Writer,
    /// The L7 proxy, when listeners are configured.
    l7: Option<L7>,
    /// The VRRP instances (none without `[[vrrp]]`).
    vrrp: Vrrp,
    counters: CounterReader,
    admin_counters: AdminCounters,
    /// Longest heartbeat lateness so far.
    max_stall: Duration,
}

impl Control {
    async fn run_loop(
        &mut self,
        config_path: &Path,
        mut health_rx: mpsc::UnboundedReceiver<HealthEvent<Probe>>,
        mut admin_rx: mpsc::Receiver<AdminRequest>,
        mut vrrp_rx: mpsc::UnboundedReceiver<StateChange>,
        mut script_rx: mpsc::UnboundedReceiver<ScriptResult>,
    ) -> Result<()> {
        let mut sigint = signal(SignalKind::interrupt())?;
        let mut sigterm = signal(SignalKind::terminate())?;
        let mut sighup = signal(SignalKind::hangup())?;
        let mut resync = tokio::time::interval(NEIGHBOUR_RESYNC);
        resync.set_missed_tick_behavior(MissedTickBehavior::Delay);
        resync.reset();
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut last_beat = Instant::now();
        let mut track_tick = tokio::time::interval(TRACK_POLL);
        track_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                Some(change) = vrrp_rx.recv() => {
                    let arrived = Instant::now();
                    info!(instance = %change.instance, vrid = change.vrid, from = %change.from, to = %change.state, reason = ?change.reason, "VRRP state change");
                    self.vrrp.notify(&change);
                    let (name, forwarding) = (change.instance.clone(), change.forwarding);
                    self.observed.vrrp_master.insert(change.instance, change.forwarding);
                    let generation = self.submit(arrived);
                    if forwarding {
                        // The new MASTER claims its addresses only once the
                        // datapath forwards them (see `wait_for_forwarding`).
                        let ready = self.vrrp.ready_signal(&name);
                        self.writer.when_applied(generation, Box::new(ready));
                    }
                }
                Some(result) = script_rx.recv() => {
                    self.vrrp.script_result(result);
                    self.vrrp.track(&fulcrum_state::effective(&self.config, &self.observed));
                }
                _ = track_tick.tick() => {
                    // Interface state is polled; pools and scripts also
                    // re-evaluate on their own events.
                    self.vrrp.track(&fulcrum_state::effective(&self.config, &self.observed));
                }
                Some(event) = health_rx.recv() => {
                    let arrived = Instant::now();
                    self.observed.health.insert(event.key, Verdict { health: event.health, detail: event.detail });
                    self.submit(arrived);
                }
                change = self.neighbours.next_change() => {
                    let arrived = Instant::now();
                    if change == NeighbourChange::Resync {
                        self.resync_neighbours().await;
                        self.submit(arrived);
                    } else if change.apply_to(&mut self.observed.neighbours) && self.concerns_a_backend(change) {
                        self.submit(arrived);
                    }
                }
                _ = resync.tick() => {
                    let arrived = Instant::now();
                    if self.resync_neighbours().await {
                        self.submit(arrived);
                    }
                }
                Some(request) = admin_rx.recv() => match request {
                    AdminRequest::Stats(reply) => {
                        let control = report::Control {
                            writer: self.writer.status(),
                            max_stall: self.max_stall,
                            admin: self.admin_counters.snapshot(),
                        };
                        let _ = reply.send(report::stats(&self.config, &self.observed, &control, &self.counters, self.l7.as_ref(), self.vrrp.stats()));
                    }
                },
                _ = heartbeat.tick() => {
                    let now = Instant::now();
                    self.max_stall = self.max_stall.max((now - last_beat).saturating_sub(HEARTBEAT));
                    last_beat = now;
                }
                _ = sighup.recv() => self.reload(config_path),
                _ = sigint.recv() => { info!("SIGINT: shutting down"); return Ok(()) }
                _ = sigterm.recv() => { info!("SIGTERM: shutting down"); return Ok(()) }
            }
        }
    }

    /// Hands the effective state to the datapath writer and the L7 proxy;
    /// `since` is when the observation behind it arrived.
    fn submit(&mut self, since: Instant) -> u64 {
        let effective = fulcrum_state::effective(&self.config, &self.observed);
        let plan = Plan::new(&effective, &self.config, &fulcrum_l4::macs(&self.config, &self.observed.neighbours));
        let generation = self.writer.submit(plan, since);
        if let Some(l7) = &mut self.l7 {
            l7.publish(&self.config, &effective);
        }
        self.vrrp.track(&effective);
        generation
    }

    fn concerns_a_backend(&self, change: NeighbourChange) -> bool {
        let address = match change {
            NeighbourChange::Resolved(address, _) | NeighbourChange::Lost(address) => address,
            NeighbourChange::Resync => return true,
        };
        self.config.pools.iter().flat_map(|p| &p.backends).any(|b| b.address == address)
    }

    /// Reads the whole neighbour table; true if a backend's entry changed.
    async fn resync_neighbours(&mut self) -> bool {
        let table = match self.neighbours.dump().await {
            Ok(table) => table,
            Err(err) => {
                warn!(error = %err, "reading the neighbour table");
                return false;
            }
        };
        let backend_changed = self
            .config
            .pools
            .iter()
            .flat_map(|p| &p.backends)
            .any(|b| table.get(&b.address) != self.observed.neighbours.get(&b.address));
        self.observed.neighbours = table;
        backend_changed
    }

    /// SIGHUP: load the file again; keep running on the old one if it is bad.
    fn reload(&mut self, path: &Path) {
        let arrived = Instant::now();
        let new = match config::load(path) {
            Ok(new) => new,
            Err(err) => {
                error!("reload rejected, the running configuration is kept:\n{err}");
                return;
            }
        };
        if new.interface != self.config.interface || new.admin != self.config.admin {
            error!("reload rejected: changing `interface` or `[admin] listen` needs a restart; the running configuration is kept");
            return;
        }
        if new.datapath != self.config.datapath {
            error!("reload rejected: changing `[datapath]` (it sizes kernel maps) needs a restart; the running configuration is kept");
            return;
        }
        let same_listeners = match &self.l7 {
            Some(l7) => l7.listens_as(&new),
            None => new.listeners.is_empty(),
        };
        if !self.vrrp.runs(&new) {
            error!("reload rejected: changing `[[vrrp]]` instances needs a restart; the running configuration is kept");
            return;
        }
        if !same_listeners || new.l7 != self.config.l7 {
            let effective = fulcrum_state::effective(&new, &self.observed);
            let next = match &self.l7 {
                Some(l7) => l7.restart(&new, &effective),
                None => L7::start(&new, &effective),
            };
            match next {
                Ok(next) => {
                    if let Some(old) = std::mem::replace(&mut self.l7, next) {
                        // Draining takes up to `[l7] drain_timeout`: not on the loop.
                        std::thread::spawn(move || old.shutdown());
                    }
                    info!("L7 listeners or [l7] changed: a new proxy serves, the old one drains its requests in flight");
                }
                Err(err) => {
                    error!("reload rejected: the new L7 proxy could not start ({err:#}); the running configuration is kept");
                    return;
                }
            }
        }
        let targets = targets(&new);
        let probes: Vec<Probe> = targets.iter().map(|(p, _)| p.clone()).collect();
        self.observed.retain_probes(&probes);
        self.engine.set_targets(targets);
        self.config = new;
        // New backends' routes are looked up by the dump this asks for.
        self.neighbours.watch(backend_addresses(&self.config));
        self.submit(arrived);
        if let Some(l7) = &self.l7 {
            l7.reopen_access_log();
        }
        info!(path = %path.display(), "configuration reloaded");
    }
}
