//! Open file handles: what each open() asked for, and its read pattern for read-ahead.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Largest forward jump between reads that still counts as sequential (one read-ahead block).
const SEQUENTIAL_GAP_BYTES: u64 = crate::cache::BLOCK_BYTES;

#[derive(Clone, Debug)]
pub struct Handle {
    pub ino: u64,
    /// O_SYNC / O_DSYNC: every write durable before it returns.
    pub sync_writes: bool,
    /// Where the next read would start if reading sequentially.
    pub next_offset: u64,
    /// Consecutive sequential reads.
    pub streak: u32,
}

pub struct HandleTable {
    next: AtomicU64,
    map: Mutex<HashMap<u64, Handle>>,
}

impl Default for HandleTable {
    fn default() -> Self {
        HandleTable {
            next: AtomicU64::new(1),
            map: Mutex::new(HashMap::new()),
        }
    }
}

impl HandleTable {
    pub fn open(&self, ino: u64, sync_writes: bool) -> u64 {
        let fh = self.next.fetch_add(1, Ordering::Relaxed);
        let handle = Handle {
            ino,
            sync_writes,
            next_offset: 0,
            streak: 0,
        };
        // Bounded by the kernel: a handle exists per open file description.
        self.map.lock().expect("handle lock poisoned").insert(fh, handle);
        fh
    }

    pub fn get(&self, fh: u64) -> Option<Handle> {
        self.map.lock().expect("handle lock poisoned").get(&fh).cloned()
    }

    /// Records a read at `offset..end`; returns the number of sequential reads in a row.
    pub fn note_read(&self, fh: u64, offset: u64, end: u64) -> u32 {
        let mut map = self.map.lock().expect("handle lock poisoned");
        let Some(handle) = map.get_mut(&fh) else { return 0 };
        // A reader whose pages are partly in the kernel's cache skips forward over them: a
        // short forward jump still counts as sequential.
        let skipped = offset.checked_sub(handle.next_offset);
        handle.streak = if skipped.is_some_and(|gap| gap <= SEQUENTIAL_GAP_BYTES) {
            handle.streak.saturating_add(1)
        } else {
            0
        };
        handle.next_offset = end;
        handle.streak
    }

    pub fn close(&self, fh: u64) -> Option<Handle> {
        self.map.lock().expect("handle lock poisoned").remove(&fh)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequential_detection_tolerates_short_forward_gaps_only() {
        let table = HandleTable::default();
        let fh = table.open(7, false);
        assert_eq!(table.note_read(fh, 0, 4096), 1, "a first read at 0 continues from 0");
        assert_eq!(table.note_read(fh, 4096, 8192), 2, "contiguous");
        assert_eq!(
            table.note_read(fh, 8192 + 65_536, 8192 + 69_632),
            3,
            "pages cached by the kernel skipped"
        );
        assert_eq!(table.note_read(fh, 0, 4096), 0, "a backward jump is random");
        assert_eq!(
            table.note_read(fh, 4096 + SEQUENTIAL_GAP_BYTES + 1, 4096 + SEQUENTIAL_GAP_BYTES + 2),
            0,
            "a long jump is random"
        );
    }
}
