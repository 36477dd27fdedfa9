//! Attaching an XDP program to an interface through rtnetlink
//! (`IFLA_XDP`), not through a BPF link.
//!
//! Why not a link (what aya's `Xdp::attach` creates): a link lives as long
//! as its file descriptor, so when the daemon dies without running its
//! shutdown (SIGKILL, the OOM killer, a segfault) the kernel detaches the
//! program at once. The node then still holds the VIP addresses (only a
//! graceful stop removes them, keepalived behaves alike), so its own stack
//! answers the clients' packets for the VIPs with resets until a peer's
//! gratuitous ARP moves them: every established flow through the node
//! dies. A program attached by netlink belongs to the device: it keeps
//! forwarding with the maps as last written until the device goes away,
//! another program replaces it or a graceful stop removes it, as IPVS
//! keeps forwarding when keepalived crashes and as Katran's programs
//! outlive their control plane. A restarted daemon replaces the
//! predecessor's program in one netlink request, with no moment without
//! one (`dev_xdp_attach` in the kernel's `net/core/dev.c`).
//!
//! A detach names the program it removes (`IFLA_XDP_EXPECTED_FD` with
//! `XDP_FLAGS_REPLACE`, Linux 5.7), so a daemon never removes a program
//! that replaced its own.

use std::io;
use std::os::fd::RawFd;

use rtnetlink::packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_REQUEST,
};
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage, LinkXdp};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use crate::AttachMode;

/// `XDP_FLAGS_SKB_MODE` (`include/uapi/linux/if_link.h`).
const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
/// `XDP_FLAGS_DRV_MODE`.
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;
/// `XDP_FLAGS_REPLACE`: act only if the attached program is the one given
/// by `IFLA_XDP_EXPECTED_FD`.
const XDP_FLAGS_REPLACE: u32 = 1 << 4;

impl AttachMode {
    fn flags(self) -> u32 {
        match self {
            AttachMode::Driver => XDP_FLAGS_DRV_MODE,
            AttachMode::Generic => XDP_FLAGS_SKB_MODE,
        }
    }
}

/// A program attached to an interface by netlink. Dropping it leaves the
/// program attached; [`Attachment::detach`] removes it.
#[derive(Debug)]
pub(crate) struct Attachment {
    ifindex: u32,
    mode: AttachMode,
}

impl Attachment {
    /// Attaches program `prog_fd` to `ifindex` in driver mode, else in
    /// generic mode with a warning (generic XDP runs after the skb is
    /// built, at stack speed). Replaces a program attached by netlink
    /// before, such as a crashed predecessor's.
    ///
    /// # Errors
    /// Neither mode could attach: no such interface, or a program attached
    /// through a BPF link (`EBUSY`) by another tool.
    pub fn attach(prog_fd: RawFd, ifindex: u32, interface: &str) -> io::Result<Attachment> {
        match set_xdp(ifindex, prog_fd, AttachMode::Driver.flags(), None) {
            Ok(()) => Ok(Attachment { ifindex, mode: AttachMode::Driver }),
            Err(err) => {
                tracing::warn!(%interface, error = %err, "driver-mode XDP refused; falling back to generic (skb) mode, expect stack-speed forwarding");
                set_xdp(ifindex, prog_fd, AttachMode::Generic.flags(), None)?;
                Ok(Attachment { ifindex, mode: AttachMode::Generic })
            }
        }
    }

    /// The mode the program runs in.
    pub fn mode(&self) -> AttachMode {
        self.mode
    }

    /// Removes program `prog_fd` from the interface if it is still the one
    /// attached. One that replaced it (a successor's) stays, as does an
    /// interface that is gone: both count as success.
    ///
    /// # Errors
    /// The kernel refused otherwise.
    pub fn detach(self, prog_fd: RawFd) -> io::Result<()> {
        match set_xdp(self.ifindex, -1, self.mode.flags() | XDP_FLAGS_REPLACE, Some(prog_fd)) {
            // EEXIST: another program is attached now; ENODEV: no device.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EEXIST | libc::ENODEV)) => {
                tracing::info!(ifindex = self.ifindex, error = %e, "XDP program not detached: no longer ours");
                Ok(())
            }
            r => r,
        }
    }
}

/// One `RTM_SETLINK` with `IFLA_XDP { FD, FLAGS[, EXPECTED_FD] }`, waiting
/// for the kernel's acknowledgement.
fn set_xdp(ifindex: u32, fd: RawFd, flags: u32, expected: Option<RawFd>) -> io::Result<()> {
    let mut xdp = vec![LinkXdp::Fd(fd), LinkXdp::Flags(flags)];
    if let Some(e) = expected {
        xdp.push(LinkXdp::ExpectedFd(e as u32));
    }
    let mut link = LinkMessage::default();
    link.header.index = ifindex;
    link.attributes.push(LinkAttribute::Xdp(xdp));
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_ACK;
    let mut msg = NetlinkMessage::new(header, NetlinkPayload::from(RouteNetlinkMessage::SetLink(link)));
    msg.finalize();
    let mut buf = vec![0u8; msg.buffer_len()];
    msg.serialize(&mut buf);

    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    socket.send(&buf, 0)?;
    let mut reply = Vec::with_capacity(8192);
    socket.recv(&mut reply, 0)?;
    let answer = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&reply)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
    match answer.payload {
        NetlinkPayload::Error(e) if e.code.is_some() => Err(e.to_io()),
        NetlinkPayload::Error(_) => Ok(()),
        other => Err(io::Error::new(io::ErrorKind::InvalidData, format!("unexpected netlink answer {other:?}"))),
    }
}
