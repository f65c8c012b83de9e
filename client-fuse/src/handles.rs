//! Open file handles: what each open() asked for, and its read pattern for read-ahead.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use shoal_client::FsError;

use crate::writes::WriteErrors;

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
    /// The count of the file's write errors when this description was opened, and the
    /// counts fsync and each closing process have reported up to (see
    /// [`HandleTable::unreported_error`]).
    pub errors_at_open: u64,
    pub errors_fsynced: u64,
    pub errors_closed: Vec<(u64, u64)>,
}

/// Most processes per open file description whose closes are told apart (beyond that, the
/// oldest is forgotten and may be told an error again: never too few reports).
const MAX_CLOSERS_PER_HANDLE: usize = 64;

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
    /// A new open file description of `ino`; `errors` are the file's write errors, of
    /// which it will report those that nobody has reported before it opened.
    pub fn open(&self, ino: u64, sync_writes: bool, errors: &WriteErrors) -> u64 {
        let fh = self.next.fetch_add(1, Ordering::Relaxed);
        let handle = Handle {
            ino,
            sync_writes,
            next_offset: 0,
            streak: 0,
            errors_at_open: errors.sample(),
            errors_fsynced: 0,
            errors_closed: Vec::new(),
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

    /// A write error of the file not yet reported through this open file description:
    /// to its fsyncs once (`closer` None), and once to each process that closes it
    /// (`closer`: the kernel's lock owner of the closing process) unless an fsync reported
    /// it already. A close by a forked child (an exec closes inherited descriptors) must
    /// not take the error from the process that wrote.
    pub fn unreported_error(&self, fh: u64, closer: Option<u64>, errors: &WriteErrors) -> Option<FsError> {
        let mut map = self.map.lock().expect("handle lock poisoned");
        let handle = map.get_mut(&fh)?;
        let Some(owner) = closer else {
            handle.errors_fsynced = handle.errors_fsynced.max(handle.errors_at_open);
            let error = errors.check(&mut handle.errors_fsynced);
            if error.is_some() {
                // Reported through this description: its closes need not repeat it.
                let reported = handle.errors_fsynced;
                handle.errors_at_open = handle.errors_at_open.max(reported);
                for (_, seen) in &mut handle.errors_closed {
                    *seen = (*seen).max(reported);
                }
            }
            return error;
        };
        let position = match handle.errors_closed.iter().position(|(o, _)| *o == owner) {
            Some(position) => position,
            None => {
                if handle.errors_closed.len() >= MAX_CLOSERS_PER_HANDLE {
                    handle.errors_closed.remove(0);
                }
                handle.errors_closed.push((owner, handle.errors_at_open));
                handle.errors_closed.len() - 1
            }
        };
        errors.check(&mut handle.errors_closed[position].1)
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
        let fh = table.open(7, false, &WriteErrors::default());
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

#[cfg(test)]
mod error_tests {
    use super::*;
    use shoal_client::Errno;

    #[test]
    fn a_childs_close_does_not_take_the_error_from_the_writer() {
        let table = HandleTable::default();
        let errors = WriteErrors::default();
        let fh = table.open(7, false, &errors);
        let other = table.open(7, false, &errors);
        errors.record(FsError::new(Errno::EIO, "lost"));
        let (writer, child) = (Some(11), Some(12));
        assert!(
            table.unreported_error(fh, child, &errors).is_some(),
            "the child's exec-close is told"
        );
        assert!(
            table.unreported_error(fh, writer, &errors).is_some(),
            "and so is the writer's close"
        );
        assert!(table.unreported_error(fh, writer, &errors).is_none(), "once");
        assert!(
            table.unreported_error(other, None, &errors).is_some(),
            "fsync of another description"
        );
        assert!(table.unreported_error(other, None, &errors).is_none(), "once");
        assert!(
            table.unreported_error(other, writer, &errors).is_none(),
            "its close need not repeat it"
        );
    }
}
