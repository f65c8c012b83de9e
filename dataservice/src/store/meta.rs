//! What the store keeps in its engine: per-chunk metadata and per-block checksums.
//!
//! Key spaces: `chunks` (chunk id → [`ChunkMeta`]), `crcs` (chunk id + group → [`CrcGroup`],
//! 256 blocks per group so a 4 KiB write rewrites 1 KiB of checksums, not a whole chunk's),
//! `by_chain` (chain id + chunk id → nothing: what a chain holds here), `dirty` (chunk id
//! → chain id: chunks written here but not yet acknowledged by the chain's tail),
//! `unsynced` (chunk id → [`Unsynced`]'s head: the chunk's durable length, for a chunk
//! changed since its file was last synced), `unsynced_blocks` (chunk id + block → that
//! block's earlier checksums since then: one small record per changed block, so a write
//! rewrites only the blocks it changes) and `installs` (chunk id → the name of a received copy being
//! renamed into place).

use serde::{Deserialize, Serialize};

pub const SPACE_CHUNKS: &str = "chunks";
pub const SPACE_CRCS: &str = "crcs";
pub const SPACE_BY_CHAIN: &str = "by_chain";
pub const SPACE_DIRTY: &str = "dirty";
pub const SPACE_UNSYNCED: &str = "unsynced";
pub const SPACE_UNSYNCED_BLOCKS: &str = "unsynced_blocks";
pub const SPACE_INSTALLS: &str = "installs";
pub const SPACES: &[&str] = &[
    SPACE_CHUNKS,
    SPACE_CRCS,
    SPACE_BY_CHAIN,
    SPACE_DIRTY,
    SPACE_UNSYNCED,
    SPACE_UNSYNCED_BLOCKS,
    SPACE_INSTALLS,
];

/// Most earlier checksums an [`Unsynced`] record keeps per block: a write that would go
/// past it syncs the chunk first. (The blocks of a record are bounded by the chunk's.)
pub const MAX_EARLIER_CRCS: usize = 8;

/// Blocks whose checksums share one engine record.
pub const BLOCKS_PER_GROUP: usize = 256;

const FORMAT_V1: u8 = 1;

/// A chunk: block `index` of file `ino` in volume `volume_id` (chunk_size bytes each).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId {
    pub volume_id: u64,
    pub ino: u64,
    pub index: u64,
}

impl ChunkId {
    pub const KEY_BYTES: usize = 24;

    /// Big-endian, so a file's chunks and a volume's files are contiguous key ranges.
    pub fn key(&self) -> [u8; Self::KEY_BYTES] {
        let mut key = [0u8; Self::KEY_BYTES];
        key[..8].copy_from_slice(&self.volume_id.to_be_bytes());
        key[8..16].copy_from_slice(&self.ino.to_be_bytes());
        key[16..].copy_from_slice(&self.index.to_be_bytes());
        key
    }

    pub fn from_key(key: &[u8]) -> Option<ChunkId> {
        if key.len() != Self::KEY_BYTES {
            return None;
        }
        let part = |range: std::ops::Range<usize>| u64::from_be_bytes(key[range].try_into().expect("8 bytes"));
        Some(ChunkId {
            volume_id: part(0..8),
            ino: part(8..16),
            index: part(16..24),
        })
    }
}

impl std::fmt::Display for ChunkId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "chunk {}/{}/{}", self.volume_id, self.ino, self.index)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkMeta {
    pub chain_id: u64,
    /// Assigned by the chain's head; grows with every write.
    pub version: u64,
    /// Bytes from the chunk's start to the end of its last write (or truncation).
    pub length_bytes: u64,
}

/// Checksums of up to 256 consecutive blocks; a block without a bit set was never written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrcGroup {
    pub present: [u64; 4],
    pub crcs: Vec<u32>,
}

impl Default for CrcGroup {
    fn default() -> Self {
        CrcGroup {
            present: [0; 4],
            crcs: vec![0; BLOCKS_PER_GROUP],
        }
    }
}

impl CrcGroup {
    pub fn get(&self, slot: usize) -> Option<u32> {
        (self.present[slot / 64] & (1 << (slot % 64)) != 0).then(|| self.crcs[slot])
    }

    pub fn set(&mut self, slot: usize, crc: u32) {
        self.present[slot / 64] |= 1 << (slot % 64);
        self.crcs[slot] = crc;
    }

    pub fn clear(&mut self, slot: usize) {
        self.present[slot / 64] &= !(1 << (slot % 64));
        self.crcs[slot] = 0;
    }

    pub fn is_empty(&self) -> bool {
        self.present.iter().all(|bits| *bits == 0)
    }
}

/// A chunk changed in place since its file was last synced (fdatasync), kept until it is.
/// Stored as a head (`durable_length_bytes`, in `unsynced`) and one record per block of
/// `earlier` (in `unsynced_blocks`); a head written before the split may carry `earlier`
/// itself, and is read the same way.
///
/// After a crash, each block changed since holds one of the versions written to it (a 4 KiB
/// block is one page: written whole or not at all), and its metadata may be of any later
/// batch; recovery tells the versions apart by checksum. This record says which versions
/// are acceptable beyond the current one.
///
/// Invariant: a write that changes a block holding durable bytes it does not overwrite (a
/// partial block before `durable_length_bytes`) makes this record durable before the bytes
/// reach the file, so the untouched bytes stay readable whatever the crash keeps.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unsynced {
    /// The chunk's length at its last durable point. A block wholly past it held nothing
    /// durable: if it matches no checksum, it reads as zeros.
    pub durable_length_bytes: u64,
    /// For blocks before `durable_length_bytes` changed since: the checksums they had since
    /// the durable point, oldest first, not counting the current one. `None`: the block was
    /// a hole (reads as zeros).
    pub earlier: std::collections::BTreeMap<u64, Vec<Option<u32>>>,
}

impl Unsynced {
    pub fn starting_at(durable_length_bytes: u64) -> Unsynced {
        Unsynced {
            durable_length_bytes,
            earlier: Default::default(),
        }
    }

    /// True if block `block` held durable bytes at the durable point.
    pub fn was_durable(&self, block: u64, block_bytes: u64) -> bool {
        block * block_bytes < self.durable_length_bytes
    }
}

/// Whether a block's earlier checksums took one more.
#[derive(Debug, PartialEq, Eq)]
pub enum Noted {
    /// `before` was already among them: nothing to store.
    Known,
    /// Added: the block's record must be stored.
    Added,
    /// They are at [`MAX_EARLIER_CRCS`]: the chunk must be synced first.
    Full,
}

/// Notes in a block's earlier checksums (see [`Unsynced::earlier`]) that the block, whose
/// checksum was `before`, is about to change.
pub fn note_earlier(versions: &mut Vec<Option<u32>>, before: Option<u32>) -> Noted {
    if versions.contains(&before) {
        return Noted::Known;
    }
    if versions.len() >= MAX_EARLIER_CRCS {
        return Noted::Full;
    }
    versions.push(before);
    Noted::Added
}

pub fn unsynced_block_key(chunk: &ChunkId, block: u64) -> Vec<u8> {
    let mut key = chunk.key().to_vec();
    key.extend_from_slice(&block.to_be_bytes());
    key
}

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_extend(value, vec![FORMAT_V1]).expect("store records always serialize")
}

pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, String> {
    match bytes.split_first() {
        Some((&FORMAT_V1, body)) => postcard::from_bytes(body).map_err(|e| format!("corrupt {what}: {e}")),
        Some((version, _)) => Err(format!("corrupt {what}: unknown format {version}")),
        None => Err(format!("corrupt {what}: empty")),
    }
}

pub fn crc_key(chunk: &ChunkId, group: u64) -> Vec<u8> {
    let mut key = chunk.key().to_vec();
    key.extend_from_slice(&group.to_be_bytes());
    key
}

pub fn by_chain_key(chain_id: u64, chunk: &ChunkId) -> Vec<u8> {
    let mut key = chain_id.to_be_bytes().to_vec();
    key.extend_from_slice(&chunk.key());
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_keys_round_trip_and_sort_by_file() {
        let a = ChunkId {
            volume_id: 1,
            ino: 2,
            index: 300,
        };
        let b = ChunkId {
            volume_id: 1,
            ino: 3,
            index: 0,
        };
        assert_eq!(ChunkId::from_key(&a.key()), Some(a));
        assert!(a.key() < b.key());
        assert_eq!(ChunkId::from_key(b"short"), None);
    }

    #[test]
    fn crc_group_tracks_presence() {
        let mut group = CrcGroup::default();
        assert_eq!(group.get(70), None);
        group.set(70, 9);
        assert_eq!(group.get(70), Some(9));
        let group: CrcGroup = decode(&encode(&group), "group").unwrap();
        assert_eq!(group.get(70), Some(9));
        let mut group = group;
        group.clear(70);
        assert!(group.is_empty());
    }
}
