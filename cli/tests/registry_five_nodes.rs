//! Five real registry processes: SIGKILL of two of them (the leader and a follower) leaves a
//! majority of three, which elects a leader within the bound and keeps taking writes; the
//! two return from their data directories and catch up, and every node then holds every
//! acknowledged change.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use shoal_client::RegistryClient;
use shoal_client::proto::{self as pb};
use shoal_testkit::{RegistryCluster, wait_for};

const NODES: u64 = 5;
const FILES_PER_PHASE: u64 = 20;
/// A new leader must lead within this long after the old one died (the bound).
const ELECTION_LIMIT: Duration = Duration::from_secs(5);
/// Bound on the restarted nodes catching up.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(30);

fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_shoal"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_survive_two_kills_and_catch_up() {
    let mut cluster = RegistryCluster::start(&binary(), NODES, &[])
        .await
        .expect("cluster starts");
    let started = Instant::now();
    let result = scenario(&mut cluster).await;
    println!("scenario took {} ms", started.elapsed().as_millis());
    cluster.finish(result);
}

/// Makes directory `name` in the root holding `FILES_PER_PHASE` files; returns its inode.
async fn write_phase(client: &RegistryClient, volume_id: u64, name: &str) -> anyhow::Result<u64> {
    let dir = client
        .mkdir(pb::MkdirRequest {
            volume_id,
            parent: 1,
            name: name.as_bytes().to_vec().into(),
            mode: 0o755,
            ..Default::default()
        })
        .await?;
    for k in 0..FILES_PER_PHASE {
        client
            .create(pb::CreateRequest {
                volume_id,
                parent: dir.ino,
                name: format!("f{k}").into_bytes().into(),
                file_type: pb::FileType::Regular as i32,
                mode: 0o644,
                exclusive: true,
                ..Default::default()
            })
            .await?;
    }
    Ok(dir.ino)
}

async fn names(client: &RegistryClient, volume_id: u64, ino: u64) -> anyhow::Result<BTreeSet<String>> {
    let reply = client
        .read_dir(pb::ReadDirRequest {
            volume_id,
            ino,
            after_cookie: 0,
            max_entries: 1_000,
            with_attrs: false,
        })
        .await?;
    anyhow::ensure!(reply.end_of_directory, "directory {ino} has more than one page");
    Ok(reply
        .entries
        .iter()
        .map(|e| String::from_utf8_lossy(&e.name).into_owned())
        .collect())
}

/// Waits for a leader among `alive` other than `excluded`. Only live nodes are asked: a
/// dead one costs a client deadline per probe, which would blur the election time.
async fn wait_for_leader_among(
    cluster: &RegistryCluster,
    alive: &[u64],
    excluded: u64,
    timeout: Duration,
) -> anyhow::Result<u64> {
    wait_for("a leader among the survivors", timeout, || async {
        for id in alive {
            let Some(status) = cluster.node(*id).local_status().await else {
                continue;
            };
            if status.leader_id == Some(status.node_id) && status.node_id != excluded {
                return Some(status.node_id);
            }
        }
        None
    })
    .await
}

async fn scenario(cluster: &mut RegistryCluster) -> anyhow::Result<()> {
    let client = cluster.client().with_deadline(Duration::from_secs(20));
    let volume = client
        .create_volume(pb::CreateVolumeRequest {
            name: "five".into(),
            replicas: 1,
            ..Default::default()
        })
        .await?;
    let before = write_phase(&client, volume.id, "before").await?;

    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    let follower = (1..=NODES).find(|id| *id != leader).expect("five nodes");
    let alive: Vec<u64> = (1..=NODES).filter(|id| *id != leader && *id != follower).collect();
    let killed_at = Instant::now();
    cluster.kill_node(leader);
    cluster.kill_node(follower);
    let new_leader = wait_for_leader_among(cluster, &alive, leader, Duration::from_secs(15)).await?;
    let election = killed_at.elapsed();
    let during = write_phase(&client, volume.id, "during").await?;
    let first_writes = killed_at.elapsed();
    println!(
        "killed leader {leader} and follower {follower}; node {new_leader} led after {} ms; \
         {} writes done {} ms after the kill",
        election.as_millis(),
        FILES_PER_PHASE + 1,
        first_writes.as_millis()
    );
    anyhow::ensure!(
        election < ELECTION_LIMIT,
        "a new leader took {} ms (limit {} ms)",
        election.as_millis(),
        ELECTION_LIMIT.as_millis()
    );

    cluster.start_node(leader)?;
    cluster.start_node(follower)?;
    let after = write_phase(&client, volume.id, "after").await?;
    let target = client.status(pb::Empty {}).await?.last_applied_index;
    let restarted_at = Instant::now();
    for id in 1..=NODES {
        let node = cluster.node(id);
        wait_for(
            &format!("node {id} to apply index {target}"),
            CATCH_UP_TIMEOUT,
            || async {
                let status = node.local_status().await?;
                (status.last_applied_index >= target).then_some(())
            },
        )
        .await?;
    }
    println!(
        "nodes {leader} and {follower} restarted and caught up to index {target} within {} ms",
        restarted_at.elapsed().as_millis()
    );

    // Every node, read locally, holds every acknowledged change.
    let files: BTreeSet<String> = (0..FILES_PER_PHASE).map(|k| format!("f{k}")).collect();
    let root: BTreeSet<String> = ["after", "before", "during"].map(String::from).into();
    let expected_inodes = 1 + 3 * (1 + FILES_PER_PHASE);
    for id in 1..=NODES {
        let local = cluster.node(id).local_client();
        let present = names(&local, volume.id, 1).await?;
        anyhow::ensure!(present == root, "node {id}: root holds {present:?}");
        for (dir, ino) in [("before", before), ("during", during), ("after", after)] {
            let present = names(&local, volume.id, ino).await?;
            anyhow::ensure!(
                present == files,
                "node {id}: {dir} holds {} of {} files",
                present.len(),
                files.len()
            );
        }
        let info = local.get_volume(pb::VolumeName { name: "five".into() }).await?;
        anyhow::ensure!(
            info.used_inodes == expected_inodes,
            "node {id}: volume counts {} inodes, expected {expected_inodes}",
            info.used_inodes
        );
    }
    let status = client.status(pb::Empty {}).await?;
    anyhow::ensure!(
        status.members.len() == NODES as usize,
        "{} members after the restarts",
        status.members.len()
    );
    Ok(())
}
