//! The data path with real processes: a registry and three data services.
//!
//! Large files written at replication 3 read back bit-identical, also when a data service is
//! killed mid-write; concurrent writers leave identical replicas; a damaged byte on disk is
//! detected, served from another member and repaired; stale chain versions are refused;
//! deleted and truncated data is reclaimed. Convergence after failures: `data_convergence`.

mod data_common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use data_common::*;
use shoal_client::proto as pb;
use shoal_client::{DataClient, Errno, FileLayout, file};
use shoal_proto::data as data_pb;
use shoal_testkit::{ShoalCluster, wait_for};

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
        // Each round at the head makes one version; writes merged into another's round
        // make none of their own.
        let merged = member(&table, chain.head().expect("head"))
            .stats(data_pb::StatsRequest {})
            .await?
            .into_inner()
            .writes_merged;
        anyhow::ensure!(
            replicas[0].1 + merged == 240,
            "240 writes, {merged} of them merged, should give version {}, found {}",
            240 - merged,
            replicas[0].1
        );
        Ok(())
    }
    .await;
    fail_with_logs(&mut cluster, result).await;
    cluster.stop_all();
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
        let damaged_index = index_of(&cluster, damaged_id).await;
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
        let OneChunkFile {
            volume_id,
            attr,
            table,
            chain,
            ..
        } = one_chunk_file(&registry, "stale").await?;
        let data = DataClient::new(registry.clone());
        let head = chain.head().expect("head");
        for wrong in [chain.version.saturating_sub(1), chain.version + 5] {
            let refused = member(&table, head)
                .write(data_pb::WriteRequest {
                    chain_version: wrong,
                    ..chunk_write(&chain, volume_id, &attr, 0, vec![9u8; 4096])
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
                payload_crcs: vec![0xdead_beef],
                ..chunk_write(&chain, volume_id, &attr, 0, vec![9u8; 4096])
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

/// The framed transport (chunk bytes outside protobuf) refuses what it cannot trust and
/// goes on serving: a refused call keeps its code and metadata, a wrong preface, a damaged
/// head and an absurd length close only their own connection, and nothing reaches a chunk.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn framed_calls_refuse_bad_frames_and_keep_serving() {
    use shoal_client::frames::FrameClient;
    use shoal_proto::frame::{FrameKind, PREFACE, write_frame};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut cluster = start(3).await;
    let result = async {
        let registry = cluster.registry.client();
        let OneChunkFile {
            volume_id,
            attr,
            table,
            chain,
            ..
        } = one_chunk_file(&registry, "framed").await?;
        let data = DataClient::new(registry.clone());
        let head = chain.head().expect("head");
        let address = table.address(head).expect("head address").to_string();
        let frames = FrameClient::new(None);
        let write = |chain_version: u64, payload_crcs: Vec<u32>| data_pb::WriteRequest {
            chain_version,
            payload_crcs,
            ..chunk_write(&chain, volume_id, &attr, 0, vec![9u8; 4096])
        };
        let crcs = shoal_proto::checksum::payload_crcs(&[9u8; 4096]);
        let stale = frames
            .write(&address, write(chain.version + 5, crcs))
            .await
            .expect_err("a stale chain version must be refused");
        anyhow::ensure!(stale.code() == tonic::Code::FailedPrecondition, "{stale:?}");
        anyhow::ensure!(
            stale.metadata().get(shoal_proto::STALE_CHAIN_METADATA_KEY).is_some(),
            "the stale-chain metadata was lost on the way: {stale:?}"
        );
        let damaged = frames
            .write(&address, write(chain.version, vec![0xdead_beef]))
            .await
            .expect_err("a damaged payload must be refused");
        anyhow::ensure!(damaged.code() == tonic::Code::DataLoss, "{damaged:?}");

        // Raw connections that break the protocol are closed, each on its own.
        let mut head_bytes = Vec::new();
        write_frame(&mut head_bytes, FrameKind::Read, b"header", b"").await?;
        let mut flipped = head_bytes.clone();
        flipped[20] ^= 0xff;
        let mut absurd = head_bytes.clone();
        absurd[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        for (what, preface, frame) in [
            ("a wrong preface", *b"SHOALXX1", head_bytes.clone()),
            ("a damaged header", PREFACE, flipped),
            ("an absurd payload length", PREFACE, absurd),
        ] {
            let mut raw = tokio::net::TcpStream::connect(&address).await?;
            raw.write_all(&preface).await?;
            raw.write_all(&frame).await?;
            let mut reply = Vec::new();
            let read = tokio::time::timeout(Duration::from_secs(10), raw.read_to_end(&mut reply)).await;
            anyhow::ensure!(
                matches!(read, Ok(Ok(0)) | Ok(Err(_))),
                "{what}: the connection was not closed ({read:?}, {} bytes)",
                reply.len()
            );
        }

        // Nothing reached the chunk, and both transports still serve it.
        let back = file::read_at(&data, volume_id, &attr, 0, 8192).await?;
        anyhow::ensure!(back.iter().all(|b| *b == 1), "a refused write changed the file");
        let framed = frames
            .read(&address, chunk_read(&chain, volume_id, attr.ino, 0, 8192))
            .await?;
        let grpc = member(&table, head)
            .read(chunk_read(&chain, volume_id, attr.ino, 0, 8192))
            .await?
            .into_inner();
        anyhow::ensure!(framed.data == grpc.data && framed.payload_crcs == grpc.payload_crcs);
        anyhow::ensure!(framed.data.iter().all(|b| *b == 1), "framed read returned other bytes");
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

/// Small writes that wait for one chunk at its head are applied as one chain write (group
/// commit), and the result is what the writes made, on every member: disjoint writes in
/// one round, writes that share a 4 KiB block in rounds of their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn small_writes_waiting_for_one_chunk_merge_and_land_on_every_member() {
    let mut cluster = start(3).await;
    let result = async {
        let registry = cluster.registry.client();
        let OneChunkFile {
            volume_id,
            attr,
            table,
            chain,
            ..
        } = one_chunk_file(&registry, "merged").await?;
        let frames = std::sync::Arc::new(shoal_client::frames::FrameClient::new(None));
        let head = chain.head().expect("head");
        let address = table.address(head).expect("head address").to_string();
        const WRITES: u64 = 96;
        // Write i: 1000 bytes of i at block i (2..98), and a neighbour sharing block 2.
        let mut writes: Vec<(u64, Vec<u8>)> = (0..WRITES).map(|i| ((i + 2) * 4096, vec![i as u8; 1000])).collect();
        writes.push((2 * 4096 + 2000, vec![0xEE; 100]));
        let mut calls = tokio::task::JoinSet::new();
        for (offset, payload) in &writes {
            let request = data_pb::WriteRequest {
                sync: false,
                ..chunk_write(&chain, volume_id, &attr, *offset, payload.clone())
            };
            let (frames, address) = (frames.clone(), address.clone());
            calls.spawn(async move { frames.write(&address, request).await });
        }
        while let Some(call) = tokio::time::timeout(Duration::from_secs(60), calls.join_next()).await? {
            call??;
        }
        let mut merged = 0;
        for target in &chain.targets {
            merged += member(&table, target.data_service_id)
                .stats(data_pb::StatsRequest {})
                .await?
                .into_inner()
                .writes_merged;
        }
        anyhow::ensure!(merged > 0, "{WRITES} concurrent writes to one chunk were never merged");
        let data = DataClient::new(registry.clone());
        let mut expected = vec![1u8; 8192];
        expected.resize((WRITES as usize + 2) * 4096 + 1000, 0);
        for (offset, payload) in &writes {
            expected[*offset as usize..*offset as usize + payload.len()].copy_from_slice(payload);
        }
        let length = expected.len() as u32;
        for target in &chain.targets {
            let read = member(&table, target.data_service_id)
                .read(chunk_read(&chain, volume_id, attr.ino, 0, length))
                .await?
                .into_inner();
            anyhow::ensure!(
                read.data == expected,
                "data service {} holds other bytes",
                target.data_service_id
            );
        }
        anyhow::ensure!(replica_difference(&registry).await?.is_none());
        let back = file::read_at(&data, volume_id, &attr, 0, 8192).await?;
        anyhow::ensure!(back.iter().all(|b| *b == 1), "the first blocks were not touched");
        println!("{merged} of {} writes rode on another's round", writes.len());
        Ok(())
    }
    .await;
    fail_with_logs(&mut cluster, result).await;
    cluster.stop_all();
}
