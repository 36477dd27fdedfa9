//! fulcrum's L4 datapath: an XDP program that forwards VIP traffic to a
//! backend chosen from a Maglev lookup table, in L2 DSR or IPIP mode.
//!
//! The pipeline reads top to bottom, one small function a stage:
//! `parse` -> `vip_filter_admits` -> `route`, once per address family
//! (the family's connection table, `ConnTable`): `established_flow` (a
//! connection-table entry of the VIP's current generation: no `VIPS` lookup) or `full_path`
//! (`lookup_vip` -> `addressed_to_us` -> `select_real`: the connection
//! table, else `pick_real` from the Maglev table) -> `forward`:
//! `rewrite_l2` (L2 DSR) or `encap::encapsulate` (IPIP / IP6IP6, per VIP)
//! -> `XDP_TX`. Two side exits answer from XDP: an echo request to a VIP
//! address gets its reply (`icmp::echo_reply`), and a packet too big to
//! encapsulate gets an ICMP error (`icmp::too_big`). Anything that is not a VIP packet, or cannot
//! be parsed, is `XDP_PASS` (the kernel stack decides); a VIP packet with
//! neither a usable connection-table entry nor a healthy backend is
//! `XDP_DROP`. Every frame bumps exactly one per-reason counter, and every
//! forwarded VIP packet one connection-table event (`ConnEvent`) in its
//! VIP's `VIP_STATS` value.
//!
//! Hostile and unusual frames are never forwarded; they are passed, so
//! that the kernel, which is the authority on all non-VIP traffic anyway,
//! counts them in its own statistics (`nstat`: `IpExtInTruncatedPkts`,
//! `IpInHdrErrors`, `Ip6InTruncatedPkts`, `Ip6InHdrErrors`) and drops
//! them, exactly as `ip_rcv`/`ipv6_rcv` do. Katran drops them in XDP
//! instead; that saves the kernel an skb per bad frame, but an attacker can
//! send well-formed non-VIP frames, which must be passed, at the same rate,
//! so dropping buys no protection and would hide them from the kernel's
//! counters. Our own counter says what happened either way.
#![no_std]
#![no_main]
// `atomic_cxchg` (the connection table's set locks): the BPF target's
// spec has no compare-and-swap, so `core::sync::atomic` offers none, but
// LLVM emits `BPF_CMPXCHG` (kernel 5.12+) for 64-bit operands.
#![allow(internal_features)]
#![feature(core_intrinsics)]

mod conn;
mod encap;
mod headers;
mod icmp;
mod maps;

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS, XDP_TX},
    helpers::bpf_jiffies64,
    macros::xdp,
    programs::XdpContext,
};
use fulcrum_common::{
    conn_age, hash, ports_word, vip_filter_bit, virtual_mac_bit, vip_real_ok_bit, ConnEntry, ConnEvent, RealDef,
    DatapathConfig, Reason, VipKey, VipMeta, IPPROTO_TCP, IPPROTO_UDP, V4_MAPPED_WORD,
    VIP_F_HASH_SRC_ONLY, VIP_F_IPIP, VIP_F_STANDBY,
};
use conn::{ConnTable, V4, V6};
use icmp::Echo;
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
    /// A TCP SYN without ACK: a client opening a connection, which always
    /// takes a fresh pick.
    syn: bool,
    /// Whether an 802.1Q tag sits between the Ethernet and IP headers.
    vlan: bool,
    /// Its VLAN id; 0 when untagged or priority-tagged (VID 0, IEEE
    /// 802.1Q: no VLAN), compared with `VipMeta::vlan`.
    vid: u16,
    /// Offset of the IP header in the frame: 14, or 18 with a tag.
    l3: usize,
    /// Length of the IP packet in bytes, its header included (IPv4 total
    /// length, or IPv6 payload length + 40): what encapsulation wraps.
    ip_len: usize,
    /// IPv4 "don't fragment" (IPv6 never fragments on the path).
    df: bool,
    /// An ICMP "fragmentation needed" / ICMPv6 "packet too big" about a
    /// packet the VIP sent: the fields above are those of the client's
    /// flow it quotes (client -> VIP, read from the quote reversed),
    /// except `l3`, `ip_len` and `df`, which are the ICMP packet's own,
    /// the packet forwarded whole to the flow's real.
    icmp_error: bool,
}

/// What the parser found: a TCP/UDP flow to look up, or an ICMP echo
/// request that may be for a VIP address.
enum Packet {
    Flow(Flow),
    Echo(Echo),
}

#[xdp]
// The macro wraps this body in the program's entry function; LLVM's
// inliner may leave it a BPF-to-BPF call (about 8.5 ns here) once the
// pipeline is long.
#[inline(always)]
pub fn fulcrum_xdp(ctx: XdpContext) -> u32 {
    let bytes = (ctx.data_end() - ctx.data()) as u64;
    let (action, reason) = balance(&ctx, bytes);
    count(&REASON_STATS, reason as u32, bytes);
    action
}

#[inline(always)]
fn balance(ctx: &XdpContext, bytes: u64) -> (u32, Reason) {
    let flow = match parse(ctx) {
        Ok(Packet::Flow(flow)) => flow,
        Ok(Packet::Echo(echo)) => return answer_echo(ctx, &echo),
        Err(reason) => return (XDP_PASS, reason),
    };
    if !vip_filter_admits(&flow.vip.addr) {
        return (XDP_PASS, Reason::PassNotVip);
    }
    // The family picks the connection table once, here: each family's
    // pipeline is its own inlined copy, so every map call names one map.
    // (Branching per lookup let LLVM merge the two families' calls into
    // one call with either map, which the verifier can then no longer
    // inline: a generic `bpf_map_lookup_elem`, about 14 ns more a packet.)
    let routed = if flow.is_v6 { route::<V6>(ctx, &flow, bytes) } else { route::<V4>(ctx, &flow, bytes) };
    let (vip, to_us, real_id, real) = match routed {
        Ok(found) => found,
        Err(done) => return done,
    };
    forward(ctx, &flow, &vip, &to_us, real_id, real, bytes)
}

/// The VIP, this node's view of the frame and the real: the established
/// path when the flow's entry allows it, else the full path.
#[inline(always)]
fn route<T: ConnTable>(ctx: &XdpContext, flow: &Flow, bytes: u64) -> Result<(VipMeta, ToUs, u32, &'static RealDef), (u32, Reason)> {
    match established_flow::<T>(ctx, flow, bytes) {
        Ok(found) => Ok(found),
        Err(looked) => full_path::<T>(ctx, flow, bytes, looked),
    }
}

/// A packet of an established flow whose connection-table entry names
/// its VIP's current generation (`ConnEntry::vip_gen` equal to
/// `VIP_FACTS[vip_id].gen`): everything `full_path` would find, with the
/// VIP's facts from `VIP_FACTS` instead of the `VIPS` hash lookup (about
/// 40 ns here). When any check fails, the full path decides,
/// counts and refreshes the entry, handed what was looked up so the
/// table is searched once: a SYN or an ICMP error, no entry, an older
/// VIP generation (the VIP changed or left), another VLAN, a standby
/// VIP, not our MAC, a stale real, an idle UDP flow.
#[inline(always)]
fn established_flow<T: ConnTable>(ctx: &XdpContext, flow: &Flow, bytes: u64) -> Result<(VipMeta, ToUs, u32, &'static RealDef), Looked> {
    if flow.syn || flow.icmp_error {
        return Err(None);
    }
    let Some(entry) = conn::lookup::<T>(flow) else {
        return Err(None);
    };
    let fallback = Some(entry);
    // SAFETY: a pointer into the connection table's array element, valid
    // for this run. `refresh_vip_gen` stores the generation after the id,
    // so a generation read first vouches for the id read after it.
    let (gen, vip_id) = unsafe { (core::ptr::read_volatile(&(*entry).vip_gen), core::ptr::read_volatile(&(*entry).vip_id)) };
    let vip_id = u32::from(vip_id);
    let Some(facts) = VIP_FACTS.get_ptr(vip_id) else {
        return Err(fallback);
    };
    // SAFETY: an array element, valid for this run. Volatile loads stay
    // in program order: the generation, the facts, the generation again
    // (user space sets it to 0 while it rewrites the facts; see
    // `VipFacts`), a sequence lock's read side on x86-64.
    let (now_gen, flags, udp_idle_timeout_jiffies, vlan, again) = unsafe {
        (
            core::ptr::read_volatile(&(*facts).gen),
            core::ptr::read_volatile(&(*facts).flags),
            core::ptr::read_volatile(&(*facts).udp_idle_timeout_jiffies),
            core::ptr::read_volatile(&(*facts).vlan),
            core::ptr::read_volatile(&(*facts).gen),
        )
    };
    if gen == 0 || now_gen != gen || again != gen || vlan != u32::from(flow.vid) || flags & VIP_F_STANDBY != 0 {
        return Err(fallback);
    }
    let Some(to_us) = addressed_to_us(ctx, flow.is_v6) else {
        return Err(fallback);
    };
    let vip = VipMeta { vip_id, flags, table_size: 0, table_slot: 0, udp_idle_timeout_jiffies, vlan, gen, _pad: 0 };
    let Ok((real_id, real)) = established::<T>(&vip, flow, entry) else {
        return Err(fallback);
    };
    count_vip(vip_id, Some((ConnEvent::Hit, false)), bytes);
    Ok((vip, to_us, real_id, real))
}

/// What `established_flow` found in the connection table, for the full
/// path: the flow's entry (a pointer into the connection table's array
/// element, valid for this run), or `None`: no entry, or nothing looked
/// up (a SYN, which always takes a fresh pick, or an ICMP error, which
/// `flow_owner` looks up).
type Looked = Option<*mut ConnEntry>;

/// The VIP, this node's view of the frame and the real, through the
/// `VIPS` lookup and the connection table's rules (`select_real`); or
/// the action for a packet that is not forwarded.
#[inline(always)]
fn full_path<T: ConnTable>(ctx: &XdpContext, flow: &Flow, bytes: u64, looked: Looked) -> Result<(VipMeta, ToUs, u32, &'static RealDef), (u32, Reason)> {
    let Some(vip) = lookup_vip(&flow.vip) else {
        return Err((XDP_PASS, Reason::PassNotVip));
    };
    if u32::from(flow.vid) != vip.vlan {
        return Err((XDP_PASS, Reason::PassVlanMismatch));
    }
    if vip.flags & VIP_F_STANDBY != 0 {
        return Err((XDP_PASS, Reason::PassNotMaster));
    }
    let Some(to_us) = addressed_to_us(ctx, flow.is_v6) else {
        return Err((XDP_PASS, Reason::PassNotForUs));
    };
    let selected = if flow.icmp_error { flow_owner::<T>(&vip, flow).map(|found| (found, None)) } else { select_real::<T>(&vip, flow, looked) };
    // One update of the VIP's counters per packet, whatever was selected.
    let Some(((real_id, real), table)) = selected else {
        count_vip(vip.vip_id, None, bytes);
        // No log line here: a per-packet record would let any sender flood
        // the log ring; the DropNoBackend counter says it instead.
        return Err((XDP_DROP, Reason::DropNoBackend));
    };
    count_vip(vip.vip_id, table, bytes);
    Ok((vip, to_us, real_id, real))
}

/// Sends the packet to `real`: L2 DSR or IPIP/IP6IP6 per the VIP, or the
/// ICMP error when it would not fit the MTU once encapsulated.
#[inline(always)]
fn forward(ctx: &XdpContext, flow: &Flow, vip: &VipMeta, to_us: &ToUs, real_id: u32, real: &RealDef, bytes: u64) -> (u32, Reason) {
    let (own_mac, config) = (to_us.own, to_us.config);
    if vip.flags & VIP_F_IPIP != 0 {
        if encap::too_big(&flow, config) {
            // Never an ICMP error about an ICMP error (RFC 1122 section
            // 3.2.2); only with an MTU below 576 + 20 or 1280 + 40 bytes.
            if flow.icmp_error {
                return (XDP_DROP, Reason::DropTooBig);
            }
            return icmp::too_big(ctx, flow, to_us.local, config);
        }
        if encap::encapsulate(ctx, flow, real, own_mac, config).is_none() {
            return (XDP_DROP, Reason::DropNoHeadroom);
        }
    } else if rewrite_l2(ctx, real, own_mac).is_none() {
        return (XDP_DROP, Reason::DropNoBackend);
    }
    count(&REAL_STATS, real_id, bytes);
    (XDP_TX, if flow.icmp_error { Reason::IcmpTooBigForwarded } else { Reason::Tx })
}

/// An echo request: answered if it is for a VIP address and addressed
/// to our MAC, else left to the kernel like any other ICMP.
#[inline(always)]
fn answer_echo(ctx: &XdpContext, echo: &Echo) -> (u32, Reason) {
    let Some(vlan) = vip_address_vlan(&echo.dst) else {
        return (XDP_PASS, Reason::PassNotVip);
    };
    if u32::from(echo.vid) != vlan {
        return (XDP_PASS, Reason::PassVlanMismatch);
    }
    let Some(to_us) = addressed_to_us(ctx, echo.is_v6) else {
        return (XDP_PASS, Reason::PassNotForUs);
    };
    icmp::echo_reply(ctx, echo, to_us.local)
}

// ---- parse -----------------------------------------------------------------

#[inline(always)]
fn parse(ctx: &XdpContext) -> Result<Packet, Reason> {
    let eth: *const EthHdr = ptr_at(ctx, 0).ok_or(Reason::PassTruncated)?;
    let mut offset = core::mem::size_of::<EthHdr>();
    // SAFETY: ptr_at checked the header lies inside the frame.
    let mut ether_type = unsafe { (*eth).ether_type };
    if ether_type == ETH_P_8021AD.to_be() {
        return Err(Reason::PassQinQ);
    }
    let vlan = ether_type == ETH_P_8021Q.to_be();
    let mut vid = 0;
    if vlan {
        let tag: *const VlanHdr = ptr_at(ctx, offset).ok_or(Reason::PassTruncated)?;
        // SAFETY: bounds checked by ptr_at.
        let tci;
        (tci, ether_type) = unsafe { ((*tag).tci, (*tag).ether_type) };
        if ether_type == ETH_P_8021Q.to_be() || ether_type == ETH_P_8021AD.to_be() {
            return Err(Reason::PassQinQ);
        }
        vid = u16::from_be(tci) & VLAN_VID_MASK;
        offset += core::mem::size_of::<VlanHdr>();
    }
    match u16::from_be(ether_type) {
        ETH_P_IP => parse_ipv4(ctx, offset, vlan, vid),
        ETH_P_IPV6 => parse_ipv6(ctx, offset, vlan, vid),
        _ => Err(Reason::PassNotIp),
    }
}

/// IPv4 whose header agrees with itself and with the frame (RFC 1812
/// section 5.2.2, the checks of the kernel's `ip_rcv`): version 4, header
/// length >= 20, total length within the frame and >= the header length.
/// Options are skipped, not interpreted, since L2 DSR leaves the IP
/// header untouched; the total length bounds them, so options running
/// past the frame end fail the length checks. Ethernet padding after the
/// total length is allowed. The header checksum is not verified: L2 DSR
/// is not an IP hop, and the real verifies it.
#[inline(always)]
fn parse_ipv4(ctx: &XdpContext, offset: usize, vlan: bool, vid: u16) -> Result<Packet, Reason> {
    let ip: *const Ipv4Hdr = ptr_at(ctx, offset).ok_or(Reason::PassTruncated)?;
    // SAFETY: bounds checked by ptr_at.
    let (version_ihl, tot_len, frag_off, proto, saddr, daddr) = unsafe {
        ((*ip).version_ihl, (*ip).tot_len, (*ip).frag_off, (*ip).protocol, (*ip).saddr, (*ip).daddr)
    };
    let header_len = (version_ihl & 0x0f) as usize * 4;
    if version_ihl >> 4 != 4 || header_len < IPV4_HDR_LEN {
        return Err(Reason::PassMalformed);
    }
    let end = offset + u16::from_be(tot_len) as usize;
    if end > frame_len(ctx) {
        return Err(Reason::PassTruncated);
    }
    if end < offset + header_len {
        return Err(Reason::PassMalformed);
    }
    if u16::from_be(frag_off) & IP_MF_OFFSET_MASK != 0 {
        return Err(Reason::PassFragment);
    }
    let dst = [0, 0, V4_MAPPED_WORD, daddr];
    if proto == IPPROTO_ICMP {
        let icmp: *const IcmpHdr = ptr_within(ctx, offset + header_len, end).ok_or(Reason::PassNotL4)?;
        // SAFETY: bounds checked by ptr_within.
        let (kind, code) = unsafe { ((*icmp).kind, (*icmp).code) };
        if kind == ICMP_DEST_UNREACH && code == ICMP_FRAG_NEEDED {
            let quote = Quote { l3: offset, start: offset + header_len + ICMP_HDR_LEN, end, vlan, vid };
            return quoted_v4(ctx, &quote, daddr, u16::from_be(frag_off) & IP_DF != 0);
        }
        // Only a plain header: a reply to options (record route, ...)
        // would have to process them, which the kernel does.
        if header_len != IPV4_HDR_LEN || kind != ICMP_ECHO_REQUEST || code != 0 {
            return Err(Reason::PassNotL4);
        }
        return Ok(Packet::Echo(Echo { dst, l3: offset, is_v6: false, vid }));
    }
    let (ports, dport, syn) = parse_ports(ctx, offset + header_len, end, proto)?;
    Ok(Packet::Flow(Flow {
        vip: VipKey { addr: dst, port: dport, proto, _pad: 0 },
        saddr: [0, 0, V4_MAPPED_WORD, saddr],
        ports,
        is_v6: false,
        syn,
        vlan,
        vid,
        l3: offset,
        ip_len: end - offset,
        df: u16::from_be(frag_off) & IP_DF != 0,
        icmp_error: false,
    }))
}

/// Where an ICMP error's quoted packet lies: from `start` to `end` (the
/// ICMP packet's end), in the IP packet at `l3` of a frame with the
/// given 802.1Q tag.
struct Quote {
    l3: usize,
    start: usize,
    end: usize,
    vlan: bool,
    vid: u16,
}

/// The client flow an ICMP "fragmentation needed" to `outer_dst` is
/// about, from its quote (RFC 792: the IP header and at least the first
/// 8 bytes of the datagram): an IPv4 TCP or UDP packet from the VIP
/// (`outer_dst`, where the error was sent) to the client, read reversed.
/// Anything else is `PassNotL4`: the kernel's ICMP error to handle.
#[inline(always)]
fn quoted_v4(ctx: &XdpContext, quote: &Quote, outer_dst: u32, df: bool) -> Result<Packet, Reason> {
    let inner: *const Ipv4Hdr = ptr_within(ctx, quote.start, quote.end).ok_or(Reason::PassNotL4)?;
    // SAFETY: bounds checked by ptr_within.
    let (version_ihl, proto, saddr, daddr) =
        unsafe { ((*inner).version_ihl, (*inner).protocol, (*inner).saddr, (*inner).daddr) };
    let header_len = (version_ihl & 0x0f) as usize * 4;
    if version_ihl >> 4 != 4 || header_len < IPV4_HDR_LEN || saddr != outer_dst || !matches!(proto, IPPROTO_TCP | IPPROTO_UDP) {
        return Err(Reason::PassNotL4);
    }
    let ports: *const Ports = ptr_within(ctx, quote.start + header_len, quote.end).ok_or(Reason::PassNotL4)?;
    // SAFETY: bounds checked by ptr_within.
    let (vip_port, client_port) = unsafe { ((*ports).src, (*ports).dst) };
    Ok(Packet::Flow(Flow {
        vip: VipKey { addr: [0, 0, V4_MAPPED_WORD, saddr], port: vip_port, proto, _pad: 0 },
        saddr: [0, 0, V4_MAPPED_WORD, daddr],
        ports: ports_word(client_port, vip_port),
        is_v6: false,
        syn: false,
        vlan: quote.vlan,
        vid: quote.vid,
        l3: quote.l3,
        ip_len: quote.end - quote.l3,
        df,
        icmp_error: true,
    }))
}

/// [`quoted_v4`] for an ICMPv6 "packet too big" (RFC 4443 section 3.2),
/// whose quote is an IPv6 packet with TCP or UDP right after its header.
#[inline(always)]
fn quoted_v6(ctx: &XdpContext, quote: &Quote, outer_dst: &[u32; 4]) -> Result<Packet, Reason> {
    let inner: *const Ipv6Hdr = ptr_within(ctx, quote.start, quote.end).ok_or(Reason::PassNotL4)?;
    // SAFETY: bounds checked by ptr_within.
    let (next_hdr, saddr, daddr) = unsafe { ((*inner).next_hdr, (*inner).saddr, (*inner).daddr) };
    let from_vip = (saddr[0] ^ outer_dst[0]) | (saddr[1] ^ outer_dst[1]) | (saddr[2] ^ outer_dst[2]) | (saddr[3] ^ outer_dst[3]) == 0;
    if !from_vip || !matches!(next_hdr, IPPROTO_TCP | IPPROTO_UDP) {
        return Err(Reason::PassNotL4);
    }
    let ports: *const Ports = ptr_within(ctx, quote.start + IPV6_HDR_LEN, quote.end).ok_or(Reason::PassNotL4)?;
    // SAFETY: bounds checked by ptr_within.
    let (vip_port, client_port) = unsafe { ((*ports).src, (*ports).dst) };
    Ok(Packet::Flow(Flow {
        vip: VipKey { addr: saddr, port: vip_port, proto: next_hdr, _pad: 0 },
        saddr: daddr,
        ports: ports_word(client_port, vip_port),
        is_v6: true,
        syn: false,
        vlan: quote.vlan,
        vid: quote.vid,
        l3: quote.l3,
        ip_len: quote.end - quote.l3,
        df: false,
        icmp_error: true,
    }))
}

/// IPv6 whose version is 6 and whose payload lies within the frame (RFC
/// 8200 section 3, the checks of the kernel's `ipv6_rcv`), to a native
/// IPv6 address: an IPv4-mapped destination (`::ffff:a.b.c.d`) would
/// otherwise match the IPv4 VIP stored under the same key. TCP or UDP
/// may follow extension headers (see `skip_extension_headers`).
#[inline(always)]
fn parse_ipv6(ctx: &XdpContext, offset: usize, vlan: bool, vid: u16) -> Result<Packet, Reason> {
    let ip: *const Ipv6Hdr = ptr_at(ctx, offset).ok_or(Reason::PassTruncated)?;
    // SAFETY: bounds checked by ptr_at.
    let (vtc_flow, payload_len, next_hdr, saddr, daddr) =
        unsafe { ((*ip).vtc_flow, (*ip).payload_len, (*ip).next_hdr, (*ip).saddr, (*ip).daddr) };
    if u32::from_be(vtc_flow) >> 28 != 6 {
        return Err(Reason::PassMalformed);
    }
    let start = offset + IPV6_HDR_LEN;
    let end = start + u16::from_be(payload_len) as usize;
    if end > frame_len(ctx) {
        return Err(Reason::PassTruncated);
    }
    if daddr[0] == 0 && daddr[1] == 0 && daddr[2] == V4_MAPPED_WORD {
        return Err(Reason::PassV4Mapped);
    }
    if next_hdr == IPPROTO_ICMPV6 {
        // ICMPv6 behind extension headers is left to the kernel.
        let icmp: *const IcmpHdr = ptr_within(ctx, start, end).ok_or(Reason::PassNotL4)?;
        // SAFETY: bounds checked by ptr_within.
        let (kind, code) = unsafe { ((*icmp).kind, (*icmp).code) };
        if kind == ICMPV6_PACKET_TOO_BIG && code == 0 {
            let quote = Quote { l3: offset, start: start + ICMP_HDR_LEN, end, vlan, vid };
            return quoted_v6(ctx, &quote, &daddr);
        }
        if kind != ICMPV6_ECHO_REQUEST || code != 0 {
            return Err(Reason::PassNotL4);
        }
        return Ok(Packet::Echo(Echo { dst: daddr, l3: offset, is_v6: true, vid }));
    }
    let (proto, l4_offset) = skip_extension_headers(ctx, next_hdr, start, end)?;
    let (ports, dport, syn) = parse_ports(ctx, l4_offset, end, proto)?;
    Ok(Packet::Flow(Flow {
        vip: VipKey { addr: daddr, port: dport, proto, _pad: 0 },
        saddr,
        ports,
        is_v6: true,
        syn,
        vlan,
        vid,
        l3: offset,
        ip_len: end - offset,
        df: false,
        icmp_error: false,
    }))
}

/// Walks up to `MAX_IPV6_EXT_HEADERS` Hop-by-Hop, Routing and Destination
/// Options headers, each within the payload that ends at `end`; returns
/// the next header's protocol and offset. Their options are not
/// interpreted: the real receives the packet unchanged. A fragment header
/// is `PassFragment`, unless it is an atomic fragment (offset 0, M clear:
/// the whole packet, which RFC 6946 says to process in isolation), which
/// is walked past like the others; a Routing header with segments left
/// means the VIP is an intermediate hop, not the destination, so
/// `PassNotL4`; so is a chain longer than the bound (the caller finds no
/// TCP or UDP after it).
#[inline(always)]
fn skip_extension_headers(
    ctx: &XdpContext,
    mut next_hdr: u8,
    mut offset: usize,
    end: usize,
) -> Result<(u8, usize), Reason> {
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        if !matches!(next_hdr, IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS) {
            break;
        }
        let ext: *const Ipv6ExtHdr = ptr_within(ctx, offset, end).ok_or(Reason::PassTruncated)?;
        // SAFETY: bounds checked by ptr_within.
        let (next, len, segments_left) = unsafe { ((*ext).next_hdr, (*ext).len, (*ext).segments_left) };
        if next_hdr == IPPROTO_ROUTING && segments_left != 0 {
            return Err(Reason::PassNotL4);
        }
        next_hdr = next;
        offset += (len as usize + 1) * 8;
    }
    if next_hdr == IPPROTO_FRAGMENT {
        let frag: *const Ipv6FragHdr = ptr_within(ctx, offset, end).ok_or(Reason::PassTruncated)?;
        // SAFETY: bounds checked by ptr_within.
        let (next, offset_m) = unsafe { ((*frag).next_hdr, (*frag).offset_m) };
        if u16::from_be(offset_m) & IPV6_FRAG_OFFSET_M != 0 {
            return Err(Reason::PassFragment);
        }
        return Ok((next, offset + core::mem::size_of::<Ipv6FragHdr>()));
    }
    Ok((next_hdr, offset))
}

/// The raw ports word, the raw destination port and whether the packet is
/// a TCP SYN without ACK, from a TCP or UDP header at `offset`, which must
/// be whole (20 or 8 bytes) within the IP packet that ends at `end`.
#[inline(always)]
fn parse_ports(ctx: &XdpContext, offset: usize, end: usize, proto: u8) -> Result<(u32, u16, bool), Reason> {
    let (src, dst, syn, header_len) = match proto {
        IPPROTO_TCP => {
            // The frame check first, for the verifier (see `ptr_within`).
            let tcp: *const TcpStart = ptr_at(ctx, offset).ok_or(Reason::PassTruncated)?;
            // SAFETY: bounds checked by ptr_at.
            let (src, dst, flags) = unsafe { ((*tcp).src, (*tcp).dst, (*tcp).flags) };
            (src, dst, flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_SYN, TCP_HDR_LEN)
        }
        IPPROTO_UDP => {
            let ports: *const Ports = ptr_at(ctx, offset).ok_or(Reason::PassTruncated)?;
            // SAFETY: bounds checked by ptr_at.
            let (src, dst) = unsafe { ((*ports).src, (*ports).dst) };
            (src, dst, false, UDP_HDR_LEN)
        }
        _ => return Err(Reason::PassNotL4),
    };
    if offset + header_len > end {
        return Err(Reason::PassTruncated);
    }
    Ok((ports_word(src, dst), dst, syn))
}

// ---- lookup ----------------------------------------------------------------

/// Whether `addr` may be a VIP's. Most traffic an edge node sees is for
/// other addresses: the address filter turns most of it away with one
/// array load, and only the rest pays for the hash lookups.
#[inline(always)]
fn vip_filter_admits(addr: &[u32; 4]) -> bool {
    let bit = vip_filter_bit(addr);
    match VIP_FILTER.get(bit / 64) {
        Some(word) => *word & (1u64 << (bit % 64)) != 0,
        None => false,
    }
}

/// The VIP `key` names, if any (after `vip_filter_admits`).
#[inline(always)]
fn lookup_vip(key: &VipKey) -> Option<VipMeta> {
    // SAFETY: the value is copied out at once. VIPS is BPF_F_NO_PREALLOC:
    // user space replaces an entry by linking a new element, and the old
    // one is freed only after this RCU read section ends, so the copy is
    // one whole value, old or new.
    unsafe { VIPS.get(key).copied() }
}

/// The VLAN id (0: untagged) of the VIPs at `addr`, if it is the address
/// of a VIP this node forwards: for ICMP, which has no port to complete
/// a `VipKey`. The same filter first.
#[inline(always)]
fn vip_address_vlan(addr: &[u32; 4]) -> Option<u32> {
    if !vip_filter_admits(addr) {
        return None;
    }
    // SAFETY: the value is copied out at once (see `lookup_vip`).
    unsafe { VIP_ADDRESSES.get(addr).copied() }
}

/// A frame addressed to this node, and how to answer it.
struct ToUs {
    /// The interface's own MAC: the source of forwarded frames (L2 DSR,
    /// IPIP), also when the frame came in on a VRRP virtual MAC. A real's
    /// switch port then learns the balancer's own MAC, never the virtual
    /// one, which must stay with the port of whichever node is MASTER.
    own: MacWords,
    /// The MAC the frame was sent to (own, or a virtual router MAC): the
    /// source of the answers the balancer itself sends as the VIP (echo
    /// replies, ICMP too-big), so the client sees the VIP answer from the
    /// MAC it resolved the VIP to.
    local: MacWords,
    config: &'static DatapathConfig,
}

/// The frame's destination MAC, if it is ours: the interface's own, or
/// the RFC 9568 virtual router MAC of a VRRP instance with `virtual_mac`
/// (XDP on the parent sees the macvlan's frames first), of the frame's
/// family. Broadcast, multicast and other stations' frames (a promiscuous
/// port, a bridge flooding an unknown destination) may carry a VIP
/// address too, but balancing them would turn one frame seen by many
/// hosts into unicast to a real. So would an IPv4 frame to an IPv6
/// virtual MAC (or the reverse): no node announces a VIP that way, so
/// such a frame is not ours.
#[inline(always)]
fn addressed_to_us(ctx: &XdpContext, is_v6: bool) -> Option<ToUs> {
    let config = DATAPATH_CONFIG.get(0)?;
    let eth: *const EthHdr = ptr_at(ctx, 0)?;
    // SAFETY: map values are 8-byte aligned; the header is inside the
    // frame (ptr_at) and the frame's start is 2-byte aligned.
    let (own, dst) = unsafe { (MacWords::load(&config.self_mac), MacWords::load(&(*eth).dst)) };
    if own.same(dst) {
        return Some(ToUs { own, local: own, config });
    }
    let vrid = dst.vrrp_vrid(is_v6)?;
    let vrids = if is_v6 { &config.virtual_mac_v6 } else { &config.virtual_mac_v4 };
    let (word, bit) = virtual_mac_bit(vrid);
    (vrids[word] & (1u64 << bit) != 0).then_some(ToUs { own, local: dst, config })
}

// ---- flow lookup / pick -----------------------------------------------------

/// The real for this packet and its `REALS` entry: the connection table's
/// when it holds a usable entry, else a Maglev pick, written as the
/// flow's entry. A TCP SYN always takes a fresh pick: a client opening a
/// connection owes nothing to an older flow on the same 5-tuple. Any other
/// packet without an entry (evicted, or a flow another node started
/// before this one took over the VIP) also takes the Maglev pick, which
/// is where that node sent it too whenever both tables agree. `None` when
/// a pick is needed and the VIP has no healthy backend. `looked` is the
/// entry `established_flow` already found, so the table is searched once.
#[inline(always)]
fn select_real<T: ConnTable>(vip: &VipMeta, flow: &Flow, looked: Looked) -> Option<((u32, &'static RealDef), TableEvent)> {
    let event = if flow.syn {
        ConnEvent::Syn
    } else {
        match looked {
            None => ConnEvent::Miss,
            Some(entry) => match established::<T>(vip, flow, entry) {
                Ok(found) => {
                    // SAFETY: as in `entry_real`. Only a stale generation
                    // needs the set's lock.
                    if unsafe { (*entry).vip_gen } != vip.gen {
                        conn::refresh_vip_gen::<T>(flow, vip);
                    }
                    return Some((found, Some((ConnEvent::Hit, false))));
                }
                Err(event) => event,
            },
        }
    };
    let real_id = pick_real(vip, flow)?;
    let real = REALS.get(real_id)?;
    // `real_id` < MAX_REALS (`REALS` has it) and `vip_id` < MAX_VIPS fit
    // the entry's u16s; `insert` sets `seen`.
    let entry = ConnEntry { real_id: real_id as u16, vip_id: vip.vip_id as u16, real_gen: real.generation, vip_gen: vip.gen, seen: 0 };
    let written = match conn::insert::<T>(flow, &entry) {
        Ok(evicted) => (event, evicted),
        Err(()) => (ConnEvent::WriteFailed, false),
    };
    Some(((real_id, real), Some(written)))
}

/// What the connection table did for a packet, for `count_vip`: the event
/// and whether a write evicted another flow; `None` when the table was
/// not consulted (an ICMP error's owner lookup).
type TableEvent = Option<(ConnEvent, bool)>;

/// The entry's real, if established flows of this VIP may still use it
/// (`entry_real`) and a UDP flow has not been idle past the VIP's
/// timeout (its entry's `seen`, the tick of its previous packet, counts),
/// and if the entry's way still holds the flow once all that was read
/// (`conn::still_holds`; else another CPU replaced it meanwhile, a
/// `Miss`); then marks the hit (`conn::touch`: seen now, referenced, a
/// store at most once a tick), so UDP expiry is exact to the tick.
#[inline(always)]
fn established<T: ConnTable>(vip: &VipMeta, flow: &Flow, entry: *mut ConnEntry) -> Result<(u32, &'static RealDef), ConnEvent> {
    let (real_id, real) = entry_real(vip, entry).ok_or(ConnEvent::Stale)?;
    let now = now_jiffies();
    // SAFETY: as in `entry_real`.
    let seen = unsafe { core::ptr::read_volatile(&(*entry).seen) };
    if flow.vip.proto == IPPROTO_UDP && conn_age(now as u32, seen) > vip.udp_idle_timeout_jiffies {
        return Err(ConnEvent::Expired);
    }
    // SAFETY: `entry` came from `conn::lookup::<T>` in this run.
    if !unsafe { conn::still_holds::<T>(flow, entry) } {
        return Err(ConnEvent::Miss);
    }
    // SAFETY: as above; an aligned 4-byte store into the element.
    unsafe { conn::touch(entry, now) };
    Ok((real_id, real))
}

/// The entry's real, if established flows of this VIP may still use it:
/// the id still belongs to the address the entry was written for (same
/// generation) and the real still serves the VIP (its `VIP_REAL_OK` bit).
#[inline(always)]
fn entry_real(vip: &VipMeta, entry: *mut ConnEntry) -> Option<(u32, &'static RealDef)> {
    // SAFETY: a pointer into the connection table's array element, valid
    // for this run (array elements are never freed). A concurrent writer
    // either writes the same flow's entry (another CPU's packet of it),
    // or replaces a flow being evicted at this moment (see the `conn`
    // module).
    // Volatile: read before `conn::still_holds` re-reads the key (LLVM
    // keeps volatile accesses in program order, and x86-64 loads).
    let (real_id, real_gen) =
        unsafe { (u32::from(core::ptr::read_volatile(&(*entry).real_id)), core::ptr::read_volatile(&(*entry).real_gen)) };
    let real = REALS.get(real_id)?;
    let (word, bit) = vip_real_ok_bit(vip.vip_id, real_id);
    let ok = VIP_REAL_OK.get(word)?;
    (real.generation == real_gen && *ok & (1u64 << bit) != 0).then_some((real_id, real))
}

/// The real an ICMP error about `flow` goes to: the one its usable
/// connection-table entry names, else the Maglev pick the flow would get
/// (Katran looks up the same reversed 5-tuple). Nothing is written or
/// refreshed: an error says nothing about the flow's own activity.
#[inline(always)]
fn flow_owner<T: ConnTable>(vip: &VipMeta, flow: &Flow) -> Option<(u32, &'static RealDef)> {
    let owner = conn::lookup::<T>(flow).and_then(|entry| {
        let found = entry_real(vip, entry)?;
        // SAFETY: `entry` came from `conn::lookup::<T>` in this run.
        unsafe { conn::still_holds::<T>(flow, entry) }.then_some(found)
    });
    if let Some(found) = owner {
        return Some(found);
    }
    let real_id = pick_real(vip, flow)?;
    Some((real_id, REALS.get(real_id)?))
}

/// The kernel's `jiffies_64`: timer ticks (1/HZ s each; user space
/// learns the tick from `clock_getres(CLOCK_MONOTONIC_COARSE)`,
/// `fulcrum_l4::tick_ns`). The verifier inlines `bpf_jiffies64` into one
/// load of `jiffies_64` (kernel/bpf/verifier.c, `do_misc_fixups`), where
/// `bpf_ktime_get_coarse_ns` stays a helper call into the timekeeper:
/// 12-16 ns less per established UDP packet here (`bench/RESULTS.md`,
/// xdp2 and xdp3). A tick (1 to 10 ms) of error is nothing against UDP
/// idle timeouts of a second or more.
#[inline(always)]
pub(crate) fn now_jiffies() -> u64 {
    // SAFETY: a helper without arguments or preconditions.
    unsafe { bpf_jiffies64() }
}

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
fn rewrite_l2(ctx: &XdpContext, real: &RealDef, own_mac: MacWords) -> Option<()> {
    let eth: *mut EthHdr = ptr_at_mut(ctx, 0)?;
    // SAFETY: bounds checked by ptr_at_mut; as in `addressed_to_us`.
    unsafe {
        MacWords::load(&real.mac).store(&mut (*eth).dst);
        own_mac.store(&mut (*eth).src);
    }
    Some(())
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
