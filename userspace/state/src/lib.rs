//! The one effective state: what every pool's members may do now.
//!
//! [`Config`] is the desired state. [`Observed`] holds what the node has
//! seen since: health verdicts (and, as they arrive, VRRP states and
//! administrative member flags). [`effective`] is a pure function of the
//! two; its result says, per pool, which members take new traffic and why
//! the others do not, and lists the VIPs that use each pool.
//!
//! # Member status flags
//!
//! Apache mod_proxy_balancer's flags mean the same for an L4 VIP and an L7
//! route, because both read the one [`Effective`] state:
//!
//! | flag | L7 route | L4 VIP |
//! |---|---|---|
//! | `D` disabled | no new requests; sticky sessions fail over | no new flows; established flows stay |
//! | `S` stopped | as `D` | as `D` |
//! | `N` draining (or weight 0) | no new sessions; requests naming it (sticky) still go to it | no new flows; established flows stay |
//! | `R` hot spare | replaces an unusable member of its `lbset`, one for one | the same, per VIP table |
//! | `H` hot standby | only when nothing else of its `lbset` is usable | the same |
//! | `E` in error | set by the proxy's passive checks for `retry` | not applied: L4 follows active checks only |
//!
//! Flags come from the configuration (`status = "+H"`) and, at run time,
//! from [`Observed::admin_status`], which replaces a member's configured
//! flags (the balancer-manager's "set status"), so an administrative
//! change is one more observation through the same function. The choice of
//! which usable members serve (lowest `lbset`, spares, standbys) is
//! [`fulcrum_common::failover`]; a usable member left out by it is
//! excluded as [`Exclusion::Standby`]. The L7 proxy applies the same rule
//! again per request with what only it sees (passive errors, members
//! already tried), so it receives spares, standbys and higher sets as
//! usable members with their roles.
//!
//! Nothing here knows how traffic is forwarded (L2 DSR, IPIP) or whether a
//! pool serves the XDP datapath or the L7 proxy: those consumers take an
//! [`Effective`] and add their own details (the L4 datapath its MACs).
//! Nothing here touches maps or sockets.
use std::{collections::HashMap, net::IpAddr};

use fulcrum_common::Mac;
use fulcrum_common::failover::{rotation, Role};
use fulcrum_config::{BackendConfig, Config, MemberStatus, PoolConfig, Protocol, Scheduler};
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
    /// Status flags an administrator set at run time, by pool name and
    /// member address; they replace the member's configured flags until
    /// removed. Empty unless something sets them.
    pub admin_status: HashMap<(String, IpAddr), MemberStatus>,
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
    /// Its status flags: configured, or set at run time
    /// ([`Observed::admin_status`]).
    pub status: MemberStatus,
    /// Apache `lbset`: lower sets serve first.
    pub lbset: u8,
}

impl Member {
    /// Whether requests that name this member through a sticky session
    /// may go to it: it is healthy and neither disabled nor stopped (a
    /// draining member, a spare or standby not in use keep their sessions).
    pub fn takes_sessions(&self) -> bool {
        matches!(self.excluded, None | Some(Exclusion::Drained) | Some(Exclusion::Standby))
    }

    /// Its role in failover (hot spare, hot standby or neither).
    pub fn role(&self) -> Role {
        self.status.role
    }
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
    /// Weight 0 or status `N`: drained by the operator (sticky sessions
    /// to it are still honoured by the L7 proxy).
    Drained,
    /// Status `D`: disabled by the operator.
    Disabled,
    /// Status `S`: stopped by the operator.
    Stopped,
    /// Usable, but not needed now: a hot spare with no failed member to
    /// replace, a hot standby while others serve, or a member of a higher
    /// `lbset` than the one serving.
    Standby,
}

impl Exclusion {
    /// Short stable name for the admin API: `health_unknown`, `down`,
    /// `drained`, `disabled`, `stopped`, `standby`.
    pub fn as_str(self) -> &'static str {
        match self {
            Exclusion::HealthUnknown => "health_unknown",
            Exclusion::Down => "down",
            Exclusion::Drained => "drained",
            Exclusion::Disabled => "disabled",
            Exclusion::Stopped => "stopped",
            Exclusion::Standby => "standby",
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
            members: members(pool, observed),
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

/// The pool's members with their own exclusions, then those usable ones
/// that the failover rule leaves out marked [`Exclusion::Standby`].
fn members(pool: &PoolConfig, observed: &Observed) -> Vec<Member> {
    let mut members: Vec<Member> = pool.backends.iter().map(|b| member(pool, b, observed)).collect();
    let usable = |m: &Member| m.excluded.is_none();
    if let Some(r) = rotation(members.len(), |i| members[i].lbset, |i| members[i].role(), |i| usable(&members[i])) {
        for (i, m) in members.iter_mut().enumerate() {
            if usable(m) && !r.contains(i, m.lbset, m.role(), true) {
                m.excluded = Some(Exclusion::Standby);
            }
        }
    }
    members
}

fn member(pool: &PoolConfig, backend: &BackendConfig, observed: &Observed) -> Member {
    let probe = probe_of(pool, backend);
    let verdict = observed.health.get(&probe);
    let health = verdict.map(|v| v.health);
    let status = observed.admin_status.get(&(pool.name.clone(), backend.address)).copied().unwrap_or(backend.status);
    // Health first, so that an L4 VIP's `on_marked_down` still sees a
    // down member as down whatever its flags.
    let excluded = match health {
        None => Some(Exclusion::HealthUnknown),
        Some(Health::Down) => Some(Exclusion::Down),
        Some(Health::Up) if status.stopped => Some(Exclusion::Stopped),
        Some(Health::Up) if status.disabled => Some(Exclusion::Disabled),
        Some(Health::Up) if backend.weight == 0 || status.draining => Some(Exclusion::Drained),
        Some(Health::Up) => None,
    };
    Member {
        status,
        lbset: backend.lbset,
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

#[cfg(test)]
mod status_tests {
    use super::*;

    /// A pool "web" of backends 198.18.0.1x, each line's extra keys given.
    fn config(backends: &[&str]) -> Config {
        let mut text = String::from(
            "interface = \"eth0\"\n[[vip]]\nname = \"web\"\naddress = \"198.18.1.1\"\nport = 80\nprotocol = \"tcp\"\nscheduler = \"maglev\"\npool = \"web\"\n[[pool]]\nname = \"web\"\n",
        );
        for (i, extra) in backends.iter().enumerate() {
            text.push_str(&format!("[[pool.backend]]\naddress = \"198.18.0.{}\"\n{extra}\n", 10 + i));
        }
        fulcrum_config::parse(&text, "t").unwrap()
    }

    /// Every backend up except those listed down.
    fn observed(config: &Config, down: &[usize]) -> Observed {
        let pool = &config.pools[0];
        let health = pool
            .backends
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let health = if down.contains(&i) { Health::Down } else { Health::Up };
                (probe_of(pool, b), Verdict { health, detail: String::new() })
            })
            .collect();
        Observed { health, ..Observed::default() }
    }

    fn exclusions(config: &Config, observed: &Observed) -> Vec<Option<&'static str>> {
        effective(config, observed).pools[0].members.iter().map(|m| m.excluded.map(Exclusion::as_str)).collect()
    }

    #[test]
    fn flags_exclude_members_for_l4_and_l7_alike() {
        let c = config(&["status = \"+D\"", "status = \"+S\"", "status = \"+N\"", "weight = 0", "", "status = \"+D\""]);
        let mut o = observed(&c, &[5]);
        assert_eq!(
            exclusions(&c, &o),
            [Some("disabled"), Some("stopped"), Some("drained"), Some("drained"), None, Some("down")]
        );
        let eff = effective(&c, &o);
        let pool = &eff.pools[0];
        // Only the unflagged member is in the L4 table; a draining member
        // keeps its sticky sessions, a disabled or stopped one does not.
        assert_eq!(pool.active().map(|m| m.address).collect::<Vec<_>>(), [IpAddr::from([198, 18, 0, 14])]);
        let sessions: Vec<bool> = pool.members.iter().map(Member::takes_sessions).collect();
        assert_eq!(sessions, [false, false, true, true, true, false]);
        assert_eq!(pool.members[0].status.letters(), "D");
        // At run time an administrator clears D on the first member and
        // sets it on the fifth: the same function, one more observation.
        o.admin_status.insert(("web".into(), IpAddr::from([198, 18, 0, 10])), MemberStatus::default());
        o.admin_status.insert(
            ("web".into(), IpAddr::from([198, 18, 0, 14])),
            MemberStatus { disabled: true, ..MemberStatus::default() },
        );
        assert_eq!(
            exclusions(&c, &o),
            [None, Some("stopped"), Some("drained"), Some("drained"), Some("disabled"), Some("down")]
        );
    }

    #[test]
    fn spares_standbys_and_lbsets_follow_apache() {
        let c = config(&["", "", "status = \"+R\"", "status = \"+R\"", "status = \"+H\"", "lbset = 1"]);
        // All up: the two actives serve; spares, standby and set 1 wait.
        let standby = Some("standby");
        assert_eq!(exclusions(&c, &observed(&c, &[])), [None, None, standby, standby, standby, standby]);
        // One active down: one spare replaces it.
        assert_eq!(exclusions(&c, &observed(&c, &[0])), [Some("down"), None, None, standby, standby, standby]);
        // Both actives down, and the first spare too: the second spare alone.
        assert_eq!(
            exclusions(&c, &observed(&c, &[0, 1, 2])),
            [Some("down"), Some("down"), Some("down"), None, standby, standby]
        );
        // Actives and spares down: the hot standby.
        assert_eq!(
            exclusions(&c, &observed(&c, &[0, 1, 2, 3])),
            [Some("down"), Some("down"), Some("down"), Some("down"), None, standby]
        );
        // Set 0 entirely down: set 1 serves.
        assert_eq!(
            exclusions(&c, &observed(&c, &[0, 1, 2, 3, 4])),
            [Some("down"), Some("down"), Some("down"), Some("down"), Some("down"), None]
        );
        // A draining active counts as unusable: a spare replaces it.
        let c = config(&["status = \"+N\"", "", "status = \"+R\""]);
        assert_eq!(exclusions(&c, &observed(&c, &[])), [Some("drained"), None, None]);
    }
}
