//! The mount's write-back buffer: consecutive writes to a file are gathered into large
//! pieces (up to [`FLUSH_BYTES`]) and sent to the data services in the background, so an
//! application writing in small steps still moves data in large chain writes, and does not
//! wait for the chain on every write.
//!
//! Why here and not only in the kernel: the kernel's own write-back cache makes the kernel
//! trust its cached file size over the server's, so a file grown by another client would
//! keep its old size here until evicted; that breaks close-to-open consistency, so it is
//! an opt-in mount option and this buffer is the default.
//!
//! Invariant: buffered and in-flight bytes of all files together stay below the budget
//! (writers wait for room). Invariant: a send waits for every earlier send of the same file
//! whose range it overlaps, so overlapping writes land in the order they were made.
//! Invariant: a read, fsync, close or truncate of a file first drains its buffered and
//! in-flight writes. A failed background write is recorded in the file's [`WriteErrors`],
//! never consumed by whoever drains: every open file description of the file reports it
//! once, at its next fsync or close (Linux's `errseq_t`).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use shoal_client::{ClientError, DataClient, FileLayout, FsError};

use crate::budget::{BudgetPermit, MountBudget};
use crate::cache::ReadCache;

/// A send in flight: where its byte range ends, and its outcome, which several waiters can
/// await (a later overlapping send, a drain). Listed by [`SendKey`]; a send removes itself
/// when it has landed or failed.
struct InFlight {
    end: u64,
    done: Shared<BoxFuture<'static, Result<(), FsError>>>,
}

/// A file's buffer is sent once it holds this much.
pub const FLUSH_BYTES: usize = 4 << 20;
/// No send is longer: a buffer grows to at most [`FLUSH_BYTES`], and a single write that
/// starts one is no longer than FUSE's largest request.
pub const MAX_SEND_BYTES: usize = FLUSH_BYTES;
const _: () = assert!(crate::fs::MAX_IO_BYTES as usize <= MAX_SEND_BYTES);

/// Sends in flight are kept in two lists by length, so that finding the ones a new send
/// overlaps looks back only as far as the longest send of each list: many small random
/// writes in flight are not walked past for every new one.
const SEND_CLASS_BYTES: [usize; 2] = [64 << 10, MAX_SEND_BYTES];
const _: () = assert!(SEND_CLASS_BYTES[0] < SEND_CLASS_BYTES[1]);

/// Where a send is listed: its length class, its start, and its number (two sends may
/// start at one offset).
type SendKey = (usize, (u64, u64));

fn send_class(length_bytes: usize) -> usize {
    SEND_CLASS_BYTES
        .iter()
        .position(|bound| length_bytes <= *bound)
        .expect("no send is longer than MAX_SEND_BYTES")
}

/// Consecutive bytes not yet sent: where they start, the bytes, and their budget.
type Buffer = (u64, BytesMut, Vec<BudgetPermit>);

#[derive(Default)]
struct FileWrites {
    buffer: Option<Buffer>,
    /// Where the last buffered write ended: a write starting there continues a stream, and
    /// its buffer is made large at once (a random write's buffer is only its own size).
    stream_end: Option<u64>,
    /// Where the file's chunks live (to send its buffer from anywhere).
    layout: Option<FileLayout>,
    /// By length class (see [`SEND_CLASS_BYTES`]), then (start, send number).
    in_flight: [BTreeMap<(u64, u64), InFlight>; 2],
    /// Where failed sends are recorded.
    errors: Arc<WriteErrors>,
}

/// The write errors of one file, kept the way Linux's `errseq_t` keeps them: a count of
/// errors and the latest one. Each open file description remembers the count it has seen
/// and reports a newer error once; nothing else consumes it.
#[derive(Debug, Default)]
pub struct WriteErrors {
    state: Mutex<ErrorState>,
}

#[derive(Debug, Default)]
struct ErrorState {
    count: u64,
    latest: Option<FsError>,
    /// Some open file description has reported `latest`.
    seen: bool,
}

impl WriteErrors {
    pub fn record(&self, error: FsError) {
        let mut state = self.state.lock().expect("write error lock poisoned");
        state.count += 1;
        state.latest = Some(error);
        state.seen = false;
    }

    /// Where a new open file description starts: past every error someone has reported,
    /// but before one that nobody has seen yet (it may be the only one left to report it).
    pub fn sample(&self) -> u64 {
        let state = self.state.lock().expect("write error lock poisoned");
        if state.seen || state.count == 0 {
            state.count
        } else {
            state.count - 1
        }
    }

    /// The latest error, if one happened after `since`; moves `since` past it.
    pub fn check(&self, since: &mut u64) -> Option<FsError> {
        let mut state = self.state.lock().expect("write error lock poisoned");
        if state.count == *since {
            return None;
        }
        assert!(
            *since < state.count,
            "an open file description is ahead of its file's errors"
        );
        *since = state.count;
        state.seen = true;
        state.latest.clone()
    }

    /// An error nobody has reported yet.
    pub fn unseen(&self) -> bool {
        let state = self.state.lock().expect("write error lock poisoned");
        state.count > 0 && !state.seen
    }
}

type Files = Arc<Mutex<HashMap<u64, FileWrites>>>;

pub struct WriteBack {
    files: Files,
    /// Numbers sends, to tell apart two in flight from the same offset.
    sends: AtomicU64,
    budget: MountBudget,
    /// Read-ahead blocks fetched while a send was on its way hold older bytes: each send
    /// drops the file's blocks once it has landed.
    read_cache: Arc<ReadCache>,
}

/// Memory a written byte is charged. Chunk writes were gRPC messages, so a byte on its way
/// was in memory twice (its buffer and the encoded message), and the budget charged both
/// from the start. Frames now send it from its buffer, so the charge is conservative (a
/// mount's write buffer holds half of what it could); it stays until the agent's resident
/// memory under load is measured again against its budget.
pub const MEMORY_PER_BUFFERED_BYTE: u64 = 2;

/// The smallest write-back floor: two full buffers, so one can fill while one is sent.
pub const MIN_WRITE_FLOOR_BYTES: u64 = 2 * FLUSH_BYTES as u64 * MEMORY_PER_BUFFERED_BYTE;

impl WriteBack {
    pub fn new(budget: MountBudget, read_cache: Arc<ReadCache>) -> WriteBack {
        assert!(
            budget.floor_bytes() >= MIN_WRITE_FLOOR_BYTES,
            "a write-back floor below two buffers would serialize sends"
        );
        WriteBack {
            files: Files::default(),
            sends: AtomicU64::new(0),
            budget,
            read_cache,
        }
    }

    /// This mount's share of memory, and what it holds now.
    pub fn budget(&self) -> &MountBudget {
        &self.budget
    }

    /// Buffers `data` at `offset` of file `ino`; sends the buffer in the background when it
    /// is full or the new write does not continue it. A send that fails is recorded in
    /// `errors`.
    pub async fn write(
        &self,
        data_client: &DataClient,
        layout: &FileLayout,
        ino: u64,
        offset: u64,
        data: Bytes,
        errors: &Arc<WriteErrors>,
    ) {
        let wanted = data.len() as u64 * MEMORY_PER_BUFFERED_BYTE;
        let permit = match self.budget.try_acquire(wanted) {
            Some(permit) => permit,
            None => {
                // The budget may be sitting in partly filled buffers of other files: send
                // them, so waiting here always ends.
                self.send_all_buffers(data_client);
                self.budget.acquire(wanted).await
            }
        };
        let full = {
            let mut files = self.files.lock().expect("write-back lock poisoned");
            let file = files.entry(ino).or_default();
            file.errors = errors.clone();
            let continues = file.buffer.as_ref().is_some_and(|(start, bytes, _)| {
                start + bytes.len() as u64 == offset && bytes.len() + data.len() <= FLUSH_BYTES
            });
            let mut full = None;
            if !continues {
                full = file.buffer.take();
            }
            file.layout = Some(layout.clone());
            let capacity = if file.stream_end == Some(offset) {
                FLUSH_BYTES.max(data.len())
            } else {
                data.len()
            };
            file.stream_end = Some(offset + data.len() as u64);
            let (_, bytes, permits) = file
                .buffer
                .get_or_insert_with(|| (offset, BytesMut::with_capacity(capacity), Vec::new()));
            bytes.extend_from_slice(&data);
            permits.push(permit);
            if full.is_none() && bytes.len() >= FLUSH_BYTES {
                full = file.buffer.take();
            }
            full
        };
        if let Some(buffer) = full {
            self.send(data_client, layout, ino, buffer);
        }
    }

    fn send_all_buffers(&self, data_client: &DataClient) {
        let buffers: Vec<(u64, FileLayout, Buffer)> = {
            let mut files = self.files.lock().expect("write-back lock poisoned");
            files
                .iter_mut()
                .filter_map(|(ino, file)| {
                    let layout = file.layout.clone()?;
                    Some((*ino, layout, file.buffer.take()?))
                })
                .collect()
        };
        for (ino, layout, buffer) in buffers {
            self.send(data_client, &layout, ino, buffer);
        }
    }

    fn send(&self, data_client: &DataClient, layout: &FileLayout, ino: u64, buffer: Buffer) {
        let (start, bytes, permits) = buffer;
        let end = start + bytes.len() as u64;
        assert!(
            !bytes.is_empty() && bytes.len() <= MAX_SEND_BYTES,
            "a send of {} bytes",
            bytes.len()
        );
        let (client, layout, read_cache) = (data_client.clone(), layout.clone(), self.read_cache.clone());
        let class = send_class(bytes.len());
        let key: SendKey = (class, (start, self.sends.fetch_add(1, Ordering::Relaxed)));
        let files_for_send = self.files.clone();
        let mut files = self.files.lock().expect("write-back lock poisoned");
        let file = files.entry(ino).or_default();
        let errors = file.errors.clone();
        // A listed send starts at most its class's length before the end of one it overlaps.
        let earlier: Vec<_> = file
            .in_flight
            .iter()
            .zip(SEND_CLASS_BYTES)
            .flat_map(|(sends, longest)| sends.range((start.saturating_sub(longest as u64), 0)..(end, 0)))
            .filter(|(_, sent)| start < sent.end)
            .map(|(_, sent)| sent.done.clone())
            .collect();
        let done = async move {
            for overlapping in earlier {
                let _ = overlapping.await;
            }
            let result = client.write(&layout, start, bytes.freeze(), false).await;
            read_cache.invalidate(ino);
            drop(permits);
            forget_send(&files_for_send, ino, key);
            result.map_err(|error| {
                let error = FsError::new(error.errno(), error.to_string());
                tracing::warn!(ino = layout.ino, start, end, %error, "a buffered write failed; the file's next fsync or close reports it");
                errors.record(error.clone());
                error
            })
        }
        .boxed()
        .shared();
        file.in_flight[key.0].insert(
            key.1,
            InFlight {
                end,
                done: done.clone(),
            },
        );
        drop(files);
        // Runs whether or not anyone waits for it.
        tokio::spawn(done);
    }

    /// True if `ino` has bytes buffered or in flight.
    pub fn has_pending(&self, ino: u64) -> bool {
        self.files
            .lock()
            .expect("write-back lock poisoned")
            .get(&ino)
            .is_some_and(|f| f.buffer.is_some() || f.in_flight.iter().any(|sends| !sends.is_empty()))
    }

    /// Sends what `ino` has buffered and waits for all its writes to land or fail (failures
    /// are in the file's [`WriteErrors`], not in the result).
    ///
    /// The sends stay listed while they run, so a write arriving meanwhile still orders
    /// itself after every overlapping one.
    pub async fn drain(
        &self,
        data_client: &DataClient,
        layout: Option<&FileLayout>,
        ino: u64,
    ) -> Result<(), ClientError> {
        let buffer = {
            let mut files = self.files.lock().expect("write-back lock poisoned");
            let Some(file) = files.get_mut(&ino) else { return Ok(()) };
            file.buffer.take()
        };
        if let Some(buffer) = buffer {
            match layout {
                Some(layout) => self.send(data_client, layout, ino, buffer),
                None => {
                    return Err(ClientError::Config(format!(
                        "inode {ino} has buffered writes but no layout"
                    )));
                }
            }
        }
        let sends: Vec<_> = {
            let files = self.files.lock().expect("write-back lock poisoned");
            files
                .get(&ino)
                .map(|file| {
                    file.in_flight
                        .iter()
                        .flat_map(|sends| sends.values())
                        .map(|sent| sent.done.clone())
                        .collect()
                })
                .unwrap_or_default()
        };
        for done in sends {
            let _ = done.await;
        }
        let mut files = self.files.lock().expect("write-back lock poisoned");
        if files
            .get(&ino)
            .is_some_and(|file| file.buffer.is_none() && file.in_flight.iter().all(BTreeMap::is_empty))
        {
            files.remove(&ino);
        }
        Ok(())
    }
}

/// Forgets a send that has landed or failed (a failure is recorded in the file's
/// [`WriteErrors`] by then); waiters that took its outcome earlier still get it.
fn forget_send(files: &Files, ino: u64, key: SendKey) {
    let mut files = files.lock().expect("write-back lock poisoned");
    if let Some(file) = files.get_mut(&ino) {
        let forgotten = file.in_flight[key.0].remove(&key.1);
        assert!(forgotten.is_some(), "a send listed once is forgotten once");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_client::Errno;

    #[test]
    fn every_open_file_description_reports_each_error_once() {
        let errors = WriteErrors::default();
        let mut before = errors.sample();
        let mut also_before = errors.sample();
        assert_eq!(errors.check(&mut before), None, "no error yet");
        errors.record(FsError::new(Errno::EIO, "chain unavailable"));
        assert!(errors.unseen());
        let mut opened_while_unseen = errors.sample();
        assert_eq!(errors.check(&mut before).map(|e| e.errno), Some(Errno::EIO));
        assert_eq!(errors.check(&mut before), None, "reported once to each");
        assert!(!errors.unseen());
        assert_eq!(errors.check(&mut also_before).map(|e| e.errno), Some(Errno::EIO));
        assert!(
            errors.check(&mut opened_while_unseen).is_some(),
            "opened before anyone saw the error: it may be the only one left to report it"
        );
        let mut opened_after = errors.sample();
        assert_eq!(errors.check(&mut opened_after), None, "opened after it was reported");
        errors.record(FsError::new(Errno::ENOSPC, "disk full"));
        assert_eq!(errors.check(&mut opened_after).map(|e| e.errno), Some(Errno::ENOSPC));
        assert_eq!(
            errors.check(&mut before).map(|e| e.errno),
            Some(Errno::ENOSPC),
            "the latest error"
        );
    }
}
