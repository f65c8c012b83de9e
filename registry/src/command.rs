//! The commands replicated through the Raft log, and what applying one returns.
//!
//! Invariant: applying a command is deterministic. Everything that could differ between
//! nodes (the clock above all) is decided by the node that proposes the command and travels
//! inside the [`Proposal`] (`now_ns`). Variants and fields are only appended (see `records`).

use serde::{Deserialize, Serialize};
use shoal_proto::errno::FsError;

use crate::records::{
    ChainRecord, DataServiceRecord, DataServiceState, DiskRecord, FileType, Inode, VolumeRecord, VolumeUsage,
};

/// A time to set on an inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TimeSet {
    Now,
    At(i64),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size_bytes: Option<u64>,
    pub atime: Option<TimeSet>,
    pub mtime: Option<TimeSet>,
}

/// A change to one volume's namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NamespaceOp {
    SetAttr {
        ino: u64,
        change: SetAttr,
    },
    Create {
        parent: u64,
        name: Vec<u8>,
        file_type: FileType,
        mode: u32,
        uid: u32,
        gid: u32,
        rdev: u32,
        exclusive: bool,
    },
    Mkdir {
        parent: u64,
        name: Vec<u8>,
        mode: u32,
        uid: u32,
        gid: u32,
    },
    Symlink {
        parent: u64,
        name: Vec<u8>,
        target: Vec<u8>,
        uid: u32,
        gid: u32,
    },
    Link {
        ino: u64,
        new_parent: u64,
        new_name: Vec<u8>,
    },
    Unlink {
        parent: u64,
        name: Vec<u8>,
    },
    Rmdir {
        parent: u64,
        name: Vec<u8>,
    },
    Rename {
        parent: u64,
        name: Vec<u8>,
        new_parent: u64,
        new_name: Vec<u8>,
        flags: u32,
    },
    SetXattr {
        ino: u64,
        name: Vec<u8>,
        value: Vec<u8>,
        flags: u32,
    },
    RemoveXattr {
        ino: u64,
        name: Vec<u8>,
    },
    /// Bytes up to `end_offset_bytes` were written: grow the size to it (never shrink).
    ExtendFile {
        ino: u64,
        end_offset_bytes: u64,
    },
    /// Give a regular file created before any chain existed its layout.
    AssignLayout {
        ino: u64,
    },
    /// Unlink, but if this removes the last link of a regular file, keep its data for the
    /// mount session that still has it open (an orphan).
    UnlinkKeepOpen {
        parent: u64,
        name: Vec<u8>,
        session_id: u64,
    },
    /// The session that held an orphan closed it: its data becomes garbage.
    ReleaseOrphan {
        ino: u64,
    },
    /// The file or directory was read or listed: its atime becomes now; ctime stays.
    Accessed {
        ino: u64,
    },
}

/// Settings of a new volume; zero fields take defaults.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeSpec {
    pub name: String,
    pub replicas: u32,
    pub quota_bytes: u64,
    pub quota_inodes: u64,
    pub stripe_width: u32,
    pub chunk_size_bytes: u64,
    /// Owner and permission bits of the volume's root directory (mode 0 means 0755).
    pub root_uid: u32,
    pub root_gid: u32,
    pub root_mode: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    Namespace {
        volume_id: u64,
        op: NamespaceOp,
    },
    CreateVolume {
        spec: VolumeSpec,
    },
    DeleteVolume {
        name: String,
    },
    SetVolumeQuota {
        name: String,
        quota_bytes: u64,
        quota_inodes: u64,
    },
    RegisterDataService {
        uuid: String,
        address: String,
        zone: String,
        disks: Vec<DiskRecord>,
    },
    UpdateDataServiceDisks {
        id: u64,
        disks: Vec<DiskRecord>,
    },
    SetDataServiceState {
        id: u64,
        state: DataServiceState,
    },
    /// A syncing chain target has been filled by its predecessor.
    ChainSyncDone {
        chain_id: u64,
        chain_version: u64,
        data_service_id: u64,
    },
    /// A data service removed the chunks of these deleted files and volumes.
    AckGarbage {
        data_service_id: u64,
        files: Vec<(u64, u64)>,
        volumes: Vec<u64>,
    },
    /// `RegisterDataService` from a data service whose machine may have lost power since
    /// it last ran (its unsynced writes may be gone).
    RegisterDataServiceAfterPowerLoss {
        uuid: String,
        address: String,
        zone: String,
        disks: Vec<DiskRecord>,
    },
    /// An operator accepts the loss of the changes only a chain's missing members hold.
    AcceptChainLoss {
        chain_id: u64,
    },
}

impl Command {
    /// A short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Command::Namespace { op, .. } => match op {
                NamespaceOp::SetAttr { .. } => "setattr",
                NamespaceOp::Create { .. } => "create",
                NamespaceOp::Mkdir { .. } => "mkdir",
                NamespaceOp::Symlink { .. } => "symlink",
                NamespaceOp::Link { .. } => "link",
                NamespaceOp::Unlink { .. } => "unlink",
                NamespaceOp::Rmdir { .. } => "rmdir",
                NamespaceOp::Rename { .. } => "rename",
                NamespaceOp::SetXattr { .. } => "setxattr",
                NamespaceOp::RemoveXattr { .. } => "removexattr",
                NamespaceOp::ExtendFile { .. } => "extend-file",
                NamespaceOp::AssignLayout { .. } => "assign-layout",
                NamespaceOp::UnlinkKeepOpen { .. } => "unlink-keep-open",
                NamespaceOp::ReleaseOrphan { .. } => "release-orphan",
                NamespaceOp::Accessed { .. } => "accessed",
            },
            Command::CreateVolume { .. } => "create-volume",
            Command::DeleteVolume { .. } => "delete-volume",
            Command::SetVolumeQuota { .. } => "set-volume-quota",
            Command::RegisterDataService { .. } => "register-data-service",
            Command::UpdateDataServiceDisks { .. } => "update-data-service-disks",
            Command::SetDataServiceState { .. } => "set-data-service-state",
            Command::ChainSyncDone { .. } => "chain-sync-done",
            Command::AckGarbage { .. } => "ack-garbage",
            Command::RegisterDataServiceAfterPowerLoss { .. } => "register-data-service-after-power-loss",
            Command::AcceptChainLoss { .. } => "accept-chain-loss",
        }
    }
}

/// Identifies one client request across retries, so a command whose acknowledgement was
/// lost (leader crash, timeout) is applied once even if the client sends it again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RequestId {
    /// Random per client process.
    pub client_id: u64,
    /// Increases with every request of that client.
    pub sequence: u64,
}

/// What travels in the Raft log: a command and, for client requests, its identity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    pub request_id: Option<RequestId>,
    /// The proposer's clock: every time the command records is this one.
    pub now_ns: i64,
    pub command: Command,
}

impl std::fmt::Display for Proposal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.request_id {
            Some(id) => write!(
                f,
                "{} (client {:x} #{})",
                self.command.kind(),
                id.client_id,
                id.sequence
            ),
            None => write!(f, "{}", self.command.kind()),
        }
    }
}

/// An inode and its number, as returned to clients.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InodeAttr {
    pub ino: u64,
    pub inode: Inode,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeInfo {
    pub record: VolumeRecord,
    pub usage: VolumeUsage,
}

/// The successful result of applying a command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Done,
    Attr(InodeAttr),
    Unlinked { ino: u64, nlink_remaining: u32 },
    Renamed { replaced: Option<(u64, u32)> },
    Volume(VolumeInfo),
    DataService(DataServiceRecord),
    Chain(ChainRecord),
    LossAccepted(crate::cluster::LossAccepted),
}

/// What the state machine answers for one log entry. Errors are part of the replicated
/// result: every node decides the same error for the same command.
pub type CommandResult = Result<Outcome, FsError>;
