//! Three real registry processes under load: SIGKILL of the leader mid-load, a new leader
//! within 5 s, every acknowledged operation present afterwards on every node, and the old
//! leader rejoining through a snapshot install.

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
    let mut cluster = RegistryCluster::start(
        &binary,
        3,
        &["--snapshot-every-logs=500", "--logs-kept-after-snapshot=50"],
    )
    .await
    .expect("cluster starts");
    let result = scenario(&mut cluster).await;
    if let Err(error) = &result {
        eprintln!("{}", cluster.logs());
        panic!("{error:#}");
    }
    cluster.stop_all(Duration::from_secs(5));
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
    anyhow::ensure!(
        status.snapshots_installed >= 1,
        "old leader caught up without installing a snapshot"
    );
    println!(
        "old leader {old_leader} caught up to index {} after installing {} snapshot(s)",
        status.last_applied_index, status.snapshots_installed
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
