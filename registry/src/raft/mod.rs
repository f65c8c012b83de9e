//! openraft glue: type configuration, log storage, state machine, snapshots, networking.
//!
//! Durability story (see ARCHITECTURE.md): the Raft log is the durable record. An entry is
//! acknowledged to the leader only after its log write is fsynced (group commit: one fsync
//! covers every append that arrived meanwhile). The state machine writes without fsync;
//! after a machine crash openraft re-applies committed entries from the log, or installs
//! the last snapshot if the log was purged, so nothing acknowledged is lost.

pub mod log_store;
pub mod network;
pub mod peer_service;
pub mod snapshot_file;
pub mod state_machine;

use std::io;
use std::sync::Arc;

use crate::command::{CommandResult, Proposal};

openraft::declare_raft_types!(
    /// Shoal's Raft type configuration: proposals in, command results out, nodes known by
    /// their gRPC address.
    pub TypeConfig:
        D = Proposal,
        R = CommandResult,
        NodeId = u64,
        Node = openraft::impls::BasicNode,
);

pub type Raft = openraft::Raft<TypeConfig, state_machine::StateMachine>;
pub type NodeId = u64;
pub type Node = openraft::impls::BasicNode;
pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
pub type Entry = openraft::alias::EntryOf<TypeConfig>;
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
pub type Snapshot = openraft::alias::SnapshotOf<TypeConfig, snapshot_file::SnapshotData>;

/// Raft timing and log-retention settings of one registry node.
#[derive(Clone, Debug)]
pub struct RaftTuning {
    pub heartbeat_interval_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Build a snapshot after this many log entries since the last one.
    pub snapshot_every_logs: u64,
    /// Log entries kept behind a snapshot, so slightly lagging followers need no snapshot.
    pub logs_kept_after_snapshot: u64,
}

impl Default for RaftTuning {
    fn default() -> Self {
        // Election timeouts are generous for small, busy machines with real fsync: a
        // missed heartbeat costs an election, which costs every client a retry.
        RaftTuning {
            heartbeat_interval_ms: 100,
            election_timeout_min_ms: 600,
            election_timeout_max_ms: 1200,
            snapshot_every_logs: 20_000,
            logs_kept_after_snapshot: 2_000,
        }
    }
}

impl RaftTuning {
    pub fn to_config(&self) -> anyhow::Result<Arc<openraft::Config>> {
        let config = openraft::Config {
            cluster_name: "shoal-registry".to_string(),
            heartbeat_interval: self.heartbeat_interval_ms,
            election_timeout_min: self.election_timeout_min_ms,
            election_timeout_max: self.election_timeout_max_ms,
            // Bounds the time to send or install one snapshot piece; metadata snapshots are
            // much larger than openraft's 200 ms default assumes.
            install_snapshot_timeout: 60_000,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(self.snapshot_every_logs),
            max_in_snapshot_log_to_keep: self.logs_kept_after_snapshot,
            replication_lag_threshold: self.snapshot_every_logs,
            enable_pre_vote: Some(true),
            ..Default::default()
        };
        Ok(Arc::new(config.validate()?))
    }
}

pub(crate) fn io_error(context: impl std::fmt::Display, error: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("{context}: {error}"))
}

/// Encodes a Raft message or record with postcard (see `records` for the format rules).
pub fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    postcard::to_allocvec(value).expect("raft types always serialize")
}

pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> io::Result<T> {
    postcard::from_bytes(bytes)
        .map_err(|error| io::Error::new(io::ErrorKind::InvalidData, format!("corrupt {what}: {error}")))
}
