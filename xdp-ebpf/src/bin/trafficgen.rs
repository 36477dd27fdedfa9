//! The packet generator of `cargo xtask bench xdp-pps`: run with
//! `BPF_PROG_TEST_RUN` and `BPF_F_TEST_XDP_LIVE_FRAMES` (the mechanism
//! xdp-trafficgen uses; this kernel has no pktgen), every run of the
//! program is one frame that its `XDP_TX` sends out of the interface named
//! in the run's context.
//!
//! Live frames come from a page pool whose pages are recycled without being
//! reset, and the forwarder under test rewrites them in place (MACs, and
//! the kernel's DNAT the IP header), so every run writes the whole header
//! back from `TEMPLATE` and then gives the frame its flow: the UDP source
//! port `PARAMS[BASE_PORT] + counter % PARAMS[FLOWS]`, a fixed set of flows
//! that every forwarder sees as established after the first round. The
//! template's UDP checksum is 0 (none, allowed for IPv4 by RFC 768), so the
//! port needs no checksum update.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action::{XDP_ABORTED, XDP_TX},
    macros::{map, xdp},
    maps::Array,
    programs::XdpContext,
};

/// Header bytes rewritten on every run: Ethernet 14, IPv4 20, UDP 8 and
/// 6 bytes of payload.
const HEADER_BYTES: usize = 48;
const WORDS: usize = HEADER_BYTES / 8;
/// Offset of the UDP source port in an untagged IPv4 frame.
const UDP_SOURCE_PORT: usize = 34;

/// `PARAMS` indices.
const FLOWS: u32 = 0;
const BASE_PORT: u32 = 1;
const COUNTER: u32 = 2;

/// Entry 0: the frame's first [`HEADER_BYTES`] bytes.
#[map]
static TEMPLATE: Array<[u64; WORDS]> = Array::with_max_entries(1, 0);

/// `FLOWS`: distinct flows (source ports), at least 1; `BASE_PORT`: the
/// first source port; `COUNTER`: frames sent.
#[map]
static PARAMS: Array<u32> = Array::with_max_entries(3, 0);

#[xdp]
pub fn fulcrum_trafficgen(ctx: XdpContext) -> u32 {
    generate(&ctx).unwrap_or(XDP_ABORTED)
}

#[inline(always)]
fn generate(ctx: &XdpContext) -> Option<u32> {
    let flows = (*PARAMS.get(FLOWS)?).max(1);
    let base = *PARAMS.get(BASE_PORT)?;
    let counter = PARAMS.get_ptr_mut(COUNTER)?;
    let template = TEMPLATE.get(0)?;
    let start = ctx.data();
    if start + HEADER_BYTES > ctx.data_end() {
        return None;
    }
    let words = start as *mut u64;
    // SAFETY: HEADER_BYTES lie inside the frame (checked above); the page
    // pool's frames start at an aligned headroom, so word stores are
    // aligned. One by one: an array copy compiles to a `memcpy` call.
    unsafe {
        for (i, w) in template.iter().enumerate() {
            *words.add(i) = *w;
        }
        let n = *counter;
        *counter = n.wrapping_add(1);
        let port = (base + n % flows) as u16;
        *((start + UDP_SOURCE_PORT) as *mut u16) = port.to_be();
    }
    Some(XDP_TX)
}

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
