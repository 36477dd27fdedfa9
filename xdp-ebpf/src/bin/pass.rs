//! `XDP_PASS` for every frame. The lab attaches it to the bridge-side peer
//! of the lb's veth: a veth only wakes its peer to take frames sent with
//! `XDP_TX` when that peer runs an XDP program of its own (Linux
//! drivers/net/veth.c, `veth_xdp_flush`).
#![no_std]
#![no_main]

use aya_ebpf::{bindings::xdp_action::XDP_PASS, macros::xdp, programs::XdpContext};

#[xdp]
pub fn fulcrum_pass(_ctx: XdpContext) -> u32 {
    XDP_PASS
}

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
