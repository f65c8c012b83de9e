//! How data-service failures reach callers as gRPC statuses.

use shoal_proto::STALE_CHAIN_METADATA_KEY;
use shoal_proto::errno::{Errno, FsError};
use tonic::Status;

use crate::store::{ChunkId, StoreError};

pub fn from_store(error: StoreError) -> Status {
    match &error {
        // DATA_LOSS tells the reader to try another member; the message says what failed.
        StoreError::Corrupt { .. } => Status::data_loss(error.to_string()),
        StoreError::NoSpace { .. } => FsError::new(Errno::ENOSPC, error.to_string()).to_status(),
        StoreError::Invalid { .. } => FsError::new(Errno::EINVAL, error.to_string()).to_status(),
        StoreError::Io { .. } | StoreError::Engine(_) | StoreError::Metadata(_) => {
            FsError::new(Errno::EIO, error.to_string()).to_status()
        }
    }
}

/// The caller's view of the chain is not this service's: refresh and retry.
pub fn stale_chain(chain_id: u64, theirs: u64, ours: Option<u64>, why: &str) -> Status {
    let mut status = Status::failed_precondition(format!(
        "chain {chain_id}: request for version {theirs}, this data service has {}: {why}; refresh the chain table",
        ours.map_or("no such chain".to_string(), |v| format!("version {v}"))
    ));
    if let Ok(value) = ours.unwrap_or(0).to_string().parse() {
        status.metadata_mut().insert(STALE_CHAIN_METADATA_KEY, value);
    }
    status
}

pub fn invalid(message: impl Into<String>) -> Status {
    FsError::new(Errno::EINVAL, message).to_status()
}

/// Metadata key marking a forwarded change refused because the receiver's copy of the chunk
/// has another history than the sender's (see `out_of_sync`).
const OUT_OF_SYNC_METADATA_KEY: &str = "shoal-chunk-out-of-sync";

/// A forwarded change reached a member whose chunk is not at the sender's prior version:
/// applying it would mix two histories, so the sender must send the whole chunk instead.
pub fn out_of_sync(chunk: &ChunkId, ours: u64, prior: u64) -> Status {
    let mut status = Status::aborted(format!(
        "{chunk}: this member holds version {ours}, the sender had version {prior} before this change; \
         send the whole chunk"
    ));
    status.metadata_mut().insert(
        OUT_OF_SYNC_METADATA_KEY,
        tonic::metadata::MetadataValue::from_static("1"),
    );
    status
}

pub fn is_out_of_sync(status: &Status) -> bool {
    status.code() == tonic::Code::Aborted && status.metadata().get(OUT_OF_SYNC_METADATA_KEY).is_some()
}
