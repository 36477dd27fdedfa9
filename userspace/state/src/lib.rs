//! The one effective state: what every pool's members may do now.
//!
//! [`Config`] is the desired state. [`Observed`] holds what the node has
//! seen since: health verdicts (and, as they arrive, VRRP states and
//! administrative member flags). [`effective`] is a pure function of the
//! two; its result says, per pool, which members take new traffic and why
//! the others do not, and lists the VIPs that use each pool.
//!
//! Nothing here knows how traffic is forwarded (L2 DSR, IPIP) or whether a
//! pool serves the XDP datapath or the L7 proxy: those consumers take an
//! [`Effective`] and add their own details (the L4 datapath its MACs).
//! Nothing here touches maps or sockets.
use std::{collections::HashMap, net::IpAddr};

use fulcrum_common::Mac;
use fulcrum_config::{BackendConfig, Config, PoolConfig, Protocol, Scheduler};
use fulcrum_health::{Health, Probe};

/// What the node has observed since it read its configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// Health verdicts, keyed by what is checked (not by pool or VIP name,
    /// so a rename loses nothing). A probe with no entry has not reported
    /// its first result yet.
    pub health: HashMap<Probe, Verdict>,
    /// The kernel's usable neighbour entries on the datapath's interface.
    /// [`effective`] does not read them: they are forwarding details that
    /// the L4 datapath resolves MACs from.
    pub neighbours: HashMap<IpAddr, Mac>,
    /// Per VRRP instance name, whether this node is MASTER and so owns the
    /// instance's addresses. An instance with no entry has not reported
    /// yet: it is not MASTER.
    pub vrrp_master: HashMap<String, bool>,
}

/// A health check's latest verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub health: Health,
    /// What the change was about, for operators (`HTTP 503, expected 200`).
    pub detail: String,
}

impl Observed {
    /// Forgets verdicts of probes no longer in `wanted` (after a reload).
    pub fn retain_probes(&mut self, wanted: &[Probe]) {
        self.health.retain(|probe, _| wanted.contains(probe));
    }
}

/// What the datapath and the proxy must do now.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Effective {
    /// In configuration order.
    pub pools: Vec<EffectivePool>,
    /// In configuration order.
    pub vips: Vec<EffectiveVip>,
}

impl Effective {
    /// The pool called `name`; every [`EffectiveVip::pool`] names one.
    pub fn pool(&self, name: &str) -> Option<&EffectivePool> {
        self.pools.iter().find(|p| p.name == name)
    }
}

/// A pool and the state of each of its members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EffectivePool {
    pub name: String,
    /// In configuration order.
    pub members: Vec<Member>,
}

impl EffectivePool {
    /// The members that take new traffic, in configuration order.
    pub fn active(&self) -> impl Iterator<Item = &Member> {
        self.members.iter().filter(|m| m.excluded.is_none())
    }
}

/// One member of a pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub address: IpAddr,
    /// The port the L7 proxy connects to (L4 forwards to the VIP's port).
    pub port: u16,
    /// Apache loadfactor: relative share of new traffic; 0 drains.
    pub weight: u32,
    /// The sticky-session id (Apache `route=`), if configured.
    pub route: Option<String>,
    /// The check that decides its health.
    pub probe: Probe,
    /// `None` until the first check finished.
    pub health: Option<Health>,
    /// The last verdict's detail, if any.
    pub check: Option<String>,
    /// Why it takes no new traffic; `None` means it does.
    pub excluded: Option<Exclusion>,
}

/// A VIP: where its traffic comes in and which pool serves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EffectiveVip {
    pub name: String,
    pub address: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    pub scheduler: Scheduler,
    /// Maglev table size M in slots (a prime).
    pub table_size: u32,
    /// The name of its pool in [`Effective::pools`].
    pub pool: String,
    /// What its established flows do when their member is marked down.
    pub on_marked_down: fulcrum_config::OnMarkedDown,
    /// UDP flows idle this long take a fresh pick.
    pub udp_idle_timeout: std::time::Duration,
    /// Whether this node forwards the VIP's traffic: always, unless a VRRP
    /// instance owns its address and is not MASTER here (then the VIP's
    /// packets are left to the kernel).
    pub forwarding: bool,
}

/// Why a member takes no new traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Exclusion {
    /// No health verdict yet (its first check has not finished).
    HealthUnknown,
    /// Its health check failed `fall` times.
    Down,
    /// Weight 0: drained by the operator.
    Drained,
}

impl Exclusion {
    /// Short stable name for the admin API: `health_unknown`, `down`, `drained`.
    pub fn as_str(self) -> &'static str {
        match self {
            Exclusion::HealthUnknown => "health_unknown",
            Exclusion::Down => "down",
            Exclusion::Drained => "drained",
        }
    }
}

/// The check that decides the health of `backend` in `pool`.
pub fn probe_of(pool: &PoolConfig, backend: &BackendConfig) -> Probe {
    Probe::from_config(backend.address, &pool.health_check)
}

/// Every check the configuration asks for, each once: a backend listed in
/// two pools with the same check is checked once.
pub fn probes(config: &Config) -> Vec<Probe> {
    let mut probes: Vec<Probe> = Vec::new();
    for pool in &config.pools {
        for backend in &pool.backends {
            let probe = probe_of(pool, backend);
            if !probes.contains(&probe) {
                probes.push(probe);
            }
        }
    }
    probes
}

/// Combines the desired state with what was observed.
pub fn effective(config: &Config, observed: &Observed) -> Effective {
    let pools = config
        .pools
        .iter()
        .map(|pool| EffectivePool {
            name: pool.name.clone(),
            members: pool.backends.iter().map(|b| member(pool, b, observed)).collect(),
        })
        .collect();
    let vips = config
        .vips
        .iter()
        .map(|vip| EffectiveVip {
            name: vip.name.clone(),
            address: vip.address,
            port: vip.port,
            protocol: vip.protocol,
            scheduler: vip.scheduler,
            table_size: vip.maglev_table_size,
            pool: vip.pool.clone(),
            on_marked_down: vip.on_marked_down,
            udp_idle_timeout: vip.udp_idle_timeout,
            forwarding: config
                .vrrp_owning(vip.address)
                .is_none_or(|instance| observed.vrrp_master.get(&instance.name).copied().unwrap_or(false)),
        })
        .collect();
    Effective { pools, vips }
}

fn member(pool: &PoolConfig, backend: &BackendConfig, observed: &Observed) -> Member {
    let probe = probe_of(pool, backend);
    let verdict = observed.health.get(&probe);
    let health = verdict.map(|v| v.health);
    let excluded = match health {
        None => Some(Exclusion::HealthUnknown),
        Some(Health::Down) => Some(Exclusion::Down),
        Some(Health::Up) if backend.weight == 0 => Some(Exclusion::Drained),
        Some(Health::Up) => None,
    };
    Member {
        address: backend.address,
        port: backend.port,
        weight: backend.weight,
        route: backend.route.clone(),
        check: verdict.map(|v| v.detail.clone()),
        probe,
        health,
        excluded,
    }
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
[[pool.backend]]
address = "198.18.0.12"
weight = 0
[[pool.backend]]
address = "198.18.0.14"
"#;

    fn observe(config: &Config, verdicts: &[(u8, Health)]) -> Observed {
        let pool = &config.pools[0];
        let health = verdicts
            .iter()
            .map(|&(last, health)| {
                let backend = pool.backends.iter().find(|b| b.address == IpAddr::from([198, 18, 0, last])).unwrap();
                (probe_of(pool, backend), Verdict { health, detail: format!("{health}") })
            })
            .collect();
        Observed { health, ..Observed::default() }
    }

    fn parse(text: &str) -> Config {
        fulcrum_config::parse(text, "test.toml").unwrap()
    }

    #[test]
    fn members_are_active_unless_unknown_down_or_drained() {
        let config = parse(CONFIG);
        let observed = observe(&config, &[(11, Health::Up), (12, Health::Up), (14, Health::Down)]);
        let eff = effective(&config, &observed);
        let pool = eff.pool("web").unwrap();
        let states: Vec<(IpAddr, Option<Exclusion>)> = pool.members.iter().map(|m| (m.address, m.excluded)).collect();
        assert_eq!(
            states,
            vec![
                (IpAddr::from([198, 18, 0, 13]), Some(Exclusion::HealthUnknown)),
                (IpAddr::from([198, 18, 0, 11]), None),
                (IpAddr::from([198, 18, 0, 12]), Some(Exclusion::Drained)),
                (IpAddr::from([198, 18, 0, 14]), Some(Exclusion::Down)),
            ]
        );
        assert_eq!(pool.active().count(), 1);
        assert_eq!(pool.members[3].check.as_deref(), Some("DOWN"));
        let vip = &eff.vips[0];
        assert_eq!((vip.table_size, vip.port, vip.pool.as_str()), (251, 80, "web"));
    }

    #[test]
    fn renaming_a_pool_keeps_its_members_health() {
        let config = parse(CONFIG);
        let observed = observe(&config, &[(11, Health::Up), (13, Health::Up)]);
        let renamed = parse(&CONFIG.replace("name = \"web\"\n[pool", "name = \"www\"\n[pool").replace("pool = \"web\"", "pool = \"www\""));
        assert_eq!(renamed.pools[0].name, "www");
        let eff = effective(&renamed, &observed);
        let active: Vec<IpAddr> = eff.pool("www").unwrap().active().map(|m| m.address).collect();
        assert_eq!(active, vec![IpAddr::from([198, 18, 0, 13]), IpAddr::from([198, 18, 0, 11])]);
        assert_eq!(eff.vips[0].pool, "www");
    }

    #[test]
    fn one_probe_per_distinct_check() {
        let two_pools = format!(
            "{CONFIG}\n[[pool]]\nname = \"other\"\n[pool.health_check]\ntype = \"tcp\"\nport = 80\n[[pool.backend]]\naddress = \"198.18.0.11\"\n[[pool.backend]]\naddress = \"198.18.0.21\"\n"
        );
        let config = parse(&two_pools);
        let probes = probes(&config);
        // 198.18.0.11:80 tcp is shared by both pools.
        assert_eq!(probes.len(), 5);
        assert!(probes.iter().all(|p| p.addr.port() == 80));
        let mut observed = observe(&config, &[(11, Health::Up)]);
        let eff = effective(&config, &observed);
        assert_eq!(eff.pool("other").unwrap().members[0].health, Some(Health::Up));
        let without_11: Vec<Probe> = probes.iter().filter(|p| p.addr.ip() != IpAddr::from([198, 18, 0, 11])).cloned().collect();
        observed.retain_probes(&without_11);
        assert!(observed.health.is_empty());
    }
}

#[cfg(test)]
mod vrrp_tests {
    use super::*;

    #[test]
    fn a_vip_owned_by_vrrp_forwards_only_while_master() {
        let config = fulcrum_config::parse(
            r#"
interface = "eth0"
[[vip]]
name = "owned"
address = "198.18.1.1"
port = 80
protocol = "tcp"
scheduler = "maglev"
pool = "web"
[[vip]]
name = "free"
address = "198.18.1.2"
port = 80
protocol = "tcp"
scheduler = "maglev"
pool = "web"
[[pool]]
name = "web"
[[pool.backend]]
address = "198.18.0.11"
[[vrrp]]
name = "vi4"
vrid = 51
priority = 150
addresses = ["198.18.1.1/32"]
"#,
            "test.toml",
        )
        .unwrap();
        let mut observed = Observed::default();
        let forwarding = |observed: &Observed| -> Vec<bool> { effective(&config, observed).vips.iter().map(|v| v.forwarding).collect() };
        assert_eq!(forwarding(&observed), [false, true]);
        observed.vrrp_master.insert("vi4".into(), true);
        assert_eq!(forwarding(&observed), [true, true]);
        observed.vrrp_master.insert("vi4".into(), false);
        assert_eq!(forwarding(&observed), [false, true]);
    }
}
