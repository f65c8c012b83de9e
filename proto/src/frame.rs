//! The framed data transport: chunk bytes next to protobuf, not inside it.
//!
//! Why: a gRPC message with a `bytes` field costs two user-space copies of the payload per
//! hop (tonic gathers the HTTP/2 DATA frames into its decode buffer; prost copies the field
//! into its encode buffer), plus the buffer growth around them: about a seventh of a chain
//! member's CPU when the profile was taken. Here a call is a small protobuf header followed
//! by the raw bytes, which are read straight into the buffer that is checksummed, written to
//! the chunk file and forwarded down the chain.
//!
//! A connection starts with the client's [`PREFACE`]. The data service tells it from HTTP/2
//! (whose connection preface begins `PRI `) by its first bytes, so both transports share one
//! port and one registered address, and a gateway's tunnel carries either. Then the client
//! sends a request frame and reads its reply frame, as often as it likes: one call at a time
//! per connection (callers keep a pool of connections for parallel calls).
//!
//! A frame is a 16-byte head, then `header_len` bytes of protobuf, then `payload_len` bytes:
//!
//! ```text
//! byte 0      kind (FrameKind)
//! bytes 1..4  zero
//! bytes 4..8  header_len, u32 little-endian
//! bytes 8..12 payload_len, u32 little-endian
//! bytes 12..16 CRC-32 of bytes 0..12 and of the header
//! ```
//!
//! The payload is covered by the CRCs the header carries (`payload_crcs` of a write or a
//! read reply), which every hop verifies; the head CRC catches a connection that lost its
//! framing before a length read from garbage is trusted.
//!
//! Invariant: a frame's lengths are checked against [`MAX_HEADER_BYTES`] and
//! [`crate::MAX_DATA_PAYLOAD_BYTES`] before anything is allocated for it.

use std::alloc::Layout;
use std::io::{self, IoSlice};
use std::ptr::NonNull;

use bytes::buf::UninitSlice;
use bytes::{BufMut, Bytes};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::data::{CallStatus, StatusEntry};

/// What a client sends first on a framed connection.
pub const PREFACE: [u8; 8] = *b"SHOALDF1";

/// Size of a frame's head.
pub const HEAD_BYTES: usize = 16;

/// Largest protobuf header of a frame. A write's header carries one CRC (at most 5 bytes
/// as a varint) per 4 KiB of its payload, at most 24 bytes per extent of a merged write,
/// plus a few fixed fields.
pub const MAX_HEADER_BYTES: usize = 64 << 10;
const _: () =
    assert!(crate::MAX_DATA_PAYLOAD_BYTES / 4096 * 5 + crate::MAX_WRITE_EXTENTS * 24 + 1024 <= MAX_HEADER_BYTES);

/// What a frame carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    /// Header: a `WriteRequest` whose `data` is empty; payload: the data.
    Write = 1,
    /// Header: a `ReadRequest`; no payload.
    Read = 2,
    /// As `Write`, for a request with `extents` (a merged write): its own kind so that a
    /// data service that does not know extents refuses it instead of writing the ranges
    /// as one.
    WriteExtents = 3,
    /// A successful reply. Header: the call's reply message (a `ReadReply` with `data`
    /// empty); payload: a read's data.
    Reply = 129,
    /// A failed call. Header: a `CallStatus`; no payload.
    Failed = 130,
}

impl FrameKind {
    fn from_byte(byte: u8) -> Option<FrameKind> {
        [
            FrameKind::Write,
            FrameKind::Read,
            FrameKind::WriteExtents,
            FrameKind::Reply,
            FrameKind::Failed,
        ]
        .into_iter()
        .find(|kind| *kind as u8 == byte)
    }
}

/// One frame as read from a connection.
#[derive(Debug)]
pub struct Frame {
    pub kind: FrameKind,
    pub header: Bytes,
    pub payload: Bytes,
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

fn head_crc(head: &[u8], header: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&head[..12]);
    hasher.update(header);
    hasher.finalize()
}

fn encode_head(kind: FrameKind, header: &[u8], payload_len: usize) -> [u8; HEAD_BYTES] {
    assert!(
        header.len() <= MAX_HEADER_BYTES,
        "a frame header of {} bytes",
        header.len()
    );
    assert!(
        payload_len <= crate::MAX_DATA_PAYLOAD_BYTES,
        "a frame payload of {payload_len} bytes"
    );
    let mut head = [0u8; HEAD_BYTES];
    head[0] = kind as u8;
    head[4..8].copy_from_slice(&(header.len() as u32).to_le_bytes());
    head[8..12].copy_from_slice(&(payload_len as u32).to_le_bytes());
    let crc = head_crc(&head, header);
    head[12..16].copy_from_slice(&crc.to_le_bytes());
    head
}

/// Reads one frame. `Ok(None)`: the peer closed the connection cleanly between frames.
pub async fn read_frame<R: AsyncRead + Unpin>(reader: &mut R) -> io::Result<Option<Frame>> {
    let mut head = [0u8; HEAD_BYTES];
    let first = reader.read(&mut head).await?;
    if first == 0 {
        return Ok(None);
    }
    reader.read_exact(&mut head[first..]).await?;
    let kind = FrameKind::from_byte(head[0]).ok_or_else(|| invalid(format!("unknown frame kind {}", head[0])))?;
    let header_len = u32::from_le_bytes(head[4..8].try_into().expect("4 bytes")) as usize;
    let payload_len = u32::from_le_bytes(head[8..12].try_into().expect("4 bytes")) as usize;
    if head[1..4] != [0, 0, 0] || header_len > MAX_HEADER_BYTES || payload_len > crate::MAX_DATA_PAYLOAD_BYTES {
        return Err(invalid(format!(
            "frame head out of bounds (header {header_len} bytes, at most {MAX_HEADER_BYTES}; \
             payload {payload_len}, at most {})",
            crate::MAX_DATA_PAYLOAD_BYTES
        )));
    }
    let mut header = vec![0u8; header_len];
    reader.read_exact(&mut header).await?;
    let stored = u32::from_le_bytes(head[12..16].try_into().expect("4 bytes"));
    if head_crc(&head, &header) != stored {
        return Err(invalid("frame head or header fails its checksum".into()));
    }
    let payload = read_payload(reader, payload_len).await?;
    Ok(Some(Frame {
        kind,
        header: Bytes::from(header),
        payload,
    }))
}

/// Reads exactly `length` bytes into a fresh page-aligned buffer, without zeroing it first.
async fn read_payload<R: AsyncRead + Unpin>(reader: &mut R, length: usize) -> io::Result<Bytes> {
    if length == 0 {
        return Ok(Bytes::new());
    }
    let mut payload = AlignedBuf::with_capacity(length);
    // Each pass reads at least one byte or fails, so this ends within `length` passes.
    while payload.len < length {
        let wanted = (length - payload.len) as u64;
        let read = (&mut *reader).take(wanted).read_buf(&mut payload).await?;
        if read == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("connection closed {} bytes into a {length}-byte payload", payload.len),
            ));
        }
    }
    assert_eq!(payload.len, length, "a payload read past its frame");
    Ok(Bytes::from_owner(payload))
}

/// Alignment of every payload read from a frame: a page, so a data service can hand a
/// received write to the disk as it is, past the page cache (O_DIRECT).
pub const PAYLOAD_ALIGN_BYTES: usize = 4096;

/// A fixed-capacity, page-aligned byte buffer, filled front to back.
///
/// Invariant: bytes `..len` are initialized; `len <= capacity`.
struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
    capacity: usize,
}

// SAFETY: the buffer owns its allocation and hands out no aliases but through `&self` /
// `&mut self`.
unsafe impl Send for AlignedBuf {}
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    fn layout(capacity: usize) -> Layout {
        Layout::from_size_align(capacity, PAYLOAD_ALIGN_BYTES).expect("payload sizes are bounded")
    }

    fn with_capacity(capacity: usize) -> AlignedBuf {
        assert!(
            capacity > 0 && capacity <= crate::MAX_DATA_PAYLOAD_BYTES,
            "a payload buffer of {capacity} bytes"
        );
        let layout = Self::layout(capacity);
        // SAFETY: the layout's size is not zero (asserted above).
        let ptr = unsafe { std::alloc::alloc(layout) };
        let Some(ptr) = NonNull::new(ptr) else {
            std::alloc::handle_alloc_error(layout)
        };
        AlignedBuf { ptr, len: 0, capacity }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `with_capacity` with this very layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), Self::layout(self.capacity)) }
    }
}

impl AsRef<[u8]> for AlignedBuf {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: bytes `..len` are initialized (the type's invariant).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

// SAFETY: `chunk_mut` exposes exactly the unfilled tail `len..capacity`, and
// `advance_mut` moves `len` only within it.
unsafe impl BufMut for AlignedBuf {
    fn remaining_mut(&self) -> usize {
        self.capacity - self.len
    }

    unsafe fn advance_mut(&mut self, count: usize) {
        assert!(count <= self.capacity - self.len, "advanced past the buffer's end");
        self.len += count;
    }

    fn chunk_mut(&mut self) -> &mut UninitSlice {
        // SAFETY: the range lies within the allocation; it may be uninitialized, which
        // `UninitSlice` allows.
        unsafe { UninitSlice::from_raw_parts_mut(self.ptr.as_ptr().add(self.len), self.capacity - self.len) }
    }
}

/// Writes one frame: head and header and payload in as few system calls as the socket
/// allows, the payload straight from the caller's buffer.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    writer: &mut W,
    kind: FrameKind,
    header: &[u8],
    payload: &[u8],
) -> io::Result<()> {
    let head = encode_head(kind, header, payload.len());
    let mut parts: [&[u8]; 3] = [&head, header, payload];
    let total: usize = parts.iter().map(|part| part.len()).sum();
    let mut written_total = 0usize;
    // Each pass writes at least one byte or fails, so this ends within `total` passes.
    while written_total < total {
        let slices = parts.map(IoSlice::new);
        let written = writer.write_vectored(&slices).await?;
        if written == 0 {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "connection accepts no more bytes",
            ));
        }
        written_total += written;
        let mut left = written;
        for part in &mut parts {
            let step = left.min(part.len());
            *part = &part[step..];
            left -= step;
        }
    }
    writer.flush().await
}

/// A refused call as it travels in a [`FrameKind::Failed`] frame: its code, message and
/// ASCII metadata, so the caller sees the same `tonic::Status` a gRPC call would give.
pub fn status_to_wire(status: &tonic::Status) -> CallStatus {
    let metadata = status
        .metadata()
        .iter()
        .filter_map(|entry| match entry {
            tonic::metadata::KeyAndValueRef::Ascii(key, value) => Some(StatusEntry {
                key: key.as_str().to_string(),
                value: value.to_str().ok()?.to_string(),
            }),
            tonic::metadata::KeyAndValueRef::Binary(..) => None,
        })
        .collect();
    CallStatus {
        code: status.code() as i32,
        message: status.message().to_string(),
        metadata,
    }
}

/// The `tonic::Status` a [`CallStatus`] stands for. Entries that are not valid metadata
/// are dropped (the code and message still say what failed).
pub fn status_from_wire(call: CallStatus) -> tonic::Status {
    let mut metadata = tonic::metadata::MetadataMap::new();
    for entry in call.metadata {
        let key = tonic::metadata::AsciiMetadataKey::from_bytes(entry.key.as_bytes());
        let value = entry.value.parse::<tonic::metadata::AsciiMetadataValue>();
        if let (Ok(key), Ok(value)) = (key, value) {
            metadata.insert(key, value);
        }
    }
    tonic::Status::with_metadata(tonic::Code::from_i32(call.code), call.message, metadata)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn round_trip(kind: FrameKind, header: &[u8], payload: &[u8]) -> Frame {
        let mut wire = Vec::new();
        write_frame(&mut wire, kind, header, payload).await.unwrap();
        assert_eq!(wire.len(), HEAD_BYTES + header.len() + payload.len());
        read_frame(&mut wire.as_slice()).await.unwrap().expect("a frame")
    }

    #[tokio::test]
    async fn frames_round_trip() {
        let payload: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let frame = round_trip(FrameKind::Write, b"header", &payload).await;
        assert_eq!(frame.kind, FrameKind::Write);
        assert_eq!(&frame.header[..], b"header");
        assert_eq!(&frame.payload[..], &payload[..]);
        assert_eq!(
            frame.payload.as_ptr() as usize % PAYLOAD_ALIGN_BYTES,
            0,
            "payloads are page-aligned"
        );
        let empty = round_trip(FrameKind::Reply, b"", b"").await;
        assert!(empty.header.is_empty() && empty.payload.is_empty());
    }

    #[tokio::test]
    async fn a_clean_close_between_frames_is_not_an_error() {
        assert!(read_frame(&mut &b""[..]).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn damaged_or_oversized_heads_are_refused() {
        let mut wire = Vec::new();
        write_frame(&mut wire, FrameKind::Read, b"abc", b"").await.unwrap();
        let mut flipped = wire.clone();
        flipped[HEAD_BYTES + 1] ^= 1;
        let error = read_frame(&mut flipped.as_slice()).await.unwrap_err();
        assert!(error.to_string().contains("checksum"), "{error}");
        let mut huge = wire.clone();
        huge[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        let error = read_frame(&mut huge.as_slice()).await.unwrap_err();
        assert!(error.to_string().contains("out of bounds"), "{error}");
        let mut unknown = wire.clone();
        unknown[0] = 7;
        assert!(read_frame(&mut unknown.as_slice()).await.is_err());
        let truncated = &wire[..wire.len() - 1];
        assert!(read_frame(&mut &truncated[..]).await.is_err());
    }

    #[tokio::test]
    async fn a_payload_cut_short_is_an_error() {
        let mut wire = Vec::new();
        write_frame(&mut wire, FrameKind::Write, b"h", &[7u8; 5000])
            .await
            .unwrap();
        wire.truncate(wire.len() - 10);
        let error = read_frame(&mut wire.as_slice()).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn statuses_keep_code_message_and_metadata() {
        let mut status = tonic::Status::failed_precondition("stale chain");
        status
            .metadata_mut()
            .insert(crate::STALE_CHAIN_METADATA_KEY, "7".parse().unwrap());
        let back = status_from_wire(status_to_wire(&status));
        assert_eq!(back.code(), tonic::Code::FailedPrecondition);
        assert_eq!(back.message(), "stale chain");
        assert_eq!(back.metadata().get(crate::STALE_CHAIN_METADATA_KEY).unwrap(), "7");
    }
}
