//! Per-chunk ordering: a bounded table of striped reader-writer locks.
//!
//! Writers hold a chunk's lock from their local write until the chain downstream has
//! acknowledged, so one chunk has at most one write in flight per chain and replicas apply
//! writes in the same order. Readers share the lock, so a read never sees a write that the
//! tail has not acknowledged yet at this member. The table has a fixed number of stripes:
//! two chunks may share a stripe (rarely), and memory stays bounded whatever the load.

use std::sync::Arc;

use tokio::sync::{OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock};

use crate::store::{ChunkId, crc};

/// Number of lock stripes.
const STRIPES: usize = 4096;

pub struct ChunkLocks {
    stripes: Vec<Arc<RwLock<()>>>,
}

impl Default for ChunkLocks {
    fn default() -> Self {
        ChunkLocks {
            stripes: (0..STRIPES).map(|_| Arc::new(RwLock::new(()))).collect(),
        }
    }
}

impl ChunkLocks {
    fn stripe(&self, chunk: &ChunkId) -> Arc<RwLock<()>> {
        self.stripes[crc(&chunk.key()) as usize % STRIPES].clone()
    }

    pub async fn write(&self, chunk: &ChunkId) -> OwnedRwLockWriteGuard<()> {
        self.stripe(chunk).write_owned().await
    }

    pub async fn read(&self, chunk: &ChunkId) -> OwnedRwLockReadGuard<()> {
        self.stripe(chunk).read_owned().await
    }
}
