//! Names and attributes: lookup, getattr, setattr, create-like operations, removal, rename,
//! links, statfs.

use bytes::Bytes;
use fuser::{Generation, RenameFlags, ReplyAttr, ReplyData, ReplyEmpty, ReplyEntry, ReplyStatfs, TimeOrNow};
use shoal_client::ClientError;
use shoal_client::proto as pb;

use super::fail;
use super::privileges::Privilege;
use crate::attrs::{file_attr, file_type_of_mode, time_ns};
use crate::core::FsCore;

/// The caller's identity, as the kernel reports it.
#[derive(Clone, Copy, Debug)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
}

/// A name about to be made in `parent` by `caller`.
pub struct NewEntry {
    pub parent: u64,
    pub name: Bytes,
    /// Permission bits, the umask already applied.
    pub mode: u32,
    /// The mode as the kernel sent it (its file type bits tell mknod what to make).
    pub file_type_mode: u32,
    pub caller: Caller,
}

pub struct SetAttrArgs {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeOrNow>,
    pub mtime: Option<TimeOrNow>,
    pub caller: Caller,
}

fn time_update(time: Option<TimeOrNow>) -> Option<pb::TimeUpdate> {
    let kind = match time? {
        TimeOrNow::Now => pb::time_update::Kind::Now(true),
        TimeOrNow::SpecificTime(at) => pb::time_update::Kind::Ns(time_ns(at)),
    };
    Some(pb::TimeUpdate { kind: Some(kind) })
}

impl FsCore {
    pub(crate) fn reply_entry(&self, reply: ReplyEntry, attr: &pb::Attr) {
        let local = self.inodes.remember(attr);
        reply.entry_with_ttls(
            &self.config.attr_ttl,
            &self.config.entry_ttl,
            &file_attr(attr, local),
            Generation(0),
        );
    }

    pub async fn lookup(&self, parent: u64, name: Bytes, reply: ReplyEntry) {
        match self.registry().lookup(self.volume_id, parent, &name).await {
            Ok(attr) => self.reply_entry(reply, &attr),
            Err(error) => reply.error(fail(&error)),
        }
    }

    pub async fn getattr(&self, ino: u64, reply: ReplyAttr) {
        match self.fetch_attr(ino).await {
            Ok((attr, local)) => reply.attr(&self.config.attr_ttl, &file_attr(&attr, local)),
            Err(error) => reply.error(fail(&error)),
        }
    }

    pub async fn setattr(&self, ino: u64, args: SetAttrArgs, reply: ReplyAttr) {
        let result = async {
            if let Some(size) = args.size {
                self.truncate(ino, size).await?;
            } else if args.atime.is_some() || args.mtime.is_some() {
                // Writes made before the new times must not stamp "now" over them when they
                // are recorded later (tar and cp -a write, then set times, then close).
                self.commit(ino, false).await?;
            }
            let nothing_else = args.mode.is_none()
                && args.uid.is_none()
                && args.gid.is_none()
                && args.atime.is_none()
                && args.mtime.is_none();
            if nothing_else {
                // A truncate, or the kernel removing privileges after a buffered write (it
                // sends an empty change when the mode alone does not say what to drop).
                self.drop_set_id_bits(ino, args.caller, Privilege::Unknown).await?;
                return self.fetch_attr(ino).await;
            }
            let mode = match args.mode {
                Some(mode) => Some(self.settable_mode(ino, mode & 0o7777, args.gid, args.caller).await?),
                None => None,
            };
            let request = pb::SetAttrRequest {
                volume_id: self.volume_id,
                ino,
                mode,
                uid: args.uid,
                gid: args.gid,
                size_bytes: None,
                atime: time_update(args.atime),
                mtime: time_update(args.mtime),
                access_only: false,
            };
            let attr = self.registry().set_attr(request).await?;
            let local = self.inodes.remember(&attr);
            Ok::<_, ClientError>((attr, local))
        }
        .await;
        match result {
            Ok((attr, local)) => reply.attr(&self.config.attr_ttl, &file_attr(&attr, local)),
            Err(error) => reply.error(fail(&error)),
        }
    }

    pub async fn mknod(&self, entry: NewEntry, rdev: u32, reply: ReplyEntry) {
        let request = pb::CreateRequest {
            volume_id: self.volume_id,
            parent: entry.parent,
            name: entry.name,
            file_type: file_type_of_mode(entry.file_type_mode) as i32,
            mode: entry.mode,
            uid: entry.caller.uid,
            gid: entry.caller.gid,
            rdev,
            exclusive: true,
        };
        match self.registry().create(request).await {
            Ok(attr) => self.reply_entry(reply, &attr),
            Err(error) => reply.error(fail(&error)),
        }
    }

    pub async fn mkdir(&self, entry: NewEntry, reply: ReplyEntry) {
        let request = pb::MkdirRequest {
            volume_id: self.volume_id,
            parent: entry.parent,
            name: entry.name,
            mode: entry.mode,
            uid: entry.caller.uid,
            gid: entry.caller.gid,
        };
        match self.registry().mkdir(request).await {
            Ok(attr) => self.reply_entry(reply, &attr),
            Err(error) => reply.error(fail(&error)),
        }
    }

    pub async fn symlink(&self, parent: u64, name_: Bytes, target: Bytes, caller: Caller, reply: ReplyEntry) {
        let request = pb::SymlinkRequest {
            volume_id: self.volume_id,
            parent,
            name: name_,
            target,
            uid: caller.uid,
            gid: caller.gid,
        };
        match self.registry().symlink(request).await {
            Ok(attr) => self.reply_entry(reply, &attr),
            Err(error) => reply.error(fail(&error)),
        }
    }

    pub async fn readlink(&self, ino: u64, reply: ReplyData) {
        let request = pb::ReadlinkRequest {
            volume_id: self.volume_id,
            ino,
        };
        match self.registry().readlink(request).await {
            Ok(target) => reply.data(&target.target),
            Err(error) => reply.error(fail(&error)),
        }
    }

    pub async fn link(&self, ino: u64, new_parent: u64, new_name: Bytes, reply: ReplyEntry) {
        let request = pb::LinkRequest {
            volume_id: self.volume_id,
            ino,
            new_parent,
            new_name,
        };
        match self.registry().link(request).await {
            Ok(attr) => self.reply_entry(reply, &attr),
            Err(error) => reply.error(fail(&error)),
        }
    }

    /// The inode `name` in `parent` names, if this mount has it open (it must survive).
    async fn open_target(&self, parent: u64, name_: &[u8]) -> Option<u64> {
        let attr = self.registry().lookup(self.volume_id, parent, name_).await.ok()?;
        (attr.file_type == pb::FileType::Regular as i32 && self.inodes.is_open(attr.ino)).then_some(attr.ino)
    }

    /// The directory `name` in `parent` names, if this mount has it open: removed or
    /// replaced, it must still answer fstat (with no links) until closed. Asks the registry
    /// only while some directory is open here.
    async fn open_directory_target(&self, parent: u64, name_: &[u8]) -> Option<u64> {
        if !self.inodes.any_directory_open() {
            return None;
        }
        let attr = self.registry().lookup(self.volume_id, parent, name_).await.ok()?;
        (attr.file_type == pb::FileType::Directory as i32 && self.inodes.is_open(attr.ino)).then_some(attr.ino)
    }

    /// Removes `name`; a file this mount still has open keeps its data until closed.
    async fn remove_name(&self, parent: u64, name_: Bytes) -> Result<(), ClientError> {
        let open = self.open_target(parent, &name_).await;
        let request = pb::UnlinkRequest {
            volume_id: self.volume_id,
            parent,
            name: name_,
            keep_open_session: if open.is_some() { self.session_id } else { 0 },
        };
        let reply = self.registry().unlink(request).await?;
        if open.is_some() && reply.nlink_remaining == 0 {
            self.inodes.mark_orphaned(reply.ino);
        }
        Ok(())
    }

    pub async fn unlink(&self, parent: u64, name_: Bytes, reply: ReplyEmpty) {
        match self.remove_name(parent, name_).await {
            Ok(()) => reply.ok(),
            Err(error) => reply.error(fail(&error)),
        }
    }

    pub async fn rmdir(&self, parent: u64, name_: Bytes, reply: ReplyEmpty) {
        let open = self.open_directory_target(parent, &name_).await;
        let request = pb::RmdirRequest {
            volume_id: self.volume_id,
            parent,
            name: name_,
        };
        match self.registry().rmdir(request).await {
            Ok(_) => {
                if let Some(ino) = open {
                    self.inodes.mark_orphaned(ino);
                }
                reply.ok()
            }
            Err(error) => reply.error(fail(&error)),
        }
    }

    pub async fn rename(
        &self,
        parent: u64,
        name_: Bytes,
        new_parent: u64,
        new_name: Bytes,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let result = async {
            let plain = flags.is_empty();
            // Renaming over a file this mount has open: unlink it first, keeping its data.
            if plain && let Some(target) = self.open_target(new_parent, &new_name).await {
                let source = self.registry().lookup(self.volume_id, parent, &name_).await?;
                if source.ino != target && source.file_type == pb::FileType::Regular as i32 {
                    self.remove_name(new_parent, new_name.clone()).await?;
                }
            }
            let replaced_directory = match plain {
                true => self.open_directory_target(new_parent, &new_name).await,
                false => None,
            };
            let request = pb::RenameRequest {
                volume_id: self.volume_id,
                parent,
                name: name_,
                new_parent,
                new_name,
                flags: flags.bits(),
            };
            let renamed = self.registry().rename(request).await?;
            if let Some(ino) = replaced_directory
                && renamed.replaced_ino == Some(ino)
            {
                self.inodes.mark_orphaned(ino);
            }
            Ok::<_, ClientError>(renamed)
        }
        .await;
        match result {
            Ok(_) => reply.ok(),
            Err(error) => reply.error(fail(&error)),
        }
    }

    pub async fn statfs(&self, reply: ReplyStatfs) {
        match self
            .registry()
            .stat_fs(pb::StatFsRequest {
                volume_id: self.volume_id,
            })
            .await
        {
            Ok(stat) => {
                let block = u64::from(stat.block_size_bytes.max(1));
                reply.statfs(
                    stat.total_bytes / block,
                    stat.free_bytes / block,
                    stat.free_bytes / block,
                    stat.total_inodes,
                    stat.free_inodes,
                    stat.block_size_bytes,
                    stat.max_name_bytes,
                    stat.block_size_bytes,
                )
            }
            Err(error) => reply.error(fail(&error)),
        }
    }
}
