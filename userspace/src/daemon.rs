//! `fulcrum run`: the control loop that owns the running state.
//!
//! One task owns the configuration, the observations (health verdicts,
//! neighbour MACs) and the datapath. Every change recomputes the effective
//! state and, when it differs, writes it to the maps. Health checks and the
//! admin API run as their own tasks and talk to the loop over channels.
use std::{
    collections::HashMap,
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result};
use tokio::{
    net::TcpListener,
    signal::unix::{signal, SignalKind},
    sync::mpsc,
};
use tracing::{error, info, warn};

use crate::{
    admin::{self, AdminRequest, BackendStats, PoolStats, StatsReport, VipBackendSlots, VipStats},
    config::{self, Config},
    datapath::Datapath,
    health::{Health, HealthEngine},
    neighbours::{Interface, Neighbours},
    state::{self, format_mac, BackendKey, Effective, Mac},
};

/// How often the neighbour table is re-read for backend MACs.
const NEIGHBOUR_REFRESH: Duration = Duration::from_secs(1);
/// How often the XDP program's log ring buffer is drained.
const KERNEL_LOG_FLUSH: Duration = Duration::from_millis(250);

/// Runs the daemon with the configuration at `config_path` until SIGINT or
/// SIGTERM; SIGHUP reloads the file (a bad file is rejected and logged, and
/// the running configuration is kept).
///
/// # Errors
/// A bad configuration at startup, a missing interface, the kernel refusing
/// the program, or the admin address being taken. The program is detached
/// on every exit path after it was attached.
pub async fn run(config_path: PathBuf) -> Result<()> {
    let config = config::load(&config_path)?;
    let interface = Interface::lookup(&config.interface)?;
    let mut datapath = Datapath::load(kernel_log_level()).context("loading the XDP program (needs root)")?;
    datapath.set_self_mac(interface.mac)?;
    let mode = datapath.attach(&interface.name)?;
    info!(interface = %interface.name, mac = %format_mac(&interface.mac), ?mode, "XDP program attached");

    let listener = TcpListener::bind(config.admin.listen)
        .await
        .with_context(|| format!("admin API: binding {}", config.admin.listen))?;
    info!(listen = %config.admin.listen, "admin API listening (GET /stats)");
    let (admin_tx, mut admin_rx) = mpsc::channel(16);
    let admin_task = tokio::spawn(admin::serve(listener, admin_tx));

    let (health_tx, mut health_rx) = mpsc::unbounded_channel();
    let mut engine = HealthEngine::new(health_tx);
    let mut control = Control {
        neighbours: Neighbours::connect()?,
        interface,
        config,
        health: HashMap::new(),
        macs: HashMap::new(),
        applied: None,
    };
    engine.set_targets(state::health_targets(&control.config));
    control.refresh_neighbours().await;
    control.sync(&mut datapath);

    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sighup = signal(SignalKind::hangup())?;
    let mut neighbour_tick = tokio::time::interval(NEIGHBOUR_REFRESH);
    let mut log_tick = tokio::time::interval(KERNEL_LOG_FLUSH);
    loop {
        tokio::select! {
            Some(event) = health_rx.recv() => {
                control.health.insert(event.key, event.health);
                // A backend that just came up was just talked to: its MAC is fresh.
                control.refresh_neighbours().await;
                control.sync(&mut datapath);
            }
            _ = neighbour_tick.tick() => {
                if control.refresh_neighbours().await {
                    control.sync(&mut datapath);
                }
            }
            Some(AdminRequest::Stats(reply)) = admin_rx.recv() => {
                let _ = reply.send(control.report(&datapath));
            }
            _ = log_tick.tick() => datapath.flush_kernel_log(),
            _ = sighup.recv() => control.reload(&config_path, &mut engine, &mut datapath),
            _ = sigint.recv() => { info!("SIGINT: shutting down"); break }
            _ = sigterm.recv() => { info!("SIGTERM: shutting down"); break }
        }
    }
    admin_task.abort();
    drop(engine);
    datapath.detach()?;
    info!(interface = %control.interface.name, "XDP program detached");
    Ok(())
}

/// The kernel-side log level follows the daemon's: debug lines (one per
/// dropped packet) only when tracing is at debug or finer.
fn kernel_log_level() -> u8 {
    use tracing::level_filters::LevelFilter;
    if LevelFilter::current() >= LevelFilter::DEBUG {
        aya_log::Level::Debug as u8
    } else {
        aya_log::Level::Info as u8
    }
}

/// The loop's state: desired (config), observed (health, macs), applied.
struct Control {
    neighbours: Neighbours,
    interface: Interface,
    config: Config,
    health: HashMap<BackendKey, Health>,
    /// Neighbour entries for configured backend addresses only.
    macs: HashMap<IpAddr, Mac>,
    /// What the maps hold; `None` before the first write.
    applied: Option<Effective>,
}

impl Control {
    /// Re-reads the neighbour table; true if a backend's MAC changed.
    async fn refresh_neighbours(&mut self) -> bool {
        let table = match self.neighbours.dump(self.interface.index).await {
            Ok(table) => table,
            Err(err) => {
                warn!(error = %err, "reading the neighbour table");
                return false;
            }
        };
        let wanted = |a: &IpAddr| self.config.pools.iter().any(|p| p.backends.iter().any(|b| b.address == *a));
        let macs: HashMap<IpAddr, Mac> = table.into_iter().filter(|(a, _)| wanted(a)).collect();
        if macs == self.macs {
            return false;
        }
        self.macs = macs;
        true
    }

    /// Recomputes the effective state and writes it if it changed.
    fn sync(&mut self, datapath: &mut Datapath) {
        let effective = state::effective(&self.config, &self.health, &self.macs);
        if self.applied.as_ref() == Some(&effective) {
            return;
        }
        for vip in &effective.vips {
            let before = self.applied.as_ref().and_then(|a| a.vips.iter().find(|v| v.name == vip.name));
            if before.map(|b| &b.backends) != Some(&vip.backends) {
                let members: Vec<String> = vip.backends.iter().map(|b| b.address.to_string()).collect();
                if members.is_empty() {
                    warn!(vip = %vip.name, "no backend can take traffic: the VIP drops its packets");
                } else {
                    info!(vip = %vip.name, backends = %members.join(","), "lookup table rebuilt");
                }
            }
        }
        match datapath.apply(&effective) {
            Ok(()) => self.applied = Some(effective),
            Err(err) => error!(error = %err, "writing the datapath maps; will retry on the next change"),
        }
    }

    /// SIGHUP: load the file again; keep running on the old one if it is bad.
    fn reload(&mut self, path: &Path, engine: &mut HealthEngine<BackendKey>, datapath: &mut Datapath) {
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
        let targets = state::health_targets(&new);
        self.health.retain(|key, _| targets.iter().any(|(k, _)| k == key));
        engine.set_targets(targets);
        self.config = new;
        self.sync(datapath);
        info!(path = %path.display(), "configuration reloaded");
    }

    fn report(&self, datapath: &Datapath) -> StatsReport {
        let vips = self
            .config
            .vips
            .iter()
            .map(|vip| {
                let table = datapath.vip_table(&vip.name);
                let counters = datapath.vip_counters(&vip.name);
                VipStats {
                    name: vip.name.clone(),
                    address: vip.address.to_string(),
                    port: vip.port,
                    protocol: vip.protocol.to_string(),
                    scheduler: vip.scheduler.to_string(),
                    pool: vip.pool.clone(),
                    table_size: table.as_ref().map_or(0, |t| t.table_size),
                    backends_in_table: table.as_ref().map_or(0, |t| t.slots.len()),
                    packets: counters.packets,
                    bytes: counters.bytes,
                    backends: table
                        .map(|t| t.slots.into_iter().map(|(a, slots)| VipBackendSlots { address: a.to_string(), slots }).collect())
                        .unwrap_or_default(),
                }
            })
            .collect();
        let pools = self
            .config
            .pools
            .iter()
            .map(|pool| PoolStats {
                name: pool.name.clone(),
                backends: pool
                    .backends
                    .iter()
                    .map(|b| {
                        let key = BackendKey { pool: pool.name.clone(), address: b.address };
                        let mac = b.mac.or_else(|| self.macs.get(&b.address).copied());
                        let counters = datapath.real_counters(b.address);
                        BackendStats {
                            address: b.address.to_string(),
                            weight: b.weight,
                            health: self.health.get(&key).map_or("unknown".into(), |h| h.to_string().to_lowercase()),
                            excluded: state::exclusion(&key, b.weight, mac, &self.health).map(|e| e.as_str().to_string()),
                            mac: mac.map(|m| format_mac(&m)),
                            packets: counters.packets,
                            bytes: counters.bytes,
                        }
                    })
                    .collect(),
            })
            .collect();
        let reasons = datapath
            .reason_counters()
            .into_iter()
            .map(|(reason, c)| (reason.name().to_string(), c.packets))
            .collect();
        StatsReport { vips, pools, reasons }
    }
}
