//! Shoal's wire contracts, generated from `shoal/*.proto`, and the error convention they share.
//!
//! Every crate that talks gRPC depends on this one and nothing else for message types, so
//! the contract lives in one place. [`errno`] fixes how file-system errors cross the wire.

pub mod checksum;
pub mod errno;
pub mod frame;
pub mod leader;
pub mod volume;

#[allow(clippy::all, clippy::pedantic)]
pub mod data {
    tonic::include_proto!("shoal.data");
}

#[allow(clippy::all, clippy::pedantic)]
pub mod registry {
    tonic::include_proto!("shoal.registry");
}

/// The node agent's API (`shoal agent`, asked by the CSI node plugin to mount and unmount).
#[allow(clippy::all, clippy::pedantic)]
pub mod agent {
    tonic::include_proto!("shoal.agent");

    /// Most mounts one agent serves (a node runs far fewer pods' volumes than this); the
    /// CSI node plugin tells the scheduler, so no node is asked for more.
    pub const MAX_MOUNTS: usize = 256;
    /// A mount's file-system name is this and the volume's name (`shoal:web` in
    /// mountinfo), so tools and the CSI node plugin can tell which volume a mount serves.
    pub const FS_NAME_PREFIX: &str = "shoal:";
}

/// The Container Storage Interface, v1.12 (the subset Shoal serves; see `csi/csi.proto`).
#[allow(clippy::all, clippy::pedantic)]
pub mod csi {
    tonic::include_proto!("csi.v1");
}

/// Metadata key on a refused data-service request: the chain version the data service
/// knows. The caller refreshes its chain table from the registry and retries.
pub const STALE_CHAIN_METADATA_KEY: &str = "shoal-stale-chain";

/// Largest payload of one chunk read or write message.
pub const MAX_DATA_PAYLOAD_BYTES: usize = 4 << 20;

/// Most ranges one merged chunk write carries (`WriteRequest.extents`).
pub const MAX_WRITE_EXTENTS: usize = 256;

/// HTTP/2 flow-control windows for data traffic: large enough that one stream can keep a
/// loopback or LAN link busy with 1 MiB messages.
pub const DATA_STREAM_WINDOW_BYTES: u32 = 8 << 20;
pub const DATA_CONNECTION_WINDOW_BYTES: u32 = 32 << 20;

/// Largest gRPC message any Shoal service accepts. Chunk writes are at most 1 MiB of payload;
/// snapshot pieces are smaller. The margin covers headers and checksums.
pub const MAX_MESSAGE_SIZE_BYTES: usize = 16 << 20;
