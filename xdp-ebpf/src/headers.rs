//! Wire formats and bounds-checked access to them.
//!
//! Only the fields the datapath reads are named; the structs are exact
//! header layouts (IEEE 802.3/802.1Q, RFC 791, RFC 8200, RFC 9293, RFC 768).
//! Multi-byte fields stay in network order.

use aya_ebpf::programs::XdpContext;

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
/// IEEE 802.1ad service tag (the outer tag of QinQ).
pub const ETH_P_8021AD: u16 = 0x88a8;
/// The VLAN id bits of an 802.1Q tag's TCI (host order).
pub const VLAN_VID_MASK: u16 = 0x0fff;
/// IPv6 extension headers (RFC 8200 section 4) the parser walks past:
/// Hop-by-Hop Options, Routing, Destination Options. All three share the
/// generic layout of [`Ipv6ExtHdr`].
pub const IPPROTO_HOPOPTS: u8 = 0;
pub const IPPROTO_ROUTING: u8 = 43;
pub const IPPROTO_DSTOPTS: u8 = 60;
/// IPv6 Fragment extension header (RFC 8200 section 4.5).
pub const IPPROTO_FRAGMENT: u8 = 44;
/// Most IPv6 extension headers walked before giving up (`PassNotL4`). A
/// real packet has at most hop-by-hop, destination options, routing and
/// destination options again (RFC 8200 section 4.1); a fixed bound keeps
/// the loop small for the verifier.
pub const MAX_IPV6_EXT_HEADERS: usize = 4;
/// IPv4 "more fragments" flag and fragment offset bits (RFC 791 section 3.1).
pub const IP_MF_OFFSET_MASK: u16 = 0x3fff;

#[repr(C)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub ether_type: u16,
}

/// A MAC address as three raw 16-bit words, loaded and stored one word
/// at a time. A plain 6-byte copy (`dst = mac`) compiles to a call of a
/// byte-wise `memmove` subprogram (about 8.5 ns a BPF-to-BPF call on the
/// AMD machines); three halfword moves are six instructions. Both a frame's
/// Ethernet addresses and map values are at least 2-byte aligned.
#[derive(Clone, Copy)]
pub struct MacWords([u16; 3]);

impl MacWords {
    /// The 6 bytes at `mac`.
    ///
    /// # Safety
    /// `mac` must be valid for reads and 2-byte aligned.
    #[inline(always)]
    pub unsafe fn load(mac: *const [u8; 6]) -> Self {
        let w = mac as *const u16;
        MacWords([*w, *w.add(1), *w.add(2)])
    }

    /// Writes the address to `mac`.
    ///
    /// # Safety
    /// `mac` must be valid for writes and 2-byte aligned.
    #[inline(always)]
    pub unsafe fn store(self, mac: *mut [u8; 6]) {
        let w = mac as *mut u16;
        *w = self.0[0];
        *w.add(1) = self.0[1];
        *w.add(2) = self.0[2];
    }

    /// Equality without a `memcmp`: three compares folded into one.
    #[inline(always)]
    pub fn same(self, other: MacWords) -> bool {
        (self.0[0] ^ other.0[0]) | (self.0[1] ^ other.0[1]) | (self.0[2] ^ other.0[2]) == 0
    }

    /// The VRID if this is a VRRP virtual router MAC of the given family
    /// (RFC 9568 section 7.3: `00:00:5e:00:01:VRID` IPv4,
    /// `00:00:5e:00:02:VRID` IPv6).
    #[inline(always)]
    pub fn vrrp_vrid(self, ipv6: bool) -> Option<u8> {
        let [family, vrid] = self.0[2].to_ne_bytes();
        let prefix = self.0[0] == 0 && self.0[1] == u16::from_ne_bytes([0x5e, 0]);
        (prefix && family == if ipv6 { 2 } else { 1 }).then_some(vrid)
    }
}

/// An 802.1Q tag as it follows the outer EtherType.
#[repr(C)]
pub struct VlanHdr {
    pub tci: u16,
    pub ether_type: u16,
}

#[repr(C)]
pub struct Ipv4Hdr {
    pub version_ihl: u8,
    pub tos: u8,
    pub tot_len: u16,
    pub id: u16,
    pub frag_off: u16,
    pub ttl: u8,
    pub protocol: u8,
    pub check: u16,
    pub saddr: u32,
    pub daddr: u32,
}

#[repr(C)]
pub struct Ipv6Hdr {
    pub vtc_flow: u32,
    pub payload_len: u16,
    pub next_hdr: u8,
    pub hop_limit: u8,
    pub saddr: [u32; 4],
    pub daddr: [u32; 4],
}

/// The start of a Hop-by-Hop, Routing or Destination Options header
/// (RFC 8200 sections 4.3-4.6); each is `(len + 1) * 8` bytes long.
/// `segments_left` is only meaningful in a Routing header.
#[repr(C)]
pub struct Ipv6ExtHdr {
    pub next_hdr: u8,
    pub len: u8,
    pub routing_type: u8,
    pub segments_left: u8,
    /// The rest of the shortest (8-byte) extension header.
    pub rest: [u8; 4],
}

/// The IPv6 Fragment header (RFC 8200 section 4.5).
#[repr(C)]
pub struct Ipv6FragHdr {
    pub next_hdr: u8,
    pub reserved: u8,
    /// Fragment offset (13 bits, 8-byte units), 2 reserved bits, M flag.
    pub offset_m: u16,
    pub id: u32,
}

/// The fragment offset and M ("more fragments") bits of
/// [`Ipv6FragHdr::offset_m`], host order: both zero in an atomic fragment
/// (RFC 8200 section 4.5, RFC 6946), a whole packet.
pub const IPV6_FRAG_OFFSET_M: u16 = 0xfff9;

pub const IPV4_HDR_LEN: usize = 20;
pub const IPV6_HDR_LEN: usize = 40;

/// The first four bytes of TCP and UDP headers: source and destination port.
#[repr(C)]
pub struct Ports {
    pub src: u16,
    pub dst: u16,
}

/// The first 14 bytes of a TCP header (RFC 9293 section 3.1): ports,
/// sequence and acknowledgment numbers (not read), data offset and flags.
/// Byte arrays keep it 2-byte aligned, as packet offsets are.
#[repr(C)]
pub struct TcpStart {
    pub src: u16,
    pub dst: u16,
    pub seq_ack: [u8; 8],
    pub data_offset: u8,
    pub flags: u8,
}

/// TCP flag bits in [`TcpStart::flags`] (RFC 9293 section 3.1).
pub const TCP_FLAG_SYN: u8 = 0x02;
pub const TCP_FLAG_ACK: u8 = 0x10;

pub const TCP_HDR_LEN: usize = 20;
pub const UDP_HDR_LEN: usize = 8;

/// A `T` at `offset` bytes into the frame, or `None` if the frame is shorter.
/// The explicit comparison against `data_end` is what the verifier checks.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*const T> {
    let start = ctx.data();
    if start + offset + core::mem::size_of::<T>() > ctx.data_end() {
        return None;
    }
    Some((start + offset) as *const T)
}

/// A `T` at `offset` that lies inside both the frame and the IP packet
/// ending at `end` (an offset from the frame start, already checked to be
/// within the frame). The frame check comes first on purpose: it is the
/// one the verifier needs, and LLVM deletes a check that an earlier one
/// implies, which `end <= frame length` would do to a later frame check.
#[inline(always)]
pub fn ptr_within<T>(ctx: &XdpContext, offset: usize, end: usize) -> Option<*const T> {
    let p = ptr_at::<T>(ctx, offset)?;
    if offset + core::mem::size_of::<T>() > end {
        return None;
    }
    Some(p)
}

/// Mutable variant of [`ptr_at`].
#[inline(always)]
pub fn ptr_at_mut<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    ptr_at::<T>(ctx, offset).map(|p| p as *mut T)
}

/// The frame's length in bytes, Ethernet header included.
#[inline(always)]
pub fn frame_len(ctx: &XdpContext) -> usize {
    ctx.data_end() - ctx.data()
}

/// IP protocol numbers (IANA) beyond TCP and UDP.
pub const IPPROTO_ICMP: u8 = 1;
/// IPv4 in IP (RFC 2003): the outer protocol of IPIP.
pub const IPPROTO_IPIP: u8 = 4;
/// IPv6 in IP (RFC 2473): the outer next header of IP6IP6.
pub const IPPROTO_IPV6: u8 = 41;
pub const IPPROTO_ICMPV6: u8 = 58;
/// IPv4 "don't fragment" flag (RFC 791 section 3.1), host order.
pub const IP_DF: u16 = 0x4000;

/// ICMP types and codes (RFC 792, RFC 4443).
pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP_DEST_UNREACH: u8 = 3;
/// Code of "fragmentation needed and DF set" (RFC 792; RFC 1191 puts the
/// next-hop MTU into the header's second word).
pub const ICMP_FRAG_NEEDED: u8 = 4;
pub const ICMP_ECHO_REQUEST: u8 = 8;
pub const ICMPV6_PACKET_TOO_BIG: u8 = 2;
pub const ICMPV6_ECHO_REQUEST: u8 = 128;
pub const ICMPV6_ECHO_REPLY: u8 = 129;

/// The 8-byte header shared by ICMP and ICMPv6 messages (RFC 792,
/// RFC 4443 section 2.1); `rest` is the identifier and sequence number of
/// an echo, or the unused word and next-hop MTU / the MTU of an error.
#[repr(C)]
pub struct IcmpHdr {
    pub kind: u8,
    pub code: u8,
    pub check: u16,
    pub rest: [u16; 2],
}

pub const ICMP_HDR_LEN: usize = 8;

/// Folds a 32-bit (or wider) ones' complement sum to 16 bits and
/// complements it: the Internet checksum of RFC 1071 section 4.1. Sums
/// of raw memory-order words give the checksum in memory order
/// (RFC 1071 section 2(B), byte order independence), so callers sum raw
/// loads and store the result raw.
#[inline(always)]
pub fn fold_checksum(mut sum: u64) -> u16 {
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// The IPv4 header checksum of a 20-byte header, computed inline from its
/// five raw 32-bit words with the checksum field zero: five adds and a
/// fold, cheaper than a `bpf_csum_diff` call.
#[inline(always)]
pub fn ipv4_header_checksum(ip: *const Ipv4Hdr) -> u16 {
    let w = ip as *const u32;
    // SAFETY: the caller checked 20 bytes at `ip` are inside the frame.
    let sum = unsafe {
        u64::from(w.read_unaligned())
            + u64::from(w.add(1).read_unaligned())
            + u64::from(w.add(2).read_unaligned())
            + u64::from(w.add(3).read_unaligned())
            + u64::from(w.add(4).read_unaligned())
    };
    fold_checksum(sum)
}

/// RFC 1624 eqn. 3: the checksum `check` (raw) after a 16-bit word of the
/// summed data changed from `old` to `new` (both host order, as the word
/// reads on the wire): HC' = ~(~HC + ~m + m').
#[inline(always)]
pub fn checksum_update(check: u16, old: u16, new: u16) -> u16 {
    let sum = u64::from(!u16::from_be(check)) + u64::from(!old) + u64::from(new);
    fold_checksum(sum).to_be()
}
