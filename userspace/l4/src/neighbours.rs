//! The node's own link facts: the interface's index and MAC, and the
//! neighbour table (ARP for IPv4, NDP for IPv6) over rtnetlink.
//!
//! L2 DSR needs each backend's MAC. The kernel already resolves them: the
//! health checks talk to every backend, so its neighbour entries exist and
//! stay fresh. This module follows them by subscribing to `RTNLGRP_NEIGH`
//! (the kernel announces every change, as `ip monitor neigh` shows) and can
//! dump the whole table, which the daemon does at start and, as a safety
//! net against a lost notification, now and then. It only reads.
use std::{collections::HashMap, net::IpAddr};

use fulcrum_common::Mac;
use futures_channel::mpsc::UnboundedReceiver;
use futures_util::{StreamExt, TryStreamExt};
use rtnetlink::{
    packet_core::{NetlinkMessage, NetlinkPayload},
    packet_route::{
        neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState},
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

/// A netlink subscription to neighbour changes plus a handle for dumps.
pub struct Neighbours {
    handle: rtnetlink::Handle,
    events: UnboundedReceiver<(NetlinkMessage<RouteNetlinkMessage>, SocketAddr)>,
    ifindex: u32,
}

impl Neighbours {
    /// Subscribes to `RTNLGRP_NEIGH` for interface `ifindex`; the netlink
    /// I/O task runs on the current tokio runtime.
    ///
    /// # Errors
    /// The netlink socket cannot be opened or bound (needs `CAP_NET_ADMIN`
    /// for nothing here, but a netlink-less sandbox refuses it).
    pub fn connect(ifindex: u32) -> Result<Self, LinkError> {
        let (connection, handle, events) = rtnetlink::new_multicast_connection(&[MulticastGroup::Neigh])
            .map_err(|e| LinkError::Netlink(e.to_string()))?;
        tokio::spawn(connection);
        Ok(Neighbours { handle, events, ifindex })
    }

    /// The usable entries on the interface, IPv4 and IPv6.
    ///
    /// # Errors
    /// A netlink error during the dump.
    pub async fn dump(&self) -> Result<HashMap<IpAddr, Mac>, LinkError> {
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

    /// The next change on the interface; waits until there is one.
    pub async fn next_change(&mut self) -> NeighbourChange {
        loop {
            let Some((message, _)) = self.events.next().await else {
                // The connection task ended: nothing more will come, so the
                // daemon relies on its periodic dumps from now on.
                std::future::pending::<()>().await;
                unreachable!("pending never completes");
            };
            let change = match message.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNeighbour(msg)) => change_of(&msg, self.ifindex, false),
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelNeighbour(msg)) => change_of(&msg, self.ifindex, true),
                NetlinkPayload::Overrun(_) | NetlinkPayload::Error(_) => Some(NeighbourChange::Resync),
                _ => None,
            };
            if let Some(change) = change {
                return change;
            }
        }
    }
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
}
