//! `fulcrum decap`: the decapsulating XDP program for the reals behind an
//! IPIP / IP6IP6 VIP (this kernel has no ipip module, and Katran ships
//! its own decap program too).
//!
//! An IPv4 packet with protocol 4 (IPIP, RFC 2003), or an IPv6 packet with
//! next header 41 (IP6IP6, RFC 2473), whose inner destination is one of
//! the VIPs in `DECAP_VIPS`, loses its outer header: the Ethernet header
//! (and an 802.1Q tag) moves forward over it, `bpf_xdp_adjust_head` drops
//! the 20 or 40 bytes, and `XDP_PASS` hands the inner packet to the
//! kernel as if it had arrived so. The inner packet is not touched (its
//! TTL was not decremented by the balancer, which is no hop for it).
//! Everything else passes untouched: other traffic, tunnel packets for
//! other addresses (the kernel drops those: it has no ipip module), and
//! any packet the checks below refuse. Each frame bumps one
//! `DecapReason` counter.
//!
//! Checks: the outer IPv4 header has no options (fulcrum never sends
//! them) and is no fragment, and its total length covers the inner
//! header; the outer IPv6 header's payload length does; the inner header
//! lies inside the frame with the version the outer protocol announces.
#![no_std]
#![no_main]

#[allow(dead_code)]
#[path = "../headers.rs"]
mod headers;

use aya_ebpf::{
    bindings::xdp_action::XDP_PASS,
    helpers::bpf_xdp_adjust_head,
    macros::{map, xdp},
    maps::{HashMap, PerCpuArray},
    programs::XdpContext,
};
use fulcrum_common::{Counters, DecapReason, V4_MAPPED_WORD};
use headers::*;

/// The VIPs whose tunnelled packets this real accepts: address (raw
/// words, IPv4-mapped as in `VipKey::addr`) -> 0.
#[map]
static DECAP_VIPS: HashMap<[u32; 4], u32> = HashMap::with_max_entries(64, 0);

/// Per `DecapReason`: frames and bytes.
#[map]
static DECAP_STATS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(DecapReason::COUNT, 0);

#[xdp]
pub fn fulcrum_decap(ctx: XdpContext) -> u32 {
    let bytes = frame_len(&ctx) as u64;
    let reason = decap(&ctx).unwrap_or_else(|reason| reason);
    if let Some(c) = DECAP_STATS.get_ptr_mut(reason as u32) {
        // SAFETY: per-CPU storage; XDP runs with preemption disabled.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes;
        }
    }
    XDP_PASS
}

#[inline(always)]
fn decap(ctx: &XdpContext) -> Result<DecapReason, DecapReason> {
    let eth: *const EthHdr = ptr_at(ctx, 0).ok_or(DecapReason::PassTruncated)?;
    // SAFETY: bounds checked by ptr_at.
    let mut ether_type = unsafe { (*eth).ether_type };
    let vlan = ether_type == ETH_P_8021Q.to_be();
    let mut l3 = core::mem::size_of::<EthHdr>();
    if vlan {
        let tag: *const VlanHdr = ptr_at(ctx, l3).ok_or(DecapReason::PassTruncated)?;
        // SAFETY: bounds checked by ptr_at.
        ether_type = unsafe { (*tag).ether_type };
        l3 += core::mem::size_of::<VlanHdr>();
    }
    let outer_len = match u16::from_be(ether_type) {
        ETH_P_IP => check_ipip(ctx, l3)?,
        ETH_P_IPV6 => check_ip6ip6(ctx, l3)?,
        _ => return Err(DecapReason::PassNotTunnel),
    };
    strip(ctx, vlan, outer_len).ok_or(DecapReason::PassTruncated)?;
    Ok(DecapReason::Decapsulated)
}

/// IPIP to a VIP: the outer header's length (20).
#[inline(always)]
fn check_ipip(ctx: &XdpContext, l3: usize) -> Result<usize, DecapReason> {
    let outer: *const Ipv4Hdr = ptr_at(ctx, l3).ok_or(DecapReason::PassTruncated)?;
    // SAFETY: bounds checked by ptr_at.
    let (version_ihl, tot_len, frag_off, proto) =
        unsafe { ((*outer).version_ihl, (*outer).tot_len, (*outer).frag_off, (*outer).protocol) };
    if proto != IPPROTO_IPIP {
        return Err(DecapReason::PassNotTunnel);
    }
    if version_ihl != 0x45 || u16::from_be(frag_off) & IP_MF_OFFSET_MASK != 0 {
        return Err(DecapReason::PassMalformed);
    }
    let inner: *const Ipv4Hdr = ptr_at(ctx, l3 + IPV4_HDR_LEN).ok_or(DecapReason::PassTruncated)?;
    // SAFETY: bounds checked by ptr_at.
    let (inner_version, inner_len, daddr) = unsafe { ((*inner).version_ihl >> 4, (*inner).tot_len, (*inner).daddr) };
    if l3 + u16::from_be(tot_len) as usize > frame_len(ctx) {
        return Err(DecapReason::PassTruncated);
    }
    if inner_version != 4 || u16::from_be(inner_len) as usize + IPV4_HDR_LEN > u16::from_be(tot_len) as usize {
        return Err(DecapReason::PassMalformed);
    }
    is_vip(&[0, 0, V4_MAPPED_WORD, daddr])?;
    Ok(IPV4_HDR_LEN)
}

/// IP6IP6 to a VIP: the outer header's length (40).
#[inline(always)]
fn check_ip6ip6(ctx: &XdpContext, l3: usize) -> Result<usize, DecapReason> {
    let outer: *const Ipv6Hdr = ptr_at(ctx, l3).ok_or(DecapReason::PassTruncated)?;
    // SAFETY: bounds checked by ptr_at.
    let (payload_len, next_hdr) = unsafe { ((*outer).payload_len, (*outer).next_hdr) };
    if next_hdr != IPPROTO_IPV6 {
        return Err(DecapReason::PassNotTunnel);
    }
    let inner: *const Ipv6Hdr = ptr_at(ctx, l3 + IPV6_HDR_LEN).ok_or(DecapReason::PassTruncated)?;
    // SAFETY: bounds checked by ptr_at.
    let (vtc_flow, inner_payload, daddr) = unsafe { ((*inner).vtc_flow, (*inner).payload_len, (*inner).daddr) };
    if l3 + IPV6_HDR_LEN + u16::from_be(payload_len) as usize > frame_len(ctx) {
        return Err(DecapReason::PassTruncated);
    }
    if u32::from_be(vtc_flow) >> 28 != 6
        || u16::from_be(inner_payload) as usize + IPV6_HDR_LEN > u16::from_be(payload_len) as usize
    {
        return Err(DecapReason::PassMalformed);
    }
    is_vip(&daddr)?;
    Ok(IPV6_HDR_LEN)
}

#[inline(always)]
fn is_vip(addr: &[u32; 4]) -> Result<(), DecapReason> {
    // SAFETY: only presence is read.
    match unsafe { DECAP_VIPS.get(addr) } {
        Some(_) => Ok(()),
        None => Err(DecapReason::PassNotVip),
    }
}

/// Moves the Ethernet header (and tag) `outer_len` bytes forward, over
/// the outer IP header, and drops the bytes in front of it. The EtherType
/// stays: the inner packet has the outer one's family.
#[inline(always)]
fn strip(ctx: &XdpContext, vlan: bool, outer_len: usize) -> Option<()> {
    let old: *const EthHdr = ptr_at(ctx, 0)?;
    let new: *mut EthHdr = ptr_at_mut(ctx, outer_len)?;
    // SAFETY: both inside the frame (ptr_at); they do not overlap, since
    // the header (at most 18 bytes) is shorter than the outer one.
    unsafe {
        MacWords::load(&(*old).dst).store(&mut (*new).dst);
        MacWords::load(&(*old).src).store(&mut (*new).src);
        (*new).ether_type = (*old).ether_type;
    }
    if vlan {
        let size = core::mem::size_of::<EthHdr>();
        let old: *const VlanHdr = ptr_at(ctx, size)?;
        let new: *mut VlanHdr = ptr_at_mut(ctx, outer_len + size)?;
        // SAFETY: as above. The inner EtherType is the outer one, since
        // the tunnel carries its own family.
        unsafe {
            (*new).tci = (*old).tci;
            (*new).ether_type = (*old).ether_type;
        }
    }
    // SAFETY: the helper checks the new start lies inside the frame.
    (unsafe { bpf_xdp_adjust_head(ctx.ctx, outer_len as i32) } == 0).then_some(())
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
