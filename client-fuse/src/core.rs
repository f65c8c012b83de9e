//! State shared by every request of one mount, and the operations several requests share:
//! placing a file, committing its writes, and reading with read-ahead.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::FutureExt;
use shoal_client::proto as pb;
use shoal_client::{ClientError, DataClient, FileLayout, RegistryClient};

use crate::budget::{MountBudget, ShareRequest};
use crate::cache::{BLOCK_BYTES, ReadCache};
use crate::handles::HandleTable;
use crate::inodes::InodeTable;
use crate::writes::{MEMORY_PER_BUFFERED_BYTE, MIN_WRITE_FLOOR_BYTES};

/// Settings of one mount.
#[derive(Clone, Debug)]
pub struct FsConfig {
    /// How long the kernel may cache attributes and names.
    pub attr_ttl: Duration,
    pub entry_ttl: Duration,
    pub read_only: bool,
    /// Memory for read-ahead blocks (0 turns read-ahead off). (A mount's memory comes from
    /// its process's pool, `budget.rs`; these say what it asks for.)
    pub read_cache_bytes: u64,
    /// Most blocks read ahead of a sequential reader; None: one stripe of the file (see
    /// [`AUTO_READ_AHEAD_BLOCKS`]).
    pub read_ahead_blocks: Option<u64>,
    /// Most inodes remembered beyond those open or being written.
    pub max_inodes: usize,
    /// Most FUSE requests processed at once.
    pub max_in_flight: usize,
    /// Memory for written bytes not yet sent to the data services.
    pub write_buffer_bytes: usize,
    /// Let the kernel cache writes too (faster small writes; but the kernel then trusts its
    /// own file sizes, so growth by other clients is not seen until the file is dropped
    /// from its cache).
    pub kernel_writeback_cache: bool,
    /// When reads and listings update atime.
    pub atime: AtimeMode,
}

/// Blocks read ahead of a sequential reader when the mount does not say: a whole stripe
/// (chunk size times stripe width), so that every chain of the file is busy at once (with
/// less, a reader of a 4-wide stripe of 4 MiB chunks pulls from two data services at a
/// time), within these bounds.
pub const AUTO_READ_AHEAD_BLOCKS: std::ops::RangeInclusive<u64> = 8..=32;

/// When reads and listings update atime: the `noatime`, `relatime` and `strictatime` mount
/// options, with Linux's meaning.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AtimeMode {
    /// Never.
    NoAtime,
    /// When atime is not newer than mtime or ctime, or is a day old: one registry write per
    /// file after each change, so "was it read since it changed" still works.
    #[default]
    RelAtime,
    /// On every read and listing the mount serves (a registry write each).
    StrictAtime,
}

impl Default for FsConfig {
    fn default() -> Self {
        FsConfig {
            attr_ttl: Duration::from_secs(1),
            entry_ttl: Duration::from_secs(1),
            read_only: false,
            read_cache_bytes: 256 << 20,
            read_ahead_blocks: None,
            max_inodes: 100_000,
            max_in_flight: 1024,
            write_buffer_bytes: 256 << 20,
            kernel_writeback_cache: false,
            atime: AtimeMode::default(),
        }
    }
}

pub struct FsCore {
    pub runtime: tokio::runtime::Handle,
    pub data: DataClient,
    pub volume_id: u64,
    /// Identifies this mount to the registry (files it unlinks while open are kept for it).
    pub session_id: u64,
    pub config: FsConfig,
    pub inodes: InodeTable,
    pub handles: HandleTable,
    pub cache: Arc<ReadCache>,
    pub notifier: OnceLock<fuser::Notifier>,
    pub in_flight: Arc<tokio::sync::Semaphore>,
    pub capabilities: crate::ops::CapabilityCache,
    pub writeback: crate::writes::WriteBack,
}

impl FsConfig {
    /// The memory a mount of its own (`shoal mount`) sets aside: its whole write buffer as
    /// the floor, and its read-ahead cache.
    pub fn own_share(&self, session_threads: usize) -> ShareRequest {
        let write_bytes = self.write_buffer_memory_bytes();
        ShareRequest {
            write_floor_bytes: write_bytes,
            write_ceiling_bytes: write_bytes,
            read_cache_bytes: self.read_cache_bytes,
            session_bytes: session_memory_bytes(session_threads),
        }
    }

    /// Memory the write buffer takes when full (each byte is charged twice, see
    /// [`MEMORY_PER_BUFFERED_BYTE`]).
    pub fn write_buffer_memory_bytes(&self) -> u64 {
        (self.write_buffer_bytes as u64 * MEMORY_PER_BUFFERED_BYTE).max(MIN_WRITE_FLOOR_BYTES)
    }
}

/// Memory a mount's FUSE session holds for requests: a buffer of the largest request per
/// session thread.
pub fn session_memory_bytes(session_threads: usize) -> u64 {
    const PAGE_BYTES: u64 = 4096;
    session_threads.max(1) as u64 * (u64::from(crate::fs::MAX_IO_BYTES) + PAGE_BYTES)
}

impl FsCore {
    /// A mount's shared state; its buffers and cache live within `budget`.
    pub fn new(
        runtime: tokio::runtime::Handle,
        data: DataClient,
        volume_id: u64,
        config: FsConfig,
        budget: MountBudget,
    ) -> FsCore {
        let cache = Arc::new(ReadCache::new(budget.read_cache_bytes()));
        FsCore {
            runtime,
            data,
            volume_id,
            session_id: rand::random::<u64>() | 1,
            inodes: InodeTable::new(volume_id, config.max_inodes),
            handles: HandleTable::default(),
            cache: cache.clone(),
            notifier: OnceLock::new(),
            in_flight: Arc::new(tokio::sync::Semaphore::new(config.max_in_flight.max(1))),
            capabilities: Default::default(),
            writeback: crate::writes::WriteBack::new(budget, cache),
            config,
        }
    }

    pub fn registry(&self) -> &RegistryClient {
        self.data.registry()
    }

    /// The registry's attributes of `ino`, remembered; plus the size this mount knows.
    pub async fn fetch_attr(&self, ino: u64) -> Result<(pb::Attr, Option<u64>), ClientError> {
        match self.registry().get_attr(self.volume_id, ino).await {
            Ok(attr) => {
                let local = self.inodes.remember(&attr);
                Ok((attr, local))
            }
            // A file unlinked while open here lives on for this mount.
            Err(error) if self.inodes.is_orphaned(ino) => match self.inodes.attr(ino) {
                Some(mut attr) => {
                    attr.nlink = 0;
                    Ok((attr, self.inodes.local_size(ino)))
                }
                None => Err(error),
            },
            Err(error) => Err(error),
        }
    }

    /// The file's layout, placing it in the registry first if it has none yet.
    pub async fn layout(&self, ino: u64) -> Result<FileLayout, ClientError> {
        if let Some(layout) = self.inodes.layout(ino) {
            return Ok(layout);
        }
        let (attr, _) = self.fetch_attr(ino).await?;
        let layout = shoal_client::file::layout_of(&self.data, self.volume_id, &attr).await?;
        self.inodes.set_layout(ino, layout.clone());
        Ok(layout)
    }

    /// Makes this mount's writes to `ino` durable on every chain member and records the new
    /// end of file in the registry. Called by fsync, flush (close) and a background timer.
    pub async fn commit(&self, ino: u64, sync_data: bool) -> Result<(), ClientError> {
        let lock = self.inodes.commit_lock(ino);
        let _serial = lock.lock().await;
        self.commit_locked(ino, sync_data).await
    }

    /// Cuts or extends `ino` to `size_bytes`. Its buffered writes land first (a later
    /// extension must read zeros, not old bytes), under the commit lock so that no commit
    /// records an older end meanwhile. The registry then holds the exact size, so the end
    /// this mount had not yet recorded is settled without a registry write of its own.
    pub async fn truncate(&self, ino: u64, size_bytes: u64) -> Result<pb::Attr, ClientError> {
        let lock = self.inodes.commit_lock(ino);
        let _serial = lock.lock().await;
        self.drain(ino).await?;
        let (mut attr, local) = self.fetch_attr(ino).await?;
        // Chunks written past the recorded size must be cut as well.
        attr.size_bytes = attr.size_bytes.max(local.unwrap_or(0));
        let attr = shoal_client::file::truncate(&self.data, self.volume_id, &attr, size_bytes).await?;
        self.inodes.truncated(ino, size_bytes);
        self.cache.invalidate(ino);
        self.inodes.remember(&attr);
        Ok(attr)
    }

    /// fsync (`closer` None) and close (`closer`: the closing process's lock owner) of open
    /// file description `fh`: [`FsCore::commit`], then a write error of the file not yet
    /// reported to that caller.
    pub async fn commit_for(&self, ino: u64, fh: u64, closer: Option<u64>) -> Result<(), ClientError> {
        let committed = self.commit(ino, true).await;
        let unreported = self
            .handles
            .unreported_error(fh, closer, &self.inodes.write_errors(ino));
        committed?;
        match unreported {
            Some(error) => Err(ClientError::Fs(error)),
            None => Ok(()),
        }
    }

    /// [`FsCore::commit`], with the inode's commit lock already held.
    async fn commit_locked(&self, ino: u64, sync_data: bool) -> Result<(), ClientError> {
        self.drain(ino).await?;
        let pending = self.inodes.take_pending(ino);
        let result = async {
            if let Some(layout) = &pending.layout
                && sync_data
                && !pending.chunks.is_empty()
            {
                self.data.sync(layout, &pending.chunks).await?;
                if let Some(lost) = self.data.loss_since(&pending.loss_epochs) {
                    // The writes may be gone: a write error of the file, for every open
                    // file description to report once (they are not owed again).
                    tracing::warn!(ino, %lost, "unsynced writes may have been lost");
                    let error = shoal_client::FsError::new(shoal_client::Errno::EIO, lost);
                    self.inodes.write_errors(ino).record(error);
                }
            }
            if pending.end > 0 && !pending.orphaned {
                let attr = self.registry().extend_file(self.volume_id, ino, pending.end).await?;
                self.inodes.recorded(ino, pending.end);
                self.inodes.remember(&attr);
            }
            Ok(())
        }
        .await;
        if result.is_err() || !sync_data {
            // Chunks not (yet) synced stay owed to the next fsync; a failed commit also
            // leaves the end to record.
            self.inodes.restore_pending(ino, &owed(&pending, result.is_err()));
        }
        result
    }

    /// Waits until everything written to `ino` through this mount has reached the data
    /// services (reporting a background failure, if one happened).
    pub async fn drain(&self, ino: u64) -> Result<(), ClientError> {
        let layout = self.inodes.layout(ino);
        self.writeback.drain(&self.data, layout.as_ref(), ino).await
    }

    /// How many blocks to read ahead of a sequential reader of a file laid out as `layout`.
    fn read_ahead_blocks(&self, layout: &FileLayout) -> u64 {
        self.config.read_ahead_blocks.unwrap_or_else(|| {
            let stripe_bytes = layout.chunk_size_bytes.saturating_mul(layout.chain_ids.len() as u64);
            let (fewest, most) = AUTO_READ_AHEAD_BLOCKS.into_inner();
            (stripe_bytes / BLOCK_BYTES).clamp(fewest, most)
        })
    }

    /// Reads `offset..end` of `ino` (end already capped at the file size). Sequential readers
    /// go through the read-ahead cache; others read exactly what they asked for.
    pub async fn read_data(
        &self,
        ino: u64,
        fh: u64,
        offset: u64,
        end: u64,
        file_size: u64,
    ) -> Result<Bytes, ClientError> {
        if self.writeback.has_pending(ino) {
            // Read your own writes.
            self.drain(ino).await?;
        }
        let layout = match self.layout(ino).await {
            Ok(layout) => layout,
            Err(_) if !self.inodes.layout(ino).is_some_and(|l| l.is_placed()) => {
                // Never placed: nothing was ever written.
                return Ok(Bytes::from(vec![0u8; (end - offset) as usize]));
            }
            Err(error) => return Err(error),
        };
        let streak = self.handles.note_read(fh, offset, end);
        if streak < 2 || !self.cache.enabled() {
            if let Some(bytes) = self.cache.cached(ino, offset, end) {
                return Ok(bytes);
            }
            return self.data.read(&layout, offset, end - offset).await;
        }
        let first = offset / BLOCK_BYTES;
        let last = (end - 1) / BLOCK_BYTES;
        let ahead = u64::from(streak).min(self.read_ahead_blocks(&layout));
        let blocks_in_file = file_size.div_ceil(BLOCK_BYTES);
        let mut wanted = Vec::new();
        for block in first..=(last + ahead).min(blocks_in_file.saturating_sub(1)).max(last) {
            let data = self.data.clone();
            let layout = layout.clone();
            let start = block * BLOCK_BYTES;
            let length = BLOCK_BYTES.min(file_size.saturating_sub(start));
            let (fetch, new) = self.cache.get_or_fetch(ino, block, move || {
                async move { data.read(&layout, start, length).await.map_err(|e| e.errno().code()) }.boxed()
            });
            if block <= last {
                wanted.push((block, fetch));
            } else if new {
                // Drive the read-ahead even if nobody waits for it yet.
                self.runtime.spawn(async move {
                    let _ = fetch.await;
                });
            }
        }
        let single_block = wanted.len() == 1;
        let mut out = BytesMut::with_capacity((end - offset) as usize);
        for (block, fetch) in wanted {
            let bytes = fetch
                .await
                .map_err(|code| ClientError::Fs(shoal_client::FsError::new(errno_of(code), "read failed")))?;
            let block_start = block * BLOCK_BYTES;
            let from = offset.max(block_start) - block_start;
            let to = end.min(block_start + BLOCK_BYTES) - block_start;
            if (bytes.len() as u64) < to {
                // The block was fetched when the file was shorter: read directly.
                self.cache.invalidate(ino);
                return self.data.read(&layout, offset, end - offset).await;
            }
            if single_block {
                // Within one cached block: a view of it, not a copy.
                return Ok(bytes.slice(from as usize..to as usize));
            }
            out.extend_from_slice(&bytes[from as usize..to as usize]);
        }
        Ok(out.freeze())
    }
}

fn errno_of(code: i32) -> shoal_client::Errno {
    shoal_client::Errno::from_code(code).unwrap_or(shoal_client::Errno::EIO)
}

/// What a commit still owes afterwards: the chunks it took (it failed, or it did not sync
/// them), and the end of file if it failed.
fn owed(taken: &crate::inodes::PendingWrites, failed: bool) -> crate::inodes::PendingWrites {
    crate::inodes::PendingWrites {
        layout: taken.layout.clone(),
        chunks: taken.chunks.clone(),
        loss_epochs: taken.loss_epochs.clone(),
        end: if failed { taken.end } else { 0 },
        orphaned: taken.orphaned,
    }
}
