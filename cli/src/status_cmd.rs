//! `shoal status`: the whole cluster at a glance, or as JSON for scripts.

use shoal_proto::registry as pb;

use crate::chain_cmd::{chain_json, waiting_line};
use crate::registry_cmd::{members_json, members_table};
use crate::volume_cmd::{volume_json, volumes_table};
use crate::{RegistryAddress, format};

#[derive(clap::Args)]
pub struct StatusCommand {
    #[command(flatten)]
    registry: RegistryAddress,
    /// Print JSON (includes `leader_id`) instead of tables.
    #[arg(long)]
    json: bool,
}

fn state_name(state: i32) -> &'static str {
    match pb::DataServiceState::try_from(state) {
        Ok(pb::DataServiceState::Up) => "up",
        Ok(pb::DataServiceState::Down) => "down",
        Ok(pb::DataServiceState::Draining) => "draining",
        Ok(pb::DataServiceState::Removed) => "removed",
        _ => "unknown",
    }
}

fn data_service_json(service: &pb::DataService) -> serde_json::Value {
    serde_json::json!({
        "id": service.id,
        "uuid": service.uuid,
        "address": service.address,
        "zone": service.zone,
        "state": state_name(service.state),
        "last_heartbeat_age_ms": service.last_heartbeat_age_ms,
        "capacity_bytes": service.disks.iter().map(|d| d.capacity_bytes).sum::<u64>(),
        "free_bytes": service.disks.iter().map(|d| d.free_bytes).sum::<u64>(),
        "disks": service.disks.iter().map(|d| serde_json::json!({
            "path": d.path, "capacity_bytes": d.capacity_bytes, "free_bytes": d.free_bytes, "healthy": d.healthy,
        })).collect::<Vec<_>>(),
    })
}

/// The answering node's log and snapshot figures (what makes the log bounded and the
/// group commit visible).
fn raft_json(status: &pb::StatusReply) -> serde_json::Value {
    serde_json::json!({
        "snapshot_last_index": status.snapshot_last_index,
        "last_purged_log_index": status.last_purged_log_index,
        "snapshots_received_from_leader": status.snapshots_received_from_leader,
        "snapshots_restored_at_start": status.snapshots_restored_at_start,
        "log_entries_appended": status.log_entries_appended,
        "log_fsyncs": status.log_fsyncs,
    })
}

impl StatusCommand {
    pub async fn run(self) -> anyhow::Result<()> {
        let client = self.registry.client()?;
        let status = client.status(pb::Empty {}).await?;
        let chains = client.get_chain_table(pb::Empty {}).await?.chains;
        let waiting: Vec<&pb::Chain> = chains.iter().filter(|c| waiting_line(c).is_some()).collect();
        let members = pb::MembersReply {
            leader_id: status.leader_id,
            members: status.members.clone(),
        };
        if self.json {
            let json = serde_json::json!({
                "node_id": status.node_id,
                "leader_id": status.leader_id,
                "leader_address": status.leader_address,
                "term": status.term,
                "last_log_index": status.last_log_index,
                "last_applied_index": status.last_applied_index,
                "members": members_json(&members)["members"],
                "data_services": status.data_services.iter().map(data_service_json).collect::<Vec<_>>(),
                "volumes": status.volumes.iter().map(volume_json).collect::<Vec<_>>(),
                "chain_table_version": status.chain_table_version,
                "chain_count": status.chain_count,
                "waiting_chains": waiting.iter().map(|c| chain_json(c)).collect::<Vec<_>>(),
                "raft": raft_json(&status),
            });
            println!("{}", serde_json::to_string_pretty(&json)?);
            return Ok(());
        }
        println!(
            "leader: node {} at {} (term {}, log index {}, applied {})",
            status.leader_id.map_or("none".into(), |id| id.to_string()),
            status.leader_address,
            status.term,
            status.last_log_index,
            status.last_applied_index
        );
        let optional = |index: Option<u64>| index.map_or("none".to_string(), |i| i.to_string());
        println!(
            "answered by node {}: log purged through {}, snapshot at {}; {} log entries with {} fsyncs since start",
            status.node_id,
            optional(status.last_purged_log_index),
            optional(status.snapshot_last_index),
            status.log_entries_appended,
            status.log_fsyncs
        );
        println!("\nregistry members\n{}", members_table(&members));
        let mut services = format::table(&[
            "data service",
            "address",
            "zone",
            "state",
            "heartbeat",
            "free",
            "capacity",
        ]);
        for service in &status.data_services {
            services.add_row(vec![
                service.id.to_string(),
                service.address.clone(),
                service.zone.clone(),
                state_name(service.state).to_string(),
                service
                    .last_heartbeat_age_ms
                    .map_or("never".into(), |ms| format!("{ms} ms ago")),
                format::bytes(service.disks.iter().map(|d| d.free_bytes).sum()),
                format::bytes(service.disks.iter().map(|d| d.capacity_bytes).sum()),
            ]);
        }
        println!("\ndata services\n{services}");
        println!(
            "\nchains: {} (table version {})",
            status.chain_count, status.chain_table_version
        );
        for line in waiting.iter().filter_map(|c| waiting_line(c)) {
            println!("  {line}");
        }
        println!("\nvolumes\n{}", volumes_table(&status.volumes));
        Ok(())
    }
}
