//! The node's own link facts: the interface's index and MAC, and the
//! neighbour table (ARP for IPv4, NDP for IPv6) read over rtnetlink.
//!
//! L2 DSR needs each backend's MAC. The kernel already resolves them: the
//! health checks talk to every backend, so its neighbour entries exist and
//! stay fresh. This module only reads; it never sends.
use std::{collections::HashMap, net::IpAddr};

use futures_util::TryStreamExt;
use rtnetlink::packet_route::{
    neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourState},
    AddressFamily,
};
use thiserror::Error;

use crate::state::Mac;

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
}

impl Interface {
    /// Looks `name` up: index by `if_nametoindex(3)`, MAC from sysfs.
    pub fn lookup(name: &str) -> Result<Self, LinkError> {
        let index = nix::net::if_::if_nametoindex(name).map_err(|_| LinkError::NoInterface(name.into()))?;
        let path = format!("/sys/class/net/{name}/address");
        let text = std::fs::read_to_string(&path).map_err(|source| LinkError::Mac { name: name.into(), source })?;
        let mac = parse_mac(text.trim()).ok_or_else(|| LinkError::Mac {
            name: name.into(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{path}: {text:?}")),
        })?;
        Ok(Interface { name: name.into(), index, mac })
    }
}

fn parse_mac(text: &str) -> Option<Mac> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in mac.iter_mut() {
        *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// A netlink connection for neighbour table dumps.
pub struct Neighbours {
    handle: rtnetlink::Handle,
}

impl Neighbours {
    /// Opens the connection; its I/O task runs on the current tokio runtime.
    pub fn connect() -> Result<Self, LinkError> {
        let (connection, handle, _) = rtnetlink::new_connection().map_err(|e| LinkError::Netlink(e.to_string()))?;
        tokio::spawn(connection);
        Ok(Neighbours { handle })
    }

    /// The usable entries (reachable, stale, delay, probe, permanent, noarp)
    /// on interface `ifindex`, IPv4 and IPv6. Incomplete and failed entries
    /// carry no MAC and are left out.
    pub async fn dump(&self, ifindex: u32) -> Result<HashMap<IpAddr, Mac>, LinkError> {
        let mut table = HashMap::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut stream = self.handle.neighbours().get().set_address_family(family).execute();
            while let Some(msg) = stream.try_next().await.map_err(|e| LinkError::Netlink(e.to_string()))? {
                let usable = matches!(
                    msg.header.state,
                    NeighbourState::Reachable
                        | NeighbourState::Stale
                        | NeighbourState::Delay
                        | NeighbourState::Probe
                        | NeighbourState::Permanent
                        | NeighbourState::Noarp
                );
                if msg.header.ifindex != ifindex || !usable {
                    continue;
                }
                let mut address = None;
                let mut mac = None;
                for attr in &msg.attributes {
                    match attr {
                        NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => address = Some(IpAddr::V4(*a)),
                        NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => address = Some(IpAddr::V6(*a)),
                        NeighbourAttribute::LinkLayerAddress(bytes) => mac = <[u8; 6]>::try_from(bytes.as_slice()).ok(),
                        _ => {}
                    }
                }
                if let (Some(address), Some(mac)) = (address, mac) {
                    table.insert(address, mac);
                }
            }
        }
        Ok(table)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_macs() {
        assert_eq!(super::parse_mac("02:00:5e:0a:ff:01"), Some([2, 0, 0x5e, 0x0a, 0xff, 1]));
        assert_eq!(super::parse_mac("02:00:5e:0a:ff"), None);
        assert_eq!(super::parse_mac("02:00:5e:0a:ff:01:02"), None);
        assert_eq!(super::parse_mac("zz:00:5e:0a:ff:01"), None);
    }
}
