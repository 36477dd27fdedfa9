//! The shell's sockets: one raw IP socket (protocol 112) per instance for
//! adverts, and one AF_PACKET socket for gratuitous ARP / unsolicited NA.
//!
//! Neither advert socket is bound to an address: a raw socket bound to an
//! address only receives packets sent *to* that address, which would drop
//! the multicast adverts. The source address is instead set per packet
//! with IP_PKTINFO / IPV6_PKTINFO on `sendmsg`, together with the
//! interface. SO_BINDTODEVICE keeps adverts of other interfaces out.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use nix::sys::socket::{
    recv, recvmsg, sendmsg, setsockopt, sockopt, ControlMessage, ControlMessageOwned, MsgFlags,
    SockaddrIn, SockaddrIn6,
};
use socket2::{Domain, InterfaceIndexOrAddress, Protocol, SockAddr, SockAddrStorage, Socket, Type};

use super::frames;
use crate::checks::IpMeta;
use crate::packet::{Family, IPPROTO_VRRP};

/// 224.0.0.18, the VRRP IPv4 multicast group (RFC 9568 section 5.1.1.2).
pub const GROUP_V4: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 18);
/// ff02::12, the VRRP IPv6 multicast group (RFC 9568 section 5.1.2.2).
pub const GROUP_V6: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0x12);

fn nix_io(e: nix::Error) -> io::Error {
    io::Error::from(e)
}

/// A received packet: the IP header facts and where the VRRP payload lies
/// in the receive buffer.
pub(crate) struct Received {
    pub meta: IpMeta,
    pub payload: std::ops::Range<usize>,
}

/// The raw protocol-112 socket of one instance.
pub(crate) struct AdvertSocket {
    sock: Socket,
    family: Family,
    ifindex: u32,
    src: IpAddr,
}

impl AdvertSocket {
    /// Opens it on interface `ifname` (index `ifindex`), sending from
    /// `src`. With `multicast`, joins the VRRP group on that interface.
    /// TTL / hop limit 255 for unicast and multicast alike (RFC 9568
    /// 5.1.1.3, 5.1.2.3: "MUST be set to 255"); our own multicast is not
    /// looped back to us.
    pub fn open(
        ifname: &str,
        ifindex: u32,
        src: IpAddr,
        multicast: bool,
    ) -> io::Result<AdvertSocket> {
        let proto = Some(Protocol::from(i32::from(IPPROTO_VRRP)));
        let family = Family::of(&src);
        let sock = match src {
            IpAddr::V4(src4) => {
                let s = Socket::new(Domain::IPV4, Type::RAW, proto)?;
                s.bind_device(Some(ifname.as_bytes()))?;
                s.set_ttl_v4(255)?;
                s.set_multicast_ttl_v4(255)?;
                s.set_multicast_loop_v4(false)?;
                // By address: EINVAL when `src` is not on the bound
                // device (a virtual-MAC macvlan sending from the parent's
                // address). Harmless: IP_PKTINFO sets the interface of
                // every packet sent.
                match s.set_multicast_if_v4(&src4) {
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
                    r => r?,
                }
                if multicast {
                    s.join_multicast_v4_n(&GROUP_V4, &InterfaceIndexOrAddress::Index(ifindex))?;
                }
                s
            }
            IpAddr::V6(_) => {
                let s = Socket::new(Domain::IPV6, Type::RAW, proto)?;
                s.bind_device(Some(ifname.as_bytes()))?;
                s.set_unicast_hops_v6(255)?;
                s.set_multicast_hops_v6(255)?;
                s.set_multicast_loop_v6(false)?;
                s.set_multicast_if_v6(ifindex)?;
                // The IPv6 header is not delivered on raw sockets: hop
                // limit and destination come as control messages.
                s.set_recv_hoplimit_v6(true)?;
                setsockopt(&s, sockopt::Ipv6RecvPacketInfo, &true).map_err(nix_io)?;
                if multicast {
                    s.join_multicast_v6(&GROUP_V6, ifindex)?;
                }
                s
            }
        };
        sock.set_nonblocking(true)?;
        Ok(AdvertSocket {
            sock,
            family,
            ifindex,
            src,
        })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }

    /// Sends one encoded advertisement to `dst` from our source address.
    pub fn send(&self, payload: &[u8], dst: IpAddr) -> io::Result<()> {
        let fd = self.sock.as_raw_fd();
        let iov = [IoSlice::new(payload)];
        match (self.src, dst) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                let pi = libc::in_pktinfo {
                    ipi_ifindex: self.ifindex as libc::c_int,
                    ipi_spec_dst: libc::in_addr {
                        s_addr: u32::from(src).to_be(),
                    },
                    ipi_addr: libc::in_addr { s_addr: 0 },
                };
                let to = SockaddrIn::from(SocketAddrV4::new(dst, 0));
                sendmsg(
                    fd,
                    &iov,
                    &[ControlMessage::Ipv4PacketInfo(&pi)],
                    MsgFlags::empty(),
                    Some(&to),
                )
                .map_err(nix_io)?;
            }
            (IpAddr::V6(src), IpAddr::V6(dst)) => {
                let pi = libc::in6_pktinfo {
                    ipi6_addr: libc::in6_addr {
                        s6_addr: src.octets(),
                    },
                    ipi6_ifindex: self.ifindex,
                };
                let scope = if dst.is_unicast_link_local() || dst.is_multicast() {
                    self.ifindex
                } else {
                    0
                };
                let to = SockaddrIn6::from(SocketAddrV6::new(dst, 0, 0, scope));
                sendmsg(
                    fd,
                    &iov,
                    &[ControlMessage::Ipv6PacketInfo(&pi)],
                    MsgFlags::empty(),
                    Some(&to),
                )
                .map_err(nix_io)?;
            }
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "address family mismatch",
                ))
            }
        }
        Ok(())
    }

    /// Receives one packet into `buf` without blocking; `None` when there
    /// is none. Packets whose IP header cannot be read are `Some(None)`.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<Option<Option<Received>>> {
        let fd = self.sock.as_raw_fd();
        match self.family {
            Family::V4 => {
                let n = match recv(fd, buf, MsgFlags::MSG_DONTWAIT) {
                    Ok(n) => n,
                    Err(nix::Error::EAGAIN) => return Ok(None),
                    Err(e) => return Err(nix_io(e)),
                };
                Ok(Some(parse_ipv4(&buf[..n])))
            }
            Family::V6 => {
                let mut cmsg = nix::cmsg_space!(libc::in6_pktinfo, libc::c_int);
                let mut iov = [IoSliceMut::new(buf)];
                let msg = match recvmsg::<SockaddrIn6>(
                    fd,
                    &mut iov,
                    Some(&mut cmsg),
                    MsgFlags::MSG_DONTWAIT,
                ) {
                    Ok(m) => m,
                    Err(nix::Error::EAGAIN) => return Ok(None),
                    Err(e) => return Err(nix_io(e)),
                };
                let n = msg.bytes;
                let src = msg.address.map(|a| a.ip());
                let mut dst = None;
                // A missing hop limit reads as 0 and fails the TTL check.
                let mut hops = 0u8;
                for c in msg.cmsgs().map_err(nix_io)? {
                    match c {
                        ControlMessageOwned::Ipv6PacketInfo(pi) => {
                            dst = Some(Ipv6Addr::from(pi.ipi6_addr.s6_addr))
                        }
                        ControlMessageOwned::Ipv6HopLimit(h) => hops = u8::try_from(h).unwrap_or(0),
                        _ => {}
                    }
                }
                Ok(Some(match (src, dst) {
                    (Some(s), Some(d)) => Some(Received {
                        meta: IpMeta {
                            src: IpAddr::V6(s),
                            dst: IpAddr::V6(d),
                            ttl: hops,
                        },
                        payload: 0..n,
                    }),
                    _ => None,
                }))
            }
        }
    }
}

/// Reads TTL, source and destination from the IPv4 header raw IPv4
/// sockets deliver, and where its payload is. A datagram cut short keeps
/// its shorter payload (the VRRP length check discards it).
fn parse_ipv4(pkt: &[u8]) -> Option<Received> {
    if pkt.len() < 20 || pkt[0] >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(pkt[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([pkt[2], pkt[3]]));
    if ihl < 20 || pkt.len() < ihl {
        return None;
    }
    let end = total.clamp(ihl, pkt.len());
    let src = Ipv4Addr::new(pkt[12], pkt[13], pkt[14], pkt[15]);
    let dst = Ipv4Addr::new(pkt[16], pkt[17], pkt[18], pkt[19]);
    Some(Received {
        meta: IpMeta {
            src: IpAddr::V4(src),
            dst: IpAddr::V4(dst),
            ttl: pkt[8],
        },
        payload: ihl..end,
    })
}

/// Sends gratuitous ARPs and unsolicited NAs on one interface through an
/// AF_PACKET datagram socket (the kernel adds the Ethernet header). It is
/// opened with protocol 0, so it receives nothing and never needs reading.
pub(crate) struct Announcer {
    sock: Socket,
    ifindex: u32,
    mac: [u8; 6],
    /// Set the Router flag in NAs (a virtual MAC's announcements).
    router: bool,
}

impl Announcer {
    pub fn open(ifindex: u32, mac: [u8; 6], router: bool) -> io::Result<Announcer> {
        let sock = Socket::new(Domain::PACKET, Type::DGRAM, Some(Protocol::from(0)))?;
        sock.set_nonblocking(true)?;
        Ok(Announcer {
            sock,
            ifindex,
            mac,
            router,
        })
    }

    /// One gratuitous ARP for `vip`, to the broadcast address.
    pub fn garp(&self, vip: Ipv4Addr) -> io::Result<()> {
        let frame = frames::gratuitous_arp(self.mac, vip);
        let to = packet_addr(self.ifindex, frames::ETH_P_ARP, frames::BROADCAST_MAC);
        self.sock.send_to(&frame, &to).map(drop)
    }

    /// One unsolicited NA for `vip` from link-local `src`, to ff02::1.
    pub fn na(&self, src: Ipv6Addr, vip: Ipv6Addr) -> io::Result<()> {
        let frame = frames::unsolicited_na(self.mac, src, vip, self.router);
        let to = packet_addr(self.ifindex, frames::ETH_P_IPV6, frames::ALL_NODES_MAC);
        self.sock.send_to(&frame, &to).map(drop)
    }
}

/// A `sockaddr_ll` for sending `protocol` frames to `dest` on `ifindex`.
/// The only unsafe code of the crate: neither socket2 nor nix can build a
/// link-layer address safely.
#[allow(unsafe_code)]
fn packet_addr(ifindex: u32, protocol: u16, dest: [u8; 6]) -> SockAddr {
    let mut storage = SockAddrStorage::zeroed();
    // SAFETY: SockAddrStorage is a zeroed sockaddr_storage, which is at
    // least as large and as aligned as sockaddr_ll (socket2 documents
    // `view_as` for exactly this use).
    let ll = unsafe { storage.view_as::<libc::sockaddr_ll>() };
    ll.sll_family = libc::AF_PACKET as libc::sa_family_t;
    ll.sll_protocol = protocol.to_be();
    ll.sll_ifindex = ifindex as libc::c_int;
    ll.sll_halen = 6;
    ll.sll_addr[..6].copy_from_slice(&dest);
    let len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
    // SAFETY: the storage holds an initialised sockaddr_ll of `len` bytes
    // with its family set.
    unsafe { SockAddr::new(storage, len) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_header_parsing() {
        let mut p = vec![
            0x45, 0, 0, 28, 0, 0, 0, 0, 255, 112, 0, 0, 198, 18, 0, 1, 224, 0, 0, 18,
        ];
        p.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        let r = parse_ipv4(&p).unwrap();
        assert_eq!(r.meta.ttl, 255);
        assert_eq!(r.meta.src, IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)));
        assert_eq!(r.meta.dst, IpAddr::V4(GROUP_V4));
        assert_eq!(r.payload, 20..28);
        // Cut short: the payload is what arrived.
        assert_eq!(parse_ipv4(&p[..24]).unwrap().payload, 20..24);
        // Not IPv4, or shorter than a header.
        assert!(parse_ipv4(&p[..19]).is_none());
        p[0] = 0x65;
        assert!(parse_ipv4(&p).is_none());
    }
}
