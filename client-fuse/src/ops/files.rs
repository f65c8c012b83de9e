//! File contents: create, open, read, write, flush, fsync, release, fallocate.
//!
//! Writes go to the data services as they arrive (the kernel's write-back cache has
//! already gathered them into pieces of up to 1 MiB); the new end of file is recorded in the
//! registry on flush, fsync and by a timer, and flush and fsync also make the written
//! chunks durable on every chain member. Close-to-open: open fetches fresh attributes and
//! drops the kernel's cached pages if the file changed since this mount last saw it.

use bytes::Bytes;
use fuser::{Errno, FileHandle, FopenFlags, Generation, ReplyCreate, ReplyData, ReplyEmpty, ReplyOpen, ReplyWrite};
use shoal_client::ClientError;
use shoal_client::proto as pb;

use super::entries::{Caller, NewEntry};
use super::fail;
use super::privileges::Privilege;
use crate::attrs::file_attr;
use crate::core::FsCore;

/// Largest piece written at once when zeroing a range.
const ZERO_PIECE_BYTES: u64 = 1 << 20;

/// One WRITE request, as the kernel sent it.
pub struct WriteRequest {
    pub ino: u64,
    pub fh: u64,
    pub offset: u64,
    pub data: Bytes,
    /// The kernel asks for the set-id bits to go (a direct write without CAP_FSETID).
    pub kill_set_id: bool,
    /// The file was opened with O_DIRECT: the kernel's page cache was bypassed.
    pub direct: bool,
    pub caller: Caller,
}

fn sync_flags(flags: i32) -> bool {
    flags & (libc::O_SYNC | libc::O_DSYNC) != 0
}

impl FsCore {
    fn open_flags(&self, flags: i32, keep_cache: bool) -> FopenFlags {
        if flags & libc::O_DIRECT != 0 {
            FopenFlags::FOPEN_DIRECT_IO
        } else if keep_cache {
            FopenFlags::FOPEN_KEEP_CACHE
        } else {
            FopenFlags::empty()
        }
    }

    pub async fn create(&self, entry: NewEntry, flags: i32, reply: ReplyCreate) {
        if self.config.read_only {
            return reply.error(Errno::EROFS);
        }
        let request = pb::CreateRequest {
            volume_id: self.volume_id,
            parent: entry.parent,
            name: entry.name,
            file_type: pb::FileType::Regular as i32,
            mode: entry.mode,
            uid: entry.caller.uid,
            gid: entry.caller.gid,
            rdev: 0,
            exclusive: flags & libc::O_EXCL != 0,
        };
        match self.registry().create(request).await {
            Ok(attr) => {
                let local = self.inodes.remember(&attr);
                let errors = self.inodes.write_errors(attr.ino);
                let fh = self.handles.open(attr.ino, sync_flags(flags), &errors);
                self.inodes.opened(attr.ino);
                reply.created(
                    &self.config.attr_ttl,
                    &file_attr(&attr, local),
                    Generation(0),
                    FileHandle(fh),
                    self.open_flags(flags, true),
                );
            }
            Err(error) => reply.error(fail(&error)),
        }
    }

    pub async fn open(&self, ino: u64, flags: i32, reply: ReplyOpen) {
        let before = self.inodes.attr(ino);
        let (attr, _) = match self.fetch_attr(ino).await {
            Ok(found) => found,
            Err(error) => return reply.error(fail(&error)),
        };
        let unchanged = before.as_ref().is_some_and(|b| {
            b.mtime_ns == attr.mtime_ns && b.size_bytes == attr.size_bytes && b.ctime_ns == attr.ctime_ns
        });
        let keep_cache = unchanged && !self.atime_wanted(&attr);
        if !unchanged {
            self.cache.invalidate(ino);
            if before.is_some()
                && let Some(notifier) = self.notifier.get()
            {
                // Another client changed the file: the kernel's pages and attributes of it
                // are stale (close-to-open consistency).
                let _ = notifier.inval_inode(fuser::INodeNo(ino), 0, 0);
            }
        }
        let fh = self
            .handles
            .open(ino, sync_flags(flags), &self.inodes.write_errors(ino));
        self.inodes.opened(ino);
        reply.opened(FileHandle(fh), self.open_flags(flags, keep_cache));
    }

    pub async fn read(&self, ino: u64, fh: u64, offset: u64, size: u32, reply: ReplyData) {
        let result = async {
            let known = match (self.inodes.attr(ino), self.inodes.local_size(ino)) {
                (Some(attr), local) => attr.size_bytes.max(local.unwrap_or(0)),
                (None, _) => {
                    let (attr, local) = self.fetch_attr(ino).await?;
                    attr.size_bytes.max(local.unwrap_or(0))
                }
            };
            let end = (offset + u64::from(size)).min(known);
            if end <= offset {
                return Ok(Bytes::new());
            }
            self.read_data(ino, fh, offset, end, known).await
        }
        .await;
        if result.is_ok() {
            self.accessed(ino).await;
        }
        match result {
            Ok(bytes) => reply.data(&bytes),
            Err(error) => reply.error(fail(&error)),
        }
    }

    /// Writes through the write-back buffer, or straight to the chain (after draining the
    /// buffer, to keep the order) when the write must be durable on return.
    async fn write_bytes(&self, ino: u64, offset: u64, bytes: Bytes, sync: bool) -> Result<(), ClientError> {
        let layout = self.layout(ino).await?;
        let end = offset + bytes.len() as u64;
        let chunk = layout.chunk_size_bytes.max(1);
        let (first, last) = (offset / chunk, (end - 1) / chunk);
        // Before the bytes leave: a loss after this point must fail the next fsync.
        let loss_epochs = self.data.loss_epochs(&layout, first..=last).await?;
        self.cache.invalidate(ino);
        if sync {
            self.drain(ino).await?;
            let stored = self.data.write(&layout, offset, bytes, true).await;
            // Read-ahead may have fetched the range while the write was on its way.
            self.cache.invalidate(ino);
            stored?;
        } else {
            let errors = self.inodes.write_errors(ino);
            self.writeback
                .write(&self.data, &layout, ino, offset, bytes, &errors)
                .await;
        }
        if self.inodes.note_write(ino, end, first..=last, &loss_epochs) {
            self.commit(ino, true).await?;
        }
        Ok(())
    }

    pub async fn write(&self, request: WriteRequest, reply: ReplyWrite) {
        if self.config.read_only {
            return reply.error(Errno::EROFS);
        }
        let WriteRequest { ino, fh, offset, .. } = request;
        let length = request.data.len() as u32;
        if length == 0 {
            return reply.written(0);
        }
        let sync = self.handles.get(fh).is_some_and(|h| h.sync_writes);
        let result = async {
            if request.kill_set_id {
                self.drop_set_id_bits(ino, request.caller, Privilege::Lacking).await?;
            }
            self.write_bytes(ino, offset, request.data, sync).await?;
            if sync {
                // Like fsync: earlier background failures of this file are reported too.
                self.commit_for(ino, fh, None).await?;
            }
            if request.direct {
                self.invalidate_kernel_pages(ino, offset, u64::from(length));
            }
            Ok::<(), ClientError>(())
        }
        .await;
        match result {
            Ok(()) => reply.written(length),
            Err(error) => reply.error(fail(&error)),
        }
    }

    /// Drops the kernel's cached pages of a range a direct write just changed (the kernel
    /// does not when the file system serves direct I/O itself), so that a buffered read
    /// through another descriptor never returns bytes older than a completed direct write.
    /// The bytes are already readable from this mount when this runs.
    fn invalidate_kernel_pages(&self, ino: u64, offset_bytes: u64, length_bytes: u64) {
        if let Some(notifier) = self.notifier.get() {
            let (offset, length) = (offset_bytes as i64, length_bytes as i64);
            if let Err(error) = notifier.inval_inode(fuser::INodeNo(ino), offset, length) {
                tracing::debug!(ino, %error, "could not drop cached pages after a direct write");
            }
        }
    }

    /// close() (`closer`: the closing process's lock owner) and fsync() (None): the file's
    /// writes become durable and its size visible to other clients; a write of the file
    /// that failed in the background and was not reported to this caller yet fails the call.
    pub async fn flush(&self, ino: u64, fh: u64, closer: Option<u64>, reply: ReplyEmpty) {
        match self.commit_for(ino, fh, closer).await {
            Ok(()) => reply.ok(),
            Err(error) => reply.error(fail(&error)),
        }
    }

    pub async fn release(&self, ino: u64, fh: u64, reply: ReplyEmpty) {
        self.handles.close(fh);
        let (still_open, orphaned) = self.inodes.closed(ino);
        if let Err(error) = self.commit(ino, true).await {
            tracing::warn!(ino, %error, "writes of a closed file could not be committed");
        }
        if still_open == 0 && orphaned {
            // The last handle of a file unlinked while open: its data can go now.
            let request = pb::ReleaseOrphanRequest {
                volume_id: self.volume_id,
                ino,
            };
            if let Err(error) = self.registry().release_orphan(request).await {
                tracing::warn!(ino, %error, "could not release an unlinked file; its session lease will");
            }
        }
        reply.ok();
    }

    pub async fn fallocate(&self, ino: u64, offset: u64, length: u64, mode: i32, caller: Caller, reply: ReplyEmpty) {
        const KEEP_SIZE: i32 = libc::FALLOC_FL_KEEP_SIZE;
        const PUNCH_HOLE: i32 = libc::FALLOC_FL_PUNCH_HOLE;
        const ZERO_RANGE: i32 = libc::FALLOC_FL_ZERO_RANGE;
        if self.config.read_only {
            return reply.error(Errno::EROFS);
        }
        let result = async {
            self.drop_set_id_bits(ino, caller, Privilege::Unknown).await?;
            self.drain(ino).await?;
            let (attr, local) = self.fetch_attr(ino).await?;
            let size = attr.size_bytes.max(local.unwrap_or(0));
            let end = offset + length;
            let zero = mode & (PUNCH_HOLE | ZERO_RANGE) != 0;
            if mode & !(KEEP_SIZE | PUNCH_HOLE | ZERO_RANGE) != 0 || (mode & PUNCH_HOLE != 0 && mode & KEEP_SIZE == 0) {
                return Err(ClientError::Fs(shoal_client::FsError::new(
                    shoal_client::Errno::ENOTSUP,
                    format!("fallocate mode {mode:#x} is not supported"),
                )));
            }
            if zero {
                let zero_end = if mode & KEEP_SIZE != 0 { end.min(size) } else { end };
                let mut at = offset;
                while at < zero_end {
                    let piece = (zero_end - at).min(ZERO_PIECE_BYTES);
                    self.write_bytes(ino, at, Bytes::from(vec![0u8; piece as usize]), false)
                        .await?;
                    at += piece;
                }
            }
            if mode & KEEP_SIZE == 0 && end > size {
                // Space is not reserved ahead; the file just grows (holes read as zeros).
                self.inodes.note_write(ino, end, std::iter::empty(), &[]);
            }
            Ok(())
        }
        .await;
        match result {
            Ok(()) => reply.ok(),
            Err(error) => reply.error(fail(&error)),
        }
    }
}
