//! Shoal's client library, shared by the FUSE client, the CSI driver and the CLI.
//!
//! [`DataClient`] moves file bytes directly between the caller and the data services;
//! [`file`] combines it with the registry for writes, reads and truncation.
//!
//! [`gateway`] tunnels data-service connections through one `shoal gateway` host, for
//! clients that cannot reach the data services directly.
//!
//! [`RegistryClient`] reaches the registry: it finds and remembers the leader, follows a
//! follower's redirect, and retries failed calls within a deadline. Mutating calls carry a
//! request id that stays the same across retries, so a retry after a lost reply is answered
//! from the registry's memory instead of being applied twice.

pub mod chains;
pub mod data;
mod error;
pub mod file;
pub mod frames;
pub mod gateway;
pub mod mountinfo;
pub mod path;
mod registry;
mod retry;
pub mod size;
pub mod unix;

pub use data::{DataClient, FileLayout};
pub use error::ClientError;
pub use registry::RegistryClient;
pub use retry::RetryPolicy;
pub use shoal_proto::errno::{Errno, FsError};
pub use shoal_proto::registry as proto;
pub use size::parse_size;
