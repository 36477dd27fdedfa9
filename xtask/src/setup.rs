//! `cargo xtask setup` (stub).
use anyhow::Result;
pub fn run() -> Result<()> { Ok(()) }
