//! Conversions between stored records and wire messages.

use shoal_proto::errno::{Errno, FsError};
use shoal_proto::registry as pb;

use crate::command::{InodeAttr, VolumeInfo};
use crate::records::{ChainRecord, DataServiceRecord, DataServiceState, DiskRecord, FileType, Inode, Layout};

pub fn file_type_to_wire(file_type: FileType) -> pb::FileType {
    match file_type {
        FileType::Regular => pb::FileType::Regular,
        FileType::Directory => pb::FileType::Directory,
        FileType::Symlink => pb::FileType::Symlink,
        FileType::Fifo => pb::FileType::Fifo,
        FileType::Socket => pb::FileType::Socket,
        FileType::CharDevice => pb::FileType::CharDevice,
        FileType::BlockDevice => pb::FileType::BlockDevice,
    }
}

pub fn file_type_from_wire(value: i32) -> Result<FileType, FsError> {
    match pb::FileType::try_from(value) {
        Ok(pb::FileType::Regular) => Ok(FileType::Regular),
        Ok(pb::FileType::Directory) => Ok(FileType::Directory),
        Ok(pb::FileType::Symlink) => Ok(FileType::Symlink),
        Ok(pb::FileType::Fifo) => Ok(FileType::Fifo),
        Ok(pb::FileType::Socket) => Ok(FileType::Socket),
        Ok(pb::FileType::CharDevice) => Ok(FileType::CharDevice),
        Ok(pb::FileType::BlockDevice) => Ok(FileType::BlockDevice),
        _ => Err(FsError::new(Errno::EINVAL, format!("unknown file type {value}"))),
    }
}

fn layout_to_wire(layout: &Layout) -> pb::Layout {
    pb::Layout {
        chunk_size_bytes: layout.chunk_size_bytes,
        stripe_width: layout.stripe_width,
        chain_ids: layout.chain_ids.clone(),
    }
}

pub fn inode_to_wire(ino: u64, inode: &Inode) -> pb::Attr {
    pb::Attr {
        ino,
        file_type: file_type_to_wire(inode.file_type) as i32,
        mode: inode.mode,
        uid: inode.uid,
        gid: inode.gid,
        size_bytes: inode.size_bytes,
        nlink: inode.nlink,
        atime_ns: inode.atime_ns,
        mtime_ns: inode.mtime_ns,
        ctime_ns: inode.ctime_ns,
        rdev: inode.rdev,
        layout: inode.layout.as_ref().map(layout_to_wire),
    }
}

pub fn attr_to_wire(attr: &InodeAttr) -> pb::AttrReply {
    pb::AttrReply {
        attr: Some(inode_to_wire(attr.ino, &attr.inode)),
    }
}

pub fn volume_to_wire(info: &VolumeInfo) -> pb::Volume {
    let record = &info.record;
    pb::Volume {
        id: record.id,
        name: record.name.clone(),
        replicas: record.replicas,
        chunk_size_bytes: record.chunk_size_bytes,
        stripe_width: record.stripe_width,
        quota_bytes: record.quota_bytes,
        quota_inodes: record.quota_inodes,
        used_bytes: info.usage.used_bytes,
        used_inodes: info.usage.used_inodes,
        created_ns: record.created_ns,
    }
}

pub fn state_to_wire(state: DataServiceState) -> pb::DataServiceState {
    match state {
        DataServiceState::Up => pb::DataServiceState::Up,
        DataServiceState::Down => pb::DataServiceState::Down,
        DataServiceState::Draining => pb::DataServiceState::Draining,
        DataServiceState::Removed => pb::DataServiceState::Removed,
    }
}

pub fn state_from_wire(value: i32) -> Result<DataServiceState, FsError> {
    match pb::DataServiceState::try_from(value) {
        Ok(pb::DataServiceState::Up) => Ok(DataServiceState::Up),
        Ok(pb::DataServiceState::Down) => Ok(DataServiceState::Down),
        Ok(pb::DataServiceState::Draining) => Ok(DataServiceState::Draining),
        Ok(pb::DataServiceState::Removed) => Ok(DataServiceState::Removed),
        _ => Err(FsError::new(
            Errno::EINVAL,
            format!("unknown data service state {value}"),
        )),
    }
}

pub fn disk_from_wire(disk: &pb::Disk) -> DiskRecord {
    DiskRecord {
        path: disk.path.clone(),
        capacity_bytes: disk.capacity_bytes,
        free_bytes: disk.free_bytes,
        healthy: disk.healthy,
    }
}

pub fn disk_to_wire(disk: &DiskRecord) -> pb::Disk {
    pb::Disk {
        path: disk.path.clone(),
        capacity_bytes: disk.capacity_bytes,
        free_bytes: disk.free_bytes,
        healthy: disk.healthy,
    }
}

pub fn data_service_to_wire(record: &DataServiceRecord, last_heartbeat_age_ms: Option<u64>) -> pb::DataService {
    pb::DataService {
        id: record.id,
        uuid: record.uuid.clone(),
        address: record.address.clone(),
        zone: record.zone.clone(),
        disks: record.disks.iter().map(disk_to_wire).collect(),
        state: state_to_wire(record.state) as i32,
        registered_ns: record.registered_ns,
        last_heartbeat_age_ms,
    }
}

pub fn chain_to_wire(chain: &ChainRecord) -> pb::Chain {
    pb::Chain {
        id: chain.id,
        version: chain.version,
        targets: chain
            .targets
            .iter()
            .map(|t| pb::ChainTarget {
                data_service_id: t.data_service_id,
                serving: t.serving,
            })
            .collect(),
        replicas: chain.replicas,
        missing: chain.missing.clone(),
        waiting_for: chain.waiting_for(),
        loss_epoch: chain.loss_epoch,
        suspect: chain.suspect.clone(),
    }
}
