//! Attribute changes: setattr (mode, owner, size, times) and extended attributes.

use shoal_proto::errno::Errno;

use super::{Namespace, NsError, NsResult, PERMISSION_BITS, validate};
use crate::command::{InodeAttr, SetAttr, TimeSet};
use crate::keys::{self, SPACE_NAMESPACE};
use crate::limits::{MAX_FILE_SIZE_BYTES, MAX_XATTRS_PER_INODE};
use crate::records::FileType;

/// setxattr flag: fail with EEXIST if the attribute exists.
pub const XATTR_CREATE: u32 = 1;
/// setxattr flag: fail with ENODATA if the attribute does not exist.
pub const XATTR_REPLACE: u32 = 2;

impl Namespace<'_, '_> {
    pub(super) fn setattr(&mut self, ino: u64, change: &SetAttr) -> NsResult<InodeAttr> {
        let mut inode = self.inode(ino)?;
        if let Some(size_bytes) = change.size_bytes {
            match inode.file_type {
                FileType::Regular => {}
                FileType::Directory => {
                    return Err(NsError::fs(
                        Errno::EISDIR,
                        format!(
                            "volume {}: inode {ino} is a directory; it has no size to set",
                            self.volume_id()
                        ),
                    ));
                }
                other => {
                    return Err(NsError::fs(
                        Errno::EINVAL,
                        format!(
                            "volume {}: inode {ino} is a {other:?}; only regular files can be resized",
                            self.volume_id()
                        ),
                    ));
                }
            }
            if size_bytes > MAX_FILE_SIZE_BYTES {
                return Err(NsError::fs(
                    Errno::EFBIG,
                    format!(
                        "size {size_bytes} bytes exceeds the largest file Shoal stores ({MAX_FILE_SIZE_BYTES} bytes)"
                    ),
                ));
            }
            self.charge_bytes(inode.size_bytes, size_bytes)?;
            // truncate(2) marks the data changed even when the size stays (Linux does): the
            // size here may be older than what the caller saw, with writes not yet recorded.
            if change.mtime.is_none() {
                inode.mtime_ns = self.now_ns;
            }
            inode.size_bytes = size_bytes;
        }
        if let Some(mode) = change.mode {
            inode.mode = mode & PERMISSION_BITS;
        }
        if let Some(uid) = change.uid {
            inode.uid = uid;
        }
        if let Some(gid) = change.gid {
            inode.gid = gid;
        }
        if let Some(atime) = change.atime {
            inode.atime_ns = self.resolve(atime);
        }
        if let Some(mtime) = change.mtime {
            inode.mtime_ns = self.resolve(mtime);
        }
        inode.ctime_ns = self.now_ns;
        self.store_inode(ino, &inode);
        Ok(InodeAttr { ino, inode })
    }

    /// An access by a read or a listing: atime becomes now, nothing else changes (an access
    /// is not a change of the inode, so ctime stays, and relatime's rule "atime not newer
    /// than mtime or ctime" stops asking for updates until the next change).
    pub(super) fn accessed(&mut self, ino: u64) -> NsResult<InodeAttr> {
        let mut inode = self.inode(ino)?;
        inode.atime_ns = self.now_ns;
        self.store_inode(ino, &inode);
        Ok(InodeAttr { ino, inode })
    }

    /// Records a write that ended at `end_offset_bytes`: the size grows to it if larger,
    /// and the file's data changed, so mtime and ctime are now.
    pub(super) fn extend_file(&mut self, ino: u64, end_offset_bytes: u64) -> NsResult<InodeAttr> {
        let mut inode = self.regular_file(ino)?;
        if end_offset_bytes > MAX_FILE_SIZE_BYTES {
            return Err(NsError::fs(
                Errno::EFBIG,
                format!(
                    "a write ending at {end_offset_bytes} bytes exceeds the largest file Shoal stores ({MAX_FILE_SIZE_BYTES} bytes)"
                ),
            ));
        }
        if end_offset_bytes > inode.size_bytes {
            self.charge_bytes(inode.size_bytes, end_offset_bytes)?;
            inode.size_bytes = end_offset_bytes;
        }
        inode.mtime_ns = self.now_ns;
        inode.ctime_ns = self.now_ns;
        self.store_inode(ino, &inode);
        Ok(InodeAttr { ino, inode })
    }

    /// Places a regular file that was created before any chain existed.
    pub(super) fn assign_layout(&mut self, ino: u64) -> NsResult<InodeAttr> {
        let mut inode = self.regular_file(ino)?;
        let placed = inode.layout.as_ref().is_some_and(|layout| !layout.chain_ids.is_empty());
        if !placed {
            let layout = crate::cluster::select_layout(self.txn, &self.volume.clone(), ino)?;
            if layout.chain_ids.is_empty() {
                return Err(NsError::fs(
                    Errno::ENOSPC,
                    format!(
                        "volume {:?} needs chains of {} data services and the cluster has none yet; start data services",
                        self.volume.name, self.volume.replicas
                    ),
                ));
            }
            inode.layout = Some(layout);
            self.store_inode(ino, &inode);
        }
        Ok(InodeAttr { ino, inode })
    }

    fn regular_file(&self, ino: u64) -> NsResult<crate::records::Inode> {
        let inode = self.inode(ino)?;
        if inode.file_type != FileType::Regular {
            return Err(NsError::fs(
                if inode.file_type == FileType::Directory {
                    Errno::EISDIR
                } else {
                    Errno::EINVAL
                },
                format!("volume {}: inode {ino} is not a regular file", self.volume_id()),
            ));
        }
        Ok(inode)
    }

    fn resolve(&self, time: TimeSet) -> i64 {
        match time {
            TimeSet::Now => self.now_ns,
            TimeSet::At(ns) => ns,
        }
    }

    pub(super) fn setxattr(&mut self, ino: u64, name: &[u8], value: &[u8], flags: u32) -> NsResult<()> {
        validate::xattr_name(name)?;
        validate::xattr_value(value)?;
        if flags & !(XATTR_CREATE | XATTR_REPLACE) != 0 || flags == XATTR_CREATE | XATTR_REPLACE {
            return Err(NsError::fs(Errno::EINVAL, format!("invalid setxattr flags {flags:#x}")));
        }
        let mut inode = self.inode(ino)?;
        let key = keys::xattr(self.volume_id(), ino, name);
        let exists = self.txn.get(SPACE_NAMESPACE, &key)?.is_some();
        if exists && flags & XATTR_CREATE != 0 {
            return Err(NsError::fs(
                Errno::EEXIST,
                format!(
                    "volume {}: inode {ino} already has xattr {:?}",
                    self.volume_id(),
                    String::from_utf8_lossy(name)
                ),
            ));
        }
        if !exists && flags & XATTR_REPLACE != 0 {
            return Err(self.no_xattr_error(ino, name));
        }
        if !exists {
            if inode.xattr_count >= MAX_XATTRS_PER_INODE {
                return Err(NsError::fs(
                    Errno::ENOSPC,
                    format!(
                        "volume {}: inode {ino} already has {MAX_XATTRS_PER_INODE} xattrs",
                        self.volume_id()
                    ),
                ));
            }
            inode.xattr_count += 1;
        }
        self.txn.put(SPACE_NAMESPACE, key, value.to_vec());
        inode.ctime_ns = self.now_ns;
        self.store_inode(ino, &inode);
        Ok(())
    }

    pub(super) fn removexattr(&mut self, ino: u64, name: &[u8]) -> NsResult<()> {
        validate::xattr_name(name)?;
        let mut inode = self.inode(ino)?;
        let key = keys::xattr(self.volume_id(), ino, name);
        if self.txn.get(SPACE_NAMESPACE, &key)?.is_none() {
            return Err(self.no_xattr_error(ino, name));
        }
        self.txn.delete(SPACE_NAMESPACE, key);
        assert!(inode.xattr_count >= 1, "xattr count out of step with stored xattrs");
        inode.xattr_count -= 1;
        inode.ctime_ns = self.now_ns;
        self.store_inode(ino, &inode);
        Ok(())
    }

    fn no_xattr_error(&self, ino: u64, name: &[u8]) -> NsError {
        NsError::fs(
            Errno::ENODATA,
            format!(
                "volume {}: inode {ino} has no xattr {:?}",
                self.volume_id(),
                String::from_utf8_lossy(name)
            ),
        )
    }
}
