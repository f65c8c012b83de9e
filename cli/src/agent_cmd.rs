//! `shoal agent`: the node's mount agent (every Shoal FUSE mount of the node, one memory
//! budget), and `shoal agent status` to see what it serves.

use std::path::PathBuf;
use std::time::Duration;

use shoal_fuse::agent::AgentConfig;

use crate::{RegistryAddress, format};

/// Where the agent listens unless told otherwise; the CSI node plugin's default too.
pub const DEFAULT_AGENT_SOCKET: &str = "/run/shoal/agent.sock";

#[derive(clap::Args)]
pub struct AgentCommand {
    #[command(subcommand)]
    action: Option<AgentAction>,
    /// The unix socket the agent listens on (root only).
    #[arg(long, default_value = DEFAULT_AGENT_SOCKET, global = true)]
    socket: PathBuf,
    /// Memory all mounts share for write-back buffers and read-ahead caches.
    #[arg(long, value_parser = format::parse_size, default_value = "1G")]
    memory_budget: u64,
    /// Write-back memory each mount keeps for itself, whatever the others use.
    #[arg(long, value_parser = format::parse_size, default_value = "16M")]
    write_floor: u64,
    /// Read-ahead cache of each mount.
    #[arg(long, value_parser = format::parse_size, default_value = "64M")]
    read_cache: u64,
    /// Retry budget of every registry and data-service call of a mount (then EIO).
    #[arg(long, default_value_t = 60)]
    retry_timeout_s: u64,
    /// Registry nodes, comma-separated host:port (needed to run the agent, not for status).
    #[arg(long = "registry", env = "SHOAL_REGISTRY", value_name = "ADDRS")]
    registry: Option<String>,
}

#[derive(clap::Subcommand)]
enum AgentAction {
    /// Show the mounts a running agent serves and its memory use.
    Status,
}

impl AgentCommand {
    pub fn runs_daemon(&self) -> bool {
        self.action.is_none()
    }

    pub async fn run(self) -> anyhow::Result<()> {
        if let Some(AgentAction::Status) = self.action {
            return status(&self.socket).await;
        }
        let registry = self
            .registry
            .map(|registry| RegistryAddress { registry }.addresses())
            .filter(|addresses| !addresses.is_empty())
            .ok_or_else(|| anyhow::anyhow!("the agent needs --registry ADDRS (or SHOAL_REGISTRY)"))?;
        let config = AgentConfig {
            socket: self.socket,
            registry,
            budget_bytes: self.memory_budget,
            write_floor_bytes: self.write_floor,
            read_cache_bytes: self.read_cache,
            retry_deadline: Duration::from_secs(self.retry_timeout_s),
        };
        shoal_fuse::agent::serve(config, crate::stop_signal()).await
    }
}

async fn status(socket: &std::path::Path) -> anyhow::Result<()> {
    let mut agent = shoal_proto::agent::agent_client::AgentClient::new(shoal_client::unix::channel(socket));
    let reply = agent
        .status(shoal_proto::agent::StatusRequest {})
        .await
        .map_err(|status| anyhow::anyhow!("no agent answers at {}: {}", socket.display(), status.message()))?
        .into_inner();
    println!(
        "agent {}: budget {}, reserved {}, write-back in use {}, resident memory {}",
        reply.version,
        format::bytes(reply.budget_bytes),
        format::bytes(reply.reserved_bytes),
        format::bytes(reply.in_use_bytes),
        format::bytes(reply.rss_bytes)
    );
    let mut table = format::table(&["volume", "mount point", "reserved", "write-back", "limit", "read cache"]);
    for mount in reply.mounts {
        table.add_row(vec![
            mount.volume,
            mount.mountpoint,
            format::bytes(mount.reserved_bytes),
            format::bytes(mount.write_buffer_bytes),
            format::bytes(mount.write_buffer_limit_bytes),
            format::bytes(mount.read_cache_bytes),
        ]);
    }
    println!("{table}");
    Ok(())
}
