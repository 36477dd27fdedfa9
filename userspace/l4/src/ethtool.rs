//! Receive VLAN offload, switched with the `SIOCETHTOOL` ioctl.
//!
//! With receive VLAN offload on (`rx-vlan-hw-parse`, the default on veth
//! and most NICs), the driver strips a frame's outer 802.1Q tag and keeps
//! it beside the frame: XDP sees an untagged frame, and `XDP_TX` sends it
//! without its tag. The XDP RX metadata kfunc `bpf_xdp_metadata_rx_vlan_tag`
//! reads such a tag, but aya 0.14 cannot load a device-bound program
//! (`BPF_F_XDP_DEV_BOUND_ONLY`), which metadata kfuncs need, and aya-ebpf
//! 0.2 cannot call kfuncs. So the balancer turns the offload off while it
//! is attached: tags stay in the frame, the program compares their VLAN id
//! with the VIP's, and a forwarded frame keeps its tag (L2 DSR rewrites
//! only the MACs; IPIP moves the tag with the Ethernet header). This is
//! `ethtool -K IF rxvlan off`, done with the legacy `ETHTOOL_GFLAGS` /
//! `ETHTOOL_SFLAGS` commands (`include/uapi/linux/ethtool.h`), which every
//! kernel still maps onto `NETIF_F_HW_VLAN_CTAG_RX`: a few lines of ioctl
//! instead of a dependency on an ethtool netlink library.
use std::{io, os::fd::AsRawFd};

/// `ETHTOOL_GFLAGS` / `ETHTOOL_SFLAGS`: read / write the `ETH_FLAG_*` word.
const ETHTOOL_GFLAGS: u32 = 0x25;
const ETHTOOL_SFLAGS: u32 = 0x26;
/// `ETH_FLAG_RXVLAN`: receive VLAN offload (`rx-vlan-hw-parse`).
const ETH_FLAG_RXVLAN: u32 = 1 << 8;

/// `struct ethtool_value`.
#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

/// Whether receive VLAN offload is on for `interface`.
///
/// # Errors
/// No such interface, or the driver has no ethtool flags.
pub fn rx_vlan_offload(interface: &str) -> io::Result<bool> {
    Ok(flags(interface, ETHTOOL_GFLAGS, 0)? & ETH_FLAG_RXVLAN != 0)
}

/// Turns receive VLAN offload on or off for `interface`, leaving the other
/// flags as they are, and checks that the kernel did it.
///
/// # Errors
/// The driver cannot change it (`EOPNOTSUPP`), or the ioctl failed
/// (needs CAP_NET_ADMIN).
pub fn set_rx_vlan_offload(interface: &str, on: bool) -> io::Result<()> {
    let current = flags(interface, ETHTOOL_GFLAGS, 0)?;
    let wanted = if on { current | ETH_FLAG_RXVLAN } else { current & !ETH_FLAG_RXVLAN };
    if wanted != current {
        flags(interface, ETHTOOL_SFLAGS, wanted)?;
    }
    if rx_vlan_offload(interface)? != on {
        return Err(io::Error::other(format!("the driver keeps receive VLAN offload {}", if on { "off" } else { "on" })));
    }
    Ok(())
}

/// One `ETHTOOL_GFLAGS` or `ETHTOOL_SFLAGS` call; the flags word after it.
fn flags(interface: &str, cmd: u32, data: u32) -> io::Result<u32> {
    let name = interface.as_bytes();
    // SAFETY: an all-zero ifreq is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.len() >= request.ifr_name.len() || name.contains(&0) {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("bad interface name {interface:?}")));
    }
    for (dst, &src) in request.ifr_name.iter_mut().zip(name) {
        *dst = src as libc::c_char;
    }
    let mut value = EthtoolValue { cmd, data };
    request.ifr_ifru.ifru_data = (&raw mut value).cast();
    // SAFETY: a plain socket call; the descriptor is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nothing else owns.
    let socket = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: request names the interface and points at `value`, which
    // outlives the call; SIOCETHTOOL reads and writes only `value`.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCETHTOOL as _, &mut request) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value.data)
}
