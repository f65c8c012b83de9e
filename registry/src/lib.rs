//! Shoal's registry: the single source of truth for cluster membership, volumes, the chain
//! table and every volume's namespace, replicated with Raft.
//!
//! Layers, from the bottom:
//! - [`records`], [`keys`], [`txn`]: what is stored and where, and a command's view of it.
//! - [`namespace`], [`cluster`]: deterministic POSIX and cluster logic over a transaction.
//! - [`command`]: the replicated commands and their results.
//! - [`raft`]: openraft storage (log, state machine, snapshots) and networking.
//! - [`service`]: the gRPC services clients call, and [`node`], which wires one node up.
//!
//! The registry is never on the data path: it says where bytes live, never moves them.

pub mod cluster;
pub mod command;
pub mod execute;
pub mod keys;
pub mod limits;
pub mod namespace;
pub mod node;
pub mod raft;
pub mod records;
pub mod service;
pub mod sessions;
pub mod txn;
