//! The storage engine behind Shoal's metadata, reached only through a narrow trait.
//!
//! Why a trait of our own: the registry's namespace logic and the data service's chunk
//! index must not depend on RocksDB's API. They see ordered key spaces, point reads,
//! bounded range scans, point-in-time views and atomic write batches; nothing else.
//! Swapping the engine (or testing against another one) touches this crate only.
//!
//! Key spaces are named up front when the engine is opened (RocksDB column families).
//! Keys sort bytewise, so callers encode integers big-endian to get numeric order.

mod batch;
mod error;
mod rocks;

pub use batch::{BatchOp, WriteBatch};
pub use error::EngineError;
pub use rocks::{RocksEngine, RocksOptions};

/// Opens (creating if missing) the engine at `path` with exactly the key spaces `spaces`.
/// The one place that picks the implementation: callers hold the trait, never RocksDB.
pub fn open(
    path: &std::path::Path,
    spaces: &[&'static str],
    tuning: &RocksOptions,
) -> Result<Box<dyn KvEngine>, EngineError> {
    Ok(Box::new(RocksEngine::open(path, spaces, tuning)?))
}

/// Whether a write must reach stable storage before [`KvEngine::write`] returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Handed to the OS (the write-ahead log is written, not fsynced): survives a crash of
    /// the process, not of the machine. Use when another log already makes the data durable.
    Buffered,
    /// The write-ahead log is fsynced before the call returns.
    Synced,
}

/// What a scan visitor wants next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScanControl {
    Continue,
    Stop,
}

/// A key and its value, as returned by range lookups.
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// Read access to one consistent state of the key spaces.
pub trait KvRead {
    /// The value stored under `key` in `space`, if any.
    fn get(&self, space: &str, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError>;

    /// Visits keys in `[start, end)` of `space` in ascending order until the visitor
    /// returns [`ScanControl::Stop`] or the range ends. `end = None` scans to the end of
    /// the space. The visitor bounds the scan; callers must always give it a limit.
    fn scan(
        &self,
        space: &str,
        start: &[u8],
        end: Option<&[u8]>,
        visitor: &mut dyn FnMut(&[u8], &[u8]) -> ScanControl,
    ) -> Result<(), EngineError>;

    /// The last key-value pair in `[start, end)`, if any.
    fn last_in_range(&self, space: &str, start: &[u8], end: &[u8]) -> Result<Option<KeyValue>, EngineError>;
}

/// A key-value engine with atomic batches and point-in-time views.
pub trait KvEngine: KvRead + Send + Sync + 'static {
    /// Applies every operation of `batch` atomically: after a crash, all or none are visible.
    fn write(&self, batch: WriteBatch, durability: Durability) -> Result<(), EngineError>;

    /// Makes every write returned so far durable (one fsync of the write-ahead log).
    /// Many writers can share one call: this is how group commit is built.
    fn sync_wal(&self) -> Result<(), EngineError>;

    /// Writes in-memory state to the engine's files and syncs them, so that the data no
    /// longer depends on the write-ahead log (used before an engine directory is switched in).
    fn flush(&self) -> Result<(), EngineError>;

    /// A consistent, read-only view of the state at the moment of the call. Writes made
    /// later are not visible through it.
    fn view(&self) -> Box<dyn KvRead + '_>;
}

/// Returns the smallest key greater than every key starting with `prefix`, or `None` when no
/// such key exists (the prefix is all 0xff). Used as the exclusive end of a prefix scan.
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_last_non_ff_byte() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(&[1, 0xff]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xff, 0xff]), None);
        assert_eq!(prefix_end(&[]), None);
    }
}
