//! Verify-and-repair at start-up: what a crash can leave half done in a chunk, put right
//! before the service serves.
//!
//! Why this is enough: every in-place change is described in the engine before its bytes
//! reach the file (see [`Unsynced`]), and a received copy is noted before it is renamed into
//! place. So after a crash a chunk is in one of a few states, each told apart here:
//!
//! - A copy noted but maybe not renamed: the rename is finished (the copy was synced first).
//! - A chunk with an `Unsynced` record: its file is cut to the recorded length (a truncation
//!   the file had not seen), and every block changed since the durable point is checked. A
//!   block that matches its checksum stays; one that matches an earlier version of itself
//!   gets that checksum back (the write never reached it); one written only since the
//!   durable point that matches nothing reads as zeros (it held nothing durable). Anything
//!   else is damage, left to fail its checksum and be repaired from a peer.
//!
//! Invariant: recovery never makes a block readable with bytes its checksum does not cover,
//! and never turns a block that held durable bytes into zeros.

use std::fs::File;
use std::path::Path;

use shoal_engine::{Durability, WriteBatch};

use super::disk::Disk;
use super::meta::{BLOCKS_PER_GROUP, ChunkId, Unsynced};
use super::{BLOCK_SIZE_BYTES, ChunkStore, StoreResult, block_crc, io_error, read_full_at, set_crc};

/// Most chunks one disk recovers in one pass of the loop (each pass removes the records it
/// handled, so the loop ends).
const RECOVERY_PAGE: usize = 1024;

/// What recovery found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Chunks that had changes not yet synced when the service stopped.
    pub chunks_checked: u64,
    /// Blocks whose bytes were of an earlier version than their checksum (a write that did
    /// not reach them): they got that version's checksum back.
    pub blocks_rolled_back: u64,
    /// Blocks written only since the durable point whose bytes matched nothing: zeros now.
    pub blocks_cleared: u64,
    /// Blocks that match no version they ever had: left to fail, and be repaired.
    pub blocks_damaged: u64,
    /// Received copies whose rename into place was finished here.
    pub copies_installed: u64,
    /// Files of copies still being received, removed.
    pub incoming_removed: u64,
}

impl RecoveryReport {
    pub fn add(&mut self, other: &RecoveryReport) {
        self.chunks_checked += other.chunks_checked;
        self.blocks_rolled_back += other.blocks_rolled_back;
        self.blocks_cleared += other.blocks_cleared;
        self.blocks_damaged += other.blocks_damaged;
        self.copies_installed += other.copies_installed;
        self.incoming_removed += other.incoming_removed;
    }

    pub fn is_empty(&self) -> bool {
        *self == RecoveryReport::default()
    }
}

pub fn recover_disk(disk: &Disk) -> anyhow::Result<RecoveryReport> {
    let mut report = RecoveryReport::default();
    // Bounded: every pass removes the install records it read.
    loop {
        let installs = disk.installs(RECOVERY_PAGE)?;
        if installs.is_empty() {
            break;
        }
        for (chunk, incoming) in installs {
            if incoming.exists() {
                disk.install(&incoming, &disk.chunk_path(&chunk))?;
                report.copies_installed += 1;
            }
            let mut batch = WriteBatch::new();
            disk.delete_install(&mut batch, &chunk);
            disk.engine().write(batch, Durability::Synced)?;
        }
    }
    for incoming in disk.incoming_files()? {
        std::fs::remove_file(&incoming)?;
        report.incoming_removed += 1;
    }
    // Bounded likewise: recovering a chunk removes its unsynced record.
    loop {
        let chunks = disk.unsynced_chunks(RECOVERY_PAGE)?;
        if chunks.is_empty() {
            break;
        }
        for chunk in chunks {
            report.add(&recover_chunk(disk, &chunk)?);
        }
    }
    Ok(report)
}

/// Brings one chunk's checksums in line with its file (see the module docs) and forgets
/// its unsynced record. Also used when a write fails part-way.
pub fn recover_chunk(disk: &Disk, chunk: &ChunkId) -> StoreResult<RecoveryReport> {
    let mut report = RecoveryReport::default();
    let Some(unsynced) = disk.unsynced(chunk)? else {
        return Ok(report);
    };
    report.chunks_checked = 1;
    let mut batch = WriteBatch::new();
    disk.delete_unsynced(&mut batch, chunk);
    let Some(meta) = disk.meta(chunk)? else {
        disk.engine().write(batch, Durability::Synced)?;
        return Ok(report);
    };
    let path = disk.chunk_path(chunk);
    let file = disk.open_chunk(chunk, true).map_err(io_error("open chunk", &path))?;
    cut_to(&file, &path, meta.length_bytes)?;
    let block = BLOCK_SIZE_BYTES as u64;
    let end_block = meta.length_bytes.div_ceil(block);
    let past_durable = unsynced.durable_length_bytes.div_ceil(block);
    let changed: Vec<u64> = unsynced
        .earlier
        .keys()
        .copied()
        .filter(|b| *b < end_block)
        .chain(past_durable..end_block)
        .collect();
    let mut groups = ChunkStore::load_groups(disk, chunk, 0, end_block)?;
    for b in changed {
        let Some(current) = ChunkStore::stored_crc(&groups, b) else {
            continue;
        };
        let mut content = vec![0u8; (meta.length_bytes - b * block).min(block) as usize];
        read_full_at(&file, &mut content, b * block).map_err(io_error("read chunk", &path))?;
        let actual = block_crc(&content);
        match verdict(&unsynced, b, current, actual) {
            Verdict::Current => {}
            Verdict::Earlier => {
                set_crc(&mut groups, b, Some(actual));
                report.blocks_rolled_back += 1;
            }
            Verdict::Zeros => {
                set_crc(&mut groups, b, None);
                report.blocks_cleared += 1;
            }
            Verdict::Damaged => report.blocks_damaged += 1,
        }
    }
    for (group, crcs) in &groups {
        if crcs.is_empty() {
            batch.delete(super::meta::SPACE_CRCS, super::meta::crc_key(chunk, *group));
        } else {
            disk.put_crc_group(&mut batch, chunk, *group, crcs);
        }
    }
    file.sync_data().map_err(io_error("sync chunk", &path))?;
    disk.engine().write(batch, Durability::Synced)?;
    if report.blocks_damaged > 0 {
        tracing::warn!(%chunk, damaged = report.blocks_damaged, "blocks match no version they had; they fail their checksum until repaired from a peer");
    }
    Ok(report)
}

enum Verdict {
    Current,
    Earlier,
    Zeros,
    Damaged,
}

/// What block `block`, whose stored checksum is `current` and whose bytes checksum to
/// `actual`, holds.
fn verdict(unsynced: &Unsynced, block: u64, current: u32, actual: u32) -> Verdict {
    if actual == current {
        return Verdict::Current;
    }
    let earlier = unsynced.earlier.get(&block);
    if earlier.is_some_and(|versions| versions.contains(&Some(actual))) {
        return Verdict::Earlier;
    }
    let held_nothing_durable = !unsynced.was_durable(block, BLOCK_SIZE_BYTES as u64)
        || earlier.is_some_and(|versions| versions.contains(&None));
    if held_nothing_durable {
        Verdict::Zeros
    } else {
        Verdict::Damaged
    }
}

/// Cuts the file to `length_bytes` if it is longer (a truncation recorded but not applied).
fn cut_to(file: &File, path: &Path, length_bytes: u64) -> StoreResult<()> {
    let length = file.metadata().map_err(io_error("stat chunk", path))?.len();
    if length > length_bytes {
        file.set_len(length_bytes).map_err(io_error("truncate chunk", path))?;
    }
    Ok(())
}

// A block's checksum group is found by division; the group size is a whole number of blocks.
const _: () = assert!(BLOCKS_PER_GROUP.is_power_of_two());
