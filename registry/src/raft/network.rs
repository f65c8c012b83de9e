//! Raft messages between registry nodes, over the `RaftPeer` gRPC service.
//!
//! One lazily connected channel per (peer, purpose): openraft asks for separate clients for
//! replication, heartbeats and snapshots, so a large append or snapshot never delays the
//! heartbeat that keeps the leader in office. Messages are postcard-encoded openraft types;
//! every message names the node it is for, and a node refuses messages for another id.

use std::future::Future;
use std::time::Duration;

use openraft::errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Timeout, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse};
use openraft::{AnyError, OptionalSend};
use shoal_proto::registry::raft_peer_client::RaftPeerClient;
use shoal_proto::registry::{RaftMessage, SnapshotChunk};
use tokio::io::AsyncReadExt;
use tonic::transport::{Channel, Endpoint};

use super::snapshot_file::SnapshotData;
use super::{Node, NodeId, Snapshot, TypeConfig, Vote, decode, encode};

/// Size of one piece of a streamed snapshot.
const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;
/// Pieces read ahead of the network while streaming a snapshot.
const SNAPSHOT_READ_AHEAD_CHUNKS: usize = 4;
const CONNECT_TIMEOUT_MS: u64 = 1_000;

/// Creates connections from node `local` to its peers. Cheap to clone.
#[derive(Clone)]
pub struct PeerNetwork {
    pub local: NodeId,
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> PeerConnection {
        PeerConnection::new(self.local, target, &node.addr)
    }
}

pub struct PeerConnection {
    local: NodeId,
    target: NodeId,
    address: String,
    client: Option<RaftPeerClient<Channel>>,
}

impl PeerConnection {
    fn new(local: NodeId, target: NodeId, address: &str) -> PeerConnection {
        let client = Endpoint::from_shared(format!("http://{address}")).ok().map(|endpoint| {
            let channel = endpoint
                .connect_timeout(Duration::from_millis(CONNECT_TIMEOUT_MS))
                .tcp_nodelay(true)
                .connect_lazy();
            RaftPeerClient::new(channel)
                .max_decoding_message_size(shoal_proto::MAX_MESSAGE_SIZE_BYTES)
                .max_encoding_message_size(shoal_proto::MAX_MESSAGE_SIZE_BYTES)
        });
        PeerConnection {
            local,
            target,
            address: address.to_string(),
            client,
        }
    }

    fn client(&self) -> Result<RaftPeerClient<Channel>, RPCError<TypeConfig>> {
        self.client.clone().ok_or_else(|| {
            RPCError::Unreachable(Unreachable::new(&AnyError::error(format!(
                "registry node {} has an invalid address {:?}",
                self.target, self.address
            ))))
        })
    }

    fn message(&self, payload: Vec<u8>, option: &RPCOption) -> tonic::Request<RaftMessage> {
        let mut request = tonic::Request::new(RaftMessage {
            target_node_id: self.target,
            payload: payload.into(),
        });
        request.set_timeout(option.soft_ttl());
        request
    }

    fn rpc_error(&self, status: tonic::Status) -> RPCError<TypeConfig> {
        let error = AnyError::error(format!(
            "registry node {} at {}: {} ({})",
            self.target,
            self.address,
            status.message(),
            status.code()
        ));
        match status.code() {
            tonic::Code::Unavailable | tonic::Code::FailedPrecondition => {
                RPCError::Unreachable(Unreachable::new(&error))
            }
            tonic::Code::DeadlineExceeded => RPCError::Network(NetworkError::new(&error)),
            _ => RPCError::Network(NetworkError::new(&error)),
        }
    }

    fn decode_reply<T: serde::de::DeserializeOwned>(
        &self,
        reply: tonic::Response<RaftMessage>,
        what: &str,
    ) -> Result<T, RPCError<TypeConfig>> {
        decode(&reply.into_inner().payload, what).map_err(|e| RPCError::Network(NetworkError::new(&e)))
    }
}

impl RaftNetworkV2<TypeConfig> for PeerConnection {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        let request = self.message(encode(&rpc), &option);
        let reply = self
            .client()?
            .append_entries(request)
            .await
            .map_err(|s| self.rpc_error(s))?;
        self.decode_reply(reply, "append-entries reply")
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let request = self.message(encode(&rpc), &option);
        let reply = self.client()?.vote(request).await.map_err(|s| self.rpc_error(s))?;
        self.decode_reply(reply, "vote reply")
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let request = self.message(encode(&rpc), &option);
        let reply = self.client()?.pre_vote(request).await.map_err(|s| self.rpc_error(s))?;
        self.decode_reply(reply, "pre-vote reply")
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let client = self.client().map_err(|e| match e {
            RPCError::Unreachable(u) => StreamingError::Unreachable(u),
            other => StreamingError::Network(NetworkError::new(&other)),
        })?;
        let target = self.target;
        let header = SnapshotChunk {
            target_node_id: target,
            payload: encode(&(&vote, &snapshot.meta)).into(),
            data: Default::default(),
        };
        let (sender, receiver) = tokio::sync::mpsc::channel(SNAPSHOT_READ_AHEAD_CHUNKS);
        let data = snapshot.snapshot;
        let path = data.path.clone();
        let mut file = match data.file.try_clone() {
            Ok(file) => tokio::fs::File::from_std(file),
            Err(error) => {
                return Err(StreamingError::Network(NetworkError::new(&AnyError::error(format!(
                    "reading snapshot {}: {error}",
                    path.display()
                )))));
            }
        };
        let reader = tokio::spawn(async move {
            if sender.send(header).await.is_err() {
                return Ok(());
            }
            loop {
                let mut buffer = vec![0u8; SNAPSHOT_CHUNK_BYTES];
                let mut filled = 0;
                while filled < buffer.len() {
                    let read = file.read(&mut buffer[filled..]).await?;
                    if read == 0 {
                        break;
                    }
                    filled += read;
                }
                if filled == 0 {
                    return Ok::<(), std::io::Error>(());
                }
                buffer.truncate(filled);
                let chunk = SnapshotChunk {
                    target_node_id: target,
                    payload: Default::default(),
                    data: buffer.into(),
                };
                if sender.send(chunk).await.is_err() {
                    return Ok(());
                }
            }
        });
        let mut client = client;
        let stream = tokio_stream::wrappers::ReceiverStream::new(receiver);
        let send = async move { client.install_snapshot(stream).await };
        // The whole transfer is bounded; openraft's hard TTL covers one exchange, and a
        // snapshot is many. Allow a generous floor.
        let limit = option.hard_ttl().max(Duration::from_secs(600));
        let outcome = tokio::select! {
            closed = cancel => {
                reader.abort();
                return Err(StreamingError::Closed(closed));
            }
            outcome = tokio::time::timeout(limit, send) => outcome,
        };
        match reader.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                return Err(StreamingError::Network(NetworkError::new(&AnyError::error(format!(
                    "reading snapshot {}: {error}",
                    path.display()
                )))));
            }
            Err(error) => return Err(StreamingError::Network(NetworkError::new(&error))),
        }
        let reply = match outcome {
            Err(_) => {
                return Err(StreamingError::Timeout(Timeout {
                    action: openraft::network::RPCTypes::InstallSnapshot,
                    id: self.local,
                    target,
                    timeout: limit,
                }));
            }
            Ok(Err(status)) => {
                return Err(match self.rpc_error(status) {
                    RPCError::Unreachable(u) => StreamingError::Unreachable(u),
                    other => StreamingError::Network(NetworkError::new(&other)),
                });
            }
            Ok(Ok(reply)) => reply,
        };
        drop(data);
        decode(&reply.into_inner().payload, "snapshot reply")
            .map_err(|e| StreamingError::Network(NetworkError::new(&e)))
    }
}
