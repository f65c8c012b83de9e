//! Acknowledged data is never lost, shown with real processes killed at the worst moments:
//! a write error that must reach close(), a member that missed writes and must not head its
//! chain, SIGKILLs landed by strace between the steps of a chunk change, and a data service
//! back from a (simulated) power loss.

mod data_common;

use std::io::Write;
use std::os::fd::IntoRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use data_common::*;
use shoal_client::chains::ChainInfo;
use shoal_client::proto as pb;
use shoal_client::{DataClient, RegistryClient, RetryPolicy, file};
use shoal_proto::data as data_pb;
use shoal_testkit::{KillAt, MountSpec, MountedCluster, PrivateFiles, ShoalCluster, newest_engine_log, wait_for};

/// A data client that gives up after `seconds` (so a test sees an error, not a long wait).
fn impatient(registry: &RegistryClient, seconds: u64) -> DataClient {
    DataClient::new(registry.clone()).with_policy(RetryPolicy {
        deadline: Duration::from_secs(seconds),
        ..RetryPolicy::default()
    })
}

async fn wait_state(registry: &RegistryClient, id: u64, state: pb::DataServiceState) -> anyhow::Result<()> {
    wait_for(
        &format!("data service {id} to be {state:?}"),
        Duration::from_secs(60),
        || async {
            let status = registry.status(pb::Empty {}).await.ok()?;
            let found = status.data_services.iter().find(|s| s.id == id)?;
            // An up service must also be heartbeating (it may still be marked up from before).
            let heartbeating = found.last_heartbeat_age_ms.is_some_and(|age| age < 2_000);
            let reached = found.state == state as i32 && (state == pb::DataServiceState::Down || heartbeating);
            reached.then_some(())
        },
    )
    .await
}

/// The chain of chunk 0 of `attr`, as the registry has it now.
async fn chain_of(registry: &RegistryClient, volume_id: u64, attr: &pb::Attr) -> anyhow::Result<ChainInfo> {
    let layout = shoal_client::FileLayout::of(volume_id, attr)?;
    let table = chain_table(registry).await;
    Ok(table
        .chain(layout.chain_of(0))
        .expect("the file's chain exists")
        .clone())
}

async fn wait_all_serving(registry: &RegistryClient, chain_id: u64, members: usize) -> anyhow::Result<ChainInfo> {
    wait_for("every chain member to serve", Duration::from_secs(60), || async {
        let table = chain_table(registry).await;
        let chain = table.chain(chain_id)?.clone();
        (chain.targets.len() == members && chain.targets.iter().all(|t| t.serving)).then_some(chain)
    })
    .await
}

fn disk_of(cluster: &ShoalCluster, index: usize) -> PathBuf {
    cluster.data[index].disks[0].clone()
}

fn pid_of(cluster: &ShoalCluster, index: usize) -> u32 {
    cluster.data[index]
        .process
        .as_ref()
        .and_then(|p| p.pid())
        .expect("the data service runs")
}

/// A one-chunk file of `bytes` (synced) in a new volume of `replicas` copies.
async fn file_of(registry: &RegistryClient, replicas: u32, bytes: Vec<u8>) -> anyhow::Result<(u64, pb::Attr)> {
    let volume_id = volume(registry, "acked", replicas).await;
    let attr = new_file(registry, volume_id, "f").await;
    let data = DataClient::new(registry.clone());
    let attr = file::write_at(&data, volume_id, &attr, 0, Bytes::from(bytes), true).await?;
    Ok((volume_id, attr))
}

fn close_fd(fd: i32) -> std::io::Result<()> {
    // SAFETY: `fd` was taken out of its `File` with `into_raw_fd`; it is closed once here.
    if unsafe { libc::close(fd) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn fsync_fd(fd: i32) -> std::io::Result<()> {
    // SAFETY: `fd` is open (owned by the test until `close_fd`).
    if unsafe { libc::fsync(fd) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Reproduction 1: every data service is SIGKILLed just before a 5 MiB write; the mount's
/// background sends fail past `retry_timeout`; the data services come back. The write was
/// never stored, so the close() of the file must fail, and so must the fsync() of another
/// descriptor opened before the failure, each once. Meanwhile this process starts children
/// (the data services), whose exec closes the inherited descriptors: those closes must not
/// take the error from this process.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_background_write_that_failed_fails_close_and_fsync_of_every_open_file() {
    let spec = MountSpec {
        data_services: 3,
        replicas: 3,
        options: &["retry_timeout=3"],
        ..MountSpec::default()
    };
    let mut setup = MountedCluster::start(&binary(), spec).await.expect("mounted");
    let result = async {
        let path = setup.mount.path("upload.bin");
        let mut writer = std::fs::File::create(&path)?;
        let other = std::fs::OpenOptions::new().write(true).open(&path)?.into_raw_fd();
        for index in 0..3 {
            setup.cluster.kill_data_service(index);
        }
        let bytes = pattern(1, 0, 5 * MIB);
        tokio::task::block_in_place(|| writer.write_all(&bytes))?;
        let writer = writer.into_raw_fd();
        let mount_log = setup
            .mount
            .process
            .as_ref()
            .expect("mount runs")
            .log_path()
            .to_path_buf();
        wait_for("the background send to fail", Duration::from_secs(60), || {
            let failed = std::fs::read_to_string(&mount_log)
                .unwrap_or_default()
                .contains("a buffered write failed");
            async move { failed.then_some(()) }
        })
        .await?;
        for index in 0..3 {
            setup.cluster.restart_data_service(index)?;
        }
        setup.cluster.wait_for_data_services(Duration::from_secs(60)).await?;
        let closed = tokio::task::block_in_place(|| close_fd(writer));
        anyhow::ensure!(
            closed.as_ref().is_err_and(|e| e.raw_os_error() == Some(libc::EIO)),
            "close() of the writer must report the lost write: {closed:?}"
        );
        let synced = tokio::task::block_in_place(|| fsync_fd(other));
        anyhow::ensure!(
            synced.as_ref().is_err_and(|e| e.raw_os_error() == Some(libc::EIO)),
            "fsync() of a descriptor open before the failure must report it too: {synced:?}"
        );
        tokio::task::block_in_place(|| fsync_fd(other))
            .map_err(|e| anyhow::anyhow!("each descriptor reports an error once, then fsync works: {e}"))?;
        tokio::task::block_in_place(|| close_fd(other))?;
        let later = std::fs::OpenOptions::new().write(true).open(&path)?;
        tokio::task::block_in_place(|| later.sync_all())
            .map_err(|e| anyhow::anyhow!("a descriptor opened after the error was reported sees none: {e}"))?;
        Ok(())
    }
    .await;
    setup.finish(result);
}

/// Sets up reproduction 2 up to the point where it went wrong: chain [A, B] with version 1
/// of a file; B dies; version 2 is acknowledged by A alone; A dies; B returns first.
/// Returns (volume, file, chain, A's index, A's id, B's id).
async fn stale_member_returns_first(
    cluster: &mut ShoalCluster,
) -> anyhow::Result<(u64, pb::Attr, u64, usize, u64, u64)> {
    let registry = cluster.registry.client();
    let (volume_id, attr) = file_of(&registry, 2, pattern(1, 0, 64 * 1024)).await?;
    let chain = chain_of(&registry, volume_id, &attr).await?;
    let [a, b] = [chain.targets[0].data_service_id, chain.targets[1].data_service_id];
    let (a_index, b_index) = (index_of(cluster, a).await, index_of(cluster, b).await);
    cluster.kill_data_service(b_index);
    wait_state(&registry, b, pb::DataServiceState::Down).await?;
    let data = DataClient::new(registry.clone());
    let attr = file::write_at(&data, volume_id, &attr, 0, Bytes::from(pattern(2, 0, 64 * 1024)), true).await?;
    cluster.kill_data_service(a_index);
    wait_state(&registry, a, pb::DataServiceState::Down).await?;
    cluster.restart_data_service(b_index)?;
    wait_state(&registry, b, pb::DataServiceState::Up).await?;
    Ok((volume_id, attr, chain.id, a_index, a, b))
}

fn shoal(cluster: &ShoalCluster, args: &[&str]) -> anyhow::Result<std::process::Output> {
    Ok(std::process::Command::new(binary())
        .args(args)
        .env("SHOAL_REGISTRY", cluster.registry.registry_arg())
        .output()?)
}

/// Reproduction 2: the member that missed version 2 comes back first. It must not serve:
/// the chain waits for A, reads fail with an error naming A, `shoal status` says so; when A
/// returns it heads the chain and version 2 reads back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_that_missed_acknowledged_writes_never_heads_its_chain() {
    let mut cluster = start(2).await;
    let result = async {
        let registry = cluster.registry.client();
        let (volume_id, attr, chain_id, a_index, a, b) = stale_member_returns_first(&mut cluster).await?;
        let table = chain_table(&registry).await;
        let chain = table.chain(chain_id).expect("chain").clone();
        anyhow::ensure!(chain.waiting_for == vec![a], "the chain waits for A: {chain:?}");
        anyhow::ensure!(chain.serving().next().is_none(), "B must not serve: {chain:?}");
        let read = file::read_at(&impatient(&registry, 3), volume_id, &attr, 0, 4096).await;
        let message = format!("{:?}", read.as_ref().err());
        anyhow::ensure!(
            read.is_err() && message.contains(&format!("waits for data service [{a}]")),
            "a read must fail, naming the member it waits for: {message}"
        );
        let status = shoal(&cluster, &["status"])?;
        let printed = String::from_utf8_lossy(&status.stdout);
        anyhow::ensure!(
            printed.contains(&format!("chain {chain_id} waits for data service {a}")),
            "`shoal status` names the member the chain waits for:\n{printed}"
        );
        cluster.restart_data_service(a_index)?;
        let chain = wait_all_serving(&registry, chain_id, 2).await?;
        anyhow::ensure!(chain.head() == Some(a), "A heads the chain again: {chain:?}");
        verify_pattern(&DataClient::new(registry.clone()), volume_id, &attr, 2).await?;
        anyhow::ensure!(
            replica_difference(&registry).await?.is_none(),
            "B was filled with version 2"
        );
        let _ = b;
        Ok(())
    }
    .await;
    fail_with_logs(&mut cluster, result).await;
    cluster.stop_all();
}

/// When the only member with the newest changes is gone for good, an operator resumes the
/// chain from what is left with `shoal chain accept-loss`: the command says what is lost,
/// and the chain then serves version 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_operator_can_resume_a_waiting_chain_and_is_told_what_is_lost() {
    let mut cluster = start(2).await;
    let result = async {
        let registry = cluster.registry.client();
        let (volume_id, attr, chain_id, _, a, b) = stale_member_returns_first(&mut cluster).await?;
        let chain = chain_id.to_string();
        let refused = shoal(&cluster, &["chain", "accept-loss", &chain])?;
        anyhow::ensure!(!refused.status.success(), "accept-loss needs --yes");
        let accepted = shoal(&cluster, &["chain", "accept-loss", &chain, "--yes"])?;
        let printed = String::from_utf8_lossy(&accepted.stdout);
        anyhow::ensure!(accepted.status.success(), "{accepted:?}");
        anyhow::ensure!(
            printed.contains(&format!("resumed from data service {b}"))
                && printed.contains(&format!("held only by data service {a}, are lost")),
            "the reply says what is lost:\n{printed}"
        );
        let logs = cluster.registry.logs();
        anyhow::ensure!(logs.contains("operator accepted data loss"), "the registry logs it");
        verify_pattern(&DataClient::new(registry.clone()), volume_id, &attr, 1).await?;
        Ok(())
    }
    .await;
    fail_with_logs(&mut cluster, result).await;
    cluster.stop_all();
}

/// Arms a SIGKILL of data service `index` at its `nth` call of `syscalls` on `path`.
async fn kill_at(
    cluster: &ShoalCluster,
    index: usize,
    syscalls: &str,
    path: &Path,
    nth: u32,
) -> anyhow::Result<KillAt> {
    let log = cluster.registry.root().join(format!("strace-{index}.log"));
    KillAt::arm(pid_of(cluster, index), syscalls, path, nth, &log).await
}

fn chunk_file(cluster: &ShoalCluster, index: usize, volume_id: u64, ino: u64) -> anyhow::Result<PathBuf> {
    find_chunk_file(&disk_of(cluster, index), volume_id, ino, 0)
        .ok_or_else(|| anyhow::anyhow!("data service {index} holds no file for chunk 0"))
}

/// Issues one write straight to the chain's head, without retries (the head is about to die).
async fn write_once(
    table: &shoal_client::chains::ChainTable,
    chain: &ChainInfo,
    volume_id: u64,
    attr: &pb::Attr,
    offset: u64,
    payload: Vec<u8>,
    sync: bool,
) -> Result<(), tonic::Status> {
    let head = chain.head().expect("the chain has a head");
    member(table, head)
        .write(data_pb::WriteRequest {
            sync,
            ..chunk_write(chain, volume_id, attr, offset, payload)
        })
        .await
        .map(|_| ())
}

/// Sends a synced write of `payload` at `offset` of chunk 0 of `attr` to the cluster's only
/// data service, which is SIGKILLed on entering the fdatasync of the chunk's file (the
/// bytes are in the file, nothing after them ran); then restarts it.
async fn killed_at_chunk_sync(
    cluster: &mut ShoalCluster,
    volume_id: u64,
    attr: &pb::Attr,
    offset: u64,
    payload: Vec<u8>,
) -> anyhow::Result<()> {
    let registry = cluster.registry.client();
    let table = chain_table(&registry).await;
    let chain = chain_of(&registry, volume_id, attr).await?;
    let file = chunk_file(cluster, 0, volume_id, attr.ino)?;
    let mut armed = kill_at(cluster, 0, "fdatasync", &file, 1).await?;
    let write = write_once(&table, &chain, volume_id, attr, offset, payload, true).await;
    anyhow::ensure!(write.is_err(), "the data service died during the write");
    armed.wait_for_kill(Duration::from_secs(20)).await?;
    drop(armed);
    cluster.kill_data_service(0);
    cluster.restart_data_service(0)?;
    cluster.wait_for_data_services(Duration::from_secs(60)).await
}

/// Item 3: a SIGKILL after a synced partial overwrite reached the chunk's file and before
/// its fdatasync. With one copy there is no peer to repair from: after the restart every
/// block must read, untouched bytes as they were, the written range old or new as a whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_kill_between_a_chunks_bytes_and_their_sync_leaves_every_block_readable() {
    let mut cluster = start(1).await;
    let result = async {
        let registry = cluster.registry.client();
        let (volume_id, attr) = file_of(&registry, 1, vec![1u8; 8192]).await?;
        killed_at_chunk_sync(&mut cluster, volume_id, &attr, 4000, vec![2u8; 100]).await?;
        let back = file::read_at(&impatient(&registry, 20), volume_id, &attr, 0, 8192).await?;
        anyhow::ensure!(back[..4000].iter().all(|b| *b == 1), "bytes before the write changed");
        anyhow::ensure!(back[4100..].iter().all(|b| *b == 1), "bytes after the write changed");
        let written = &back[4000..4100];
        anyhow::ensure!(
            written.iter().all(|b| *b == 1) || written.iter().all(|b| *b == 2),
            "the written range is neither old nor new: {written:?}"
        );
        Ok(())
    }
    .await;
    fail_with_logs(&mut cluster, result).await;
    cluster.stop_all();
}

/// Item 4: a synced extending write is killed before its fdatasync (its bytes past the
/// chunk's old end are in the file); a later write into the same block, acknowledged, must
/// read back, with the gap between them as zeros or as the killed write's bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_torn_extending_write_never_spoils_a_later_acknowledged_write() {
    let mut cluster = start(1).await;
    let result = async {
        let registry = cluster.registry.client();
        let (volume_id, attr) = file_of(&registry, 1, vec![5u8; 100]).await?;
        killed_at_chunk_sync(&mut cluster, volume_id, &attr, 100, vec![0xee; 200]).await?;
        let data = impatient(&registry, 20);
        let attr = file::write_at(&data, volume_id, &attr, 1000, Bytes::from(vec![6u8; 50]), true).await?;
        let back = file::read_at(&data, volume_id, &attr, 0, 1050).await?;
        anyhow::ensure!(back[..100].iter().all(|b| *b == 5), "the first bytes changed");
        let torn = &back[100..300];
        anyhow::ensure!(
            torn.iter().all(|b| *b == 0) || torn.iter().all(|b| *b == 0xee),
            "the killed write's range is neither zeros nor its bytes"
        );
        anyhow::ensure!(back[300..1000].iter().all(|b| *b == 0), "the gap reads as zeros");
        anyhow::ensure!(
            back[1000..].iter().all(|b| *b == 6),
            "the acknowledged write reads back"
        );
        Ok(())
    }
    .await;
    fail_with_logs(&mut cluster, result).await;
    cluster.stop_all();
}

/// Item 6: the head of [H, T] is SIGKILLed right after its truncate of a chunk is durable,
/// at its next metadata write. It restarts within its lease, so it keeps its place. The cut
/// was never acknowledged, but H holds it: it must be marked dirty with it and copied to T,
/// so that both end with the same bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_truncate_killed_after_it_is_durable_still_reaches_the_whole_chain() {
    let mut cluster = start_with_lease(2, 30_000).await;
    let result = async {
        let registry = cluster.registry.client();
        let (volume_id, attr) = file_of(&registry, 2, vec![3u8; 12 * 1024]).await?;
        let table = chain_table(&registry).await;
        let chain = chain_of(&registry, volume_id, &attr).await?;
        let head = index_of(&cluster, chain.head().expect("head")).await;
        let wal = newest_engine_log(&disk_of(&cluster, head).join("meta"))?;
        let mut armed = kill_at(&cluster, head, "write,writev,pwrite64", &wal, 2).await?;
        let cut = member(&table, chain.head().expect("head"))
            .truncate(data_pb::TruncateRequest {
                chain_id: chain.id,
                chain_version: chain.version,
                chunk: Some(chunk_id(volume_id, attr.ino, 0)),
                length_bytes: 5000,
                remove: false,
                chunk_version: 0,
                prior_chunk_version: 0,
            })
            .await;
        anyhow::ensure!(cut.is_err(), "the head died during the truncate");
        armed.wait_for_kill(Duration::from_secs(20)).await?;
        println!("killed at:\n{}", armed.log());
        drop(armed);
        cluster.kill_data_service(head);
        cluster.restart_data_service(head)?;
        cluster.wait_for_data_services(Duration::from_secs(60)).await?;
        let same = chain_table(&registry).await.chain(chain.id).cloned();
        anyhow::ensure!(same.as_ref() == Some(&chain), "the head kept its place: {same:?}");
        wait_for(
            "both members to hold the same chunk",
            Duration::from_secs(30),
            || async { matches!(replica_difference(&registry).await, Ok(None)).then_some(()) },
        )
        .await?;
        Ok(())
    }
    .await;
    fail_with_logs(&mut cluster, result).await;
    cluster.stop_all();
}

/// Copies a data service's disk as it is now, with the process stopped so nothing moves.
fn snapshot_disk(pid: u32, disk: &Path, to: &Path) -> anyhow::Result<()> {
    use nix::sys::signal::{Signal, kill};
    let pid = nix::unistd::Pid::from_raw(pid as i32);
    kill(pid, Signal::SIGSTOP)?;
    let copied = std::process::Command::new("cp").arg("-a").arg(disk).arg(to).status();
    kill(pid, Signal::SIGCONT)?;
    anyhow::ensure!(copied?.success(), "cp -a {} failed", disk.display());
    Ok(())
}

/// Makes the run-state file say the service last ran in another boot (what a machine
/// crash and reboot leave).
fn pretend_reboot(disk: &Path) -> anyhow::Result<()> {
    let path = disk.join(shoal_dataservice::run_state::RUN_STATE_FILE);
    if !path.exists() {
        // A build that keeps no run state (run with SHOAL_TEST_BIN): nothing to change.
        return Ok(());
    }
    let mut state: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    anyhow::ensure!(state["clean"] == false, "the snapshot was taken while it ran");
    state["boot_id"] = "a boot before the power loss".into();
    std::fs::write(&path, serde_json::to_vec(&state)?)?;
    Ok(())
}

/// Item 7: the head of [H, T] loses power after an unsynced write that T kept; it comes
/// back within its lease with its disk as it was before that write. A sync of the write
/// must then either fail or mean the write is durable; a later write must not copy H's
/// older chunk over T's.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_head_back_from_a_power_loss_never_copies_an_older_chunk_over_newer_replicas() {
    let mut cluster = start_with_lease(2, 30_000).await;
    let result = async {
        let registry = cluster.registry.client();
        let (volume_id, attr) = file_of(&registry, 2, vec![1u8; 8192]).await?;
        let chain = chain_of(&registry, volume_id, &attr).await?;
        let head = index_of(&cluster, chain.head().expect("head")).await;
        let disk = disk_of(&cluster, head);
        let saved = cluster.registry.root().join("head-before-power-loss");
        snapshot_disk(pid_of(&cluster, head), &disk, &saved)?;
        let data = DataClient::new(registry.clone());
        let layout = shoal_client::FileLayout::of(volume_id, &attr)?;
        data.write(&layout, 8192, Bytes::from(vec![2u8; 4096]), false).await?;
        cluster.kill_data_service(head);
        std::fs::remove_dir_all(&disk)?;
        std::fs::rename(&saved, &disk)?;
        pretend_reboot(&disk)?;
        cluster.restart_data_service(head)?;
        cluster.wait_for_data_services(Duration::from_secs(60)).await?;
        let synced = data.sync(&layout, &[0]).await;
        let attr = registry.extend_file(volume_id, attr.ino, 12288).await?;
        let attr = file::write_at(&data, volume_id, &attr, 12288, Bytes::from(vec![3u8; 4096]), true).await?;
        let back = file::read_at(&data, volume_id, &attr, 0, 16384).await?;
        anyhow::ensure!(back[..8192].iter().all(|b| *b == 1), "the synced write changed");
        anyhow::ensure!(back[12288..].iter().all(|b| *b == 3), "the last write is missing");
        if synced.is_ok() {
            anyhow::ensure!(
                back[8192..12288].iter().all(|b| *b == 2),
                "the sync succeeded, yet the write it covered is gone"
            );
        }
        let chain = wait_all_serving(&registry, chain.id, 2).await?;
        wait_for(
            "both members to hold the same chunk",
            Duration::from_secs(30),
            || async { matches!(replica_difference(&registry).await, Ok(None)).then_some(()) },
        )
        .await?;
        println!("sync after the power loss: {synced:?}; chain now {chain:?}");
        Ok(())
    }
    .await;
    fail_with_logs(&mut cluster, result).await;
    cluster.stop_all();
}

/// A head whose copy of a dirty chunk is damaged (a block torn by a crash) must not fail
/// every later write: it takes the chain's acknowledged copy from downstream, copies it
/// down, and applies the new write.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_damaged_dirty_chunk_at_the_head_is_restored_from_downstream() {
    let mut cluster = start_with_lease(2, 30_000).await;
    let result = async {
        let registry = cluster.registry.client();
        let (volume_id, attr) = file_of(&registry, 2, vec![1u8; 8192]).await?;
        let table = chain_table(&registry).await;
        let chain = chain_of(&registry, volume_id, &attr).await?;
        let [head, tail] = [chain.targets[0].data_service_id, chain.targets[1].data_service_id];
        let (head_index, tail_index) = (index_of(&cluster, head).await, index_of(&cluster, tail).await);
        cluster.kill_data_service(tail_index);
        let unacknowledged = write_once(&table, &chain, volume_id, &attr, 4096, vec![9u8; 4096], true).await;
        anyhow::ensure!(
            unacknowledged.is_err(),
            "a write whose tail is dead is not acknowledged"
        );
        cluster.restart_data_service(tail_index)?;
        cluster.wait_for_data_services(Duration::from_secs(60)).await?;
        // The torn block: one byte of the head's copy flipped.
        let path = chunk_file(&cluster, head_index, volume_id, attr.ino)?;
        let mut bytes = std::fs::read(&path)?;
        bytes[5000] ^= 0xff;
        std::fs::write(&path, bytes)?;
        let data = impatient(&registry, 30);
        let attr = file::write_at(&data, volume_id, &attr, 0, Bytes::from(vec![4u8; 4096]), true).await?;
        let back = file::read_at(&data, volume_id, &attr, 0, 8192).await?;
        anyhow::ensure!(back[..4096].iter().all(|b| *b == 4), "the new write reads back");
        anyhow::ensure!(
            back[4096..].iter().all(|b| *b == 1),
            "the rest is the chain's acknowledged state"
        );
        wait_for(
            "both members to hold the same chunk",
            Duration::from_secs(30),
            || async { matches!(replica_difference(&registry).await, Ok(None)).then_some(()) },
        )
        .await?;
        Ok(())
    }
    .await;
    fail_with_logs(&mut cluster, result).await;
    cluster.stop_all();
}

/// Item 7, all copies: the only data service of a chain loses power after a write reached
/// it unsynced, and comes back within its lease with its disk as before. Nobody else has
/// the write, so the chain resumes from it (its loss epoch moves) and the application's
/// fsync must fail instead of reporting the lost write durable.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_fsync_after_a_power_loss_that_may_have_lost_its_writes_fails() {
    let spec = MountSpec {
        data_services: 1,
        replicas: 1,
        registry_args: &["--data-service-lease-ms=30000"],
        ..MountSpec::default()
    };
    let mut setup = MountedCluster::start(&binary(), spec).await.expect("mounted");
    let result = async {
        let path = setup.mount.path("unsynced.bin");
        // Held off the shared descriptor table: the restart below must not flush it on exec.
        let files = PrivateFiles::start()?;
        let create = path.clone();
        files.run(move |files| -> std::io::Result<()> {
            let file = std::fs::File::create(&create)?;
            file.sync_all()?;
            files.insert("unsynced".into(), file);
            Ok(())
        })??;
        let disk = disk_of(&setup.cluster, 0);
        let saved = setup.cluster.registry.root().join("before-power-loss");
        snapshot_disk(pid_of(&setup.cluster, 0), &disk, &saved)?;
        tokio::task::block_in_place(|| {
            files.run(|files| files.get_mut("unsynced").expect("held").write_all(&[7u8; 65536]))
        })??;
        // The mount sends buffered writes within a second or two; wait until they are there.
        let ino = std::fs::metadata(&path).map(|m| std::os::unix::fs::MetadataExt::ino(&m))?;
        wait_for("the write to reach the data service", Duration::from_secs(30), || {
            let landed = std::fs::read_dir(disk.join("chunks"))
                .into_iter()
                .flatten()
                .flatten()
                .any(|dir| {
                    std::fs::read_dir(dir.path()).into_iter().flatten().flatten().any(|f| {
                        f.file_name().to_string_lossy().contains(&format!("-{ino}-0"))
                            && f.metadata().is_ok_and(|m| m.len() >= 65536)
                    })
                });
            async move { landed.then_some(()) }
        })
        .await?;
        setup.cluster.kill_data_service(0);
        std::fs::remove_dir_all(&disk)?;
        std::fs::rename(&saved, &disk)?;
        pretend_reboot(&disk)?;
        setup.cluster.restart_data_service(0)?;
        setup.cluster.wait_for_data_services(Duration::from_secs(60)).await?;
        let synced =
            tokio::task::block_in_place(|| files.run(|files| files.get_mut("unsynced").expect("held").sync_all()))?;
        anyhow::ensure!(
            synced.as_ref().is_err_and(|e| e.raw_os_error() == Some(libc::EIO)),
            "fsync must not report a write the only copy lost as durable: {synced:?}"
        );
        Ok(())
    }
    .await;
    setup.finish(result);
}
