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
//! in-flight writes, and a failed background write is reported by the next write, fsync or
//! close of that file.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use shoal_client::{ClientError, DataClient, FileLayout, FsError};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A send in flight: the byte range it covers and its outcome, which several waiters can
/// await (a later overlapping send, a drain).
struct InFlight {
    start: u64,
    end: u64,
    done: Shared<BoxFuture<'static, Result<(), FsError>>>,
}

impl InFlight {
    fn finished(&self) -> bool {
        self.done.peek().is_some()
    }
}

/// A file's buffer is sent once it holds this much.
pub const FLUSH_BYTES: usize = 4 << 20;

/// Consecutive bytes not yet sent: where they start, the bytes, and their budget.
type Buffer = (u64, BytesMut, Vec<OwnedSemaphorePermit>);

#[derive(Default)]
struct FileWrites {
    buffer: Option<Buffer>,
    /// Where the file's chunks live (to send its buffer from anywhere).
    layout: Option<FileLayout>,
    in_flight: Vec<InFlight>,
    /// The first failure of a background write, until reported.
    error: Option<FsError>,
}

pub struct WriteBack {
    files: Mutex<HashMap<u64, FileWrites>>,
    budget: Arc<Semaphore>,
    budget_bytes: usize,
}

/// Permits are counted in KiB so that a large budget fits the semaphore's range.
const PERMIT_BYTES: usize = 1024;

fn permits_for(bytes: usize) -> u32 {
    bytes.div_ceil(PERMIT_BYTES) as u32
}

impl WriteBack {
    pub fn new(budget_bytes: usize) -> WriteBack {
        let budget_bytes = budget_bytes.max(2 * FLUSH_BYTES);
        WriteBack {
            files: Mutex::new(HashMap::new()),
            budget: Arc::new(Semaphore::new(budget_bytes / PERMIT_BYTES)),
            budget_bytes,
        }
    }

    pub fn budget_bytes(&self) -> usize {
        self.budget_bytes
    }

    /// Buffers `data` at `offset` of file `ino`; sends the buffer in the background when it
    /// is full or the new write does not continue it.
    pub async fn write(
        &self,
        data_client: &DataClient,
        layout: &FileLayout,
        ino: u64,
        offset: u64,
        data: Bytes,
    ) -> Result<(), ClientError> {
        let wanted = permits_for(data.len());
        let permit = match self.budget.clone().try_acquire_many_owned(wanted) {
            Ok(permit) => permit,
            Err(_) => {
                // The budget may be sitting in partly filled buffers of other files: send
                // them, so waiting here always ends.
                self.send_all_buffers(data_client);
                self.budget
                    .clone()
                    .acquire_many_owned(wanted)
                    .await
                    .expect("the write-back budget is never closed")
            }
        };
        let full = {
            let mut files = self.files.lock().expect("write-back lock poisoned");
            let file = files.entry(ino).or_default();
            reap(file);
            if let Some(error) = file.error.take() {
                return Err(ClientError::Fs(error));
            }
            let continues = file.buffer.as_ref().is_some_and(|(start, bytes, _)| {
                start + bytes.len() as u64 == offset && bytes.len() + data.len() <= FLUSH_BYTES
            });
            let mut full = None;
            if !continues {
                full = file.buffer.take();
            }
            file.layout = Some(layout.clone());
            let (_, bytes, permits) = file
                .buffer
                .get_or_insert_with(|| (offset, BytesMut::with_capacity(FLUSH_BYTES), Vec::new()));
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
        Ok(())
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
        let (client, layout) = (data_client.clone(), layout.clone());
        let mut files = self.files.lock().expect("write-back lock poisoned");
        let file = files.entry(ino).or_default();
        reap(file);
        let earlier: Vec<_> = file
            .in_flight
            .iter()
            .filter(|sent| sent.start < end && start < sent.end)
            .map(|sent| sent.done.clone())
            .collect();
        let done = async move {
            for overlapping in earlier {
                let _ = overlapping.await;
            }
            let result = client.write(&layout, start, bytes.freeze(), false).await;
            drop(permits);
            result.map_err(|error| FsError::new(error.errno(), error.to_string()))
        }
        .boxed()
        .shared();
        // Runs whether or not anyone waits for it.
        tokio::spawn(done.clone());
        file.in_flight.push(InFlight { start, end, done });
    }

    /// True if `ino` has bytes buffered or in flight.
    pub fn has_pending(&self, ino: u64) -> bool {
        self.files
            .lock()
            .expect("write-back lock poisoned")
            .get(&ino)
            .is_some_and(|f| f.buffer.is_some() || f.in_flight.iter().any(|t| !t.finished()))
    }

    /// Sends what `ino` has buffered and waits for all its writes to land.
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
                .map(|file| file.in_flight.iter().map(|sent| sent.done.clone()).collect())
                .unwrap_or_default()
        };
        for done in sends {
            let _ = done.await;
        }
        let mut files = self.files.lock().expect("write-back lock poisoned");
        let Some(file) = files.get_mut(&ino) else { return Ok(()) };
        reap(file);
        let error = file.error.take();
        if file.buffer.is_none() && file.in_flight.is_empty() {
            files.remove(&ino);
        }
        match error {
            Some(error) => Err(ClientError::Fs(error)),
            None => Ok(()),
        }
    }
}

/// Forgets finished sends, keeping the first failure among them to report.
fn reap(file: &mut FileWrites) {
    let mut still_running = Vec::with_capacity(file.in_flight.len());
    for sent in file.in_flight.drain(..) {
        match sent.done.peek() {
            None => still_running.push(sent),
            Some(Ok(())) => {}
            Some(Err(error)) => {
                if file.error.is_none() {
                    file.error = Some(error.clone());
                }
            }
        }
    }
    file.in_flight = still_running;
}
