//! What a data service does on its own: heartbeats, keeping its chain table current,
//! filling a successor that is syncing, healing dirty chunks, removing the chunks of
//! deleted files and volumes, and sweeping chunks whose file the registry no longer has.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use shoal_client::chains::ChainInfo;
use shoal_proto::data as pb;
use shoal_proto::registry as registry_pb;
use tokio::sync::watch;

use crate::node::{DataNode, chunk_to_wire};
use crate::store::ChunkId;

/// Chunks handled per round of the dirty sweep, and per page of a fill.
const CHUNKS_PER_ROUND: usize = 256;
const SWEEP_INTERVAL: Duration = Duration::from_secs(3);
/// How often changed chunks are synced in the background (the kernel writes dirty pages
/// back on a similar schedule).
const SETTLE_INTERVAL: Duration = Duration::from_secs(5);
const GARBAGE_INTERVAL: Duration = Duration::from_secs(2);
const ORPHAN_SWEEP_INTERVAL: Duration = Duration::from_secs(5);
/// Files checked with the registry per round of the orphan sweep.
const ORPHAN_FILES_PER_ROUND: usize = 64;

pub fn disks_to_wire(node: &DataNode) -> Vec<registry_pb::Disk> {
    node.store
        .usage()
        .into_iter()
        .map(|d| registry_pb::Disk {
            path: d.path.display().to_string(),
            capacity_bytes: d.capacity_bytes,
            free_bytes: d.free_bytes,
            healthy: d.healthy,
        })
        .collect()
}

/// Heartbeats the registry and refreshes the chain table when its version moves.
pub async fn heartbeat_loop(node: Arc<DataNode>, interval: Duration, mut stop: watch::Receiver<bool>) {
    let mut ticker = tokio::time::interval(interval);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => return,
        }
        let request = registry_pb::HeartbeatRequest {
            id: node.id,
            disks: disks_to_wire(&node),
        };
        match node.registry.heartbeat(request).await {
            Ok(reply) => {
                if let Err(error) = node.chains.at_least(reply.chain_table_version).await {
                    tracing::warn!(%error, "cannot refresh the chain table");
                }
            }
            Err(error) => tracing::warn!(%error, "heartbeat failed"),
        }
    }
}

/// Fills successors that are syncing, heals dirty chunks, collects garbage, and syncs
/// changed chunks.
pub async fn maintenance_loop(node: Arc<DataNode>, mut stop: watch::Receiver<bool>) {
    let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
    let mut garbage = tokio::time::interval(GARBAGE_INTERVAL);
    let mut fill = tokio::time::interval(Duration::from_millis(500));
    let mut settle = tokio::time::interval(SETTLE_INTERVAL);
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = fill.tick() => fill_successors(&node).await,
            _ = sweep.tick() => heal_dirty(&node).await,
            _ = garbage.tick() => collect_garbage(&node).await,
            _ = settle.tick() => settle_unsynced(&node).await,
        }
    }
}

/// Sweeps chunks of files the registry no longer has, on its own schedule: a slow registry
/// answer must not hold up fills, healing or garbage collection.
pub async fn orphan_sweep_loop(node: Arc<DataNode>, mut stop: watch::Receiver<bool>) {
    let mut orphans = tokio::time::interval(ORPHAN_SWEEP_INTERVAL);
    let mut cursor = None;
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = orphans.tick() => sweep_orphans(&node, &mut cursor).await,
        }
    }
}

/// For every chain where this service serves and its successor is being filled: copy every
/// chunk over, remove what the successor has and this service does not, and tell the
/// registry. A chain that changes meanwhile is filled again on the next round.
async fn fill_successors(node: &Arc<DataNode>) {
    let table = node.chains.current();
    let work: Vec<(ChainInfo, u64)> = table
        .chains()
        .filter_map(|chain| {
            let position = chain.position(node.id)?;
            let me = chain.targets[position];
            let next = chain.targets.get(position + 1)?;
            (me.serving && !next.serving).then(|| (chain.clone(), next.data_service_id))
        })
        .collect();
    for (chain, successor) in work {
        let Some(address) = table.address(successor).map(str::to_string) else {
            continue;
        };
        // Changes resolved against a table without the successor finish before the fill
        // looks at what to copy; later ones forward to it (see `locks`).
        drop(node.gates.write(&chain.id).await);
        match fill(node, &chain, successor, &address).await {
            Ok(copied) => {
                let request = registry_pb::ChainSyncDoneRequest {
                    chain_id: chain.id,
                    chain_version: chain.version,
                    data_service_id: successor,
                };
                match node.registry.chain_sync_done(request).await {
                    Ok(_) => {
                        tracing::info!(
                            chain = chain.id,
                            successor,
                            copied,
                            "filled chain successor; it now serves"
                        );
                        let _ = node.chains.refresh().await;
                    }
                    Err(error) => {
                        tracing::info!(chain = chain.id, %error, "fill finished but the chain moved on; filling again")
                    }
                }
            }
            Err(error) => {
                tracing::warn!(chain = chain.id, successor, %error, "filling chain successor failed; retrying")
            }
        }
    }
}

async fn fill(node: &Arc<DataNode>, chain: &ChainInfo, successor: u64, address: &str) -> Result<u64, tonic::Status> {
    let mut copied = 0;
    let mut after: Option<ChunkId> = None;
    // Bounded by the number of chunks of the chain: every page moves the cursor forward.
    loop {
        let chain_id = chain.id;
        let cursor = after;
        let page = node
            .blocking(move |store| store.list_chain(chain_id, cursor, CHUNKS_PER_ROUND))
            .await
            .map_err(crate::status::from_store)?;
        for (chunk, _) in &page {
            let _guard = node.locks.write(chunk).await;
            node.push_copy(chain, *chunk, successor, address, false).await?;
            copied += 1;
        }
        match page.last() {
            Some((last, _)) if page.len() == CHUNKS_PER_ROUND => after = Some(*last),
            _ => break,
        }
    }
    // Chunks the successor kept from an earlier life that this member no longer has.
    let mut client = node.peers.client(address)?;
    let mut cursor: Option<ChunkId> = None;
    loop {
        let request = pb::ListChunksRequest {
            chain_id: chain.id,
            after_volume_id: cursor.map_or(0, |c| c.volume_id),
            after_ino: cursor.map_or(0, |c| c.ino),
            after_index: cursor.map_or(0, |c| c.index),
            has_after: cursor.is_some(),
            max_chunks: CHUNKS_PER_ROUND as u32,
        };
        let reply = client.list_chunks(request).await?.into_inner();
        for listed in &reply.chunks {
            let chunk = crate::node::chunk_of(listed.chunk)?;
            cursor = Some(chunk);
            let _guard = node.locks.write(&chunk).await;
            let present = node
                .blocking(move |store| store.meta(&chunk))
                .await
                .map_err(crate::status::from_store)?;
            if present.is_none() {
                node.push_copy(chain, chunk, successor, address, false).await?;
            }
        }
        if reply.end || reply.chunks.is_empty() {
            break;
        }
    }
    Ok(copied)
}

/// Copies chunks that a failed write left dirty down their chain, where this service heads
/// it; a tail (or a lone member) just marks them clean.
async fn heal_dirty(node: &Arc<DataNode>) {
    let dirty = match node.blocking(|store| store.list_dirty(CHUNKS_PER_ROUND)).await {
        Ok(dirty) => dirty,
        Err(error) => {
            tracing::warn!(%error, "cannot list dirty chunks");
            return;
        }
    };
    let table = node.chains.current();
    for (chunk, chain_id) in dirty {
        let Some(chain) = table.chain(chain_id).cloned() else {
            continue;
        };
        let Some(position) = chain.position(node.id) else {
            continue;
        };
        let _guard = node.locks.write(&chunk).await;
        match chain.targets.get(position + 1) {
            // A tail holds the chain's state: nothing to send.
            None => {}
            Some(_) if position != 0 => continue,
            Some(next) => {
                let Some(address) = table.address(next.data_service_id) else {
                    continue;
                };
                let successor = (next.data_service_id, address.to_string());
                if let Err(error) = node.heal_if_dirty(&chain, chunk, Some(&successor)).await {
                    tracing::debug!(%chunk, %error, "dirty chunk not healed yet");
                }
                continue;
            }
        }
        if let Err(error) = node.blocking(move |store| store.mark_clean(chunk)).await {
            tracing::warn!(%chunk, %error, "cannot mark chunk clean");
        }
    }
}

/// Syncs the files of chunks changed since their last sync, so that few are left for
/// recovery after a crash, and recovery's records stay small.
async fn settle_unsynced(node: &Arc<DataNode>) {
    let chunks = match node.blocking(|store| store.unsynced_chunks(CHUNKS_PER_ROUND)).await {
        Ok(chunks) => chunks,
        Err(error) => {
            tracing::warn!(%error, "cannot list unsynced chunks");
            return;
        }
    };
    if chunks.is_empty() {
        return;
    }
    if let Err(error) = node.sync_chunks(&chunks).await {
        tracing::warn!(%error, "cannot sync changed chunks");
    }
}

/// Removes the chunks of files and volumes the registry says are deleted, and acknowledges.
async fn collect_garbage(node: &Arc<DataNode>) {
    let request = registry_pb::ListGarbageRequest {
        data_service_id: node.id,
        max_entries: CHUNKS_PER_ROUND as u32,
    };
    let list = match node.registry.list_garbage(request).await {
        Ok(list) => list,
        Err(error) => {
            tracing::debug!(%error, "cannot list garbage");
            return;
        }
    };
    if list.files.is_empty() && list.volumes.is_empty() {
        return;
    }
    let files: HashSet<(u64, u64)> = list.files.iter().map(|f| (f.volume_id, f.ino)).collect();
    let drop = pb::DropRequest {
        files: files
            .iter()
            .map(|(volume_id, ino)| {
                chunk_to_wire(&ChunkId {
                    volume_id: *volume_id,
                    ino: *ino,
                    index: 0,
                })
            })
            .collect(),
        volumes: list.volumes.clone(),
    };
    match node.drop_chunks(drop).await {
        Ok(reply) => tracing::info!(
            files = files.len(),
            volumes = list.volumes.len(),
            chunks = reply.chunks_removed,
            "removed chunks of deleted files and volumes"
        ),
        Err(error) => {
            tracing::warn!(%error, "cannot remove deleted chunks");
            return;
        }
    }
    let ack = registry_pb::AckGarbageRequest {
        data_service_id: node.id,
        files: list.files,
        volumes: list.volumes,
    };
    if let Err(error) = node.registry.ack_garbage(ack).await {
        tracing::warn!(%error, "cannot acknowledge removed garbage");
    }
}

/// Removes the chunks of files the registry no longer has. Garbage collection removes them
/// normally, but a chunk can come back after this service collected its file: a fill from a
/// predecessor that had not collected it yet, or a write retried late. Inode numbers are
/// never reused, so a file whose volume exists but which has neither an inode nor an orphan
/// record (a linearizable read) is never written again. A missing volume is left to garbage
/// collection (a service pointed at the wrong registry must not wipe itself), and any other
/// answer, the registry unreachable say, removes nothing.
async fn sweep_orphans(node: &Arc<DataNode>, cursor: &mut Option<(u64, u64)>) {
    let after = *cursor;
    let files = match node
        .blocking(move |store| store.list_files(after, ORPHAN_FILES_PER_ROUND))
        .await
    {
        Ok(files) => files,
        Err(error) => {
            tracing::warn!(%error, "cannot list files for the orphan sweep");
            return;
        }
    };
    let mut orphans = Vec::new();
    for (volume_id, ino) in &files {
        let request = registry_pb::GetAttrRequest {
            volume_id: *volume_id,
            ino: *ino,
        };
        match node.registry.file_exists(request).await {
            Ok(reply) if reply.volume_exists && !reply.file_exists => orphans.push(chunk_to_wire(&ChunkId {
                volume_id: *volume_id,
                ino: *ino,
                index: 0,
            })),
            Ok(_) => {}
            Err(error) => {
                tracing::debug!(%error, "orphan sweep paused: the registry did not answer");
                return;
            }
        }
    }
    // The next round goes on after the last file checked, or starts over at the end.
    *cursor = if files.len() < ORPHAN_FILES_PER_ROUND {
        None
    } else {
        files.last().copied()
    };
    if orphans.is_empty() {
        return;
    }
    let count = orphans.len();
    match node
        .drop_chunks(pb::DropRequest {
            files: orphans,
            volumes: Vec::new(),
        })
        .await
    {
        Ok(reply) => tracing::info!(
            files = count,
            chunks = reply.chunks_removed,
            "removed chunks of files the registry no longer has"
        ),
        Err(error) => tracing::warn!(%error, "cannot remove chunks of deleted files"),
    }
}
