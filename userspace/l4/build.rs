//! Builds the XDP programs (`xdp-ebpf/`, nightly, `bpfel-unknown-none`)
//! and embeds `fulcrum-xdp`, so `fulcrum` is a single binary whose object
//! always matches its sources.
//!
//! Without the eBPF toolchain (the nightly with `rust-src`, and
//! `bpf-linker`; `cargo xtask setup` installs both) an empty stub is
//! embedded instead, as aya-template does, so `cargo check`, clippy and
//! the unit tests of user space work anywhere; `Datapath::load` then fails
//! with a clear error. With the toolchain present, a failing eBPF build
//! fails this build.
//!
//! The programs go to `target/ebpf/` (their own target directory: a nested
//! cargo on the outer build's directory would wait forever for its lock),
//! where `cargo xtask build-ebpf` puts them too and the lab finds the pass
//! program. `FULCRUM_XDP_OBJECT` overrides all this with a prebuilt object.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=FULCRUM_XDP_OBJECT");
    let object = match std::env::var_os("FULCRUM_XDP_OBJECT") {
        Some(path) => {
            println!("cargo:rerun-if-changed={}", PathBuf::from(&path).display());
            PathBuf::from(path)
        }
        None => {
            // The manifest directory of this run, not of the build that
            // compiled this script (`env!`): a build script binary reused
            // from another checkout's target directory (a copied or
            // hard-linked `target/`) would otherwise build and embed that
            // checkout's eBPF object.
            let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR for build scripts");
            let root = PathBuf::from(manifest_dir).join("../..");
            for source in ["xdp-ebpf/src", "xdp-ebpf/Cargo.toml", "xdp-ebpf/Cargo.lock", "common/src", "common/Cargo.toml"] {
                println!("cargo:rerun-if-changed={}", root.join(source).display());
            }
            match missing_toolchain() {
                None => build_ebpf(&root),
                Some(missing) => return embed_stub(&missing),
            }
        }
    };
    if !object.is_file() {
        panic!("the eBPF object {} is missing", object.display());
    }
    println!("cargo:rustc-env=FULCRUM_XDP_OBJECT={}", object.display());
    // The decap program (`fulcrum decap`) is its own object, built beside
    // the datapath's; a prebuilt datapath object without one beside it
    // gets a stub, which `Decap::load` reports.
    let decap = object.with_file_name("fulcrum-xdp-decap");
    let decap = if decap.is_file() { decap } else { stub("fulcrum-xdp-decap.stub") };
    println!("cargo:rustc-env=FULCRUM_XDP_DECAP_OBJECT={}", decap.display());
}

/// An empty file in OUT_DIR, embedded where an object is missing.
fn stub(name: &str) -> PathBuf {
    let stub = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join(name);
    std::fs::write(&stub, b"").expect("writing the eBPF stub into OUT_DIR");
    stub
}

/// What of the eBPF toolchain is absent, if anything.
fn missing_toolchain() -> Option<String> {
    let sysroot = Command::new("rustc").env_remove("RUSTUP_TOOLCHAIN").args(["+nightly", "--print", "sysroot"]).output();
    let sysroot = match sysroot {
        Ok(out) if out.status.success() => PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()),
        _ => return Some("the nightly toolchain".into()),
    };
    if !sysroot.join("lib/rustlib/src/rust/library/core").is_dir() {
        return Some("the nightly's rust-src component".into());
    }
    if !Command::new("bpf-linker").arg("--version").output().is_ok_and(|out| out.status.success()) {
        return Some("bpf-linker".into());
    }
    None
}

/// Builds every XDP program into `target/ebpf`; the path of `fulcrum-xdp`.
fn build_ebpf(root: &Path) -> PathBuf {
    let target_dir = root.join("target/ebpf");
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root.join("xdp-ebpf"))
        .args(["+nightly", "build", "--release", "--locked", "--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(&target_dir);
    // The outer cargo configures this script's environment for the host
    // build (toolchain, flags, jobserver); none of it applies to the nested
    // nightly build for another target.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        let keep = key == "CARGO_HOME" || key == "RUSTUP_HOME";
        if !keep && (key.starts_with("CARGO") || key.starts_with("RUST") || key == "OUT_DIR" || key == "TARGET" || key == "HOST" || key == "PROFILE" || key == "OPT_LEVEL" || key == "DEBUG") {
            cmd.env_remove(key.as_ref());
        }
    }
    let status = cmd.status().unwrap_or_else(|e| panic!("starting the eBPF build {cmd:?}: {e}"));
    if !status.success() {
        panic!("building the XDP programs failed ({status}): {cmd:?}");
    }
    target_dir.join("bpfel-unknown-none/release/fulcrum-xdp")
}

/// Embeds an empty object; `Datapath::load` reports it at run time.
fn embed_stub(missing: &str) {
    let stub = stub("fulcrum-xdp.stub");
    println!(
        "cargo:warning={missing} is missing: fulcrum embeds an empty eBPF stub and cannot load its datapath \
         (`cargo xtask setup` installs the eBPF toolchain)"
    );
    println!("cargo:rustc-env=FULCRUM_XDP_OBJECT={}", stub.display());
    println!("cargo:rustc-env=FULCRUM_XDP_DECAP_OBJECT={}", self::stub("fulcrum-xdp-decap.stub").display());
}
