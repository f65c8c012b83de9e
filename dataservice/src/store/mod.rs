//! The chunk store: chunk bytes in plain files on one or more disks, chunk metadata and
//! per-block checksums in each disk's engine instance.
//!
//! Every call here is blocking; the service calls them from blocking tasks. Callers hold the
//! chunk's lock (see `locks`), so the store never sees two changes to one chunk at a time.
//!
//! Invariant: a block is returned only if its stored checksum matches (a block never
//! written reads as zeros). Invariant: no write lands on a block whose checksum no longer
//! matches: a partial write would otherwise bless the corruption around it.

mod checksum;
mod disk;
mod meta;
mod recovery;

pub use checksum::{BLOCK_SIZE_BYTES, block_crc, crc, payload_crcs, verify_payload};
pub use disk::DiskUsage;
pub use meta::{ChunkId, ChunkMeta};
pub use recovery::RecoveryReport;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use shoal_engine::{Durability, EngineError, ScanControl, WriteBatch};

use disk::Disk;
use meta::{BLOCKS_PER_GROUP, CrcGroup, Noted, SPACE_CHUNKS, SPACE_CRCS, SPACE_DIRTY, Unsynced};

/// Largest chunk the store accepts.
pub const MAX_CHUNK_SIZE_BYTES: u64 = 64 << 20;
/// Most chunks one listing returns.
pub const MAX_LISTED_CHUNKS: usize = 4096;
/// Largest single write.
pub const MAX_WRITE_BYTES: usize = shoal_proto::MAX_DATA_PAYLOAD_BYTES;
/// Most 4 KiB blocks a single write touches, counting both partial ends of every range.
pub const MAX_WRITE_BLOCKS: usize = MAX_WRITE_BYTES / BLOCK_SIZE_BYTES;
/// Smallest aligned span written past the page cache (O_DIRECT): large writes skip a copy
/// into cache pages and leave no dirty pages behind; small ones would wait for the disk.
pub const MIN_DIRECT_WRITE_BYTES: u64 = 256 << 10;
const _: () = assert!(MIN_DIRECT_WRITE_BYTES.is_multiple_of(BLOCK_SIZE_BYTES as u64));
const _: () = assert!(shoal_proto::frame::PAYLOAD_ALIGN_BYTES.is_multiple_of(BLOCK_SIZE_BYTES));
const _: () = assert!(MAX_CHUNK_SIZE_BYTES as usize >= MAX_WRITE_BYTES);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{chunk}: block {block} in {path} fails its checksum (stored {stored:#010x}, computed {computed:#010x})")]
    Corrupt {
        chunk: ChunkId,
        block: u64,
        path: PathBuf,
        stored: u32,
        computed: u32,
    },
    #[error("{chunk}: disk {disk} is full")]
    NoSpace { chunk: ChunkId, disk: PathBuf },
    #[error("{chunk}: {message}")]
    Invalid { chunk: ChunkId, message: String },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("{0}")]
    Metadata(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// One range of a write.
#[derive(Clone, Copy, Debug)]
pub struct Extent<'a> {
    pub offset: u64,
    pub data: &'a [u8],
    /// CRCs of `data` in 4 KiB pieces from `offset`, already verified by the caller.
    pub payload_crcs: &'a [u32],
}

impl Extent<'_> {
    fn end(&self) -> u64 {
        self.offset + self.data.len() as u64
    }

    fn blocks(&self) -> (u64, u64) {
        block_span(self.offset, self.data.len() as u64)
    }
}

/// One write into a chunk: one or more ranges applied as one change, under one version.
pub struct WriteOp<'a> {
    pub chain_id: u64,
    /// Sorted by offset, each non-empty, and no two touch the same 4 KiB block: each is
    /// planned against the chunk as it was before the write.
    pub extents: &'a [Extent<'a>],
    pub version: u64,
    /// Written here but not yet acknowledged by the chain's tail.
    pub dirty: bool,
    /// Durable before returning.
    pub sync: bool,
}

/// Which version a chain change gives its chunk ([`ChunkStore::versioned`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NextVersion {
    /// A client's write at the head: the chunk's next version, unless an earlier failed
    /// write left the chunk dirty here (then nothing is written: it must be healed first).
    Head,
    /// A forwarded write: `version`, if the chunk is at `prior` here.
    Forwarded { prior: u64, version: u64 },
}

/// What [`ChunkStore::versioned`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Versioned {
    Written {
        prior: u64,
        version: u64,
    },
    /// Nothing written: the chunk is dirty at the head.
    Dirty,
    /// Nothing written: the chunk is at `local` here, not at the sender's prior version.
    OutOfSync {
        local: u64,
    },
}

/// A cut of a chunk (always durable on return).
#[derive(Clone, Copy, Debug)]
pub struct TruncateOp {
    pub chain_id: u64,
    pub length_bytes: u64,
    pub version: u64,
    /// Cut here but not yet acknowledged by the chain's tail.
    pub dirty: bool,
}

/// What a write adds to its chunk's [`Unsynced`] record.
struct UnsyncedChange {
    head: Unsynced,
    /// The chunk had no record: the head is stored with this write.
    fresh: bool,
    /// Blocks whose earlier checksums took one more, with all of them.
    blocks: Vec<(u64, Vec<Option<u32>>)>,
}

/// One block a write changes.
struct BlockUpdate {
    block: u64,
    crc: u32,
    /// A block the write covers only in part: its whole new content.
    merged: Option<Vec<u8>>,
    /// It keeps bytes that were there before (not overwritten, not zeros past the end).
    keeps_bytes: bool,
}

/// Bytes read from a chunk, with the chunk's version and length.
#[derive(Debug)]
pub struct ReadResult {
    pub data: Vec<u8>,
    /// CRCs of `data` in 4 KiB pieces, for the reader to check end to end.
    pub payload_crcs: Vec<u32>,
    pub version: u64,
    pub length_bytes: u64,
}

/// Whether a received whole-chunk copy replaces what is here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replace {
    /// A copy from upstream in the chain: it is the chain's state, whatever is here.
    Always,
    /// A repair copy fetched from a peer: a newer local write (since the fetch) wins.
    IfNotOlder,
}

/// A whole chunk being received from a chain peer into a temporary file.
pub struct IncomingCopy {
    chunk: ChunkId,
    path: PathBuf,
    file: File,
    written_bytes: u64,
    crcs: BTreeMap<u64, u32>,
}

pub struct ChunkStore {
    disks: Vec<Disk>,
    recovered: RecoveryReport,
}

fn io_error<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

fn is_no_space(error: &io::Error) -> bool {
    error.raw_os_error() == Some(nix::libc::ENOSPC) || error.raw_os_error() == Some(nix::libc::EDQUOT)
}

/// Reads up to `buffer.len()` bytes at `offset`, leaving zeros past the end of the file.
fn read_full_at(file: &File, buffer: &mut [u8], offset: u64) -> io::Result<()> {
    let mut filled = 0;
    while filled < buffer.len() {
        match file.read_at(&mut buffer[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(read) => filled += read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(error),
        }
    }
    buffer[filled..].fill(0);
    Ok(())
}

/// Sets (or with `None` clears) block `block`'s checksum in its loaded group.
fn set_crc(groups: &mut BTreeMap<u64, CrcGroup>, block: u64, crc: Option<u32>) {
    let per_group = BLOCKS_PER_GROUP as u64;
    let group = groups
        .get_mut(&(block / per_group))
        .expect("the block's checksum group is loaded");
    let slot = (block % per_group) as usize;
    match crc {
        Some(crc) => group.set(slot, crc),
        None => group.clear(slot),
    }
}

fn block_span(offset: u64, length: u64) -> (u64, u64) {
    let block = BLOCK_SIZE_BYTES as u64;
    (offset / block, (offset + length).div_ceil(block))
}

impl ChunkStore {
    /// Opens the store on `disk_paths` (each a directory of its own, ideally its own disk).
    pub fn open(disk_paths: &[PathBuf]) -> anyhow::Result<ChunkStore> {
        anyhow::ensure!(!disk_paths.is_empty(), "a data service needs at least one --disk");
        let disks = disk_paths
            .iter()
            .map(|p| Disk::open(p))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut recovered = RecoveryReport::default();
        for disk in &disks {
            recovered.add(&recovery::recover_disk(disk)?);
        }
        Ok(ChunkStore { disks, recovered })
    }

    /// What opening the store had to put right after the last run stopped.
    pub fn recovered(&self) -> &RecoveryReport {
        &self.recovered
    }

    pub fn disk_roots(&self) -> Vec<PathBuf> {
        self.disks.iter().map(|d| d.root().to_path_buf()).collect()
    }

    fn disk(&self, chunk: &ChunkId) -> &Disk {
        let index = crc(&chunk.key()) as usize % self.disks.len();
        &self.disks[index]
    }

    /// Where a chunk's bytes live (for operators, and for tests that damage them).
    pub fn chunk_path(&self, chunk: &ChunkId) -> PathBuf {
        self.disk(chunk).chunk_path(chunk)
    }

    pub fn meta(&self, chunk: &ChunkId) -> StoreResult<Option<ChunkMeta>> {
        self.disk(chunk).meta(chunk)
    }

    /// The checksum groups of blocks `first_block..end_block`.
    fn load_groups(
        disk: &Disk,
        chunk: &ChunkId,
        first_block: u64,
        end_block: u64,
    ) -> StoreResult<BTreeMap<u64, CrcGroup>> {
        let mut groups = BTreeMap::new();
        Self::load_groups_into(disk, chunk, first_block, end_block, &mut groups)?;
        Ok(groups)
    }

    /// Loads the checksum groups of blocks `first_block..end_block` not in `groups` yet.
    fn load_groups_into(
        disk: &Disk,
        chunk: &ChunkId,
        first_block: u64,
        end_block: u64,
        groups: &mut BTreeMap<u64, CrcGroup>,
    ) -> StoreResult<()> {
        if end_block <= first_block {
            return Ok(());
        }
        let per_group = BLOCKS_PER_GROUP as u64;
        for group in first_block / per_group..=(end_block - 1) / per_group {
            if let std::collections::btree_map::Entry::Vacant(slot) = groups.entry(group) {
                slot.insert(disk.crc_group(chunk, group)?.unwrap_or_default());
            }
        }
        Ok(())
    }

    fn stored_crc(groups: &BTreeMap<u64, CrcGroup>, block: u64) -> Option<u32> {
        let per_group = BLOCKS_PER_GROUP as u64;
        groups.get(&(block / per_group))?.get((block % per_group) as usize)
    }

    fn check_block(chunk: &ChunkId, path: &Path, block: u64, bytes: &[u8], stored: Option<u32>) -> StoreResult<()> {
        if let Some(stored) = stored {
            let computed = block_crc(bytes);
            if computed != stored {
                return Err(StoreError::Corrupt {
                    chunk: *chunk,
                    block,
                    path: path.to_path_buf(),
                    stored,
                    computed,
                });
            }
        }
        Ok(())
    }

    /// Runs a chain change (`change`, given the version) if the version rule `next` lets it,
    /// checking the chunk's version and dirty flag in the same call.
    pub fn versioned(
        &self,
        chunk: &ChunkId,
        next: NextVersion,
        change: impl FnOnce(&ChunkStore, u64) -> StoreResult<()>,
    ) -> StoreResult<Versioned> {
        let local = self.meta(chunk)?.map_or(0, |m| m.version);
        let (prior, version) = match next {
            NextVersion::Head if self.is_dirty(chunk)? => return Ok(Versioned::Dirty),
            NextVersion::Head => (local, local + 1),
            NextVersion::Forwarded { prior, .. } if prior != local => return Ok(Versioned::OutOfSync { local }),
            NextVersion::Forwarded { prior, version } => (prior, version),
        };
        assert!(version > prior, "{chunk}: a change moves the chunk's version forward");
        change(self, version)?;
        Ok(Versioned::Written { prior, version })
    }

    /// Applies one write, crash-consistently: new metadata and checksums (with what
    /// recovery needs, see [`Unsynced`]) first, then the bytes; a synced write then makes the
    /// chunk's file durable.
    pub fn write(&self, chunk: ChunkId, op: WriteOp<'_>) -> StoreResult<()> {
        Self::check_write(&chunk, &op)?;
        let disk = self.disk(&chunk);
        let path = disk.chunk_path(&chunk);
        let old = disk.meta(&chunk)?;
        let old_length = old.as_ref().map_or(0, |m| m.length_bytes);
        let mut groups = BTreeMap::new();
        for extent in op.extents {
            let (first_block, end_block) = extent.blocks();
            Self::load_groups_into(disk, &chunk, first_block, end_block, &mut groups)?;
        }
        let file = match old {
            Some(_) => disk.open_chunk(&chunk, true),
            None => disk.create_chunk(&chunk),
        }
        .map_err(io_error("open chunk", &path))?;
        let end = op.extents.iter().map(Extent::end).max().expect("a write has a range");
        let length_bytes = old_length.max(end);
        let plans = op
            .extents
            .iter()
            .map(|extent| Self::plan_write(&chunk, &path, &file, extent, old_length, length_bytes, &groups))
            .collect::<StoreResult<Vec<_>>>()?;
        let direct_spans: Vec<_> = op
            .extents
            .iter()
            .zip(&plans)
            .map(|(extent, updates)| Self::direct_span(extent, updates))
            .collect();
        let direct = match direct_spans.iter().any(Option::is_some) {
            true => disk.open_chunk_direct(&chunk).map_err(io_error("open chunk", &path))?,
            false => None,
        };
        let unsynced = self.unsynced_for(disk, &chunk, &file, old_length, &groups, &plans)?;
        let keeps_durable_bytes = plans
            .iter()
            .flatten()
            .any(|u| u.keeps_bytes && unsynced.head.was_durable(u.block, BLOCK_SIZE_BYTES as u64));
        for update in plans.iter().flatten() {
            set_crc(&mut groups, update.block, Some(update.crc));
        }
        let batch = Self::intent_batch(disk, &chunk, &op, length_bytes, &groups, &unsynced);
        // Durable first where a crash could otherwise cost bytes this write does not touch,
        // or where the write must be durable anyway.
        let durability = if op.sync || keeps_durable_bytes {
            Durability::Synced
        } else {
            Durability::Buffered
        };
        disk.engine().write(batch, durability)?;
        for ((extent, updates), span) in op.extents.iter().zip(&plans).zip(&direct_spans) {
            let direct = direct.as_ref().filter(|_| span.is_some());
            if let Err(error) = Self::write_blocks(&file, direct, extent, updates) {
                return Err(Self::failed_write(disk, &chunk, &path, error));
            }
        }
        if op.sync {
            file.sync_data().map_err(io_error("sync chunk", &path))?;
            let mut batch = WriteBatch::new();
            disk.delete_unsynced(&mut batch, &chunk);
            disk.engine().write(batch, Durability::Buffered)?;
        }
        Ok(())
    }

    /// A write that failed part-way: the checksums are put back in line with what reached
    /// the file, and the error says whether the disk is full.
    fn failed_write(disk: &Disk, chunk: &ChunkId, path: &Path, error: io::Error) -> StoreError {
        let recovered = recovery::recover_chunk(disk, chunk);
        tracing::warn!(%chunk, ?recovered, "a write failed part-way; its chunk was verified again");
        if is_no_space(&error) {
            StoreError::NoSpace {
                chunk: *chunk,
                disk: disk.root().to_path_buf(),
            }
        } else {
            io_error("write chunk", path)(error)
        }
    }

    /// Bad input gets an error; a caller's broken promise (checked CRCs, sorted ranges that
    /// share no block) an assertion.
    fn check_write(chunk: &ChunkId, op: &WriteOp<'_>) -> StoreResult<()> {
        let bytes: usize = op.extents.iter().map(|e| e.data.len()).sum();
        let blocks: u64 = op.extents.iter().map(|e| e.blocks().1 - e.blocks().0).sum();
        let end = op.extents.iter().map(Extent::end).max().unwrap_or(0);
        if end > MAX_CHUNK_SIZE_BYTES || bytes > MAX_WRITE_BYTES || blocks > MAX_WRITE_BLOCKS as u64 {
            return Err(StoreError::Invalid {
                chunk: *chunk,
                message: format!(
                    "write of {bytes} bytes in {blocks} blocks ending at {end}: writes carry at most \
                     {MAX_WRITE_BYTES} bytes in {MAX_WRITE_BLOCKS} blocks and end by {MAX_CHUNK_SIZE_BYTES}"
                ),
            });
        }
        assert!(!op.extents.is_empty(), "{chunk}: a write without a range");
        for extent in op.extents {
            assert!(!extent.data.is_empty(), "{chunk}: an empty range");
            assert_eq!(
                extent.payload_crcs.len(),
                extent.data.len().div_ceil(BLOCK_SIZE_BYTES),
                "{chunk}: one payload checksum per 4 KiB piece"
            );
        }
        for pair in op.extents.windows(2) {
            assert!(
                pair[0].blocks().1 <= pair[1].blocks().0,
                "{chunk}: the ranges of a write are sorted and share no block"
            );
        }
        Ok(())
    }

    /// What a write records before its bytes reach the file: the new metadata and
    /// checksums, what recovery needs, and whether the chain downstream still owes it.
    fn intent_batch(
        disk: &Disk,
        chunk: &ChunkId,
        op: &WriteOp<'_>,
        length_bytes: u64,
        groups: &BTreeMap<u64, CrcGroup>,
        unsynced: &UnsyncedChange,
    ) -> WriteBatch {
        let meta = ChunkMeta {
            chain_id: op.chain_id,
            version: op.version,
            length_bytes,
        };
        let mut batch = WriteBatch::new();
        disk.put_meta(&mut batch, chunk, &meta);
        for (group, crcs) in groups {
            disk.put_crc_group(&mut batch, chunk, *group, crcs);
        }
        if unsynced.fresh {
            disk.put_unsynced_head(&mut batch, chunk, unsynced.head.durable_length_bytes);
        }
        for (block, versions) in &unsynced.blocks {
            disk.put_unsynced_block(&mut batch, chunk, *block, versions);
        }
        if op.dirty {
            batch.put(SPACE_DIRTY, chunk.key().to_vec(), op.chain_id.to_be_bytes().to_vec());
        } else {
            batch.delete(SPACE_DIRTY, chunk.key().to_vec());
        }
        batch
    }

    /// The blocks a write changes: new checksums, and for a block it covers only in part,
    /// the block's whole new content (verified old bytes around the written ones).
    fn plan_write(
        chunk: &ChunkId,
        path: &Path,
        file: &File,
        op: &Extent<'_>,
        old_length: u64,
        new_length: u64,
        groups: &BTreeMap<u64, CrcGroup>,
    ) -> StoreResult<Vec<BlockUpdate>> {
        let block = BLOCK_SIZE_BYTES as u64;
        let end = op.end();
        assert!(
            new_length >= old_length.max(end),
            "{chunk}: a write's length covers its ranges"
        );
        let (first_block, end_block) = op.blocks();
        let mut updates = Vec::with_capacity((end_block - first_block) as usize);
        for b in first_block..end_block {
            let block_start = b * block;
            let piece_start = op.offset.max(block_start);
            let piece_end = end.min(block_start + block);
            let piece = &op.data[(piece_start - op.offset) as usize..(piece_end - op.offset) as usize];
            if piece.len() == BLOCK_SIZE_BYTES {
                let aligned = (block_start - op.offset).is_multiple_of(block);
                let crc = if aligned {
                    op.payload_crcs[((block_start - op.offset) / block) as usize]
                } else {
                    crc(piece)
                };
                updates.push(BlockUpdate {
                    block: b,
                    crc,
                    merged: None,
                    keeps_bytes: false,
                });
                continue;
            }
            // A partial block: merge with what is there, after checking what is there. The
            // whole block is written, zeros included, so the file holds exactly what its
            // checksum covers (whatever a torn write once left past the old end).
            let mut merged = vec![0u8; BLOCK_SIZE_BYTES];
            let existing = old_length.saturating_sub(block_start).min(block) as usize;
            if existing > 0 {
                read_full_at(file, &mut merged[..existing], block_start).map_err(io_error("read chunk", path))?;
                Self::check_block(chunk, path, b, &merged[..existing], Self::stored_crc(groups, b))?;
            }
            let at = (piece_start - block_start) as usize;
            merged[at..at + piece.len()].copy_from_slice(piece);
            let crc = crc(&merged);
            merged.truncate((new_length - block_start).min(block) as usize);
            updates.push(BlockUpdate {
                block: b,
                crc,
                merged: Some(merged),
                keeps_bytes: existing > 0,
            });
        }
        assert_eq!(
            updates.len() as u64,
            end_block - first_block,
            "{chunk}: one update per block"
        );
        assert!(
            updates
                .iter()
                .skip(1)
                .take(updates.len().saturating_sub(2))
                .all(|u| u.merged.is_none()),
            "{chunk}: only the first and last blocks of a write can be partial"
        );
        Ok(updates)
    }

    /// The range of the chunk written straight from the payload (between merged partial
    /// blocks at either end), if any.
    fn payload_span(op: &Extent<'_>, updates: &[BlockUpdate]) -> Option<(u64, u64)> {
        let block = BLOCK_SIZE_BYTES as u64;
        let end = op.end();
        let (mut from, mut to) = (op.offset, end);
        let first = updates.first().expect("a write changes at least one block");
        if first.merged.is_some() {
            from = end.min((first.block + 1) * block);
        }
        let last = updates.last().expect("a write changes at least one block");
        if updates.len() > 1 && last.merged.is_some() {
            to = last.block * block;
        }
        (from < to).then_some((from, to))
    }

    /// The payload span, if it can go to the disk past the page cache: large (small random
    /// writes are cheaper through the cache, which the maintenance sync flushes later),
    /// and aligned in the file and in memory as O_DIRECT requires.
    fn direct_span(op: &Extent<'_>, updates: &[BlockUpdate]) -> Option<(u64, u64)> {
        let (from, to) = Self::payload_span(op, updates)?;
        let align = BLOCK_SIZE_BYTES as u64;
        let address = op.data.as_ptr() as u64 + (from - op.offset);
        let aligned = from.is_multiple_of(align) && to.is_multiple_of(align) && address.is_multiple_of(align);
        (aligned && to - from >= MIN_DIRECT_WRITE_BYTES).then_some((from, to))
    }

    /// Writes one range's planned blocks: merged partial blocks whole, the rest straight
    /// from the payload (through `direct`, given only where [`Self::direct_span`] allows).
    fn write_blocks(file: &File, direct: Option<&File>, op: &Extent<'_>, updates: &[BlockUpdate]) -> io::Result<()> {
        let block = BLOCK_SIZE_BYTES as u64;
        let first = updates.first().expect("a write changes at least one block");
        if let Some(merged) = &first.merged {
            file.write_all_at(merged, first.block * block)?;
        }
        let last = updates.last().expect("a write changes at least one block");
        if updates.len() > 1
            && let Some(merged) = &last.merged
        {
            file.write_all_at(merged, last.block * block)?;
        }
        if let Some((from, to)) = Self::payload_span(op, updates) {
            let bytes = &op.data[(from - op.offset) as usize..(to - op.offset) as usize];
            match direct {
                Some(direct) => direct.write_all_at(bytes, from)?,
                None => file.write_all_at(bytes, from)?,
            }
        }
        Ok(())
    }

    /// What the chunk's [`Unsynced`] record needs for `plans`. If a block would outgrow
    /// its bound, the chunk is made durable first and a fresh record started.
    fn unsynced_for(
        &self,
        disk: &Disk,
        chunk: &ChunkId,
        file: &File,
        old_length: u64,
        groups: &BTreeMap<u64, CrcGroup>,
        plans: &[Vec<BlockUpdate>],
    ) -> StoreResult<UnsyncedChange> {
        if let Some(change) = Self::note_changes(disk, chunk, old_length, groups, plans)? {
            return Ok(change);
        }
        Self::settle(disk, chunk, file)?;
        let change = Self::note_changes(disk, chunk, old_length, groups, plans)?;
        Ok(change.expect("one write always fits a fresh record"))
    }

    /// The record's head (started at `old_length` if the chunk has none) and the changed
    /// blocks' earlier checksums with their current one noted; None if one is full.
    fn note_changes(
        disk: &Disk,
        chunk: &ChunkId,
        old_length: u64,
        groups: &BTreeMap<u64, CrcGroup>,
        plans: &[Vec<BlockUpdate>],
    ) -> StoreResult<Option<UnsyncedChange>> {
        let (head, fresh) = match disk.unsynced_head(chunk)? {
            Some(head) => (head, false),
            None => (Unsynced::starting_at(old_length), true),
        };
        let mut blocks = Vec::new();
        for update in plans.iter().flatten() {
            if !head.was_durable(update.block, BLOCK_SIZE_BYTES as u64) {
                continue;
            }
            let mut versions = match fresh {
                true => Vec::new(),
                false => disk.unsynced_block(chunk, update.block)?,
            };
            match meta::note_earlier(&mut versions, Self::stored_crc(groups, update.block)) {
                Noted::Known => {}
                Noted::Added => blocks.push((update.block, versions)),
                Noted::Full => return Ok(None),
            }
        }
        Ok(Some(UnsyncedChange { head, fresh, blocks }))
    }

    /// Makes the bytes written to `chunk` durable and forgets its [`Unsynced`] record. No
    /// log sync is needed for that: the forgetting is durable no sooner than every batch
    /// before it in the log (the checksums of those bytes).
    fn settle(disk: &Disk, chunk: &ChunkId, file: &File) -> StoreResult<()> {
        let path = disk.chunk_path(chunk);
        file.sync_data().map_err(io_error("sync chunk", &path))?;
        let mut batch = WriteBatch::new();
        disk.delete_unsynced(&mut batch, chunk);
        disk.engine().write(batch, Durability::Buffered)?;
        Ok(())
    }

    /// Reads `length` bytes at `offset`, verifying every stored block it touches.
    pub fn read(&self, chunk: ChunkId, offset: u64, length: u64) -> StoreResult<ReadResult> {
        let disk = self.disk(&chunk);
        let zeros = |version, length_bytes| {
            let data = vec![0u8; length as usize];
            ReadResult {
                payload_crcs: payload_crcs(&data),
                data,
                version,
                length_bytes,
            }
        };
        let Some(meta) = disk.meta(&chunk)? else {
            return Ok(zeros(0, 0));
        };
        let valid_end = (offset + length).min(meta.length_bytes);
        if valid_end <= offset {
            return Ok(zeros(meta.version, meta.length_bytes));
        }
        let path = disk.chunk_path(&chunk);
        let block = BLOCK_SIZE_BYTES as u64;
        let (first_block, end_block) = block_span(offset, valid_end - offset);
        let span_start = first_block * block;
        let span_end = (end_block * block).min(meta.length_bytes);
        let mut span = vec![0u8; (span_end - span_start) as usize];
        let file = match disk.open_chunk(&chunk, false) {
            Ok(file) => file,
            // Removed since its metadata was read: a deleted file's chunks are dropped
            // without the chunk's lock, so a read racing the drop sees it missing, as it
            // would a moment later. A file missing under live metadata is still an error.
            Err(error) if error.kind() == io::ErrorKind::NotFound && disk.meta(&chunk)?.is_none() => {
                return Ok(zeros(0, 0));
            }
            Err(error) => return Err(io_error("open chunk", &path)(error)),
        };
        read_full_at(&file, &mut span, span_start).map_err(io_error("read chunk", &path))?;
        let groups = Self::load_groups(disk, &chunk, first_block, end_block)?;
        for b in first_block..end_block {
            let from = ((b * block) - span_start) as usize;
            let to = (from + BLOCK_SIZE_BYTES).min(span.len());
            match Self::stored_crc(&groups, b) {
                Some(stored) => Self::check_block(&chunk, &path, b, &span[from..to], Some(stored))?,
                // Never (completely) written: it reads as zeros, whatever the file holds.
                None => span[from..to].fill(0),
            }
        }
        // The span becomes the reply: no second buffer, and no copy at all when the
        // request is block-aligned (the common case: the kernel reads whole pages).
        let from = (offset - span_start) as usize;
        let count = (valid_end - offset) as usize;
        if from > 0 {
            span.drain(..from);
        }
        span.truncate(count);
        span.resize(length as usize, 0);
        let crcs = if from == 0 {
            Self::aligned_reply_crcs(&groups, first_block, end_block, &span)
        } else {
            payload_crcs(&span)
        };
        assert_eq!(
            crcs.len(),
            span.len().div_ceil(BLOCK_SIZE_BYTES),
            "{chunk}: one reply checksum per 4 KiB piece"
        );
        Ok(ReadResult {
            data: span,
            payload_crcs: crcs,
            version: meta.version,
            length_bytes: meta.length_bytes,
        })
    }

    /// The reply's piece checksums of a read that starts on a block: a whole piece is a
    /// verified block, zero-padded past the chunk's end as a block's checksum is, so its
    /// stored checksum is the piece's and the bytes need no second pass. Other pieces (a
    /// short last one, blocks never written) are computed.
    fn aligned_reply_crcs(groups: &BTreeMap<u64, CrcGroup>, first_block: u64, end_block: u64, data: &[u8]) -> Vec<u32> {
        data.chunks(BLOCK_SIZE_BYTES)
            .enumerate()
            .map(|(i, piece)| {
                let b = first_block + i as u64;
                match Self::stored_crc(groups, b) {
                    Some(stored) if piece.len() == BLOCK_SIZE_BYTES && b < end_block => stored,
                    _ => crc(piece),
                }
            })
            .collect()
    }

    /// Reads the whole chunk, checking every block (an error names the first damaged one).
    pub fn verify(&self, chunk: &ChunkId) -> StoreResult<()> {
        match self.meta(chunk)? {
            Some(meta) => self.read(*chunk, 0, meta.length_bytes).map(|_| ()),
            None => Ok(()),
        }
    }

    /// Shortens a chunk to `op.length_bytes` (a chunk that is already shorter keeps its
    /// bytes), durably: the new end, checksums and dirty mark are one synced batch (with an
    /// [`Unsynced`] record, so that recovery finishes a cut the file had not seen), then the
    /// file is cut and synced.
    pub fn truncate(&self, chunk: ChunkId, op: TruncateOp) -> StoreResult<()> {
        let disk = self.disk(&chunk);
        let path = disk.chunk_path(&chunk);
        let mut batch = WriteBatch::new();
        if op.dirty {
            batch.put(SPACE_DIRTY, chunk.key().to_vec(), op.chain_id.to_be_bytes().to_vec());
        }
        let Some(mut meta) = disk.meta(&chunk)? else {
            disk.engine().write(batch, Durability::Synced)?;
            return Ok(());
        };
        let mut cut = None;
        if op.length_bytes < meta.length_bytes {
            let file = disk.open_chunk(&chunk, true).map_err(io_error("open chunk", &path))?;
            if disk.unsynced_head(&chunk)?.is_some() {
                // Earlier unsynced versions of the tail block would not survive the cut as
                // checksums recovery could match: make them durable first.
                Self::settle(disk, &chunk, &file)?;
            }
            let groups = self.truncated_groups(disk, &chunk, &file, meta.length_bytes, op.length_bytes)?;
            for (group, crcs) in &groups {
                if crcs.is_empty() {
                    batch.delete(SPACE_CRCS, meta::crc_key(&chunk, *group));
                } else {
                    disk.put_crc_group(&mut batch, &chunk, *group, crcs);
                }
            }
            disk.put_unsynced_head(&mut batch, &chunk, meta.length_bytes);
            meta.length_bytes = op.length_bytes;
            cut = Some(file);
        }
        meta.chain_id = op.chain_id;
        meta.version = meta.version.max(op.version);
        disk.put_meta(&mut batch, &chunk, &meta);
        disk.engine().write(batch, Durability::Synced)?;
        if let Some(file) = cut {
            file.set_len(op.length_bytes)
                .map_err(io_error("truncate chunk", &path))?;
            Self::settle(disk, &chunk, &file)?;
        }
        Ok(())
    }

    /// The checksum groups of a chunk cut from `old_length` to `new_length`: blocks past the
    /// end cleared, a partial last block checksummed over what stays.
    fn truncated_groups(
        &self,
        disk: &Disk,
        chunk: &ChunkId,
        file: &File,
        old_length: u64,
        new_length: u64,
    ) -> StoreResult<BTreeMap<u64, CrcGroup>> {
        assert!(new_length < old_length, "{chunk}: a cut shortens");
        let path = disk.chunk_path(chunk);
        let block = BLOCK_SIZE_BYTES as u64;
        let keep_blocks = new_length.div_ceil(block);
        let old_blocks = old_length.div_ceil(block);
        let mut groups = Self::load_groups(disk, chunk, keep_blocks.saturating_sub(1), old_blocks)?;
        let partial = new_length % block;
        let mut new_tail_crc = None;
        if partial != 0 {
            let b = new_length / block;
            let existing = (old_length - b * block).min(block) as usize;
            let mut content = vec![0u8; existing];
            read_full_at(file, &mut content, b * block).map_err(io_error("read chunk", &path))?;
            Self::check_block(chunk, &path, b, &content, Self::stored_crc(&groups, b))?;
            if Self::stored_crc(&groups, b).is_some() {
                new_tail_crc = Some((b, block_crc(&content[..partial as usize])));
            }
        }
        for b in keep_blocks..old_blocks {
            set_crc(&mut groups, b, None);
        }
        if let Some((b, crc)) = new_tail_crc {
            set_crc(&mut groups, b, Some(crc));
        }
        Ok(groups)
    }

    /// Deletes a chunk: its metadata and checksums (durably), then its file. A crash in
    /// between leaves a file without metadata, which the next write to the chunk empties.
    /// `dirty_chain`: the removal is not yet acknowledged downstream in that chain; the
    /// dirty mark is written in the same batch.
    pub fn remove(&self, chunk: ChunkId, dirty_chain: Option<u64>) -> StoreResult<bool> {
        let disk = self.disk(&chunk);
        let meta = disk.meta(&chunk)?;
        let mut batch = WriteBatch::new();
        if let Some(meta) = &meta {
            disk.delete_chunk_records(&mut batch, &chunk, meta.chain_id);
        }
        if let Some(chain_id) = dirty_chain {
            batch.put(SPACE_DIRTY, chunk.key().to_vec(), chain_id.to_be_bytes().to_vec());
        }
        if batch.is_empty() {
            return Ok(false);
        }
        disk.engine().write(batch, Durability::Synced)?;
        if meta.is_none() {
            return Ok(false);
        }
        let path = disk.chunk_path(&chunk);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(io_error("remove chunk", &path)(error)),
        }
        Ok(true)
    }

    /// The chunk has been acknowledged by the whole chain.
    pub fn mark_clean(&self, chunk: ChunkId) -> StoreResult<()> {
        let mut batch = WriteBatch::new();
        batch.delete(SPACE_DIRTY, chunk.key().to_vec());
        self.disk(&chunk).engine().write(batch, Durability::Buffered)?;
        Ok(())
    }

    /// True if `chunk` was written here and not yet acknowledged downstream.
    pub fn is_dirty(&self, chunk: &ChunkId) -> StoreResult<bool> {
        Ok(self.disk(chunk).engine().get(SPACE_DIRTY, &chunk.key())?.is_some())
    }

    /// Makes earlier writes to `chunk` reach its file's disk, and forgets what recovery
    /// would have needed about them. The caller holds the chunk's lock (shared is enough), so
    /// no write slips in between, and calls [`ChunkStore::sync_wal`] before it reports the
    /// sync done (the checksums of those writes are in the write-ahead log).
    pub fn sync_chunk(&self, chunk: &ChunkId) -> StoreResult<()> {
        let disk = self.disk(chunk);
        let path = disk.chunk_path(chunk);
        match disk.open_chunk(chunk, false) {
            Ok(file) => file.sync_data().map_err(io_error("sync chunk", &path))?,
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(io_error("open chunk", &path)(error)),
        }
        if disk.unsynced_head(chunk)?.is_some() {
            // Durable no sooner than the batches before it in the log.
            let mut batch = WriteBatch::new();
            disk.delete_unsynced(&mut batch, chunk);
            disk.engine().write(batch, Durability::Buffered)?;
        }
        Ok(())
    }

    /// Makes every metadata change so far durable (one fsync of each disk's log).
    pub fn sync_wal(&self) -> StoreResult<()> {
        for disk in &self.disks {
            disk.engine().sync_wal()?;
        }
        Ok(())
    }

    /// Chunks changed since their files were last synced, at most `max` (a background
    /// task syncs them, so that few are left for recovery).
    pub fn unsynced_chunks(&self, max: usize) -> StoreResult<Vec<ChunkId>> {
        let mut all = Vec::new();
        for disk in &self.disks {
            all.extend(disk.unsynced_chunks(max.saturating_sub(all.len()))?);
        }
        Ok(all)
    }

    /// Starts receiving a whole copy of `chunk`.
    pub fn begin_copy(&self, chunk: ChunkId) -> StoreResult<IncomingCopy> {
        let disk = self.disk(&chunk);
        let path = disk.incoming_path(&chunk);
        let file = disk
            .create_incoming(&path)
            .map_err(io_error("create incoming chunk", &path))?;
        Ok(IncomingCopy {
            chunk,
            path,
            file,
            written_bytes: 0,
            crcs: BTreeMap::new(),
        })
    }

    /// Replaces the chunk with a received copy (see `Replace`). Returns whether it was
    /// applied.
    pub fn finish_copy(
        &self,
        mut copy: IncomingCopy,
        chain_id: u64,
        version: u64,
        length_bytes: u64,
        replace: Replace,
    ) -> StoreResult<bool> {
        let disk = self.disk(&copy.chunk);
        let chunk = copy.chunk;
        if copy.written_bytes != length_bytes {
            let _ = std::fs::remove_file(&copy.path);
            return Err(StoreError::Invalid {
                chunk,
                message: format!("copy carried {} of {length_bytes} bytes", copy.written_bytes),
            });
        }
        // A repair replaces a damaged chunk that is still here, and only with a copy at
        // least as new: a chunk removed or rewritten meanwhile stays as the chain left it.
        if replace == Replace::IfNotOlder && disk.meta(&chunk)?.is_none_or(|existing| existing.version > version) {
            let _ = std::fs::remove_file(&copy.path);
            return Ok(false);
        }
        copy.file
            .sync_all()
            .map_err(io_error("sync incoming chunk", &copy.path))?;
        // The new metadata and a note of the rename first: recovery finishes the rename if
        // the service stops before it.
        let mut batch = WriteBatch::new();
        let old_chain = disk.meta(&chunk)?.map_or(chain_id, |m| m.chain_id);
        disk.delete_chunk_records(&mut batch, &chunk, old_chain);
        let mut groups: BTreeMap<u64, CrcGroup> = BTreeMap::new();
        for (b, crc) in std::mem::take(&mut copy.crcs) {
            groups
                .entry(b / BLOCKS_PER_GROUP as u64)
                .or_default()
                .set((b % BLOCKS_PER_GROUP as u64) as usize, crc);
        }
        for (group, crcs) in &groups {
            disk.put_crc_group(&mut batch, &chunk, *group, crcs);
        }
        let meta = ChunkMeta {
            chain_id,
            version,
            length_bytes,
        };
        disk.put_meta(&mut batch, &chunk, &meta);
        disk.put_install(&mut batch, &chunk, &copy.path);
        disk.engine().write(batch, Durability::Synced)?;
        let target = disk.chunk_path(&chunk);
        disk.install(&copy.path, &target)
            .map_err(io_error("install chunk", &target))?;
        let mut batch = WriteBatch::new();
        disk.delete_install(&mut batch, &chunk);
        disk.engine().write(batch, Durability::Buffered)?;
        Ok(true)
    }

    /// Chunks of `chain_id` held here, in chunk order, after `after`.
    pub fn list_chain(&self, chain_id: u64, after: Option<ChunkId>, max: usize) -> StoreResult<Vec<(ChunkId, u64)>> {
        let max = max.clamp(1, MAX_LISTED_CHUNKS);
        let mut all = Vec::new();
        for disk in &self.disks {
            all.extend(disk.list_chain(chain_id, after, max)?);
        }
        all.sort();
        all.truncate(max);
        let mut listed = Vec::with_capacity(all.len());
        for chunk in all {
            if let Some(meta) = self.meta(&chunk)? {
                listed.push((chunk, meta.version));
            }
        }
        Ok(listed)
    }

    /// Chunks written here and not yet acknowledged by their chain's tail.
    pub fn list_dirty(&self, max: usize) -> StoreResult<Vec<(ChunkId, u64)>> {
        let mut dirty = Vec::new();
        for disk in &self.disks {
            disk.engine().scan(SPACE_DIRTY, &[], None, &mut |key, value| {
                if let (Some(chunk), Ok(chain)) = (ChunkId::from_key(key), <[u8; 8]>::try_from(value)) {
                    dirty.push((chunk, u64::from_be_bytes(chain)));
                }
                if dirty.len() >= max {
                    ScanControl::Stop
                } else {
                    ScanControl::Continue
                }
            })?;
        }
        Ok(dirty)
    }

    /// Removes every chunk whose key starts with `prefix` (a volume, or a file).
    fn drop_prefix(&self, prefix: &[u8]) -> StoreResult<u64> {
        let mut removed = 0;
        for disk in &self.disks {
            loop {
                let batch_of = disk.chunks_with_prefix(prefix, MAX_LISTED_CHUNKS)?;
                if batch_of.is_empty() {
                    break;
                }
                for chunk in batch_of {
                    if self.remove(chunk, None)? {
                        removed += 1;
                    }
                }
            }
        }
        Ok(removed)
    }

    pub fn drop_file(&self, volume_id: u64, ino: u64) -> StoreResult<u64> {
        let mut prefix = volume_id.to_be_bytes().to_vec();
        prefix.extend_from_slice(&ino.to_be_bytes());
        self.drop_prefix(&prefix)
    }

    pub fn drop_volume(&self, volume_id: u64) -> StoreResult<u64> {
        self.drop_prefix(&volume_id.to_be_bytes())
    }

    /// Distinct files (volume id, inode) with chunks here, in key order, after `after`.
    pub fn list_files(&self, after: Option<(u64, u64)>, max: usize) -> StoreResult<Vec<(u64, u64)>> {
        let max = max.clamp(1, MAX_LISTED_CHUNKS);
        let start = match after {
            Some((volume_id, ino)) => {
                let mut prefix = volume_id.to_be_bytes().to_vec();
                prefix.extend_from_slice(&ino.to_be_bytes());
                match shoal_engine::prefix_end(&prefix) {
                    Some(start) => start,
                    None => return Ok(Vec::new()),
                }
            }
            None => Vec::new(),
        };
        let mut files = std::collections::BTreeSet::new();
        for disk in &self.disks {
            let mut found = 0;
            let mut last = None;
            // Stops at `max` files per disk; a file's chunks are adjacent in key order.
            disk.engine().scan(SPACE_CHUNKS, &start, None, &mut |key, _| {
                if let Some(chunk) = ChunkId::from_key(key)
                    && last != Some((chunk.volume_id, chunk.ino))
                {
                    if found == max {
                        return ScanControl::Stop;
                    }
                    last = Some((chunk.volume_id, chunk.ino));
                    files.insert((chunk.volume_id, chunk.ino));
                    found += 1;
                }
                ScanControl::Continue
            })?;
        }
        Ok(files.into_iter().take(max).collect())
    }

    /// Number of chunks stored (bounded count).
    pub fn chunk_count(&self) -> StoreResult<u64> {
        let mut count = 0u64;
        for disk in &self.disks {
            disk.engine().scan(SPACE_CHUNKS, &[], None, &mut |_, _| {
                count += 1;
                if count >= 100_000_000 {
                    ScanControl::Stop
                } else {
                    ScanControl::Continue
                }
            })?;
        }
        Ok(count)
    }

    pub fn usage(&self) -> Vec<DiskUsage> {
        self.disks.iter().map(Disk::usage).collect()
    }
}

impl IncomingCopy {
    /// Appends the next piece of the copy (pieces arrive in order, from offset 0).
    pub fn append(&mut self, offset: u64, data: &[u8], payload_crcs: &[u32]) -> StoreResult<()> {
        if offset != self.written_bytes {
            return Err(StoreError::Invalid {
                chunk: self.chunk,
                message: format!("copy piece at {offset}, expected {}", self.written_bytes),
            });
        }
        if !offset.is_multiple_of(BLOCK_SIZE_BYTES as u64) {
            return Err(StoreError::Invalid {
                chunk: self.chunk,
                message: format!("copy piece at unaligned offset {offset}"),
            });
        }
        if offset + data.len() as u64 > MAX_CHUNK_SIZE_BYTES {
            return Err(StoreError::Invalid {
                chunk: self.chunk,
                message: "copy larger than the largest chunk".into(),
            });
        }
        let first_block = offset / BLOCK_SIZE_BYTES as u64;
        for (i, piece) in data.chunks(BLOCK_SIZE_BYTES).enumerate() {
            let crc = if piece.len() == BLOCK_SIZE_BYTES {
                payload_crcs[i]
            } else {
                block_crc(piece)
            };
            self.crcs.insert(first_block + i as u64, crc);
        }
        if let Err(error) = self.file.write_all(data) {
            if is_no_space(&error) {
                return Err(StoreError::NoSpace {
                    chunk: self.chunk,
                    disk: self.path.clone(),
                });
            }
            return Err(io_error("write incoming chunk", &self.path)(error));
        }
        self.written_bytes += data.len() as u64;
        Ok(())
    }
}

impl Drop for IncomingCopy {
    fn drop(&mut self) {
        // Installed copies were renamed away; anything left is an abandoned transfer.
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests;
