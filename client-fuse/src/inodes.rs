//! What this mount knows about inodes beyond the kernel's caches: the last registry
//! attributes it saw, and writes it has sent to data services but not yet recorded in the
//! registry (the new end of file, and which chunks still need an fsync).
//!
//! Invariant: an inode with pending writes or open handles is never evicted; the table is
//! otherwise bounded, and idle entries are dropped first.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use shoal_client::FileLayout;

use crate::writes::WriteErrors;
use shoal_client::proto as pb;

/// Chunks remembered as needing an fsync per inode before a commit is forced early.
pub const MAX_DIRTY_CHUNKS_PER_INODE: usize = 65_536;

#[derive(Default)]
pub struct InodeState {
    /// The registry's attributes, as last seen.
    pub attr: Option<pb::Attr>,
    pub layout: Option<FileLayout>,
    /// End of the furthest write not yet recorded in the registry (0: none).
    pub pending_end: u64,
    /// Chunks written since the last fsync of this inode.
    pub dirty_chunks: BTreeSet<u64>,
    pub first_unrecorded_write: Option<Instant>,
    pub open_handles: u32,
    /// Its last name was removed while open here: the registry keeps it for this session.
    pub orphaned: bool,
    /// Serializes commits (fsync, flush, size recording) of this inode.
    pub commit_lock: Arc<tokio::sync::Mutex<()>>,
    /// Failed background writes, reported to each open file description once.
    pub write_errors: Arc<WriteErrors>,
    /// For each chain written since the last fsync: its loss epoch at the first such write.
    pub loss_epochs: BTreeMap<u64, u64>,
}

impl InodeState {
    /// Nothing to report or commit: the entry may be dropped.
    fn idle(&self) -> bool {
        self.open_handles == 0 && self.pending_end == 0 && self.dirty_chunks.is_empty() && !self.write_errors.unseen()
    }
}

pub struct InodeTable {
    volume_id: u64,
    inner: Mutex<HashMap<u64, InodeState>>,
    max_entries: usize,
    /// Directory handles open here: while none is, removals need not ask which is open.
    open_directories: AtomicU64,
}

/// Writes of an inode taken for a commit.
pub struct PendingWrites {
    pub layout: Option<FileLayout>,
    pub chunks: Vec<u64>,
    /// Loss epochs of the chains written, as the first unsynced write saw them.
    pub loss_epochs: BTreeMap<u64, u64>,
    pub end: u64,
    pub orphaned: bool,
}

impl InodeTable {
    pub fn new(volume_id: u64, max_entries: usize) -> InodeTable {
        InodeTable {
            volume_id,
            inner: Mutex::new(HashMap::new()),
            max_entries: max_entries.max(16),
            open_directories: AtomicU64::new(0),
        }
    }

    fn with<T>(&self, ino: u64, change: impl FnOnce(&mut InodeState) -> T) -> T {
        let mut inner = self.inner.lock().expect("inode table lock poisoned");
        if inner.len() >= self.max_entries && !inner.contains_key(&ino) {
            let idle: Vec<u64> = inner
                .iter()
                .filter(|(_, state)| state.idle())
                .map(|(ino, _)| *ino)
                .take(self.max_entries / 4 + 1)
                .collect();
            for ino in idle {
                inner.remove(&ino);
            }
        }
        change(inner.entry(ino).or_default())
    }

    fn peek<T>(&self, ino: u64, read: impl FnOnce(Option<&InodeState>) -> T) -> T {
        let inner = self.inner.lock().expect("inode table lock poisoned");
        read(inner.get(&ino))
    }

    /// Records the registry's view of an inode; returns the size this mount knows (the
    /// registry's, or larger if it has unrecorded writes).
    pub fn remember(&self, attr: &pb::Attr) -> Option<u64> {
        let layout = FileLayout::of(self.volume_id, attr).ok().filter(FileLayout::is_placed);
        self.with(attr.ino, |state| {
            if state.layout.is_none() {
                state.layout = layout;
            }
            state.attr = Some(attr.clone());
            (state.pending_end > attr.size_bytes).then_some(state.pending_end)
        })
    }

    pub fn attr(&self, ino: u64) -> Option<pb::Attr> {
        self.peek(ino, |state| state.and_then(|s| s.attr.clone()))
    }

    pub fn local_size(&self, ino: u64) -> Option<u64> {
        self.peek(ino, |state| {
            state.and_then(|s| (s.pending_end > 0).then_some(s.pending_end))
        })
    }

    pub fn layout(&self, ino: u64) -> Option<FileLayout> {
        self.peek(ino, |state| state.and_then(|s| s.layout.clone()))
    }

    pub fn set_layout(&self, ino: u64, layout: FileLayout) {
        self.with(ino, |state| state.layout = Some(layout));
    }

    /// Records a write sent to the data services, with the loss epochs of the chains it
    /// went to. Returns true if the inode has so many unsynced chunks that it should be
    /// committed now.
    pub fn note_write(
        &self,
        ino: u64,
        end: u64,
        chunks: impl Iterator<Item = u64>,
        loss_epochs: &[(u64, u64)],
    ) -> bool {
        self.with(ino, |state| {
            state.pending_end = state.pending_end.max(end);
            state.dirty_chunks.extend(chunks);
            for (chain, epoch) in loss_epochs {
                state.loss_epochs.entry(*chain).or_insert(*epoch);
            }
            state.first_unrecorded_write.get_or_insert_with(Instant::now);
            state.dirty_chunks.len() >= MAX_DIRTY_CHUNKS_PER_INODE
        })
    }

    /// Takes the inode's unsynced chunks for a commit, with the end of file to record. The
    /// end stays pending (and keeps being reported) until [`InodeTable::recorded`] confirms it:
    /// in between, the registry still has the old size.
    pub fn take_pending(&self, ino: u64) -> PendingWrites {
        self.with(ino, |state| {
            state.first_unrecorded_write = None;
            PendingWrites {
                layout: state.layout.clone(),
                chunks: std::mem::take(&mut state.dirty_chunks).into_iter().collect(),
                loss_epochs: std::mem::take(&mut state.loss_epochs),
                end: state.pending_end,
                orphaned: state.orphaned,
            }
        })
    }

    /// The registry now records the file's end up to `end`: no longer pending, unless a
    /// newer write went further meanwhile.
    pub fn recorded(&self, ino: u64, end: u64) {
        self.with(ino, |state| {
            if state.pending_end <= end {
                state.pending_end = 0;
            }
        });
    }

    /// Puts back writes whose commit failed, so a later commit retries them.
    pub fn restore_pending(&self, ino: u64, pending: &PendingWrites) {
        self.with(ino, |state| {
            state.pending_end = state.pending_end.max(pending.end);
            state.dirty_chunks.extend(pending.chunks.iter().copied());
            for (chain, epoch) in &pending.loss_epochs {
                // The older epoch is the one the writes must be checked against.
                let kept = state.loss_epochs.entry(*chain).or_insert(*epoch);
                *kept = (*kept).min(*epoch);
            }
            if pending.end > 0 {
                state.first_unrecorded_write.get_or_insert_with(Instant::now);
            }
        });
    }

    /// After a truncation to `size` (recorded in the registry): no end is pending any more,
    /// and chunks past it need no fsync.
    pub fn truncated(&self, ino: u64, size: u64) {
        self.with(ino, |state| {
            state.pending_end = 0;
            if let Some(layout) = &state.layout {
                let keep = size.div_ceil(layout.chunk_size_bytes.max(1));
                state.dirty_chunks.retain(|index| *index < keep);
            }
            if state.dirty_chunks.is_empty() {
                state.loss_epochs.clear();
            }
        });
    }

    pub fn commit_lock(&self, ino: u64) -> Arc<tokio::sync::Mutex<()>> {
        self.with(ino, |state| state.commit_lock.clone())
    }

    pub fn write_errors(&self, ino: u64) -> Arc<WriteErrors> {
        self.with(ino, |state| state.write_errors.clone())
    }

    pub fn opened(&self, ino: u64) {
        self.with(ino, |state| state.open_handles += 1);
    }

    /// One handle closed; returns (handles still open, orphaned).
    pub fn closed(&self, ino: u64) -> (u32, bool) {
        self.with(ino, |state| {
            state.open_handles = state.open_handles.saturating_sub(1);
            (state.open_handles, state.orphaned)
        })
    }

    pub fn opened_directory(&self, ino: u64) {
        self.open_directories.fetch_add(1, Ordering::Relaxed);
        self.opened(ino);
    }

    pub fn closed_directory(&self, ino: u64) {
        // The kernel pairs every RELEASEDIR with an OPENDIR; a stray one must not wrap the
        // count (or bring down the mount), only be logged.
        let decremented = self
            .open_directories
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |open| open.checked_sub(1));
        if decremented.is_err() {
            tracing::warn!(ino, "a directory was released that was not open");
        }
        self.closed(ino);
    }

    pub fn any_directory_open(&self) -> bool {
        self.open_directories.load(Ordering::Relaxed) > 0
    }

    pub fn is_open(&self, ino: u64) -> bool {
        self.peek(ino, |state| state.is_some_and(|s| s.open_handles > 0))
    }

    pub fn mark_orphaned(&self, ino: u64) {
        self.with(ino, |state| state.orphaned = true);
    }

    pub fn is_orphaned(&self, ino: u64) -> bool {
        self.peek(ino, |state| state.is_some_and(|s| s.orphaned))
    }

    /// Inodes with writes older than `age` not yet recorded in the registry.
    pub fn stale_pending(&self, age: std::time::Duration) -> Vec<u64> {
        let inner = self.inner.lock().expect("inode table lock poisoned");
        inner
            .iter()
            .filter(|(_, s)| s.first_unrecorded_write.is_some_and(|at| at.elapsed() >= age))
            .map(|(ino, _)| *ino)
            .collect()
    }
}
