//! rtnetlink access for the shell: the interface's index, MAC and
//! addresses, and adding / removing the VIPs.
//!
//! rtnetlink is async; the shell's thread owns a current-thread tokio
//! runtime used only to drive these requests (`block_on`), so no other
//! task (and no other runtime) can delay the VRRP thread, and the netlink
//! socket lives in the network namespace of the thread that opened it.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage, AddressScope,
};
use rtnetlink::packet_route::link::{
    AfSpecInet6, AfSpecUnspec, In6AddrGenMode, LinkAttribute, LinkXdp, MacVlanMode,
};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{LinkMacVlan, LinkUnspec};

use super::Vip;

/// What the shell needs to know about its interface.
#[derive(Debug, Clone)]
pub(crate) struct LinkInfo {
    pub index: u32,
    pub mac: [u8; 6],
    /// The XDP program attached to the interface (IFLA_XDP_PROG_ID, or
    /// the per-mode ids), if any.
    pub xdp_prog_id: Option<u32>,
}

/// One address on the interface, as the kernel reports it.
#[derive(Debug, Clone)]
pub(crate) struct IfAddr {
    pub addr: IpAddr,
    pub link_scope: bool,
    pub secondary: bool,
    pub tentative: bool,
}

pub(crate) struct Netlink {
    rt: tokio::runtime::Runtime,
    handle: rtnetlink::Handle,
}

fn nl_err(e: rtnetlink::Error) -> io::Error {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.to_io(),
        e => io::Error::other(e.to_string()),
    }
}

impl Netlink {
    /// Opens a route netlink socket in the calling thread's namespace.
    pub fn open() -> io::Result<Netlink> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()?;
        let (conn, handle, _) = {
            let _guard = rt.enter();
            rtnetlink::new_connection()?
        };
        // Polled whenever block_on runs a request: that is all it needs.
        rt.spawn(conn);
        Ok(Netlink { rt, handle })
    }

    pub fn link(&self, name: &str) -> io::Result<LinkInfo> {
        self.rt.block_on(async {
            let mut links = self
                .handle
                .link()
                .get()
                .match_name(name.to_string())
                .execute();
            let msg = links
                .try_next()
                .await
                .map_err(|e| match nl_err(e) {
                    e if e.raw_os_error() == Some(libc::ENODEV) => {
                        io::Error::new(io::ErrorKind::NotFound, format!("no interface {name}"))
                    }
                    e => e,
                })?
                .ok_or_else(|| {
                    io::Error::new(io::ErrorKind::NotFound, format!("no interface {name}"))
                })?;
            let mut mac = [0u8; 6];
            let mut xdp_prog_id = None;
            for a in &msg.attributes {
                match a {
                    LinkAttribute::Address(m) if m.len() == 6 => mac.copy_from_slice(m),
                    LinkAttribute::Xdp(xdp) => {
                        for x in xdp {
                            if let LinkXdp::ProgId(id)
                            | LinkXdp::DrvProgId(id)
                            | LinkXdp::SkbProgId(id)
                            | LinkXdp::HwProgId(id) = x
                            {
                                if *id != 0 {
                                    xdp_prog_id = xdp_prog_id.or(Some(*id));
                                }
                            }
                        }
                    }
                    _ => {}
                }
            }
            Ok(LinkInfo {
                index: msg.header.index,
                mac,
                xdp_prog_id,
            })
        })
    }

    pub fn addresses(&self, index: u32) -> io::Result<Vec<IfAddr>> {
        self.rt.block_on(async {
            let mut out = Vec::new();
            let mut stream = self
                .handle
                .address()
                .get()
                .set_link_index_filter(index)
                .execute();
            while let Some(msg) = stream.try_next().await.map_err(nl_err)? {
                if msg.header.index != index {
                    continue;
                }
                let mut local = None;
                let mut address = None;
                let mut flags = AddressFlags::empty();
                for a in &msg.attributes {
                    match a {
                        AddressAttribute::Local(ip) => local = Some(*ip),
                        AddressAttribute::Address(ip) => address = Some(*ip),
                        AddressAttribute::Flags(f) => flags = *f,
                        _ => {}
                    }
                }
                // IFA_LOCAL is the interface's own address; IFA_ADDRESS is
                // the peer's on point-to-point links (IPv6 sends only it).
                let Some(addr) = local.or(address) else {
                    continue;
                };
                let hf = msg.header.flags;
                out.push(IfAddr {
                    addr,
                    link_scope: msg.header.scope == AddressScope::Link,
                    secondary: hf.contains(AddressHeaderFlags::Secondary)
                        || flags.contains(AddressFlags::Secondary),
                    tentative: hf.contains(AddressHeaderFlags::Tentative)
                        || flags.contains(AddressFlags::Tentative),
                });
            }
            Ok(out)
        })
    }

    /// Adds `vip` to interface `index`. Already present is success (a
    /// restart after a crash, or an operator's hand). IPv6 VIPs skip
    /// duplicate address detection (IFA_F_NODAD, as keepalived does): the
    /// Backup does not hold it, and a tentative address could not answer
    /// for the seconds DAD takes.
    pub fn add(&self, index: u32, vip: &Vip) -> io::Result<()> {
        self.rt.block_on(async {
            let mut req = self
                .handle
                .address()
                .add(index, vip.address, vip.prefix_len);
            if vip.address.is_ipv6() {
                let msg = req.message_mut();
                msg.header.flags |= AddressHeaderFlags::Nodad;
                msg.attributes
                    .push(AddressAttribute::Flags(AddressFlags::Nodad));
            }
            match req.execute().await.map_err(nl_err) {
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
                r => r,
            }
        })
    }

    /// Removes `vip` from interface `index`. Returns whether it was there.
    pub fn del(&self, index: u32, vip: &Vip) -> io::Result<bool> {
        let mut msg = AddressMessage::default();
        msg.header.index = index;
        msg.header.prefix_len = vip.prefix_len;
        match vip.address {
            IpAddr::V4(a) => {
                msg.header.family = AddressFamily::Inet;
                msg.attributes.push(AddressAttribute::Local(IpAddr::V4(a)));
                msg.attributes
                    .push(AddressAttribute::Address(IpAddr::V4(a)));
            }
            IpAddr::V6(a) => {
                msg.header.family = AddressFamily::Inet6;
                msg.attributes
                    .push(AddressAttribute::Address(IpAddr::V6(a)));
            }
        }
        self.rt.block_on(async {
            match self
                .handle
                .address()
                .del(msg)
                .execute()
                .await
                .map_err(nl_err)
            {
                Ok(()) => Ok(true),
                Err(e)
                    if e.raw_os_error() == Some(libc::EADDRNOTAVAIL)
                        || e.raw_os_error() == Some(libc::ENOENT) =>
                {
                    Ok(false)
                }
                Err(e) => Err(e),
            }
        })
    }
}

impl Netlink {
    /// Creates macvlan `name` (mode private, MAC `mac`, down) on parent
    /// `parent`, replacing a leftover of the same name (a crashed
    /// predecessor's). Returns its index.
    pub fn macvlan_create(&self, name: &str, parent: u32, mac: [u8; 6]) -> io::Result<u32> {
        if let Ok(old) = self.link(name) {
            self.link_del(old.index)?;
        }
        self.rt.block_on(async {
            let msg = LinkMacVlan::new(name, parent, MacVlanMode::Private)
                .address(mac.to_vec())
                .build();
            self.handle.link().add(msg).execute().await.map_err(nl_err)
        })?;
        Ok(self.link(name)?.index)
    }

    /// Turns off IPv6 address generation on link `index` (down, so none
    /// was generated yet): a virtual-MAC macvlan must not derive its
    /// link-local address from the shared MAC, which every router of the
    /// group has, but carry the parent's (see `Runner::open`).
    pub fn link_no_addr_gen(&self, index: u32) -> io::Result<()> {
        self.rt.block_on(async {
            let msg = LinkUnspec::new_with_index(index)
                .append_extra_attribute(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(
                    vec![AfSpecInet6::AddrGenMode(In6AddrGenMode::None)],
                )]))
                .build();
            self.handle.link().set(msg).execute().await.map_err(nl_err)
        })
    }

    /// Sets link `index` up or down.
    pub fn link_set_up(&self, index: u32, up: bool) -> io::Result<()> {
        self.rt.block_on(async {
            let b = LinkUnspec::new_with_index(index);
            let msg = if up { b.up() } else { b.down() }.build();
            self.handle.link().set(msg).execute().await.map_err(nl_err)
        })
    }

    /// Deletes link `index`; already gone is success.
    pub fn link_del(&self, index: u32) -> io::Result<()> {
        self.rt.block_on(async {
            match self.handle.link().del(index).execute().await.map_err(nl_err) {
                Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(()),
                r => r,
            }
        })
    }
}

/// The interface's primary IPv4 address: the first non-secondary one that
/// is not a VIP (keepalived's choice too).
pub(crate) fn primary_v4(addrs: &[IfAddr], vips: &[Vip]) -> Option<Ipv4Addr> {
    addrs.iter().find_map(|a| match a.addr {
        IpAddr::V4(v4) if !a.secondary && !vips.iter().any(|v| v.address == a.addr) => Some(v4),
        _ => None,
    })
}

/// The interface's link-local IPv6 address (the source of VRRPv3 IPv6
/// adverts, RFC 9568 section 5.1.2.1), preferring one that finished DAD.
pub(crate) fn link_local_v6(addrs: &[IfAddr]) -> Option<Ipv6Addr> {
    let ll = |a: &&IfAddr| match a.addr {
        IpAddr::V6(v6) => a.link_scope && (v6.segments()[0] & 0xffc0) == 0xfe80,
        IpAddr::V4(_) => false,
    };
    let pick = addrs
        .iter()
        .filter(ll)
        .find(|a| !a.tentative)
        .or_else(|| addrs.iter().find(ll));
    pick.and_then(|a| match a.addr {
        IpAddr::V6(v6) => Some(v6),
        IpAddr::V4(_) => None,
    })
}
