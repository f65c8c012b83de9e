//! File operations that touch both the registry and the data services, in the order that
//! keeps them consistent: data first, then the size.

use bytes::Bytes;
use shoal_proto::registry as pb;

use crate::ClientError;
use crate::data::{DataClient, FileLayout};

/// The file's layout, placing it first if it was created before any chain existed.
pub async fn layout_of(data: &DataClient, volume_id: u64, attr: &pb::Attr) -> Result<FileLayout, ClientError> {
    let layout = FileLayout::of(volume_id, attr)?;
    if layout.is_placed() {
        return Ok(layout);
    }
    let placed = data.registry().assign_layout(volume_id, attr.ino).await?;
    FileLayout::of(volume_id, &placed)
}

/// Writes `bytes` at `offset` and records the new end in the registry. Returns the file's
/// attributes after the write.
pub async fn write_at(
    data: &DataClient,
    volume_id: u64,
    attr: &pb::Attr,
    offset: u64,
    bytes: Bytes,
    sync: bool,
) -> Result<pb::Attr, ClientError> {
    let layout = layout_of(data, volume_id, attr).await?;
    let end = offset + bytes.len() as u64;
    data.write(&layout, offset, bytes, sync).await?;
    data.registry().extend_file(volume_id, attr.ino, end).await
}

/// Reads up to `length` bytes at `offset`, stopping at the end of the file.
pub async fn read_at(
    data: &DataClient,
    volume_id: u64,
    attr: &pb::Attr,
    offset: u64,
    length: u64,
) -> Result<Bytes, ClientError> {
    let end = (offset + length).min(attr.size_bytes);
    if end <= offset {
        return Ok(Bytes::new());
    }
    let layout = FileLayout::of(volume_id, attr)?;
    data.read(&layout, offset, end - offset).await
}

/// Sets the file's size. Shrinking removes the data past the new end first, so a later
/// extension reads zeros there, never old bytes.
pub async fn truncate(
    data: &DataClient,
    volume_id: u64,
    attr: &pb::Attr,
    size_bytes: u64,
) -> Result<pb::Attr, ClientError> {
    if size_bytes < attr.size_bytes {
        let layout = FileLayout::of(volume_id, attr)?;
        data.truncate(&layout, attr.size_bytes, size_bytes).await?;
    }
    data.registry()
        .set_attr(pb::SetAttrRequest {
            volume_id,
            ino: attr.ino,
            size_bytes: Some(size_bytes),
            ..Default::default()
        })
        .await
}
