//! `cargo xtask lab up|down` (owned by the lab work).
use std::path::Path;

use anyhow::Result;
use clap::Subcommand;

#[derive(Subcommand, Clone, Copy)]
pub enum Action {
    /// Create the namespaces, bridge, veths and start the backends.
    Up,
    /// Stop the backends and remove the namespaces.
    Down,
}

pub fn run(_root: &Path, _action: Action) -> Result<()> {
    anyhow::bail!("lab: not written yet")
}
