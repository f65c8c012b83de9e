//! Per-chunk ordering and per-chain gates: one reader-writer lock per key in use.
//!
//! Chunk locks: writers hold a chunk's lock from their local write until the chain
//! downstream has acknowledged, so one chunk has at most one write in flight per chain and
//! replicas apply writes in the same order. Readers share the lock, so a read never sees a
//! write that the tail has not acknowledged yet at this member.
//!
//! Chain gates: every chain change (write, truncate, received copy) holds its chain's gate
//! shared from before it resolves the chain until it is done here and downstream. A fill
//! passes the gate exclusively once before it lists what to copy, so every change resolved
//! against a table without the member being filled has finished by then, and every later
//! one forwards to it: no change can land here after the fill looked and skip the new member.
//!
//! Every key has a lock of its own, never one shared with another key: a writer holds its
//! chunk's lock across a call to the next member, and two chunks whose chains run through
//! the same members in opposite directions would otherwise wait on each other forever.
//! Invariant: the table holds an entry only while a guard or a waiter for it exists (a
//! waiter that gives up leaves its entry to the key's next user to remove), so its size
//! is bounded by the requests in flight.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock};

use crate::store::ChunkId;

type Table<K> = Mutex<HashMap<K, Arc<RwLock<()>>>>;

pub struct KeyedLocks<K> {
    table: Arc<Table<K>>,
}

/// One lock per chunk.
pub type ChunkLocks = KeyedLocks<ChunkId>;
/// One gate per chain id.
pub type ChainGates = KeyedLocks<u64>;

impl<K> Default for KeyedLocks<K> {
    fn default() -> Self {
        KeyedLocks { table: Arc::default() }
    }
}

/// Holds one key's lock; removes the key's entry when the last user lets go.
pub struct KeyGuard<K: Eq + Hash + Copy, G> {
    guard: Option<G>,
    key: K,
    table: Arc<Table<K>>,
}

pub type WriteGuard<K> = KeyGuard<K, OwnedRwLockWriteGuard<()>>;
pub type ReadGuard<K> = KeyGuard<K, OwnedRwLockReadGuard<()>>;

impl<K: Eq + Hash + Copy, G> Drop for KeyGuard<K, G> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut table = self.table.lock().expect("lock table poisoned");
        // Users clone the entry under the table's mutex, so a count of one (the table's
        // own) means nobody holds or waits for this lock.
        if table.get(&self.key).is_some_and(|lock| Arc::strong_count(lock) == 1) {
            table.remove(&self.key);
        }
    }
}

impl<K: Eq + Hash + Copy> KeyedLocks<K> {
    fn entry(&self, key: &K) -> Arc<RwLock<()>> {
        let mut table = self.table.lock().expect("lock table poisoned");
        table.entry(*key).or_default().clone()
    }

    pub async fn write(&self, key: &K) -> WriteGuard<K> {
        let lock = self.entry(key);
        KeyGuard {
            guard: Some(lock.write_owned().await),
            key: *key,
            table: self.table.clone(),
        }
    }

    pub async fn read(&self, key: &K) -> ReadGuard<K> {
        let lock = self.entry(key);
        KeyGuard {
            guard: Some(lock.read_owned().await),
            key: *key,
            table: self.table.clone(),
        }
    }

    /// Keys with a lock entry (for tests: the table must not grow without bound).
    #[cfg(test)]
    fn entries(&self) -> usize {
        self.table.lock().expect("lock table poisoned").len()
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
