//! The receiving side of Raft messages: the `RaftPeer` gRPC service of one node.

use std::io::Write;

use futures::StreamExt;
use shoal_proto::registry::raft_peer_server::RaftPeer;
use shoal_proto::registry::{RaftMessage, SnapshotChunk};
use tonic::{Request, Response, Status, Streaming};

use super::snapshot_file::SnapshotData;
use super::state_machine::StateHandle;
use super::{NodeId, Raft, Snapshot, SnapshotMeta, Vote, decode, encode};

/// Largest snapshot a node accepts from a peer (a bound on disk used by one transfer).
const MAX_SNAPSHOT_BYTES: u64 = 64 << 30;

pub struct PeerService {
    node_id: NodeId,
    raft: Raft,
    state: StateHandle,
}

impl PeerService {
    pub fn new(node_id: NodeId, raft: Raft, state: StateHandle) -> PeerService {
        PeerService { node_id, raft, state }
    }

    fn check_target(&self, target: NodeId) -> Result<(), Status> {
        if target == self.node_id {
            return Ok(());
        }
        Err(Status::failed_precondition(format!(
            "this is registry node {}, not node {target}; the peer's address list is out of date",
            self.node_id
        )))
    }

    fn decode<T: serde::de::DeserializeOwned>(&self, message: &RaftMessage, what: &str) -> Result<T, Status> {
        self.check_target(message.target_node_id)?;
        decode(&message.payload, what).map_err(|e| Status::invalid_argument(e.to_string()))
    }

    fn reply<T: serde::Serialize>(&self, value: &T) -> Response<RaftMessage> {
        Response::new(RaftMessage {
            target_node_id: self.node_id,
            payload: encode(value).into(),
        })
    }
}

fn internal(what: &str, error: impl std::fmt::Display) -> Status {
    Status::internal(format!("{what}: {error}"))
}

#[tonic::async_trait]
impl RaftPeer for PeerService {
    async fn append_entries(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let rpc = self.decode(request.get_ref(), "append-entries request")?;
        let reply = self
            .raft
            .append_entries(rpc)
            .await
            .map_err(|e| internal("append entries", e))?;
        Ok(self.reply(&reply))
    }

    async fn vote(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let rpc = self.decode(request.get_ref(), "vote request")?;
        let reply = self.raft.vote(rpc).await.map_err(|e| internal("vote", e))?;
        Ok(self.reply(&reply))
    }

    async fn pre_vote(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let rpc = self.decode(request.get_ref(), "pre-vote request")?;
        let reply = self.raft.pre_vote(rpc).await.map_err(|e| internal("pre-vote", e))?;
        Ok(self.reply(&reply))
    }

    async fn install_snapshot(
        &self,
        request: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<RaftMessage>, Status> {
        let mut stream = request.into_inner();
        let header = stream
            .next()
            .await
            .ok_or_else(|| Status::invalid_argument("empty snapshot stream"))??;
        self.check_target(header.target_node_id)?;
        let (vote, meta): (Vote, SnapshotMeta) =
            decode(&header.payload, "snapshot header").map_err(|e| Status::invalid_argument(e.to_string()))?;
        // Received into a file of its own: an install from any file but the node's current
        // snapshot is what `StateHandle::snapshots_received` counts (a restore at start reads
        // the current one).
        let path = self.state.temporary_snapshot_path("incoming");
        let received = async {
            let mut file = std::fs::File::create(&path).map_err(|e| internal("create snapshot file", e))?;
            let mut total_bytes = 0u64;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk?;
                total_bytes += chunk.data.len() as u64;
                if total_bytes > MAX_SNAPSHOT_BYTES {
                    return Err(Status::resource_exhausted(format!(
                        "snapshot exceeds {MAX_SNAPSHOT_BYTES} bytes"
                    )));
                }
                file.write_all(&chunk.data)
                    .map_err(|e| internal("write snapshot file", e))?;
            }
            file.sync_all().map_err(|e| internal("sync snapshot file", e))?;
            Ok(())
        }
        .await;
        if let Err(status) = received {
            let _ = std::fs::remove_file(&path);
            return Err(status);
        }
        let data = SnapshotData::open(&path).map_err(|e| internal("open snapshot file", e))?;
        let snapshot = Snapshot { meta, snapshot: data };
        // The file is renamed into place if installed and deleted with its handle if not.
        let reply = self
            .raft
            .install_full_snapshot(vote, snapshot)
            .await
            .map_err(|e| internal("install snapshot", e))?;
        Ok(self.reply(&reply))
    }
}
