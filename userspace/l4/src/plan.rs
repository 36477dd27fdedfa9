//! From the effective state to what the XDP maps must hold: the L4
//! datapath's own view, adding what only it needs (VIP keys, scheduler
//! flags, and for L2 DSR each member's MAC).
//!
//! Pure: no maps, no sockets. The writer ([`crate::Datapath::apply`])
//! diffs a [`Plan`] against what the maps hold.
use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
};

use fulcrum_common::{Mac, VipKey, VIP_F_HASH_SRC_ONLY, VIP_F_IPIP, VIP_F_STANDBY};
use fulcrum_config::{Config, Forwarding, OnMarkedDown, Scheduler};
use fulcrum_state::{Effective, Exclusion};

/// What the maps must hold.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// In configuration order.
    pub vips: Vec<PlanVip>,
    /// Every member address of every pool, with the MAC to send it if one
    /// is known. Addresses keep their datapath id (and counters) while out
    /// of every table.
    pub reals: BTreeMap<IpAddr, Option<Mac>>,
}

/// One VIP's entry and the members its Maglev table is built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanVip {
    pub name: String,
    pub key: VipKey,
    /// `VIP_F_*` bits.
    pub flags: u32,
    /// Maglev table size M (prime).
    pub table_size: u32,
    /// Address and weight (>= 1) of each member that takes new traffic
    /// and has a MAC, sorted by address (the Maglev input order, the same
    /// on every node). Empty means the VIP drops new flows.
    pub members: Vec<(IpAddr, u32)>,
    /// Every member whose established flows stay on it, sorted: the whole
    /// pool (drained, unknown, without a MAC, and down under
    /// `on_marked_down = "keep"`), but not a member down under `repick`.
    /// A connection-table entry naming any other real re-picks.
    pub established: Vec<IpAddr>,
    /// UDP flows idle this long (milliseconds) take a fresh pick. The
    /// writer stores it in jiffies (`VipMeta::udp_idle_timeout_jiffies`,
    /// [`crate::ms_to_jiffies`]).
    pub udp_idle_timeout_ms: u32,
    /// The 802.1Q VLAN id the VIP is reached on, 0 for untagged.
    pub vlan: u16,
}

impl Plan {
    /// The plan for `effective`, resolving MACs from `macs` (see [`macs`])
    /// and each VIP's forwarding (L2 DSR or IPIP) from `config`, the
    /// configuration `effective` was computed from. An active member
    /// without a MAC is left out of its tables: neither L2 DSR nor IPIP
    /// can address it (for a routed IPIP real the MAC is its next hop's).
    pub fn new(effective: &Effective, config: &Config, macs: &HashMap<IpAddr, Mac>) -> Plan {
        let reals = effective
            .pools
            .iter()
            .flat_map(|p| &p.members)
            .map(|m| (m.address, macs.get(&m.address).copied()))
            .collect();
        let vips = effective
            .vips
            .iter()
            .map(|vip| {
                let configured = config.vips.iter().find(|c| c.name == vip.name);
                let mut members: Vec<(IpAddr, u32)> = effective
                    .pool(&vip.pool)
                    .into_iter()
                    .flat_map(|p| p.active())
                    .filter(|m| macs.contains_key(&m.address))
                    .map(|m| (m.address, m.weight))
                    .collect();
                members.sort_unstable();
                let mut established: Vec<IpAddr> = effective
                    .pool(&vip.pool)
                    .into_iter()
                    .flat_map(|p| &p.members)
                    .filter(|m| !(m.excluded == Some(Exclusion::Down) && vip.on_marked_down == OnMarkedDown::Repick))
                    .map(|m| m.address)
                    .collect();
                established.sort_unstable();
                established.dedup();
                PlanVip {
                    name: vip.name.clone(),
                    key: VipKey::new(vip.address, vip.port, vip.protocol.ip_proto()),
                    flags: match vip.scheduler {
                        Scheduler::Maglev => 0,
                        Scheduler::IpHash => VIP_F_HASH_SRC_ONLY,
                    } | if vip.forwarding { 0 } else { VIP_F_STANDBY }
                        | match configured.map(|c| c.forwarding) {
                            Some(Forwarding::Ipip) => VIP_F_IPIP,
                            _ => 0,
                        },
                    table_size: vip.table_size,
                    members,
                    established,
                    udp_idle_timeout_ms: u32::try_from(vip.udp_idle_timeout.as_millis()).unwrap_or(u32::MAX),
                    vlan: configured.and_then(|c| c.vlan).unwrap_or(0),
                }
            })
            .collect();
        Plan { vips, reals }
    }

    /// The MAC L2 DSR sends `address`'s traffic to, if known.
    pub fn mac(&self, address: IpAddr) -> Option<Mac> {
        self.reals.get(&address).copied().flatten()
    }
}

/// The VRRP virtual router MACs (RFC 9568 section 7.3) the datapath
/// balances frames to besides the interface's own: one bit per VRID and
/// family, as `DatapathConfig::virtual_mac_v4` / `_v6` hold them.
///
/// With `virtual_mac = true`, the MASTER holds its addresses on a macvlan
/// with the virtual MAC, so clients send a VIP's frames there; XDP on the
/// parent interface sees them first. Any VRID set here admits frames to
/// any VIP (as the kernel accepts any local address on any local MAC);
/// the VIP's own standby flag still passes them on a BACKUP.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VirtualMacs {
    /// `00:00:5e:00:01:VRID`, for IPv4 frames only.
    pub v4: [u64; 4],
    /// `00:00:5e:00:02:VRID`, for IPv6 frames only.
    pub v6: [u64; 4],
}

impl VirtualMacs {
    /// Admits frames of the given family to `vrid`'s virtual router MAC.
    pub fn insert(&mut self, vrid: u8, ipv6: bool) {
        let (word, bit) = fulcrum_common::virtual_mac_bit(vrid);
        let words = if ipv6 { &mut self.v6 } else { &mut self.v4 };
        words[word] |= 1 << bit;
    }

    /// Whether frames of the given family to `vrid`'s virtual MAC are admitted.
    pub fn contains(&self, vrid: u8, ipv6: bool) -> bool {
        let (word, bit) = fulcrum_common::virtual_mac_bit(vrid);
        let words = if ipv6 { &self.v6 } else { &self.v4 };
        words[word] & (1 << bit) != 0
    }

    /// The virtual MACs of `config`'s VRRP instances with `virtual_mac`
    /// on `interface` (the one XDP is attached to; another interface's
    /// frames never reach the program), each in its addresses' family.
    pub fn of(config: &Config, interface: &str) -> VirtualMacs {
        let mut macs = VirtualMacs::default();
        for v in config.vrrp.iter().filter(|v| v.virtual_mac && v.interface == interface) {
            let ipv6 = v.addresses.first().is_some_and(|(a, _)| a.is_ipv6());
            macs.insert(v.vrid, ipv6);
        }
        macs
    }
}

/// Each backend's MAC: the configured one, else the neighbour table's.
/// A configured MAC is a static neighbour entry and wins over the table.
pub fn macs(config: &Config, neighbours: &HashMap<IpAddr, Mac>) -> HashMap<IpAddr, Mac> {
    let mut macs = HashMap::new();
    for backend in config.pools.iter().flat_map(|p| &p.backends) {
        if let Some(mac) = backend.mac.or_else(|| neighbours.get(&backend.address).copied()) {
            macs.insert(backend.address, mac);
        }
    }
    macs
}

#[cfg(test)]
mod tests {
    use fulcrum_health::Health;
    use fulcrum_state::{effective, probe_of, Observed, Verdict};

    use super::*;

    const CONFIG: &str = r#"
interface = "eth0"
[[vip]]
name = "web"
address = "198.18.1.1"
port = 80
protocol = "tcp"
scheduler = "ip-hash"
pool = "web"
maglev_table_size = 251
[[pool]]
name = "web"
[[pool.backend]]
address = "198.18.0.13"
[[pool.backend]]
address = "198.18.0.11"
mac = "02:00:00:00:00:11"
[[pool.backend]]
address = "198.18.0.12"
weight = 3
"#;

    #[test]
    fn active_members_with_a_mac_sorted_by_address() {
        let config = fulcrum_config::parse(CONFIG, "test.toml").unwrap();
        let pool = &config.pools[0];
        let mut observed = Observed::default();
        for b in &pool.backends {
            observed.health.insert(probe_of(pool, b), Verdict { health: Health::Up, detail: String::new() });
        }
        let neighbours: HashMap<IpAddr, Mac> = [
            (IpAddr::from([198, 18, 0, 12]), Mac([2, 0, 0, 0, 0, 0x12])),
            (IpAddr::from([198, 18, 0, 11]), Mac([2, 0, 0, 0, 0, 0xee])),
        ]
        .into();
        let plan = Plan::new(&effective(&config, &observed), &config, &macs(&config, &neighbours));
        let vip = &plan.vips[0];
        assert_eq!(vip.flags, VIP_F_HASH_SRC_ONLY);
        assert_eq!(vip.members, vec![(IpAddr::from([198, 18, 0, 11]), 1), (IpAddr::from([198, 18, 0, 12]), 3)]);
        // The configured MAC wins over the neighbour table; .13 has none.
        assert_eq!(plan.mac(IpAddr::from([198, 18, 0, 11])), Some(Mac([2, 0, 0, 0, 0, 0x11])));
        assert_eq!(plan.reals.len(), 3);
        assert_eq!(plan.mac(IpAddr::from([198, 18, 0, 13])), None);
    }

    #[test]
    fn virtual_macs_of_instances_with_virtual_mac_on_the_interface() {
        let text = format!(
            "{CONFIG}\n[[vrrp]]\nname = \"a\"\nvrid = 51\npriority = 100\naddresses = [\"198.18.1.1\"]\nvirtual_mac = true\n\
             [[vrrp]]\nname = \"b\"\nvrid = 52\npriority = 100\naddresses = [\"fd00:18:1::1\"]\nvirtual_mac = true\n\
             [[vrrp]]\nname = \"c\"\nvrid = 200\npriority = 100\naddresses = [\"198.18.1.9\"]\n\
             [[vrrp]]\nname = \"d\"\nvrid = 53\npriority = 100\ninterface = \"eth1\"\naddresses = [\"198.18.1.10\"]\nvirtual_mac = true\n"
        );
        let config = fulcrum_config::parse(&text, "test.toml").unwrap();
        let macs = VirtualMacs::of(&config, "eth0");
        assert!(macs.contains(51, false) && !macs.contains(51, true));
        assert!(macs.contains(52, true) && !macs.contains(52, false));
        // Without virtual_mac, or on another interface: not admitted.
        assert!(!macs.contains(200, false) && !macs.contains(53, false));
        let mut want = VirtualMacs::default();
        want.insert(51, false);
        want.insert(52, true);
        assert_eq!(macs, want);
        assert_eq!(want.v4, [1 << 51, 0, 0, 0]);
    }

    #[test]
    fn ipip_vips_get_their_flag() {
        let text = CONFIG.replace("pool = \"web\"\nmaglev", "pool = \"web\"\nforwarding = \"ipip\"\nmaglev")
            .replace("interface = \"eth0\"", "interface = \"eth0\"\n[datapath]\nipip_source_v4 = \"198.18.7.0/24\"");
        let config = fulcrum_config::parse(&text, "test.toml").unwrap();
        let plan = Plan::new(&effective(&config, &Observed::default()), &config, &HashMap::new());
        assert_eq!(plan.vips[0].flags, VIP_F_HASH_SRC_ONLY | VIP_F_IPIP);
        assert_eq!(plan.vips[0].vlan, 0);
        let tagged = fulcrum_config::parse(&CONFIG.replace("port = 80", "port = 80\nvlan = 200"), "test.toml").unwrap();
        let plan = Plan::new(&effective(&tagged, &Observed::default()), &tagged, &HashMap::new());
        assert_eq!(plan.vips[0].vlan, 200);
    }

    /// Established flows stay on every member but one down under `repick`.
    #[test]
    fn established_flows_stay_unless_down_under_repick() {
        for (policy, want_12) in [("keep", true), ("repick", false)] {
            let text = CONFIG.replace("maglev_table_size = 251", &format!("maglev_table_size = 251\non_marked_down = \"{policy}\""));
            let config = fulcrum_config::parse(&text, "test.toml").unwrap();
            let pool = &config.pools[0];
            let mut observed = Observed::default();
            for (b, health) in pool.backends.iter().zip([Health::Up, Health::Up, Health::Down]) {
                observed.health.insert(probe_of(pool, b), Verdict { health, detail: String::new() });
            }
            let macs: HashMap<IpAddr, Mac> = pool.backends.iter().map(|b| (b.address, Mac([2, 0, 0, 0, 0, 1]))).collect();
            let vip = &Plan::new(&effective(&config, &observed), &config, &macs).vips[0];
            // .13 is up; .11 up; .12 (weight 3) down.
            assert_eq!(vip.members, vec![(IpAddr::from([198, 18, 0, 11]), 1), (IpAddr::from([198, 18, 0, 13]), 1)]);
            assert_eq!(vip.established.contains(&IpAddr::from([198, 18, 0, 12])), want_12, "{policy}");
            assert_eq!(vip.established.len(), if want_12 { 3 } else { 2 });
            assert_eq!(vip.udp_idle_timeout_ms, 30_000);
        }
    }
}
