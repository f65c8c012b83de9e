//! The records the state machine stores, and their on-disk encoding.
//!
//! Encoding: one format byte, then postcard (compact, positional serde). Invariant: fields
//! and enum variants are only ever appended, and a changed meaning gets a new format byte;
//! otherwise a restarted node would misread its own state or a snapshot from a peer.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

const FORMAT_V1: u8 = 1;

/// A stored record that could not be decoded: the state is damaged or from an unknown version.
#[derive(Debug, thiserror::Error)]
#[error("corrupt {what} record: {reason}")]
pub struct CorruptRecord {
    pub what: &'static str,
    pub reason: String,
}

pub trait Record: Serialize + DeserializeOwned {
    const NAME: &'static str;

    fn encode(&self) -> Vec<u8> {
        let out = vec![FORMAT_V1];
        postcard::to_extend(self, out).expect("records always serialize")
    }

    fn decode(bytes: &[u8]) -> Result<Self, CorruptRecord> {
        decode_body(bytes, Self::NAME)
    }
}

/// Decodes a record of format 1 as `T`; `what` names it in errors.
fn decode_body<T: DeserializeOwned>(bytes: &[u8], what: &'static str) -> Result<T, CorruptRecord> {
    let corrupt = |reason: String| CorruptRecord { what, reason };
    match bytes.split_first() {
        Some((&FORMAT_V1, body)) => postcard::from_bytes(body).map_err(|e| corrupt(e.to_string())),
        Some((version, _)) => Err(corrupt(format!("unknown format version {version}"))),
        None => Err(corrupt("empty value".into())),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FileType {
    Regular,
    Directory,
    Symlink,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
}

/// Where a regular file's chunks live. See the design brief: chunk i is on
/// `chain_ids[i % stripe_width]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    pub chunk_size_bytes: u64,
    pub stripe_width: u32,
    pub chain_ids: Vec<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inode {
    pub file_type: FileType,
    /// Permission bits (07777); the type lives in `file_type`.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size_bytes: u64,
    pub nlink: u32,
    pub atime_ns: i64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub rdev: u32,
    /// Directories only: the one directory that holds this one (itself for the root).
    pub parent: u64,
    /// Directories only: cookie the next new entry gets. Cookies are never reused.
    pub next_cookie: u64,
    /// Regular files only.
    pub layout: Option<Layout>,
    /// Symlinks only.
    pub symlink_target: Option<Vec<u8>>,
    pub xattr_count: u32,
}
impl Record for Inode {
    const NAME: &'static str = "inode";
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dentry {
    pub ino: u64,
    pub file_type: FileType,
    pub cookie: u64,
}
impl Record for Dentry {
    const NAME: &'static str = "directory entry";
}

/// The readdir-order twin of a [`Dentry`], keyed by (parent, cookie).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderEntry {
    pub name: Vec<u8>,
    pub ino: u64,
    pub file_type: FileType,
}
impl Record for OrderEntry {
    const NAME: &'static str = "directory order entry";
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeUsage {
    pub next_ino: u64,
    /// Sum of the sizes of the volume's regular files.
    pub used_bytes: u64,
    pub used_inodes: u64,
}
impl Record for VolumeUsage {
    const NAME: &'static str = "volume usage";
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeRecord {
    pub id: u64,
    pub name: String,
    pub replicas: u32,
    pub chunk_size_bytes: u64,
    pub stripe_width: u32,
    /// 0 means unlimited.
    pub quota_bytes: u64,
    pub quota_inodes: u64,
    pub created_ns: i64,
}
impl Record for VolumeRecord {
    const NAME: &'static str = "volume";
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterCounters {
    pub next_volume_id: u64,
    pub next_data_service_id: u64,
    pub next_chain_id: u64,
    pub chain_table_version: u64,
}
impl Record for ClusterCounters {
    const NAME: &'static str = "cluster counters";
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DataServiceState {
    Up,
    Down,
    Draining,
    Removed,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskRecord {
    pub path: String,
    pub capacity_bytes: u64,
    pub free_bytes: u64,
    pub healthy: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataServiceRecord {
    pub id: u64,
    pub uuid: String,
    pub address: String,
    pub zone: String,
    pub disks: Vec<DiskRecord>,
    pub state: DataServiceState,
    pub registered_ns: i64,
}
impl Record for DataServiceRecord {
    const NAME: &'static str = "data service";
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainTarget {
    pub data_service_id: u64,
    /// False while the target is being filled from its predecessor.
    pub serving: bool,
}

/// A chain member's last chain version as a serving target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServedAt {
    pub data_service_id: u64,
    pub chain_version: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainRecord {
    pub id: u64,
    /// Bumped on every change of `targets`.
    pub version: u64,
    /// Copies the chain is meant to hold.
    pub replicas: u32,
    /// Head first.
    pub targets: Vec<ChainTarget>,
    /// Former targets that are down; they rejoin when they return.
    pub missing: Vec<u64>,
    /// Some file's layout names this chain. Chains nobody uses yet hold no data, so the
    /// registry may rearrange them freely to keep the table balanced.
    pub used: bool,
    /// For members (targets and missing) that have served: the last chain version at which
    /// they did. A member whose entry equals `served_version` holds every change the chain
    /// ever acknowledged (changes are acknowledged only when every serving member has them).
    pub served_at: Vec<ServedAt>,
    /// The last chain version at which any member served.
    pub served_version: u64,
    /// Members that came back after a possible power loss and have not served since: they
    /// hold every synced change, but may lack acknowledged changes that were not synced yet.
    pub suspect: Vec<u64>,
    /// Bumped whenever the chain resumed from a member that may lack acknowledged changes
    /// (a suspect, or one an operator accepted the loss for). A client that wrote before and
    /// syncs after a bump cannot know its writes survived, so its sync fails.
    pub loss_epoch: u64,
}

impl ChainRecord {
    pub fn has_target(&self, data_service_id: u64) -> bool {
        self.targets.iter().any(|t| t.data_service_id == data_service_id)
    }

    /// The last chain version at which `data_service_id` served (0: never).
    pub fn served_at(&self, data_service_id: u64) -> u64 {
        self.served_at
            .iter()
            .find(|s| s.data_service_id == data_service_id)
            .map_or(0, |s| s.chain_version)
    }

    /// True if `data_service_id` holds every change this chain acknowledged (up to the
    /// unsynced ones, if it is a suspect).
    pub fn is_current(&self, data_service_id: u64) -> bool {
        self.served_at(data_service_id) == self.served_version
    }

    pub fn is_serving(&self) -> bool {
        self.targets.iter().any(|t| t.serving)
    }

    /// Missing members that hold every acknowledged change: while no target serves, the
    /// chain waits for one of them.
    pub fn waiting_for(&self) -> Vec<u64> {
        if self.is_serving() {
            return Vec::new();
        }
        self.missing.iter().copied().filter(|id| self.is_current(*id)).collect()
    }
}

/// `ChainRecord` as written before members' serving versions were recorded.
#[derive(Deserialize)]
struct ChainRecordV1 {
    id: u64,
    version: u64,
    replicas: u32,
    targets: Vec<ChainTarget>,
    missing: Vec<u64>,
    used: bool,
}

impl Record for ChainRecord {
    const NAME: &'static str = "chain";

    /// Records without the appended fields decode too: every serving target is taken to
    /// have served at the current version (what the old rules assumed).
    fn decode(bytes: &[u8]) -> Result<Self, CorruptRecord> {
        let current = decode_body::<ChainRecord>(bytes, Self::NAME);
        let Err(error) = current else { return current };
        let Ok(old) = decode_body::<ChainRecordV1>(bytes, Self::NAME) else {
            return Err(error);
        };
        let serving: Vec<ServedAt> = old
            .targets
            .iter()
            .filter(|t| t.serving)
            .map(|t| ServedAt {
                data_service_id: t.data_service_id,
                chain_version: old.version,
            })
            .collect();
        Ok(ChainRecord {
            served_version: if serving.is_empty() { 0 } else { old.version },
            served_at: serving,
            id: old.id,
            version: old.version,
            replicas: old.replicas,
            targets: old.targets,
            missing: old.missing,
            used: old.used,
            suspect: Vec::new(),
            loss_epoch: 0,
        })
    }
}

/// A file unlinked while a mount had it open: its chunks stay until that mount releases it
/// (or its session expires), then it becomes garbage.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrphanRecord {
    pub ino: u64,
    pub layout: Layout,
    pub size_bytes: u64,
    pub session_id: u64,
    pub since_ns: i64,
}
impl Record for OrphanRecord {
    const NAME: &'static str = "orphan";
}

/// The chains that files of volumes with one replication factor are striped over.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainSet {
    pub chain_ids: Vec<u64>,
}
impl Record for ChainSet {
    const NAME: &'static str = "chain set";
}

/// A deleted volume: every chunk stored under its id is to be reclaimed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeletedVolume {
    pub id: u64,
    pub name: String,
    /// Data services that have removed the volume's chunks.
    pub acked_by: Vec<u64>,
}
impl Record for DeletedVolume {
    const NAME: &'static str = "deleted volume";
}

/// A file whose last link is gone: its chunks are to be reclaimed from the data services.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GarbageRecord {
    pub ino: u64,
    pub layout: Layout,
    pub size_bytes: u64,
    pub deleted_ns: i64,
    /// Data services that have removed the file's chunks.
    pub acked_by: Vec<u64>,
}
impl Record for GarbageRecord {
    const NAME: &'static str = "garbage";
}

/// A plain big-endian u64 value (used for id indexes).
pub fn encode_u64(value: u64) -> Vec<u8> {
    value.to_be_bytes().to_vec()
}

pub fn decode_u64(bytes: &[u8], what: &'static str) -> Result<u64, CorruptRecord> {
    let array: [u8; 8] = bytes.try_into().map_err(|_| CorruptRecord {
        what,
        reason: format!("expected 8 bytes, found {}", bytes.len()),
    })?;
    Ok(u64::from_be_bytes(array))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_reject_unknown_versions() {
        let dentry = Dentry {
            ino: 42,
            file_type: FileType::Symlink,
            cookie: 7,
        };
        let bytes = dentry.encode();
        assert_eq!(Dentry::decode(&bytes).unwrap(), dentry);
        let mut future = bytes.clone();
        future[0] = 9;
        assert!(
            Dentry::decode(&future)
                .unwrap_err()
                .to_string()
                .contains("unknown format version 9")
        );
        assert!(Dentry::decode(&[]).is_err());
        assert!(Dentry::decode(&bytes[..2]).is_err(), "truncated record must not decode");
    }
}
