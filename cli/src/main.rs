//! `shoal`: one binary for every role and every admin task, so one container image serves
//! every pod and one install serves every node.

mod format;
mod registry_cmd;
mod status_cmd;
mod volume_cmd;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "shoal",
    version,
    about = "Shoal: a distributed file system without a single entry point"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where the registry is, for every command that talks to it.
#[derive(clap::Args, Clone, Debug)]
pub struct RegistryAddress {
    /// Registry nodes, comma-separated host:port (any one reachable node is enough).
    #[arg(long = "registry", env = "SHOAL_REGISTRY", value_name = "ADDRS")]
    pub registry: String,
}

impl RegistryAddress {
    pub fn client(&self) -> anyhow::Result<shoal_client::RegistryClient> {
        let addresses = self
            .registry
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(str::to_string)
            .collect::<Vec<_>>();
        Ok(shoal_client::RegistryClient::new(addresses)?)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run a registry node, or manage registry membership.
    Registry(registry_cmd::RegistryCommand),
    /// Create, list, inspect and delete volumes.
    Volume(volume_cmd::VolumeCommand),
    /// Show the cluster: leader, members, data services, volumes.
    Status(status_cmd::StatusCommand),
}

fn init_logging(default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SHOAL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let daemon = matches!(&cli.command, Command::Registry(command) if command.runs_node());
    // openraft narrates every election tick at info level; keep its warnings only.
    init_logging(if daemon { "info,openraft=warn" } else { "warn" });
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("shoal: cannot start the async runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Registry(command) => command.run().await,
            Command::Volume(command) => command.run().await,
            Command::Status(command) => command.run().await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("shoal: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Resolves when the process is asked to stop (Ctrl-C or SIGTERM).
pub async fn stop_signal() {
    let mut terminate = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(signal) => signal,
        Err(error) => {
            tracing::warn!(%error, "cannot watch SIGTERM; only Ctrl-C stops this process");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}
