//! From configuration and observations to what the datapath must do.
//!
//! `Config` is the desired state. The health engine's verdicts and the
//! neighbour table's MACs are observations. [`effective`] combines them
//! into [`Effective`]: per VIP, the backends that may take new flows now.
//! Pure functions on plain data; nothing here touches maps or sockets.
use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    net::IpAddr,
};

use serde::Serialize;

use crate::{
    config::{Config, Protocol, Scheduler},
    health::{Health, Probe},
};

/// A backend's identity: the pool it serves in and its address. The same
/// address in two pools is two backends (each pool has its own check).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct BackendKey {
    pub pool: String,
    pub address: IpAddr,
}

impl fmt::Display for BackendKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.pool, self.address)
    }
}

/// An Ethernet address.
pub type Mac = [u8; 6];

/// Formats a MAC the usual way, `02:00:5e:00:00:01`.
pub fn format_mac(mac: &Mac) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// What the datapath must do now.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Effective {
    /// In configuration order.
    pub vips: Vec<EffectiveVip>,
    /// Every configured backend address and its MAC if known. Backends keep
    /// their datapath identity (and counters) while out of every table.
    pub reals: BTreeMap<IpAddr, Option<Mac>>,
}

/// One VIP and the backends its lookup table is built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EffectiveVip {
    pub name: String,
    pub address: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    pub scheduler: Scheduler,
    /// Maglev table size M (prime).
    pub table_size: u32,
    /// Healthy, weighted, with a known MAC; sorted by address. Empty means
    /// the VIP drops its traffic.
    pub backends: Vec<ActiveBackend>,
}

/// A backend that takes new flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActiveBackend {
    pub address: IpAddr,
    /// >= 1.
    pub weight: u32,
}

/// Why a configured backend is not in its VIPs' tables, if it is not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exclusion {
    /// No health verdict yet (its first check has not finished).
    HealthUnknown,
    /// Its health check failed `fall` times.
    Down,
    /// Weight 0: drained by the operator.
    Drained,
    /// Healthy, but its MAC is neither configured nor in the neighbour table.
    NoMac,
}

impl Exclusion {
    /// Short stable name for the admin API: `health_unknown`, `down`, `drained`, `no_mac`.
    pub fn as_str(self) -> &'static str {
        match self {
            Exclusion::HealthUnknown => "health_unknown",
            Exclusion::Down => "down",
            Exclusion::Drained => "drained",
            Exclusion::NoMac => "no_mac",
        }
    }
}

/// The MAC to send to `address`: configured, else from the neighbour table.
fn mac_of(configured: Option<Mac>, address: IpAddr, neighbours: &HashMap<IpAddr, Mac>) -> Option<Mac> {
    configured.or_else(|| neighbours.get(&address).copied())
}

/// Whether the backend `key` of weight `weight` may take new flows.
pub fn exclusion(
    key: &BackendKey,
    weight: u32,
    mac: Option<Mac>,
    health: &HashMap<BackendKey, Health>,
) -> Option<Exclusion> {
    match health.get(key) {
        None => Some(Exclusion::HealthUnknown),
        Some(Health::Down) => Some(Exclusion::Down),
        Some(Health::Up) if weight == 0 => Some(Exclusion::Drained),
        Some(Health::Up) if mac.is_none() => Some(Exclusion::NoMac),
        Some(Health::Up) => None,
    }
}

/// Combines the desired state with what was observed.
pub fn effective(
    config: &Config,
    health: &HashMap<BackendKey, Health>,
    neighbours: &HashMap<IpAddr, Mac>,
) -> Effective {
    let mut reals = BTreeMap::new();
    for pool in &config.pools {
        for b in &pool.backends {
            let mac = mac_of(b.mac, b.address, neighbours);
            let entry = reals.entry(b.address).or_insert(None);
            *entry = entry.or(mac);
        }
    }
    let vips = config
        .vips
        .iter()
        .map(|vip| {
            let pool = config.pool(&vip.pool).expect("validated config: VIP pools exist");
            let mut backends: Vec<ActiveBackend> = pool
                .backends
                .iter()
                .filter(|b| {
                    let key = BackendKey { pool: pool.name.clone(), address: b.address };
                    let mac = mac_of(b.mac, b.address, neighbours);
                    exclusion(&key, b.weight, mac, health).is_none()
                })
                .map(|b| ActiveBackend { address: b.address, weight: b.weight })
                .collect();
            backends.sort_by_key(|b| b.address);
            EffectiveVip {
                name: vip.name.clone(),
                address: vip.address,
                port: vip.port,
                protocol: vip.protocol,
                scheduler: vip.scheduler,
                table_size: vip.maglev_table_size,
                backends,
            }
        })
        .collect();
    Effective { vips, reals }
}

/// The health checks the configuration asks for: one per backend.
pub fn health_targets(config: &Config) -> Vec<(BackendKey, Probe)> {
    config
        .pools
        .iter()
        .flat_map(|pool| {
            pool.backends.iter().map(move |b| {
                (
                    BackendKey { pool: pool.name.clone(), address: b.address },
                    Probe::from_config(b.address, &pool.health_check),
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
interface = "eth0"
[[vip]]
name = "web"
address = "198.18.1.1"
port = 80
protocol = "tcp"
scheduler = "maglev"
pool = "web"
maglev_table_size = 251
[[pool]]
name = "web"
[pool.health_check]
type = "tcp"
[[pool.backend]]
address = "198.18.0.13"
[[pool.backend]]
address = "198.18.0.11"
mac = "02:00:00:00:00:11"
[[pool.backend]]
address = "198.18.0.12"
weight = 0
[[pool.backend]]
address = "198.18.0.14"
"#;

    fn key(last: u8) -> BackendKey {
        BackendKey { pool: "web".into(), address: IpAddr::from([198, 18, 0, last]) }
    }

    #[test]
    fn only_healthy_weighted_resolved_backends_take_traffic() {
        let config = crate::config::parse(CONFIG, "test.toml").unwrap();
        let health: HashMap<_, _> =
            [(key(11), Health::Up), (key(12), Health::Up), (key(13), Health::Up), (key(14), Health::Down)].into();
        let neighbours: HashMap<_, _> = [(IpAddr::from([198, 18, 0, 13]), [2, 0, 0, 0, 0, 0x13])].into();
        let eff = effective(&config, &health, &neighbours);
        let vip = &eff.vips[0];
        assert_eq!((vip.table_size, vip.port), (251, 80));
        // .11 has a configured MAC, .13 a resolved one; .12 is drained, .14 down.
        let active: Vec<IpAddr> = vip.backends.iter().map(|b| b.address).collect();
        assert_eq!(active, vec![IpAddr::from([198, 18, 0, 11]), IpAddr::from([198, 18, 0, 13])]);
        assert_eq!(eff.reals.len(), 4);
        assert_eq!(eff.reals[&IpAddr::from([198, 18, 0, 14])], None);

        assert_eq!(exclusion(&key(14), 1, None, &health), Some(Exclusion::Down));
        assert_eq!(exclusion(&key(12), 0, None, &health), Some(Exclusion::Drained));
        assert_eq!(exclusion(&key(15), 1, None, &health), Some(Exclusion::HealthUnknown));
        assert_eq!(exclusion(&key(13), 1, None, &health), Some(Exclusion::NoMac));
    }

    #[test]
    fn one_health_target_per_backend_on_the_vip_port() {
        let config = crate::config::parse(CONFIG, "test.toml").unwrap();
        let targets = health_targets(&config);
        assert_eq!(targets.len(), 4);
        assert!(targets.iter().all(|(_, p)| p.addr.port() == 80));
    }
}
