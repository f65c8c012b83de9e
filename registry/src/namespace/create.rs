//! Operations that add a name: create (files, FIFOs, sockets, devices), mkdir, symlink, link.

use shoal_proto::errno::Errno;

use super::{Namespace, NsError, NsResult, PERMISSION_BITS, S_ISGID, validate};
use crate::cluster::select_layout;
use crate::command::InodeAttr;
use crate::limits::MAX_LINK_COUNT;
use crate::records::{FileType, Inode};

/// What a new inode is made of.
pub(super) struct NewInode {
    pub file_type: FileType,
    pub mode: u32,
    /// (uid, gid) of the caller.
    pub owner: (u32, u32),
    pub rdev: u32,
    pub symlink_target: Option<Vec<u8>>,
}

impl Namespace<'_, '_> {
    pub(super) fn create(&mut self, parent: u64, name: &[u8], new: NewInode, exclusive: bool) -> NsResult<InodeAttr> {
        validate::entry_name(name)?;
        let file_type = new.file_type;
        if matches!(file_type, FileType::Directory | FileType::Symlink) {
            return Err(NsError::fs(
                Errno::EINVAL,
                format!("create cannot make a {file_type:?}; use mkdir or symlink"),
            ));
        }
        self.directory(parent)?;
        if let Some(existing) = self.dentry(parent, name)? {
            if exclusive {
                return Err(self.exists_error(parent, name));
            }
            return match existing.file_type {
                FileType::Regular => self.attr(existing.ino),
                FileType::Directory => Err(NsError::fs(
                    Errno::EISDIR,
                    format!(
                        "volume {}: {:?} in directory {parent} is a directory",
                        self.volume_id(),
                        String::from_utf8_lossy(name)
                    ),
                )),
                _ => Err(self.exists_error(parent, name)),
            };
        }
        self.add_child(parent, name, new)
    }

    pub(super) fn mkdir(&mut self, parent: u64, name: &[u8], mode: u32, owner: (u32, u32)) -> NsResult<InodeAttr> {
        validate::entry_name(name)?;
        let new = NewInode {
            file_type: FileType::Directory,
            mode,
            owner,
            rdev: 0,
            symlink_target: None,
        };
        self.add_child(parent, name, new)
    }

    pub(super) fn symlink(
        &mut self,
        parent: u64,
        name: &[u8],
        target: &[u8],
        owner: (u32, u32),
    ) -> NsResult<InodeAttr> {
        validate::entry_name(name)?;
        validate::symlink_target(target)?;
        let new = NewInode {
            file_type: FileType::Symlink,
            mode: 0o777,
            owner,
            rdev: 0,
            symlink_target: Some(target.to_vec()),
        };
        self.add_child(parent, name, new)
    }

    pub(super) fn link(&mut self, ino: u64, new_parent: u64, new_name: &[u8]) -> NsResult<InodeAttr> {
        validate::entry_name(new_name)?;
        let mut inode = self.inode(ino)?;
        if inode.file_type == FileType::Directory {
            return Err(NsError::fs(
                Errno::EPERM,
                format!(
                    "volume {}: inode {ino} is a directory; directories cannot be hard-linked",
                    self.volume_id()
                ),
            ));
        }
        let mut parent_inode = self.directory(new_parent)?;
        if self.dentry(new_parent, new_name)?.is_some() {
            return Err(self.exists_error(new_parent, new_name));
        }
        if inode.nlink >= MAX_LINK_COUNT {
            return Err(NsError::fs(
                Errno::EMLINK,
                format!(
                    "volume {}: inode {ino} already has {MAX_LINK_COUNT} links",
                    self.volume_id()
                ),
            ));
        }
        self.insert_entry(new_parent, &mut parent_inode, new_name, ino, inode.file_type);
        parent_inode.mtime_ns = self.now_ns;
        parent_inode.ctime_ns = self.now_ns;
        self.store_inode(new_parent, &parent_inode);
        inode.nlink += 1;
        inode.ctime_ns = self.now_ns;
        self.store_inode(ino, &inode);
        Ok(InodeAttr { ino, inode })
    }

    fn add_child(&mut self, parent: u64, name: &[u8], new: NewInode) -> NsResult<InodeAttr> {
        let mut parent_inode = self.directory(parent)?;
        if self.dentry(parent, name)?.is_some() {
            return Err(self.exists_error(parent, name));
        }
        let is_directory = new.file_type == FileType::Directory;
        if is_directory && parent_inode.nlink >= MAX_LINK_COUNT {
            return Err(NsError::fs(
                Errno::EMLINK,
                format!(
                    "volume {}: directory {parent} already holds the most subdirectories allowed",
                    self.volume_id()
                ),
            ));
        }
        let ino = self.allocate_inode()?;
        let mut mode = new.mode & PERMISSION_BITS;
        let mut gid = new.owner.1;
        // BSD group semantics in setgid directories: the group is inherited, and so is the
        // setgid bit on subdirectories.
        if parent_inode.mode & S_ISGID != 0 {
            gid = parent_inode.gid;
            if is_directory {
                mode |= S_ISGID;
            }
        }
        let layout = if new.file_type == FileType::Regular {
            Some(select_layout(self.txn, &self.volume.clone(), ino)?)
        } else {
            None
        };
        let inode = Inode {
            file_type: new.file_type,
            mode,
            uid: new.owner.0,
            gid,
            size_bytes: new.symlink_target.as_ref().map_or(0, |target| target.len() as u64),
            nlink: if is_directory { 2 } else { 1 },
            atime_ns: self.now_ns,
            mtime_ns: self.now_ns,
            ctime_ns: self.now_ns,
            rdev: new.rdev,
            parent: if is_directory { parent } else { 0 },
            next_cookie: 1,
            layout,
            symlink_target: new.symlink_target,
            xattr_count: 0,
        };
        self.insert_entry(parent, &mut parent_inode, name, ino, inode.file_type);
        if is_directory {
            parent_inode.nlink += 1;
        }
        parent_inode.mtime_ns = self.now_ns;
        parent_inode.ctime_ns = self.now_ns;
        self.store_inode(parent, &parent_inode);
        self.store_inode(ino, &inode);
        Ok(InodeAttr { ino, inode })
    }

    fn exists_error(&self, parent: u64, name: &[u8]) -> NsError {
        NsError::fs(
            Errno::EEXIST,
            format!(
                "volume {}: {:?} already exists in directory {parent}",
                self.volume_id(),
                String::from_utf8_lossy(name)
            ),
        )
    }
}
