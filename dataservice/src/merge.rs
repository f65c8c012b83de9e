//! Group commit at the head: client writes to one chunk that wait for its lock there are
//! merged into one chain write.
//!
//! Why: a chunk has one write in flight per chain (see `locks`), so under small random
//! writes requests queue at the head for a whole chain round trip each. Applied one by one,
//! every member pays an engine batch, a file write and a hop per request; merged, the chain
//! pays them once for all that waited. Large writes are never merged (they gain nothing and
//! would lose their page-aligned buffers).
//!
//! Also here: [`ranges`], the one reading of a write's ranges (`extents`) with every check
//! a received write gets before anything of it is stored.
//!
//! Invariant: a queued write is applied at most once, and never after its caller gave up:
//! its entry leaves the queue when it is taken into a batch or when its [`Ticket`] drops.
//! Invariant: the ranges of a merged write are sorted and share no 4 KiB block, as
//! `store::WriteOp` requires; writes that would overlap wait for the next round.
//! Invariant: every queued write is taken by its own caller's round if by none before it,
//! so no entry waits for a round that will not come.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use shoal_proto::data as pb;
use shoal_proto::{MAX_DATA_PAYLOAD_BYTES, MAX_WRITE_EXTENTS};
use tokio::sync::oneshot;
use tonic::Status;

use crate::status::invalid;
use crate::store::{self, BLOCK_SIZE_BYTES, ChunkId, MAX_CHUNK_SIZE_BYTES, MAX_WRITE_BLOCKS};

/// Writes at least this large are applied alone.
pub const MAX_MERGED_WRITE_BYTES: usize = store::MIN_DIRECT_WRITE_BYTES as usize;
const _: () = assert!(MAX_MERGED_WRITE_BYTES <= MAX_DATA_PAYLOAD_BYTES);

/// One range of a received write: where it goes in the chunk, where its bytes and CRCs are
/// in the request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteRange {
    pub offset: u64,
    pub data: Range<usize>,
    pub crcs: Range<usize>,
}

fn blocks(offset: u64, length: u64) -> (u64, u64) {
    let block = BLOCK_SIZE_BYTES as u64;
    (offset / block, (offset + length).div_ceil(block))
}

/// The ranges of `request`, checked: within the chunk and the limits, sorted, sharing no
/// block, their lengths adding up to the payload and their CRCs to its checksums (whether
/// the pieces match their CRCs is [`verify`]'s).
pub fn ranges(chunk: &ChunkId, request: &pb::WriteRequest) -> Result<Vec<WriteRange>, Status> {
    let total = request.data.len();
    if total == 0 || total > MAX_DATA_PAYLOAD_BYTES || request.extents.len() > MAX_WRITE_EXTENTS {
        return Err(invalid(format!(
            "{chunk}: a write carries 1 to {MAX_DATA_PAYLOAD_BYTES} bytes in at most {MAX_WRITE_EXTENTS} ranges, \
             not {total} in {}",
            request.extents.len()
        )));
    }
    if request.chunk_size_bytes > MAX_CHUNK_SIZE_BYTES {
        return Err(invalid(format!(
            "{chunk}: chunks hold at most {MAX_CHUNK_SIZE_BYTES} bytes, not {}",
            request.chunk_size_bytes
        )));
    }
    let extents = match request.extents.is_empty() {
        true => vec![pb::Extent {
            offset: request.offset,
            length_bytes: total as u64,
        }],
        false => request.extents.clone(),
    };
    let mut out = Vec::with_capacity(extents.len());
    let (mut data_at, mut crcs_at, mut blocks_used, mut previous_end_block) = (0usize, 0usize, 0u64, 0u64);
    for extent in &extents {
        let length = extent.length_bytes;
        let fits = length > 0
            && length <= (total - data_at) as u64
            && extent
                .offset
                .checked_add(length)
                .is_some_and(|end| end <= request.chunk_size_bytes);
        let (first_block, end_block) = if fits { blocks(extent.offset, length) } else { (0, 0) };
        if !fits || (!out.is_empty() && first_block < previous_end_block) {
            return Err(invalid(format!(
                "{chunk}: range of {length} bytes at {} is empty, overlaps an earlier range, or does not fit \
                 the payload or a chunk of {} bytes",
                extent.offset, request.chunk_size_bytes
            )));
        }
        let pieces = (length as usize).div_ceil(BLOCK_SIZE_BYTES);
        let range = WriteRange {
            offset: extent.offset,
            data: data_at..data_at + length as usize,
            crcs: crcs_at..crcs_at + pieces,
        };
        (data_at, crcs_at) = (range.data.end, range.crcs.end);
        blocks_used += end_block - first_block;
        previous_end_block = end_block;
        out.push(range);
    }
    if data_at != total || crcs_at != request.payload_crcs.len() || blocks_used > MAX_WRITE_BLOCKS as u64 {
        return Err(invalid(format!(
            "{chunk}: ranges cover {data_at} of {total} payload bytes with {crcs_at} of {} checksums in {blocks_used} \
             blocks (at most {MAX_WRITE_BLOCKS})",
            request.payload_crcs.len()
        )));
    }
    Ok(out)
}

/// Checks every piece of `request`'s `ranges` against its CRC.
pub fn verify(chunk: &ChunkId, request: &pb::WriteRequest, ranges: &[WriteRange]) -> Result<(), Status> {
    for range in ranges {
        let crcs = &request.payload_crcs[range.crcs.clone()];
        if let Err(piece) = store::verify_payload(&request.data[range.data.clone()], crcs) {
            return Err(Status::data_loss(format!(
                "{chunk}: payload piece {piece} of the range at {} does not match its checksum (damaged in \
                 transit); resend",
                range.offset
            )));
        }
    }
    Ok(())
}

/// The store's view of `request`'s checked ranges.
pub fn store_extents<'a>(request: &'a pb::WriteRequest, ranges: &[WriteRange]) -> Vec<store::Extent<'a>> {
    ranges
        .iter()
        .map(|range| store::Extent {
            offset: range.offset,
            data: &request.data[range.data.clone()],
            payload_crcs: &request.payload_crcs[range.crcs.clone()],
        })
        .collect()
}

/// True if `request` may wait in the queue to be merged with others.
pub fn mergeable(request: &pb::WriteRequest) -> bool {
    request.extents.is_empty() && request.chunk_version == 0 && request.data.len() < MAX_MERGED_WRITE_BYTES
}

/// A merged write's outcome: the chunk version it made, or why it was refused.
pub type Outcome = Result<u64, Status>;

struct Queued {
    id: u64,
    request: pb::WriteRequest,
    reply: oneshot::Sender<Outcome>,
}

type Table = Mutex<HashMap<ChunkId, Vec<Queued>>>;

/// Client writes waiting at the head, per chunk.
#[derive(Default)]
pub struct WriteQueue {
    next_id: AtomicU64,
    table: Arc<Table>,
}

/// A queued write's place: its outcome arrives here. Dropping it takes the write out of
/// the queue if no batch has taken it yet.
pub struct Ticket {
    id: u64,
    chunk: ChunkId,
    table: Arc<Table>,
    outcome: Option<oneshot::Receiver<Outcome>>,
}

impl Ticket {
    /// Waits for the write's outcome. The batch that took it always answers, unless its
    /// task died.
    pub async fn outcome(&mut self) -> Outcome {
        let receiver = self.outcome.as_mut().expect("a ticket is awaited once");
        let outcome = receiver.await.unwrap_or_else(|_| {
            Err(Status::internal(
                "the merged write this one joined was abandoned; retry",
            ))
        });
        self.outcome = None;
        outcome
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut table = self.table.lock().expect("write queue poisoned");
        if let Some(queue) = table.get_mut(&self.chunk) {
            queue.retain(|queued| queued.id != self.id);
            if queue.is_empty() {
                table.remove(&self.chunk);
            }
        }
    }
}

/// Writes taken from the queue to be applied as one, and where their outcome goes.
pub struct Batch {
    pub request: pb::WriteRequest,
    pub replies: Replies,
}

/// Where a batch's outcome goes: every caller whose write it took.
pub struct Replies(Vec<oneshot::Sender<Outcome>>);

impl Batch {
    pub fn writes(&self) -> usize {
        self.replies.0.len()
    }
}

impl Replies {
    pub fn answer(self, outcome: Outcome) {
        for reply in self.0 {
            // A caller that gave up meanwhile no longer listens.
            let _ = reply.send(outcome.clone());
        }
    }
}

impl WriteQueue {
    pub fn enqueue(&self, chunk: ChunkId, request: pb::WriteRequest) -> Ticket {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (reply, outcome) = oneshot::channel();
        let mut table = self.table.lock().expect("write queue poisoned");
        table.entry(chunk).or_default().push(Queued { id, request, reply });
        Ticket {
            id,
            chunk,
            table: self.table.clone(),
            outcome: Some(outcome),
        }
    }

    /// The round of `ticket`'s caller, who holds the chunk's lock: its own write if still
    /// queued, with every queued write that can join it. None if a round before took it.
    pub fn take_batch(&self, ticket: &Ticket) -> Option<Batch> {
        let mut table = self.table.lock().expect("write queue poisoned");
        let queue = table.get_mut(&ticket.chunk)?;
        let own = queue.iter().position(|queued| queued.id == ticket.id)?;
        let first = queue.remove(own);
        let mut taken = vec![first];
        let mut bytes = taken[0].request.data.len();
        let mut index = 0;
        while index < queue.len() && taken.len() < MAX_WRITE_EXTENTS {
            let candidate = &queue[index].request;
            if joins(&taken, candidate, bytes) {
                bytes += candidate.data.len();
                taken.push(queue.remove(index));
            } else {
                index += 1;
            }
        }
        if queue.is_empty() {
            table.remove(&ticket.chunk);
        }
        drop(table);
        Some(merge(taken))
    }
}

/// True if `candidate` can be applied together with `taken` (all mergeable and for the same
/// chain version; no shared block; within the limits of one write).
fn joins(taken: &[Queued], candidate: &pb::WriteRequest, bytes: usize) -> bool {
    let first = &taken[0].request;
    let span = |request: &pb::WriteRequest| blocks(request.offset, request.data.len() as u64);
    let (from, to) = span(candidate);
    let used: u64 = taken.iter().map(|q| span(&q.request)).map(|(a, b)| b - a).sum();
    mergeable(first)
        && mergeable(candidate)
        && candidate.chain_id == first.chain_id
        && candidate.chain_version == first.chain_version
        && candidate.chunk_size_bytes == first.chunk_size_bytes
        && bytes + candidate.data.len() <= MAX_DATA_PAYLOAD_BYTES
        && used + (to - from) <= MAX_WRITE_BLOCKS as u64
        && taken.iter().all(|q| {
            let (a, b) = span(&q.request);
            to <= a || b <= from
        })
}

/// One request for `taken`: their ranges sorted by offset, bytes and CRCs in that order.
fn merge(mut taken: Vec<Queued>) -> Batch {
    if taken.len() == 1 {
        let only = taken.pop().expect("one write");
        return Batch {
            request: only.request,
            replies: Replies(vec![only.reply]),
        };
    }
    taken.sort_by_key(|queued| queued.request.offset);
    let bytes: usize = taken.iter().map(|q| q.request.data.len()).sum();
    let mut data = BytesMut::with_capacity(bytes);
    let mut request = pb::WriteRequest {
        data: Default::default(),
        payload_crcs: Vec::new(),
        extents: Vec::with_capacity(taken.len()),
        offset: 0,
        ..taken[0].request.clone()
    };
    let mut replies = Vec::with_capacity(taken.len());
    for queued in taken {
        let part = queued.request;
        request.extents.push(pb::Extent {
            offset: part.offset,
            length_bytes: part.data.len() as u64,
        });
        data.extend_from_slice(&part.data);
        request.payload_crcs.extend_from_slice(&part.payload_crcs);
        request.sync |= part.sync;
        replies.push(queued.reply);
    }
    request.data = data.freeze();
    assert_eq!(request.data.len(), bytes, "a merged write carries every byte it took");
    Batch {
        request,
        replies: Replies(replies),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHUNK: ChunkId = ChunkId {
        volume_id: 1,
        ino: 2,
        index: 0,
    };

    fn write(offset: u64, data: &[u8]) -> pb::WriteRequest {
        pb::WriteRequest {
            chain_id: 7,
            chain_version: 1,
            chunk_size_bytes: 1 << 20,
            offset,
            payload_crcs: store::payload_crcs(data),
            data: bytes::Bytes::copy_from_slice(data),
            ..Default::default()
        }
    }

    #[test]
    fn queued_writes_merge_sorted_and_blocks_apart() {
        let queue = WriteQueue::default();
        let own = queue.enqueue(CHUNK, write(8192, &[1; 4096]));
        let _low = queue.enqueue(CHUNK, write(0, &[2; 100]));
        // Shares block 2 with the first: waits for the next round.
        let shares = queue.enqueue(CHUNK, write(8192 + 4096 - 1, &[3; 2]));
        let batch = queue.take_batch(&own).expect("own write still queued");
        assert_eq!(batch.writes(), 2);
        let ranges = ranges(&CHUNK, &batch.request).expect("a merged write passes the checks");
        assert_eq!(ranges.iter().map(|r| r.offset).collect::<Vec<_>>(), vec![0, 8192]);
        assert_eq!(&batch.request.data[..100], &[2; 100][..]);
        // The round that took them answers; the left one is its own caller's next round.
        assert!(queue.take_batch(&own).is_none());
        let rest = queue.take_batch(&shares).expect("left for its own round");
        assert_eq!(rest.writes(), 1);
        assert!(rest.request.extents.is_empty());
    }

    #[test]
    fn a_dropped_ticket_leaves_the_queue() {
        let queue = WriteQueue::default();
        let gone = queue.enqueue(CHUNK, write(0, &[1; 10]));
        let own = queue.enqueue(CHUNK, write(4096, &[1; 10]));
        drop(gone);
        assert_eq!(queue.take_batch(&own).map(|b| b.writes()), Some(1));
        assert!(queue.table.lock().unwrap().is_empty());
    }

    #[test]
    fn bad_ranges_are_refused() {
        let mut request = write(0, &[5; 8192]);
        request.extents = vec![
            pb::Extent {
                offset: 4096,
                length_bytes: 4096,
            },
            pb::Extent {
                offset: 0,
                length_bytes: 4096,
            },
        ];
        assert!(ranges(&CHUNK, &request).is_err(), "unsorted");
        request.extents[1].offset = 4096 * 3;
        request.extents[1].length_bytes = 100;
        assert!(
            ranges(&CHUNK, &request).is_err(),
            "lengths do not add up to the payload"
        );
        request.extents[1].length_bytes = 4096;
        assert_eq!(ranges(&CHUNK, &request).map(|r| r.len()).ok(), Some(2));
        request.extents[1].offset = (1 << 20) - 10;
        assert!(ranges(&CHUNK, &request).is_err(), "past the chunk's end");
        request.extents[1].offset = 4096 * 3;
        request.payload_crcs[1] ^= 1;
        let checked = ranges(&CHUNK, &request).unwrap();
        assert_eq!(
            verify(&CHUNK, &request, &checked).unwrap_err().code(),
            tonic::Code::DataLoss
        );
    }
}
