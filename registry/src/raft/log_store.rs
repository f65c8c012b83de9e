//! The Raft log and vote, in their own engine instance, with group commit.
//!
//! `append` writes entries (readable at once) and queues the durability callback; one
//! flusher thread syncs the write-ahead log once for every callback queued meanwhile, so N
//! concurrent proposals cost one fsync, not N.
//!
//! Invariant: a callback fires only after an fsync that started after its entries were
//! written. Invariant: the vote is durable before `save_vote` returns.
//!
//! [`LogCounters`] count entries appended and fsyncs, so the batching can be observed (the
//! registry's Status call reports both).

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader};
use shoal_engine::{Durability, KvEngine, RocksOptions, ScanControl, WriteBatch};

use super::{Entry, LogId, TypeConfig, Vote, decode, encode, io_error};

pub const SPACE_LOG: &str = "log";
pub const SPACE_RAFT_META: &str = "raft_meta";
const LOG_SPACES: &[&str] = &[SPACE_LOG, SPACE_RAFT_META];

const KEY_VOTE: &[u8] = b"vote";
const KEY_LAST_PURGED: &[u8] = b"last_purged";
const KEY_COMMITTED: &[u8] = b"committed";

/// Most durability callbacks waiting for the flusher; appends wait when it is full.
const MAX_PENDING_FLUSHES: usize = 4096;

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

/// What the log did since the process started: the evidence that group commit batches.
#[derive(Debug, Default)]
pub struct LogCounters {
    entries_appended: AtomicU64,
    fsyncs: AtomicU64,
}

impl LogCounters {
    /// Log entries written by `append` (leader proposals and entries received as follower).
    pub fn entries_appended(&self) -> u64 {
        self.entries_appended.load(Ordering::Relaxed)
    }

    /// fsyncs of the log's write-ahead log: one per flusher group, plus one per vote saved.
    pub fn fsyncs(&self) -> u64 {
        self.fsyncs.load(Ordering::Relaxed)
    }
}

#[derive(Clone)]
pub struct LogStore {
    engine: Arc<dyn KvEngine>,
    flushes: SyncSender<IOFlushed<TypeConfig>>,
    counters: Arc<LogCounters>,
}

impl LogStore {
    pub fn open(dir: &Path) -> anyhow::Result<LogStore> {
        let engine: Arc<dyn KvEngine> = Arc::from(shoal_engine::open(dir, LOG_SPACES, &RocksOptions::default())?);
        let (flushes, pending) = sync_channel(MAX_PENDING_FLUSHES);
        let counters = Arc::new(LogCounters::default());
        let (flusher_engine, flusher_counters) = (engine.clone(), counters.clone());
        std::thread::Builder::new()
            .name("raft-log-flush".into())
            .spawn(move || run_flusher(flusher_engine, flusher_counters, pending))?;
        Ok(LogStore {
            engine,
            flushes,
            counters,
        })
    }

    /// The counters of this log, shared with every clone.
    pub fn counters(&self) -> Arc<LogCounters> {
        self.counters.clone()
    }

    fn get_meta<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> io::Result<Option<T>> {
        let value = self
            .engine
            .get(SPACE_RAFT_META, key)
            .map_err(|e| io_error("read raft meta", e))?;
        value.map(|bytes| decode(&bytes, "raft meta")).transpose()
    }

    fn write(&self, batch: WriteBatch, durability: Durability) -> io::Result<()> {
        self.engine
            .write(batch, durability)
            .map_err(|e| io_error("write raft log", e))
    }
}

/// Syncs the log once per group of queued callbacks, then completes the whole group.
fn run_flusher(engine: Arc<dyn KvEngine>, counters: Arc<LogCounters>, pending: Receiver<IOFlushed<TypeConfig>>) {
    // Ends when every LogStore clone (every sender) is gone.
    while let Ok(first) = pending.recv() {
        let mut group = vec![first];
        while group.len() < MAX_PENDING_FLUSHES {
            match pending.try_recv() {
                Ok(callback) => group.push(callback),
                Err(_) => break,
            }
        }
        let result = engine.sync_wal().map_err(|e| e.to_string());
        counters.fsyncs.fetch_add(1, Ordering::Relaxed);
        for callback in group {
            callback.io_completed(result.clone().map_err(|e| io_error("sync raft log", e)));
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let start = match range.start_bound() {
            Bound::Included(index) => *index,
            Bound::Excluded(index) => index + 1,
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(index) => Some(index + 1),
            Bound::Excluded(index) => Some(*index),
            Bound::Unbounded => None,
        };
        let end_key = end.map(index_key);
        let mut entries = Vec::new();
        let mut failure = None;
        self.engine
            .scan(
                SPACE_LOG,
                &index_key(start),
                end_key.as_ref().map(|k| k.as_slice()),
                &mut |_, value| {
                    match decode::<Entry>(value, "raft log entry") {
                        Ok(entry) => entries.push(entry),
                        Err(error) => {
                            failure = Some(error);
                            return ScanControl::Stop;
                        }
                    }
                    ScanControl::Continue
                },
            )
            .map_err(|e| io_error("read raft log", e))?;
        if let Some(error) = failure {
            return Err(error);
        }
        for pair in entries.windows(2) {
            assert_eq!(pair[0].index() + 1, pair[1].index(), "hole in the raft log");
        }
        Ok(entries)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        self.get_meta(KEY_VOTE)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let last_purged_log_id: Option<LogId> = self.get_meta(KEY_LAST_PURGED)?;
        let last = self
            .engine
            .last_in_range(SPACE_LOG, &index_key(0), &index_key(u64::MAX))
            .map_err(|e| io_error("read raft log", e))?;
        let last_log_id = match last {
            Some((_, value)) => Some(decode::<Entry>(&value, "raft log entry")?.log_id()),
            None => last_purged_log_id,
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        let mut batch = WriteBatch::new();
        batch.put(SPACE_RAFT_META, KEY_VOTE.to_vec(), encode(vote));
        let store = self.clone();
        tokio::task::spawn_blocking(move || {
            store.counters.fsyncs.fetch_add(1, Ordering::Relaxed);
            store.write(batch, Durability::Synced)
        })
        .await
        .map_err(|e| io_error("save vote", e))?
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        // Not synced: after a crash the committed index is learned again from the leader;
        // it only lets a restarted node re-apply what it already knew was committed.
        let mut batch = WriteBatch::new();
        batch.put(SPACE_RAFT_META, KEY_COMMITTED.to_vec(), encode(&committed));
        self.write(batch, Durability::Buffered)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(self.get_meta::<Option<LogId>>(KEY_COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = WriteBatch::new();
        let mut count = 0u64;
        for entry in entries {
            batch.put(SPACE_LOG, index_key(entry.index()).to_vec(), encode(&entry));
            count += 1;
        }
        self.write(batch, Durability::Buffered)?;
        self.counters.entries_appended.fetch_add(count, Ordering::Relaxed);
        self.flushes
            .send(callback)
            .map_err(|_| io_error("append raft log", "the log flusher has stopped"))
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let start = last_log_id.map_or(0, |id| id.index() + 1);
        let mut batch = WriteBatch::new();
        batch.delete_range(SPACE_LOG, index_key(start).to_vec(), index_key(u64::MAX).to_vec());
        // Made durable by the next append's sync, which must happen before anything that
        // depends on the truncation is acknowledged.
        self.write(batch, Durability::Buffered)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        // The purge point and the deletion land atomically, so the log never has a hole
        // between the purge point and its first entry.
        let mut batch = WriteBatch::new();
        batch.put(SPACE_RAFT_META, KEY_LAST_PURGED.to_vec(), encode(&log_id));
        batch.delete_range(SPACE_LOG, index_key(0).to_vec(), index_key(log_id.index() + 1).to_vec());
        self.write(batch, Durability::Buffered)
    }
}
