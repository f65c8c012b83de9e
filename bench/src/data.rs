//! The data path through the client library (no FUSE): sequential 1 MiB writes and reads
//! and 4 KiB random reads, at replication 1 and 3, beside the same operations on the local
//! disk in the same run.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use shoal_client::{DataClient, FileLayout, file, proto as pb};
use shoal_testkit::{ShoalCluster, shoal_binary};

use crate::fio::drop_caches;

const MIB: u64 = 1 << 20;

#[derive(clap::Args)]
pub struct DataArgs {
    /// Size of the sequentially written and read file, in MiB.
    #[arg(long, default_value_t = 1024)]
    size_mib: u64,
    /// 1 MiB requests in flight during sequential phases.
    #[arg(long, default_value_t = 8)]
    queue_depth: usize,
    /// Concurrent readers in the random-read phase (like fio's numjobs).
    #[arg(long, default_value_t = 4)]
    random_readers: usize,
    /// Length of the random-read phase, in seconds.
    #[arg(long, default_value_t = 10)]
    random_seconds: u64,
    /// Data services to start.
    #[arg(long, default_value_t = 3)]
    data_services: usize,
}

struct Figures {
    write_mib_s: f64,
    read_mib_s: f64,
    random_read_iops: f64,
}

fn block(seed: u64) -> Vec<u8> {
    (0..MIB)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed as u8))
        .collect()
}

/// A tiny xorshift, enough to scatter reads.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

fn local_disk(dir: &Path, args: &DataArgs) -> anyhow::Result<Figures> {
    let path = dir.join("local-bench.dat");
    let size = args.size_mib * MIB;
    let file = std::fs::File::create(&path)?;
    let started = Instant::now();
    let blocks: Vec<Vec<u8>> = (0..args.queue_depth as u64).map(block).collect();
    for i in 0..args.size_mib {
        file.write_all_at(&blocks[(i as usize) % blocks.len()], i * MIB)?;
    }
    file.sync_all()?;
    let write_mib_s = args.size_mib as f64 / started.elapsed().as_secs_f64();
    drop(file);
    drop_caches();
    let file = std::fs::File::open(&path)?;
    let started = Instant::now();
    let mut buffer = vec![0u8; MIB as usize];
    for i in 0..args.size_mib {
        file.read_exact_at(&mut buffer, i * MIB)?;
    }
    let read_mib_s = args.size_mib as f64 / started.elapsed().as_secs_f64();
    drop_caches();
    let file = Arc::new(file);
    let deadline = Instant::now() + Duration::from_secs(args.random_seconds);
    let threads: Vec<_> = (0..args.random_readers)
        .map(|reader| {
            let file = file.clone();
            std::thread::spawn(move || {
                let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ (reader as u64 + 1);
                let mut buffer = vec![0u8; 4096];
                let mut done = 0u64;
                while Instant::now() < deadline {
                    let offset = (next(&mut state) % (size / 4096)) * 4096;
                    file.read_exact_at(&mut buffer, offset)?;
                    done += 1;
                }
                Ok::<u64, std::io::Error>(done)
            })
        })
        .collect();
    let mut total = 0;
    for thread in threads {
        // A failed read fails the benchmark: a figure must not hide errors.
        total += thread
            .join()
            .map_err(|_| anyhow::anyhow!("a local random reader panicked"))??;
    }
    let _ = std::fs::remove_file(&path);
    Ok(Figures {
        write_mib_s,
        read_mib_s,
        random_read_iops: total as f64 / args.random_seconds as f64,
    })
}

async fn shoal(cluster: &ShoalCluster, replicas: u32, args: &DataArgs) -> anyhow::Result<Figures> {
    let registry = cluster.registry.client();
    let name = format!("bench-r{replicas}");
    let volume = registry
        .create_volume(pb::CreateVolumeRequest {
            name: name.clone(),
            replicas,
            ..Default::default()
        })
        .await?;
    let attr = registry
        .create(pb::CreateRequest {
            volume_id: volume.id,
            parent: 1,
            name: Bytes::from_static(b"bench.dat"),
            file_type: pb::FileType::Regular as i32,
            mode: 0o644,
            exclusive: true,
            ..Default::default()
        })
        .await?;
    let data = DataClient::new(registry.clone());
    let layout = file::layout_of(&data, volume.id, &attr).await?;
    let blocks: Vec<Bytes> = (0..args.queue_depth as u64).map(|s| Bytes::from(block(s))).collect();
    let started = Instant::now();
    let writes = futures::stream::iter((0..args.size_mib).map(|i| {
        let (data, layout, bytes) = (&data, &layout, blocks[(i as usize) % blocks.len()].clone());
        async move { data.write(layout, i * MIB, bytes, false).await }
    }))
    .buffer_unordered(args.queue_depth)
    .collect::<Vec<_>>()
    .await;
    writes.into_iter().collect::<Result<Vec<_>, _>>()?;
    let chunks: Vec<u64> = (0..(args.size_mib * MIB).div_ceil(layout.chunk_size_bytes)).collect();
    data.sync(&layout, &chunks).await?;
    let attr = registry.extend_file(volume.id, attr.ino, args.size_mib * MIB).await?;
    let write_mib_s = args.size_mib as f64 / started.elapsed().as_secs_f64();
    drop_caches();
    let layout = FileLayout::of(volume.id, &attr)?;
    let started = Instant::now();
    let reads = futures::stream::iter((0..args.size_mib).map(|i| {
        let (data, layout) = (&data, &layout);
        async move { data.read(layout, i * MIB, MIB).await }
    }))
    .buffer_unordered(args.queue_depth)
    .collect::<Vec<_>>()
    .await;
    for read in reads {
        anyhow::ensure!(read?.len() as u64 == MIB, "short read");
    }
    let read_mib_s = args.size_mib as f64 / started.elapsed().as_secs_f64();
    drop_caches();
    let size = args.size_mib * MIB;
    let deadline = Instant::now() + Duration::from_secs(args.random_seconds);
    let readers: Vec<_> = (0..args.random_readers)
        .map(|reader| {
            let (data, layout) = (data.clone(), layout.clone());
            tokio::spawn(async move {
                let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ (reader as u64 + 1);
                let mut done = 0u64;
                while Instant::now() < deadline {
                    let offset = (next(&mut state) % (size / 4096)) * 4096;
                    let read = data.read(&layout, offset, 4096).await?;
                    anyhow::ensure!(read.len() == 4096, "short 4 KiB read at {offset}: {} bytes", read.len());
                    done += 1;
                }
                Ok::<u64, anyhow::Error>(done)
            })
        })
        .collect();
    let mut total = 0;
    for reader in readers {
        // A failed read fails the benchmark: a figure must not hide errors.
        total += reader.await??;
    }
    registry.delete_volume(pb::VolumeName { name }).await?;
    Ok(Figures {
        write_mib_s,
        read_mib_s,
        random_read_iops: total as f64 / args.random_seconds as f64,
    })
}

pub async fn run(args: DataArgs) -> anyhow::Result<()> {
    let binary = shoal_binary()?;
    let mut cluster = ShoalCluster::start(&binary, 1, args.data_services, &[]).await?;
    let dir = cluster.registry.root().to_path_buf();
    let local = tokio::task::block_in_place(|| local_disk(&dir, &args))?;
    let r1 = shoal(&cluster, 1, &args).await?;
    let r3 = shoal(&cluster, 3, &args).await?;
    cluster.stop_all();
    println!(
        "{} MiB file, 1 MiB requests at queue depth {}, {} random 4 KiB readers for {} s, {} data services on one machine",
        args.size_mib, args.queue_depth, args.random_readers, args.random_seconds, args.data_services
    );
    println!();
    println!("| target | seq write MiB/s | seq read MiB/s | 4K random read IOPS |");
    println!("|---|---:|---:|---:|");
    for (name, figures) in [
        ("local disk", &local),
        ("Shoal, replication 1", &r1),
        ("Shoal, replication 3", &r3),
    ] {
        println!(
            "| {name} | {:.0} ({:.2}x) | {:.0} ({:.2}x) | {:.0} ({:.2}x) |",
            figures.write_mib_s,
            figures.write_mib_s / local.write_mib_s,
            figures.read_mib_s,
            figures.read_mib_s / local.read_mib_s,
            figures.random_read_iops,
            figures.random_read_iops / local.random_read_iops
        );
    }
    Ok(())
}
