//! `cargo xtask lab up|down`: the namespace lab (see the `fulcrum-lab`
//! crate) as a long-lived playground. `up` leaves it running after this
//! process exits; `down` removes it by its prefix.
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Result;
use clap::Subcommand;
use fulcrum_lab::{host4, host6, Lab, REALS, VIP4, VIP6};

/// The prefix of the lab's namespaces unless `--prefix` says otherwise.
const DEFAULT_PREFIX: &str = "fulcrum";

#[derive(Subcommand, Clone)]
pub enum Action {
    /// Create the namespaces, bridge, veths and start the backends.
    Up {
        /// Namespaces are named `{prefix}-sw`, `{prefix}-client`, `{prefix}-lb`...
        #[arg(long, default_value = DEFAULT_PREFIX)]
        prefix: String,
    },
    /// Stop the backends and remove the namespaces.
    Down {
        /// The prefix the lab was brought up with.
        #[arg(long, default_value = DEFAULT_PREFIX)]
        prefix: String,
    },
}

/// `cargo xtask lab up|down` for the workspace at `root`.
pub fn run(root: &Path, action: Action) -> Result<()> {
    match action {
        Action::Up { prefix } => {
            let backend = build_backend(root)?;
            let lab = Lab::up_with_backend(&prefix, &backend)?;
            print_topology(&lab, root);
            lab.keep();
            Ok(())
        }
        Action::Down { prefix } => {
            Lab::down_by_prefix(&prefix)?;
            println!("lab {prefix}: removed");
            Ok(())
        }
    }
}

/// Builds the release `fulcrum-backend` (the lab's reals run it) and
/// returns its path.
pub fn build_backend(root: &Path) -> Result<PathBuf> {
    // The lab attaches the pass program from the eBPF build to its veths.
    crate::build::ebpf(root)?;
    crate::build::status(Command::new("cargo").current_dir(root).args([
        "build", "--release", "--quiet", "-p", "fulcrum-lab", "--bin", "fulcrum-backend",
    ]))?;
    Ok(root.join("target/release/fulcrum-backend"))
}

/// The lab's map and how to use it.
pub fn print_topology(lab: &Lab, root: &Path) {
    println!("lab {} is up: one L2 segment (bridge br0 in {})", lab.prefix(), lab.ns("sw"));
    let hosts = [("client", "wrk, curl"), ("lb", "fulcrum")]
        .into_iter()
        .chain(REALS.iter().map(|r| (*r, "fulcrum-backend :80, VIP on lo")));
    for (host, role) in hosts {
        println!(
            "  {:<20} eth0 {:<13} {:<13} {role}",
            lab.ns(host),
            host4(host).expect("lab host").to_string(),
            host6(host).expect("lab host").to_string(),
        );
    }
    println!("  VIPs {VIP4} and {VIP6}: the client routes them via the lb (L2 DSR)");
    println!();
    println!("enter a host:     ip netns exec {} bash", lab.ns("client"));
    println!(
        "run the balancer: ip netns exec {} {} run --config {}",
        lab.ns("lb"),
        root.join("target/release/fulcrum").display(),
        root.join("lab/demo.toml").display()
    );
    println!("try it:           ip netns exec {} curl -s http://{VIP4}/", lab.ns("client"));
    println!("fail a backend:   touch {}", lab.run_dir().join("real1.unhealthy").display());
    println!("tear it down:     cargo xtask lab down --prefix {}", lab.prefix());
}
