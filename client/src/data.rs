//! The data path of the client: chunk reads and writes go straight to data services; the
//! registry only supplies layouts and the chain table.
//!
//! A file's bytes are cut at chunk boundaries and into pieces of at most
//! [`MAX_PIECE_BYTES`]; chunk i lives on chain `layout.chain_ids[i % stripe_width]`, so a large
//! read or write keeps several chains (several data services) busy at once, up to
//! `max_in_flight` pieces. Writes go to a chain's head; reads to any serving member, spread
//! by chunk index, falling back to the next member on a checksum failure or an error.
//! Stale chain versions and unreachable members make the client refresh the chain table and
//! retry until its deadline.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use shoal_proto::checksum::{payload_crcs, verify_payload};
use shoal_proto::data::data_service_client::DataServiceClient;
use shoal_proto::data::{self as pb};
use shoal_proto::errno::{Errno, FsError};
use shoal_proto::registry as registry_pb;
use tonic::transport::{Channel, Endpoint};

use crate::chains::{ChainCache, ChainInfo, ChainTable};
use crate::frames::FrameClient;
use crate::{ClientError, RegistryClient, RetryPolicy};

/// Largest piece sent in one write or read call.
pub const MAX_PIECE_BYTES: u64 = 1 << 20;
/// Default number of pieces in flight for one read or write.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 8;
/// Timeout of one data-service call (a write covers the whole chain).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Most data-service channels kept.
const MAX_CHANNELS: usize = 4096;

/// Where a file's bytes live, from its attributes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileLayout {
    pub volume_id: u64,
    pub ino: u64,
    pub chunk_size_bytes: u64,
    pub chain_ids: Vec<u64>,
}

impl FileLayout {
    pub fn of(volume_id: u64, attr: &registry_pb::Attr) -> Result<FileLayout, ClientError> {
        let layout = attr.layout.as_ref().ok_or_else(|| {
            ClientError::Fs(FsError::new(
                Errno::EINVAL,
                format!(
                    "volume {volume_id}: inode {} has no layout (not a regular file)",
                    attr.ino
                ),
            ))
        })?;
        Ok(FileLayout {
            volume_id,
            ino: attr.ino,
            chunk_size_bytes: layout.chunk_size_bytes,
            chain_ids: layout.chain_ids.clone(),
        })
    }

    pub fn is_placed(&self) -> bool {
        !self.chain_ids.is_empty() && self.chunk_size_bytes > 0
    }

    pub fn chain_of(&self, index: u64) -> u64 {
        self.chain_ids[(index % self.chain_ids.len() as u64) as usize]
    }

    fn chunk(&self, index: u64) -> pb::ChunkId {
        pb::ChunkId {
            volume_id: self.volume_id,
            ino: self.ino,
            index,
        }
    }
}

/// One contiguous range within one chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Piece {
    index: u64,
    offset_in_chunk: u64,
    length: u64,
    /// Position of the piece in the caller's buffer.
    position: u64,
}

fn pieces(chunk_size_bytes: u64, offset: u64, length: u64) -> Vec<Piece> {
    let mut out = Vec::new();
    let mut done = 0;
    while done < length {
        let at = offset + done;
        let index = at / chunk_size_bytes;
        let offset_in_chunk = at % chunk_size_bytes;
        let take = (chunk_size_bytes - offset_in_chunk)
            .min(MAX_PIECE_BYTES)
            .min(length - done);
        out.push(Piece {
            index,
            offset_in_chunk,
            length: take,
            position: done,
        });
        done += take;
    }
    out
}

#[derive(Clone)]
pub struct DataClient {
    registry: RegistryClient,
    chains: Arc<ChainCache>,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    /// Chunk reads and writes (framed, bytes outside protobuf); the other calls use gRPC.
    frames: Arc<FrameClient>,
    policy: RetryPolicy,
    max_in_flight: usize,
    /// `host:port` of a `shoal gateway` every data-service connection goes through.
    gateway: Option<String>,
}

/// What one attempt on a data service came to.
enum Attempt<T> {
    Done(T),
    /// Fatal for the call: an errno from the data service.
    Fail(ClientError),
    /// Worth another try, after refreshing the chain table.
    Retry(String),
}

/// A chain head as one attempt reaches it: by frames for chunk bytes, or by gRPC for the
/// other calls (a gRPC client is made only for those).
struct Head {
    address: String,
    grpc: Option<DataServiceClient<Channel>>,
    frames: Arc<FrameClient>,
}

/// Which transport an attempt at a head uses.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Transport {
    Frames,
    Grpc,
}

impl Head {
    fn grpc(&mut self) -> &mut DataServiceClient<Channel> {
        self.grpc
            .as_mut()
            .expect("a gRPC call at a head asks for Transport::Grpc")
    }
}

/// A description made only when it is needed: on the success path nothing is formatted.
type Describe<'a> = &'a (dyn Fn() -> String + Sync);

fn classify<T>(result: Result<T, tonic::Status>, who: Describe<'_>) -> Attempt<T> {
    match result {
        Ok(reply) => Attempt::Done(reply),
        Err(status) => match FsError::from_status(&status) {
            Some(error) if error.errno != Errno::EIO => Attempt::Fail(ClientError::Fs(error)),
            _ => Attempt::Retry(format!("{}: {} ({})", who(), status.message(), status.code())),
        },
    }
}

impl DataClient {
    pub fn new(registry: RegistryClient) -> DataClient {
        DataClient {
            chains: Arc::new(ChainCache::new(registry.clone())),
            registry,
            channels: Arc::default(),
            frames: Arc::new(FrameClient::new(None)),
            policy: RetryPolicy::default(),
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            gateway: None,
        }
    }

    pub fn with_policy(mut self, policy: RetryPolicy) -> DataClient {
        self.policy = policy;
        self
    }

    pub fn with_max_in_flight(mut self, max_in_flight: usize) -> DataClient {
        self.max_in_flight = max_in_flight.max(1);
        self
    }

    /// Sends every data-service connection through the gateway at `address` (see
    /// [`crate::gateway`]) instead of straight to the data service.
    pub fn with_gateway(mut self, address: impl Into<String>) -> DataClient {
        let address = address.into();
        self.frames = Arc::new(FrameClient::new(Some(address.clone())));
        self.gateway = Some(address);
        self
    }

    pub fn registry(&self) -> &RegistryClient {
        &self.registry
    }

    fn client(&self, address: &str) -> Result<DataServiceClient<Channel>, ClientError> {
        let mut channels = self.channels.lock().expect("channel lock poisoned");
        let channel = match channels.get(address) {
            Some(channel) => channel.clone(),
            None => {
                if channels.len() >= MAX_CHANNELS {
                    channels.clear();
                }
                let endpoint = Endpoint::from_shared(format!("http://{address}"))
                    .map_err(|e| ClientError::Config(format!("invalid data service address {address:?}: {e}")))?
                    .connect_timeout(Duration::from_secs(2))
                    .tcp_nodelay(true)
                    .initial_stream_window_size(shoal_proto::DATA_STREAM_WINDOW_BYTES)
                    .initial_connection_window_size(shoal_proto::DATA_CONNECTION_WINDOW_BYTES);
                let channel = match &self.gateway {
                    Some(gateway) => crate::gateway::channel(endpoint, gateway, address),
                    None => endpoint.connect_lazy(),
                };
                channels.insert(address.to_string(), channel.clone());
                channel
            }
        };
        Ok(DataServiceClient::new(channel)
            .max_decoding_message_size(shoal_proto::MAX_MESSAGE_SIZE_BYTES)
            .max_encoding_message_size(shoal_proto::MAX_MESSAGE_SIZE_BYTES))
    }

    async fn table_with(&self, chain_id: u64) -> Result<(Arc<ChainTable>, ChainInfo), ClientError> {
        let mut table = self.chains.current();
        if table.chain(chain_id).is_none() {
            table = self.chains.refresh().await?;
        }
        let chain = table.chain(chain_id).cloned().ok_or_else(|| {
            ClientError::Fs(FsError::new(
                Errno::EIO,
                format!("chain {chain_id} is not in the chain table"),
            ))
        })?;
        Ok((table, chain))
    }

    /// Runs `attempt` against the chain's head until it succeeds, fails for good, or the
    /// deadline passes.
    async fn at_head<T, F, Fut>(
        &self,
        what: Describe<'_>,
        transport: Transport,
        chain_id: u64,
        mut attempt: F,
    ) -> Result<T, ClientError>
    where
        F: FnMut(Head, ChainInfo) -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        let started = Instant::now();
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let (table, chain) = self.table_with(chain_id).await?;
            let last_error = match chain.unavailable() {
                Some(reason) => reason,
                None => match self.attempt_at_head(&table, &chain, transport, &mut attempt).await? {
                    Attempt::Done(value) => return Ok(value),
                    Attempt::Fail(error) => return Err(error),
                    Attempt::Retry(message) => message,
                },
            };
            self.give_up_or_wait(what, attempts, started, last_error).await?;
        }
    }

    /// One attempt of `attempt` at the chain's head.
    async fn attempt_at_head<T, F, Fut>(
        &self,
        table: &ChainTable,
        chain: &ChainInfo,
        transport: Transport,
        attempt: &mut F,
    ) -> Result<Attempt<T>, ClientError>
    where
        F: FnMut(Head, ChainInfo) -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        let Some((head, address)) = chain.head().and_then(|head| table.address(head).map(|a| (head, a))) else {
            return Ok(Attempt::Retry(format!("chain {} has no reachable head", chain.id)));
        };
        let who = || format!("data service {head} at {address}");
        let grpc = match transport {
            Transport::Grpc => Some(self.client(address)?),
            Transport::Frames => None,
        };
        let target = Head {
            grpc,
            address: address.to_string(),
            frames: self.frames.clone(),
        };
        Ok(
            match tokio::time::timeout(CALL_TIMEOUT, attempt(target, chain.clone())).await {
                Err(_) => Attempt::Retry(format!("{}: no answer within {CALL_TIMEOUT:?}", who())),
                Ok(result) => classify(result, &who),
            },
        )
    }

    async fn give_up_or_wait(
        &self,
        what: Describe<'_>,
        attempts: u32,
        started: Instant,
        last_error: String,
    ) -> Result<(), ClientError> {
        let waited = started.elapsed();
        if waited >= self.policy.deadline || attempts >= self.policy.max_attempts {
            return Err(ClientError::Unavailable {
                operation: what(),
                attempts,
                waited_ms: waited.as_millis() as u64,
                last_error,
                addresses: "the data services of the chain".into(),
            });
        }
        tracing::debug!(what = what(), attempts, %last_error, "retrying data call");
        tokio::time::sleep(self.policy.backoff(attempts)).await;
        let _ = self.chains.refresh().await;
        Ok(())
    }

    /// Writes `data` at `offset` of the file. Does not change the file's size in the
    /// registry (see [`crate::file`]).
    pub async fn write(&self, layout: &FileLayout, offset: u64, data: Bytes, sync: bool) -> Result<(), ClientError> {
        if !layout.is_placed() {
            return Err(ClientError::Fs(FsError::new(
                Errno::EIO,
                format!("inode {} has no chains", layout.ino),
            )));
        }
        let all = pieces(layout.chunk_size_bytes, offset, data.len() as u64);
        let results = futures::stream::iter(all.into_iter().map(|piece| {
            let bytes = data.slice(piece.position as usize..(piece.position + piece.length) as usize);
            self.write_piece(layout, piece, bytes, sync)
        }))
        .buffer_unordered(self.max_in_flight)
        .collect::<Vec<_>>()
        .await;
        results.into_iter().collect()
    }

    async fn write_piece(&self, layout: &FileLayout, piece: Piece, data: Bytes, sync: bool) -> Result<(), ClientError> {
        let crcs = payload_crcs(&data);
        let chain_id = layout.chain_of(piece.index);
        let what = || {
            format!(
                "write of {} bytes to chunk {} of inode {}",
                piece.length, piece.index, layout.ino
            )
        };
        self.at_head(&what, Transport::Frames, chain_id, |head, chain| {
            let request = pb::WriteRequest {
                chain_id,
                chain_version: chain.version,
                chunk: Some(layout.chunk(piece.index)),
                chunk_size_bytes: layout.chunk_size_bytes,
                offset: piece.offset_in_chunk,
                data: data.clone(),
                payload_crcs: crcs.clone(),
                sync,
                ..Default::default()
            };
            async move { head.frames.write(&head.address, request).await }
        })
        .await
        .map(|_| ())
    }

    /// Reads `length` bytes at `offset`; bytes never written read as zeros. The caller caps
    /// the range at the file's size.
    pub async fn read(&self, layout: &FileLayout, offset: u64, length: u64) -> Result<Bytes, ClientError> {
        if length == 0 {
            return Ok(Bytes::new());
        }
        if !layout.is_placed() {
            return Ok(Bytes::from(vec![0u8; length as usize]));
        }
        let all = pieces(layout.chunk_size_bytes, offset, length);
        let results = futures::stream::iter(all.into_iter().map(|piece| async move {
            let data = self.read_piece(layout, piece).await?;
            Ok::<_, ClientError>((piece, data))
        }))
        .buffer_unordered(self.max_in_flight)
        .collect::<Vec<_>>()
        .await;
        if let [Ok((piece, _))] = results.as_slice()
            && piece.length == length
        {
            // One piece is the whole answer: hand it on without a copy.
            let Some(Ok((_, data))) = results.into_iter().next() else {
                unreachable!("one result")
            };
            return Ok(data);
        }
        let mut buffer = BytesMut::zeroed(length as usize);
        for result in results {
            let (piece, data) = result?;
            buffer[piece.position as usize..(piece.position + piece.length) as usize].copy_from_slice(&data);
        }
        Ok(buffer.freeze())
    }

    async fn read_piece(&self, layout: &FileLayout, piece: Piece) -> Result<Bytes, ClientError> {
        let chain_id = layout.chain_of(piece.index);
        let what = || {
            format!(
                "read of {} bytes from chunk {} of inode {}",
                piece.length, piece.index, layout.ino
            )
        };
        let started = Instant::now();
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let (table, chain) = self.table_with(chain_id).await?;
            let members: Vec<u64> = chain.serving().collect();
            let mut last_error = chain
                .unavailable()
                .unwrap_or_else(|| format!("chain {chain_id}: no serving member answered"));
            // Spread reads over the members; on failure, try the next one.
            for k in 0..members.len() {
                let member = members[(piece.index as usize + k) % members.len()];
                let Some(address) = table.address(member) else { continue };
                let request = pb::ReadRequest {
                    chain_id,
                    chain_version: chain.version,
                    chunk: Some(layout.chunk(piece.index)),
                    offset: piece.offset_in_chunk,
                    length: piece.length as u32,
                };
                let outcome = tokio::time::timeout(CALL_TIMEOUT, self.frames.read(address, request)).await;
                let who = || format!("data service {member} at {address}");
                match outcome {
                    Err(_) => last_error = format!("{}: no answer within {CALL_TIMEOUT:?}", who()),
                    Ok(result) => match classify(result, &who) {
                        Attempt::Done(reply) => {
                            if reply.data.len() as u64 != piece.length {
                                last_error =
                                    format!("{}: returned {} of {} bytes", who(), reply.data.len(), piece.length);
                            } else if let Err(bad) = verify_payload(&reply.data, &reply.payload_crcs) {
                                last_error = format!("{}: piece {bad} damaged in transit", who());
                            } else {
                                return Ok(reply.data);
                            }
                        }
                        Attempt::Fail(error) => return Err(error),
                        Attempt::Retry(message) => last_error = message,
                    },
                }
            }
            self.give_up_or_wait(&what, attempts, started, last_error).await?;
        }
    }

    /// The loss epochs of the chains holding chunks `indices` of the file, to compare with
    /// [`DataClient::loss_since`] after the writes about to be made are synced.
    pub async fn loss_epochs(
        &self,
        layout: &FileLayout,
        indices: std::ops::RangeInclusive<u64>,
    ) -> Result<Vec<(u64, u64)>, ClientError> {
        if !layout.is_placed() {
            return Ok(Vec::new());
        }
        let mut chains: Vec<u64> = indices
            .take(layout.chain_ids.len())
            .map(|i| layout.chain_of(i))
            .collect();
        chains.sort_unstable();
        chains.dedup();
        let mut epochs = Vec::with_capacity(chains.len());
        for chain_id in chains {
            let (_, chain) = self.table_with(chain_id).await?;
            epochs.push((chain_id, chain.loss_epoch));
        }
        Ok(epochs)
    }

    /// Why writes made when the chains had the loss epochs `since` may be gone, if a chain
    /// has since resumed from a member that may lack unsynced changes (see the registry's
    /// chain table). Call after the sync that was to make them durable.
    pub fn loss_since(&self, since: &std::collections::BTreeMap<u64, u64>) -> Option<String> {
        let table = self.chains.current();
        since.iter().find_map(|(chain_id, epoch)| {
            let now = table.chain(*chain_id)?.loss_epoch;
            (now != *epoch).then(|| {
                format!(
                    "chain {chain_id} resumed from a member that may lack unsynced writes (loss epoch {epoch} -> {now}): \
                     writes made before this sync may be lost"
                )
            })
        })
    }

    /// Makes earlier writes to chunks `indices` of the file durable on every member.
    pub async fn sync(&self, layout: &FileLayout, indices: &[u64]) -> Result<(), ClientError> {
        if !layout.is_placed() {
            return Ok(());
        }
        let mut by_chain: HashMap<u64, Vec<pb::ChunkId>> = HashMap::new();
        for index in indices {
            by_chain
                .entry(layout.chain_of(*index))
                .or_default()
                .push(layout.chunk(*index));
        }
        let results = futures::stream::iter(by_chain.into_iter().map(|(chain_id, chunks)| async move {
            self.at_head(&|| "sync".into(), Transport::Grpc, chain_id, |mut head, chain| {
                let request = pb::SyncRequest {
                    chain_id,
                    chain_version: chain.version,
                    chunks: chunks.clone(),
                };
                async move { head.grpc().sync(request).await.map(tonic::Response::into_inner) }
            })
            .await
        }))
        .buffer_unordered(self.max_in_flight)
        .collect::<Vec<_>>()
        .await;
        results.into_iter().try_for_each(|r| r.map(|_| ()))
    }

    /// Removes the file's bytes from `new_size_bytes` on (its chunks past the new end are
    /// deleted, the chunk holding the new end is shortened). `old_size_bytes` bounds which
    /// chunks can exist.
    pub async fn truncate(
        &self,
        layout: &FileLayout,
        old_size_bytes: u64,
        new_size_bytes: u64,
    ) -> Result<(), ClientError> {
        if !layout.is_placed() || new_size_bytes >= old_size_bytes {
            return Ok(());
        }
        let chunk = layout.chunk_size_bytes;
        let first_gone = new_size_bytes.div_ceil(chunk);
        let last_old = old_size_bytes.div_ceil(chunk);
        let mut work: Vec<(u64, u64, bool)> = (first_gone..last_old).map(|index| (index, 0, true)).collect();
        if !new_size_bytes.is_multiple_of(chunk) {
            work.push((new_size_bytes / chunk, new_size_bytes % chunk, false));
        }
        let results = futures::stream::iter(work.into_iter().map(|(index, length_bytes, remove)| async move {
            let chain_id = layout.chain_of(index);
            self.at_head(&|| "truncate".into(), Transport::Grpc, chain_id, |mut head, chain| {
                let request = pb::TruncateRequest {
                    chain_id,
                    chain_version: chain.version,
                    chunk: Some(layout.chunk(index)),
                    length_bytes,
                    remove,
                    chunk_version: 0,
                    prior_chunk_version: 0,
                };
                async move { head.grpc().truncate(request).await.map(tonic::Response::into_inner) }
            })
            .await
        }))
        .buffer_unordered(self.max_in_flight)
        .collect::<Vec<_>>()
        .await;
        results.into_iter().try_for_each(|r| r.map(|_| ()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_split_at_chunk_and_piece_boundaries() {
        let chunk = 4 << 20;
        let split = pieces(chunk, (4 << 20) - 10, (1 << 20) + 20);
        assert_eq!(
            split[0],
            Piece {
                index: 0,
                offset_in_chunk: chunk - 10,
                length: 10,
                position: 0
            }
        );
        assert_eq!(
            split[1],
            Piece {
                index: 1,
                offset_in_chunk: 0,
                length: 1 << 20,
                position: 10
            }
        );
        assert_eq!(
            split[2],
            Piece {
                index: 1,
                offset_in_chunk: 1 << 20,
                length: 10,
                position: (1 << 20) + 10
            }
        );
        assert_eq!(split.iter().map(|p| p.length).sum::<u64>(), (1 << 20) + 20);
        assert!(pieces(chunk, 5, 0).is_empty());
    }
}
