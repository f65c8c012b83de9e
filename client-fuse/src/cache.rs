//! Read-ahead: for sequential readers, whole 1 MiB blocks are fetched ahead of the kernel's
//! requests, several chains at once, and kept in a bounded cache until read.
//!
//! The kernel's own read-ahead asks for 128 KiB at a time; without this, a sequential read
//! would be a chain of small round trips. Random reads never fetch whole blocks, but are
//! served from blocks already cached (data read before, like a page cache).
//!
//! Invariant: the cache never holds more than its capacity (counted in whole blocks), and
//! a write to an inode drops its cached blocks before it is sent and again once it has
//! landed, so a block fetched while the write was on its way is never served after it.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use bytes::Bytes;
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};

/// Size of one cached block.
pub const BLOCK_BYTES: u64 = 1 << 20;

pub type Fetch = Shared<BoxFuture<'static, Result<Bytes, i32>>>;

pub struct ReadCache {
    capacity_blocks: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    blocks: HashMap<(u64, u64), Fetch>,
    order: VecDeque<(u64, u64)>,
}

impl ReadCache {
    pub fn new(capacity_bytes: u64) -> ReadCache {
        ReadCache {
            capacity_blocks: (capacity_bytes / BLOCK_BYTES) as usize,
            inner: Mutex::new(Inner::default()),
        }
    }

    pub fn enabled(&self) -> bool {
        self.capacity_blocks > 0
    }

    /// The fetch of block `block` of `ino`: the cached one, or a new one made by `make`.
    /// Returns whether it was newly made.
    pub fn get_or_fetch(
        &self,
        ino: u64,
        block: u64,
        make: impl FnOnce() -> BoxFuture<'static, Result<Bytes, i32>>,
    ) -> (Fetch, bool) {
        let mut inner = self.inner.lock().expect("cache lock poisoned");
        if let Some(fetch) = inner.blocks.get(&(ino, block)) {
            // A failed fetch is not kept: try again.
            if !matches!(fetch.peek(), Some(Err(_))) {
                return (fetch.clone(), false);
            }
        }
        while inner.blocks.len() >= self.capacity_blocks {
            let Some(oldest) = inner.order.pop_front() else { break };
            inner.blocks.remove(&oldest);
        }
        let fetch = make().shared();
        if inner.blocks.insert((ino, block), fetch.clone()).is_none() {
            inner.order.push_back((ino, block));
        }
        (fetch, true)
    }

    /// `offset..end` of `ino` if one block already fetched holds all of it (random reads
    /// of data read before are served from memory, like a local file system's page cache).
    pub fn cached(&self, ino: u64, offset: u64, end: u64) -> Option<Bytes> {
        let block = offset / BLOCK_BYTES;
        if (end - 1) / BLOCK_BYTES != block {
            return None;
        }
        let inner = self.inner.lock().expect("cache lock poisoned");
        let Some(Ok(bytes)) = inner.blocks.get(&(ino, block))?.peek().cloned() else {
            return None;
        };
        let (from, to) = (
            (offset - block * BLOCK_BYTES) as usize,
            (end - block * BLOCK_BYTES) as usize,
        );
        (to <= bytes.len()).then(|| bytes.slice(from..to))
    }

    /// Drops every cached block of `ino` (it was written or truncated).
    pub fn invalidate(&self, ino: u64) {
        let mut inner = self.inner.lock().expect("cache lock poisoned");
        if !inner.blocks.keys().any(|(i, _)| *i == ino) {
            return;
        }
        inner.blocks.retain(|(i, _), _| *i != ino);
        inner.order.retain(|(i, _)| *i != ino);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn cache_is_bounded_and_invalidated() {
        let cache = ReadCache::new(2 * BLOCK_BYTES);
        let make = |n: u8| move || async move { Ok(Bytes::from(vec![n; 4])) }.boxed();
        let (first, new) = cache.get_or_fetch(1, 0, make(1));
        assert!(new);
        assert_eq!(first.await.unwrap()[0], 1);
        let (_, new) = cache.get_or_fetch(1, 0, make(9));
        assert!(!new, "a cached block is reused");
        assert_eq!(
            cache.cached(1, 1, 3).as_deref(),
            Some(&[1u8, 1][..]),
            "a range inside a fetched block"
        );
        assert!(cache.cached(1, 2, 8).is_none(), "a range past the block's bytes");
        let _ = cache.get_or_fetch(1, 1, make(2));
        let _ = cache.get_or_fetch(1, 2, make(3));
        let (_, new) = cache.get_or_fetch(1, 0, make(4));
        assert!(new, "the oldest block was evicted to stay within capacity");
        cache.invalidate(1);
        let (_, new) = cache.get_or_fetch(1, 2, make(5));
        assert!(new, "invalidation drops the inode's blocks");
    }
}
