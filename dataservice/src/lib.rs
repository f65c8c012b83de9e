//! Shoal's data service: stores chunks with per-block checksums on local disks and
//! replicates writes along chains of data services (see `node` for the protocol).
//!
//! - [`store`]: chunk files and their metadata and checksums (blocking I/O).
//! - [`node`]: request handling: chain checks, replication, copies, repair.
//! - [`merge`]: group commit of small client writes at a chain's head.
//! - [`background`]: heartbeats, chain table refresh, filling syncing successors, healing,
//!   garbage collection.
//! - [`frames`]: the listener: framed chunk reads and writes beside gRPC on one port.
//! - [`server`]: startup and registration.

pub mod background;
pub mod frames;
pub mod identity;
mod json_file;
pub mod locks;
pub mod merge;
pub mod node;
pub mod peers;
pub mod run_state;
pub mod server;
pub mod service;
pub mod stats;
pub mod status;
pub mod store;
