//! Building and running: the eBPF object, the workspace, tests, benches.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use crate::setup;

/// Where `build-ebpf` leaves the objects (the user-space build embeds `fulcrum-xdp`).
pub fn ebpf_dir(root: &Path) -> PathBuf {
    root.join("target/ebpf/bpfel-unknown-none/release")
}

/// `cargo xtask build-ebpf`: the XDP programs, with the nightly toolchain.
pub fn ebpf(root: &Path) -> Result<()> {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root.join("xdp-ebpf"))
        .args(["+nightly", "build", "--release", "--locked"])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(root.join("target/ebpf"));
    // The outer `cargo xtask` runs on stable; don't let its choice leak in.
    for var in ["RUSTUP_TOOLCHAIN", "RUSTC", "RUSTC_WRAPPER", "RUSTFLAGS", "CARGO_ENCODED_RUSTFLAGS"] {
        cmd.env_remove(var);
    }
    status(&mut cmd).context(
        "building the eBPF object failed: run `cargo xtask setup` (nightly rust-src, bpf-linker)",
    )
}

/// `cargo xtask build`: setup, eBPF object, then every user-space binary in release.
pub fn all(root: &Path) -> Result<()> {
    setup::run()?;
    ebpf(root)?;
    status(Command::new("cargo").current_dir(root).args(["build", "--release", "--workspace", "--bins"]))
}

/// `cargo xtask run -- ARGS`: `fulcrum ARGS` as root.
pub fn run(root: &Path, args: &[String]) -> Result<()> {
    all(root)?;
    let fulcrum = root.join("target/release/fulcrum");
    let mut cmd = if setup::nix_is_root() {
        Command::new(&fulcrum)
    } else {
        let mut sudo = Command::new("sudo");
        sudo.arg("-E").arg(&fulcrum);
        sudo
    };
    status(cmd.args(args))
}

/// `cargo xtask test`: what CI runs. Everything the tests need is installed
/// and built first; the namespace tests need root.
pub fn test(root: &Path, args: &[String]) -> Result<()> {
    setup::run()?;
    ebpf(root)?;
    // Integration tests start `fulcrum` and `fulcrum-backend` as processes.
    status(Command::new("cargo").current_dir(root).args(["build", "--workspace", "--bins"]))?;
    status(Command::new("cargo").current_dir(root).args(["test", "--workspace"]).args(args))
}

/// `cargo xtask bench ...`: the bench harness in release mode. Every
/// workspace binary is built in release first: the control-plane bench
/// starts `fulcrum` and the lab's `fulcrum-backend` from target/release.
pub fn bench(root: &Path, args: &[String]) -> Result<()> {
    setup::run()?;
    ebpf(root)?;
    status(Command::new("cargo").current_dir(root).args(["build", "--release", "--workspace", "--bins"]))?;
    status(
        Command::new("cargo")
            .current_dir(root)
            .args(["run", "--release", "-p", "fulcrum-bench", "--"])
            .args(args)
            .arg("--record")
            .arg(root.join("bench/RESULTS.md"))
            .env("FULCRUM_EBPF_DIR", ebpf_dir(root))
            .env("FULCRUM_BIN_DIR", root.join("target/release"))
            .env("FULCRUM_ROOT", root),
    )
}

/// Runs `cmd`, failing unless it exits 0.
pub fn status(cmd: &mut Command) -> Result<()> {
    let st = cmd.status().with_context(|| format!("could not start {cmd:?}"))?;
    if !st.success() {
        bail!("{cmd:?} failed: {st}");
    }
    Ok(())
}

/// Runs `cmd` and returns its standard output, failing unless it exits 0.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("could not start {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8(out.stdout)?)
}
