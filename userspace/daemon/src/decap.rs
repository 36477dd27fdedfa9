//! `fulcrum decap`: runs on a real behind IPIP / IP6IP6 VIPs. Loads the
//! decapsulation XDP program (`fulcrum_l4::Decap`), tells it the VIPs,
//! attaches it to the interface, and waits for SIGINT or SIGTERM; then
//! detaches and logs its counters. The real must hold the VIPs itself
//! (on `lo`, as for L2 DSR), so the kernel accepts the inner packets.
use std::net::IpAddr;

use anyhow::{Context, Result};
use fulcrum_l4::Decap;
use tokio::signal::unix::{signal, SignalKind};
use tracing::info;

/// Decapsulates for `vips` on `interface` until SIGINT or SIGTERM.
///
/// # Errors
/// The program could not load or attach, or a signal handler not install.
/// The program is detached on every exit path after it was attached.
pub async fn run(interface: &str, vips: &[IpAddr]) -> Result<()> {
    let mut decap = Decap::load().context("loading the decap XDP program (needs root)")?;
    for &vip in vips {
        decap.add_vip(vip).with_context(|| format!("adding VIP {vip}"))?;
    }
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mode = decap.attach(interface).with_context(|| format!("attaching to {interface}"))?;
    info!(%interface, ?mode, ?vips, "decap program attached");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    decap.detach()?;
    let counts: Vec<String> = decap.counters().iter().map(|(r, c)| format!("{}={}", r.name(), c.packets)).collect();
    info!(%interface, counters = %counts.join(" "), "decap program detached");
    Ok(())
}
