//! Embeds the eBPF object built by `cargo xtask build-ebpf`, so `fulcrum`
//! is a single binary. Without the object (no nightly toolchain, a plain
//! `cargo check`, clippy, unit tests) an empty stub is embedded instead, as
//! aya-template does; `Datapath::load` then fails with a clear error.
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=FULCRUM_XDP_OBJECT");
    let object = match std::env::var_os("FULCRUM_XDP_OBJECT") {
        Some(path) => PathBuf::from(path),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/bpfel-unknown-none/release/fulcrum-xdp"),
    };
    // Watching a missing file reruns this script on every build, so the
    // object is picked up as soon as it appears.
    println!("cargo:rerun-if-changed={}", object.display());
    let embedded = if object.is_file() {
        object
    } else {
        let stub = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("fulcrum-xdp.stub");
        std::fs::write(&stub, b"").expect("writing the eBPF stub into OUT_DIR");
        println!(
            "cargo:warning=the eBPF object {} is missing: embedding an empty stub (run `cargo xtask build-ebpf` for a working datapath)",
            object.display()
        );
        stub
    };
    println!("cargo:rustc-env=FULCRUM_XDP_OBJECT={}", embedded.display());
}
