//! The `fulcrum` command: run the daemon, check a configuration, show stats.
use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use fulcrum_config as config;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(name = "fulcrum", version, about = "Kernel-assisted L4/L7 load balancer")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the load balancer (needs root). SIGHUP reloads the configuration.
    Run {
        /// The TOML configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a configuration file; print every error with line and column.
    CheckConfig {
        file: PathBuf,
    },
    /// Show per-VIP and per-backend counters of a running daemon.
    Stats {
        /// The daemon's admin API address (`[admin] listen`).
        #[arg(long, default_value = config::DEFAULT_ADMIN_LISTEN)]
        admin: SocketAddr,
        /// Print the raw JSON of `GET /stats`.
        #[arg(long)]
        json: bool,
    },
    /// On a real behind `forwarding = "ipip"` VIPs: strip the outer IPIP /
    /// IP6IP6 header of packets to these VIPs in XDP (needs root; runs
    /// until SIGINT/SIGTERM, then detaches). The real holds the VIPs on `lo`.
    Decap {
        /// The interface the tunnelled packets arrive on.
        #[arg(long)]
        interface: String,
        /// A VIP address to accept (repeat for more).
        #[arg(long = "vip", required = true)]
        vips: Vec<std::net::IpAddr>,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("fulcrum: starting the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.cmd {
            Cmd::Run { config } => fulcrum::control::run(config).await,
            Cmd::CheckConfig { file } => {
                let config = config::load(&file)?;
                let backends: usize = config.pools.iter().map(|p| p.backends.len()).sum();
                println!(
                    "{}: OK ({} VIPs, {} pools, {} backends)",
                    file.display(),
                    config.vips.len(),
                    config.pools.len(),
                    backends
                );
                Ok(())
            }
            Cmd::Decap { interface, vips } => fulcrum::decap::run(&interface, &vips).await,
            Cmd::Stats { admin: address, json } => {
                let report = fulcrum_api::fetch_stats(address).await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&report)?);
                } else {
                    print!("{}", fulcrum_api::render(&report));
                }
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("fulcrum: {err:#}");
            ExitCode::FAILURE
        }
    }
}
