//! Volumes: creation with validated settings, quotas, deletion, listing.

use shoal_engine::{KvRead, ScanControl};
use shoal_proto::errno::{Errno, FsError};

use super::{counters, store_counters};
use crate::command::{VolumeInfo, VolumeSpec};
use crate::keys::{self, SPACE_CLUSTER, SPACE_NAMESPACE};
use crate::limits::*;
use crate::namespace::{self, NsError, NsResult};
use crate::records::{DeletedVolume, VolumeRecord, decode_u64, encode_u64};
use crate::txn::Txn;

/// Volume names as [`shoal_proto::volume::is_valid_volume_name`] allows them.
pub fn validate_name(name: &str) -> Result<(), FsError> {
    if shoal_proto::volume::is_valid_volume_name(name) {
        return Ok(());
    }
    Err(FsError::new(
        Errno::EINVAL,
        format!(
            "volume name {name:?} is invalid: use 1 to {MAX_VOLUME_NAME_BYTES} letters, digits, '.', '_' or '-', starting with a letter or digit"
        ),
    ))
}

fn invalid(message: String) -> NsError {
    NsError::fs(Errno::EINVAL, message)
}

pub(super) fn create(txn: &mut Txn<'_>, now_ns: i64, spec: &VolumeSpec) -> NsResult<VolumeInfo> {
    validate_name(&spec.name)?;
    let replicas = if spec.replicas == 0 {
        DEFAULT_REPLICAS
    } else {
        spec.replicas
    };
    if !(MIN_REPLICAS..=MAX_REPLICAS).contains(&replicas) {
        return Err(invalid(format!(
            "volume {:?}: {replicas} replicas requested; choose {MIN_REPLICAS} to {MAX_REPLICAS}",
            spec.name
        )));
    }
    let chunk_size_bytes = if spec.chunk_size_bytes == 0 {
        DEFAULT_CHUNK_SIZE_BYTES
    } else {
        spec.chunk_size_bytes
    };
    if !chunk_size_bytes.is_power_of_two() || !(MIN_CHUNK_SIZE_BYTES..=MAX_CHUNK_SIZE_BYTES).contains(&chunk_size_bytes)
    {
        return Err(invalid(format!(
            "volume {:?}: chunk size {chunk_size_bytes} bytes must be a power of two from {MIN_CHUNK_SIZE_BYTES} to {MAX_CHUNK_SIZE_BYTES}",
            spec.name
        )));
    }
    let stripe_width = if spec.stripe_width == 0 {
        DEFAULT_STRIPE_WIDTH
    } else {
        spec.stripe_width
    };
    if stripe_width > MAX_STRIPE_WIDTH {
        return Err(invalid(format!(
            "volume {:?}: stripe width {stripe_width} exceeds the limit of {MAX_STRIPE_WIDTH}",
            spec.name
        )));
    }
    if txn.get(SPACE_CLUSTER, &keys::volume_name(&spec.name))?.is_some() {
        return Err(NsError::fs(
            Errno::EEXIST,
            format!("volume {:?} already exists", spec.name),
        ));
    }
    if count_volumes(txn.base())? >= MAX_VOLUMES {
        return Err(NsError::fs(
            Errno::ENOSPC,
            format!("the cluster already holds {MAX_VOLUMES} volumes"),
        ));
    }
    let mut counters = counters(txn)?;
    counters.next_volume_id = counters.next_volume_id.max(1);
    let id = counters.next_volume_id;
    counters.next_volume_id += 1;
    store_counters(txn, &counters);
    let record = VolumeRecord {
        id,
        name: spec.name.clone(),
        replicas,
        chunk_size_bytes,
        stripe_width,
        quota_bytes: spec.quota_bytes,
        quota_inodes: spec.quota_inodes,
        created_ns: now_ns,
    };
    txn.put_record(SPACE_CLUSTER, keys::volume(id), &record);
    txn.put(SPACE_CLUSTER, keys::volume_name(&spec.name), encode_u64(id));
    let root_mode = if spec.root_mode == 0 { 0o755 } else { spec.root_mode };
    namespace::new_volume_root(txn, id, now_ns, (spec.root_uid, spec.root_gid), root_mode);
    Ok(VolumeInfo {
        usage: namespace::load_usage(txn, id)?,
        record,
    })
}

fn id_by_name(txn: &Txn<'_>, name: &str) -> NsResult<u64> {
    validate_name(name)?;
    let bytes = txn
        .get(SPACE_CLUSTER, &keys::volume_name(name))?
        .ok_or_else(|| NsError::fs(Errno::ENOENT, format!("volume {name:?} does not exist")))?;
    Ok(decode_u64(&bytes, "volume name index")?)
}

pub(super) fn delete(txn: &mut Txn<'_>, name: &str) -> NsResult<()> {
    let id = id_by_name(txn, name)?;
    txn.delete(SPACE_CLUSTER, keys::volume(id));
    txn.delete(SPACE_CLUSTER, keys::volume_name(name));
    txn.delete_range(
        SPACE_NAMESPACE,
        keys::volume_range_start(id),
        keys::volume_range_end(id),
    );
    let deleted = DeletedVolume {
        id,
        name: name.to_string(),
        acked_by: Vec::new(),
    };
    txn.put_record(SPACE_CLUSTER, keys::deleted_volume(id), &deleted);
    Ok(())
}

pub(super) fn set_quota(txn: &mut Txn<'_>, name: &str, quota_bytes: u64, quota_inodes: u64) -> NsResult<VolumeInfo> {
    let id = id_by_name(txn, name)?;
    let mut record = namespace::load_volume(txn, id)?;
    record.quota_bytes = quota_bytes;
    record.quota_inodes = quota_inodes;
    txn.put_record(SPACE_CLUSTER, keys::volume(id), &record);
    Ok(VolumeInfo {
        usage: namespace::load_usage(txn, id)?,
        record,
    })
}

fn count_volumes(read: &dyn KvRead) -> NsResult<usize> {
    let prefix = keys::volume_prefix();
    let end = shoal_engine::prefix_end(&prefix).expect("non-empty prefix");
    let mut count = 0;
    read.scan(SPACE_CLUSTER, &prefix, Some(&end), &mut |_, _| {
        count += 1;
        if count > MAX_VOLUMES {
            ScanControl::Stop
        } else {
            ScanControl::Continue
        }
    })?;
    Ok(count)
}

pub fn volume_info(read: &dyn KvRead, volume_id: u64) -> Result<VolumeInfo, FsError> {
    let txn = Txn::new(read);
    let result = (|| {
        Ok(VolumeInfo {
            record: namespace::load_volume(&txn, volume_id)?,
            usage: namespace::load_usage(&txn, volume_id)?,
        })
    })();
    result.map_err(NsError::into_fs_error)
}

pub fn volume_by_name(read: &dyn KvRead, name: &str) -> Result<VolumeInfo, FsError> {
    let txn = Txn::new(read);
    let id = id_by_name(&txn, name).map_err(NsError::into_fs_error)?;
    volume_info(read, id)
}

pub fn list_volumes(read: &dyn KvRead) -> Result<Vec<VolumeInfo>, FsError> {
    let records: Vec<VolumeRecord> = super::scan_records(read, SPACE_CLUSTER, &keys::volume_prefix(), MAX_VOLUMES)
        .map_err(NsError::into_fs_error)?;
    records.into_iter().map(|record| volume_info(read, record.id)).collect()
}
