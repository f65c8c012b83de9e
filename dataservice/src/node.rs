//! One data service's request handling: chain checks, ordered chain replication of writes,
//! verified reads, whole-chunk copies between chain members, and repair.
//!
//! Chain replication: a client sends a write to the chain's head. The head assigns the
//! chunk's next version, writes locally, and forwards to its successor, which does the same;
//! the tail's acknowledgement travels back up. Each member holds the chunk's lock until its
//! successor has acknowledged, so a chunk has one write in flight and every member applies
//! writes in the head's order.
//!
//! Invariant: a request whose chain version differs from this service's is refused, never
//! applied (a newer version first makes this service refresh its table).
//! Invariant: a member marks a chunk dirty before forwarding and clean only after the
//! downstream acknowledgement; a dirty chunk at the head is copied whole down the chain
//! before its next write, so replicas that saw only part of a failed write converge. A
//! member with a successor serves no reads of a chunk dirty here: what it holds was never
//! acknowledged.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use shoal_client::RegistryClient;
use shoal_client::chains::{ChainCache, ChainInfo};
use shoal_proto::data as pb;
use tonic::Status;

use crate::locks::{ChainGates, ChunkLocks, ReadGuard, WriteGuard};
use crate::merge::{self, WriteQueue};
use crate::peers::Peers;
use crate::stats::Stats;
use crate::status::{from_store, invalid, is_out_of_sync, out_of_sync, stale_chain};
use crate::store::{
    self, ChunkId, ChunkStore, IncomingCopy, MAX_CHUNK_SIZE_BYTES, NextVersion, Replace, StoreError, StoreResult,
    Versioned, WriteOp,
};

/// Longest wait for the rest of the chain to acknowledge one write or copy.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(30);
/// Size of one piece of a whole-chunk copy.
const COPY_PIECE_BYTES: u64 = 1 << 20;
/// Most repairs running at once.
const MAX_CONCURRENT_REPAIRS: usize = 64;

pub struct DataNode {
    pub id: u64,
    pub store: Arc<ChunkStore>,
    pub chains: ChainCache,
    pub peers: Peers,
    pub locks: ChunkLocks,
    /// Held by every chain change from before it resolves its chain; see `locks`.
    pub gates: ChainGates,
    queue: WriteQueue,
    pub stats: Stats,
    pub registry: RegistryClient,
    repairs: Mutex<HashSet<ChunkId>>,
}

pub fn chunk_of(chunk: Option<pb::ChunkId>) -> Result<ChunkId, Status> {
    let chunk = chunk.ok_or_else(|| invalid("request names no chunk"))?;
    Ok(ChunkId {
        volume_id: chunk.volume_id,
        ino: chunk.ino,
        index: chunk.index,
    })
}

pub fn chunk_to_wire(chunk: &ChunkId) -> pb::ChunkId {
    pb::ChunkId {
        volume_id: chunk.volume_id,
        ino: chunk.ino,
        index: chunk.index,
    }
}

impl DataNode {
    pub fn new(id: u64, store: Arc<ChunkStore>, registry: RegistryClient) -> DataNode {
        DataNode {
            id,
            store,
            chains: ChainCache::new(registry.clone()),
            peers: Peers::default(),
            locks: ChunkLocks::default(),
            gates: ChainGates::default(),
            queue: WriteQueue::default(),
            stats: Stats::default(),
            registry,
            repairs: Mutex::new(HashSet::new()),
        }
    }

    /// Runs a store call on the blocking pool.
    pub async fn blocking<T: Send + 'static>(
        &self,
        call: impl FnOnce(&ChunkStore) -> StoreResult<T> + Send + 'static,
    ) -> StoreResult<T> {
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || call(&store)).await {
            Ok(result) => result,
            Err(error) => Err(StoreError::Metadata(format!("store task failed: {error}"))),
        }
    }

    /// The chain as this service knows it, if the caller's version is the same.
    pub async fn chain(&self, chain_id: u64, version: u64) -> Result<ChainInfo, Status> {
        let mut table = self.chains.current();
        let ours = table.chain(chain_id).map(|c| c.version);
        if ours.is_none_or(|ours| version > ours) {
            table = self
                .chains
                .refresh()
                .await
                .map_err(|e| Status::unavailable(format!("cannot refresh the chain table: {e}")))?;
        }
        match table.chain(chain_id) {
            Some(chain) if chain.version == version => Ok(chain.clone()),
            other => {
                Stats::add(&self.stats.stale_requests_refused, 1);
                Err(stale_chain(
                    chain_id,
                    version,
                    other.map(|c| c.version),
                    "versions differ",
                ))
            }
        }
    }

    fn position(&self, chain: &ChainInfo) -> Result<usize, Status> {
        chain.position(self.id).ok_or_else(|| {
            stale_chain(
                chain.id,
                chain.version,
                Some(chain.version),
                "this data service is not in the chain",
            )
        })
    }

    /// Address of the member after `position`, if any.
    fn successor(&self, chain: &ChainInfo, position: usize) -> Result<Option<(u64, String)>, Status> {
        let Some(next) = chain.targets.get(position + 1) else {
            return Ok(None);
        };
        let address = self
            .chains
            .current()
            .address(next.data_service_id)
            .map(str::to_string)
            .ok_or_else(|| {
                Status::unavailable(format!("no address known for data service {}", next.data_service_id))
            })?;
        Ok(Some((next.data_service_id, address)))
    }

    pub async fn write(self: &Arc<Self>, request: pb::WriteRequest) -> Result<pb::WriteReply, Status> {
        let chunk = chunk_of(request.chunk)?;
        let ranges = merge::ranges(&chunk, &request)?;
        merge::verify(&chunk, &request, &ranges)?;
        let gate = self.gates.read(&request.chain_id).await;
        let chain = self.chain(request.chain_id, request.chain_version).await?;
        let position = self.position(&chain)?;
        let forwarded = request.chunk_version != 0;
        if forwarded == (position == 0) {
            return Err(stale_chain(
                chain.id,
                request.chain_version,
                Some(chain.version),
                if forwarded {
                    "a forwarded write reached the head"
                } else {
                    "client writes go to the head"
                },
            ));
        }
        let chunk_version = if merge::mergeable(&request) {
            self.write_queued(gate, chain, chunk, request).await?
        } else {
            let guard = self.locks.write(&chunk).await;
            let node = self.clone();
            detached(
                (gate, guard),
                async move { node.apply_write(&chain, chunk, request).await },
            )
            .await?
        };
        Ok(pb::WriteReply { chunk_version })
    }

    /// A client's small write at the head: queued, and applied in the round of whichever
    /// queued writer of the chunk gets its lock first, merged with the others waiting (see
    /// `merge`).
    async fn write_queued(
        self: &Arc<Self>,
        gate: ReadGuard<u64>,
        chain: ChainInfo,
        chunk: ChunkId,
        request: pb::WriteRequest,
    ) -> merge::Outcome {
        let mut ticket = self.queue.enqueue(chunk, request);
        let guard = tokio::select! {
            biased;
            outcome = ticket.outcome() => return outcome,
            guard = self.locks.write(&chunk) => guard,
        };
        let Some(batch) = self.queue.take_batch(&ticket) else {
            drop(guard);
            return ticket.outcome().await;
        };
        Stats::add(&self.stats.writes_merged, batch.writes() as u64 - 1);

        let node = self.clone();
        // Detached: other callers' writes ride on this round, so this caller giving up must
        // not stop it half way.
        let round = detached((gate, guard), async move {
            let outcome = node.apply_write(&chain, chunk, batch.request).await;
            batch.replies.answer(outcome.clone());
            outcome
        });
        drop(round);
        ticket.outcome().await
    }

    /// Applies a checked write here and forwards it down the chain. The caller holds the
    /// chunk's lock. Returns the chunk's new version.
    async fn apply_write(&self, chain: &ChainInfo, chunk: ChunkId, request: pb::WriteRequest) -> merge::Outcome {
        let position = self.position(chain)?;
        let successor = self.successor(chain, position)?;
        let next = Self::next_version(chain, &chunk, request.prior_chunk_version, request.chunk_version)?;
        let ranges = merge::ranges(&chunk, &request)?;
        let (chain_id, dirty) = (chain.id, successor.is_some());
        let change =
            move |store: &ChunkStore, (request, ranges): &(pb::WriteRequest, Vec<merge::WriteRange>), version| {
                let extents = merge::store_extents(request, ranges);
                let op = WriteOp {
                    chain_id,
                    extents: &extents,
                    version,
                    dirty,
                    sync: request.sync,
                };
                store.write(chunk, op)
            };
        let ((mut request, _), prior, version) = self
            .change_here(chain, chunk, successor.as_ref(), next, (request, ranges), change)
            .await?;
        Stats::add(&self.stats.bytes_written, request.data.len() as u64);
        if let Some((next, address)) = successor {
            request.chunk_version = version;
            request.prior_chunk_version = prior;
            let reply = match tokio::time::timeout(FORWARD_TIMEOUT, self.peers.frames.write(&address, request)).await {
                Ok(reply) => reply.map(|_| ()),
                Err(_) => Err(Status::deadline_exceeded(format!(
                    "the chain did not acknowledge within {FORWARD_TIMEOUT:?}"
                ))),
            };
            self.settle_forward(chain, chunk, next, &address, reply).await?;
        }
        Ok(version)
    }

    /// The local part of a chain change (a write or a cut): one store call checks the
    /// chunk's version (and at the head its dirty flag) and runs `change` with the new
    /// version. A chunk an earlier failed change left dirty at the head is healed first.
    /// Gives `subject` back for forwarding, with the prior and new version.
    async fn change_here<T: Send + 'static>(
        &self,
        chain: &ChainInfo,
        chunk: ChunkId,
        successor: Option<&(u64, String)>,
        next: NextVersion,
        mut subject: T,
        change: impl Fn(&ChunkStore, &T, u64) -> StoreResult<()> + Clone + Send + 'static,
    ) -> Result<(T, u64, u64), Status> {
        for healed in [false, true] {
            let change = change.clone();
            let (back, outcome) = self
                .blocking(move |store| {
                    let outcome = store.versioned(&chunk, next, |store, version| change(store, &subject, version))?;
                    Ok((subject, outcome))
                })
                .await
                .map_err(from_store)?;
            subject = back;
            match outcome {
                Versioned::Written { prior, version } => return Ok((subject, prior, version)),
                Versioned::OutOfSync { local } => {
                    let NextVersion::Forwarded { prior, .. } = next else {
                        unreachable!("only a forwarded change can be out of sync");
                    };
                    tracing::info!(%chunk, local, prior, "chunk out of sync with the chain; asking for a whole copy");
                    return Err(out_of_sync(&chunk, local, prior));
                }
                Versioned::Dirty if !healed => self.heal_if_dirty(chain, chunk, successor).await?,
                Versioned::Dirty => {}
            }
        }
        Err(Status::unavailable(format!(
            "{chunk}: still dirty here after healing; retry"
        )))
    }

    /// A client's change enters at the head, which must hold a complete copy (serve): a
    /// head still being filled would apply it to partial data and push that down the chain.
    fn require_serving_head(chain: &ChainInfo) -> Result<(), Status> {
        if !chain.targets[0].serving {
            return Err(Status::unavailable(format!(
                "chain {}: its head is still being filled and no member holds a complete copy; \
                 writes resume when one returns",
                chain.id
            )));
        }
        Ok(())
    }

    /// The version rule of a chain change: a client's (forwarded versions 0) gets the next
    /// version at the head, which must hold a complete copy; a forwarded one applies only
    /// where this member holds exactly the sender's prior version.
    fn next_version(chain: &ChainInfo, chunk: &ChunkId, prior: u64, version: u64) -> Result<NextVersion, Status> {
        if version == 0 {
            Self::require_serving_head(chain)?;
            return Ok(NextVersion::Head);
        }
        if version != prior + 1 {
            return Err(invalid(format!(
                "{chunk}: forwarded version {version} does not follow prior version {prior}"
            )));
        }
        Ok(NextVersion::Forwarded { prior, version })
    }

    /// Finishes a change forwarded to `next`: an out-of-sync successor gets the whole chunk
    /// (this change included) pushed down the chain; any other failure is the caller's.
    /// On success the chunk is clean here. The caller holds the chunk's lock.
    async fn settle_forward(
        &self,
        chain: &ChainInfo,
        chunk: ChunkId,
        next: u64,
        address: &str,
        reply: Result<(), Status>,
    ) -> Result<(), Status> {
        match reply {
            Ok(()) => {}
            Err(status) if is_out_of_sync(&status) => {
                tracing::info!(%chunk, successor = next, "successor holds another history of the chunk; sending it whole");
                self.push_copy(chain, chunk, next, address, true).await?;
                Stats::add(&self.stats.chunks_resynced, 1);
            }
            Err(status) => return Err(downstream(status, next, address)),
        }
        self.blocking(move |store| store.mark_clean(chunk))
            .await
            .map_err(from_store)
    }

    /// Before a new write, a chunk that an earlier, failed write left dirty here is copied
    /// whole down the chain, so every member starts from the head's bytes. If this member's
    /// copy is damaged (a crash tore a block), it first takes the chain's acknowledged state
    /// from a member downstream: the change that left it dirty was never acknowledged.
    /// The caller holds the chunk's lock.
    pub async fn heal_if_dirty(
        &self,
        chain: &ChainInfo,
        chunk: ChunkId,
        successor: Option<&(u64, String)>,
    ) -> Result<(), Status> {
        let dirty = self
            .blocking(move |store| store.is_dirty(&chunk))
            .await
            .map_err(from_store)?;
        if !dirty {
            return Ok(());
        }
        if let Some((next, address)) = successor {
            let readable = self.blocking(move |store| store.verify(&chunk)).await;
            if let Err(error @ StoreError::Corrupt { .. }) = readable {
                tracing::warn!(%chunk, %error, "a dirty chunk is damaged here; taking the chain's copy from downstream");
                Stats::add(&self.stats.corruptions_detected, 1);
                let (copy, version, length, peer) = self.fetch_from_peers(chain, chunk).await?;
                let chain_id = chain.id;
                self.blocking(move |store| store.finish_copy(copy, chain_id, version, length, Replace::Always))
                    .await
                    .map_err(from_store)?;
                Stats::add(&self.stats.chunks_repaired, 1);
                tracing::info!(%chunk, peer, "dirty chunk restored from a chain peer");
            }
            tracing::info!(%chunk, chain = chain.id, "copying a dirty chunk down the chain before writing it");
            self.push_copy(chain, chunk, *next, address, true).await?;
        }
        self.blocking(move |store| store.mark_clean(chunk))
            .await
            .map_err(from_store)
    }

    pub async fn read(self: &Arc<Self>, request: pb::ReadRequest) -> Result<pb::ReadReply, Status> {
        let chunk = chunk_of(request.chunk)?;
        let length = u64::from(request.length);
        if length as usize > shoal_proto::MAX_DATA_PAYLOAD_BYTES || request.offset + length > MAX_CHUNK_SIZE_BYTES {
            return Err(invalid(format!(
                "{chunk}: read of {length} bytes at {} is out of bounds",
                request.offset
            )));
        }
        let chain = self.chain(request.chain_id, request.chain_version).await?;
        let position = self.position(&chain)?;
        if !chain.targets[position].serving {
            return Err(stale_chain(
                chain.id,
                request.chain_version,
                Some(chain.version),
                "this member is still being filled and serves no reads",
            ));
        }
        let _guard = self.locks.read(&chunk).await;
        let offset = request.offset;
        // A chunk dirty here holds a change its chain never acknowledged (a failed forward,
        // until healed): a member with a successor sends the reader on, towards the tail,
        // which only ever holds acknowledged changes.
        let has_successor = position + 1 < chain.targets.len();
        let read = self
            .blocking(move |store| {
                if has_successor && store.is_dirty(&chunk)? {
                    return Ok(None);
                }
                store.read(chunk, offset, length).map(Some)
            })
            .await;
        match read {
            Ok(None) => Err(Status::unavailable(format!(
                "{chunk}: holds a change its chain has not acknowledged yet; read from another member"
            ))),
            Ok(Some(result)) => {
                Stats::add(&self.stats.bytes_read, length);
                Ok(pb::ReadReply {
                    payload_crcs: result.payload_crcs,
                    data: result.data.into(),
                    chunk_version: result.version,
                    chunk_length_bytes: result.length_bytes,
                })
            }
            Err(error @ StoreError::Corrupt { .. }) => {
                Stats::add(&self.stats.corruptions_detected, 1);
                tracing::error!(%error, "checksum mismatch on read; data not returned, repairing from a peer");
                self.clone().spawn_repair(chain.id, chunk);
                Err(from_store(error))
            }
            Err(error) => Err(from_store(error)),
        }
    }

    pub async fn truncate(self: &Arc<Self>, request: pb::TruncateRequest) -> Result<pb::TruncateReply, Status> {
        let chunk = chunk_of(request.chunk)?;
        if request.length_bytes > MAX_CHUNK_SIZE_BYTES {
            return Err(invalid(format!("{chunk}: truncate to {} bytes", request.length_bytes)));
        }
        let gate = self.gates.read(&request.chain_id).await;
        let chain = self.chain(request.chain_id, request.chain_version).await?;
        let position = self.position(&chain)?;
        let forwarded = request.chunk_version != 0;
        if forwarded == (position == 0) {
            return Err(stale_chain(
                chain.id,
                request.chain_version,
                Some(chain.version),
                "truncates enter at the head",
            ));
        }
        let guard = self.locks.write(&chunk).await;
        let node = self.clone();
        detached((gate, guard), async move {
            node.apply_truncate(&chain, chunk, request).await
        })
        .await
    }

    /// Applies a checked truncate (or removal) here and forwards it down the chain. The
    /// caller holds the chunk's lock.
    async fn apply_truncate(
        &self,
        chain: &ChainInfo,
        chunk: ChunkId,
        request: pb::TruncateRequest,
    ) -> Result<pb::TruncateReply, Status> {
        let position = self.position(chain)?;
        let successor = self.successor(chain, position)?;
        let next = Self::next_version(chain, &chunk, request.prior_chunk_version, request.chunk_version)?;
        let (chain_id, dirty) = (chain.id, successor.is_some());
        // Durable at once, dirty mark included: a client does not fsync a truncate, and a
        // member that forgot one after a crash would hold bytes the others do not.
        let change = move |store: &ChunkStore, request: &pb::TruncateRequest, version| {
            if request.remove {
                store.remove(chunk, dirty.then_some(chain_id)).map(|_| ())
            } else {
                let op = store::TruncateOp {
                    chain_id,
                    length_bytes: request.length_bytes,
                    version,
                    dirty,
                };
                store.truncate(chunk, op)
            }
        };
        let (request, prior, version) = self
            .change_here(chain, chunk, successor.as_ref(), next, request, change)
            .await?;
        if let Some((next, address)) = successor {
            let mut forward = request;
            forward.chunk_version = version;
            forward.prior_chunk_version = prior;
            let mut call = tonic::Request::new(forward);
            call.set_timeout(FORWARD_TIMEOUT);
            let reply = self.peers.client(&address)?.truncate(call).await.map(|_| ());
            self.settle_forward(chain, chunk, next, &address, reply).await?;
        }
        Ok(pb::TruncateReply { chunk_version: version })
    }

    pub async fn sync(&self, request: pb::SyncRequest) -> Result<pb::SyncReply, Status> {
        let chain = self.chain(request.chain_id, request.chain_version).await?;
        let position = self.position(&chain)?;
        let chunks = request
            .chunks
            .iter()
            .take(store::MAX_LISTED_CHUNKS)
            .map(|c| chunk_of(Some(*c)))
            .collect::<Result<Vec<_>, _>>()?;
        self.sync_chunks(&chunks).await.map_err(from_store)?;
        if let Some((next, address)) = self.successor(&chain, position)? {
            let mut call = tonic::Request::new(request);
            call.set_timeout(FORWARD_TIMEOUT);
            self.peers
                .client(&address)?
                .sync(call)
                .await
                .map_err(|status| downstream(status, next, &address))?;
        }
        Ok(pb::SyncReply {})
    }

    /// Makes earlier writes to `chunks` durable here: each chunk's file under its lock, then
    /// the metadata log once.
    pub async fn sync_chunks(&self, chunks: &[ChunkId]) -> StoreResult<()> {
        for chunk in chunks {
            let _guard = self.locks.read(chunk).await;
            let chunk = *chunk;
            self.blocking(move |store| store.sync_chunk(&chunk)).await?;
        }
        self.blocking(|store| store.sync_wal()).await
    }

    /// Sends the whole of `chunk` (or its absence) to data service `target`. The caller holds
    /// the chunk's lock, so the copy and later writes arrive in order.
    pub async fn push_copy(
        &self,
        chain: &ChainInfo,
        chunk: ChunkId,
        target: u64,
        address: &str,
        forward: bool,
    ) -> Result<(), Status> {
        let meta = self
            .blocking(move |store| store.meta(&chunk))
            .await
            .map_err(from_store)?;
        let header = pb::ChunkCopy {
            chain_id: chain.id,
            chain_version: chain.version,
            chunk: Some(chunk_to_wire(&chunk)),
            chunk_version: meta.as_ref().map_or(0, |m| m.version),
            length_bytes: meta.as_ref().map_or(0, |m| m.length_bytes),
            exists: meta.is_some(),
            forward,
            ..Default::default()
        };
        let (sender, receiver) = tokio::sync::mpsc::channel::<pb::ChunkCopy>(2);
        let store = self.store.clone();
        let producer = tokio::spawn(async move {
            let length = header.length_bytes;
            if !header.exists || length == 0 {
                let _ = sender.send(pb::ChunkCopy { last: true, ..header }).await;
                return Ok(());
            }
            let mut offset = 0;
            while offset < length {
                let piece = COPY_PIECE_BYTES.min(length - offset);
                let store = store.clone();
                let read = tokio::task::spawn_blocking(move || store.read(chunk, offset, piece))
                    .await
                    .map_err(|e| StoreError::Metadata(e.to_string()))??;
                let message = pb::ChunkCopy {
                    payload_crcs: read.payload_crcs,
                    data: read.data.into(),
                    data_offset: offset,
                    last: offset + piece == length,
                    ..header.clone()
                };
                if sender.send(message).await.is_err() {
                    return Ok(());
                }
                offset += piece;
            }
            Ok::<(), StoreError>(())
        });
        let mut call = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(receiver));
        call.set_timeout(FORWARD_TIMEOUT);
        let reply = self.peers.client(address)?.copy_chunk(call).await;
        match producer.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => return Err(from_store(error)),
            Err(error) => return Err(Status::internal(format!("copy producer failed: {error}"))),
        }
        let reply = reply.map_err(|status| downstream(status, target, address))?;
        if !reply.into_inner().applied {
            return Err(Status::internal(format!(
                "{chunk}: data service {target} at {address} did not apply a whole-chunk copy"
            )));
        }
        Ok(())
    }

    /// Receives a whole-chunk copy from the member before this one.
    pub async fn receive_copy(
        self: &Arc<Self>,
        mut stream: tonic::Streaming<pb::ChunkCopy>,
    ) -> Result<pb::ChunkCopyReply, Status> {
        let header = stream.next().await.ok_or_else(|| invalid("empty chunk copy"))??;
        let chunk = chunk_of(header.chunk)?;
        let gate = self.gates.read(&header.chain_id).await;
        let chain = self.chain(header.chain_id, header.chain_version).await?;
        let position = self.position(&chain)?;
        // Copies replace what is here, so only a complete (serving) predecessor sends them
        // to a serving member.
        let sender_serves = position > 0 && chain.targets[position - 1].serving;
        if !sender_serves && chain.targets[position].serving {
            return Err(stale_chain(
                chain.id,
                chain.version,
                Some(chain.version),
                "a whole-chunk copy must come from a serving predecessor",
            ));
        }
        let mut incoming: Option<IncomingCopy> = None;
        if header.exists {
            incoming = Some(
                self.blocking(move |store| store.begin_copy(chunk))
                    .await
                    .map_err(from_store)?,
            );
        }
        let mut message = Some(header.clone());
        let mut complete = false;
        while let Some(piece) = message.take() {
            if piece.chunk_version != header.chunk_version || piece.length_bytes != header.length_bytes {
                return Err(invalid(format!("{chunk}: copy pieces disagree about the chunk")));
            }
            if let Err(bad) = store::verify_payload(&piece.data, &piece.payload_crcs) {
                return Err(Status::data_loss(format!(
                    "{chunk}: copy piece {bad} damaged in transit"
                )));
            }
            if !piece.data.is_empty() {
                let mut copy = incoming
                    .take()
                    .ok_or_else(|| invalid(format!("{chunk}: data for a missing chunk")))?;
                let copy = tokio::task::spawn_blocking(move || {
                    copy.append(piece.data_offset, &piece.data, &piece.payload_crcs)
                        .map(|()| copy)
                })
                .await
                .map_err(|e| Status::internal(e.to_string()))?
                .map_err(from_store)?;
                incoming = Some(copy);
            }
            if piece.last {
                complete = true;
                break;
            }
            message = stream.next().await.transpose()?;
        }
        if !complete {
            return Err(invalid(format!("{chunk}: copy ended before its last piece")));
        }
        let guard = self.locks.write(&chunk).await;
        let node = self.clone();
        detached((gate, guard), async move {
            node.install_copy(&chain, position, chunk, &header, incoming).await
        })
        .await
    }

    /// Puts a received copy (or its absence) in place, and sends it on if the sender asked.
    /// The caller holds the chunk's lock.
    async fn install_copy(
        &self,
        chain: &ChainInfo,
        position: usize,
        chunk: ChunkId,
        header: &pb::ChunkCopy,
        incoming: Option<IncomingCopy>,
    ) -> Result<pb::ChunkCopyReply, Status> {
        let (chain_id, version, length) = (chain.id, header.chunk_version, header.length_bytes);
        // The sender is upstream and holds its lock: its state is the chain's, so it
        // replaces whatever this member holds, newer-looking versions included.
        match incoming {
            Some(copy) => self
                .blocking(move |store| store.finish_copy(copy, chain_id, version, length, Replace::Always))
                .await
                .map_err(from_store)
                .map(|_| ())?,
            None => self
                .blocking(move |store| store.remove(chunk, None).map(|_| ()))
                .await
                .map_err(from_store)?,
        }
        if header.forward
            && let Some((next, address)) = self.successor(chain, position)?
        {
            self.push_copy(chain, chunk, next, &address, true).await?;
        }
        self.blocking(move |store| store.mark_clean(chunk))
            .await
            .map_err(from_store)?;
        Ok(pb::ChunkCopyReply { applied: true })
    }

    fn spawn_repair(self: Arc<Self>, chain_id: u64, chunk: ChunkId) {
        {
            let mut running = self.repairs.lock().expect("repair lock poisoned");
            if running.len() >= MAX_CONCURRENT_REPAIRS || !running.insert(chunk) {
                return;
            }
        }
        tokio::spawn(async move {
            match self.repair(chain_id, chunk).await {
                Ok(peer) => {
                    Stats::add(&self.stats.chunks_repaired, 1);
                    tracing::info!(%chunk, peer, "repaired chunk from a chain peer");
                }
                Err(error) => tracing::warn!(%chunk, %error, "could not repair chunk; it stays unreadable here"),
            }
            self.repairs.lock().expect("repair lock poisoned").remove(&chunk);
        });
    }

    /// Replaces a damaged local chunk with a serving peer's copy. Returns the peer's id.
    async fn repair(&self, chain_id: u64, chunk: ChunkId) -> Result<u64, Status> {
        let chain = self
            .chains
            .current()
            .chain(chain_id)
            .ok_or_else(|| Status::not_found(format!("chain {chain_id} unknown")))?
            .clone();
        let (copy, version, length, peer) = self.fetch_from_peers(&chain, chunk).await?;
        let _guard = self.locks.write(&chunk).await;
        // A write applied here since the copy was read is newer: keep it.
        let applied = self
            .blocking(move |store| store.finish_copy(copy, chain_id, version, length, Replace::IfNotOlder))
            .await
            .map_err(from_store)?;
        if !applied {
            tracing::info!(%chunk, peer, "chunk rewritten here during its repair; the repair copy is dropped");
        }
        Ok(peer)
    }

    /// A whole copy of `chunk` from the first serving peer that has a readable one:
    /// (copy, version, length, peer).
    async fn fetch_from_peers(
        &self,
        chain: &ChainInfo,
        chunk: ChunkId,
    ) -> Result<(IncomingCopy, u64, u64, u64), Status> {
        let table = self.chains.current();
        let mut last_error = Status::unavailable(format!("chain {} has no other serving member", chain.id));
        for peer in chain.serving().filter(|id| *id != self.id) {
            let Some(address) = table.address(peer) else { continue };
            match self.fetch_copy(chain, chunk, address).await {
                Ok((copy, version, length)) => return Ok((copy, version, length, peer)),
                Err(error) => last_error = error,
            }
        }
        Err(last_error)
    }

    async fn fetch_copy(
        &self,
        chain: &ChainInfo,
        chunk: ChunkId,
        address: &str,
    ) -> Result<(IncomingCopy, u64, u64), Status> {
        let mut client = self.peers.client(address)?;
        let mut copy = self
            .blocking(move |store| store.begin_copy(chunk))
            .await
            .map_err(from_store)?;
        let mut offset = 0;
        let mut length = None;
        let mut version = 0;
        for _piece in 0..(MAX_CHUNK_SIZE_BYTES / COPY_PIECE_BYTES + 1) {
            let request = pb::ReadRequest {
                chain_id: chain.id,
                chain_version: chain.version,
                chunk: Some(chunk_to_wire(&chunk)),
                offset,
                length: COPY_PIECE_BYTES as u32,
            };
            let reply = client.read(request).await?.into_inner();
            if let Err(piece) = store::verify_payload(&reply.data, &reply.payload_crcs) {
                return Err(Status::data_loss(format!(
                    "{chunk}: repair copy piece {piece} from {address} damaged in transit"
                )));
            }
            let total = *length.get_or_insert(reply.chunk_length_bytes);
            if offset > 0 && (reply.chunk_version != version || reply.chunk_length_bytes != total) {
                return Err(Status::aborted(format!(
                    "{chunk}: changed at {address} while being copied for repair; try again"
                )));
            }
            version = reply.chunk_version;
            if offset >= total {
                break;
            }
            let take = (total - offset).min(COPY_PIECE_BYTES) as usize;
            let data = reply.data.slice(..take);
            let crcs = store::payload_crcs(&data);
            copy = tokio::task::spawn_blocking(move || copy.append(offset, &data, &crcs).map(|()| copy))
                .await
                .map_err(|e| Status::internal(e.to_string()))?
                .map_err(from_store)?;
            offset += take as u64;
        }
        Ok((copy, version, length.unwrap_or(0)))
    }

    pub async fn list_chunks(&self, request: pb::ListChunksRequest) -> Result<pb::ListChunksReply, Status> {
        let after = request.has_after.then_some(ChunkId {
            volume_id: request.after_volume_id,
            ino: request.after_ino,
            index: request.after_index,
        });
        let max = (request.max_chunks as usize).clamp(1, store::MAX_LISTED_CHUNKS);
        let chain_id = request.chain_id;
        let listed = self
            .blocking(move |store| store.list_chain(chain_id, after, max))
            .await
            .map_err(from_store)?;
        Ok(pb::ListChunksReply {
            end: listed.len() < max,
            chunks: listed
                .iter()
                .map(|(chunk, version)| pb::ChunkVersion {
                    chunk: Some(chunk_to_wire(chunk)),
                    chunk_version: *version,
                })
                .collect(),
        })
    }

    pub async fn drop_chunks(&self, request: pb::DropRequest) -> Result<pb::DropReply, Status> {
        let removed = self
            .blocking(move |store| {
                let mut removed = 0;
                for file in request.files.iter().take(store::MAX_LISTED_CHUNKS) {
                    removed += store.drop_file(file.volume_id, file.ino)?;
                }
                for volume in request.volumes.iter().take(store::MAX_LISTED_CHUNKS) {
                    removed += store.drop_volume(*volume)?;
                }
                Ok(removed)
            })
            .await
            .map_err(from_store)?;
        Ok(pb::DropReply {
            chunks_removed: removed,
        })
    }

    pub async fn stats(&self) -> Result<pb::StatsReply, Status> {
        let chunks = self.blocking(|store| store.chunk_count()).await.map_err(from_store)?;
        Ok(pb::StatsReply {
            data_service_id: self.id,
            chunks,
            bytes_written: Stats::get(&self.stats.bytes_written),
            bytes_read: Stats::get(&self.stats.bytes_read),
            corruptions_detected: Stats::get(&self.stats.corruptions_detected),
            chunks_repaired: Stats::get(&self.stats.chunks_repaired),
            stale_requests_refused: Stats::get(&self.stats.stale_requests_refused),
            chunks_resynced: Stats::get(&self.stats.chunks_resynced),
            writes_merged: Stats::get(&self.stats.writes_merged),
            chain_table_version: self.chains.current().version,
        })
    }
}

/// A downstream member's failure, named, for the member upstream and the client.
/// Runs a chain change in a task of its own that holds `guards` (the chain's gate, the
/// chunk's lock) until it ends: a caller that gives up (a client's deadline, a dropped
/// connection) must not let go of them while the change is still landing in the store or
/// travelling down the chain. The task starts at once; awaiting its outcome is optional.
fn detached<T: Send + 'static>(
    guards: (ReadGuard<u64>, WriteGuard<ChunkId>),
    change: impl Future<Output = Result<T, Status>> + Send + 'static,
) -> impl Future<Output = Result<T, Status>> {
    let task = tokio::spawn(async move {
        let _guards = guards;
        change.await
    });
    async move {
        task.await
            .unwrap_or_else(|error| Err(Status::internal(format!("a chain change's task failed: {error}"))))
    }
}

fn downstream(status: Status, data_service: u64, address: &str) -> Status {
    match status.code() {
        // Errors the client acts on (stale chain, errno) pass through unchanged.
        tonic::Code::FailedPrecondition | tonic::Code::ResourceExhausted | tonic::Code::InvalidArgument => status,
        code => Status::new(
            if code == tonic::Code::DataLoss {
                code
            } else {
                tonic::Code::Unavailable
            },
            format!(
                "chain successor data service {data_service} at {address}: {}",
                status.message()
            ),
        ),
    }
}
