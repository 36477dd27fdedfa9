//! `cargo xtask setup`: everything a fresh Debian machine needs to build
//! the eBPF object and run the lab. Idempotent: each step checks first.
//!
//! The eBPF build needs the installed `nightly` toolchain with `rust-src`
//! (for `-Z build-std=core`) and a `bpf-linker` linked against that
//! nightly's own libLLVM (see docs/architecture.md, toolchain facts).
use std::{
    fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use crate::build::{output, status};

/// The bpf-linker release known to work with nightly 1.97 / LLVM 22.
const BPF_LINKER_VERSION: &str = "0.13.0";
/// Debian packages the lab, demo, tests and benches use: `ip`, `ethtool`,
/// `sysctl`, `wrk`, curl (the demo's sticky session, with a cookie jar),
/// keepalived as the VRRP peer of the interoperability tests, bpftool (to
/// read the loaded program, `bpftool prog dump xlated`), nginx and HAProxy
/// as the peers of `cargo xtask bench l7`, and nftables (the kernel's
/// DNAT, the peer of `cargo xtask bench xdp-pps`).
const DEBIAN_PACKAGES: &[&str] =
    &["iproute2", "ethtool", "procps", "wrk", "curl", "keepalived", "bpftool", "nginx", "haproxy", "nftables"];

pub fn run() -> Result<()> {
    nightly_rust_src()?;
    bpf_linker()?;
    debian_packages()?;
    Ok(())
}

fn nightly_rust_src() -> Result<()> {
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"]))
        .context("rustup is needed to manage the nightly toolchain")?;
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        bail!(
            "no `nightly` toolchain is installed; the eBPF crate needs one \
             (install it with `rustup toolchain install nightly --component rust-src`)"
        );
    }
    let installed = output(Command::new("rustup").args([
        "component", "list", "--installed", "--toolchain", "nightly",
    ]))?;
    if !installed.lines().any(|l| l.starts_with("rust-src")) {
        println!("setup: adding rust-src to the nightly toolchain");
        status(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))?;
    }
    Ok(())
}

/// Builds bpf-linker against the nightly's libLLVM unless the one installed
/// was built for this very nightly (recorded in a stamp file).
fn bpf_linker() -> Result<()> {
    let verbose = output(Command::new("rustc").args(["+nightly", "-vV"]))?;
    let field = |name: &str| {
        verbose
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
            .with_context(|| format!("`rustc +nightly -vV` printed no `{name}`"))
    };
    let commit = field("commit-hash:")?;
    let llvm_major = field("LLVM version:")?.split('.').next().unwrap_or_default().to_string();

    let home = PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?);
    let prefix = home.join(".local/share/fulcrum/llvm").join(&commit[..12.min(commit.len())]);
    let stamp = prefix.join("bpf-linker.stamp");
    let want = format!("bpf-linker {BPF_LINKER_VERSION} llvm-{llvm_major} {commit}");
    let linker_runs = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if linker_runs && fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == want) {
        return Ok(());
    }

    println!("setup: building bpf-linker {BPF_LINKER_VERSION} on the nightly's LLVM {llvm_major} (about a minute)");
    let sysroot = PathBuf::from(output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?.trim());
    let libllvm = find_libllvm(&sysroot.join("lib"))?;
    let lib = prefix.join("lib");
    fs::create_dir_all(&lib)?;
    let file_name = libllvm.file_name().context("libLLVM path has no file name")?;
    for link in [lib.join("libLLVM.so"), lib.join(file_name)] {
        let _ = fs::remove_file(&link);
        symlink(&libllvm, &link).with_context(|| format!("linking {}", link.display()))?;
    }
    status(
        Command::new("cargo")
            .args(["install", "bpf-linker", "--force", "--version", BPF_LINKER_VERSION])
            .args(["--no-default-features", "--features", &format!("llvm-{llvm_major}")])
            .env("LLVM_PREFIX", &prefix)
            .env_remove("RUSTUP_TOOLCHAIN"),
    )
    .context("building bpf-linker failed; see the cargo output above")?;
    fs::write(&stamp, want)?;
    Ok(())
}

/// The nightly's own libLLVM shared object, e.g. `libLLVM.so.22.1-rust-1.97.0-nightly`.
fn find_libllvm(dir: &Path) -> Result<PathBuf> {
    fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM") && n.contains("-rust-"))
        })
        .with_context(|| format!("no libLLVM*-rust-* in {}: is the nightly complete?", dir.display()))
}

fn debian_packages() -> Result<()> {
    let missing: Vec<&str> = DEBIAN_PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            !Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !nix_is_root() {
        bail!("Debian packages missing: {}; install them as root: apt-get install -y {}", missing.join(", "), missing.join(" "));
    }
    println!("setup: installing Debian packages {}", missing.join(" "));
    status(Command::new("apt-get").arg("update").arg("-q"))?;
    status(Command::new("apt-get").args(["install", "-y", "-q"]).args(&missing).env("DEBIAN_FRONTEND", "noninteractive"))
}

pub fn nix_is_root() -> bool {
    output(Command::new("id").arg("-u")).is_ok_and(|s| s.trim() == "0")
}
