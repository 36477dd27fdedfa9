//! The frames that announce a VIP after a takeover, built as bytes (pure,
//! unit-tested): a gratuitous ARP for IPv4 and an unsolicited Neighbor
//! Advertisement for IPv6 (RFC 9568 section 6.4.2: "for each IPv4 address
//! associated with the Virtual Router, broadcast a gratuitous ARP request
//! ...; for each IPv6 address ..., send an Unsolicited ND Neighbor
//! Advertisement with the Router Flag (R) set if ...").

use std::net::{Ipv4Addr, Ipv6Addr};

/// EtherType of ARP.
pub(crate) const ETH_P_ARP: u16 = 0x0806;
/// EtherType of IPv6.
pub(crate) const ETH_P_IPV6: u16 = 0x86dd;
/// The Ethernet broadcast address, destination of a gratuitous ARP.
pub(crate) const BROADCAST_MAC: [u8; 6] = [0xff; 6];
/// ff02::1, all-nodes: the destination of an unsolicited NA (RFC 4861
/// section 7.2.6).
pub(crate) const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
/// The Ethernet address of ff02::1 (RFC 2464 section 7: 33:33 + the last
/// 32 bits of the group).
pub(crate) const ALL_NODES_MAC: [u8; 6] = [0x33, 0x33, 0, 0, 0, 1];

/// An ARP announcement for `vip` from `mac`: an ARP request whose sender
/// and target protocol addresses are both the VIP (RFC 5227 section 3,
/// "ARP Announcement"; also what keepalived sends). The Ethernet header is
/// added by the packet socket (SOCK_DGRAM), destination broadcast.
pub(crate) fn gratuitous_arp(mac: [u8; 6], vip: Ipv4Addr) -> [u8; 28] {
    let mut f = [0u8; 28];
    f[0..2].copy_from_slice(&1u16.to_be_bytes()); // HTYPE Ethernet
    f[2..4].copy_from_slice(&0x0800u16.to_be_bytes()); // PTYPE IPv4
    f[4] = 6; // HLEN
    f[5] = 4; // PLEN
    f[6..8].copy_from_slice(&1u16.to_be_bytes()); // request
    f[8..14].copy_from_slice(&mac); // SHA
    f[14..18].copy_from_slice(&vip.octets()); // SPA
    // f[18..24], THA, stays zero: "ignored" in an announcement (RFC 5227 2.3).
    f[24..28].copy_from_slice(&vip.octets()); // TPA
    f
}

/// An unsolicited Neighbor Advertisement for `target` (RFC 4861 section
/// 4.4 and 7.2.6): IPv6 header (hop limit 255, source `src`, destination
/// ff02::1) and ICMPv6 type 136 with the Override flag set, Solicited
/// clear, Router as `router`, and a Target Link-Layer Address option
/// carrying `mac`. The Ethernet header is added by the packet socket.
pub(crate) fn unsolicited_na(
    mac: [u8; 6],
    src: Ipv6Addr,
    target: Ipv6Addr,
    router: bool,
) -> [u8; 72] {
    const ICMP_LEN: usize = 32;
    let mut f = [0u8; 40 + ICMP_LEN];
    f[0] = 0x60; // version 6, traffic class and flow label 0
    f[4..6].copy_from_slice(&(ICMP_LEN as u16).to_be_bytes());
    f[6] = 58; // next header ICMPv6
    f[7] = 255; // hop limit: receivers drop NDP with less (RFC 4861 7.1.2)
    f[8..24].copy_from_slice(&src.octets());
    f[24..40].copy_from_slice(&ALL_NODES.octets());
    let icmp = &mut f[40..];
    icmp[0] = 136; // Neighbor Advertisement
    icmp[4] = 0x20 | if router { 0x80 } else { 0 }; // O, and R if asked
    icmp[8..24].copy_from_slice(&target.octets());
    icmp[24] = 2; // Target Link-Layer Address option
    icmp[25] = 1; // length in units of 8 bytes
    icmp[26..32].copy_from_slice(&mac);
    let sum = !icmpv6_sum(src, ALL_NODES, icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    f
}

/// The folded one's complement sum of the ICMPv6 pseudo-header (RFC 8200
/// section 8.1) and `msg`.
fn icmpv6_sum(src: Ipv6Addr, dst: Ipv6Addr, msg: &[u8]) -> u16 {
    let mut sum: u64 = 0;
    let mut add = |b: &[u8]| {
        for c in b.chunks(2) {
            sum += u64::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
        }
    };
    add(&src.octets());
    add(&dst.octets());
    add(&(msg.len() as u32).to_be_bytes());
    add(&[0, 0, 0, 58]);
    add(msg);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

    #[test]
    fn arp_announcement_layout() {
        let f = gratuitous_arp(MAC, Ipv4Addr::new(198, 18, 1, 1));
        assert_eq!(
            f,
            [
                0, 1, 8, 0, 6, 4, 0, 1, 2, 0, 0, 0, 0, 1, 198, 18, 1, 1, 0, 0, 0, 0, 0, 0, 198, 18,
                1, 1
            ]
        );
    }

    /// A receiver's check: the sum over pseudo-header and message, checksum
    /// included, folds to 0xffff.
    #[test]
    fn na_checksum_verifies_and_flags() {
        let src: Ipv6Addr = "fe80::1".parse().unwrap();
        let target: Ipv6Addr = "fd00:18:1::1".parse().unwrap();
        let f = unsolicited_na(MAC, src, target, false);
        assert_eq!(icmpv6_sum(src, ALL_NODES, &f[40..]), 0xffff);
        assert_eq!(f[7], 255);
        assert_eq!(f[40 + 4], 0x20, "Override only");
        assert_eq!(&f[40 + 8..40 + 24], &target.octets());
        assert_eq!(&f[40 + 26..], &MAC);
        let r = unsolicited_na(MAC, src, target, true);
        assert_eq!(r[40 + 4], 0xa0);
        assert_eq!(icmpv6_sum(src, ALL_NODES, &r[40..]), 0xffff);
    }
}
