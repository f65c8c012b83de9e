//! Memory for write-back buffers and read-ahead caches, shared by every mount of one
//! process.
//!
//! `shoal mount` serves one volume and its pool is that mount's. `shoal agent` serves every
//! Shoal volume of a node from one pool with one configured size, so the node's memory use
//! is known in advance and one busy volume cannot take it all: each mount *reserves* a floor
//! of write-back memory (and its read-ahead cache) when it is mounted, and may *borrow*
//! beyond the floor from what nobody reserved, up to its own ceiling. A writer whose floor
//! is used up and who cannot borrow waits for its own floor, which its own sends return, so
//! a mount always makes progress whatever the others do. A mount whose reservation does not
//! fit is refused rather than squeezed.
//!
//! Invariant: reserved plus borrowed memory never exceeds the pool; a mount's held memory
//! never exceeds its ceiling.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Budgets are counted in KiB permits so that large pools fit a semaphore's range.
pub const PERMIT_BYTES: u64 = 1024;
/// The largest pool, 1 TiB: its KiB permits fit a semaphore and a `u32`.
pub const MAX_POOL_BYTES: u64 = 1 << 40;
const _: () = assert!(MAX_POOL_BYTES / PERMIT_BYTES <= Semaphore::MAX_PERMITS as u64);
const _: () = assert!(MAX_POOL_BYTES / PERMIT_BYTES <= u32::MAX as u64);

fn permits(bytes: u64) -> u32 {
    u32::try_from(bytes.div_ceil(PERMIT_BYTES)).expect("bytes within MAX_POOL_BYTES")
}

/// The memory all mounts of this process share.
pub struct MemoryPool {
    size_bytes: u64,
    /// What no mount has reserved: lent to mounts beyond their floors.
    unreserved: Arc<Semaphore>,
    reserved_bytes: AtomicU64,
    held_bytes: Arc<AtomicU64>,
}

/// A mount's share of the pool. Dropping it (at unmount) returns the reservation.
pub struct MountBudget {
    pool: Arc<MemoryPool>,
    /// The floor: this mount's alone.
    own: Arc<Semaphore>,
    /// How far beyond the floor this mount may borrow.
    may_borrow: Arc<Semaphore>,
    floor_bytes: u64,
    ceiling_bytes: u64,
    read_cache_bytes: u64,
    session_bytes: u64,
    held_bytes: Arc<AtomicU64>,
}

/// Memory held for some buffered bytes; returned when dropped.
pub struct BudgetPermit {
    _permits: Held,
    bytes: u64,
    mount_held: Arc<AtomicU64>,
    pool_held: Arc<AtomicU64>,
}

/// Permits from the mount's floor, or from what it may borrow with as many from the pool's
/// unreserved memory; returned to both when dropped.
type Held = (OwnedSemaphorePermit, Option<OwnedSemaphorePermit>);

impl Drop for BudgetPermit {
    fn drop(&mut self) {
        let before = self.mount_held.fetch_sub(self.bytes, Ordering::Relaxed);
        assert!(before >= self.bytes, "a mount released more memory than it held");
        self.pool_held.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// What a mount asks of the pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShareRequest {
    /// Write-back memory set aside for this mount alone.
    pub write_floor_bytes: u64,
    /// The most write-back memory it may hold (floor included).
    pub write_ceiling_bytes: u64,
    /// Its read-ahead cache, set aside whole.
    pub read_cache_bytes: u64,
    /// What its FUSE session holds for requests, set aside whole (accounted, not lent).
    pub session_bytes: u64,
}

impl ShareRequest {
    pub fn reserved_bytes(&self) -> u64 {
        self.write_floor_bytes + self.read_cache_bytes + self.session_bytes
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BudgetError {
    #[error(
        "the memory budget of {pool_bytes} bytes cannot reserve {wanted_bytes} more bytes for this mount ({reserved_bytes} are reserved by the mounts already served); unmount a volume or raise the budget"
    )]
    Exhausted {
        pool_bytes: u64,
        reserved_bytes: u64,
        wanted_bytes: u64,
    },
    #[error("invalid memory share: {0}")]
    Invalid(String),
}

impl MemoryPool {
    pub fn new(size_bytes: u64) -> Arc<MemoryPool> {
        let size_bytes = size_bytes.min(MAX_POOL_BYTES);
        Arc::new(MemoryPool {
            size_bytes,
            unreserved: Arc::new(Semaphore::new(permits(size_bytes) as usize)),
            reserved_bytes: AtomicU64::new(0),
            held_bytes: Arc::new(AtomicU64::new(0)),
        })
    }

    pub fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    pub fn reserved_bytes(&self) -> u64 {
        self.reserved_bytes.load(Ordering::Relaxed)
    }

    /// Write-back memory held by all mounts now (buffered or in flight).
    pub fn held_bytes(&self) -> u64 {
        self.held_bytes.load(Ordering::Relaxed)
    }

    /// Reserves a mount's floor and read cache, or says why it does not fit.
    pub fn reserve(self: &Arc<Self>, request: ShareRequest) -> Result<MountBudget, BudgetError> {
        if request.write_floor_bytes == 0 || request.write_ceiling_bytes < request.write_floor_bytes {
            return Err(BudgetError::Invalid(format!(
                "write floor {} bytes, ceiling {} bytes: the floor must be positive and at most the ceiling",
                request.write_floor_bytes, request.write_ceiling_bytes
            )));
        }
        let ceiling_bytes = request.write_ceiling_bytes.min(self.size_bytes);
        let wanted = request.reserved_bytes();
        let exhausted = || BudgetError::Exhausted {
            pool_bytes: self.size_bytes,
            reserved_bytes: self.reserved_bytes(),
            wanted_bytes: wanted,
        };
        if wanted > self.size_bytes {
            return Err(exhausted());
        }
        let taken = self
            .unreserved
            .clone()
            .try_acquire_many_owned(permits(wanted))
            .map_err(|_| exhausted())?;
        taken.forget();
        self.reserved_bytes.fetch_add(wanted, Ordering::Relaxed);
        Ok(MountBudget {
            pool: self.clone(),
            own: Arc::new(Semaphore::new(permits(request.write_floor_bytes) as usize)),
            may_borrow: Arc::new(Semaphore::new(
                permits(ceiling_bytes.saturating_sub(request.write_floor_bytes)) as usize,
            )),
            floor_bytes: request.write_floor_bytes,
            ceiling_bytes: ceiling_bytes.max(request.write_floor_bytes),
            read_cache_bytes: request.read_cache_bytes,
            session_bytes: request.session_bytes,
            held_bytes: Arc::new(AtomicU64::new(0)),
        })
    }
}

impl Drop for MountBudget {
    fn drop(&mut self) {
        let reserved = self.reserved_bytes();
        self.pool.reserved_bytes.fetch_sub(reserved, Ordering::Relaxed);
        self.pool.unreserved.add_permits(permits(reserved) as usize);
    }
}

impl MountBudget {
    pub fn floor_bytes(&self) -> u64 {
        self.floor_bytes
    }

    pub fn ceiling_bytes(&self) -> u64 {
        self.ceiling_bytes
    }

    pub fn read_cache_bytes(&self) -> u64 {
        self.read_cache_bytes
    }

    pub fn reserved_bytes(&self) -> u64 {
        self.floor_bytes + self.read_cache_bytes + self.session_bytes
    }

    /// Write-back memory this mount holds now.
    pub fn held_bytes(&self) -> u64 {
        self.held_bytes.load(Ordering::Relaxed)
    }

    /// Memory for `bytes` buffered bytes without waiting: from the floor, else borrowed.
    pub fn try_acquire(&self, bytes: u64) -> Option<BudgetPermit> {
        let wanted = permits(bytes);
        let held = match self.own.clone().try_acquire_many_owned(wanted) {
            Ok(own) => (own, None),
            Err(_) => {
                let lent = self.may_borrow.clone().try_acquire_many_owned(wanted).ok()?;
                let shared = self.pool.unreserved.clone().try_acquire_many_owned(wanted).ok()?;
                (lent, Some(shared))
            }
        };
        Some(self.permit(held, bytes))
    }

    /// Memory for `bytes`, waiting for this mount's own floor if nothing is free now: the
    /// floor comes back as this mount's sends land, so the wait ends whatever other mounts do.
    pub async fn acquire(&self, bytes: u64) -> BudgetPermit {
        assert!(
            bytes <= self.floor_bytes,
            "one write of {bytes} bytes exceeds the write-back floor of {} bytes",
            self.floor_bytes
        );
        if let Some(permit) = self.try_acquire(bytes) {
            return permit;
        }
        let own = self
            .own
            .clone()
            .acquire_many_owned(permits(bytes))
            .await
            .expect("a mount's budget is never closed");
        self.permit((own, None), bytes)
    }

    fn permit(&self, held: Held, bytes: u64) -> BudgetPermit {
        let now = self.held_bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
        assert!(
            now <= self.ceiling_bytes + 2 * PERMIT_BYTES,
            "a mount holds {now} bytes, above its ceiling of {} bytes",
            self.ceiling_bytes
        );
        self.pool.held_bytes.fetch_add(bytes, Ordering::Relaxed);
        BudgetPermit {
            _permits: held,
            bytes,
            mount_held: self.held_bytes.clone(),
            pool_held: self.pool.held_bytes.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn share(floor: u64, ceiling: u64, cache: u64) -> ShareRequest {
        ShareRequest {
            write_floor_bytes: floor * MIB,
            write_ceiling_bytes: ceiling * MIB,
            read_cache_bytes: cache * MIB,
            session_bytes: 0,
        }
    }

    #[test]
    fn reservations_that_do_not_fit_are_refused_and_returned_at_unmount() {
        let pool = MemoryPool::new(64 * MIB);
        let a = pool.reserve(share(16, 32, 8)).unwrap();
        let b = pool.reserve(share(16, 32, 8)).unwrap();
        assert_eq!(pool.reserved_bytes(), 48 * MIB);
        let refused = pool.reserve(share(16, 32, 8));
        assert!(
            matches!(refused, Err(BudgetError::Exhausted { .. })),
            "{:?}",
            refused.err()
        );
        drop(a);
        assert_eq!(pool.reserved_bytes(), 24 * MIB);
        let _c = pool
            .reserve(share(16, 32, 8))
            .expect("the unmounted share is free again");
        drop(b);
    }

    #[tokio::test]
    async fn a_busy_mount_borrows_up_to_its_ceiling_and_never_takes_another_mounts_floor() {
        let pool = MemoryPool::new(64 * MIB);
        let busy = pool.reserve(share(8, 40, 0)).unwrap();
        let quiet = pool.reserve(share(8, 40, 0)).unwrap();
        let mut held = Vec::new();
        while let Some(permit) = busy.try_acquire(MIB) {
            held.push(permit);
        }
        assert_eq!(busy.held_bytes(), 40 * MIB, "floor plus borrowing, up to the ceiling");
        assert!(pool.held_bytes() <= pool.size_bytes());
        let first = quiet.acquire(8 * MIB).await;
        assert_eq!(quiet.held_bytes(), 8 * MIB, "the quiet mount still has its whole floor");
        drop(first);
        drop(held);
        assert_eq!(busy.held_bytes(), 0);
        assert_eq!(pool.held_bytes(), 0);
    }

    #[tokio::test]
    async fn a_writer_past_its_floor_waits_for_its_own_sends() {
        let pool = MemoryPool::new(8 * MIB);
        let only = pool.reserve(share(8, 8, 0)).unwrap();
        let first = only.acquire(8 * MIB).await;
        let waiting = tokio::spawn({
            let only = Arc::new(only);
            async move { only.acquire(MIB).await.bytes }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "no memory: the writer waits");
        drop(first);
        assert_eq!(waiting.await.unwrap(), MIB);
    }
}
