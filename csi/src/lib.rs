//! Shoal's CSI driver: how Kubernetes gets PersistentVolumes, ReadWriteMany above all, from
//! a Shoal cluster.
//!
//! One library, run by the `shoal` binary in two roles:
//!
//! - `shoal csi controller` ([`controller`]): creates, expands, lists and deletes Shoal
//!   volumes for the external-provisioner and external-resizer sidecars. A volume's byte
//!   quota is the claim's capacity; StorageClass parameters ([`params`]) choose its layout.
//! - `shoal csi node` ([`node`]): stages a volume on a node as one FUSE mount and
//!   bind-mounts it into each pod that uses it. The FUSE sessions belong to `shoal agent`,
//!   a separate long-lived process, so a restart of this plugin never takes a pod's mount
//!   down; the plugin keeps no state and rebuilds its view from `/proc/self/mountinfo`.
//!
//! Both serve [`identity`]. Requests are checked in [`capability`] and [`params`]; a
//! malformed request gets the gRPC code the CSI specification names, and changes nothing.

pub mod capability;
pub mod controller;
mod errors;
pub mod identity;
pub mod node;
pub mod params;
pub mod server;

/// The driver's name, as Kubernetes objects (CSIDriver, StorageClass) spell it.
pub const DRIVER_NAME: &str = "csi.shoal.io";
/// The CSI specification version this driver implements.
pub const CSI_SPEC_VERSION: &str = "1.12.0";
