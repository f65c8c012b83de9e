//! POSIX namespace semantics of one volume: inodes, directory entries, links, xattrs.
//!
//! This module is pure logic over a [`Txn`]: it knows nothing of Raft or gRPC, so the same
//! code runs when a command is applied on every node and in the property test that checks
//! it against a model of POSIX directories. Every operation validates all of its inputs
//! and preconditions before it writes, and a failed operation leaves no change behind
//! (the transaction is dropped).
//!
//! Invariant: a directory's `nlink` is 2 plus its number of subdirectories; a directory has
//! exactly one entry naming it (except the root, which has none) and its `parent` is the
//! directory holding that entry.
//! Invariant: every dentry has an order twin with the same cookie, and vice versa.
//! Invariant: `VolumeUsage::used_inodes` counts the volume's inodes and `used_bytes` the
//! sizes of its regular files.

mod attr;
mod create;
mod read;
mod remove;
mod rename;
pub mod validate;

pub use read::{
    DirListing, FsStat, ListedEntry, file_exists, getattr, getxattr, listxattr, lookup, readdir, readlink, statfs,
};

use shoal_engine::ScanControl;
use shoal_proto::errno::{Errno, FsError};

use crate::command::{InodeAttr, NamespaceOp, Outcome};
use crate::keys::{self, SPACE_CLUSTER, SPACE_NAMESPACE};
use crate::records::{Dentry, FileType, Inode, OrderEntry, VolumeRecord, VolumeUsage};
use crate::txn::{StorageFault, Txn};

/// The inode number of every volume's root directory (FUSE's root is 1 as well).
pub const ROOT_INO: u64 = 1;

pub const S_ISUID: u32 = 0o4000;
pub const S_ISGID: u32 = 0o2000;
pub const S_ISVTX: u32 = 0o1000;
pub const PERMISSION_BITS: u32 = 0o7777;

/// Why a namespace operation failed: an error for the caller, or a storage fault.
#[derive(Debug, thiserror::Error)]
pub enum NsError {
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error(transparent)]
    Storage(#[from] StorageFault),
}

impl NsError {
    pub fn fs(errno: Errno, message: impl Into<String>) -> NsError {
        NsError::Fs(FsError::new(errno, message))
    }

    /// The error as a caller sees it: storage faults become EIO with their description.
    pub fn into_fs_error(self) -> FsError {
        match self {
            NsError::Fs(error) => error,
            NsError::Storage(fault) => FsError::new(Errno::EIO, format!("registry storage fault: {fault}")),
        }
    }
}

impl From<shoal_engine::EngineError> for NsError {
    fn from(error: shoal_engine::EngineError) -> Self {
        NsError::Storage(StorageFault::Engine(error))
    }
}

impl From<crate::records::CorruptRecord> for NsError {
    fn from(error: crate::records::CorruptRecord) -> Self {
        NsError::Storage(StorageFault::Corrupt(error))
    }
}

pub type NsResult<T> = Result<T, NsError>;

/// Applies one namespace change to volume `volume_id` at time `now_ns`.
pub fn apply(txn: &mut Txn<'_>, volume_id: u64, now_ns: i64, op: &NamespaceOp) -> NsResult<Outcome> {
    let mut ns = Namespace::open(txn, volume_id, now_ns)?;
    match op {
        NamespaceOp::SetAttr { ino, change } => ns.setattr(*ino, change).map(Outcome::Attr),
        NamespaceOp::Accessed { ino } => ns.accessed(*ino).map(Outcome::Attr),
        NamespaceOp::Create {
            parent,
            name,
            file_type,
            mode,
            uid,
            gid,
            rdev,
            exclusive,
        } => {
            let new = create::NewInode {
                file_type: *file_type,
                mode: *mode,
                owner: (*uid, *gid),
                rdev: *rdev,
                symlink_target: None,
            };
            ns.create(*parent, name, new, *exclusive).map(Outcome::Attr)
        }
        NamespaceOp::Mkdir {
            parent,
            name,
            mode,
            uid,
            gid,
        } => ns.mkdir(*parent, name, *mode, (*uid, *gid)).map(Outcome::Attr),
        NamespaceOp::Symlink {
            parent,
            name,
            target,
            uid,
            gid,
        } => ns.symlink(*parent, name, target, (*uid, *gid)).map(Outcome::Attr),
        NamespaceOp::Link {
            ino,
            new_parent,
            new_name,
        } => ns.link(*ino, *new_parent, new_name).map(Outcome::Attr),
        NamespaceOp::Unlink { parent, name } => ns
            .unlink(*parent, name, None)
            .map(|(ino, nlink_remaining)| Outcome::Unlinked { ino, nlink_remaining }),
        NamespaceOp::UnlinkKeepOpen {
            parent,
            name,
            session_id,
        } => ns
            .unlink(*parent, name, Some(*session_id))
            .map(|(ino, nlink_remaining)| Outcome::Unlinked { ino, nlink_remaining }),
        NamespaceOp::ReleaseOrphan { ino } => ns.release_orphan(*ino).map(|()| Outcome::Done),
        NamespaceOp::Rmdir { parent, name } => ns.rmdir(*parent, name).map(|()| Outcome::Done),
        NamespaceOp::Rename {
            parent,
            name,
            new_parent,
            new_name,
            flags,
        } => ns
            .rename(*parent, name, *new_parent, new_name, *flags)
            .map(|replaced| Outcome::Renamed { replaced }),
        NamespaceOp::SetXattr {
            ino,
            name,
            value,
            flags,
        } => ns.setxattr(*ino, name, value, *flags).map(|()| Outcome::Done),
        NamespaceOp::RemoveXattr { ino, name } => ns.removexattr(*ino, name).map(|()| Outcome::Done),
        NamespaceOp::ExtendFile { ino, end_offset_bytes } => ns.extend_file(*ino, *end_offset_bytes).map(Outcome::Attr),
        NamespaceOp::AssignLayout { ino } => ns.assign_layout(*ino).map(Outcome::Attr),
    }
}

/// A root directory for a new volume, and the usage record that counts it.
pub fn new_volume_root(txn: &mut Txn<'_>, volume_id: u64, now_ns: i64, owner: (u32, u32), mode: u32) {
    let root = Inode {
        file_type: FileType::Directory,
        mode: mode & PERMISSION_BITS,
        uid: owner.0,
        gid: owner.1,
        size_bytes: 0,
        nlink: 2,
        atime_ns: now_ns,
        mtime_ns: now_ns,
        ctime_ns: now_ns,
        rdev: 0,
        parent: ROOT_INO,
        next_cookie: 1,
        layout: None,
        symlink_target: None,
        xattr_count: 0,
    };
    txn.put_record(SPACE_NAMESPACE, keys::inode(volume_id, ROOT_INO), &root);
    let usage = VolumeUsage {
        next_ino: ROOT_INO + 1,
        used_bytes: 0,
        used_inodes: 1,
    };
    txn.put_record(SPACE_NAMESPACE, keys::usage(volume_id), &usage);
}

/// One volume's namespace inside one command.
pub(crate) struct Namespace<'t, 'a> {
    txn: &'t mut Txn<'a>,
    volume: VolumeRecord,
    now_ns: i64,
}

impl<'t, 'a> Namespace<'t, 'a> {
    fn open(txn: &'t mut Txn<'a>, volume_id: u64, now_ns: i64) -> NsResult<Self> {
        let volume = load_volume(txn, volume_id)?;
        Ok(Namespace { txn, volume, now_ns })
    }

    fn volume_id(&self) -> u64 {
        self.volume.id
    }

    fn inode(&self, ino: u64) -> NsResult<Inode> {
        load_inode(self.txn, self.volume.id, ino)
    }

    fn directory(&self, ino: u64) -> NsResult<Inode> {
        load_directory(self.txn, self.volume.id, ino)
    }

    fn store_inode(&mut self, ino: u64, inode: &Inode) {
        assert!(inode.mode & !PERMISSION_BITS == 0, "mode carries only permission bits");
        assert!(inode.nlink > 0, "an inode without links is deleted, not stored");
        self.txn
            .put_record(SPACE_NAMESPACE, keys::inode(self.volume.id, ino), inode);
    }

    fn dentry(&self, parent: u64, name: &[u8]) -> NsResult<Option<Dentry>> {
        Ok(self
            .txn
            .get_record(SPACE_NAMESPACE, &keys::dentry(self.volume.id, parent, name))?)
    }

    /// Adds `name` in directory `parent` (whose record is `parent_inode`, updated in place
    /// for its cookie counter) pointing at `ino`.
    fn insert_entry(&mut self, parent: u64, parent_inode: &mut Inode, name: &[u8], ino: u64, file_type: FileType) {
        let cookie = parent_inode.next_cookie;
        parent_inode.next_cookie += 1;
        self.put_entry(parent, name, Dentry { ino, file_type, cookie });
    }

    fn put_entry(&mut self, parent: u64, name: &[u8], dentry: Dentry) {
        let order = OrderEntry {
            name: name.to_vec(),
            ino: dentry.ino,
            file_type: dentry.file_type,
        };
        let volume_id = self.volume.id;
        self.txn
            .put_record(SPACE_NAMESPACE, keys::order(volume_id, parent, dentry.cookie), &order);
        self.txn
            .put_record(SPACE_NAMESPACE, keys::dentry(volume_id, parent, name), &dentry);
    }

    fn remove_entry(&mut self, parent: u64, name: &[u8], dentry: &Dentry) {
        let volume_id = self.volume.id;
        self.txn.delete(SPACE_NAMESPACE, keys::dentry(volume_id, parent, name));
        self.txn
            .delete(SPACE_NAMESPACE, keys::order(volume_id, parent, dentry.cookie));
    }

    fn usage(&self) -> NsResult<VolumeUsage> {
        load_usage(self.txn, self.volume.id)
    }

    fn store_usage(&mut self, usage: &VolumeUsage) {
        self.txn.put_record(SPACE_NAMESPACE, keys::usage(self.volume.id), usage);
    }

    /// Allocates an inode number, refusing with EDQUOT past the volume's inode quota.
    fn allocate_inode(&mut self) -> NsResult<u64> {
        let mut usage = self.usage()?;
        let quota = self.volume.quota_inodes;
        if quota != 0 && usage.used_inodes >= quota {
            return Err(NsError::fs(
                Errno::EDQUOT,
                format!("volume {:?} has reached its inode quota of {quota}", self.volume.name),
            ));
        }
        let ino = usage.next_ino;
        usage.next_ino += 1;
        usage.used_inodes += 1;
        self.store_usage(&usage);
        Ok(ino)
    }

    /// Adjusts the volume's byte usage by `new - old`, refusing growth past the quota.
    fn charge_bytes(&mut self, old_size_bytes: u64, new_size_bytes: u64) -> NsResult<()> {
        let mut usage = self.usage()?;
        if new_size_bytes > old_size_bytes {
            let growth = new_size_bytes - old_size_bytes;
            let quota = self.volume.quota_bytes;
            if quota != 0 && usage.used_bytes.saturating_add(growth) > quota {
                return Err(NsError::fs(
                    Errno::EDQUOT,
                    format!(
                        "volume {:?}: growing by {growth} bytes would pass its quota of {quota} bytes ({} used)",
                        self.volume.name, usage.used_bytes
                    ),
                ));
            }
            usage.used_bytes += growth;
        } else {
            let shrink = old_size_bytes - new_size_bytes;
            assert!(usage.used_bytes >= shrink, "byte usage would go negative");
            usage.used_bytes -= shrink;
        }
        self.store_usage(&usage);
        Ok(())
    }

    /// True if `ancestor` is `ino` or one of the directories above it.
    fn is_ancestor(&self, ancestor: u64, ino: u64) -> NsResult<bool> {
        let mut current = ino;
        for _ in 0..crate::limits::MAX_DIRECTORY_DEPTH {
            if current == ancestor {
                return Ok(true);
            }
            if current == ROOT_INO {
                return Ok(false);
            }
            current = self.directory(current)?.parent;
        }
        Err(NsError::fs(
            Errno::ELOOP,
            format!(
                "directory {ino} is nested deeper than {} levels",
                crate::limits::MAX_DIRECTORY_DEPTH
            ),
        ))
    }

    fn is_empty_directory(&self, ino: u64) -> NsResult<bool> {
        is_empty_directory(self.txn, self.volume.id, ino)
    }

    fn attr(&self, ino: u64) -> NsResult<InodeAttr> {
        Ok(InodeAttr {
            ino,
            inode: self.inode(ino)?,
        })
    }
}

pub(crate) fn load_volume(txn: &Txn<'_>, volume_id: u64) -> NsResult<VolumeRecord> {
    txn.get_record(SPACE_CLUSTER, &keys::volume(volume_id))?
        .ok_or_else(|| NsError::fs(Errno::ENOENT, format!("volume {volume_id} does not exist")))
}

pub(crate) fn load_usage(txn: &Txn<'_>, volume_id: u64) -> NsResult<VolumeUsage> {
    txn.get_record(SPACE_NAMESPACE, &keys::usage(volume_id))?
        .ok_or_else(|| NsError::fs(Errno::ENOENT, format!("volume {volume_id} does not exist")))
}

pub(crate) fn load_inode(txn: &Txn<'_>, volume_id: u64, ino: u64) -> NsResult<Inode> {
    txn.get_record(SPACE_NAMESPACE, &keys::inode(volume_id, ino))?
        .ok_or_else(|| NsError::fs(Errno::ENOENT, format!("volume {volume_id}: inode {ino} does not exist")))
}

pub(crate) fn load_directory(txn: &Txn<'_>, volume_id: u64, ino: u64) -> NsResult<Inode> {
    let inode = load_inode(txn, volume_id, ino)?;
    if inode.file_type != FileType::Directory {
        return Err(NsError::fs(
            Errno::ENOTDIR,
            format!("volume {volume_id}: inode {ino} is not a directory"),
        ));
    }
    Ok(inode)
}

pub(crate) fn is_empty_directory(txn: &Txn<'_>, volume_id: u64, ino: u64) -> NsResult<bool> {
    let prefix = keys::order_prefix(volume_id, ino);
    let end = shoal_engine::prefix_end(&prefix).expect("order prefix is never all 0xff");
    let mut empty = true;
    txn.scan_committed(SPACE_NAMESPACE, &prefix, &end, &mut |_, _| {
        empty = false;
        ScanControl::Stop
    })?;
    Ok(empty)
}
