//! The part of `fulcrum stats --json` that the lab's users read, and a
//! helper to fetch it from a daemon running in the lab's lb namespace.
//!
//! Only the fields the demo and the tests need are typed; unknown fields
//! are ignored so the daemon may add more. Why not `fulcrum::admin::StatsReport`:
//! xtask depends on this crate and must build before the eBPF object that
//! the `fulcrum` crate embeds, so the lab cannot depend on `fulcrum`; the
//! JSON is the contract between them.
use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Deserialize;

use crate::Lab;

/// The daemon's statistics snapshot.
#[derive(Debug, Clone, Deserialize)]
pub struct Stats {
    /// One entry per configured VIP.
    pub vips: Vec<VipStats>,
    /// One entry per pool.
    pub pools: Vec<PoolStats>,
    /// XDP verdict reasons ("tx", "pass_not_vip", "drop_no_backend"...)
    /// to packet counts, summed over CPUs.
    pub reasons: BTreeMap<String, u64>,
}

/// Counters of one VIP.
#[derive(Debug, Clone, Deserialize)]
pub struct VipStats {
    /// The VIP's configured name.
    pub name: String,
    /// The VIP address as text (IPv4 or IPv6).
    pub address: String,
    /// The VIP's port.
    pub port: u16,
    /// Backends currently in the VIP's scheduling table.
    #[serde(default)]
    pub backends_in_table: u64,
    /// Packets the XDP program sent to a backend for this VIP.
    pub packets: u64,
}

/// One pool and its members.
#[derive(Debug, Clone, Deserialize)]
pub struct PoolStats {
    /// The pool's configured name.
    pub name: String,
    /// Its members.
    pub backends: Vec<BackendStats>,
}

/// One member of a pool.
#[derive(Debug, Clone, Deserialize)]
pub struct BackendStats {
    /// The backend's address as text.
    pub address: String,
    /// "up", "down" or "unknown".
    pub health: String,
    /// Packets the XDP program sent to this backend.
    pub packets: u64,
    /// Bytes the XDP program sent to this backend.
    pub bytes: u64,
}

impl Stats {
    /// Parses the JSON printed by `fulcrum stats --json`.
    pub fn parse(json: &str) -> Result<Stats> {
        serde_json::from_str(json).with_context(|| format!("parsing fulcrum stats: {json}"))
    }

    /// Runs `fulcrum stats --json` (the binary `fulcrum`) inside the lab's
    /// lb namespace, where the daemon's admin endpoint listens.
    pub fn fetch(lab: &Lab, fulcrum: &Path) -> Result<Stats> {
        let mut cmd = lab.command("lb", fulcrum);
        cmd.args(["stats", "--json"]);
        Stats::parse(&crate::run_checked(&mut cmd)?)
    }

    /// The backend with this address in any pool.
    pub fn backend(&self, address: &str) -> Option<&BackendStats> {
        self.pools.iter().flat_map(|p| &p.backends).find(|b| b.address == address)
    }

    /// A reason counter, 0 if the daemon did not report it.
    pub fn reason(&self, name: &str) -> u64 {
        self.reasons.get(name).copied().unwrap_or(0)
    }
}
