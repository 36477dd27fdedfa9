//! The datapath floor for benchmarks: swap source and destination MAC and
//! send the frame back (`XDP_TX`). The least an XDP forwarder can do; the
//! bench reports fulcrum's cost as a ratio to it.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action::{XDP_PASS, XDP_TX},
    macros::xdp,
    programs::XdpContext,
};

#[xdp]
pub fn fulcrum_floor(ctx: XdpContext) -> u32 {
    let start = ctx.data();
    if start + 14 > ctx.data_end() {
        return XDP_PASS;
    }
    let eth = start as *mut [u8; 12];
    // SAFETY: the 14-byte Ethernet header is inside the frame (checked above).
    unsafe {
        let mut macs = *eth;
        let (dst, src) = macs.split_at_mut(6);
        dst.swap_with_slice(src);
        *eth = macs;
    }
    XDP_TX
}

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
