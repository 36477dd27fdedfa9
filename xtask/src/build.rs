//! Build, run, test, bench (stub).
use std::path::Path;
use anyhow::Result;
pub fn ebpf(_root: &Path, _release: bool) -> Result<()> { Ok(()) }
pub fn all(_root: &Path) -> Result<()> { Ok(()) }
pub fn run(_root: &Path, _args: &[String]) -> Result<()> { Ok(()) }
pub fn test(_root: &Path, _args: &[String]) -> Result<()> { Ok(()) }
pub fn bench(_root: &Path, _args: &[String]) -> Result<()> { Ok(()) }
