//! Helpers shared by the data-path tests: a cluster of real processes, deterministic file
//! contents, and direct clients to single data services. Each test crate uses a part of
//! them.
#![allow(dead_code)]

use std::path::PathBuf;

use bytes::Bytes;
use shoal_client::chains::{ChainInfo, ChainTable};
use shoal_client::proto as pb;
use shoal_client::{DataClient, FileLayout, RegistryClient, file};
use shoal_proto::data as data_pb;
use shoal_proto::data::data_service_client::DataServiceClient;
use shoal_testkit::ShoalCluster;

pub const MIB: u64 = 1 << 20;
pub const BLOCK_BYTES: u64 = 16 * MIB;

/// The `shoal` binary under test: this build's, or `$SHOAL_TEST_BIN` (to run these tests
/// against another build, say the last release, and see which of them it fails).
pub fn binary() -> PathBuf {
    std::env::var_os("SHOAL_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_shoal")))
}

pub use shoal_testkit::pattern;

pub async fn start(data_services: usize) -> ShoalCluster {
    start_with_lease(data_services, 2000).await
}

/// A registry and `data_services` data services, which leave their chains after
/// `lease_ms` of silence.
pub async fn start_with_lease(data_services: usize, lease_ms: u64) -> ShoalCluster {
    let lease = format!("--data-service-lease-ms={lease_ms}");
    ShoalCluster::start(&binary(), 1, data_services, &[lease.as_str()])
        .await
        .expect("cluster starts")
}

pub async fn volume(registry: &RegistryClient, name: &str, replicas: u32) -> u64 {
    registry
        .create_volume(pb::CreateVolumeRequest {
            name: name.into(),
            replicas,
            ..Default::default()
        })
        .await
        .expect("volume created")
        .id
}

pub async fn new_file(registry: &RegistryClient, volume_id: u64, name: &str) -> pb::Attr {
    registry
        .create(pb::CreateRequest {
            volume_id,
            parent: 1,
            name: Bytes::copy_from_slice(name.as_bytes()),
            file_type: pb::FileType::Regular as i32,
            mode: 0o644,
            exclusive: true,
            ..Default::default()
        })
        .await
        .expect("file created")
}

/// Writes `size` bytes of pattern `seed`, calling `during` after each block.
pub async fn write_pattern(
    data: &DataClient,
    volume_id: u64,
    attr: &pb::Attr,
    seed: u64,
    size: u64,
    mut during: impl FnMut(u64),
) -> anyhow::Result<pb::Attr> {
    let layout = file::layout_of(data, volume_id, attr).await?;
    let mut offset = 0;
    while offset < size {
        let length = BLOCK_BYTES.min(size - offset);
        data.write(&layout, offset, Bytes::from(pattern(seed, offset, length)), false)
            .await?;
        offset += length;
        during(offset);
    }
    let chunks: Vec<u64> = (0..size.div_ceil(layout.chunk_size_bytes)).collect();
    data.sync(&layout, &chunks).await?;
    Ok(data.registry().extend_file(volume_id, attr.ino, size).await?)
}

pub async fn verify_pattern(data: &DataClient, volume_id: u64, attr: &pb::Attr, seed: u64) -> anyhow::Result<()> {
    let mut offset = 0;
    while offset < attr.size_bytes {
        let length = BLOCK_BYTES.min(attr.size_bytes - offset);
        let bytes = file::read_at(data, volume_id, attr, offset, length).await?;
        anyhow::ensure!(bytes.len() as u64 == length, "short read at {offset}");
        if bytes[..] != pattern(seed, offset, length)[..] {
            let first = bytes
                .iter()
                .zip(pattern(seed, offset, length))
                .position(|(a, b)| *a != b)
                .unwrap_or(0);
            anyhow::bail!("file differs at byte {}", offset + first as u64);
        }
        offset += length;
    }
    Ok(())
}

pub async fn fail_with_logs<T>(cluster: &mut ShoalCluster, result: anyhow::Result<T>) -> T {
    match result {
        Ok(value) => value,
        Err(error) => {
            let logs = cluster.logs();
            cluster.stop_all();
            panic!("{error:#}\n{logs}");
        }
    }
}

/// A direct client to the data service with registry id `id`.
pub fn member(table: &ChainTable, id: u64) -> DataServiceClient<tonic::transport::Channel> {
    let address = table.address(id).expect("address known");
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .unwrap()
        .connect_lazy();
    DataServiceClient::new(channel).max_decoding_message_size(shoal_proto::MAX_MESSAGE_SIZE_BYTES)
}

pub async fn chain_table(registry: &RegistryClient) -> ChainTable {
    ChainTable::from_wire(registry.get_chain_table(pb::Empty {}).await.expect("chain table"))
}

pub fn chunk_id(volume_id: u64, ino: u64, index: u64) -> data_pb::ChunkId {
    data_pb::ChunkId { volume_id, ino, index }
}

/// Finds the file of `chunk` under a data service's disks.
pub fn find_chunk_file(disk: &std::path::Path, volume_id: u64, ino: u64, index: u64) -> Option<PathBuf> {
    let name = format!("{volume_id}-{ino}-{index}");
    for dir in std::fs::read_dir(disk.join("chunks")).ok()? {
        let candidate = dir.ok()?.path().join(&name);
        if candidate.is_file() {
            return Some(candidate);
        }
    }
    None
}

/// A read of `length` bytes from the start of chunk `index` of inode `ino`, at `chain`'s
/// version, for one member directly.
pub fn chunk_read(chain: &ChainInfo, volume_id: u64, ino: u64, index: u64, length: u32) -> data_pb::ReadRequest {
    data_pb::ReadRequest {
        chain_id: chain.id,
        chain_version: chain.version,
        chunk: Some(chunk_id(volume_id, ino, index)),
        offset: 0,
        length,
    }
}

/// A client write of `payload` at `offset` into chunk 0 of `attr`'s file on `chain`, with
/// its checksums, synced: tests change the fields they are about.
pub fn chunk_write(
    chain: &ChainInfo,
    volume_id: u64,
    attr: &pb::Attr,
    offset: u64,
    payload: Vec<u8>,
) -> data_pb::WriteRequest {
    data_pb::WriteRequest {
        chain_id: chain.id,
        chain_version: chain.version,
        chunk: Some(chunk_id(volume_id, attr.ino, 0)),
        chunk_size_bytes: attr.layout.as_ref().expect("placed").chunk_size_bytes,
        offset,
        payload_crcs: shoal_proto::checksum::payload_crcs(&payload),
        data: payload.into(),
        sync: true,
        ..Default::default()
    }
}

/// A file of 8 KiB of ones in a new volume `name` at replication 3, with its layout, the
/// chain table and the chain holding its one chunk.
pub struct OneChunkFile {
    pub volume_id: u64,
    pub attr: pb::Attr,
    pub layout: FileLayout,
    pub table: ChainTable,
    pub chain: ChainInfo,
}

pub async fn one_chunk_file(registry: &RegistryClient, name: &str) -> anyhow::Result<OneChunkFile> {
    let volume_id = volume(registry, name, 3).await;
    let attr = new_file(registry, volume_id, "f").await;
    let data = DataClient::new(registry.clone());
    let attr = file::write_at(&data, volume_id, &attr, 0, Bytes::from(vec![1u8; 8192]), true).await?;
    let layout = FileLayout::of(volume_id, &attr)?;
    let table = chain_table(registry).await;
    let chain = table.chain(layout.chain_of(0)).expect("chain").clone();
    anyhow::ensure!(chain.targets.len() == 3, "chain has {} members", chain.targets.len());
    Ok(OneChunkFile {
        volume_id,
        attr,
        layout,
        table,
        chain,
    })
}

/// The index in `cluster.data` of the data service with registry id `id`.
pub async fn index_of(cluster: &ShoalCluster, id: u64) -> usize {
    for service in &cluster.data {
        if service.id(&cluster.registry).await == Some(id) {
            return service.index;
        }
    }
    panic!("data service {id} is not one of this test's")
}

/// Whole-chunk resyncs sent by the data services `ids`, summed.
pub async fn total_resynced(table: &ChainTable, ids: impl IntoIterator<Item = u64>) -> anyhow::Result<u64> {
    let mut total = 0;
    for id in ids {
        total += member(table, id)
            .stats(data_pb::StatsRequest {})
            .await?
            .into_inner()
            .chunks_resynced;
    }
    Ok(total)
}

/// Every chunk of `chain_id` that data service `id` holds, with its version.
pub async fn member_chunks(table: &ChainTable, id: u64, chain_id: u64) -> anyhow::Result<Vec<(u64, u64, u64, u64)>> {
    let mut client = member(table, id);
    let mut listed = Vec::new();
    let mut after: Option<data_pb::ChunkId> = None;
    // Bounded: every page moves the cursor forward, and a test holds few chunks.
    for _page in 0..1000 {
        let reply = client
            .list_chunks(data_pb::ListChunksRequest {
                chain_id,
                after_volume_id: after.map_or(0, |c| c.volume_id),
                after_ino: after.map_or(0, |c| c.ino),
                after_index: after.map_or(0, |c| c.index),
                has_after: after.is_some(),
                max_chunks: 256,
            })
            .await?
            .into_inner();
        for chunk in &reply.chunks {
            let id = chunk.chunk.expect("listed chunk has an id");
            listed.push((id.volume_id, id.ino, id.index, chunk.chunk_version));
            after = Some(id);
        }
        if reply.end || reply.chunks.is_empty() {
            return Ok(listed);
        }
    }
    anyhow::bail!("data service {id} lists more than 256,000 chunks of chain {chain_id}")
}

/// None if every member of every chain holds the same chunks at the same versions with
/// the same bytes; otherwise what differs.
pub async fn replica_difference(registry: &RegistryClient) -> anyhow::Result<Option<String>> {
    let table = chain_table(registry).await;
    for chain in table.chains() {
        let mut lists = Vec::new();
        for target in &chain.targets {
            lists.push((
                target.data_service_id,
                member_chunks(&table, target.data_service_id, chain.id).await?,
            ));
        }
        for (id, list) in &lists[1..] {
            if list != &lists[0].1 {
                return Ok(Some(format!(
                    "chain {}: data service {id} holds {list:?}, data service {} holds {:?}",
                    chain.id, lists[0].0, lists[0].1
                )));
            }
        }
        for (volume_id, ino, index, _) in &lists[0].1 {
            let mut first: Option<Bytes> = None;
            for target in &chain.targets {
                let reply = member(&table, target.data_service_id)
                    .read(chunk_read(chain, *volume_id, *ino, *index, 4 * MIB as u32))
                    .await?
                    .into_inner();
                match &first {
                    None => first = Some(reply.data),
                    Some(bytes) if *bytes != reply.data => {
                        return Ok(Some(format!(
                            "chunk {volume_id}-{ino}-{index}: data service {} holds other bytes",
                            target.data_service_id
                        )));
                    }
                    Some(_) => {}
                }
            }
        }
    }
    Ok(None)
}
