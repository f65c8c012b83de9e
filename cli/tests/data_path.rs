//! The data path with real processes: a registry and three data services.
//!
//! Large files written at replication 3 read back bit-identical, also when a data service is
//! killed mid-write; concurrent writers leave identical replicas; a damaged byte on disk is
//! detected, served from another member and repaired; stale chain versions are refused;
//! deleted and truncated data is reclaimed.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use shoal_client::chains::ChainTable;
use shoal_client::proto as pb;
use shoal_client::{DataClient, Errno, FileLayout, RegistryClient, file};
use shoal_proto::data as data_pb;
use shoal_proto::data::data_service_client::DataServiceClient;
use shoal_testkit::{ShoalCluster, wait_for};

const MIB: u64 = 1 << 20;
const BLOCK_BYTES: u64 = 16 * MIB;

fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_shoal"))
}

/// Deterministic bytes for position `offset` of test file `seed` (splitmix64 per word).
fn pattern(seed: u64, offset: u64, length: u64) -> Vec<u8> {
    assert!(offset.is_multiple_of(8) && length.is_multiple_of(8));
    let mut out = Vec::with_capacity(length as usize);
    for word in offset / 8..(offset + length) / 8 {
        let mut z = word ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out
}

async fn start(data_services: usize) -> ShoalCluster {
    ShoalCluster::start(&binary(), 1, data_services, &["--data-service-lease-ms=2000"])
        .await
        .expect("cluster starts")
}

async fn volume(registry: &RegistryClient, name: &str, replicas: u32) -> u64 {
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

async fn new_file(registry: &RegistryClient, volume_id: u64, name: &str) -> pb::Attr {
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
async fn write_pattern(
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

async fn verify_pattern(data: &DataClient, volume_id: u64, attr: &pb::Attr, seed: u64) -> anyhow::Result<()> {
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

async fn fail_with_logs<T>(cluster: &mut ShoalCluster, result: anyhow::Result<T>) -> T {
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
fn member(table: &ChainTable, id: u64) -> DataServiceClient<tonic::transport::Channel> {
    let address = table.address(id).expect("address known");
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .unwrap()
        .connect_lazy();
    DataServiceClient::new(channel).max_decoding_message_size(shoal_proto::MAX_MESSAGE_SIZE_BYTES)
}

async fn chain_table(registry: &RegistryClient) -> ChainTable {
    ChainTable::from_wire(registry.get_chain_table(pb::Empty {}).await.expect("chain table"))
}

fn chunk_id(volume_id: u64, ino: u64, index: u64) -> data_pb::ChunkId {
    data_pb::ChunkId { volume_id, ino, index }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_gib_at_three_replicas_reads_back_identical() {
    let mut cluster = start(3).await;
    let result = async {
        let registry = cluster.registry.client();
        let volume_id = volume(&registry, "big", 3).await;
        let attr = new_file(&registry, volume_id, "one-gib").await;
        let data = DataClient::new(registry.clone());
        let started = Instant::now();
        let attr = write_pattern(&data, volume_id, &attr, 1, 1 << 30, |_| {}).await?;
        let written = started.elapsed();
        anyhow::ensure!(attr.size_bytes == 1 << 30, "size is {}", attr.size_bytes);
        // Striped: consecutive chunks on `stripe width` different chains, whose heads are
        // spread over the data services, so one stream uses several of them at once.
        let layout = FileLayout::of(volume_id, &attr)?;
        let table = chain_table(&registry).await;
        let width = layout.chain_ids.len();
        let chains: std::collections::BTreeSet<u64> = (0..width as u64).map(|i| layout.chain_of(i)).collect();
        let heads: std::collections::BTreeSet<u64> = chains
            .iter()
            .filter_map(|id| table.chain(*id).and_then(|c| c.head()))
            .collect();
        anyhow::ensure!(
            width >= 2 && chains.len() == width && heads.len() >= 2,
            "layout over {width} chains {chains:?} with heads {heads:?}"
        );
        for service in &cluster.data {
            let id = service.id(&cluster.registry).await.expect("registered");
            let stats = member(&table, id).stats(data_pb::StatsRequest {}).await?.into_inner();
            // Every byte is on all three members (replication 3).
            anyhow::ensure!(
                stats.bytes_written >= 1 << 30,
                "data service {id} stored only {} bytes",
                stats.bytes_written
            );
        }
        let started = Instant::now();
        verify_pattern(&data, volume_id, &attr, 1).await?;
        println!(
            "1 GiB at replication 3: written in {:.1} s, read back identical in {:.1} s",
            written.as_secs_f64(),
            started.elapsed().as_secs_f64()
        );
        Ok(())
    }
    .await;
    fail_with_logs(&mut cluster, result).await;
    cluster.stop_all();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn data_service_killed_mid_write_loses_nothing_and_rejoins() {
    let mut cluster = start(3).await;
    let registry = cluster.registry.client();
    let volume_id = volume(&registry, "survive", 3).await;
    let attr = new_file(&registry, volume_id, "one-gib").await;
    let data = DataClient::new(registry.clone());
    let victim = 1;
    let victim_id = cluster.data[victim]
        .id(&cluster.registry)
        .await
        .expect("victim registered");
    // The victim is SIGKILLed from another thread a moment after 256 MiB have been
    // acknowledged, so it dies while the next block's chain writes are in flight.
    let victim_pid = cluster.data[victim]
        .process
        .as_ref()
        .and_then(|p| p.pid())
        .expect("victim running");
    let progress = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let killer = {
        let progress = progress.clone();
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(600);
            while progress.load(std::sync::atomic::Ordering::Relaxed) < 256 * MIB {
                if Instant::now() > deadline {
                    return None;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            std::thread::sleep(Duration::from_millis(30));
            let at = progress.load(std::sync::atomic::Ordering::Relaxed);
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(victim_pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            )
            .ok()
            .map(|()| at)
        })
    };
    let written = write_pattern(&data, volume_id, &attr, 2, 1 << 30, |offset| {
        progress.store(offset, std::sync::atomic::Ordering::Relaxed)
    })
    .await;
    let killed_at = killer.join().expect("killer thread");
    // Reaps the killed process.
    cluster.kill_data_service(victim);
    let attr = fail_with_logs(&mut cluster, written).await;
    println!(
        "killed data service {victim_id} while writing after {} MiB; write completed",
        killed_at.unwrap_or(0) / MIB
    );
    let result = async {
        anyhow::ensure!(killed_at.is_some(), "the data service was never killed");
        let status = registry.status(pb::Empty {}).await?;
        let state = status.data_services.iter().find(|s| s.id == victim_id).map(|s| s.state);
        anyhow::ensure!(
            state == Some(pb::DataServiceState::Down as i32),
            "victim state is {state:?}"
        );
        verify_pattern(&data, volume_id, &attr, 2).await?;

        // The victim comes back, rejoins its chains at the tail, is filled, and serves.
        cluster.restart_data_service(victim)?;
        wait_for(
            "the victim to serve every chain again",
            Duration::from_secs(120),
            || async {
                let table = chain_table(&registry).await;
                let serving = table
                    .chains()
                    .filter(|c| c.position(victim_id).is_some())
                    .all(|c| c.targets.iter().all(|t| t.serving));
                let member_everywhere = table
                    .chains()
                    .filter(|c| c.replicas == 3)
                    .all(|c| c.position(victim_id).is_some());
                (serving && member_everywhere).then_some(())
            },
        )
        .await?;
        // Every chunk on the victim is identical to the same chunk on the other members.
        let table = chain_table(&registry).await;
        let layout = FileLayout::of(volume_id, &attr)?;
        for index in 0..(attr.size_bytes / layout.chunk_size_bytes) {
            let chain = table.chain(layout.chain_of(index)).expect("chain").clone();
            let mut contents = Vec::new();
            for target in &chain.targets {
                let reply = member(&table, target.data_service_id)
                    .read(data_pb::ReadRequest {
                        chain_id: chain.id,
                        chain_version: chain.version,
                        chunk: Some(chunk_id(volume_id, attr.ino, index)),
                        offset: 0,
                        length: layout.chunk_size_bytes as u32,
                    })
                    .await?
                    .into_inner();
                contents.push((target.data_service_id, reply.data));
            }
            let expected = pattern(2, index * layout.chunk_size_bytes, layout.chunk_size_bytes);
            for (id, content) in &contents {
                anyhow::ensure!(
                    content[..] == expected[..],
                    "chunk {index} on data service {id} differs"
                );
            }
        }
        Ok(())
    }
    .await;
    fail_with_logs(&mut cluster, result).await;
    cluster.stop_all();
}

/// Every chunk of `chain_id` that data service `id` holds, with its version.
async fn member_chunks(table: &ChainTable, id: u64, chain_id: u64) -> anyhow::Result<Vec<(u64, u64, u64, u64)>> {
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
async fn replica_difference(registry: &RegistryClient) -> anyhow::Result<Option<String>> {
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
                    .read(data_pb::ReadRequest {
                        chain_id: chain.id,
                        chain_version: chain.version,
                        chunk: Some(chunk_id(*volume_id, *ino, *index)),
                        offset: 0,
                        length: 4 * MIB as u32,
                    })
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

/// A data service that was down while files were deleted, truncated and rewritten holds an
/// older history of their chunks, some with versions the chain has since reused. When it
/// comes back, every chain must end with identical members: nothing stale served, nothing
/// leaked, later writes applied on the chain's bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_that_missed_deletes_truncates_and_rewrites_converges_when_it_returns() {
    let mut cluster = start(3).await;
    let result = async {
        let registry = cluster.registry.client();
        let volume_id = volume(&registry, "history", 3).await;
        let data = DataClient::new(registry.clone());
        let mut files = Vec::new();
        for (name, seed) in [("doomed", 11), ("shrink", 12), ("rewrite", 13), ("keep", 14)] {
            let attr = new_file(&registry, volume_id, name).await;
            files.push(write_pattern(&data, volume_id, &attr, seed, 12 * MIB, |_| {}).await?);
        }
        let (shrink, rewrite, keep) = (files[1].clone(), files[2].clone(), files[3].clone());

        let victim = 2;
        let victim_id = cluster.data[victim].id(&cluster.registry).await.expect("registered");
        cluster.kill_data_service(victim);
        wait_for("the victim to be marked down", Duration::from_secs(30), || async {
            let status = registry.status(pb::Empty {}).await.ok()?;
            let state = status.data_services.iter().find(|s| s.id == victim_id)?.state;
            (state == pb::DataServiceState::Down as i32).then_some(())
        })
        .await?;

        // While it is down: a delete, a truncate that removes and cuts chunks, and a
        // rewrite from zero (whose chunk versions start again at 1).
        registry
            .unlink(pb::UnlinkRequest {
                volume_id,
                parent: 1,
                name: Bytes::from_static(b"doomed"),
                ..Default::default()
            })
            .await?;
        let shrink = file::truncate(&data, volume_id, &shrink, 5 * MIB).await?;
        let emptied = file::truncate(&data, volume_id, &rewrite, 0).await?;
        let rewrite = write_pattern(&data, volume_id, &emptied, 15, 6 * MIB, |_| {}).await?;

        cluster.restart_data_service(victim)?;
        wait_for(
            "the victim to serve every chain again",
            Duration::from_secs(120),
            || async {
                let table = chain_table(&registry).await;
                let everywhere = table
                    .chains()
                    .filter(|c| c.replicas == 3)
                    .all(|c| c.position(victim_id).is_some() && c.targets.iter().all(|t| t.serving));
                everywhere.then_some(())
            },
        )
        .await?;
        // A write after the return goes down the whole chain, the victim included.
        let overwrite = vec![0xabu8; 8192];
        let rewrite = file::write_at(&data, volume_id, &rewrite, 4096, Bytes::from(overwrite.clone()), true).await?;

        // Converged: identical members, and the deleted file's chunks gone from every disk
        // (the victim's included: it held them while the file was deleted).
        let disks: Vec<PathBuf> = cluster.data.iter().map(|d| d.disks[0].clone()).collect();
        let doomed_ino = files[0].ino;
        let leftover = |disks: &[PathBuf]| {
            disks.iter().find_map(|disk| {
                (0..3)
                    .find_map(|index| find_chunk_file(disk, volume_id, doomed_ino, index))
                    .map(|path| format!("a chunk of the deleted file is left at {}", path.display()))
            })
        };
        let converged = wait_for(
            "every chain's members to hold the same chunks",
            Duration::from_secs(60),
            || {
                let registry = registry.clone();
                let left = leftover(&disks);
                async move {
                    match replica_difference(&registry).await {
                        Ok(None) if left.is_none() => Some(Ok(())),
                        Ok(_) => None,
                        Err(error) => Some(Err(error)),
                    }
                }
            },
        )
        .await;
        if converged.is_err() {
            let difference = replica_difference(&registry).await?;
            anyhow::bail!(
                "replicas differ after the victim returned: {difference:?}; {:?}",
                leftover(&disks)
            );
        }
        converged??;

        // Through the client, from whichever member it picks.
        verify_pattern(&data, volume_id, &keep, 14).await?;
        let kept = file::read_at(&data, volume_id, &shrink, 0, 5 * MIB).await?;
        anyhow::ensure!(kept[..] == pattern(12, 0, 5 * MIB)[..], "the truncated file changed");
        let mut expected = pattern(15, 0, 6 * MIB);
        expected[4096..4096 + 8192].copy_from_slice(&overwrite);
        let back = file::read_at(&data, volume_id, &rewrite, 0, 6 * MIB).await?;
        anyhow::ensure!(back[..] == expected[..], "the rewritten file reads back other bytes");
        let mut resynced = 0;
        let table = chain_table(&registry).await;
        for service in &cluster.data {
            let id = service.id(&cluster.registry).await.expect("registered");
            resynced += member(&table, id)
                .stats(data_pb::StatsRequest {})
                .await?
                .into_inner()
                .chunks_resynced;
        }
        println!("replicas identical after the return; {resynced} chunks sent whole to an out-of-sync member");
        Ok(())
    }
    .await;
    fail_with_logs(&mut cluster, result).await;
    cluster.stop_all();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_to_one_chunk_leave_identical_replicas() {
    let mut cluster = start(3).await;
    let result = async {
        let registry = cluster.registry.client();
        let volume_id = volume(&registry, "shared", 3).await;
        let attr = new_file(&registry, volume_id, "contended").await;
        let first = DataClient::new(registry.clone());
        let layout = file::layout_of(&first, volume_id, &attr).await?;
        let writers: Vec<_> = (0..2u64)
            .map(|writer| {
                let client = DataClient::new(registry.clone());
                let layout = layout.clone();
                tokio::spawn(async move {
                    // Interleaved 4 KiB blocks, plus overlapping unaligned ranges, in chunk 0.
                    for round in 0..60u64 {
                        let block = (round * 2 + writer) * 4096;
                        let fill = vec![(writer * 100 + round) as u8; 4096];
                        client.write(&layout, block, Bytes::from(fill), false).await?;
                        let overlap = vec![(writer * 7 + round) as u8 + 1; 10_000];
                        client
                            .write(&layout, 3000 + round * 997, Bytes::from(overlap), round % 10 == 0)
                            .await?;
                    }
                    Ok::<(), shoal_client::ClientError>(())
                })
            })
            .collect();
        for writer in writers {
            writer.await??;
        }
        let table = chain_table(&registry).await;
        let chain = table.chain(layout.chain_of(0)).expect("chain").clone();
        anyhow::ensure!(chain.targets.len() == 3, "chain has {} members", chain.targets.len());
        let mut replicas = Vec::new();
        for target in &chain.targets {
            let reply = member(&table, target.data_service_id)
                .read(data_pb::ReadRequest {
                    chain_id: chain.id,
                    chain_version: chain.version,
                    chunk: Some(chunk_id(volume_id, attr.ino, 0)),
                    offset: 0,
                    length: layout.chunk_size_bytes as u32,
                })
                .await?
                .into_inner();
            replicas.push((target.data_service_id, reply.chunk_version, reply.data));
        }
        for (id, version, content) in &replicas[1..] {
            anyhow::ensure!(
                *version == replicas[0].1,
                "data service {id} has version {version}, the head {}",
                replicas[0].1
            );
            anyhow::ensure!(
                content == &replicas[0].2,
                "data service {id} holds different bytes than the head"
            );
        }
        anyhow::ensure!(
            replicas[0].1 == 240,
            "240 writes should give version 240, found {}",
            replicas[0].1
        );
        Ok(())
    }
    .await;
    fail_with_logs(&mut cluster, result).await;
    cluster.stop_all();
}

/// Finds the file of `chunk` under a data service's disks.
fn find_chunk_file(disk: &std::path::Path, volume_id: u64, ino: u64, index: u64) -> Option<PathBuf> {
    let name = format!("{volume_id}-{ino}-{index}");
    for dir in std::fs::read_dir(disk.join("chunks")).ok()? {
        let candidate = dir.ok()?.path().join(&name);
        if candidate.is_file() {
            return Some(candidate);
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn flipped_byte_is_detected_served_from_a_peer_and_repaired() {
    let mut cluster = start(3).await;
    let result = async {
        let registry = cluster.registry.client();
        let volume_id = volume(&registry, "scrub", 3).await;
        let attr = new_file(&registry, volume_id, "precious").await;
        let data = DataClient::new(registry.clone());
        let attr = write_pattern(&data, volume_id, &attr, 3, 8 * MIB, |_| {}).await?;
        let layout = FileLayout::of(volume_id, &attr)?;
        let table = chain_table(&registry).await;
        let chain = table.chain(layout.chain_of(0)).expect("chain").clone();
        // The member the client asks first for chunk 0.
        let serving: Vec<u64> = chain.serving().collect();
        let damaged_id = serving[0];
        let damaged_index = {
            let mut found = None;
            for service in &cluster.data {
                if service.id(&cluster.registry).await == Some(damaged_id) {
                    found = Some(service.index);
                }
            }
            found.expect("damaged member is one of ours")
        };
        let path = find_chunk_file(&cluster.data[damaged_index].disks[0], volume_id, attr.ino, 0)
            .ok_or_else(|| anyhow::anyhow!("chunk file not found"))?;
        let mut bytes = std::fs::read(&path)?;
        bytes[123_456] ^= 0x20;
        std::fs::write(&path, &bytes)?;

        // The client asks the damaged member first: it gets the right bytes anyway, from
        // another member, and the damaged member counts and logs what it refused to return.
        verify_pattern(&data, volume_id, &attr, 3).await?;
        let stats = member(&table, damaged_id)
            .stats(data_pb::StatsRequest {})
            .await?
            .into_inner();
        anyhow::ensure!(
            stats.corruptions_detected == 1,
            "the client's read must have hit the damaged block once: {stats:?}"
        );
        let log = cluster.data[damaged_index].log();
        anyhow::ensure!(log.contains("checksum mismatch"), "corruption not logged");
        // A direct read of the damaged range never returns the damaged bytes: refused
        // until the repair (below) has replaced the chunk, the right bytes after.
        let direct = member(&table, damaged_id)
            .read(data_pb::ReadRequest {
                chain_id: chain.id,
                chain_version: chain.version,
                chunk: Some(chunk_id(volume_id, attr.ino, 0)),
                offset: 120_000,
                length: 8192,
            })
            .await;
        match direct {
            Err(status) => anyhow::ensure!(status.code() == tonic::Code::DataLoss, "got {status:?}"),
            Ok(reply) => anyhow::ensure!(
                reply.into_inner().data[..] == pattern(3, 120_000, 8192)[..],
                "a damaged block was returned"
            ),
        }
        // The damaged member repairs the chunk from a peer and serves it again.
        wait_for("the damaged chunk to be repaired", Duration::from_secs(30), || async {
            let stats = member(&table, damaged_id)
                .stats(data_pb::StatsRequest {})
                .await
                .ok()?
                .into_inner();
            (stats.chunks_repaired >= 1).then_some(())
        })
        .await?;
        let repaired = member(&table, damaged_id)
            .read(data_pb::ReadRequest {
                chain_id: chain.id,
                chain_version: chain.version,
                chunk: Some(chunk_id(volume_id, attr.ino, 0)),
                offset: 0,
                length: layout.chunk_size_bytes as u32,
            })
            .await?
            .into_inner();
        anyhow::ensure!(
            repaired.data[..] == pattern(3, 0, layout.chunk_size_bytes)[..],
            "repair restored other bytes"
        );
        Ok(())
    }
    .await;
    fail_with_logs(&mut cluster, result).await;
    cluster.stop_all();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stale_chain_version_is_refused_and_changes_nothing() {
    let mut cluster = start(3).await;
    let result = async {
        let registry = cluster.registry.client();
        let volume_id = volume(&registry, "stale", 3).await;
        let attr = new_file(&registry, volume_id, "f").await;
        let data = DataClient::new(registry.clone());
        let attr = file::write_at(&data, volume_id, &attr, 0, Bytes::from(vec![1u8; 8192]), true).await?;
        let layout = FileLayout::of(volume_id, &attr)?;
        let table = chain_table(&registry).await;
        let chain = table.chain(layout.chain_of(0)).expect("chain").clone();
        let head = chain.head().expect("head");
        for wrong in [chain.version.saturating_sub(1), chain.version + 5] {
            let payload = vec![9u8; 4096];
            let refused = member(&table, head)
                .write(data_pb::WriteRequest {
                    chain_id: chain.id,
                    chain_version: wrong,
                    chunk: Some(chunk_id(volume_id, attr.ino, 0)),
                    chunk_size_bytes: layout.chunk_size_bytes,
                    offset: 0,
                    payload_crcs: shoal_proto::checksum::payload_crcs(&payload),
                    data: payload.into(),
                    sync: true,
                    chunk_version: 0,
                    prior_chunk_version: 0,
                })
                .await
                .expect_err("a stale chain version must be refused");
            anyhow::ensure!(
                refused.code() == tonic::Code::FailedPrecondition,
                "version {wrong}: {refused:?}"
            );
            anyhow::ensure!(
                refused.metadata().get(shoal_proto::STALE_CHAIN_METADATA_KEY).is_some(),
                "no stale-chain metadata"
            );
        }
        // A payload whose checksums do not match is refused too.
        let damaged = member(&table, head)
            .write(data_pb::WriteRequest {
                chain_id: chain.id,
                chain_version: chain.version,
                chunk: Some(chunk_id(volume_id, attr.ino, 0)),
                chunk_size_bytes: layout.chunk_size_bytes,
                offset: 0,
                payload_crcs: vec![0xdead_beef],
                data: vec![9u8; 4096].into(),
                sync: true,
                chunk_version: 0,
                prior_chunk_version: 0,
            })
            .await
            .expect_err("a damaged payload must be refused");
        anyhow::ensure!(damaged.code() == tonic::Code::DataLoss, "{damaged:?}");
        let back = file::read_at(&data, volume_id, &attr, 0, 8192).await?;
        anyhow::ensure!(back.iter().all(|b| *b == 1), "a refused write changed the file");
        Ok(())
    }
    .await;
    fail_with_logs(&mut cluster, result).await;
    cluster.stop_all();
}

/// A member whose chunk has another history than its predecessor's (here: a write that
/// reached only the tail, as one that never committed would) refuses changes forwarded on
/// top of a version it does not hold, and is sent the whole chunk instead: the replicas end
/// identical, with the later write and without the stray one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_out_of_sync_member_refuses_forwarded_writes_and_is_sent_the_whole_chunk() {
    let mut cluster = start(3).await;
    let result = async {
        let registry = cluster.registry.client();
        let volume_id = volume(&registry, "resync", 3).await;
        let attr = new_file(&registry, volume_id, "f").await;
        let data = DataClient::new(registry.clone());
        let attr = file::write_at(&data, volume_id, &attr, 0, Bytes::from(vec![1u8; 8192]), true).await?;
        let layout = FileLayout::of(volume_id, &attr)?;
        let table = chain_table(&registry).await;
        let chain = table.chain(layout.chain_of(0)).expect("chain").clone();
        anyhow::ensure!(chain.targets.len() == 3, "chain has {} members", chain.targets.len());
        let tail = chain.targets[2].data_service_id;
        let read_member = |id: u64| {
            let mut client = member(&table, id);
            let request = data_pb::ReadRequest {
                chain_id: chain.id,
                chain_version: chain.version,
                chunk: Some(chunk_id(volume_id, attr.ino, 0)),
                offset: 0,
                length: 8192,
            };
            async move { anyhow::Ok(client.read(request).await?.into_inner()) }
        };
        let version = read_member(tail).await?.chunk_version;
        let forwarded = |prior: u64, fill: u8| {
            let payload = vec![fill; 4096];
            data_pb::WriteRequest {
                chain_id: chain.id,
                chain_version: chain.version,
                chunk: Some(chunk_id(volume_id, attr.ino, 0)),
                chunk_size_bytes: layout.chunk_size_bytes,
                offset: 0,
                payload_crcs: shoal_proto::checksum::payload_crcs(&payload),
                data: payload.into(),
                sync: true,
                chunk_version: prior + 1,
                prior_chunk_version: prior,
            }
        };
        // A change on top of a version the tail does not hold is refused, and changes nothing.
        let refused = member(&table, tail)
            .write(forwarded(version + 3, 9))
            .await
            .expect_err("a forwarded write on another prior version must be refused");
        anyhow::ensure!(refused.code() == tonic::Code::Aborted, "{refused:?}");
        let unchanged = read_member(tail).await?;
        anyhow::ensure!(
            unchanged.chunk_version == version && unchanged.data.iter().all(|b| *b == 1),
            "a refused write changed the tail"
        );
        // A stray write only the tail applied: same prior, so it is accepted there alone.
        member(&table, tail).write(forwarded(version, 7)).await?;
        // The next client write reaches the tail on top of a version it no longer holds.
        file::write_at(&data, volume_id, &attr, 4096, Bytes::from(vec![2u8; 4096]), true).await?;
        let mut expected = vec![1u8; 4096];
        expected.extend_from_slice(&[2u8; 4096]);
        for target in &chain.targets {
            let reply = read_member(target.data_service_id).await?;
            anyhow::ensure!(
                reply.data[..] == expected[..] && reply.chunk_version == version + 1,
                "data service {} holds version {} with other bytes",
                target.data_service_id,
                reply.chunk_version
            );
        }
        let mut resynced = 0;
        for target in &chain.targets {
            let stats = member(&table, target.data_service_id)
                .stats(data_pb::StatsRequest {})
                .await?;
            resynced += stats.into_inner().chunks_resynced;
        }
        anyhow::ensure!(resynced == 1, "{resynced} whole-chunk resyncs, expected 1");
        Ok(())
    }
    .await;
    fail_with_logs(&mut cluster, result).await;
    cluster.stop_all();
}

/// A write whose forward fails (the tail was SIGKILLed) leaves it applied at the head and
/// the middle but unacknowledged: neither serves it to readers, and once the chain has
/// dropped the dead tail its members converge on one copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unacknowledged_change_is_not_read_back_and_heals() {
    let mut cluster = start(3).await;
    let result = async {
        let registry = cluster.registry.client();
        let volume_id = volume(&registry, "dirty", 3).await;
        let attr = new_file(&registry, volume_id, "f").await;
        let data = DataClient::new(registry.clone());
        let attr = file::write_at(&data, volume_id, &attr, 0, Bytes::from(vec![1u8; 8192]), true).await?;
        let layout = FileLayout::of(volume_id, &attr)?;
        let table = chain_table(&registry).await;
        let chain = table.chain(layout.chain_of(0)).expect("chain").clone();
        let [head, middle, tail] = [0, 1, 2].map(|i| chain.targets[i].data_service_id);
        let mut tail_index = None;
        for service in &cluster.data {
            if service.id(&cluster.registry).await == Some(tail) {
                tail_index = Some(service.index);
            }
        }
        cluster.kill_data_service(tail_index.expect("the tail is one of ours"));
        let payload = vec![5u8; 4096];
        let failed = member(&table, head)
            .write(data_pb::WriteRequest {
                chain_id: chain.id,
                chain_version: chain.version,
                chunk: Some(chunk_id(volume_id, attr.ino, 0)),
                chunk_size_bytes: layout.chunk_size_bytes,
                offset: 0,
                payload_crcs: shoal_proto::checksum::payload_crcs(&payload),
                data: payload.into(),
                sync: true,
                chunk_version: 0,
                prior_chunk_version: 0,
            })
            .await
            .expect_err("a write whose tail is dead cannot be acknowledged");
        anyhow::ensure!(failed.code() == tonic::Code::Unavailable, "{failed:?}");
        for id in [head, middle] {
            let refused = member(&table, id)
                .read(data_pb::ReadRequest {
                    chain_id: chain.id,
                    chain_version: chain.version,
                    chunk: Some(chunk_id(volume_id, attr.ino, 0)),
                    offset: 0,
                    length: 8192,
                })
                .await
                .expect_err("an unacknowledged change must not be read back");
            anyhow::ensure!(
                refused.code() == tonic::Code::Unavailable && refused.message().contains("not acknowledged"),
                "data service {id}: {refused:?}"
            );
        }
        // The registry drops the dead tail; the two left converge and serve reads again.
        wait_for(
            "the chain to drop its dead tail and heal",
            Duration::from_secs(60),
            || async {
                let table = chain_table(&registry).await;
                let chain = table.chain(chain.id)?.clone();
                if chain.position(tail).is_some() {
                    return None;
                }
                let mut copies = Vec::new();
                for target in &chain.targets {
                    let reply = member(&table, target.data_service_id)
                        .read(data_pb::ReadRequest {
                            chain_id: chain.id,
                            chain_version: chain.version,
                            chunk: Some(chunk_id(volume_id, attr.ino, 0)),
                            offset: 0,
                            length: 8192,
                        })
                        .await
                        .ok()?
                        .into_inner();
                    copies.push(reply.data);
                }
                (copies.len() == 2 && copies[0] == copies[1]).then_some(())
            },
        )
        .await?;
        Ok(())
    }
    .await;
    fail_with_logs(&mut cluster, result).await;
    cluster.stop_all();
}

async fn chunk_counts(cluster: &ShoalCluster) -> anyhow::Result<Vec<u64>> {
    let table = chain_table(&cluster.registry.client()).await;
    let mut counts = Vec::new();
    for service in &cluster.data {
        let id = service.id(&cluster.registry).await.expect("registered");
        counts.push(
            member(&table, id)
                .stats(data_pb::StatsRequest {})
                .await?
                .into_inner()
                .chunks,
        );
    }
    Ok(counts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deleted_and_truncated_data_is_reclaimed_and_nothing_else() {
    let mut cluster = start(3).await;
    let result = async {
        let registry = cluster.registry.client();
        let volume_id = volume(&registry, "gc", 3).await;
        let data = DataClient::new(registry.clone());
        let keep = new_file(&registry, volume_id, "keep").await;
        let keep = write_pattern(&data, volume_id, &keep, 4, 12 * MIB, |_| {}).await?;
        let doomed_attr = new_file(&registry, volume_id, "doomed").await;
        write_pattern(&data, volume_id, &doomed_attr, 5, 12 * MIB, |_| {}).await?;
        let shrink = new_file(&registry, volume_id, "shrink").await;
        let shrink = write_pattern(&data, volume_id, &shrink, 6, 12 * MIB, |_| {}).await?;
        // 3 files x 3 chunks of 4 MiB x 3 replicas.
        let total: u64 = chunk_counts(&cluster).await?.iter().sum();
        anyhow::ensure!(total == 27, "{total} chunks stored, expected 27");

        registry
            .unlink(pb::UnlinkRequest {
                volume_id,
                parent: 1,
                name: Bytes::from_static(b"doomed"),
                ..Default::default()
            })
            .await?;
        let shrink = file::truncate(&data, volume_id, &shrink, 5 * MIB).await?;
        wait_for(
            "deleted and truncated chunks to be reclaimed",
            Duration::from_secs(30),
            || async {
                let total: u64 = chunk_counts(&cluster).await.ok()?.iter().sum();
                // keep: 3 chunks, shrink: 2 chunks, on 3 replicas each.
                (total == 15).then_some(())
            },
        )
        .await?;
        // On disk too: no chunk file of the deleted file, none past the truncated end, and
        // the chunk that holds the new end cut to its 1 MiB.
        let doomed_ino = doomed_attr.ino;
        for service in &cluster.data {
            let disk = &service.disks[0];
            for index in 0..3 {
                anyhow::ensure!(
                    find_chunk_file(disk, volume_id, doomed_ino, index).is_none(),
                    "chunk {index} of the deleted file is still on {}",
                    disk.display()
                );
            }
            anyhow::ensure!(
                find_chunk_file(disk, volume_id, shrink.ino, 2).is_none(),
                "chunk 2 of the truncated file is still on {}",
                disk.display()
            );
            let cut = find_chunk_file(disk, volume_id, shrink.ino, 1)
                .ok_or_else(|| anyhow::anyhow!("chunk 1 of the truncated file is gone from {}", disk.display()))?;
            let cut_bytes = std::fs::metadata(&cut)?.len();
            anyhow::ensure!(cut_bytes == MIB, "{} holds {cut_bytes} bytes, not 1 MiB", cut.display());
        }
        verify_pattern(&data, volume_id, &keep, 4).await?;
        let head = file::read_at(&data, volume_id, &shrink, 0, 5 * MIB).await?;
        anyhow::ensure!(
            head[..] == pattern(6, 0, 5 * MIB)[..],
            "truncated file lost its kept bytes"
        );
        // Growing again reads zeros past the old end, never the old bytes.
        let grown = file::truncate(&data, volume_id, &shrink, 10 * MIB).await?;
        let tail = file::read_at(&data, volume_id, &grown, 5 * MIB, 5 * MIB).await?;
        anyhow::ensure!(
            tail.iter().all(|b| *b == 0),
            "old bytes reappeared after truncate and extend"
        );
        Ok(())
    }
    .await;
    fail_with_logs(&mut cluster, result).await;
    cluster.stop_all();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn full_disk_gives_enospc_and_keeps_serving_reads() {
    let root = tempfile::tempdir().unwrap();
    let disk = root.path().join("tiny");
    std::fs::create_dir_all(&disk).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=48m", "tmpfs"])
        .arg(&disk)
        .status()
        .expect("mount runs");
    assert!(
        mounted.success(),
        "cannot mount a tmpfs for the full-disk test (the test suite runs as root)"
    );
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(disk.clone());

    let registry_cluster = shoal_testkit::RegistryCluster::start(&binary(), 1, &["--data-service-lease-ms=2000"])
        .await
        .expect("registry starts");
    let mut cluster = ShoalCluster::from_registry(&binary(), registry_cluster);
    cluster
        .add_data_service(vec![disk.clone()])
        .expect("data service starts");
    let ready = cluster_ready(&cluster).await;
    fail_with_logs(&mut cluster, ready).await;
    let result = async {
        let registry = cluster.registry.client();
        // The heartbeat reports the disk as it is: 48 MiB, nearly all free, healthy.
        let disk_report = || async {
            let status = registry.status(pb::Empty {}).await.ok()?;
            let service = status.data_services.first()?;
            service.disks.first().cloned()
        };
        let reported = disk_report().await.ok_or_else(|| anyhow::anyhow!("no disk reported"))?;
        anyhow::ensure!(
            reported.capacity_bytes == 48 * MIB && reported.free_bytes > 40 * MIB && reported.healthy,
            "reported disk: {reported:?}"
        );
        let volume_id = volume(&registry, "small", 1).await;
        let data = DataClient::new(registry.clone());
        let small = new_file(&registry, volume_id, "small").await;
        let small = write_pattern(&data, volume_id, &small, 7, MIB, |_| {}).await?;
        let big = new_file(&registry, volume_id, "big").await;
        let layout = file::layout_of(&data, volume_id, &big).await?;
        let mut offset = 0;
        let error = loop {
            match data
                .write(&layout, offset, Bytes::from(pattern(8, offset, 4 * MIB)), false)
                .await
            {
                Ok(()) => offset += 4 * MIB,
                Err(error) => break error,
            }
            anyhow::ensure!(offset < 256 * MIB, "wrote {offset} bytes to a 48 MiB disk");
        };
        anyhow::ensure!(error.errno() == Errno::ENOSPC, "expected ENOSPC, got {error}");
        // The next heartbeats report it full (and still healthy: full is not broken).
        wait_for(
            "the heartbeat to report the disk full",
            Duration::from_secs(30),
            || async {
                disk_report()
                    .await
                    .filter(|disk| disk.free_bytes < 4 * MIB && disk.healthy)
            },
        )
        .await?;
        println!("disk full after {} MiB: {error}", offset / MIB);
        verify_pattern(&data, volume_id, &small, 7).await?;
        let status = registry.status(pb::Empty {}).await?;
        anyhow::ensure!(
            status
                .data_services
                .iter()
                .all(|s| s.state == pb::DataServiceState::Up as i32),
            "a full disk must not take the data service down"
        );
        Ok(())
    }
    .await;
    fail_with_logs(&mut cluster, result).await;
    cluster.stop_all();
}

async fn cluster_ready(cluster: &ShoalCluster) -> anyhow::Result<()> {
    cluster.wait_for_data_services(Duration::from_secs(60)).await
}
