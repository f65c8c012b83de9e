//! Operations that remove a name: unlink and rmdir, and the link bookkeeping rename shares.

use shoal_engine::ScanControl;
use shoal_proto::errno::Errno;

use super::{Namespace, NsError, NsResult, validate};
use crate::keys::{self, SPACE_NAMESPACE};
use crate::limits::MAX_XATTRS_PER_INODE;
use crate::records::{Dentry, FileType, GarbageRecord, Inode, OrphanRecord};

impl Namespace<'_, '_> {
    /// Removes a name. With `keep_for_session`, a regular file losing its last link keeps
    /// its data as an orphan of that mount session instead of becoming garbage.
    pub(super) fn unlink(&mut self, parent: u64, name: &[u8], keep_for_session: Option<u64>) -> NsResult<(u64, u32)> {
        validate::entry_name(name)?;
        let mut parent_inode = self.directory(parent)?;
        let dentry = self.existing_entry(parent, name)?;
        if dentry.file_type == FileType::Directory {
            return Err(NsError::fs(
                Errno::EISDIR,
                format!(
                    "volume {}: {:?} in directory {parent} is a directory; use rmdir",
                    self.volume_id(),
                    String::from_utf8_lossy(name)
                ),
            ));
        }
        self.remove_entry(parent, name, &dentry);
        parent_inode.mtime_ns = self.now_ns;
        parent_inode.ctime_ns = self.now_ns;
        self.store_inode(parent, &parent_inode);
        let remaining = self.drop_link_keeping(dentry.ino, keep_for_session)?;
        Ok((dentry.ino, remaining))
    }

    /// The session holding an orphan closed it: its chunks become garbage.
    pub(super) fn release_orphan(&mut self, ino: u64) -> NsResult<()> {
        let key = keys::orphan(self.volume_id(), ino);
        let Some(orphan) = self.txn.get_record::<OrphanRecord>(SPACE_NAMESPACE, &key)? else {
            return Ok(());
        };
        self.txn.delete(SPACE_NAMESPACE, key);
        let garbage = GarbageRecord {
            ino,
            layout: orphan.layout,
            size_bytes: orphan.size_bytes,
            deleted_ns: self.now_ns,
            acked_by: Vec::new(),
        };
        self.txn
            .put_record(SPACE_NAMESPACE, keys::garbage(self.volume_id(), ino), &garbage);
        Ok(())
    }

    pub(super) fn rmdir(&mut self, parent: u64, name: &[u8]) -> NsResult<()> {
        validate::entry_name(name)?;
        let mut parent_inode = self.directory(parent)?;
        let dentry = self.existing_entry(parent, name)?;
        if dentry.file_type != FileType::Directory {
            return Err(NsError::fs(
                Errno::ENOTDIR,
                format!(
                    "volume {}: {:?} in directory {parent} is not a directory",
                    self.volume_id(),
                    String::from_utf8_lossy(name)
                ),
            ));
        }
        if !self.is_empty_directory(dentry.ino)? {
            return Err(self.not_empty_error(dentry.ino));
        }
        let directory = self.inode(dentry.ino)?;
        self.remove_entry(parent, name, &dentry);
        assert!(parent_inode.nlink > 2, "a directory with a subdirectory has nlink > 2");
        parent_inode.nlink -= 1;
        parent_inode.mtime_ns = self.now_ns;
        parent_inode.ctime_ns = self.now_ns;
        self.store_inode(parent, &parent_inode);
        self.delete_inode(dentry.ino, &directory)
    }

    /// The entry `name` in `parent`, or ENOENT.
    pub(super) fn existing_entry(&self, parent: u64, name: &[u8]) -> NsResult<Dentry> {
        self.dentry(parent, name)?.ok_or_else(|| {
            NsError::fs(
                Errno::ENOENT,
                format!(
                    "volume {}: no entry {:?} in directory {parent}",
                    self.volume_id(),
                    String::from_utf8_lossy(name)
                ),
            )
        })
    }

    pub(super) fn not_empty_error(&self, ino: u64) -> NsError {
        NsError::fs(
            Errno::ENOTEMPTY,
            format!("volume {}: directory {ino} is not empty", self.volume_id()),
        )
    }

    /// Removes one link to the non-directory `ino` (its entry is already gone) and deletes
    /// the inode with its last link. Returns the links left.
    pub(super) fn drop_link(&mut self, ino: u64) -> NsResult<u32> {
        self.drop_link_keeping(ino, None)
    }

    fn drop_link_keeping(&mut self, ino: u64, keep_for_session: Option<u64>) -> NsResult<u32> {
        let mut inode = self.inode(ino)?;
        assert!(inode.file_type != FileType::Directory, "directories are removed whole");
        assert!(inode.nlink >= 1, "a linked inode has nlink >= 1");
        inode.nlink -= 1;
        if inode.nlink == 0 {
            self.delete_inode(ino, &inode)?;
            if let (Some(session_id), FileType::Regular) = (keep_for_session, inode.file_type) {
                self.keep_as_orphan(ino, &inode, session_id);
            }
            return Ok(0);
        }
        inode.ctime_ns = self.now_ns;
        self.store_inode(ino, &inode);
        Ok(inode.nlink)
    }

    /// Turns the garbage record `delete_inode` just wrote into an orphan of `session_id`.
    fn keep_as_orphan(&mut self, ino: u64, inode: &Inode, session_id: u64) {
        let volume_id = self.volume_id();
        self.txn.delete(SPACE_NAMESPACE, keys::garbage(volume_id, ino));
        let Some(layout) = inode.layout.clone() else { return };
        let orphan = OrphanRecord {
            ino,
            layout,
            size_bytes: inode.size_bytes,
            session_id,
            since_ns: self.now_ns,
        };
        self.txn
            .put_record(SPACE_NAMESPACE, keys::orphan(volume_id, ino), &orphan);
    }

    /// Deletes an inode that has no entry left: its record, its xattrs, its usage, and (for
    /// regular files) hands its chunks to garbage collection.
    pub(super) fn delete_inode(&mut self, ino: u64, inode: &Inode) -> NsResult<()> {
        let volume_id = self.volume_id();
        self.txn.delete(SPACE_NAMESPACE, keys::inode(volume_id, ino));
        let prefix = keys::xattr_prefix(volume_id, ino);
        let end = shoal_engine::prefix_end(&prefix).expect("xattr prefix is never all 0xff");
        let mut xattr_keys = Vec::new();
        let limit = MAX_XATTRS_PER_INODE as usize + 1;
        self.txn.scan_committed(SPACE_NAMESPACE, &prefix, &end, &mut |key, _| {
            xattr_keys.push(key.to_vec());
            if xattr_keys.len() >= limit {
                ScanControl::Stop
            } else {
                ScanControl::Continue
            }
        })?;
        assert!(xattr_keys.len() < limit, "inode {ino} holds more xattrs than allowed");
        for key in xattr_keys {
            self.txn.delete(SPACE_NAMESPACE, key);
        }
        let mut usage = self.usage()?;
        assert!(usage.used_inodes >= 1, "deleting an inode of a volume that counts none");
        usage.used_inodes -= 1;
        self.store_usage(&usage);
        if inode.file_type == FileType::Regular {
            self.charge_bytes(inode.size_bytes, 0)?;
            let layout = inode.layout.clone().expect("regular files have a layout");
            if layout.chain_ids.is_empty() {
                // Never placed: no chunk of it exists anywhere.
                return Ok(());
            }
            let garbage = GarbageRecord {
                ino,
                layout,
                size_bytes: inode.size_bytes,
                deleted_ns: self.now_ns,
                acked_by: Vec::new(),
            };
            self.txn
                .put_record(SPACE_NAMESPACE, keys::garbage(volume_id, ino), &garbage);
        }
        Ok(())
    }
}
