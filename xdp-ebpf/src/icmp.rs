//! ICMP the balancer answers itself, from XDP with `XDP_TX`, from the
//! MAC the client sent to (`local_mac`: the interface's own, or the VRRP
//! virtual router MAC the client resolved the VIP to):
//!
//! - Echo requests to a VIP address (RFC 792, RFC 4443 section 4.1): the
//!   reply swaps the addresses, sets a fresh TTL / hop limit of 64, turns
//!   type 8 into 0 (ICMPv6: 128 into 129) and fixes the ICMP checksum
//!   incrementally (RFC 1624): the address swap does not change the
//!   ICMPv6 pseudo-header's sum. A request with a bad checksum gets a reply
//!   with a bad checksum, which the client drops as it would drop the
//!   kernel's silence. Not rate-limited: the kernel does not limit echo
//!   replies either (`icmp_ratemask` leaves them out).
//! - "Fragmentation needed" (IPv4, DF set; RFC 792, RFC 1191) and "packet
//!   too big" (RFC 4443 section 3.2) for a packet of an IPIP/IP6IP6 VIP
//!   that would exceed the MTU once encapsulated (Katran's
//!   `ICMP_TOOBIG_GENERATION`). The error comes from the VIP's address,
//!   so the client's stack matches it to its connection, and advertises
//!   the MTU minus the 20/40 bytes of the outer header. It quotes a fixed
//!   548 bytes of the packet (IPv4: 576-byte datagram, RFC 1812 section
//!   4.3.2.3) or 1232 (IPv6: 1280 bytes, the minimum MTU, RFC 4443
//!   section 2.4(c)); a too-big packet is always longer when the MTU is
//!   at least 1280. Katran does not rate-limit these either; the counter
//!   says how many were sent.
use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS, XDP_TX},
    helpers::{bpf_csum_diff, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use fulcrum_common::{DatapathConfig, Reason, IP6IP6_OVERHEAD, IPIP_OVERHEAD};

use crate::{
    encap::{grow_head, move_l2, OUTER_TTL},
    headers::*,
    Flow,
};

/// Bytes of the offending packet an ICMP "fragmentation needed" quotes.
pub const QUOTE_V4: usize = 576 - IPV4_HDR_LEN - ICMP_HDR_LEN;
/// Bytes of the offending packet an ICMPv6 "packet too big" quotes.
pub const QUOTE_V6: usize = 1280 - IPV6_HDR_LEN - ICMP_HDR_LEN;

/// An echo request: where its IP header starts.
pub struct Echo {
    /// Destination, in the IPv4-mapped form of `VipKey::addr`.
    pub dst: [u32; 4],
    pub l3: usize,
    pub is_v6: bool,
    /// The 802.1Q VLAN id, 0 when untagged (see `Flow::vid`).
    pub vid: u16,
}

/// Turns the echo request in the frame into its reply, back to the
/// Ethernet source it came from.
#[inline(always)]
pub fn echo_reply(ctx: &XdpContext, echo: &Echo, local_mac: MacWords) -> (u32, Reason) {
    let done = if echo.is_v6 { echo_reply_v6(ctx, echo.l3, local_mac) } else { echo_reply_v4(ctx, echo.l3, local_mac) };
    match done {
        Some(()) => (XDP_TX, Reason::IcmpEchoReply),
        None => (XDP_PASS, Reason::PassTruncated),
    }
}

#[inline(always)]
fn back_to_sender(ctx: &XdpContext, local_mac: MacWords) -> Option<()> {
    let eth: *mut EthHdr = ptr_at_mut(ctx, 0)?;
    // SAFETY: bounds checked by ptr_at_mut; 2-byte aligned.
    unsafe {
        let client = MacWords::load(&(*eth).src);
        client.store(&mut (*eth).dst);
        local_mac.store(&mut (*eth).src);
    }
    Some(())
}

#[inline(always)]
fn echo_reply_v4(ctx: &XdpContext, l3: usize, local_mac: MacWords) -> Option<()> {
    let ip: *mut Ipv4Hdr = ptr_at_mut(ctx, l3)?;
    let icmp: *mut IcmpHdr = ptr_at_mut(ctx, l3 + IPV4_HDR_LEN)?;
    back_to_sender(ctx, local_mac)?;
    // SAFETY: bounds checked by ptr_at_mut; the parser saw IHL 5.
    unsafe {
        let (src, dst) = ((*ip).saddr, (*ip).daddr);
        (*ip).saddr = dst;
        (*ip).daddr = src;
        (*ip).ttl = OUTER_TTL;
        (*ip).check = 0;
        (*ip).check = ipv4_header_checksum(ip);
        (*icmp).kind = ICMP_ECHO_REPLY;
        (*icmp).check = checksum_update((*icmp).check, u16::from(ICMP_ECHO_REQUEST) << 8, u16::from(ICMP_ECHO_REPLY) << 8);
    }
    Some(())
}

#[inline(always)]
fn echo_reply_v6(ctx: &XdpContext, l3: usize, local_mac: MacWords) -> Option<()> {
    let ip: *mut Ipv6Hdr = ptr_at_mut(ctx, l3)?;
    let icmp: *mut IcmpHdr = ptr_at_mut(ctx, l3 + IPV6_HDR_LEN)?;
    back_to_sender(ctx, local_mac)?;
    // SAFETY: bounds checked by ptr_at_mut.
    unsafe {
        let (src, dst) = ((*ip).saddr, (*ip).daddr);
        (*ip).saddr = dst;
        (*ip).daddr = src;
        (*ip).hop_limit = OUTER_TTL;
        (*icmp).kind = ICMPV6_ECHO_REPLY;
        (*icmp).check =
            checksum_update((*icmp).check, u16::from(ICMPV6_ECHO_REQUEST) << 8, u16::from(ICMPV6_ECHO_REPLY) << 8);
    }
    Some(())
}

/// Answers a packet too big to encapsulate with an ICMP error to its
/// sender, or drops it when no error may or can be sent (IPv4 without
/// DF: XDP cannot fragment, and RFC 1191 reserves the error for DF).
#[inline(always)]
pub fn too_big(ctx: &XdpContext, flow: &Flow, local_mac: MacWords, config: &DatapathConfig) -> (u32, Reason) {
    let sent = if flow.is_v6 {
        too_big_v6(ctx, flow, local_mac, config)
    } else if flow.df {
        too_big_v4(ctx, flow, local_mac, config)
    } else {
        None
    };
    match sent {
        Some(()) => (XDP_TX, Reason::IcmpTooBig),
        None => (XDP_DROP, Reason::DropTooBig),
    }
}

/// Cuts the frame to its L2 header and `quote` bytes of the IP packet,
/// then opens `header` bytes for the new IP and ICMP headers in front of
/// it; the old L2 header then starts at `header`.
#[inline(always)]
fn make_room(ctx: &XdpContext, flow: &Flow, quote: usize, header: usize) -> Option<()> {
    if flow.ip_len < quote {
        return None;
    }
    // Opaque to the optimizer: folded into `l3 + quote - data_end + data`
    // it becomes arithmetic on `data_end`, which the verifier refuses.
    let len = core::hint::black_box(frame_len(ctx));
    let delta = (flow.l3 + quote) as i32 - len as i32;
    // SAFETY: the helper checks the new length itself.
    if unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta) } != 0 {
        return None;
    }
    grow_head(ctx, header)
}

/// The sender's MAC in the old L2 header, now `shift` bytes in.
#[inline(always)]
fn old_source_mac(ctx: &XdpContext, shift: usize) -> Option<MacWords> {
    let old: *const EthHdr = ptr_at(ctx, shift)?;
    // SAFETY: bounds checked by ptr_at; 2-byte aligned.
    Some(unsafe { MacWords::load(&(*old).src) })
}

/// Ones' complement sum of `LEN` bytes of the frame at `offset` (a
/// multiple of 4, at most 512: `bpf_csum_diff`'s limits), unfolded.
#[inline(always)]
fn csum<const LEN: usize>(ctx: &XdpContext, offset: usize) -> Option<u64> {
    let p: *const [u8; LEN] = ptr_at(ctx, offset)?;
    // SAFETY: the LEN bytes are inside the frame (ptr_at); the helper only reads them.
    let sum = unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, p as *mut u32, LEN as u32, 0) };
    Some(u64::from(sum as u32))
}

#[inline(always)]
fn too_big_v4(ctx: &XdpContext, flow: &Flow, local_mac: MacWords, config: &DatapathConfig) -> Option<()> {
    const SHIFT: usize = IPV4_HDR_LEN + ICMP_HDR_LEN;
    make_room(ctx, flow, QUOTE_V4, SHIFT)?;
    move_l2(ctx, flow.vlan, SHIFT, old_source_mac(ctx, SHIFT)?, local_mac)?;
    let l3 = flow.l3;
    let quoted: *const Ipv4Hdr = ptr_at(ctx, l3 + SHIFT)?;
    let ip: *mut Ipv4Hdr = ptr_at_mut(ctx, l3)?;
    let icmp: *mut IcmpHdr = ptr_at_mut(ctx, l3 + IPV4_HDR_LEN)?;
    // SAFETY: bounds checked by ptr_at(_mut).
    unsafe {
        (*ip).version_ihl = 0x45;
        (*ip).tos = 0;
        (*ip).tot_len = ((SHIFT + QUOTE_V4) as u16).to_be();
        (*ip).id = 0;
        (*ip).frag_off = 0;
        (*ip).ttl = OUTER_TTL;
        (*ip).protocol = IPPROTO_ICMP;
        (*ip).check = 0;
        (*ip).saddr = (*quoted).daddr;
        (*ip).daddr = (*quoted).saddr;
        (*ip).check = ipv4_header_checksum(ip);
        (*icmp).kind = ICMP_DEST_UNREACH;
        (*icmp).code = ICMP_FRAG_NEEDED;
        (*icmp).check = 0;
        // RFC 1191 section 4: unused (16 bits), next-hop MTU (16 bits).
        (*icmp).rest = [0, config.mtu.saturating_sub(IPIP_OVERHEAD).to_be()];
    }
    // The ICMP message: 8 + 548 = 556 bytes, in two helper calls.
    let sum = csum::<512>(ctx, l3 + IPV4_HDR_LEN)? + csum::<{ ICMP_HDR_LEN + QUOTE_V4 - 512 }>(ctx, l3 + IPV4_HDR_LEN + 512)?;
    // SAFETY: as above.
    unsafe { (*icmp).check = fold_checksum(sum) };
    Some(())
}

#[inline(always)]
fn too_big_v6(ctx: &XdpContext, flow: &Flow, local_mac: MacWords, config: &DatapathConfig) -> Option<()> {
    const SHIFT: usize = IPV6_HDR_LEN + ICMP_HDR_LEN;
    const MESSAGE: usize = ICMP_HDR_LEN + QUOTE_V6;
    make_room(ctx, flow, QUOTE_V6, SHIFT)?;
    move_l2(ctx, flow.vlan, SHIFT, old_source_mac(ctx, SHIFT)?, local_mac)?;
    let l3 = flow.l3;
    let quoted: *const Ipv6Hdr = ptr_at(ctx, l3 + SHIFT)?;
    let ip: *mut Ipv6Hdr = ptr_at_mut(ctx, l3)?;
    let icmp: *mut IcmpHdr = ptr_at_mut(ctx, l3 + IPV6_HDR_LEN)?;
    let mtu = u32::from(config.mtu.saturating_sub(IP6IP6_OVERHEAD)).to_be();
    // SAFETY: bounds checked by ptr_at(_mut).
    let pseudo = unsafe {
        let (src, dst) = ((*quoted).daddr, (*quoted).saddr);
        (*ip).vtc_flow = (6u32 << 28).to_be();
        (*ip).payload_len = (MESSAGE as u16).to_be();
        (*ip).next_hdr = IPPROTO_ICMPV6;
        (*ip).hop_limit = OUTER_TTL;
        (*ip).saddr = src;
        (*ip).daddr = dst;
        (*icmp).kind = ICMPV6_PACKET_TOO_BIG;
        (*icmp).code = 0;
        (*icmp).check = 0;
        // RFC 4443 section 3.2: the MTU, 32 bits.
        (*icmp).rest = [mtu as u16, (mtu >> 16) as u16];
        // The pseudo-header (RFC 8200 section 8.1): addresses, the
        // upper-layer length and next header as 32-bit words.
        let mut sum = u64::from((MESSAGE as u32).to_be()) + u64::from(u32::from(IPPROTO_ICMPV6).to_be());
        for i in 0..4 {
            sum += u64::from(src[i]) + u64::from(dst[i]);
        }
        sum
    };
    // The ICMPv6 message: 8 + 1232 = 1240 bytes, in three helper calls.
    let at = l3 + IPV6_HDR_LEN;
    let sum = pseudo + csum::<512>(ctx, at)? + csum::<512>(ctx, at + 512)? + csum::<{ MESSAGE - 1024 }>(ctx, at + 1024)?;
    // SAFETY: as above.
    unsafe { (*icmp).check = fold_checksum(sum) };
    Some(())
}
