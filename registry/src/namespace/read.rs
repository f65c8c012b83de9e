//! Read-only namespace operations, run against a consistent view of the state.

use shoal_engine::{KvRead, ScanControl};
use shoal_proto::errno::{Errno, FsError};

use super::{NsError, NsResult, load_directory, load_inode, load_usage, load_volume, validate};
use crate::command::InodeAttr;
use crate::keys::{self, SPACE_NAMESPACE};
use crate::limits::{MAX_LISTXATTR_ENTRIES, MAX_NAME_BYTES, MAX_READDIR_ENTRIES, STATFS_BLOCK_SIZE_BYTES};
use crate::records::{FileType, Inode, OrderEntry, Record};
use crate::txn::Txn;

fn fs_result<T>(result: NsResult<T>) -> Result<T, FsError> {
    result.map_err(NsError::into_fs_error)
}

pub fn lookup(read: &dyn KvRead, volume_id: u64, parent: u64, name: &[u8]) -> Result<InodeAttr, FsError> {
    fs_result((|| {
        validate::lookup_name(name)?;
        let txn = Txn::new(read);
        load_volume(&txn, volume_id)?;
        let directory = load_directory(&txn, volume_id, parent)?;
        let ino = match name {
            b"." => parent,
            b".." => directory.parent,
            _ => {
                let dentry: crate::records::Dentry = txn
                    .get_record(SPACE_NAMESPACE, &keys::dentry(volume_id, parent, name))?
                    .ok_or_else(|| {
                        NsError::fs(
                            Errno::ENOENT,
                            format!(
                                "volume {volume_id}: no entry {:?} in directory {parent}",
                                String::from_utf8_lossy(name)
                            ),
                        )
                    })?;
                dentry.ino
            }
        };
        Ok(InodeAttr {
            ino,
            inode: load_inode(&txn, volume_id, ino)?,
        })
    })())
}

pub fn getattr(read: &dyn KvRead, volume_id: u64, ino: u64) -> Result<InodeAttr, FsError> {
    fs_result((|| {
        let txn = Txn::new(read);
        load_volume(&txn, volume_id)?;
        Ok(InodeAttr {
            ino,
            inode: load_inode(&txn, volume_id, ino)?,
        })
    })())
}

/// Whether volume `volume_id` exists, and whether inode `ino` in it still holds data: it
/// exists, or an open handle keeps it as an orphan after its last name went.
pub fn file_exists(read: &dyn KvRead, volume_id: u64, ino: u64) -> Result<(bool, bool), FsError> {
    fs_result((|| {
        let txn = Txn::new(read);
        if txn
            .get_record::<crate::records::VolumeRecord>(keys::SPACE_CLUSTER, &keys::volume(volume_id))?
            .is_none()
        {
            return Ok((false, false));
        }
        let inode = txn.get_record::<Inode>(SPACE_NAMESPACE, &keys::inode(volume_id, ino))?;
        let orphan = txn.get_record::<crate::records::OrphanRecord>(SPACE_NAMESPACE, &keys::orphan(volume_id, ino))?;
        Ok((true, inode.is_some() || orphan.is_some()))
    })())
}

pub fn readlink(read: &dyn KvRead, volume_id: u64, ino: u64) -> Result<Vec<u8>, FsError> {
    let attr = getattr(read, volume_id, ino)?;
    attr.inode.symlink_target.ok_or_else(|| {
        FsError::new(
            Errno::EINVAL,
            format!("volume {volume_id}: inode {ino} is not a symlink"),
        )
    })
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedEntry {
    pub name: Vec<u8>,
    pub ino: u64,
    pub file_type: FileType,
    pub cookie: u64,
    pub attr: Option<Inode>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirListing {
    pub entries: Vec<ListedEntry>,
    pub end_of_directory: bool,
}

/// Entries of directory `ino` after `after_cookie`, in creation order. An entry that exists
/// for the whole listing is returned exactly once, whatever else changes meanwhile.
pub fn readdir(
    read: &dyn KvRead,
    volume_id: u64,
    ino: u64,
    after_cookie: u64,
    max_entries: u32,
    with_attrs: bool,
) -> Result<DirListing, FsError> {
    fs_result((|| {
        let limit = max_entries.clamp(1, MAX_READDIR_ENTRIES) as usize;
        let txn = Txn::new(read);
        load_volume(&txn, volume_id)?;
        load_directory(&txn, volume_id, ino)?;
        let prefix = keys::order_prefix(volume_id, ino);
        let end = shoal_engine::prefix_end(&prefix).expect("order prefix is never all 0xff");
        let start = keys::order(volume_id, ino, after_cookie.saturating_add(1));
        let mut found = Vec::with_capacity(limit);
        let mut more = false;
        let mut corrupt = None;
        read.scan(SPACE_NAMESPACE, &start, Some(&end), &mut |key, value| {
            if found.len() == limit {
                more = true;
                return ScanControl::Stop;
            }
            match OrderEntry::decode(value) {
                Ok(entry) => found.push((keys::order_cookie(key), entry)),
                Err(error) => {
                    corrupt = Some(error);
                    return ScanControl::Stop;
                }
            }
            ScanControl::Continue
        })?;
        if let Some(error) = corrupt {
            return Err(error.into());
        }
        let mut entries = Vec::with_capacity(found.len());
        for (cookie, entry) in found {
            let attr = if with_attrs {
                Some(load_inode(&txn, volume_id, entry.ino)?)
            } else {
                None
            };
            entries.push(ListedEntry {
                name: entry.name,
                ino: entry.ino,
                file_type: entry.file_type,
                cookie,
                attr,
            });
        }
        Ok(DirListing {
            entries,
            end_of_directory: !more,
        })
    })())
}

pub fn getxattr(read: &dyn KvRead, volume_id: u64, ino: u64, name: &[u8]) -> Result<Vec<u8>, FsError> {
    fs_result((|| {
        validate::xattr_name(name)?;
        let txn = Txn::new(read);
        load_volume(&txn, volume_id)?;
        load_inode(&txn, volume_id, ino)?;
        txn.get(SPACE_NAMESPACE, &keys::xattr(volume_id, ino, name))?
            .ok_or_else(|| {
                NsError::fs(
                    Errno::ENODATA,
                    format!(
                        "volume {volume_id}: inode {ino} has no xattr {:?}",
                        String::from_utf8_lossy(name)
                    ),
                )
            })
    })())
}

pub fn listxattr(read: &dyn KvRead, volume_id: u64, ino: u64) -> Result<Vec<Vec<u8>>, FsError> {
    fs_result((|| {
        let txn = Txn::new(read);
        load_volume(&txn, volume_id)?;
        load_inode(&txn, volume_id, ino)?;
        let prefix = keys::xattr_prefix(volume_id, ino);
        let end = shoal_engine::prefix_end(&prefix).expect("xattr prefix is never all 0xff");
        let mut names = Vec::new();
        read.scan(SPACE_NAMESPACE, &prefix, Some(&end), &mut |key, _| {
            names.push(keys::xattr_name(prefix.len(), key).to_vec());
            if names.len() >= MAX_LISTXATTR_ENTRIES {
                ScanControl::Stop
            } else {
                ScanControl::Continue
            }
        })?;
        Ok(names)
    })())
}

/// Capacity and usage of a volume, as statfs reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FsStat {
    pub total_bytes: u64,
    pub free_bytes: u64,
    pub used_bytes: u64,
    pub total_inodes: u64,
    pub free_inodes: u64,
    pub used_inodes: u64,
    pub block_size_bytes: u32,
    pub max_name_bytes: u32,
}

/// Inodes reported free on a volume without an inode quota.
const UNLIMITED_FREE_INODES: u64 = 1 << 32;

/// statfs of a volume. With a byte quota, the quota is the size; without one, the size is
/// what is used plus what the cluster's data services have free, divided by the replicas.
/// (A quota larger than the cluster can hold is the operator's promise, reported as given.)
pub fn statfs(read: &dyn KvRead, volume_id: u64, cluster_free_bytes: u64) -> Result<FsStat, FsError> {
    fs_result((|| {
        let txn = Txn::new(read);
        let volume = load_volume(&txn, volume_id)?;
        let usage = load_usage(&txn, volume_id)?;
        let replicas = u64::from(volume.replicas.max(1));
        let (total_bytes, free_bytes) = if volume.quota_bytes == 0 {
            let free = cluster_free_bytes / replicas;
            (usage.used_bytes.saturating_add(free), free)
        } else {
            (volume.quota_bytes, volume.quota_bytes.saturating_sub(usage.used_bytes))
        };
        let (total_inodes, free_inodes) = if volume.quota_inodes == 0 {
            (usage.used_inodes + UNLIMITED_FREE_INODES, UNLIMITED_FREE_INODES)
        } else {
            (
                volume.quota_inodes,
                volume.quota_inodes.saturating_sub(usage.used_inodes),
            )
        };
        Ok(FsStat {
            total_bytes,
            free_bytes,
            used_bytes: usage.used_bytes,
            total_inodes,
            free_inodes,
            used_inodes: usage.used_inodes,
            block_size_bytes: STATFS_BLOCK_SIZE_BYTES,
            max_name_bytes: MAX_NAME_BYTES as u32,
        })
    })())
}
