//! Directory listings. Offsets the kernel sees: 1 is ".", 2 is "..", and an entry with
//! registry cookie c has offset c + 2. Cookies are stable while an entry exists, so a
//! listing resumed at any offset neither repeats nor skips entries that stay.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use fuser::{FileType, Generation, INodeNo, ReplyDirectory, ReplyDirectoryPlus};
use shoal_client::ClientError;
use shoal_client::proto as pb;

use super::fail;
use crate::attrs::{file_attr, file_type};
use crate::core::FsCore;

/// Entries fetched from the registry per call while filling one kernel buffer.
const PAGE_ENTRIES: u32 = 256;
/// Registry calls per kernel readdir request (a bound; the kernel asks again for more).
const MAX_PAGES_PER_REQUEST: usize = 64;
const FIRST_ENTRY_OFFSET: u64 = 2;

impl FsCore {
    async fn parent_of(&self, ino: u64) -> Result<pb::Attr, ClientError> {
        self.registry().lookup(self.volume_id, ino, b"..").await
    }

    async fn page(&self, ino: u64, after_cookie: u64, with_attrs: bool) -> Result<pb::ReadDirReply, ClientError> {
        self.registry()
            .read_dir(pb::ReadDirRequest {
                volume_id: self.volume_id,
                ino,
                after_cookie,
                max_entries: PAGE_ENTRIES,
                with_attrs,
            })
            .await
    }

    /// Hands the entries of `ino` after kernel offset `offset` to `add`, page by page, until
    /// `add` reports the kernel's buffer full or the directory ends.
    async fn each_entry(
        &self,
        ino: u64,
        offset: u64,
        with_attrs: bool,
        mut add: impl FnMut(&pb::DirEntry, u64) -> bool,
    ) -> Result<(), ClientError> {
        let mut after = offset.saturating_sub(FIRST_ENTRY_OFFSET);
        for _ in 0..MAX_PAGES_PER_REQUEST {
            let page = self.page(ino, after, with_attrs).await?;
            for entry in &page.entries {
                if add(entry, entry.cookie + FIRST_ENTRY_OFFSET) {
                    return Ok(());
                }
                after = entry.cookie;
            }
            if page.end_of_directory || page.entries.is_empty() {
                break;
            }
        }
        Ok(())
    }

    pub async fn readdir(&self, ino: u64, offset: u64, mut reply: ReplyDirectory) {
        if offset == 0 {
            self.accessed(ino).await;
        }
        let result = async {
            if offset < 1 && reply.add(INodeNo(ino), 1, FileType::Directory, ".") {
                return Ok(());
            }
            if offset < 2 {
                let parent = self.parent_of(ino).await?;
                if reply.add(INodeNo(parent.ino), 2, FileType::Directory, "..") {
                    return Ok(());
                }
            }
            self.each_entry(ino, offset, false, |entry, offset| {
                reply.add(
                    INodeNo(entry.ino),
                    offset,
                    file_type(entry.file_type),
                    OsStr::from_bytes(&entry.name),
                )
            })
            .await
        }
        .await;
        match result {
            Ok(()) => reply.ok(),
            Err(error) => reply.error(fail(&error)),
        }
    }

    pub async fn readdirplus(&self, ino: u64, offset: u64, mut reply: ReplyDirectoryPlus) {
        let ttl = self.config.attr_ttl;
        if offset == 0 {
            self.accessed(ino).await;
        }
        let result = async {
            if offset < 1 {
                let (attr, local) = self.fetch_attr(ino).await?;
                if reply.add(INodeNo(ino), 1, ".", &ttl, &file_attr(&attr, local), Generation(0)) {
                    return Ok(());
                }
            }
            if offset < 2 {
                let parent = self.parent_of(ino).await?;
                let local = self.inodes.remember(&parent);
                if reply.add(
                    INodeNo(parent.ino),
                    2,
                    "..",
                    &ttl,
                    &file_attr(&parent, local),
                    Generation(0),
                ) {
                    return Ok(());
                }
            }
            self.each_entry(ino, offset, true, |entry, offset| {
                // The registry sends attributes with every entry of a plus listing; skip any without.
                let Some(attr) = &entry.attr else { return false };
                let local = self.inodes.remember(attr);
                let name = OsStr::from_bytes(&entry.name);
                reply.add(
                    INodeNo(entry.ino),
                    offset,
                    name,
                    &ttl,
                    &file_attr(attr, local),
                    Generation(0),
                )
            })
            .await
        }
        .await;
        match result {
            Ok(()) => reply.ok(),
            Err(error) => reply.error(fail(&error)),
        }
    }
}
