//! IPIP (IPv4 in IPv4, RFC 2003) and IP6IP6 (IPv6 in IPv6, RFC 2473):
//! the forwarding of VIPs whose reals sit on another L3 network.
//!
//! `bpf_xdp_adjust_head` opens 20 (IPv4) or 40 (IPv6) bytes in front of
//! the frame; the Ethernet header (and an 802.1Q tag, kept) moves to the
//! new front, addressed to the real's next hop, and the outer IP header
//! goes between it and the inner packet, which is not touched. The real
//! runs `fulcrum decap` (xdp-ebpf/src/bin/decap.rs), which strips the
//! outer header again; this kernel has no ipip module.
//!
//! Outer header, IPv4: version 4, IHL 5, TOS copied from the inner packet
//! (RFC 2003 section 3.1), total length = inner + 20, identification and
//! DF copied from the inner packet (an inner packet that may be fragmented
//! leaves an outer one that may be too, with the inner's ID as a unique
//! enough identification; RFC 6864), TTL 64, protocol 4, the checksum
//! computed inline. IPv6: traffic class copied, the flow label = the low
//! 20 bits of the flow hash (RFC 6438: a tunnel's flow label per inner
//! flow), payload length = the inner packet's whole length, next header
//! 41, hop limit 64. Source: the configured prefix with its host bits from
//! the flow hash (`fulcrum_common::DatapathConfig`), so each flow has a
//! fixed outer source and the real's RSS, which hashes outer addresses,
//! spreads flows over its queues. Destination: the real's address from
//! `REALS`.
//!
//! The outer TTL is a fresh 64, as a tunnel entry point sets it (RFC 2003
//! section 3.1); the inner TTL is not decremented, since L2 DSR and IPIP
//! alike make the balancer no IP hop for the inner packet.
use aya_ebpf::{helpers::bpf_xdp_adjust_head, programs::XdpContext};
use fulcrum_common::{hash, DatapathConfig, RealDef, IP6IP6_OVERHEAD, IPIP_OVERHEAD};

use crate::{headers::*, Flow};

/// Outer TTL / hop limit of an encapsulated packet (Linux's default,
/// `net.ipv4.ip_default_ttl`).
pub const OUTER_TTL: u8 = 64;

/// Whether the packet's encapsulation would exceed the MTU: its IP
/// packet plus the 20 (IPIP) or 40 (IP6IP6) bytes of the outer header,
/// against the egress MTU from `DATAPATH_CONFIG`.
#[inline(always)]
pub fn too_big(flow: &Flow, config: &DatapathConfig) -> bool {
    let overhead = if flow.is_v6 { IP6IP6_OVERHEAD } else { IPIP_OVERHEAD };
    flow.ip_len + overhead as usize > config.mtu as usize
}

/// Encapsulates the frame's IP packet for `real`, from `own_mac` to the
/// real's (next hop's) MAC. `None` if the driver left no headroom.
#[inline(always)]
pub fn encapsulate(ctx: &XdpContext, flow: &Flow, real: &RealDef, own_mac: MacWords, config: &DatapathConfig) -> Option<()> {
    if flow.is_v6 {
        let hash = hash::flow_hash_v6(&flow.saddr, flow.ports);
        encapsulate_v6(ctx, flow, real, own_mac, config, hash)
    } else {
        let hash = hash::flow_hash_v4(flow.saddr[3], flow.ports);
        encapsulate_v4(ctx, flow, real, own_mac, config, hash)
    }
}

#[inline(always)]
fn encapsulate_v4(ctx: &XdpContext, flow: &Flow, real: &RealDef, own_mac: MacWords, config: &DatapathConfig, hash: u32) -> Option<()> {
    let inner: *const Ipv4Hdr = ptr_at(ctx, flow.l3)?;
    // SAFETY: bounds checked by ptr_at. Read before the headers move.
    let (tos, id, frag_off) = unsafe { ((*inner).tos, (*inner).id, (*inner).frag_off) };
    grow_head(ctx, IPIP_OVERHEAD as usize)?;
    // SAFETY: a map value, 8-byte aligned.
    let real_mac = unsafe { MacWords::load(&real.mac) };
    move_l2(ctx, flow.vlan, IPIP_OVERHEAD as usize, real_mac, own_mac)?;
    let ip: *mut Ipv4Hdr = ptr_at_mut(ctx, flow.l3)?;
    // SAFETY: bounds checked by ptr_at_mut; the 20 bytes were opened above.
    unsafe {
        (*ip).version_ihl = 0x45;
        (*ip).tos = tos;
        (*ip).tot_len = ((flow.ip_len + IPV4_HDR_LEN) as u16).to_be();
        (*ip).id = id;
        (*ip).frag_off = frag_off & IP_DF.to_be();
        (*ip).ttl = OUTER_TTL;
        (*ip).protocol = IPPROTO_IPIP;
        (*ip).check = 0;
        (*ip).saddr = config.ipip_src_v4 | (hash & config.ipip_src_v4_host);
        (*ip).daddr = real.addr[3];
        (*ip).check = ipv4_header_checksum(ip);
    }
    Some(())
}

#[inline(always)]
fn encapsulate_v6(ctx: &XdpContext, flow: &Flow, real: &RealDef, own_mac: MacWords, config: &DatapathConfig, hash: u32) -> Option<()> {
    let inner: *const Ipv6Hdr = ptr_at(ctx, flow.l3)?;
    // SAFETY: bounds checked by ptr_at. Read before the headers move.
    let traffic_class = unsafe { u32::from_be((*inner).vtc_flow) } & 0x0ff0_0000;
    grow_head(ctx, IP6IP6_OVERHEAD as usize)?;
    // SAFETY: a map value, 8-byte aligned.
    let real_mac = unsafe { MacWords::load(&real.mac) };
    move_l2(ctx, flow.vlan, IP6IP6_OVERHEAD as usize, real_mac, own_mac)?;
    let ip: *mut Ipv6Hdr = ptr_at_mut(ctx, flow.l3)?;
    // SAFETY: bounds checked by ptr_at_mut; the 40 bytes were opened above.
    unsafe {
        (*ip).vtc_flow = (6 << 28 | traffic_class | (hash & 0x000f_ffff)).to_be();
        (*ip).payload_len = (flow.ip_len as u16).to_be();
        (*ip).next_hdr = IPPROTO_IPV6;
        (*ip).hop_limit = OUTER_TTL;
        // Word by word: a 16-byte array assignment compiles to a call of a
        // `memcpy` subprogram (a BPF-to-BPF call, ~8.5 ns on the AMD machines).
        let src = &config.ipip_src_v6;
        (*ip).saddr[0] = src[0];
        (*ip).saddr[1] = src[1];
        (*ip).saddr[2] = src[2];
        (*ip).saddr[3] = src[3] | (hash & config.ipip_src_v6_host);
        (*ip).daddr[0] = real.addr[0];
        (*ip).daddr[1] = real.addr[1];
        (*ip).daddr[2] = real.addr[2];
        (*ip).daddr[3] = real.addr[3];
    }
    Some(())
}

/// Opens `bytes` in front of the frame (`bpf_xdp_adjust_head` with a
/// negative delta). Every packet pointer is invalid afterwards.
#[inline(always)]
pub fn grow_head(ctx: &XdpContext, bytes: usize) -> Option<()> {
    // SAFETY: the helper checks the headroom itself.
    (unsafe { bpf_xdp_adjust_head(ctx.ctx, -(bytes as i32)) } == 0).then_some(())
}

/// Writes the Ethernet header (dst, src, the EtherType and an 802.1Q tag
/// if the frame had one) at the frame's new front, from the old one that
/// now starts `shift` bytes in. The EtherType stays: the outer header is
/// of the inner one's family, and so is an ICMP error about it.
#[inline(always)]
pub fn move_l2(ctx: &XdpContext, vlan: bool, shift: usize, dst: MacWords, src: MacWords) -> Option<()> {
    let eth: *mut EthHdr = ptr_at_mut(ctx, 0)?;
    let old: *const EthHdr = ptr_at(ctx, shift)?;
    // SAFETY: both headers are inside the frame (ptr_at); 2-byte aligned.
    unsafe {
        dst.store(&mut (*eth).dst);
        src.store(&mut (*eth).src);
        (*eth).ether_type = (*old).ether_type;
    }
    if vlan {
        let tag: *mut VlanHdr = ptr_at_mut(ctx, core::mem::size_of::<EthHdr>())?;
        let old: *const VlanHdr = ptr_at(ctx, shift + core::mem::size_of::<EthHdr>())?;
        // SAFETY: as above.
        unsafe {
            (*tag).tci = (*old).tci;
            (*tag).ether_type = (*old).ether_type;
        }
    }
    Some(())
}
