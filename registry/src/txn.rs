//! A command's view of the state: reads see the command's own earlier writes, and nothing
//! reaches the engine until the command has succeeded.
//!
//! Why: a namespace operation validates everything before it changes anything, but many
//! operations touch the same record twice (rename within one directory updates the parent
//! once as source and once as destination). Buffering writes here makes "load, change,
//! store" safe in any order, and a failed command is dropped without a trace.

use std::collections::BTreeMap;

use shoal_engine::{EngineError, KvRead, ScanControl, WriteBatch};

use crate::records::{CorruptRecord, Record};

/// Why a command could not be executed against storage (not a file-system error).
#[derive(Debug, thiserror::Error)]
pub enum StorageFault {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Corrupt(#[from] CorruptRecord),
}

pub struct Txn<'a> {
    base: &'a dyn KvRead,
    writes: BTreeMap<(&'static str, Vec<u8>), Option<Vec<u8>>>,
    range_deletes: Vec<(&'static str, Vec<u8>, Vec<u8>)>,
}

impl<'a> Txn<'a> {
    pub fn new(base: &'a dyn KvRead) -> Self {
        Txn {
            base,
            writes: BTreeMap::new(),
            range_deletes: Vec::new(),
        }
    }

    pub fn get(&self, space: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>, StorageFault> {
        if let Some(value) = self.writes.get(&(space, key.to_vec())) {
            return Ok(value.clone());
        }
        let deleted = self
            .range_deletes
            .iter()
            .any(|(s, start, end)| *s == space && key >= start.as_slice() && key < end.as_slice());
        if deleted {
            return Ok(None);
        }
        Ok(self.base.get(space, key)?)
    }

    pub fn get_record<R: Record>(&self, space: &'static str, key: &[u8]) -> Result<Option<R>, StorageFault> {
        match self.get(space, key)? {
            None => Ok(None),
            Some(bytes) => Ok(Some(R::decode(&bytes)?)),
        }
    }

    pub fn put(&mut self, space: &'static str, key: Vec<u8>, value: Vec<u8>) {
        self.writes.insert((space, key), Some(value));
    }

    pub fn put_record<R: Record>(&mut self, space: &'static str, key: Vec<u8>, record: &R) {
        self.put(space, key, record.encode());
    }

    pub fn delete(&mut self, space: &'static str, key: Vec<u8>) {
        self.writes.insert((space, key), None);
    }

    /// Deletes `[start, end)` in `space`. Point writes made earlier in the same range are
    /// dropped; later ones stand.
    pub fn delete_range(&mut self, space: &'static str, start: Vec<u8>, end: Vec<u8>) {
        self.writes
            .retain(|(s, key), _| !(*s == space && *key >= start && *key < end));
        self.range_deletes.push((space, start, end));
    }

    /// Scans the state as it was before this command. Invariant: a command never scans a
    /// range it has already written (asserted), so ignoring the buffered writes is exact.
    pub fn scan_committed(
        &self,
        space: &'static str,
        start: &[u8],
        end: &[u8],
        visitor: &mut dyn FnMut(&[u8], &[u8]) -> ScanControl,
    ) -> Result<(), StorageFault> {
        let touched = self
            .writes
            .keys()
            .any(|(s, key)| *s == space && key.as_slice() >= start && key.as_slice() < end);
        assert!(!touched, "scan of a range this command already wrote");
        Ok(self.base.scan(space, start, Some(end), visitor)?)
    }

    pub fn base(&self) -> &'a dyn KvRead {
        self.base
    }

    /// The command's changes, range deletions first.
    pub fn into_batch(self) -> WriteBatch {
        let mut batch = WriteBatch::new();
        for (space, start, end) in self.range_deletes {
            batch.delete_range(space, start, end);
        }
        for ((space, key), value) in self.writes {
            match value {
                Some(value) => batch.put(space, key, value),
                None => batch.delete(space, key),
            }
        }
        batch
    }
}
