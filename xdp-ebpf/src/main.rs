//! fulcrum's L4 datapath: an XDP program that forwards VIP traffic to a
//! backend chosen from a Maglev lookup table, in L2 DSR mode.
//!
//! The pipeline reads top to bottom, one small function a stage:
//! `parse` -> `lookup_vip` -> `pick_real` -> `rewrite_l2` -> `XDP_TX`.
//! Anything that is not a VIP packet, or cannot be parsed, is `XDP_PASS`
//! (the kernel stack decides); a VIP with no healthy backend is `XDP_DROP`.
//! Every frame bumps exactly one per-reason counter.
#![no_std]
#![no_main]

mod headers;
mod maps;

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS, XDP_TX},
    macros::xdp,
    programs::XdpContext,
};
use fulcrum_common::{
    hash, ports_word, Reason, VipKey, VipMeta, IPPROTO_TCP, IPPROTO_UDP, V4_MAPPED_WORD,
    VIP_F_HASH_SRC_ONLY,
};
use headers::*;
use maps::*;

/// What the parser extracts from a frame: enough to find the VIP and hash the flow.
struct Flow {
    vip: VipKey,
    /// Source address in the same IPv4-mapped form as `VipKey::addr`.
    saddr: [u32; 4],
    /// Source and destination port as one raw word (see `ports_word`).
    ports: u32,
    is_v6: bool,
}

#[xdp]
pub fn fulcrum_xdp(ctx: XdpContext) -> u32 {
    let bytes = (ctx.data_end() - ctx.data()) as u64;
    let (action, reason) = balance(&ctx, bytes);
    count(&REASON_STATS, reason as u32, bytes);
    action
}

#[inline(always)]
fn balance(ctx: &XdpContext, bytes: u64) -> (u32, Reason) {
    let flow = match parse(ctx) {
        Ok(flow) => flow,
        Err(reason) => return (XDP_PASS, reason),
    };
    let Some(vip) = lookup_vip(&flow.vip) else {
        return (XDP_PASS, Reason::PassNotVip);
    };
    count(&VIP_STATS, vip.vip_id, bytes);
    // No log line here: a per-packet record would let any sender flood
    // the log ring; the DropNoBackend counter says it instead.
    let Some(real_id) = pick_real(&vip, &flow) else {
        return (XDP_DROP, Reason::DropNoBackend);
    };
    if rewrite_l2(ctx, real_id).is_none() {
        return (XDP_DROP, Reason::DropNoBackend);
    }
    count(&REAL_STATS, real_id, bytes);
    (XDP_TX, Reason::Tx)
}

// ---- parse -----------------------------------------------------------------

#[inline(always)]
fn parse(ctx: &XdpContext) -> Result<Flow, Reason> {
    let eth: *const EthHdr = ptr_at(ctx, 0).ok_or(Reason::PassTruncated)?;
    let mut offset = core::mem::size_of::<EthHdr>();
    // SAFETY: ptr_at checked the header lies inside the frame.
    let mut ether_type = unsafe { (*eth).ether_type };
    if ether_type == ETH_P_8021Q.to_be() {
        let vlan: *const VlanHdr = ptr_at(ctx, offset).ok_or(Reason::PassTruncated)?;
        ether_type = unsafe { (*vlan).ether_type };
        offset += core::mem::size_of::<VlanHdr>();
    }
    match u16::from_be(ether_type) {
        ETH_P_IP => parse_ipv4(ctx, offset),
        ETH_P_IPV6 => parse_ipv6(ctx, offset),
        _ => Err(Reason::PassNotIp),
    }
}

/// IPv4 with or without options: they are skipped, not interpreted, since
/// L2 DSR leaves the IP header untouched.
#[inline(always)]
fn parse_ipv4(ctx: &XdpContext, offset: usize) -> Result<Flow, Reason> {
    let ip: *const Ipv4Hdr = ptr_at(ctx, offset).ok_or(Reason::PassTruncated)?;
    // SAFETY: bounds checked by ptr_at.
    let (version_ihl, frag_off, proto, saddr, daddr) = unsafe {
        ((*ip).version_ihl, (*ip).frag_off, (*ip).protocol, (*ip).saddr, (*ip).daddr)
    };
    let ihl = (version_ihl & 0x0f) as usize;
    if version_ihl >> 4 != 4 || ihl < 5 {
        return Err(Reason::PassMalformed);
    }
    if u16::from_be(frag_off) & IP_MF_OFFSET_MASK != 0 {
        return Err(Reason::PassFragment);
    }
    let (ports, dport) = parse_ports(ctx, offset + ihl * 4, proto)?;
    Ok(Flow {
        vip: VipKey { addr: [0, 0, V4_MAPPED_WORD, daddr], port: dport, proto, _pad: 0 },
        saddr: [0, 0, V4_MAPPED_WORD, saddr],
        ports,
        is_v6: false,
    })
}

/// IPv6 whose next header is TCP or UDP. Extension headers are not walked:
/// a fragment header means PassFragment, any other PassNotL4.
#[inline(always)]
fn parse_ipv6(ctx: &XdpContext, offset: usize) -> Result<Flow, Reason> {
    let ip: *const Ipv6Hdr = ptr_at(ctx, offset).ok_or(Reason::PassTruncated)?;
    // SAFETY: bounds checked by ptr_at.
    let (proto, saddr, daddr) = unsafe { ((*ip).next_hdr, (*ip).saddr, (*ip).daddr) };
    if proto == IPPROTO_FRAGMENT {
        return Err(Reason::PassFragment);
    }
    let (ports, dport) = parse_ports(ctx, offset + core::mem::size_of::<Ipv6Hdr>(), proto)?;
    Ok(Flow {
        vip: VipKey { addr: daddr, port: dport, proto, _pad: 0 },
        saddr,
        ports,
        is_v6: true,
    })
}

/// The raw ports word and raw destination port of a TCP or UDP header
/// at `offset`, which must be whole (20 or 8 bytes).
#[inline(always)]
fn parse_ports(ctx: &XdpContext, offset: usize, proto: u8) -> Result<(u32, u16), Reason> {
    let header_len = match proto {
        IPPROTO_TCP => TCP_HDR_LEN,
        IPPROTO_UDP => UDP_HDR_LEN,
        _ => return Err(Reason::PassNotL4),
    };
    if !has_bytes(ctx, offset, header_len) {
        return Err(Reason::PassTruncated);
    }
    let ports: *const Ports = ptr_at(ctx, offset).ok_or(Reason::PassTruncated)?;
    // SAFETY: bounds checked by ptr_at.
    let (src, dst) = unsafe { ((*ports).src, (*ports).dst) };
    Ok((ports_word(src, dst), dst))
}

// ---- lookup ----------------------------------------------------------------

#[inline(always)]
fn lookup_vip(key: &VipKey) -> Option<VipMeta> {
    // SAFETY: the value is copied out at once. VIPS is BPF_F_NO_PREALLOC:
    // user space replaces an entry by linking a new element, and the old
    // one is freed only after this RCU read section ends, so the copy is
    // one whole value, old or new.
    unsafe { VIPS.get(key).copied() }
}

// ---- pick ------------------------------------------------------------------

/// The real id at `hash % M` of the VIP's live table, or `None` if the VIP
/// has no healthy backend (M = 0).
#[inline(always)]
fn pick_real(vip: &VipMeta, flow: &Flow) -> Option<u32> {
    if vip.table_size == 0 {
        return None;
    }
    let hash = match (vip.flags & VIP_F_HASH_SRC_ONLY != 0, flow.is_v6) {
        (false, false) => hash::flow_hash_v4(flow.saddr[3], flow.ports),
        (false, true) => hash::flow_hash_v6(&flow.saddr, flow.ports),
        (true, false) => hash::src_hash_v4(flow.saddr[3]),
        (true, true) => hash::src_hash_v6(&flow.saddr),
    };
    LOOKUP_TABLES.get(vip.table_base() + hash % vip.table_size).copied()
}

// ---- rewrite ---------------------------------------------------------------

/// L2 DSR: destination MAC := the real's, source MAC := ours. The IP packet
/// is untouched; the real holds the VIP on a loopback and answers the
/// client directly.
#[inline(always)]
fn rewrite_l2(ctx: &XdpContext, real_id: u32) -> Option<()> {
    let real = REALS.get(real_id)?;
    let config = DATAPATH_CONFIG.get(0)?;
    let eth: *mut EthHdr = ptr_at_mut(ctx, 0)?;
    // SAFETY: bounds checked by ptr_at_mut.
    unsafe {
        (*eth).dst = real.mac;
        (*eth).src = config.self_mac;
    }
    Some(())
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
