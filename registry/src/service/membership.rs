//! Raft membership changes: add a registry node (once it has caught up), remove one.
//!
//! Changes run one at a time: concurrent ones interleave in openraft and can leave the
//! cluster in a joint configuration.

use std::collections::BTreeSet;

use openraft::ChangeMembers;
use openraft::errors::{ClientWriteError, RaftError};
use openraft::impls::BasicNode;
use openraft::type_config::async_runtime::WatchReceiver;
use shoal_proto::errno::{Errno, FsError};
use shoal_proto::registry as pb;
use tonic::Status;

use super::RegistryCore;
use crate::raft::{NodeId, TypeConfig};

/// How long a new member may take to receive the leader's log before it is refused.
const CATCH_UP_TIMEOUT_MS: u64 = 60_000;

pub struct MembershipChanges {
    core: RegistryCore,
    serial: tokio::sync::Mutex<()>,
}

impl MembershipChanges {
    pub fn new(core: RegistryCore) -> MembershipChanges {
        MembershipChanges {
            core,
            serial: tokio::sync::Mutex::new(()),
        }
    }

    pub fn members(&self) -> pb::MembersReply {
        let metrics = self.core.raft.metrics().borrow_watched().clone();
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let matched = metrics.replication.clone().unwrap_or_default();
        let members = membership
            .nodes()
            .map(|(id, node)| pb::Member {
                node_id: *id,
                address: node.addr.clone(),
                role: if voters.contains(id) {
                    pb::MemberRole::Voter
                } else {
                    pb::MemberRole::Learner
                } as i32,
                matched_index: matched.get(id).and_then(|log_id| log_id.as_ref().map(|l| l.index)),
            })
            .collect();
        pb::MembersReply {
            leader_id: metrics.current_leader,
            members,
        }
    }

    /// Waits until the leader has replicated its whole log to `node_id` (bounded).
    async fn wait_caught_up(&self, node_id: NodeId) -> Result<(), Status> {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_millis(CATCH_UP_TIMEOUT_MS);
        let mut metrics = self.core.raft.metrics();
        loop {
            let (target, matched) = {
                let current = metrics.borrow_watched();
                let matched = current
                    .replication
                    .as_ref()
                    .and_then(|replication| replication.get(&node_id).cloned().flatten())
                    .map(|log_id| log_id.index);
                (current.last_log_index, matched)
            };
            if matched.is_some() && matched >= target {
                return Ok(());
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(Status::failed_precondition(format!(
                    "registry node {node_id} did not catch up with the leader within {CATCH_UP_TIMEOUT_MS} ms \
                     (replicated up to {matched:?} of {target:?}); check that it is running and reachable, then add it again"
                )));
            }
            let wait = (deadline - now).min(std::time::Duration::from_millis(200));
            let _ = tokio::time::timeout(wait, metrics.changed()).await;
        }
    }

    fn membership_error(&self, error: RaftError<TypeConfig, ClientWriteError<TypeConfig>>) -> Status {
        match error {
            RaftError::APIError(ClientWriteError::ForwardToLeader(forward))
            | RaftError::APIError(ClientWriteError::LogEntryDiscarded(forward)) => self.core.not_leader(&forward),
            RaftError::APIError(ClientWriteError::ChangeMembershipError(error)) => {
                Status::failed_precondition(error.to_string())
            }
            other => Status::internal(other.to_string()),
        }
    }

    pub async fn add(&self, node_id: NodeId, address: String) -> Result<pb::MembersReply, Status> {
        if address.is_empty() || address.len() > crate::limits::MAX_LABEL_BYTES {
            return Err(FsError::new(Errno::EINVAL, format!("invalid member address {address:?}")).into());
        }
        let _serial = self.serial.lock().await;
        self.core.require_leader()?;
        let existing = self
            .core
            .raft
            .metrics()
            .borrow_watched()
            .membership_config
            .membership()
            .get_node(&node_id)
            .cloned();
        match existing {
            Some(node) if node.addr != address => {
                return Err(Status::already_exists(format!(
                    "registry node {node_id} is already a member at {}; node ids are never reused, pick a new id",
                    node.addr
                )));
            }
            Some(_) => {}
            None => {
                tracing::info!(node_id, %address, "adding registry member as learner");
                let node = BasicNode { addr: address.clone() };
                self.core
                    .raft
                    .add_learner(node_id, node, false)
                    .await
                    .map_err(|e| self.membership_error(e))?;
            }
        }
        if let Err(status) = self.wait_caught_up(node_id).await {
            // A voter that cannot be reached only weakens the quorum: take the learner out.
            let _ = self
                .core
                .raft
                .change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([node_id])), false)
                .await;
            return Err(status);
        }
        let is_voter = self
            .core
            .raft
            .metrics()
            .borrow_watched()
            .membership_config
            .membership()
            .voter_ids()
            .any(|id| id == node_id);
        if !is_voter {
            tracing::info!(node_id, "promoting registry member to voter");
            self.core
                .raft
                .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([node_id])), false)
                .await
                .map_err(|e| self.membership_error(e))?;
        }
        Ok(self.members())
    }

    pub async fn remove(&self, node_id: NodeId) -> Result<pb::MembersReply, Status> {
        let _serial = self.serial.lock().await;
        self.core.require_leader()?;
        let membership = self.core.raft.metrics().borrow_watched().membership_config.clone();
        let voters: BTreeSet<NodeId> = membership.membership().voter_ids().collect();
        if membership.membership().get_node(&node_id).is_none() {
            return Err(FsError::new(Errno::ENOENT, format!("registry node {node_id} is not a member")).into());
        }
        let change = if voters.contains(&node_id) {
            if voters.len() == 1 {
                return Err(Status::failed_precondition(format!(
                    "registry node {node_id} is the last voter; add another member first"
                )));
            }
            ChangeMembers::RemoveVoters(BTreeSet::from([node_id]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([node_id]))
        };
        tracing::info!(node_id, "removing registry member");
        self.core
            .raft
            .change_membership(change, false)
            .await
            .map_err(|e| self.membership_error(e))?;
        Ok(self.members())
    }
}
