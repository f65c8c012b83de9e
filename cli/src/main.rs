//! `shoal`: one binary for every role and every admin task, so one container image serves
//! every pod and one install serves every node.

mod agent_cmd;
mod chain_cmd;
mod csi_cmd;
mod data_cmd;
mod files_cmd;
mod format;
mod gateway_cmd;
mod mount_cmd;
mod registry_cmd;
mod status_cmd;
mod up_cmd;
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
    pub fn addresses(&self) -> Vec<String> {
        self.registry
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(str::to_string)
            .collect()
    }

    pub fn client(&self) -> anyhow::Result<shoal_client::RegistryClient> {
        Ok(shoal_client::RegistryClient::new(self.addresses())?)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run a registry node, or manage registry membership.
    Registry(registry_cmd::RegistryCommand),
    /// Create, list, inspect and delete volumes.
    Volume(volume_cmd::VolumeCommand),
    /// List chains; resume one that waits for lost members.
    Chain(chain_cmd::ChainCommand),
    /// Show the cluster: leader, members, data services, volumes.
    Status(status_cmd::StatusCommand),
    /// Run a data service.
    Data(data_cmd::DataCommand),
    /// Start a complete local Shoal (registry, data services, a volume) under one directory.
    Up(up_cmd::UpCommand),
    /// Copy files between local paths and shoal://VOLUME/PATH.
    Cp(files_cmd::CpCommand),
    /// List a directory of a volume (shoal://VOLUME/PATH).
    Ls(files_cmd::LsCommand),
    /// Write a file of a volume (shoal://VOLUME/PATH) to standard output.
    Cat(files_cmd::CatCommand),
    /// Mount a volume through FUSE (unmount with `umount DIR`).
    Mount(mount_cmd::MountCommand),
    /// Relay clients' data-service connections through this host (`-o gateway=` mounts).
    Gateway(gateway_cmd::GatewayCommand),
    /// Run the node's mount agent: every Shoal mount of the node in one process, one budget.
    Agent(agent_cmd::AgentCommand),
    /// Run the Kubernetes CSI driver (controller or node role).
    Csi(csi_cmd::CsiCommand),
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
    let daemon = match &cli.command {
        Command::Registry(command) => command.runs_node(),
        Command::Data(_) | Command::Up(_) | Command::Gateway(_) | Command::Csi(_) => true,
        Command::Agent(command) => command.runs_daemon(),
        Command::Mount(command) => command.runs_daemon(),
        _ => false,
    };
    if !daemon {
        // Commands that print for a pipeline end quietly when the reader goes away
        // (`shoal status | head`), as Unix tools do. Sockets are unaffected: Rust writes
        // them with MSG_NOSIGNAL.
        // SAFETY: no other thread exists yet, and SIG_DFL installs no handler code.
        unsafe {
            let _ = nix::sys::signal::signal(nix::sys::signal::Signal::SIGPIPE, nix::sys::signal::SigHandler::SigDfl);
        }
    }
    // openraft narrates every election tick at info level; keep its warnings only.
    init_logging(if daemon { "info,openraft=warn" } else { "warn" });
    // The mount builds its own runtime (its FUSE session blocks a thread); run it outside.
    let cli = match cli.command {
        Command::Mount(command) => {
            return match command.run() {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("shoal: {error:#}");
                    std::process::ExitCode::FAILURE
                }
            };
        }
        command => Cli { command },
    };
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
            Command::Chain(command) => command.run().await,
            Command::Status(command) => command.run().await,
            Command::Data(command) => command.run().await,
            Command::Up(command) => command.run().await,
            Command::Cp(command) => command.run().await,
            Command::Ls(command) => command.run().await,
            Command::Cat(command) => command.run().await,
            Command::Gateway(command) => command.run().await,
            Command::Agent(command) => command.run().await,
            Command::Csi(command) => command.run().await,
            Command::Mount(_) => unreachable!("mount runs outside the shared runtime"),
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
