//! Per-chunk ordering: one reader-writer lock per chunk that someone is using.
//!
//! Writers hold a chunk's lock from their local write until the chain downstream has
//! acknowledged, so one chunk has at most one write in flight per chain and replicas apply
//! writes in the same order. Readers share the lock, so a read never sees a write that the
//! tail has not acknowledged yet at this member.
//!
//! Every chunk has a lock of its own, never one shared with another chunk: a writer holds
//! its lock across a call to the next member, and two chunks whose chains run through the
//! same members in opposite directions would otherwise wait on each other forever.
//! Invariant: the table holds an entry only while a guard or a waiter for it exists (a
//! waiter that gives up leaves its entry to the chunk's next user to remove), so its size
//! is bounded by the requests in flight.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock};

use crate::store::ChunkId;

type Table = Mutex<HashMap<ChunkId, Arc<RwLock<()>>>>;

#[derive(Default)]
pub struct ChunkLocks {
    table: Arc<Table>,
}

/// Holds one chunk's lock; removes the chunk's entry when the last user lets go.
pub struct ChunkGuard<G> {
    guard: Option<G>,
    chunk: ChunkId,
    table: Arc<Table>,
}

impl<G> Drop for ChunkGuard<G> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut table = self.table.lock().expect("chunk lock table poisoned");
        // Users clone the entry under the table's mutex, so a count of one (the table's
        // own) means nobody holds or waits for this lock.
        if table.get(&self.chunk).is_some_and(|lock| Arc::strong_count(lock) == 1) {
            table.remove(&self.chunk);
        }
    }
}

impl ChunkLocks {
    fn entry(&self, chunk: &ChunkId) -> Arc<RwLock<()>> {
        let mut table = self.table.lock().expect("chunk lock table poisoned");
        table.entry(*chunk).or_default().clone()
    }

    pub async fn write(&self, chunk: &ChunkId) -> ChunkGuard<OwnedRwLockWriteGuard<()>> {
        let lock = self.entry(chunk);
        ChunkGuard {
            guard: Some(lock.write_owned().await),
            chunk: *chunk,
            table: self.table.clone(),
        }
    }

    pub async fn read(&self, chunk: &ChunkId) -> ChunkGuard<OwnedRwLockReadGuard<()>> {
        let lock = self.entry(chunk);
        ChunkGuard {
            guard: Some(lock.read_owned().await),
            chunk: *chunk,
            table: self.table.clone(),
        }
    }

    /// Chunks with a lock entry (for tests: the table must not grow without bound).
    #[cfg(test)]
    fn entries(&self) -> usize {
        self.table.lock().expect("chunk lock table poisoned").len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: ChunkId = ChunkId {
        volume_id: 1,
        ino: 2,
        index: 0,
    };
    const B: ChunkId = ChunkId {
        volume_id: 1,
        ino: 2,
        index: 1,
    };

    #[tokio::test]
    async fn chunks_do_not_share_locks_and_entries_go_away() {
        let locks = ChunkLocks::default();
        let a = locks.write(&A).await;
        // Another chunk's lock is free while A's is held (no shared stripes).
        let b = tokio::time::timeout(std::time::Duration::from_secs(5), locks.write(&B))
            .await
            .expect("B must not wait for A");
        assert_eq!(locks.entries(), 2);
        // A second writer of A waits until the first lets go.
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(50), locks.write(&A))
                .await
                .is_err()
        );
        drop((a, b));
        assert_eq!(locks.entries(), 0);
        let reader_one = locks.read(&A).await;
        let reader_two = locks.read(&A).await;
        drop(reader_one);
        assert_eq!(locks.entries(), 1);
        drop(reader_two);
        assert_eq!(locks.entries(), 0);
    }
}
