//! A two-instruction XDP program that passes every frame, attached to the
//! switch-side end of each host's veth pair.
//!
//! Why: the lb's XDP program sends frames back out with `XDP_TX`, which on
//! a veth hands them straight to the peer's XDP ring. The kernel (checked
//! on 6.18) only schedules the peer's NAPI to drain that ring when the peer
//! has an XDP program of its own (`veth_xdp_flush` tests the peer's
//! `xdp_prog`); with GRO alone the frames are queued and never delivered,
//! so the lab attaches this pass program (DESIGN.md: "the peer needs an XDP
//! program (a pass program is enough) or GRO on").
//!
//! Loaded with the raw `bpf(2)` syscall and attached over rtnetlink
//! (`IFLA_XDP`, driver mode) so the lab needs neither clang nor an object
//! file. A netlink attachment outlives this process and goes away with the
//! device, which is what a lab left running by `cargo xtask lab up` needs.
use std::mem::size_of;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use anyhow::{bail, Context, Result};

/// `BPF_PROG_LOAD` command of bpf(2).
const BPF_PROG_LOAD: libc::c_long = 5;
/// `BPF_PROG_TYPE_XDP`.
const BPF_PROG_TYPE_XDP: u32 = 6;
/// `XDP_PASS` verdict.
const XDP_PASS: i32 = 2;
/// `IFLA_XDP` (nested) and its members `IFLA_XDP_FD`, `IFLA_XDP_FLAGS`.
const IFLA_XDP: u16 = 43;
const IFLA_XDP_FD: u16 = 1;
const IFLA_XDP_FLAGS: u16 = 3;
const NLA_F_NESTED: u16 = 1 << 15;
/// `XDP_FLAGS_DRV_MODE`: veth runs XDP natively.
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;

/// The leading fields of `union bpf_attr` for `BPF_PROG_LOAD`; the kernel
/// accepts a prefix of the union whose size it is told.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
}

/// Loads the pass program and attaches it in driver mode to interface
/// `ifname` of the calling thread's network namespace. The program fd is
/// closed afterwards: the attachment holds its own reference.
pub(crate) fn attach_pass(ifname: &str) -> Result<()> {
    let ifindex = nix::net::if_::if_nametoindex(ifname).with_context(|| format!("no interface {ifname}"))?;
    let prog = load_pass()?;
    set_link_xdp(ifindex, prog.as_raw_fd()).with_context(|| format!("attaching XDP pass program to {ifname}"))
}

fn load_pass() -> Result<OwnedFd> {
    // r0 = XDP_PASS; exit. Each instruction: opcode, dst|src regs, off, imm.
    let mov_r0 = 0xb7u64 | (u64::from(XDP_PASS as u32) << 32); // BPF_ALU64|BPF_MOV|BPF_K, dst r0
    let exit = 0x95u64; // BPF_JMP|BPF_EXIT
    let insns: [u64; 2] = [mov_r0.to_le(), exit.to_le()];
    let license = c"GPL";
    let mut name = [0u8; 16];
    name[..12].copy_from_slice(b"fulcrum_pass");
    let attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_XDP,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        prog_name: name,
        ..Default::default()
    };
    // SAFETY: attr points to a valid, fully initialised bpf_attr prefix of
    // the size passed, and the pointers in it outlive the call.
    let fd = unsafe {
        libc::syscall(libc::SYS_bpf, BPF_PROG_LOAD, &attr as *const ProgLoadAttr, size_of::<ProgLoadAttr>())
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("bpf(BPF_PROG_LOAD) of the XDP pass program");
    }
    // SAFETY: the kernel just returned this descriptor to us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Sends `RTM_SETLINK` with `IFLA_XDP { FD, FLAGS }` and waits for the ack.
fn set_link_xdp(ifindex: u32, prog_fd: RawFd) -> Result<()> {
    let mut msg = Vec::with_capacity(64);
    let push_attr_header = |msg: &mut Vec<u8>, len: u16, kind: u16| {
        msg.extend_from_slice(&len.to_ne_bytes());
        msg.extend_from_slice(&kind.to_ne_bytes());
    };
    // nlmsghdr: length patched below, type, flags, seq, port id.
    msg.extend_from_slice(&0u32.to_ne_bytes());
    msg.extend_from_slice(&libc::RTM_SETLINK.to_ne_bytes());
    msg.extend_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16).to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    // ifinfomsg: family, pad, type, index, flags, change.
    msg.extend_from_slice(&[libc::AF_UNSPEC as u8, 0]);
    msg.extend_from_slice(&0u16.to_ne_bytes());
    msg.extend_from_slice(&(ifindex as i32).to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    push_attr_header(&mut msg, 4 + 8 + 8, IFLA_XDP | NLA_F_NESTED);
    push_attr_header(&mut msg, 8, IFLA_XDP_FD);
    msg.extend_from_slice(&prog_fd.to_ne_bytes());
    push_attr_header(&mut msg, 8, IFLA_XDP_FLAGS);
    msg.extend_from_slice(&XDP_FLAGS_DRV_MODE.to_ne_bytes());
    let len = msg.len() as u32;
    msg[..4].copy_from_slice(&len.to_ne_bytes());

    // SAFETY: plain socket(2); the result is checked and owned at once.
    let sock = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_ROUTE) };
    if sock < 0 {
        return Err(std::io::Error::last_os_error()).context("netlink socket");
    }
    // SAFETY: sock is a fresh descriptor we own.
    let sock = unsafe { OwnedFd::from_raw_fd(sock) };
    // SAFETY: msg is a valid buffer of msg.len() bytes.
    let sent = unsafe { libc::send(sock.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
    if sent < 0 {
        return Err(std::io::Error::last_os_error()).context("netlink send");
    }
    let mut buf = [0u8; 1024];
    // SAFETY: buf is a valid writable buffer of its length.
    let got = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if got < 0 {
        return Err(std::io::Error::last_os_error()).context("netlink recv");
    }
    // The answer is an NLMSG_ERROR carrying 0 (ack) or a negative errno.
    let got = got as usize;
    if got < 20 {
        bail!("short netlink answer ({got} bytes)");
    }
    let kind = u16::from_ne_bytes([buf[4], buf[5]]);
    if kind != libc::NLMSG_ERROR as u16 {
        bail!("unexpected netlink answer type {kind}");
    }
    let errno = i32::from_ne_bytes([buf[16], buf[17], buf[18], buf[19]]);
    if errno != 0 {
        return Err(std::io::Error::from_raw_os_error(-errno)).context("RTM_SETLINK IFLA_XDP");
    }
    Ok(())
}
