//! Replicas that went through failures converge, with real processes: a data service that
//! missed deletes, truncates and rewrites while it was down; a member holding another
//! history of a chunk; a change left unacknowledged by a dead tail.

mod data_common;

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use data_common::*;
use shoal_client::proto as pb;
use shoal_client::{DataClient, file};
use shoal_proto::data as data_pb;
use shoal_testkit::wait_for;

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
        let table = chain_table(&registry).await;
        let resynced = total_resynced(
            &table,
            table
                .chains()
                .flat_map(|c| c.targets.iter().map(|t| t.data_service_id))
                .collect::<std::collections::BTreeSet<_>>(),
        )
        .await?;
        println!("replicas identical after the return; {resynced} chunks sent whole to an out-of-sync member");
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
        let data = DataClient::new(registry.clone());
        let OneChunkFile {
            volume_id,
            attr,
            table,
            chain,
            ..
        } = one_chunk_file(&registry, "resync").await?;
        let tail = chain.targets[2].data_service_id;
        let read_member = |id: u64| {
            let mut client = member(&table, id);
            let request = chunk_read(&chain, volume_id, attr.ino, 0, 8192);
            async move { anyhow::Ok(client.read(request).await?.into_inner()) }
        };
        let version = read_member(tail).await?.chunk_version;
        let forwarded = |prior: u64, fill: u8| data_pb::WriteRequest {
            chunk_version: prior + 1,
            prior_chunk_version: prior,
            ..chunk_write(&chain, volume_id, &attr, 0, vec![fill; 4096])
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
        let resynced = total_resynced(&table, chain.targets.iter().map(|t| t.data_service_id)).await?;
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
        let OneChunkFile {
            volume_id,
            attr,
            table,
            chain,
            ..
        } = one_chunk_file(&registry, "dirty").await?;
        let [head, middle, tail] = [0, 1, 2].map(|i| chain.targets[i].data_service_id);
        let tail_index = index_of(&cluster, tail).await;
        cluster.kill_data_service(tail_index);
        let failed = member(&table, head)
            .write(chunk_write(&chain, volume_id, &attr, 0, vec![5u8; 4096]))
            .await
            .expect_err("a write whose tail is dead cannot be acknowledged");
        anyhow::ensure!(failed.code() == tonic::Code::Unavailable, "{failed:?}");
        for id in [head, middle] {
            let refused = member(&table, id)
                .read(chunk_read(&chain, volume_id, attr.ino, 0, 8192))
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
                        .read(chunk_read(&chain, volume_id, attr.ino, 0, 8192))
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
