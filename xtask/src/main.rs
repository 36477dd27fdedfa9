//! `cargo xtask`: the developer and operator entry points.
//!
//! setup | build-ebpf | build | run | lab | demo | test | bench
mod build;
mod demo;
mod lab;
mod setup;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Build, run, demo and test fulcrum")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what the build and the lab need (idempotent): the nightly's
    /// rust-src, bpf-linker built on the nightly's LLVM, Debian packages.
    Setup,
    /// Build the eBPF object (embedded into the `fulcrum` binary).
    BuildEbpf,
    /// Build the eBPF object, then every user-space binary (release).
    Build,
    /// Build everything and run `fulcrum ARGS` as root.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Bring the namespace lab up or down.
    Lab {
        #[command(subcommand)]
        action: lab::Action,
    },
    /// The whole story: setup, build, lab, fulcrum, wrk, a failing backend.
    Demo,
    /// Setup, build, then every test in the workspace (what CI runs).
    Test {
        /// Extra arguments for `cargo test`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Benchmarks, recorded in bench/RESULTS.md.
    Bench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    match cli.cmd {
        Cmd::Setup => setup::run(),
        Cmd::BuildEbpf => build::ebpf(&root),
        Cmd::Build => build::all(&root),
        Cmd::Run { args } => build::run(&root, &args),
        Cmd::Lab { action } => lab::run(&root, action),
        Cmd::Demo => demo::run(&root),
        Cmd::Test { args } => build::test(&root, &args),
        Cmd::Bench { args } => build::bench(&root, &args),
    }
}

/// The workspace root: xtask lives one level below it.
fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask has a parent directory")
        .to_path_buf()
}
