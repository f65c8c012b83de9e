//! The gRPC services clients call: [`namespace::NamespaceService`] and [`admin::AdminService`].
//!
//! Both sit on [`RegistryCore`]: writes become Raft proposals; reads wait for a ReadIndex
//! barrier (the leader confirms its leadership with a quorum and the state machine catches
//! up) and then read the local state, so every read is linearizable. A follower answers
//! with the leader's address and the client retries there.

pub mod admin;
mod convert;
pub mod liveness;
mod membership;
pub mod namespace;

use openraft::type_config::async_runtime::WatchReceiver;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use openraft::ReadPolicy;
use openraft::errors::{ClientWriteError, ForwardToLeader, RaftError};
use shoal_engine::KvEngine;
use shoal_proto::leader::{LeaderHint, not_leader_status};
use tonic::Status;

use crate::command::{Command, Outcome, Proposal, RequestId};
use crate::raft::log_store::LogCounters;
use crate::raft::state_machine::StateHandle;
use crate::raft::{NodeId, Raft, TypeConfig};

/// Metadata key carrying a request's identity (`<client hex>-<sequence>`) for retries.
pub const REQUEST_ID_METADATA_KEY: &str = "shoal-request-id";

pub fn now_ns() -> i64 {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since_epoch.as_nanos()).unwrap_or(i64::MAX)
}

/// What every service of one node shares.
#[derive(Clone)]
pub struct RegistryCore {
    pub node_id: NodeId,
    pub raft: Raft,
    pub state: StateHandle,
    pub liveness: Arc<liveness::Liveness>,
    /// The Raft log's group-commit counters (reported by Status).
    pub log_counters: Arc<LogCounters>,
}

fn leader_hint(forward: &ForwardToLeader<TypeConfig>) -> Option<LeaderHint> {
    Some(LeaderHint {
        node_id: forward.leader_id?,
        address: forward.leader_node.as_ref()?.addr.clone(),
    })
}

impl RegistryCore {
    pub fn not_leader(&self, forward: &ForwardToLeader<TypeConfig>) -> Status {
        not_leader_status(self.node_id, leader_hint(forward).as_ref())
    }

    /// Replicates `command` and returns its result once applied on this (leader) node.
    pub async fn propose(&self, command: Command, request_id: Option<RequestId>) -> Result<Outcome, Status> {
        let kind = command.kind();
        let proposal = Proposal {
            request_id,
            now_ns: now_ns(),
            command,
        };
        match self.raft.client_write(proposal).await {
            Ok(response) => response.data.map_err(|error| error.to_status()),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => Err(self.not_leader(&forward)),
            Err(RaftError::APIError(ClientWriteError::LogEntryDiscarded(forward))) => {
                // The entry may still commit under the next leader; the client retries with
                // the same request id and the state machine answers it once.
                Err(self.not_leader(&forward))
            }
            Err(error) => Err(Status::internal(format!(
                "registry node {}: {kind} could not be replicated: {error}",
                self.node_id
            ))),
        }
    }

    /// Waits until this node may serve a linearizable read, and returns the state to read.
    /// A request that asks for a local read gets this node's state at once.
    pub async fn read_barrier<T>(&self, request: &tonic::Request<T>) -> Result<Arc<dyn KvEngine>, Status> {
        if is_local_read(request) {
            return Ok(self.state.engine());
        }
        match self.raft.ensure_linearizable(ReadPolicy::ReadIndex).await {
            Ok(_) => Ok(self.state.engine()),
            Err(RaftError::APIError(openraft::errors::LinearizableReadError::ForwardToLeader(forward))) => {
                Err(self.not_leader(&forward))
            }
            Err(error) => Err(Status::unavailable(format!(
                "registry node {} cannot serve a consistent read now: {error}; retry",
                self.node_id
            ))),
        }
    }

    /// The leader as this node knows it, for redirecting calls that only the leader serves.
    pub fn require_leader(&self) -> Result<(), Status> {
        let metrics = self.raft.metrics().borrow_watched().clone();
        if metrics.current_leader == Some(self.node_id) {
            return Ok(());
        }
        let hint = metrics.current_leader.and_then(|leader| {
            let node = metrics.membership_config.membership().get_node(&leader)?.clone();
            Some(LeaderHint {
                node_id: leader,
                address: node.addr,
            })
        });
        Err(not_leader_status(self.node_id, hint.as_ref()))
    }
}

/// True if the caller asked for a (possibly stale) read of this node's own state.
pub fn is_local_read<T>(request: &tonic::Request<T>) -> bool {
    request
        .metadata()
        .get(shoal_proto::leader::CONSISTENCY_METADATA_KEY)
        .is_some_and(|value| value == shoal_proto::leader::CONSISTENCY_LOCAL)
}

/// The request id a client attached, if any. A malformed one is refused: silently ignoring
/// it would turn a safe retry into a double apply.
pub fn request_id<T>(request: &tonic::Request<T>) -> Result<Option<RequestId>, Status> {
    let Some(value) = request.metadata().get(REQUEST_ID_METADATA_KEY) else {
        return Ok(None);
    };
    let parsed = value.to_str().ok().and_then(|text| {
        let (client, sequence) = text.split_once('-')?;
        Some(RequestId {
            client_id: u64::from_str_radix(client, 16).ok()?,
            sequence: sequence.parse().ok()?,
        })
    });
    parsed
        .map(Some)
        .ok_or_else(|| Status::invalid_argument(format!("malformed {REQUEST_ID_METADATA_KEY} metadata {value:?}")))
}
