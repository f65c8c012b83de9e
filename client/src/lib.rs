//! Shoal's client library, shared by the FUSE client, the CSI driver and the CLI.
//!
//! [`RegistryClient`] reaches the registry: it finds and remembers the leader, follows a
//! follower's redirect, and retries failed calls within a deadline. Mutating calls carry a
//! request id that stays the same across retries, so a retry after a lost reply is answered
//! from the registry's memory instead of being applied twice.

mod error;
mod registry;
mod retry;

pub use error::ClientError;
pub use registry::RegistryClient;
pub use retry::RetryPolicy;
pub use shoal_proto::errno::{Errno, FsError};
pub use shoal_proto::registry as proto;
