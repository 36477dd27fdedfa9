//! The node's own link facts: the interface's index and MAC, and the
//! neighbour table (ARP for IPv4, NDP for IPv6) over rtnetlink.
//!
//! L2 DSR needs each backend's MAC. The kernel already resolves them: the
//! health checks talk to every backend, so its neighbour entries exist and
//! stay fresh. This module follows them by subscribing to `RTNLGRP_NEIGH`
//! (the kernel announces every change, as `ip monitor neigh` shows) and can
//! dump the whole table, which the daemon does at start and, as a safety
//! net against a lost notification, now and then. It only reads.
//!
//! Routed reals (IPIP to another L3 network): a backend that is not on the
//! interface's link is reached through a router, so its frames must carry
//! the router's MAC. For every watched address ([`Neighbours::watch`]: the
//! backends) a dump asks the kernel which route it takes (`RTM_GETROUTE`
//! for the address, what `ip route get ADDRESS` does); when that route
//! leaves through the interface via a gateway, the address is reported at
//! the gateway's MAC, and follows the gateway's neighbour entry from then
//! on. Route changes (`RTNLGRP_IPV4_ROUTE`, `RTNLGRP_IPV6_ROUTE`) ask the
//! daemon to dump again, which looks the routes up again. A `mac` set in
//! the configuration still wins over all of this (`plan::macs`).
use std::{
    collections::{HashMap, VecDeque},
    net::IpAddr,
};

use fulcrum_common::Mac;
use futures_channel::mpsc::UnboundedReceiver;
use futures_util::{StreamExt, TryStreamExt};
use rtnetlink::{
    packet_core::{NetlinkMessage, NetlinkPayload},
    packet_route::{
        neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState},
        route::{RouteAddress, RouteAttribute, RouteMessage, RouteType, RouteVia},
        AddressFamily, RouteNetlinkMessage,
    },
    sys::SocketAddr,
    MulticastGroup,
};
use thiserror::Error;

/// What went wrong reading link facts.
#[derive(Debug, Error)]
pub enum LinkError {
    #[error("interface {0}: no such interface")]
    NoInterface(String),
    #[error("interface {name}: reading its MAC: {source}")]
    Mac { name: String, source: std::io::Error },
    #[error("netlink: {0}")]
    Netlink(String),
}

/// The interface the datapath attaches to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub index: u32,
    pub mac: Mac,
    /// The largest IP packet it sends, in bytes (`/sys/class/net/IF/mtu`).
    pub mtu: u32,
}

impl Interface {
    /// Looks `name` up: index by `if_nametoindex(3)`, MAC from sysfs.
    ///
    /// # Errors
    /// No such interface, or its sysfs address unreadable or not a MAC.
    pub fn lookup(name: &str) -> Result<Self, LinkError> {
        let index = nix::net::if_::if_nametoindex(name).map_err(|_| LinkError::NoInterface(name.into()))?;
        let path = format!("/sys/class/net/{name}/address");
        let text = std::fs::read_to_string(&path).map_err(|source| LinkError::Mac { name: name.into(), source })?;
        let mac = text.trim().parse().map_err(|_| LinkError::Mac {
            name: name.into(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{path}: {text:?}")),
        })?;
        let mtu_path = format!("/sys/class/net/{name}/mtu");
        let mtu = std::fs::read_to_string(&mtu_path)
            .map_err(|source| LinkError::Mac { name: name.into(), source })?
            .trim()
            .parse()
            .map_err(|_| LinkError::Mac {
                name: name.into(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{mtu_path}: not a number")),
            })?;
        Ok(Interface { name: name.into(), index, mac, mtu })
    }
}

/// One change of the neighbour table on the watched interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NeighbourChange {
    /// `address` is now reachable at `mac` (new entry, or its MAC changed,
    /// or a state change that still carries a usable MAC).
    Resolved(IpAddr, Mac),
    /// `address` has no usable MAC any more (deleted, failed, incomplete).
    Lost(IpAddr),
    /// Notifications were lost (the socket overflowed, or the subscription
    /// ended): dump the table again.
    Resync,
}

/// A netlink subscription to neighbour and route changes plus a handle
/// for dumps and route lookups.
pub struct Neighbours {
    handle: rtnetlink::Handle,
    events: UnboundedReceiver<(NetlinkMessage<RouteNetlinkMessage>, SocketAddr)>,
    ifindex: u32,
    /// The addresses whose next hop is wanted (the backends).
    watched: Vec<IpAddr>,
    /// Watched addresses routed through a gateway on the interface -> the
    /// gateway, as the last dump found them.
    gateways: HashMap<IpAddr, IpAddr>,
    /// Changes one notification gave rise to, handed out one at a time.
    pending: VecDeque<NeighbourChange>,
    /// The watched set changed since the last dump: the next change is
    /// `Resync`, whose dump looks the new addresses' routes up.
    stale: bool,
}

impl Neighbours {
    /// Subscribes to `RTNLGRP_NEIGH` and the IPv4 and IPv6 route groups
    /// for interface `ifindex`; the netlink I/O task runs on the current
    /// tokio runtime. Watches no address until [`Neighbours::watch`].
    ///
    /// # Errors
    /// The netlink socket cannot be opened or bound (needs `CAP_NET_ADMIN`
    /// for nothing here, but a netlink-less sandbox refuses it).
    pub fn connect(ifindex: u32) -> Result<Self, LinkError> {
        let groups = [MulticastGroup::Neigh, MulticastGroup::Ipv4Route, MulticastGroup::Ipv6Route];
        let (connection, handle, events) =
            rtnetlink::new_multicast_connection(&groups).map_err(|e| LinkError::Netlink(e.to_string()))?;
        tokio::spawn(connection);
        Ok(Neighbours {
            handle,
            events,
            ifindex,
            watched: Vec::new(),
            gateways: HashMap::new(),
            pending: VecDeque::new(),
            stale: false,
        })
    }

    /// Sets the addresses whose next hop's MAC the table must give (the
    /// backends); when the set changed, the next [`Neighbours::next_change`]
    /// is [`NeighbourChange::Resync`].
    pub fn watch(&mut self, addresses: impl IntoIterator<Item = IpAddr>) {
        let mut addresses: Vec<IpAddr> = addresses.into_iter().collect();
        addresses.sort_unstable();
        addresses.dedup();
        if addresses != self.watched {
            self.watched = addresses;
            self.stale = true;
        }
    }

    /// The usable entries on the interface, IPv4 and IPv6, with every
    /// watched address routed through a gateway on the interface at that
    /// gateway's MAC (absent while the gateway has no usable entry).
    ///
    /// # Errors
    /// A netlink error during the neighbour dump. A route lookup that
    /// fails (no route) leaves that address to its own neighbour entry.
    pub async fn dump(&mut self) -> Result<HashMap<IpAddr, Mac>, LinkError> {
        let mut gateways = HashMap::new();
        for &address in &self.watched {
            match self.route_to(address).await {
                Ok(Some(route)) => {
                    if let Some(hop) = next_hop(&route, address, self.ifindex) {
                        if hop != address {
                            gateways.insert(address, hop);
                        }
                    }
                }
                Ok(None) => {}
                Err(err) => tracing::debug!(%address, error = %err, "no route to a backend"),
            }
        }
        self.gateways = gateways;
        self.pending.clear();
        self.stale = false;
        Ok(through_gateways(self.dump_neighbours().await?, &self.gateways))
    }

    /// The route the kernel takes to `address`: `RTM_GETROUTE` with the
    /// address as a /32 or /128 destination and no dump flag, as `ip route
    /// get` sends it.
    async fn route_to(&self, address: IpAddr) -> Result<Option<RouteMessage>, LinkError> {
        let mut message = RouteMessage::default();
        (message.header.address_family, message.header.destination_prefix_length) = match address {
            IpAddr::V4(_) => (AddressFamily::Inet, 32),
            IpAddr::V6(_) => (AddressFamily::Inet6, 128),
        };
        message.attributes.push(RouteAttribute::Destination(address.into()));
        let mut routes = self.handle.route().get(message).execute();
        routes.try_next().await.map_err(|e| LinkError::Netlink(e.to_string()))
    }

    async fn dump_neighbours(&self) -> Result<HashMap<IpAddr, Mac>, LinkError> {
        let mut table = HashMap::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut stream = self.handle.neighbours().get().set_address_family(family).execute();
            while let Some(msg) = stream.try_next().await.map_err(|e| LinkError::Netlink(e.to_string()))? {
                if let Some(NeighbourChange::Resolved(address, mac)) = change_of(&msg, self.ifindex, false) {
                    table.insert(address, mac);
                }
            }
        }
        Ok(table)
    }

    /// The next change on the interface; waits until there is one. A
    /// gateway's change comes with one change for each watched address
    /// routed through it; a route change is `Resync`.
    pub async fn next_change(&mut self) -> NeighbourChange {
        loop {
            if std::mem::take(&mut self.stale) {
                return NeighbourChange::Resync;
            }
            if let Some(change) = self.pending.pop_front() {
                return change;
            }
            let Some((message, _)) = self.events.next().await else {
                // The connection task ended: nothing more will come, so the
                // daemon relies on its periodic dumps from now on.
                std::future::pending::<()>().await;
                unreachable!("pending never completes");
            };
            let change = match message.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNeighbour(msg)) => change_of(&msg, self.ifindex, false),
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelNeighbour(msg)) => change_of(&msg, self.ifindex, true),
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(_) | RouteNetlinkMessage::DelRoute(_)) => {
                    // A next hop may have moved. One dump answers a burst
                    // of route changes (a routing daemon's update), and
                    // every message already queued, since it reads the
                    // state after them.
                    while self.events.try_recv().is_ok() {}
                    Some(NeighbourChange::Resync)
                }
                NetlinkPayload::Overrun(_) | NetlinkPayload::Error(_) => Some(NeighbourChange::Resync),
                _ => None,
            };
            if let Some(change) = change {
                self.pending.extend(change.through_gateways(&self.gateways));
            }
        }
    }
}

/// The address whose MAC frames to `address` must carry, from the route
/// the kernel picked for it (`ip route get ADDRESS`): the gateway
/// (`RTA_GATEWAY`, or `RTA_VIA` for an IPv4 route through an IPv6 router,
/// RFC 5549), or `address` itself when it is on the link. `None` when the
/// route leaves through another interface than `ifindex` or does not
/// forward (local, blackhole, unreachable, prohibit).
pub fn next_hop(route: &RouteMessage, address: IpAddr, ifindex: u32) -> Option<IpAddr> {
    if route.header.kind != RouteType::Unicast {
        return None;
    }
    let mut oif = None;
    let mut gateway = None;
    for attr in &route.attributes {
        match attr {
            RouteAttribute::Oif(index) => oif = Some(*index),
            RouteAttribute::Gateway(RouteAddress::Inet(a)) | RouteAttribute::Via(RouteVia::Inet(a)) => {
                gateway = Some(IpAddr::V4(*a))
            }
            RouteAttribute::Gateway(RouteAddress::Inet6(a)) | RouteAttribute::Via(RouteVia::Inet6(a)) => {
                gateway = Some(IpAddr::V6(*a))
            }
            _ => {}
        }
    }
    (oif == Some(ifindex)).then_some(gateway.unwrap_or(address))
}

/// The neighbour table as the datapath needs it: `neighbours` with each
/// routed address of `gateways` (address -> gateway) at its gateway's MAC,
/// or absent while the gateway has none (its own stale on-link entry, if
/// any, does not count: frames to it go to the router).
fn through_gateways(mut neighbours: HashMap<IpAddr, Mac>, gateways: &HashMap<IpAddr, IpAddr>) -> HashMap<IpAddr, Mac> {
    for (address, gateway) in gateways {
        match neighbours.get(gateway).copied() {
            Some(mac) => neighbours.insert(*address, mac),
            None => neighbours.remove(address),
        };
    }
    neighbours
}

/// What a neighbour message means for the interface `ifindex`, if anything.
/// Reachable, stale, delay, probe, permanent and noarp entries carry a
/// usable MAC; incomplete and failed ones, and deletions, do not.
fn change_of(msg: &NeighbourMessage, ifindex: u32, deleted: bool) -> Option<NeighbourChange> {
    if msg.header.ifindex != ifindex {
        return None;
    }
    let mut address = None;
    let mut mac = None;
    for attr in &msg.attributes {
        match attr {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => address = Some(IpAddr::V4(*a)),
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => address = Some(IpAddr::V6(*a)),
            NeighbourAttribute::LinkLayerAddress(bytes) => mac = <[u8; 6]>::try_from(bytes.as_slice()).ok().map(Mac),
            _ => {}
        }
    }
    let address = address?;
    let usable = matches!(
        msg.header.state,
        NeighbourState::Reachable
            | NeighbourState::Stale
            | NeighbourState::Delay
            | NeighbourState::Probe
            | NeighbourState::Permanent
            | NeighbourState::Noarp
    );
    match mac {
        Some(mac) if usable && !deleted => Some(NeighbourChange::Resolved(address, mac)),
        _ => Some(NeighbourChange::Lost(address)),
    }
}

impl NeighbourChange {
    /// What a change of the neighbour table means with the routed
    /// addresses of `gateways` (address -> gateway): the change itself,
    /// unless it is about a routed address (frames to it go to the router,
    /// so its own entry does not count), then the same change for every
    /// address routed through it.
    pub fn through_gateways(self, gateways: &HashMap<IpAddr, IpAddr>) -> Vec<NeighbourChange> {
        let address = match self {
            NeighbourChange::Resolved(address, _) | NeighbourChange::Lost(address) => address,
            NeighbourChange::Resync => return vec![self],
        };
        let mut routed: Vec<IpAddr> = gateways.iter().filter(|(_, g)| **g == address).map(|(a, _)| *a).collect();
        routed.sort_unstable();
        let own = (!gateways.contains_key(&address)).then_some(self);
        own.into_iter()
            .chain(routed.into_iter().map(|a| match self {
                NeighbourChange::Resolved(_, mac) => NeighbourChange::Resolved(a, mac),
                _ => NeighbourChange::Lost(a),
            }))
            .collect()
    }

    /// Applies the change to a table; true if the table changed.
    /// `Resync` changes nothing here (the caller dumps).
    pub fn apply_to(self, table: &mut HashMap<IpAddr, Mac>) -> bool {
        match self {
            NeighbourChange::Resolved(address, mac) => table.insert(address, mac) != Some(mac),
            NeighbourChange::Lost(address) => table.remove(&address).is_some(),
            NeighbourChange::Resync => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_update_a_table() {
        let a = IpAddr::from([198, 18, 0, 11]);
        let mut table = HashMap::new();
        assert!(NeighbourChange::Resolved(a, Mac([2, 0, 0, 0, 0, 0x11])).apply_to(&mut table));
        assert!(!NeighbourChange::Resolved(a, Mac([2, 0, 0, 0, 0, 0x11])).apply_to(&mut table));
        assert!(NeighbourChange::Resolved(a, Mac([2, 0, 0, 0, 0, 0x12])).apply_to(&mut table));
        assert!(NeighbourChange::Lost(a).apply_to(&mut table));
        assert!(!NeighbourChange::Lost(a).apply_to(&mut table));
        assert!(table.is_empty());
    }

    fn route(kind: RouteType, attributes: Vec<RouteAttribute>) -> RouteMessage {
        let mut route = RouteMessage::default();
        route.header.kind = kind;
        route.attributes = attributes;
        route
    }

    #[test]
    fn next_hop_is_the_gateway_or_the_address_on_the_link() {
        let real = IpAddr::from([198, 18, 5, 11]);
        let via = |gw: [u8; 4], oif| {
            route(RouteType::Unicast, vec![RouteAttribute::Gateway(RouteAddress::Inet(gw.into())), RouteAttribute::Oif(oif)])
        };
        assert_eq!(next_hop(&via([198, 18, 4, 1], 7), real, 7), Some(IpAddr::from([198, 18, 4, 1])));
        // On the link: no gateway, the address itself.
        assert_eq!(next_hop(&route(RouteType::Unicast, vec![RouteAttribute::Oif(7)]), real, 7), Some(real));
        // Out of another interface: XDP_TX on ours cannot reach it.
        assert_eq!(next_hop(&via([198, 18, 4, 1], 8), real, 7), None);
        // No forwarding route.
        for kind in [RouteType::Local, RouteType::BlackHole, RouteType::Unreachable, RouteType::Prohibit] {
            assert_eq!(next_hop(&route(kind, vec![RouteAttribute::Oif(7)]), real, 7), None, "{kind:?}");
        }
        // IPv6, and IPv4 through an IPv6 router (RFC 5549).
        let real6: IpAddr = "fd00:18:5::11".parse().unwrap();
        let gw6: std::net::Ipv6Addr = "fe80::1".parse().unwrap();
        let r = route(RouteType::Unicast, vec![RouteAttribute::Gateway(RouteAddress::Inet6(gw6)), RouteAttribute::Oif(7)]);
        assert_eq!(next_hop(&r, real6, 7), Some(gw6.into()));
        let r = route(RouteType::Unicast, vec![RouteAttribute::Via(RouteVia::Inet6(gw6)), RouteAttribute::Oif(7)]);
        assert_eq!(next_hop(&r, real, 7), Some(gw6.into()));
    }

    #[test]
    fn routed_addresses_take_their_gateways_mac() {
        let (real1, real2, onlink, router) = (
            IpAddr::from([198, 18, 5, 11]),
            IpAddr::from([198, 18, 5, 12]),
            IpAddr::from([198, 18, 4, 20]),
            IpAddr::from([198, 18, 4, 1]),
        );
        let (router_mac, stale_mac, onlink_mac) = (Mac([2, 0, 0, 0, 4, 1]), Mac([2, 0, 0, 0, 5, 11]), Mac([2, 0, 0, 0, 4, 20]));
        let gateways: HashMap<IpAddr, IpAddr> = [(real1, router), (real2, router)].into();
        let raw: HashMap<IpAddr, Mac> = [(router, router_mac), (real1, stale_mac), (onlink, onlink_mac)].into();
        let table = through_gateways(raw.clone(), &gateways);
        assert_eq!(table.get(&real1), Some(&router_mac), "the router's MAC, not real1's own old entry");
        assert_eq!(table.get(&real2), Some(&router_mac));
        assert_eq!(table.get(&onlink), Some(&onlink_mac));
        // Without the router's entry, the routed reals have no MAC.
        let mut raw = raw;
        raw.remove(&router);
        let table = through_gateways(raw, &gateways);
        assert_eq!((table.get(&real1), table.get(&real2)), (None, None));

        // Changes: the router's MAC moves both routed reals; a routed
        // real's own entry changes nothing; an on-link one only itself.
        let new_mac = Mac([2, 0, 0, 0, 4, 2]);
        assert_eq!(
            NeighbourChange::Resolved(router, new_mac).through_gateways(&gateways),
            vec![
                NeighbourChange::Resolved(router, new_mac),
                NeighbourChange::Resolved(real1, new_mac),
                NeighbourChange::Resolved(real2, new_mac)
            ]
        );
        assert_eq!(
            NeighbourChange::Lost(router).through_gateways(&gateways),
            vec![NeighbourChange::Lost(router), NeighbourChange::Lost(real1), NeighbourChange::Lost(real2)]
        );
        assert_eq!(NeighbourChange::Lost(real1).through_gateways(&gateways), vec![]);
        assert_eq!(
            NeighbourChange::Resolved(onlink, onlink_mac).through_gateways(&gateways),
            vec![NeighbourChange::Resolved(onlink, onlink_mac)]
        );
        assert_eq!(NeighbourChange::Resync.through_gateways(&gateways), vec![NeighbourChange::Resync]);
    }
}
