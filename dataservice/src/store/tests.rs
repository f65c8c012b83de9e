//! The store against a plain byte vector: random writes (of one range or several, as a head
//! merges them) and truncations at any offset, then every read must match; and damage on disk must be detected, never returned.

use proptest::prelude::*;

use super::*;

const CHUNK: ChunkId = ChunkId {
    volume_id: 1,
    ino: 7,
    index: 3,
};

fn write(store: &ChunkStore, offset: u64, data: &[u8], version: u64) {
    write_synced(store, offset, data, version, false);
}

#[derive(Clone, Debug)]
enum Op {
    Write {
        offset: u64,
        length: usize,
        seed: u8,
    },
    /// Several ranges in one write; those that would share a block with an earlier one are
    /// dropped, as a merging head leaves them for its next round.
    Merged {
        parts: Vec<(u64, usize, u8)>,
    },
    Truncate {
        length: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let span = 5 * BLOCK_SIZE_BYTES as u64 + 100;
    let part = (0..span, 1usize..BLOCK_SIZE_BYTES + 10, any::<u8>());
    prop_oneof![
        4 => (0..span, 1usize..3 * BLOCK_SIZE_BYTES, any::<u8>()).prop_map(|(offset, length, seed)| Op::Write { offset, length, seed }),
        2 => proptest::collection::vec(part, 2..5).prop_map(|parts| Op::Merged { parts }),
        1 => (0..span).prop_map(|length| Op::Truncate { length }),
    ]
}

fn pattern(length: usize, seed: u8) -> Vec<u8> {
    (0..length)
        .map(|i| seed.wrapping_add(i as u8).wrapping_mul(31))
        .collect()
}

fn put(model: &mut Vec<u8>, offset: u64, data: &[u8]) {
    let end = offset as usize + data.len();
    if model.len() < end {
        model.resize(end, 0);
    }
    model[offset as usize..end].copy_from_slice(data);
}

/// `parts` sorted, without those sharing a block with an earlier one, with their bytes.
fn disjoint_parts(parts: &[(u64, usize, u8)]) -> Vec<(u64, Vec<u8>)> {
    let mut parts = parts.to_vec();
    parts.sort();
    let mut kept: Vec<(u64, Vec<u8>)> = Vec::new();
    let block = BLOCK_SIZE_BYTES as u64;
    for (offset, length, seed) in parts {
        let apart = kept
            .last()
            .is_none_or(|(o, d)| (o + d.len() as u64).div_ceil(block) <= offset / block);
        if apart {
            kept.push((offset, pattern(length, seed)));
        }
    }
    kept
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

    #[test]
    fn store_matches_a_byte_vector(ops in proptest::collection::vec(op(), 1..30)) {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(&[dir.path().to_path_buf()]).unwrap();
        let mut model: Vec<u8> = Vec::new();
        for (version, op) in ops.iter().enumerate() {
            let version = version as u64 + 1;
            match op {
                Op::Write { offset, length, seed } => {
                    let data = pattern(*length, *seed);
                    write(&store, *offset, &data, version);
                    put(&mut model, *offset, &data);
                }
                Op::Merged { parts } => {
                    let parts = disjoint_parts(parts);
                    let crcs: Vec<Vec<u32>> = parts.iter().map(|(_, data)| payload_crcs(data)).collect();
                    let extents: Vec<Extent> = parts
                        .iter()
                        .zip(&crcs)
                        .map(|((offset, data), crcs)| Extent { offset: *offset, data, payload_crcs: crcs })
                        .collect();
                    let op = WriteOp { chain_id: 5, extents: &extents, version, dirty: false, sync: false };
                    store.write(CHUNK, op).unwrap();
                    for (offset, data) in &parts {
                        put(&mut model, *offset, data);
                    }
                }
                Op::Truncate { length } => {
                    store
                        .truncate(CHUNK, TruncateOp { chain_id: 5, length_bytes: *length, version, dirty: false })
                        .unwrap();
                    if (*length as usize) < model.len() {
                        model.truncate(*length as usize);
                    }
                }
            }
            let whole = store.read(CHUNK, 0, model.len() as u64 + 777).unwrap();
            prop_assert_eq!(whole.length_bytes, model.len() as u64);
            prop_assert_eq!(&whole.data[..model.len()], &model[..]);
            prop_assert!(whole.data[model.len()..].iter().all(|b| *b == 0), "bytes past the end read as zeros");
            prop_assert_eq!(&whole.payload_crcs, &payload_crcs(&whole.data), "reply checksums from stored ones");
            let aligned = store.read(CHUNK, 4096, 3 * 4096).unwrap();
            prop_assert_eq!(&aligned.payload_crcs, &payload_crcs(&aligned.data));
            let middle = store.read(CHUNK, 1000, 5000).unwrap();
            let expected: Vec<u8> = (1000..6000).map(|i| model.get(i).copied().unwrap_or(0)).collect();
            prop_assert_eq!(&middle.payload_crcs, &payload_crcs(&middle.data));
            prop_assert_eq!(middle.data, expected);
        }
    }
}

#[test]
fn holes_read_as_zeros_and_missing_chunks_are_empty() {
    let dir = tempfile::tempdir().unwrap();
    let store = ChunkStore::open(&[dir.path().to_path_buf()]).unwrap();
    let missing = store.read(CHUNK, 0, 10).unwrap();
    assert_eq!((missing.data, missing.version), (vec![0; 10], 0));
    write(&store, 1 << 20, b"far away", 1);
    let read = store.read(CHUNK, 0, 4096).unwrap();
    assert!(read.data.iter().all(|b| *b == 0));
    assert_eq!(store.read(CHUNK, 1 << 20, 8).unwrap().data, b"far away");
}

#[test]
fn a_flipped_byte_is_detected_not_returned() {
    let dir = tempfile::tempdir().unwrap();
    let store = ChunkStore::open(&[dir.path().to_path_buf()]).unwrap();
    let data = vec![0xabu8; 3 * BLOCK_SIZE_BYTES];
    write(&store, 0, &data, 1);
    let path = store.chunk_path(&CHUNK);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[BLOCK_SIZE_BYTES + 17] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();
    // The damaged block is refused; the blocks around it still read.
    assert!(matches!(
        store.read(CHUNK, 0, 3 * 4096),
        Err(StoreError::Corrupt { block: 1, .. })
    ));
    assert_eq!(store.read(CHUNK, 0, 4096).unwrap().data, vec![0xab; 4096]);
    assert_eq!(store.read(CHUNK, 8192, 4096).unwrap().data, vec![0xab; 4096]);
    // A partial write onto the damaged block is refused too: it would bless the damage.
    let crcs = payload_crcs(b"x");
    let refused = store.write(
        CHUNK,
        WriteOp {
            chain_id: 5,
            extents: &[Extent {
                offset: 4096 + 3,
                data: b"x",
                payload_crcs: &crcs,
            }],
            version: 2,
            dirty: false,
            sync: false,
        },
    );
    assert!(matches!(refused, Err(StoreError::Corrupt { .. })));
    // A full overwrite of the block replaces it.
    write(&store, 4096, &[1u8; 4096], 3);
    assert_eq!(store.read(CHUNK, 4096, 4096).unwrap().data, vec![1; 4096]);
}

#[test]
fn copies_from_upstream_always_replace_repairs_only_older_and_removal_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let store = ChunkStore::open(&[dir.path().to_path_buf(), dir.path().join("second")]).unwrap();
    write(&store, 0, b"local", 5);
    let content = vec![9u8; 10_000];
    let mut copy = store.begin_copy(CHUNK).unwrap();
    copy.append(0, &content, &payload_crcs(&content)).unwrap();
    assert!(
        !store.finish_copy(copy, 5, 4, 10_000, Replace::IfNotOlder).unwrap(),
        "an older repair copy must not replace newer data"
    );
    assert_eq!(store.read(CHUNK, 0, 5).unwrap().data, b"local");
    // A copy from upstream is the chain's state, even with a lower version (another history).
    let mut copy = store.begin_copy(CHUNK).unwrap();
    copy.append(0, &content, &payload_crcs(&content)).unwrap();
    assert!(store.finish_copy(copy, 5, 2, 10_000, Replace::Always).unwrap());
    let read = store.read(CHUNK, 0, 10_000).unwrap();
    assert_eq!((read.data, read.version), (content.clone(), 2));
    let mut copy = store.begin_copy(CHUNK).unwrap();
    copy.append(0, &content, &payload_crcs(&content)).unwrap();
    assert!(store.finish_copy(copy, 5, 6, 10_000, Replace::IfNotOlder).unwrap());
    let read = store.read(CHUNK, 0, 10_000).unwrap();
    assert_eq!((read.data, read.version), (content.clone(), 6));
    assert_eq!(store.list_chain(5, None, 10).unwrap(), vec![(CHUNK, 6)]);
    assert_eq!(store.drop_file(1, 7).unwrap(), 1);
    assert!(!store.chunk_path(&CHUNK).exists());
    assert_eq!(store.list_chain(5, None, 10).unwrap(), vec![]);
    assert_eq!(store.chunk_count().unwrap(), 0);
    // A repair copy never brings back a chunk removed meanwhile.
    let mut copy = store.begin_copy(CHUNK).unwrap();
    copy.append(0, &content, &payload_crcs(&content)).unwrap();
    assert!(!store.finish_copy(copy, 5, 9, 10_000, Replace::IfNotOlder).unwrap());
    assert_eq!(store.chunk_count().unwrap(), 0);
}

#[test]
fn files_are_listed_once_each_in_key_order_across_disks() {
    let dir = tempfile::tempdir().unwrap();
    let store = ChunkStore::open(&[dir.path().join("one"), dir.path().join("two")]).unwrap();
    let data = [7u8; 100];
    let crcs = payload_crcs(&data);
    for (volume_id, ino, index) in [(1, 7, 0), (1, 7, 1), (1, 7, 2), (1, 8, 0), (2, 1, 0), (2, 1, 5)] {
        let op = WriteOp {
            chain_id: 5,
            extents: &[Extent {
                offset: 0,
                data: &data,
                payload_crcs: &crcs,
            }],
            version: 1,
            dirty: false,
            sync: false,
        };
        store.write(ChunkId { volume_id, ino, index }, op).unwrap();
    }
    assert_eq!(store.list_files(None, 2).unwrap(), vec![(1, 7), (1, 8)]);
    assert_eq!(store.list_files(Some((1, 8)), 10).unwrap(), vec![(2, 1)]);
    assert_eq!(store.list_files(Some((2, 1)), 10).unwrap(), vec![]);
    assert_eq!(store.list_files(None, 10).unwrap(), vec![(1, 7), (1, 8), (2, 1)]);
}

fn write_synced(store: &ChunkStore, offset: u64, data: &[u8], version: u64, sync: bool) {
    let crcs = payload_crcs(data);
    let op = WriteOp {
        chain_id: 5,
        extents: &[Extent {
            offset,
            data,
            payload_crcs: &crcs,
        }],
        version,
        dirty: false,
        sync,
    };
    store.write(CHUNK, op).unwrap();
}

/// Copies every file under `from` to `to` (a disk's state at one moment, as a power loss
/// would leave it for the part copied).
fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Two whole-chunk copies of one chunk received at once (a repair and a heal) each install
/// their own bytes: they never share a temporary file.
#[test]
fn two_copies_of_one_chunk_never_share_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = ChunkStore::open(&[dir.path().to_path_buf()]).unwrap();
    let first = vec![b'a'; 8192];
    let second = vec![b'b'; 4096];
    let mut one = store.begin_copy(CHUNK).unwrap();
    one.append(0, &first[..4096], &payload_crcs(&first[..4096])).unwrap();
    let mut two = store.begin_copy(CHUNK).unwrap();
    two.append(0, &second, &payload_crcs(&second)).unwrap();
    one.append(4096, &first[4096..], &payload_crcs(&first[4096..])).unwrap();
    assert!(store.finish_copy(one, 5, 3, 8192, Replace::Always).unwrap());
    assert_eq!(
        store.read(CHUNK, 0, 8192).unwrap().data,
        first,
        "the first copy's own bytes"
    );
    assert!(store.finish_copy(two, 5, 4, 4096, Replace::Always).unwrap());
    let read = store.read(CHUNK, 0, 4096).unwrap();
    assert_eq!((read.data, read.version, read.length_bytes), (second, 4, 4096));
}

/// A power loss after an unsynced overwrite, where the chunk's new checksums reached the
/// disk but its bytes did not (the file as it was before): every block reads back, the
/// untouched bytes as they were, the overwritten ones as before the write.
#[test]
fn bytes_lost_before_their_checksums_read_back_as_before() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk");
    let old: Vec<u8> = (0..3 * BLOCK_SIZE_BYTES).map(|i| (i % 251) as u8).collect();
    {
        let store = ChunkStore::open(std::slice::from_ref(&disk)).unwrap();
        write_synced(&store, 0, &old, 1, true);
        let before = std::fs::read(store.chunk_path(&CHUNK)).unwrap();
        // Partial blocks at both ends, whole blocks between; and an append past the end.
        write_synced(&store, 1000, &vec![7u8; 2 * BLOCK_SIZE_BYTES], 2, false);
        write_synced(&store, old.len() as u64 + 10, &[9u8; 5000], 3, false);
        std::fs::write(store.chunk_path(&CHUNK), before).unwrap();
    }
    let store = ChunkStore::open(&[disk]).unwrap();
    let recovered = store.recovered().clone();
    assert_eq!(recovered.chunks_checked, 1, "{recovered:?}");
    assert_eq!(recovered.blocks_damaged, 0, "{recovered:?}");
    assert!(recovered.blocks_rolled_back >= 3, "{recovered:?}");
    let read = store.read(CHUNK, 0, old.len() as u64 + 6000).unwrap();
    assert_eq!(
        &read.data[..old.len()],
        &old[..],
        "every byte as it was before the lost writes"
    );
    assert!(
        read.data[old.len()..].iter().all(|b| *b == 0),
        "the lost append reads as zeros"
    );
}

/// A power loss after an unsynced whole-block overwrite whose bytes reached the disk but
/// whose checksums did not (the engine as it was before): the block is detected as damaged,
/// never returned, and no block the write did not touch is affected. (A write that keeps
/// durable bytes of a block it covers in part syncs its checksums before its bytes, so the
/// engine can never be older than its bytes: see the process tests.)
#[test]
fn checksums_lost_before_their_bytes_leave_untouched_bytes_readable() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk");
    let saved = dir.path().join("saved-meta");
    let old = vec![1u8; 4 * BLOCK_SIZE_BYTES];
    {
        let store = ChunkStore::open(std::slice::from_ref(&disk)).unwrap();
        write_synced(&store, 0, &old, 1, true);
    }
    copy_tree(&disk.join("meta"), &saved);
    {
        let store = ChunkStore::open(std::slice::from_ref(&disk)).unwrap();
        write_synced(&store, BLOCK_SIZE_BYTES as u64, &vec![2u8; BLOCK_SIZE_BYTES], 2, false);
    }
    std::fs::remove_dir_all(disk.join("meta")).unwrap();
    copy_tree(&saved, &disk.join("meta"));
    let store = ChunkStore::open(&[disk]).unwrap();
    for untouched in [0, 2, 3] {
        let read = store.read(CHUNK, untouched * BLOCK_SIZE_BYTES as u64, BLOCK_SIZE_BYTES as u64);
        assert_eq!(
            read.unwrap().data,
            vec![1u8; BLOCK_SIZE_BYTES],
            "block {untouched} was never touched"
        );
    }
    assert!(
        matches!(
            store.read(CHUNK, BLOCK_SIZE_BYTES as u64, 10),
            Err(StoreError::Corrupt { .. })
        ),
        "a block whose unsynced bytes outlived their checksum is detected, never returned"
    );
}

/// A torn extending write leaves bytes past the recorded end; a later write into the same
/// block, acknowledged, must read back (the gap as zeros), not fail its checksum.
#[test]
fn bytes_a_torn_write_left_past_the_end_never_spoil_a_later_write() {
    let dir = tempfile::tempdir().unwrap();
    let store = ChunkStore::open(&[dir.path().to_path_buf()]).unwrap();
    write_synced(&store, 0, &[5u8; 100], 1, true);
    // What a torn extending write leaves: bytes in the file past the chunk's length.
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(store.chunk_path(&CHUNK))
        .unwrap();
    file.write_all_at(&[0xEEu8; 200], 100).unwrap();
    drop(file);
    write_synced(&store, 1000, &[6u8; 50], 2, true);
    let read = store.read(CHUNK, 0, 1050).unwrap();
    assert_eq!(&read.data[..100], &[5u8; 100]);
    assert!(read.data[100..1000].iter().all(|b| *b == 0), "the gap reads as zeros");
    assert_eq!(&read.data[1000..], &[6u8; 50]);
}

/// Unsynced records stay bounded: a block rewritten over and over without a sync makes
/// the store sync the chunk rather than keep every version.
#[test]
fn rewriting_one_block_without_syncing_keeps_the_record_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let store = ChunkStore::open(&[dir.path().to_path_buf()]).unwrap();
    write_synced(&store, 0, &vec![0u8; BLOCK_SIZE_BYTES], 1, true);
    for version in 2..(2 + 4 * meta::MAX_EARLIER_CRCS as u64) {
        write_synced(&store, 10, &[version as u8; 10], version, false);
        let record = store.disk(&CHUNK).unsynced(&CHUNK).unwrap().unwrap();
        assert!(record.earlier.values().all(|v| v.len() <= meta::MAX_EARLIER_CRCS));
    }
    assert_eq!(store.unsynced_chunks(10).unwrap(), vec![CHUNK]);
    store.sync_chunk(&CHUNK).unwrap();
    store.sync_wal().unwrap();
    assert!(
        store.unsynced_chunks(10).unwrap().is_empty(),
        "a sync forgets the record"
    );
}
