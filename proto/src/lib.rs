//! Shoal's wire contracts, generated from `shoal/*.proto`, and the error convention they share.
//!
//! Every crate that talks gRPC depends on this one and nothing else for message types, so
//! the contract lives in one place. [`errno`] fixes how file-system errors cross the wire.

pub mod errno;
pub mod leader;

#[allow(clippy::all, clippy::pedantic)]
pub mod registry {
    tonic::include_proto!("shoal.registry");
}

/// Largest gRPC message any Shoal service accepts. Chunk writes are at most 1 MiB of payload;
/// snapshot pieces are smaller. The margin covers headers and checksums.
pub const MAX_MESSAGE_SIZE_BYTES: usize = 16 << 20;
