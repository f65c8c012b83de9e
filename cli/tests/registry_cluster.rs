//! Three real registry processes under load: SIGKILL of the leader mid-load, a new leader
//! within 5 s, every acknowledged operation present afterwards on every node, the old
//! leader rejoining through a snapshot received from the new leader, and every node's log
//! bounded by snapshots and purges.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use shoal_client::RegistryClient;
use shoal_client::proto::{self as pb};
use shoal_testkit::{RegistryCluster, wait_for};

const CLIENTS: u64 = 8;
const TOTAL_OPERATIONS: u64 = 10_000;
const KILL_AFTER_OPERATIONS: u64 = 3_000;
/// The nodes' snapshot policy: a snapshot every 500 entries, 50 entries kept behind it.
const SNAPSHOT_EVERY_LOGS: u64 = 500;
const LOGS_KEPT_AFTER_SNAPSHOT: u64 = 50;
/// Entries a log may hold beyond the policy: those applied while a snapshot was being built
/// and purged only after the next one.
const LOG_SLACK_ENTRIES: u64 = 250;

/// What one client knows for certain after its run: the names its directory must hold.
struct ClientOutcome {
    directory: u64,
    names: BTreeSet<Vec<u8>>,
    acknowledged: u64,
}

/// Runs `operations` metadata operations in a directory of its own: a cycle of create,
/// stat, rename, mkdir and unlink. Every operation must be acknowledged.
async fn run_client(
    client: RegistryClient,
    volume_id: u64,
    index: u64,
    operations: u64,
    progress: Arc<AtomicU64>,
) -> anyhow::Result<ClientOutcome> {
    let directory = client
        .mkdir(pb::MkdirRequest {
            volume_id,
            parent: 1,
            name: format!("client-{index}").into_bytes().into(),
            mode: 0o755,
            ..Default::default()
        })
        .await?
        .ino;
    let mut names = BTreeSet::new();
    let mut acknowledged = 0;
    for step in 0..operations {
        let k = step / 5;
        let file = format!("f{k}").into_bytes();
        let renamed = format!("r{k}").into_bytes();
        match step % 5 {
            0 => {
                client
                    .create(pb::CreateRequest {
                        volume_id,
                        parent: directory,
                        name: file.clone().into(),
                        file_type: pb::FileType::Regular as i32,
                        mode: 0o644,
                        exclusive: true,
                        ..Default::default()
                    })
                    .await?;
                names.insert(file);
            }
            1 => {
                let attr = client.lookup(volume_id, directory, &file).await?;
                anyhow::ensure!(
                    attr.file_type == pb::FileType::Regular as i32,
                    "stat of {k} is not a file"
                );
            }
            2 => {
                client
                    .rename(pb::RenameRequest {
                        volume_id,
                        parent: directory,
                        name: file.clone().into(),
                        new_parent: directory,
                        new_name: renamed.clone().into(),
                        flags: 0,
                    })
                    .await?;
                names.remove(&file);
                names.insert(renamed);
            }
            3 => {
                let name = format!("d{k}").into_bytes();
                client
                    .mkdir(pb::MkdirRequest {
                        volume_id,
                        parent: directory,
                        name: name.clone().into(),
                        mode: 0o755,
                        ..Default::default()
                    })
                    .await?;
                names.insert(name);
            }
            _ => {
                client
                    .unlink(pb::UnlinkRequest {
                        volume_id,
                        parent: directory,
                        name: renamed.clone().into(),
                        ..Default::default()
                    })
                    .await?;
                names.remove(&renamed);
            }
        }
        acknowledged += 1;
        progress.fetch_add(1, Ordering::Relaxed);
    }
    Ok(ClientOutcome {
        directory,
        names,
        acknowledged,
    })
}

async fn list(client: &RegistryClient, volume_id: u64, directory: u64) -> anyhow::Result<BTreeSet<Vec<u8>>> {
    let mut names = BTreeSet::new();
    let mut cookie = 0;
    for _page in 0..10_000 {
        let reply = client
            .read_dir(pb::ReadDirRequest {
                volume_id,
                ino: directory,
                after_cookie: cookie,
                max_entries: 500,
                with_attrs: false,
            })
            .await?;
        for entry in &reply.entries {
            names.insert(entry.name.to_vec());
            cookie = entry.cookie;
        }
        if reply.end_of_directory {
            return Ok(names);
        }
    }
    anyhow::bail!("directory {directory} did not end within 10,000 pages")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_killed_mid_load_loses_nothing_and_rejoins_by_snapshot() {
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_shoal"));
    let snapshot_every = format!("--snapshot-every-logs={SNAPSHOT_EVERY_LOGS}");
    let logs_kept = format!("--logs-kept-after-snapshot={LOGS_KEPT_AFTER_SNAPSHOT}");
    let mut cluster = RegistryCluster::start(&binary, 3, &[&snapshot_every, &logs_kept])
        .await
        .expect("cluster starts");
    let result = scenario(&mut cluster).await;
    cluster.finish(result);
}

async fn scenario(cluster: &mut RegistryCluster) -> anyhow::Result<()> {
    let admin = cluster.client();
    let volume = admin
        .create_volume(pb::CreateVolumeRequest {
            name: "load".into(),
            replicas: 1,
            ..Default::default()
        })
        .await?;

    let progress = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for index in 0..CLIENTS {
        let client = cluster.client();
        let progress = progress.clone();
        tasks.push(tokio::spawn(run_client(
            client,
            volume.id,
            index,
            TOTAL_OPERATIONS / CLIENTS,
            progress,
        )));
    }

    let watched = progress.clone();
    wait_for("3,000 acknowledged operations", Duration::from_secs(300), || {
        let done = watched.load(Ordering::Relaxed);
        async move { (done >= KILL_AFTER_OPERATIONS).then_some(()) }
    })
    .await?;
    let old_leader = cluster.wait_for_leader(Duration::from_secs(5)).await?;
    let done_at_kill = progress.load(Ordering::Relaxed);
    cluster.kill_node(old_leader);
    let (new_leader, election) = cluster
        .wait_for_new_leader(Some(old_leader), Duration::from_secs(30))
        .await?;
    println!(
        "killed leader {old_leader} after {done_at_kill} operations; node {new_leader} led after {} ms",
        election.as_millis()
    );
    anyhow::ensure!(
        election < Duration::from_secs(5),
        "new leader took {} ms (limit 5000)",
        election.as_millis()
    );

    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await??);
    }
    let acknowledged: u64 = outcomes.iter().map(|o| o.acknowledged).sum();
    anyhow::ensure!(
        acknowledged == TOTAL_OPERATIONS,
        "{acknowledged} of {TOTAL_OPERATIONS} operations acknowledged"
    );

    // The surviving majority has moved on by thousands of entries and purged its log, so
    // the old leader can only catch up by installing a snapshot.
    let leader_status = admin.status(pb::Empty {}).await?;
    let snapshot_index = leader_status.snapshot_last_index.unwrap_or(0);
    anyhow::ensure!(snapshot_index > 0, "the leader never built a snapshot");
    cluster.start_node(old_leader)?;
    let target = leader_status.last_applied_index;
    let rejoined = cluster.node(old_leader);
    let status = wait_for("the old leader to catch up", Duration::from_secs(60), || async {
        let status = rejoined.local_status().await?;
        (status.last_applied_index >= target).then_some(status)
    })
    .await?;
    // Counted only when a snapshot streamed from the leader was installed; restoring the
    // node's own snapshot file at start is counted apart.
    anyhow::ensure!(
        status.snapshots_received_from_leader >= 1,
        "old leader caught up without receiving a snapshot from the leader \
         ({} restored from its own file at start)",
        status.snapshots_restored_at_start
    );
    println!(
        "old leader {old_leader} caught up to index {} after receiving {} snapshot(s) from the leader \
         ({} restored at start)",
        status.last_applied_index, status.snapshots_received_from_leader, status.snapshots_restored_at_start
    );
    println!(
        "leader {new_leader} since its start: {} log entries appended, {} log fsyncs",
        leader_status.log_entries_appended, leader_status.log_fsyncs
    );

    for node in cluster.nodes.values() {
        let local = node.local_client();
        wait_for(
            &format!("node {} to apply index {target}", node.id),
            Duration::from_secs(30),
            || async {
                let status = node.local_status().await?;
                (status.last_applied_index >= target).then_some(())
            },
        )
        .await?;
        for (index, outcome) in outcomes.iter().enumerate() {
            let present = list(&local, volume.id, outcome.directory).await?;
            anyhow::ensure!(
                present == outcome.names,
                "node {}: client {index}'s directory holds {} names, {} acknowledged ({} missing, {} extra)",
                node.id,
                present.len(),
                outcome.names.len(),
                outcome.names.difference(&present).count(),
                present.difference(&outcome.names).count()
            );
        }
        let status = node
            .local_status()
            .await
            .ok_or_else(|| anyhow::anyhow!("node {} does not answer status", node.id))?;
        check_log_bounded(node.id, &status)?;
        let info = local.get_volume(pb::VolumeName { name: "load".into() }).await?;
        let expected_inodes = 1 + CLIENTS + outcomes.iter().map(|o| o.names.len() as u64).sum::<u64>();
        anyhow::ensure!(
            info.used_inodes == expected_inodes,
            "node {}: volume counts {} inodes, expected {expected_inodes}",
            node.id,
            info.used_inodes
        );
    }
    Ok(())
}

/// The log holds no more than the snapshot policy allows: entries since the last snapshot,
/// the entries kept behind it, and a little slack.
fn check_log_bounded(node_id: u64, status: &pb::StatusReply) -> anyhow::Result<()> {
    let purged = status.last_purged_log_index.ok_or_else(|| {
        anyhow::anyhow!(
            "node {node_id} never purged its log (last index {})",
            status.last_log_index
        )
    })?;
    let held = status.last_log_index.saturating_sub(purged);
    let bound = SNAPSHOT_EVERY_LOGS + LOGS_KEPT_AFTER_SNAPSHOT + LOG_SLACK_ENTRIES;
    println!(
        "node {node_id}: log holds {held} entries ({}..={}, snapshot at {:?}; bound {bound})",
        purged + 1,
        status.last_log_index,
        status.snapshot_last_index
    );
    anyhow::ensure!(
        held <= bound,
        "node {node_id}: log holds {held} entries after index {purged}, more than {bound}"
    );
    Ok(())
}
