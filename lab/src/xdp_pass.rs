//! Attaches fulcrum's pass program (`xdp-ebpf/src/bin/pass.rs`) to the
//! switch-side end of each host's veth pair.
//!
//! Why: the lb's XDP program sends frames back out with `XDP_TX`, which on
//! a veth hands them straight to the peer's XDP ring. The kernel (checked
//! on 6.18) only schedules the peer's NAPI to drain that ring when the peer
//! runs an XDP program of its own (drivers/net/veth.c, `veth_xdp_flush`);
//! with GRO alone the frames are queued and never delivered.
//!
//! iproute2 loads and attaches it (the object has no maps, so its libbpf
//! reads it). The attachment is made over netlink: it outlives this process
//! and goes away with the device, which a lab left running by
//! `cargo xtask lab up` needs.
use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::netns::run_checked;

/// Attaches the pass program in driver mode to `ifname` in namespace `ns`.
pub fn attach_pass(ns: &str, ifname: &str) -> Result<()> {
    let object = pass_object()?;
    run_checked(
        Command::new("ip")
            .args(["-n", ns, "link", "set", "dev", ifname, "xdpdrv", "obj"])
            .arg(&object)
            .args(["sec", "xdp"]),
    )
    .with_context(|| format!("attaching {} to {ns}/{ifname}", object.display()))?;
    Ok(())
}

/// `FULCRUM_XDP_PASS` if set, else `<target>/ebpf/bpfel-unknown-none/release/fulcrum-xdp-pass`
/// (where `cargo xtask build-ebpf` and fulcrum-l4's build script put the
/// XDP programs) above the running executable.
fn pass_object() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("FULCRUM_XDP_PASS") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe().context("locating the current executable")?;
    let target = exe
        .ancestors()
        .find(|dir| dir.join("ebpf/bpfel-unknown-none").is_dir())
        .with_context(|| format!("no ebpf/bpfel-unknown-none build above {}: run `cargo xtask build-ebpf`", exe.display()))?;
    let object = target.join("ebpf/bpfel-unknown-none/release/fulcrum-xdp-pass");
    if !object.is_file() {
        bail!("{} is missing: run `cargo xtask build-ebpf`", object.display());
    }
    Ok(object)
}
