//! The restoring harness for `cargo xtask bench xdp` (bench/src/xdp.rs).
//!
//! `BPF_PROG_TEST_RUN` with `repeat` runs a program again and again on one
//! buffer without restoring it: from the second run on, a program sees its
//! own output. After IPIP encapsulation that is an IPIP packet to a real,
//! which the datapath passes at a fraction of the cost, so the figure would
//! be false (DESIGN.md, "How we measure"). This program runs first on every
//! iteration and puts the bench's input frame back, then tail-calls the
//! program under test from `TARGET`:
//!
//! 1. `bpf_xdp_adjust_head` by (current length - `PARAMS[LEN]`): undoes
//!    whatever the previous run opened (+20 after IPIP, +40 after IP6IP6)
//!    or closed in front of the frame. The tail is never moved by the
//!    timed paths, so the payload after the first [`HEADER_BYTES`] is the
//!    input's.
//! 2. Writes the input's first [`HEADER_BYTES`] bytes back from `TEMPLATE`
//!    (Ethernet, IP and L4 headers of the IPv4 and IPv6 bench frames).
//! 3. Increments `PARAMS[COUNTER]` and stores it (native order) in the
//!    IPv4 source address or the IPv6 one's last word, as
//!    `PARAMS[NEW_FLOW]` says (the SYN rows: every iteration a new
//!    5-tuple), else in a word the datapath does not read, so that every
//!    row pays for the same harness work.
//!
//! The bench measures this program in front of a target that does nothing
//! and subtracts its cost, and checks the subtraction on the floor and on
//! the L2 DSR hit, which can also be timed without the harness.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action::{XDP_ABORTED, XDP_TX},
    helpers::bpf_xdp_adjust_head,
    macros::{map, xdp},
    maps::{Array, ProgramArray},
    programs::XdpContext,
};

/// Bytes of the input frame the harness rewrites on every run.
const HEADER_BYTES: usize = 80;
const WORDS: usize = HEADER_BYTES / 8;

/// Where the counter goes in a frame without a VLAN tag: the IPv4
/// source address, the last word of the IPv6 source address, or a word
/// the datapath does not read (the payload of an IPv4 frame, after its 54
/// bytes of Ethernet, IP and TCP headers or 42 of a UDP frame; TCP's
/// acknowledgment number or UDP's checksum in an IPv6 frame).
const IPV4_SOURCE: usize = 26;
const IPV6_SOURCE_LOW: usize = 34;
const PAYLOAD_WORD: usize = 60;

/// `PARAMS` indices.
const LEN: u32 = 0;
const NEW_FLOW: u32 = 1;
const COUNTER: u32 = 2;

/// Entry 0: the input frame's first [`HEADER_BYTES`] bytes.
#[map]
static TEMPLATE: Array<[u64; WORDS]> = Array::with_max_entries(1, 0);

/// `LEN`: the input frame's length in bytes; `NEW_FLOW`: where the counter
/// goes, 1 the IPv4 source address, 2 the IPv6 source address's last
/// word (a new flow every run), else a word the datapath does not read;
/// `COUNTER`: runs so far.
#[map]
static PARAMS: Array<u32> = Array::with_max_entries(3, 0);

/// Entry 0: the program under test.
#[map]
static TARGET: ProgramArray = ProgramArray::with_max_entries(1, 0);

#[xdp]
pub fn fulcrum_harness(ctx: XdpContext) -> u32 {
    restore(&ctx).unwrap_or(XDP_ABORTED)
}

#[inline(always)]
fn restore(ctx: &XdpContext) -> Option<u32> {
    let len = *PARAMS.get(LEN)?;
    // Fixed offsets, one of two: the verifier forgets a packet range once
    // a variable offset is added to the pointer.
    let new_flow = *PARAMS.get(NEW_FLOW)?;
    let counter = PARAMS.get_ptr_mut(COUNTER)?;
    let template = TEMPLATE.get(0)?;
    let delta = (ctx.data_end() - ctx.data()) as i32 - len as i32;
    // SAFETY: the helper checks the new start against the headroom and the end.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, delta) } != 0 {
        return None;
    }
    let start = ctx.data();
    if start + HEADER_BYTES > ctx.data_end() {
        return None;
    }
    let words = start as *mut u64;
    // SAFETY: HEADER_BYTES lie inside the frame (checked above). The
    // test-run buffer's data starts 256 bytes (XDP_PACKET_HEADROOM) into
    // an allocation, so word stores are aligned; one by one, because an
    // array copy compiles to a `memcpy` subprogram call.
    unsafe {
        for (i, w) in template.iter().enumerate() {
            *words.add(i) = *w;
        }
        *counter = (*counter).wrapping_add(1);
        let at = match new_flow {
            1 => (start + IPV4_SOURCE) as *mut u16,
            2 => (start + IPV6_SOURCE_LOW) as *mut u16,
            _ => (start + PAYLOAD_WORD) as *mut u16,
        };
        *at = *counter as u16;
        *at.add(1) = (*counter >> 16) as u16;
        // Only returns if the slot is empty: the bench always fills it.
        TARGET.tail_call(ctx, 0);
    }
    None
}

/// The do-nothing target: what the bench subtracts as the harness's cost.
#[xdp]
pub fn fulcrum_harness_noop(_ctx: XdpContext) -> u32 {
    XDP_TX
}

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
