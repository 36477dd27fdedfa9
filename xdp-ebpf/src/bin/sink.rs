//! The counting sink of `cargo xtask bench xdp-pps`, on the interface the
//! forwarded frames come back to: counts and drops every IPv4 UDP frame to
//! `SINK_PORT` (the bench's flows, whether fulcrum forwarded them with
//! their VIP destination or the kernel's DNAT rewrote it), and passes
//! everything else (ARP, so the kernel's forwarding can resolve the real).
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    macros::{map, xdp},
    maps::PerCpuArray,
    programs::XdpContext,
};

/// The bench's UDP destination port.
const SINK_PORT: u16 = 53;
const ETH_P_IP: u16 = 0x0800;
const IPPROTO_UDP: u8 = 17;

/// Entry 0: frames counted and dropped.
#[map]
static SINK_COUNT: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[xdp]
pub fn fulcrum_sink(ctx: XdpContext) -> u32 {
    let start = ctx.data();
    // Ethernet 14 + IPv4 without options 20 + the UDP ports 4.
    if start + 38 > ctx.data_end() {
        return XDP_PASS;
    }
    // SAFETY: the 38 bytes are inside the frame (checked above).
    let (ether_type, version_ihl, proto, dport) = unsafe {
        (
            u16::from_be(*((start + 12) as *const u16)),
            *((start + 14) as *const u8),
            *((start + 23) as *const u8),
            u16::from_be(*((start + 36) as *const u16)),
        )
    };
    if ether_type != ETH_P_IP || version_ihl != 0x45 || proto != IPPROTO_UDP || dport != SINK_PORT {
        return XDP_PASS;
    }
    if let Some(count) = SINK_COUNT.get_ptr_mut(0) {
        // SAFETY: per-CPU slot; XDP runs with preemption disabled.
        unsafe { *count += 1 };
    }
    XDP_DROP
}

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
