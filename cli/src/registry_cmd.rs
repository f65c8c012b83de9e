//! `shoal registry`: run a registry node; `shoal registry members|add|remove`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, bail};
use shoal_registry::node::{Bootstrap, NodeOptions};
use shoal_registry::raft::RaftTuning;

use crate::{RegistryAddress, format};

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct RegistryCommand {
    #[command(subcommand)]
    action: Option<RegistryAction>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(clap::Args)]
struct RunArgs {
    /// This node's Raft id (a positive number, never reused for another node).
    #[arg(long, required_unless_present = "pod_index")]
    id: Option<u64>,
    /// In a Kubernetes StatefulSet: the pod's ordinal (0, 1, 2 …, the label
    /// apps.kubernetes.io/pod-index); the node's id is the ordinal plus one.
    #[arg(long, value_name = "N", conflicts_with = "id")]
    pod_index: Option<u64>,
    /// Address to serve on, e.g. 0.0.0.0:7000.
    #[arg(long, required = true)]
    listen: Option<SocketAddr>,
    /// Directory for the node's log, state and snapshots.
    #[arg(long, required = true)]
    data: Option<PathBuf>,
    /// Address peers and clients use to reach this node (default: --listen).
    #[arg(long)]
    advertise: Option<String>,
    /// Form a new cluster from the --peer list (safe to repeat on every initial member).
    #[arg(long, requires = "peers", conflicts_with = "join")]
    init: bool,
    /// Initial members, as ID=HOST:PORT, this node included: several after one --peer, or
    /// --peer repeated.
    #[arg(long = "peer", value_name = "ID=ADDR", num_args = 1..)]
    peers: Vec<String>,
    /// Join the cluster reachable at these registry addresses (comma-separated).
    #[arg(long, value_name = "ADDRS")]
    join: Option<String>,
    /// Build a snapshot after this many log entries.
    #[arg(long, default_value_t = RaftTuning::default().snapshot_every_logs)]
    snapshot_every_logs: u64,
    /// Log entries kept behind a snapshot.
    #[arg(long, default_value_t = RaftTuning::default().logs_kept_after_snapshot)]
    logs_kept_after_snapshot: u64,
    /// Raft heartbeat interval.
    #[arg(long, default_value_t = RaftTuning::default().heartbeat_interval_ms)]
    heartbeat_interval_ms: u64,
    /// Shortest Raft election timeout (the longest is twice this).
    #[arg(long, default_value_t = RaftTuning::default().election_timeout_min_ms)]
    election_timeout_ms: u64,
    /// A data service silent for this long is marked down and leaves its chains.
    #[arg(long, default_value_t = shoal_registry::node::DEFAULT_DATA_SERVICE_LEASE_MS)]
    data_service_lease_ms: u64,
}

#[derive(clap::Subcommand)]
enum RegistryAction {
    /// List the registry's Raft members.
    Members {
        #[command(flatten)]
        registry: RegistryAddress,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Add a registry node (started with --join, or empty) as a voting member.
    Add {
        /// The new node's id.
        id: u64,
        /// The new node's address.
        address: String,
        #[command(flatten)]
        registry: RegistryAddress,
    },
    /// Remove a registry node from the cluster.
    Remove {
        id: u64,
        #[command(flatten)]
        registry: RegistryAddress,
    },
}

impl RegistryCommand {
    pub fn runs_node(&self) -> bool {
        self.action.is_none()
    }

    pub async fn run(self) -> anyhow::Result<()> {
        match self.action {
            None => run_node(self.run).await,
            Some(RegistryAction::Members { registry, json }) => {
                let reply = registry.client()?.members(Default::default()).await?;
                print_members(&reply, json)
            }
            Some(RegistryAction::Add { id, address, registry }) => {
                let reply = registry.client()?.add_member(id, &address).await?;
                print_members(&reply, false)
            }
            Some(RegistryAction::Remove { id, registry }) => {
                let reply = registry.client()?.remove_member(id).await?;
                print_members(&reply, false)
            }
        }
    }
}

fn parse_peer(text: &str) -> anyhow::Result<(u64, String)> {
    let (id, address) = text
        .split_once('=')
        .with_context(|| format!("--peer {text:?} must look like ID=HOST:PORT"))?;
    let id: u64 = id
        .trim()
        .parse()
        .with_context(|| format!("--peer {text:?}: {id:?} is not a node id"))?;
    if address.trim().is_empty() {
        bail!("--peer {text:?} has no address");
    }
    Ok((id, address.trim().to_string()))
}

async fn run_node(args: RunArgs) -> anyhow::Result<()> {
    let id = args.id.or(args.pod_index.map(|index| index + 1));
    let (Some(node_id), Some(listen), Some(data_dir)) = (id, args.listen, args.data) else {
        bail!("--id, --listen and --data are required to run a registry node");
    };
    if node_id == 0 {
        bail!("--id must be a positive number");
    }
    let advertise = match args.advertise {
        Some(address) => address,
        None if listen.ip().is_unspecified() => {
            bail!("--listen {listen} is not reachable as such; give --advertise HOST:PORT")
        }
        None => listen.to_string(),
    };
    let bootstrap = if args.init {
        let mut members = BTreeMap::new();
        for peer in &args.peers {
            let (id, address) = parse_peer(peer)?;
            if members.insert(id, address).is_some() {
                bail!("--peer lists node {id} twice");
            }
        }
        Bootstrap::Initialize(members)
    } else if let Some(join) = args.join {
        let seeds: Vec<String> = join
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect();
        if seeds.is_empty() {
            bail!("--join needs at least one registry address");
        }
        Bootstrap::Join(seeds)
    } else {
        if !args.peers.is_empty() {
            bail!("--peer only makes sense with --init");
        }
        Bootstrap::Resume
    };
    let tuning = RaftTuning {
        heartbeat_interval_ms: args.heartbeat_interval_ms,
        election_timeout_min_ms: args.election_timeout_ms,
        election_timeout_max_ms: args.election_timeout_ms * 2,
        snapshot_every_logs: args.snapshot_every_logs,
        logs_kept_after_snapshot: args.logs_kept_after_snapshot,
    };
    let options = NodeOptions {
        node_id,
        listen,
        advertise,
        data_dir,
        bootstrap,
        tuning,
        data_service_lease_ms: args.data_service_lease_ms,
    };
    let node = shoal_registry::node::start(options).await?;
    println!("shoal registry node {node_id} listening on {}", node.local_address);
    crate::stop_signal().await;
    tracing::info!("registry node stopping");
    node.shutdown().await
}

fn role_name(role: i32) -> &'static str {
    match shoal_proto::registry::MemberRole::try_from(role) {
        Ok(shoal_proto::registry::MemberRole::Voter) => "voter",
        Ok(shoal_proto::registry::MemberRole::Learner) => "learner",
        _ => "unknown",
    }
}

pub fn members_json(reply: &shoal_proto::registry::MembersReply) -> serde_json::Value {
    serde_json::json!({
        "leader_id": reply.leader_id,
        "members": reply.members.iter().map(|m| serde_json::json!({
            "node_id": m.node_id,
            "address": m.address,
            "role": role_name(m.role),
            "matched_index": m.matched_index,
        })).collect::<Vec<_>>(),
    })
}

pub fn members_table(reply: &shoal_proto::registry::MembersReply) -> comfy_table::Table {
    let mut table = format::table(&["node", "address", "role", "leader", "matched index"]);
    for member in &reply.members {
        table.add_row(vec![
            member.node_id.to_string(),
            member.address.clone(),
            role_name(member.role).to_string(),
            if reply.leader_id == Some(member.node_id) {
                "*".into()
            } else {
                String::new()
            },
            member.matched_index.map_or("-".into(), |i| i.to_string()),
        ]);
    }
    table
}

fn print_members(reply: &shoal_proto::registry::MembersReply, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(&members_json(reply))?);
    } else {
        println!("{}", members_table(reply));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::{Args, FromArgMatches};

    use super::*;

    const RUN: [&str; 4] = ["--id=1", "--listen=127.0.0.1:7001", "--data=/tmp/r1", "--init"];

    /// Parses `shoal registry` with the node flags in `RUN` followed by `more`.
    fn parse(more: &[&str]) -> Result<RegistryCommand, clap::Error> {
        let command = RegistryCommand::augment_args(clap::Command::new("registry"));
        let args = ["registry"].iter().chain(RUN.iter()).chain(more.iter());
        let matches = command.try_get_matches_from(args)?;
        RegistryCommand::from_arg_matches(&matches)
    }

    #[test]
    fn peers_after_one_flag_or_repeated_are_the_same() {
        let one_flag: &[&str] = &["--peer", "1=127.0.0.1:7001", "2=127.0.0.1:7002", "3=h:7003"];
        let repeated: &[&str] = &[
            "--peer",
            "1=127.0.0.1:7001",
            "--peer=2=127.0.0.1:7002",
            "--peer",
            "3=h:7003",
        ];
        let expected = vec!["1=127.0.0.1:7001", "2=127.0.0.1:7002", "3=h:7003"];
        for args in [one_flag, repeated] {
            let parsed = parse(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
            assert_eq!(parsed.run.peers, expected, "{args:?}");
            assert!(parsed.run.init && parsed.action.is_none());
        }
        // Values after --peer stop at the next flag.
        let parsed = parse(&["--peer", "1=a:1", "2=b:2", "--advertise=a:1"]).expect("parses");
        assert_eq!(parsed.run.peers, vec!["1=a:1", "2=b:2"]);
        assert_eq!(parsed.run.advertise.as_deref(), Some("a:1"));
    }

    #[test]
    fn init_without_peers_is_refused() {
        assert!(parse(&[]).is_err());
        assert!(parse(&["--peer"]).is_err());
    }

    #[test]
    fn peer_values_are_checked() {
        assert_eq!(parse_peer(" 2 = h:1 ").unwrap(), (2, "h:1".to_string()));
        assert!(parse_peer("h:1").is_err());
        assert!(parse_peer("x=h:1").is_err());
        assert!(parse_peer("2=").is_err());
    }
}
