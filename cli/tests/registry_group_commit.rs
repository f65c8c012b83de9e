//! Group commit on a real registry node with RocksDB on disk: many concurrent writers share
//! the log's fsyncs (one fsync covers every append queued meanwhile), while a single
//! sequential writer still gets one fsync per write (nothing is acknowledged before its
//! entry is durable). The counters come from the node's Status reply.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use shoal_client::RegistryClient;
use shoal_client::proto::{self as pb};
use shoal_testkit::RegistryCluster;

const CONCURRENT_CLIENTS: u64 = 16;
const CREATES_PER_CLIENT: u64 = 100;
const SEQUENTIAL_WRITES: u64 = 50;
/// Bound on each load phase.
const PHASE_TIMEOUT: Duration = Duration::from_secs(120);

fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_shoal"))
}

/// Log entries appended and log fsyncs the node reports.
async fn counters(client: &RegistryClient) -> anyhow::Result<(u64, u64)> {
    let status = client.status(pb::Empty {}).await?;
    Ok((status.log_entries_appended, status.log_fsyncs))
}

async fn mkdir(client: &RegistryClient, volume_id: u64, name: &str) -> anyhow::Result<u64> {
    Ok(client
        .mkdir(pb::MkdirRequest {
            volume_id,
            parent: 1,
            name: name.as_bytes().to_vec().into(),
            mode: 0o755,
            ..Default::default()
        })
        .await?
        .ino)
}

async fn create(client: &RegistryClient, volume_id: u64, parent: u64, name: String) -> anyhow::Result<()> {
    client
        .create(pb::CreateRequest {
            volume_id,
            parent,
            name: name.into_bytes().into(),
            file_type: pb::FileType::Regular as i32,
            mode: 0o644,
            exclusive: true,
            ..Default::default()
        })
        .await?;
    Ok(())
}

/// One writer of many: creates files in a directory of its own, each call awaited before
/// the next, so the only way fsyncs fall below writes is sharing them across writers.
async fn writer(client: RegistryClient, volume_id: u64, index: u64) -> anyhow::Result<u64> {
    let directory = mkdir(&client, volume_id, &format!("writer-{index}")).await?;
    for k in 0..CREATES_PER_CLIENT {
        create(&client, volume_id, directory, format!("f{k}")).await?;
    }
    Ok(1 + CREATES_PER_CLIENT)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_share_log_fsyncs() {
    let cluster = RegistryCluster::start(&binary(), 1, &[])
        .await
        .expect("registry starts");
    let result = scenario(&cluster).await;
    cluster.finish(result);
}

async fn scenario(cluster: &RegistryCluster) -> anyhow::Result<()> {
    let admin = cluster.client();
    let volume = admin
        .create_volume(pb::CreateVolumeRequest {
            name: "fsyncs".into(),
            replicas: 1,
            ..Default::default()
        })
        .await?;

    // One writer, one write at a time: each acknowledgement waits for its own fsync.
    let (entries_before, fsyncs_before) = counters(&admin).await?;
    let directory = mkdir(&admin, volume.id, "sequential").await?;
    for k in 0..SEQUENTIAL_WRITES {
        create(&admin, volume.id, directory, format!("s{k}")).await?;
    }
    let (entries_after, fsyncs_after) = counters(&admin).await?;
    let (entries, fsyncs) = (entries_after - entries_before, fsyncs_after - fsyncs_before);
    println!("1 sequential writer: {entries} log entries, {fsyncs} log fsyncs");
    anyhow::ensure!(
        entries > SEQUENTIAL_WRITES && fsyncs > SEQUENTIAL_WRITES,
        "{} sequential writes made {entries} entries and {fsyncs} fsyncs; each needs its own",
        SEQUENTIAL_WRITES + 1
    );

    // Many writers at once: their appends queue while an fsync runs and share the next.
    let (entries_before, fsyncs_before) = counters(&admin).await?;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for index in 0..CONCURRENT_CLIENTS {
        tasks.push(tokio::spawn(writer(cluster.client(), volume.id, index)));
    }
    let mut writes = 0;
    for task in tasks {
        writes += tokio::time::timeout(PHASE_TIMEOUT, task)
            .await
            .map_err(|_| anyhow::anyhow!("writers did not finish within {PHASE_TIMEOUT:?}"))???;
    }
    let elapsed = started.elapsed();
    let (entries_after, fsyncs_after) = counters(&admin).await?;
    let (entries, fsyncs) = (entries_after - entries_before, fsyncs_after - fsyncs_before);
    println!(
        "{CONCURRENT_CLIENTS} concurrent writers: {writes} writes in {} ms, {entries} log entries, {fsyncs} log fsyncs \
         ({:.1} entries per fsync)",
        elapsed.as_millis(),
        entries as f64 / fsyncs.max(1) as f64
    );
    anyhow::ensure!(
        entries >= writes,
        "{writes} acknowledged writes but only {entries} log entries"
    );
    anyhow::ensure!(
        fsyncs * 2 <= entries,
        "group commit did not batch: {fsyncs} fsyncs for {entries} log entries"
    );
    Ok(())
}
