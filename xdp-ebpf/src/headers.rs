//! Wire formats and bounds-checked access to them.
//!
//! Only the fields the datapath reads are named; the structs are exact
//! header layouts (IEEE 802.3/802.1Q, RFC 791, RFC 8200, RFC 9293, RFC 768).
//! Multi-byte fields stay in network order.

use aya_ebpf::programs::XdpContext;

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
/// IPv6 Fragment extension header (RFC 8200 section 4.5).
pub const IPPROTO_FRAGMENT: u8 = 44;
/// IPv4 "more fragments" flag and fragment offset bits (RFC 791 section 3.1).
pub const IP_MF_OFFSET_MASK: u16 = 0x3fff;

#[repr(C)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub ether_type: u16,
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

/// The first four bytes of TCP and UDP headers: source and destination port.
#[repr(C)]
pub struct Ports {
    pub src: u16,
    pub dst: u16,
}

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

/// Mutable variant of [`ptr_at`].
#[inline(always)]
pub fn ptr_at_mut<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    ptr_at::<T>(ctx, offset).map(|p| p as *mut T)
}

/// Whether `len` bytes starting at `offset` lie inside the frame.
#[inline(always)]
pub fn has_bytes(ctx: &XdpContext, offset: usize, len: usize) -> bool {
    ctx.data() + offset + len <= ctx.data_end()
}
