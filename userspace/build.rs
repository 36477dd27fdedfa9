//! Embeds the eBPF object built by `cargo xtask build-ebpf`, so `fulcrum`
//! is a single binary.
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=FULCRUM_XDP_OBJECT");
    let object = match std::env::var_os("FULCRUM_XDP_OBJECT") {
        Some(path) => PathBuf::from(path),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../target/bpfel-unknown-none/release/fulcrum-xdp"),
    };
    println!("cargo:rerun-if-changed={}", object.display());
    if !object.is_file() {
        panic!(
            "the eBPF object {} is missing: run `cargo xtask build-ebpf` first \
             (or set FULCRUM_XDP_OBJECT to its path)",
            object.display()
        );
    }
    println!("cargo:rustc-env=FULCRUM_XDP_OBJECT={}", object.display());
}
