//! Open file handles: what each open() asked for, and its read pattern for read-ahead.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

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
        handle.streak = if offset == handle.next_offset {
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
