//! The `Namespace` gRPC service: POSIX metadata operations on one volume.

use shoal_proto::registry as pb;
use shoal_proto::registry::namespace_server::Namespace;
use tonic::{Request, Response, Status};

use super::convert::{attr_to_wire, file_type_from_wire, file_type_to_wire, inode_to_wire};
use super::{RegistryCore, request_id};
use crate::cluster;
use crate::command::{Command, InodeAttr, NamespaceOp, Outcome, SetAttr, TimeSet};
use crate::limits::MAX_READDIR_ENTRIES;
use crate::namespace;

pub struct NamespaceService {
    core: RegistryCore,
}

impl NamespaceService {
    pub fn new(core: RegistryCore) -> NamespaceService {
        NamespaceService { core }
    }

    async fn change<T>(&self, request: &Request<T>, volume_id: u64, op: NamespaceOp) -> Result<Outcome, Status> {
        let request_id = request_id(request)?;
        self.core
            .propose(Command::Namespace { volume_id, op }, request_id)
            .await
    }

    async fn change_attr<T>(
        &self,
        request: &Request<T>,
        volume_id: u64,
        op: NamespaceOp,
    ) -> Result<Response<pb::AttrReply>, Status> {
        match self.change(request, volume_id, op).await? {
            Outcome::Attr(attr) => Ok(Response::new(attr_to_wire(&attr))),
            other => Err(unexpected(other)),
        }
    }
}

fn unexpected(outcome: Outcome) -> Status {
    Status::internal(format!("registry produced an unexpected result {outcome:?}"))
}

fn time_from_wire(update: Option<pb::TimeUpdate>) -> Option<TimeSet> {
    match update?.kind? {
        pb::time_update::Kind::Now(true) => Some(TimeSet::Now),
        pb::time_update::Kind::Now(false) => None,
        pb::time_update::Kind::Ns(ns) => Some(TimeSet::At(ns)),
    }
}

fn reply_attr(attr: Result<InodeAttr, shoal_proto::errno::FsError>) -> Result<Response<pb::AttrReply>, Status> {
    Ok(Response::new(attr_to_wire(&attr?)))
}

#[tonic::async_trait]
impl Namespace for NamespaceService {
    async fn lookup(&self, request: Request<pb::LookupRequest>) -> Result<Response<pb::AttrReply>, Status> {
        let state = self.core.read_barrier(&request).await?;
        let r = request.get_ref();
        reply_attr(namespace::lookup(state.as_ref(), r.volume_id, r.parent, &r.name))
    }

    async fn get_attr(&self, request: Request<pb::GetAttrRequest>) -> Result<Response<pb::AttrReply>, Status> {
        let state = self.core.read_barrier(&request).await?;
        let r = request.get_ref();
        reply_attr(namespace::getattr(state.as_ref(), r.volume_id, r.ino))
    }

    async fn file_exists(&self, request: Request<pb::GetAttrRequest>) -> Result<Response<pb::FileExistsReply>, Status> {
        let state = self.core.read_barrier(&request).await?;
        let r = request.get_ref();
        let (volume_exists, file_exists) =
            namespace::file_exists(state.as_ref(), r.volume_id, r.ino).map_err(|e| e.to_status())?;
        Ok(Response::new(pb::FileExistsReply {
            volume_exists,
            file_exists,
        }))
    }

    async fn set_attr(&self, request: Request<pb::SetAttrRequest>) -> Result<Response<pb::AttrReply>, Status> {
        let r = request.get_ref();
        if r.access_only {
            let others = r.mode.is_some()
                || r.uid.is_some()
                || r.gid.is_some()
                || r.size_bytes.is_some()
                || r.atime.is_some()
                || r.mtime.is_some();
            if others {
                return Err(Status::invalid_argument(
                    "an access-only setattr changes atime alone: leave the other fields empty",
                ));
            }
            let op = NamespaceOp::Accessed { ino: r.ino };
            return self.change_attr(&request, r.volume_id, op).await;
        }
        let change = SetAttr {
            mode: r.mode,
            uid: r.uid,
            gid: r.gid,
            size_bytes: r.size_bytes,
            atime: time_from_wire(r.atime),
            mtime: time_from_wire(r.mtime),
        };
        let op = NamespaceOp::SetAttr { ino: r.ino, change };
        self.change_attr(&request, r.volume_id, op).await
    }

    async fn create(&self, request: Request<pb::CreateRequest>) -> Result<Response<pb::AttrReply>, Status> {
        let r = request.get_ref();
        let op = NamespaceOp::Create {
            parent: r.parent,
            name: r.name.to_vec(),
            file_type: file_type_from_wire(r.file_type)?,
            mode: r.mode,
            uid: r.uid,
            gid: r.gid,
            rdev: r.rdev,
            exclusive: r.exclusive,
        };
        self.change_attr(&request, r.volume_id, op).await
    }

    async fn mkdir(&self, request: Request<pb::MkdirRequest>) -> Result<Response<pb::AttrReply>, Status> {
        let r = request.get_ref();
        let op = NamespaceOp::Mkdir {
            parent: r.parent,
            name: r.name.to_vec(),
            mode: r.mode,
            uid: r.uid,
            gid: r.gid,
        };
        self.change_attr(&request, r.volume_id, op).await
    }

    async fn symlink(&self, request: Request<pb::SymlinkRequest>) -> Result<Response<pb::AttrReply>, Status> {
        let r = request.get_ref();
        let op = NamespaceOp::Symlink {
            parent: r.parent,
            name: r.name.to_vec(),
            target: r.target.to_vec(),
            uid: r.uid,
            gid: r.gid,
        };
        self.change_attr(&request, r.volume_id, op).await
    }

    async fn link(&self, request: Request<pb::LinkRequest>) -> Result<Response<pb::AttrReply>, Status> {
        let r = request.get_ref();
        let op = NamespaceOp::Link {
            ino: r.ino,
            new_parent: r.new_parent,
            new_name: r.new_name.to_vec(),
        };
        self.change_attr(&request, r.volume_id, op).await
    }

    async fn unlink(&self, request: Request<pb::UnlinkRequest>) -> Result<Response<pb::UnlinkReply>, Status> {
        let r = request.get_ref();
        let op = if r.keep_open_session == 0 {
            NamespaceOp::Unlink {
                parent: r.parent,
                name: r.name.to_vec(),
            }
        } else {
            NamespaceOp::UnlinkKeepOpen {
                parent: r.parent,
                name: r.name.to_vec(),
                session_id: r.keep_open_session,
            }
        };
        match self.change(&request, r.volume_id, op).await? {
            Outcome::Unlinked { ino, nlink_remaining } => Ok(Response::new(pb::UnlinkReply { ino, nlink_remaining })),
            other => Err(unexpected(other)),
        }
    }

    async fn rmdir(&self, request: Request<pb::RmdirRequest>) -> Result<Response<pb::Empty>, Status> {
        let r = request.get_ref();
        let op = NamespaceOp::Rmdir {
            parent: r.parent,
            name: r.name.to_vec(),
        };
        self.change(&request, r.volume_id, op).await?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn rename(&self, request: Request<pb::RenameRequest>) -> Result<Response<pb::RenameReply>, Status> {
        let r = request.get_ref();
        let op = NamespaceOp::Rename {
            parent: r.parent,
            name: r.name.to_vec(),
            new_parent: r.new_parent,
            new_name: r.new_name.to_vec(),
            flags: r.flags,
        };
        match self.change(&request, r.volume_id, op).await? {
            Outcome::Renamed { replaced } => Ok(Response::new(pb::RenameReply {
                replaced_ino: replaced.map(|(ino, _)| ino),
                replaced_nlink_remaining: replaced.map_or(0, |(_, nlink)| nlink),
            })),
            other => Err(unexpected(other)),
        }
    }

    async fn readlink(&self, request: Request<pb::ReadlinkRequest>) -> Result<Response<pb::ReadlinkReply>, Status> {
        let state = self.core.read_barrier(&request).await?;
        let r = request.get_ref();
        let target = namespace::readlink(state.as_ref(), r.volume_id, r.ino)?;
        Ok(Response::new(pb::ReadlinkReply { target: target.into() }))
    }

    async fn read_dir(&self, request: Request<pb::ReadDirRequest>) -> Result<Response<pb::ReadDirReply>, Status> {
        let state = self.core.read_barrier(&request).await?;
        let r = request.get_ref();
        let max_entries = if r.max_entries == 0 {
            MAX_READDIR_ENTRIES
        } else {
            r.max_entries
        };
        let listing = namespace::readdir(
            state.as_ref(),
            r.volume_id,
            r.ino,
            r.after_cookie,
            max_entries,
            r.with_attrs,
        )?;
        let entries = listing
            .entries
            .into_iter()
            .map(|entry| pb::DirEntry {
                attr: entry.attr.as_ref().map(|inode| inode_to_wire(entry.ino, inode)),
                name: entry.name.into(),
                ino: entry.ino,
                file_type: file_type_to_wire(entry.file_type) as i32,
                cookie: entry.cookie,
            })
            .collect();
        Ok(Response::new(pb::ReadDirReply {
            entries,
            end_of_directory: listing.end_of_directory,
        }))
    }

    async fn get_xattr(&self, request: Request<pb::GetXattrRequest>) -> Result<Response<pb::XattrValue>, Status> {
        let state = self.core.read_barrier(&request).await?;
        let r = request.get_ref();
        let value = namespace::getxattr(state.as_ref(), r.volume_id, r.ino, &r.name)?;
        Ok(Response::new(pb::XattrValue { value: value.into() }))
    }

    async fn set_xattr(&self, request: Request<pb::SetXattrRequest>) -> Result<Response<pb::Empty>, Status> {
        let r = request.get_ref();
        let op = NamespaceOp::SetXattr {
            ino: r.ino,
            name: r.name.to_vec(),
            value: r.value.to_vec(),
            flags: r.flags,
        };
        self.change(&request, r.volume_id, op).await?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn list_xattr(&self, request: Request<pb::ListXattrRequest>) -> Result<Response<pb::ListXattrReply>, Status> {
        let state = self.core.read_barrier(&request).await?;
        let r = request.get_ref();
        let names = namespace::listxattr(state.as_ref(), r.volume_id, r.ino)?;
        Ok(Response::new(pb::ListXattrReply {
            names: names.into_iter().map(Into::into).collect(),
        }))
    }

    async fn remove_xattr(&self, request: Request<pb::RemoveXattrRequest>) -> Result<Response<pb::Empty>, Status> {
        let r = request.get_ref();
        let op = NamespaceOp::RemoveXattr {
            ino: r.ino,
            name: r.name.to_vec(),
        };
        self.change(&request, r.volume_id, op).await?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn extend_file(&self, request: Request<pb::ExtendFileRequest>) -> Result<Response<pb::AttrReply>, Status> {
        let r = request.get_ref();
        let op = NamespaceOp::ExtendFile {
            ino: r.ino,
            end_offset_bytes: r.end_offset_bytes,
        };
        self.change_attr(&request, r.volume_id, op).await
    }

    async fn assign_layout(
        &self,
        request: Request<pb::AssignLayoutRequest>,
    ) -> Result<Response<pb::AttrReply>, Status> {
        let r = request.get_ref();
        let op = NamespaceOp::AssignLayout { ino: r.ino };
        self.change_attr(&request, r.volume_id, op).await
    }

    async fn release_orphan(&self, request: Request<pb::ReleaseOrphanRequest>) -> Result<Response<pb::Empty>, Status> {
        let r = request.get_ref();
        let op = NamespaceOp::ReleaseOrphan { ino: r.ino };
        self.change(&request, r.volume_id, op).await?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn stat_fs(&self, request: Request<pb::StatFsRequest>) -> Result<Response<pb::StatFsReply>, Status> {
        let state = self.core.read_barrier(&request).await?;
        let r = request.get_ref();
        let free = cluster::cluster_free_bytes(state.as_ref())?;
        let stat = namespace::statfs(state.as_ref(), r.volume_id, free)?;
        Ok(Response::new(pb::StatFsReply {
            total_bytes: stat.total_bytes,
            free_bytes: stat.free_bytes,
            used_bytes: stat.used_bytes,
            total_inodes: stat.total_inodes,
            free_inodes: stat.free_inodes,
            used_inodes: stat.used_inodes,
            block_size_bytes: stat.block_size_bytes,
            max_name_bytes: stat.max_name_bytes,
        }))
    }
}
