//! VRRP as the daemon runs it: one `fulcrum-vrrp` instance per `[[vrrp]]`
//! section, each on its own thread (so nothing the control loop does can
//! delay an advertisement), reporting state changes that become
//! observations: a VIP owned by an instance is forwarded only while that
//! instance is MASTER here.
use std::{sync::mpsc as std_mpsc, time::Duration};

use anyhow::{Context, Result};
use fulcrum_api::VrrpStats;
use fulcrum_config::{Config, VrrpConfig};
use fulcrum_vrrp::{
    shell::{self, Garp, Instance, InstanceConfig, StateChange, Vip},
    Centiseconds, Ipv4ChecksumMode, Version,
};
use tokio::sync::mpsc;

/// The running instances.
pub struct Vrrp {
    instances: Vec<(VrrpConfig, Instance)>,
}

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
        let mut instances = Vec::with_capacity(config.vrrp.len());
        for v in &config.vrrp {
            let instance = shell::spawn(instance_config(v), tx.clone())
                .with_context(|| format!("starting VRRP instance {} (VRID {} on {})", v.name, v.vrid, v.interface))?;
            tracing::info!(instance = %v.name, vrid = v.vrid, interface = %v.interface, priority = v.priority, "VRRP instance started");
            instances.push((v.clone(), instance));
        }
        Ok(Vrrp { instances })
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
        for (_, instance) in self.instances {
            instance.stop();
        }
    }
}

fn instance_config(v: &VrrpConfig) -> InstanceConfig {
    InstanceConfig {
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
    }
}
