//! rename(2) and renameat2(2): replace, no-replace and exchange.
//!
//! All checks (existence, types, emptiness, cycles, link limits) run before the first
//! write, so a refused rename changes nothing.

use shoal_proto::errno::Errno;

use super::{Namespace, NsError, NsResult, validate};
use crate::limits::MAX_LINK_COUNT;
use crate::records::{Dentry, FileType};

/// renameat2 flag: fail with EEXIST instead of replacing the target.
pub const RENAME_NOREPLACE: u32 = 1;
/// renameat2 flag: atomically swap source and target (both must exist).
pub const RENAME_EXCHANGE: u32 = 2;

impl Namespace<'_, '_> {
    /// Returns the inode the rename replaced and that inode's remaining link count.
    pub(super) fn rename(
        &mut self,
        parent: u64,
        name: &[u8],
        new_parent: u64,
        new_name: &[u8],
        flags: u32,
    ) -> NsResult<Option<(u64, u32)>> {
        if flags & !(RENAME_NOREPLACE | RENAME_EXCHANGE) != 0 {
            return Err(NsError::fs(Errno::EINVAL, format!("unknown rename flags {flags:#x}")));
        }
        if flags == RENAME_NOREPLACE | RENAME_EXCHANGE {
            return Err(NsError::fs(
                Errno::EINVAL,
                "RENAME_NOREPLACE and RENAME_EXCHANGE exclude each other",
            ));
        }
        validate::entry_name(name)?;
        validate::entry_name(new_name)?;
        self.directory(parent)?;
        self.directory(new_parent)?;
        let source = self.existing_entry(parent, name)?;
        let target = self.dentry(new_parent, new_name)?;
        if flags & RENAME_EXCHANGE != 0 {
            let target = target.ok_or_else(|| {
                NsError::fs(
                    Errno::ENOENT,
                    format!(
                        "volume {}: exchange target {:?} does not exist in directory {new_parent}",
                        self.volume_id(),
                        String::from_utf8_lossy(new_name)
                    ),
                )
            })?;
            self.exchange(parent, name, &source, new_parent, new_name, &target)?;
            return Ok(None);
        }
        if let Some(target) = &target {
            if flags & RENAME_NOREPLACE != 0 {
                return Err(NsError::fs(
                    Errno::EEXIST,
                    format!(
                        "volume {}: {:?} exists in directory {new_parent} and RENAME_NOREPLACE was given",
                        self.volume_id(),
                        String::from_utf8_lossy(new_name)
                    ),
                ));
            }
            if target.ino == source.ino {
                // Two links to one inode (or a name onto itself): POSIX says do nothing.
                return Ok(None);
            }
        }
        let source_is_directory = source.file_type == FileType::Directory;
        let moves_directory = source_is_directory && parent != new_parent;
        if moves_directory {
            self.refuse_cycle(source.ino, new_parent)?;
        }
        let target_is_directory = target.as_ref().is_some_and(|t| t.file_type == FileType::Directory);
        if let Some(target) = &target {
            match (source_is_directory, target_is_directory) {
                (true, false) => {
                    return Err(NsError::fs(
                        Errno::ENOTDIR,
                        format!(
                            "volume {}: cannot replace non-directory {:?} with a directory",
                            self.volume_id(),
                            String::from_utf8_lossy(new_name)
                        ),
                    ));
                }
                (false, true) => {
                    return Err(NsError::fs(
                        Errno::EISDIR,
                        format!(
                            "volume {}: cannot replace directory {:?} with a non-directory",
                            self.volume_id(),
                            String::from_utf8_lossy(new_name)
                        ),
                    ));
                }
                (true, true) if !self.is_empty_directory(target.ino)? => {
                    return Err(self.not_empty_error(target.ino));
                }
                _ => {}
            }
        }
        if moves_directory && !target_is_directory && self.directory(new_parent)?.nlink >= MAX_LINK_COUNT {
            return Err(NsError::fs(
                Errno::EMLINK,
                format!(
                    "volume {}: directory {new_parent} holds the most subdirectories allowed",
                    self.volume_id()
                ),
            ));
        }

        // Every check passed: from here on, only writes.
        let mut replaced = None;
        if let Some(target) = target {
            self.remove_entry(new_parent, new_name, &target);
            if target_is_directory {
                let directory = self.inode(target.ino)?;
                let mut holder = self.directory(new_parent)?;
                holder.nlink -= 1;
                self.store_inode(new_parent, &holder);
                self.delete_inode(target.ino, &directory)?;
                replaced = Some((target.ino, 0));
            } else {
                replaced = Some((target.ino, self.drop_link(target.ino)?));
            }
        }
        self.remove_entry(parent, name, &source);
        let mut destination = self.directory(new_parent)?;
        if parent == new_parent {
            // Within one directory the entry keeps its cookie: a listing in progress returns
            // it once, under its old or its new name, never under both.
            self.put_entry(new_parent, new_name, source.clone());
        } else {
            self.insert_entry(new_parent, &mut destination, new_name, source.ino, source.file_type);
        }
        if moves_directory {
            destination.nlink += 1;
        }
        destination.mtime_ns = self.now_ns;
        destination.ctime_ns = self.now_ns;
        self.store_inode(new_parent, &destination);
        let mut origin = self.directory(parent)?;
        if moves_directory {
            assert!(origin.nlink > 2, "the source directory's parent counts it");
            origin.nlink -= 1;
        }
        origin.mtime_ns = self.now_ns;
        origin.ctime_ns = self.now_ns;
        self.store_inode(parent, &origin);
        let mut moved = self.inode(source.ino)?;
        moved.ctime_ns = self.now_ns;
        if source_is_directory {
            moved.parent = new_parent;
        }
        self.store_inode(source.ino, &moved);
        Ok(replaced)
    }

    fn exchange(
        &mut self,
        parent: u64,
        name: &[u8],
        source: &Dentry,
        new_parent: u64,
        new_name: &[u8],
        target: &Dentry,
    ) -> NsResult<()> {
        if source.ino == target.ino {
            return Ok(());
        }
        let source_is_directory = source.file_type == FileType::Directory;
        let target_is_directory = target.file_type == FileType::Directory;
        if parent != new_parent {
            if source_is_directory {
                self.refuse_cycle(source.ino, new_parent)?;
            }
            if target_is_directory {
                self.refuse_cycle(target.ino, parent)?;
            }
        }
        // Each name keeps its cookie, so readdir positions stay where they were.
        self.put_entry(
            parent,
            name,
            Dentry {
                ino: target.ino,
                file_type: target.file_type,
                cookie: source.cookie,
            },
        );
        self.put_entry(
            new_parent,
            new_name,
            Dentry {
                ino: source.ino,
                file_type: source.file_type,
                cookie: target.cookie,
            },
        );
        let crossing = parent != new_parent;
        for (holder, gains, loses) in [
            (parent, crossing && target_is_directory, crossing && source_is_directory),
            (
                new_parent,
                crossing && source_is_directory,
                crossing && target_is_directory,
            ),
        ] {
            let mut directory = self.directory(holder)?;
            if gains {
                directory.nlink += 1;
            }
            if loses {
                directory.nlink -= 1;
            }
            directory.mtime_ns = self.now_ns;
            directory.ctime_ns = self.now_ns;
            self.store_inode(holder, &directory);
        }
        for (ino, is_directory, new_holder) in [
            (source.ino, source_is_directory, new_parent),
            (target.ino, target_is_directory, parent),
        ] {
            let mut inode = self.inode(ino)?;
            inode.ctime_ns = self.now_ns;
            if is_directory {
                inode.parent = new_holder;
            }
            self.store_inode(ino, &inode);
        }
        Ok(())
    }

    /// EINVAL if `directory` is `destination` or one of its ancestors: the move would make
    /// a directory its own descendant.
    fn refuse_cycle(&self, directory: u64, destination: u64) -> NsResult<()> {
        if self.is_ancestor(directory, destination)? {
            return Err(NsError::fs(
                Errno::EINVAL,
                format!(
                    "volume {}: cannot move directory {directory} into its own subtree (directory {destination})",
                    self.volume_id()
                ),
            ));
        }
        Ok(())
    }
}
