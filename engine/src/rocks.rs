//! The RocksDB implementation of [`KvEngine`]. The only module in Shoal that names RocksDB.

use std::path::{Path, PathBuf};

use rocksdb::{
    ColumnFamily, ColumnFamilyDescriptor, DB, Direction, IteratorMode, Options, ReadOptions, SnapshotWithThreadMode,
    WriteOptions,
};

use crate::{BatchOp, Durability, EngineError, KeyValue, KvEngine, KvRead, ScanControl, WriteBatch};

/// Tuning for one RocksDB instance.
#[derive(Clone, Debug)]
pub struct RocksOptions {
    /// Shared block cache, in bytes. Bounds the engine's read-cache memory.
    pub block_cache_size_bytes: usize,
    /// Memtable size per key space before it is flushed to a file.
    pub write_buffer_size_bytes: usize,
    /// Bounds open file descriptors held by the engine.
    pub max_open_files: i32,
}

impl Default for RocksOptions {
    fn default() -> Self {
        RocksOptions {
            block_cache_size_bytes: 64 << 20,
            write_buffer_size_bytes: 32 << 20,
            max_open_files: 512,
        }
    }
}

/// A RocksDB database whose column families are Shoal's key spaces.
pub struct RocksEngine {
    db: DB,
    path: PathBuf,
    spaces: Vec<&'static str>,
}

impl RocksEngine {
    /// Opens (creating if missing) the database at `path` with exactly the key spaces `spaces`.
    pub fn open(path: &Path, spaces: &[&'static str], tuning: &RocksOptions) -> Result<Self, EngineError> {
        assert!(!spaces.is_empty(), "an engine needs at least one key space");
        let mut options = Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        options.set_max_open_files(tuning.max_open_files);
        options.set_compression_type(rocksdb::DBCompressionType::Lz4);
        options.set_write_buffer_size(tuning.write_buffer_size_bytes);
        options.set_keep_log_file_num(4);
        let cache = rocksdb::Cache::new_lru_cache(tuning.block_cache_size_bytes);
        let mut table = rocksdb::BlockBasedOptions::default();
        table.set_block_cache(&cache);
        table.set_bloom_filter(10.0, false);
        options.set_block_based_table_factory(&table);

        let descriptors = spaces
            .iter()
            .map(|name| ColumnFamilyDescriptor::new(*name, options.clone()));
        let db = DB::open_cf_descriptors(&options, path, descriptors).map_err(|error| EngineError::Engine {
            path: path.to_path_buf(),
            operation: "open",
            message: error.into_string(),
        })?;
        Ok(RocksEngine {
            db,
            path: path.to_path_buf(),
            spaces: spaces.to_vec(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn space(&self, space: &str) -> Result<&ColumnFamily, EngineError> {
        self.db.cf_handle(space).ok_or_else(|| EngineError::UnknownSpace {
            path: self.path.clone(),
            space: space.to_string(),
            known: self.spaces.join(", "),
        })
    }

    fn failed(&self, operation: &'static str, error: rocksdb::Error) -> EngineError {
        EngineError::Engine {
            path: self.path.clone(),
            operation,
            message: error.into_string(),
        }
    }
}

fn scan_with(
    engine: &RocksEngine,
    snapshot: Option<&SnapshotWithThreadMode<'_, DB>>,
    space: &str,
    start: &[u8],
    end: Option<&[u8]>,
    visitor: &mut dyn FnMut(&[u8], &[u8]) -> ScanControl,
) -> Result<(), EngineError> {
    let handle = engine.space(space)?;
    let mut read_options = ReadOptions::default();
    if let Some(end) = end {
        read_options.set_iterate_upper_bound(end.to_vec());
    }
    if let Some(snapshot) = snapshot {
        read_options.set_snapshot(snapshot);
    }
    let mut iterator = engine.db.raw_iterator_cf_opt(handle, read_options);
    iterator.seek(start);
    while let Some((key, value)) = iterator.item() {
        if visitor(key, value) == ScanControl::Stop {
            return Ok(());
        }
        iterator.next();
    }
    iterator.status().map_err(|error| engine.failed("scan", error))
}

fn last_with(
    engine: &RocksEngine,
    snapshot: Option<&SnapshotWithThreadMode<'_, DB>>,
    space: &str,
    start: &[u8],
    end: &[u8],
) -> Result<Option<KeyValue>, EngineError> {
    let handle = engine.space(space)?;
    let mut read_options = ReadOptions::default();
    read_options.set_iterate_lower_bound(start.to_vec());
    read_options.set_iterate_upper_bound(end.to_vec());
    if let Some(snapshot) = snapshot {
        read_options.set_snapshot(snapshot);
    }
    let mut iterator = engine
        .db
        .iterator_cf_opt(handle, read_options, IteratorMode::From(end, Direction::Reverse));
    match iterator.next() {
        None => Ok(None),
        Some(Ok((key, value))) => Ok(Some((key.to_vec(), value.to_vec()))),
        Some(Err(error)) => Err(engine.failed("reverse scan", error)),
    }
}

impl KvRead for RocksEngine {
    fn get(&self, space: &str, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError> {
        let handle = self.space(space)?;
        self.db.get_cf(handle, key).map_err(|error| self.failed("get", error))
    }

    fn scan(
        &self,
        space: &str,
        start: &[u8],
        end: Option<&[u8]>,
        visitor: &mut dyn FnMut(&[u8], &[u8]) -> ScanControl,
    ) -> Result<(), EngineError> {
        scan_with(self, None, space, start, end, visitor)
    }

    fn last_in_range(&self, space: &str, start: &[u8], end: &[u8]) -> Result<Option<KeyValue>, EngineError> {
        last_with(self, None, space, start, end)
    }
}

impl KvEngine for RocksEngine {
    fn write(&self, batch: WriteBatch, durability: Durability) -> Result<(), EngineError> {
        let mut rocks_batch = rocksdb::WriteBatch::default();
        for op in batch.into_ops() {
            match op {
                BatchOp::Put { space, key, value } => rocks_batch.put_cf(self.space(space)?, key, value),
                BatchOp::Delete { space, key } => rocks_batch.delete_cf(self.space(space)?, key),
                BatchOp::DeleteRange { space, start, end } => {
                    rocks_batch.delete_range_cf(self.space(space)?, start, end)
                }
            }
        }
        let mut write_options = WriteOptions::default();
        write_options.set_sync(durability == Durability::Synced);
        self.db
            .write_opt(rocks_batch, &write_options)
            .map_err(|error| self.failed("write", error))
    }

    fn sync_wal(&self) -> Result<(), EngineError> {
        self.db
            .flush_wal(true)
            .map_err(|error| self.failed("sync write-ahead log", error))
    }

    fn flush(&self) -> Result<(), EngineError> {
        for space in &self.spaces {
            let handle = self.space(space)?;
            self.db.flush_cf(handle).map_err(|error| self.failed("flush", error))?;
        }
        self.sync_wal()
    }

    fn view(&self) -> Box<dyn KvRead + '_> {
        Box::new(RocksView {
            engine: self,
            snapshot: self.db.snapshot(),
        })
    }
}

/// A RocksDB snapshot: a consistent view that later writes do not change.
struct RocksView<'a> {
    engine: &'a RocksEngine,
    snapshot: SnapshotWithThreadMode<'a, DB>,
}

impl KvRead for RocksView<'_> {
    fn get(&self, space: &str, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError> {
        let handle = self.engine.space(space)?;
        self.snapshot
            .get_cf(handle, key)
            .map_err(|error| self.engine.failed("get from view", error))
    }

    fn scan(
        &self,
        space: &str,
        start: &[u8],
        end: Option<&[u8]>,
        visitor: &mut dyn FnMut(&[u8], &[u8]) -> ScanControl,
    ) -> Result<(), EngineError> {
        scan_with(self.engine, Some(&self.snapshot), space, start, end, visitor)
    }

    fn last_in_range(&self, space: &str, start: &[u8], end: &[u8]) -> Result<Option<KeyValue>, EngineError> {
        last_with(self.engine, Some(&self.snapshot), space, start, end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPACES: &[&str] = &["a", "b"];

    fn open(dir: &Path) -> RocksEngine {
        RocksEngine::open(dir, SPACES, &RocksOptions::default()).unwrap()
    }

    fn collect(read: &dyn KvRead, space: &str, start: &[u8], end: Option<&[u8]>) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut out = Vec::new();
        read.scan(space, start, end, &mut |k, v| {
            out.push((k.to_vec(), v.to_vec()));
            ScanControl::Continue
        })
        .unwrap();
        out
    }

    #[test]
    fn batch_is_atomic_and_spaces_are_separate() {
        let dir = tempfile::tempdir().unwrap();
        let engine = open(dir.path());
        let mut batch = WriteBatch::new();
        batch.put("a", b"k1".to_vec(), b"v1".to_vec());
        batch.put("b", b"k1".to_vec(), b"other".to_vec());
        batch.put("a", b"k2".to_vec(), b"v2".to_vec());
        engine.write(batch, Durability::Synced).unwrap();
        assert_eq!(engine.get("a", b"k1").unwrap(), Some(b"v1".to_vec()));
        assert_eq!(engine.get("b", b"k1").unwrap(), Some(b"other".to_vec()));
        assert_eq!(engine.get("b", b"k2").unwrap(), None);
    }

    #[test]
    fn scan_respects_bounds_and_stop() {
        let dir = tempfile::tempdir().unwrap();
        let engine = open(dir.path());
        let mut batch = WriteBatch::new();
        for i in 0u8..10 {
            batch.put("a", vec![i], vec![i * 2]);
        }
        engine.write(batch, Durability::Buffered).unwrap();
        let got = collect(&engine, "a", &[3], Some(&[6]));
        assert_eq!(got.iter().map(|(k, _)| k[0]).collect::<Vec<_>>(), vec![3, 4, 5]);
        let mut seen = 0;
        engine
            .scan("a", &[0], None, &mut |_, _| {
                seen += 1;
                if seen == 2 {
                    ScanControl::Stop
                } else {
                    ScanControl::Continue
                }
            })
            .unwrap();
        assert_eq!(seen, 2);
        assert_eq!(
            engine.last_in_range("a", &[2], &[7]).unwrap(),
            Some((vec![6], vec![12]))
        );
        assert_eq!(engine.last_in_range("a", &[20], &[30]).unwrap(), None);
    }

    #[test]
    fn delete_range_and_view_isolation() {
        let dir = tempfile::tempdir().unwrap();
        let engine = open(dir.path());
        let mut batch = WriteBatch::new();
        for i in 0u8..5 {
            batch.put("a", vec![i], vec![i]);
        }
        engine.write(batch, Durability::Buffered).unwrap();
        let view = engine.view();
        let mut batch = WriteBatch::new();
        batch.delete_range("a", vec![1], vec![4]);
        batch.delete("a", vec![0]);
        engine.write(batch, Durability::Buffered).unwrap();
        assert_eq!(collect(&engine, "a", &[], None).len(), 1);
        assert_eq!(
            collect(view.as_ref(), "a", &[], None).len(),
            5,
            "view must not see later writes"
        );
        assert_eq!(view.get("a", &[2]).unwrap(), Some(vec![2]));
    }

    #[test]
    fn reopen_keeps_buffered_writes_after_flush() {
        let dir = tempfile::tempdir().unwrap();
        {
            let engine = open(dir.path());
            let mut batch = WriteBatch::new();
            batch.put("b", b"durable".to_vec(), b"yes".to_vec());
            engine.write(batch, Durability::Buffered).unwrap();
            engine.flush().unwrap();
        }
        let engine = open(dir.path());
        assert_eq!(engine.get("b", b"durable").unwrap(), Some(b"yes".to_vec()));
    }

    #[test]
    fn unknown_space_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let engine = open(dir.path());
        let error = engine.get("nope", b"k").unwrap_err().to_string();
        assert!(error.contains("unknown key space \"nope\""), "{error}");
        assert!(error.contains("a, b"), "{error}");
    }
}
