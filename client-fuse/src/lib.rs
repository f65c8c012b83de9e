//! Shoal's FUSE client: a volume as a local directory.
//!
//! Metadata comes from the registry (cached by the kernel for a short time), file bytes go
//! straight between this client and the data services. A write-back buffer ([`writes`])
//! gathers consecutive writes into large ones; sequential reads are fetched ahead in 1 MiB
//! blocks from several chains at once. Consistency with other clients is close-to-open: closing a
//! file makes its data durable and its size visible; opening one sees what others closed.
//!
//! - [`mount`]: options, session setup and the mount's background work.
//! - [`fs`]: the `fuser::Filesystem` adapter; every request becomes a tokio task.
//! - [`core`]: state shared by requests, commits, reads with read-ahead.
//! - `ops`: the operations, by kind (entries, directories, files, xattrs).
//! - [`inodes`], [`handles`], [`cache`]: bounded per-mount state.
//! - [`budget`]: the memory pool mounts of one process share.
//! - [`agent`]: `shoal agent`, every Shoal mount of a node in one long-lived process.

pub mod agent;
pub mod attrs;
pub mod budget;
pub mod cache;
pub mod core;
pub mod fs;
pub mod handles;
pub mod inodes;
pub mod mount;
mod ops;
pub mod writes;

pub use crate::core::{AtimeMode, FsConfig};
pub use mount::{FS_NAME_PREFIX, MountOptions, run};
