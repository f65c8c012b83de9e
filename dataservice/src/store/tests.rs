//! The store against a plain byte vector: random writes and truncations at any offset, then
//! every read must match; and damage on disk must be detected, never returned.

use proptest::prelude::*;

use super::*;

const CHUNK: ChunkId = ChunkId {
    volume_id: 1,
    ino: 7,
    index: 3,
};

fn write(store: &ChunkStore, offset: u64, data: &[u8], version: u64) {
    let crcs = payload_crcs(data);
    store
        .write(
            CHUNK,
            WriteOp {
                chain_id: 5,
                offset,
                data,
                payload_crcs: &crcs,
                version,
                dirty: false,
                sync: false,
            },
        )
        .unwrap();
}

#[derive(Clone, Debug)]
enum Op {
    Write { offset: u64, length: usize, seed: u8 },
    Truncate { length: u64 },
}

fn op() -> impl Strategy<Value = Op> {
    let span = 5 * BLOCK_SIZE_BYTES as u64 + 100;
    prop_oneof![
        4 => (0..span, 1usize..3 * BLOCK_SIZE_BYTES, any::<u8>()).prop_map(|(offset, length, seed)| Op::Write { offset, length, seed }),
        1 => (0..span).prop_map(|length| Op::Truncate { length }),
    ]
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
                    let data: Vec<u8> = (0..*length).map(|i| seed.wrapping_add(i as u8).wrapping_mul(31)).collect();
                    write(&store, *offset, &data, version);
                    let end = *offset as usize + length;
                    if model.len() < end {
                        model.resize(end, 0);
                    }
                    model[*offset as usize..end].copy_from_slice(&data);
                }
                Op::Truncate { length } => {
                    store.truncate(CHUNK, 5, *length, version, false).unwrap();
                    if (*length as usize) < model.len() {
                        model.truncate(*length as usize);
                    }
                }
            }
            let whole = store.read(CHUNK, 0, model.len() as u64 + 777).unwrap();
            prop_assert_eq!(whole.length_bytes, model.len() as u64);
            prop_assert_eq!(&whole.data[..model.len()], &model[..]);
            prop_assert!(whole.data[model.len()..].iter().all(|b| *b == 0), "bytes past the end read as zeros");
            let middle = store.read(CHUNK, 1000, 5000).unwrap();
            let expected: Vec<u8> = (1000..6000).map(|i| model.get(i).copied().unwrap_or(0)).collect();
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
            offset: 4096 + 3,
            data: b"x",
            payload_crcs: &crcs,
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
            offset: 0,
            data: &data,
            payload_crcs: &crcs,
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
