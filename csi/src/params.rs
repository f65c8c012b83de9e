//! StorageClass parameters: what a volume is made of, and the claim's capacity as a quota.
//!
//! Parameters are camelCase, as Kubernetes writes them:
//!
//! | parameter     | meaning                               | allowed                         |
//! |---------------|---------------------------------------|---------------------------------|
//! | `replicas`    | copies of every byte                  | 1 to 5 (default 3)              |
//! | `stripeWidth` | chains one file is striped over       | 1 to 64 (default 4)             |
//! | `chunkSize`   | bytes per chunk ("4Mi", "1M", bytes)  | power of two, 64 KiB to 64 MiB  |
//! | `inodeQuota`  | most files and directories            | 1 to 2^40 (default: unlimited)  |
//!
//! Keys under `csi.storage.k8s.io/` (what the external-provisioner adds, such as the claim's
//! name with `--extra-create-metadata`) are accepted and ignored. Any other key is refused
//! with INVALID_ARGUMENT naming it: a misspelt parameter silently ignored would make a
//! volume with settings nobody asked for.

use std::collections::HashMap;

use shoal_proto::csi;
use shoal_proto::volume::*;
use tonic::Status;

use crate::errors::invalid;

/// Keys Kubernetes' sidecars may add; never ours to interpret.
const KUBERNETES_PREFIX: &str = "csi.storage.k8s.io/";
/// Most inodes an `inodeQuota` may name.
pub const MAX_INODE_QUOTA: u64 = 1 << 40;
/// The largest capacity a claim may ask for, in bytes (the registry's largest file size).
pub const MAX_CAPACITY_BYTES: u64 = 1 << 50;
/// Quotas are whole statfs blocks: a capacity is rounded up to this where the limit allows.
pub const CAPACITY_GRANULE_BYTES: u64 = 4096;

/// The layout a StorageClass asks for; `None` means "the registry's default".
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VolumeParams {
    pub replicas: Option<u32>,
    pub stripe_width: Option<u32>,
    pub chunk_size_bytes: Option<u64>,
    pub inode_quota: Option<u64>,
}

fn integer(key: &str, value: &str, range: std::ops::RangeInclusive<u64>) -> Result<u64, Status> {
    let parsed: u64 = value
        .trim()
        .parse()
        .map_err(|_| invalid(format!("StorageClass parameter {key}={value:?} is not a whole number")))?;
    if !range.contains(&parsed) {
        return Err(invalid(format!(
            "StorageClass parameter {key}={parsed} is out of range: use {} to {}",
            range.start(),
            range.end()
        )));
    }
    Ok(parsed)
}

impl VolumeParams {
    pub fn parse(parameters: &HashMap<String, String>) -> Result<VolumeParams, Status> {
        let mut params = VolumeParams::default();
        for (key, value) in parameters {
            match key.as_str() {
                "replicas" => {
                    let range = u64::from(MIN_REPLICAS)..=u64::from(MAX_REPLICAS);
                    params.replicas = Some(integer(key, value, range)? as u32);
                }
                "stripeWidth" => {
                    params.stripe_width = Some(integer(key, value, 1..=u64::from(MAX_STRIPE_WIDTH))? as u32);
                }
                "chunkSize" => params.chunk_size_bytes = Some(chunk_size(value)?),
                "inodeQuota" => params.inode_quota = Some(integer(key, value, 1..=MAX_INODE_QUOTA)?),
                other if other.starts_with(KUBERNETES_PREFIX) => {}
                other => {
                    return Err(invalid(format!(
                        "unknown StorageClass parameter {other:?}; Shoal knows replicas, stripeWidth, chunkSize and inodeQuota"
                    )));
                }
            }
        }
        Ok(params)
    }

    /// Replicas the volume will have (the registry's default if unset).
    pub fn effective_replicas(&self) -> u32 {
        self.replicas.unwrap_or(DEFAULT_REPLICAS)
    }

    /// Why an existing volume does not match these parameters (`None`: it does). Unset
    /// parameters match what the registry's default would have given.
    pub fn mismatch(&self, volume: &shoal_proto::registry::Volume) -> Option<String> {
        let wanted = [
            (
                "replicas",
                u64::from(self.effective_replicas()),
                u64::from(volume.replicas),
            ),
            (
                "stripeWidth",
                u64::from(self.stripe_width.unwrap_or(DEFAULT_STRIPE_WIDTH)),
                u64::from(volume.stripe_width),
            ),
            (
                "chunkSize",
                self.chunk_size_bytes.unwrap_or(DEFAULT_CHUNK_SIZE_BYTES),
                volume.chunk_size_bytes,
            ),
            ("inodeQuota", self.inode_quota.unwrap_or(0), volume.quota_inodes),
        ];
        wanted
            .iter()
            .find(|(_, asked, has)| asked != has)
            .map(|(key, asked, has)| format!("{key} {asked} was asked for, the volume has {has}"))
    }
}

fn chunk_size(value: &str) -> Result<u64, Status> {
    let bytes = shoal_client::parse_size(value)
        .map_err(|error| invalid(format!("StorageClass parameter chunkSize: {error}")))?;
    if !bytes.is_power_of_two() || !(MIN_CHUNK_SIZE_BYTES..=MAX_CHUNK_SIZE_BYTES).contains(&bytes) {
        return Err(invalid(format!(
            "StorageClass parameter chunkSize={value:?} must be a power of two from {MIN_CHUNK_SIZE_BYTES} to {MAX_CHUNK_SIZE_BYTES} bytes"
        )));
    }
    Ok(bytes)
}

/// The byte quota for a capacity range: `required_bytes` rounded up to whole 4 KiB blocks
/// (or exactly `limit_bytes` when rounding would pass it), `limit_bytes` when only a limit
/// is given, and 0 (no quota) when neither is.
pub fn quota_for(range: Option<&csi::CapacityRange>) -> Result<u64, Status> {
    let Some(range) = range else { return Ok(0) };
    if range.required_bytes < 0 || range.limit_bytes < 0 {
        return Err(invalid(format!(
            "capacity range {}..{} bytes: sizes cannot be negative",
            range.required_bytes, range.limit_bytes
        )));
    }
    let (required, limit) = (range.required_bytes as u64, range.limit_bytes as u64);
    if limit != 0 && required > limit {
        return Err(Status::out_of_range(format!(
            "capacity range: required {required} bytes exceeds the limit of {limit} bytes"
        )));
    }
    let quota = if required == 0 {
        limit
    } else {
        let rounded = required.div_ceil(CAPACITY_GRANULE_BYTES) * CAPACITY_GRANULE_BYTES;
        if limit != 0 { rounded.min(limit) } else { rounded }
    };
    if quota > MAX_CAPACITY_BYTES {
        return Err(Status::out_of_range(format!(
            "a capacity of {quota} bytes exceeds Shoal's largest volume of {MAX_CAPACITY_BYTES} bytes"
        )));
    }
    assert!(
        quota >= required && (limit == 0 || quota <= limit),
        "quota outside its range"
    );
    Ok(quota)
}

/// True if a volume with byte quota `quota` (0: none) satisfies `range`.
pub fn quota_satisfies(quota: u64, range: Option<&csi::CapacityRange>) -> bool {
    let Some(range) = range else { return true };
    let (required, limit) = (range.required_bytes.max(0) as u64, range.limit_bytes.max(0) as u64);
    if quota == 0 {
        // No quota: as large as the cluster, which no limit bounds.
        return limit == 0;
    }
    quota >= required && (limit == 0 || quota <= limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn parameters_parse_and_bad_ones_name_themselves() {
        let params = VolumeParams::parse(&map(&[
            ("replicas", "2"),
            ("stripeWidth", "8"),
            ("chunkSize", "1Mi"),
            ("inodeQuota", "1000"),
            ("csi.storage.k8s.io/pvc/name", "uploads"),
        ]))
        .unwrap();
        assert_eq!(params.replicas, Some(2));
        assert_eq!(params.chunk_size_bytes, Some(1 << 20));
        for (key, value) in [
            ("replicas", "0"),
            ("replicas", "9"),
            ("stripeWidth", "1000"),
            ("chunkSize", "3M"),
            ("chunkSize", "1G"),
            ("inodeQuota", "-1"),
            ("replica", "3"),
        ] {
            let error = VolumeParams::parse(&map(&[(key, value)])).unwrap_err();
            assert_eq!(error.code(), tonic::Code::InvalidArgument);
            assert!(error.message().contains(key), "{key}: {}", error.message());
        }
    }

    #[test]
    fn capacities_round_up_within_their_limit() {
        let range = |required, limit| csi::CapacityRange {
            required_bytes: required,
            limit_bytes: limit,
        };
        assert_eq!(quota_for(None).unwrap(), 0);
        assert_eq!(quota_for(Some(&range(1, 0))).unwrap(), 4096);
        assert_eq!(quota_for(Some(&range(5000, 6000))).unwrap(), 6000);
        assert_eq!(quota_for(Some(&range(0, 1 << 30))).unwrap(), 1 << 30);
        assert_eq!(
            quota_for(Some(&range(10, 5))).unwrap_err().code(),
            tonic::Code::OutOfRange
        );
        assert_eq!(
            quota_for(Some(&range(-1, 0))).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        assert!(quota_satisfies(8192, Some(&range(8000, 0))));
        assert!(!quota_satisfies(8192, Some(&range(9000, 0))));
        assert!(!quota_satisfies(0, Some(&range(1, 100))));
    }
}
