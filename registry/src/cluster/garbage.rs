//! Deleted files and volumes whose chunks are still on data services.
//!
//! The registry does not track chunks, so it cannot delete them itself. It keeps a record
//! per deleted file (with its layout) and per deleted volume; each data service lists the
//! records that concern it, removes the chunks, and acknowledges. A record is forgotten once
//! every data service that could hold its chunks has acknowledged: the up targets of the
//! file's chains (a target that is down now is refilled from its predecessor when it
//! returns, which removes chunks the predecessor no longer has), or every up data service
//! for a volume.

use std::collections::BTreeSet;

use shoal_engine::KvRead;
use shoal_proto::errno::FsError;

use super::data_services::{list_data_services, services_after};
use super::scan_records;
use super::volumes::list_volumes;
use crate::keys::{self, SPACE_CLUSTER, SPACE_NAMESPACE};
use crate::namespace::{NsError, NsResult};
use crate::records::{ChainRecord, DataServiceState, DeletedVolume, GarbageRecord};
use crate::txn::Txn;

/// Most garbage records one listing returns.
pub const MAX_GARBAGE_LISTED: usize = 1024;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GarbageList {
    pub files: Vec<(u64, u64)>,
    pub volumes: Vec<u64>,
}

fn chain(txn: &Txn<'_>, chain_id: u64) -> NsResult<Option<ChainRecord>> {
    Ok(txn.get_record(SPACE_CLUSTER, &keys::chain(chain_id))?)
}

/// Up data services that may hold chunks of a deleted file.
fn file_holders(txn: &Txn<'_>, up: &BTreeSet<u64>, record: &GarbageRecord) -> NsResult<BTreeSet<u64>> {
    let mut holders = BTreeSet::new();
    for chain_id in &record.layout.chain_ids {
        if let Some(chain) = chain(txn, *chain_id)? {
            holders.extend(
                chain
                    .targets
                    .iter()
                    .map(|t| t.data_service_id)
                    .filter(|id| up.contains(id)),
            );
        }
    }
    Ok(holders)
}

fn up_services(txn: &Txn<'_>) -> NsResult<BTreeSet<u64>> {
    Ok(services_after(txn, None)?
        .into_iter()
        .filter(|s| s.state == DataServiceState::Up)
        .map(|s| s.id)
        .collect())
}

/// The deleted files and volumes whose chunks `data_service_id` still has to remove.
pub fn list_garbage(read: &dyn KvRead, data_service_id: u64, max_entries: usize) -> Result<GarbageList, FsError> {
    let limit = max_entries.clamp(1, MAX_GARBAGE_LISTED);
    let txn = Txn::new(read);
    let result = (|| {
        let up: BTreeSet<u64> = list_data_services(read)
            .map_err(NsError::Fs)?
            .into_iter()
            .filter(|s| s.state == DataServiceState::Up)
            .map(|s| s.id)
            .collect();
        let mut list = GarbageList::default();
        let deleted: Vec<DeletedVolume> = scan_records(read, SPACE_CLUSTER, &keys::deleted_volume_prefix(), limit)?;
        list.volumes = deleted
            .into_iter()
            .filter(|v| !v.acked_by.contains(&data_service_id))
            .map(|v| v.id)
            .collect();
        for volume in list_volumes(read)? {
            let volume_id = volume.record.id;
            for record in scan_records::<GarbageRecord>(read, SPACE_NAMESPACE, &keys::garbage_prefix(volume_id), limit)?
            {
                if list.files.len() >= limit {
                    return Ok(list);
                }
                let holders = file_holders(&txn, &up, &record)?;
                if holders.contains(&data_service_id) && !record.acked_by.contains(&data_service_id) {
                    list.files.push((volume_id, record.ino));
                }
            }
        }
        Ok(list)
    })();
    result.map_err(NsError::into_fs_error)
}

pub(super) fn ack(txn: &mut Txn<'_>, data_service_id: u64, files: &[(u64, u64)], volumes: &[u64]) -> NsResult<()> {
    let up = up_services(txn)?;
    for (volume_id, ino) in files.iter().take(MAX_GARBAGE_LISTED) {
        let key = keys::garbage(*volume_id, *ino);
        let Some(mut record) = txn.get_record::<GarbageRecord>(SPACE_NAMESPACE, &key)? else {
            continue;
        };
        if !record.acked_by.contains(&data_service_id) {
            record.acked_by.push(data_service_id);
        }
        let holders = file_holders(txn, &up, &record)?;
        if holders.iter().all(|id| record.acked_by.contains(id)) {
            txn.delete(SPACE_NAMESPACE, key);
        } else {
            txn.put_record(SPACE_NAMESPACE, key, &record);
        }
    }
    for volume_id in volumes.iter().take(MAX_GARBAGE_LISTED) {
        let key = keys::deleted_volume(*volume_id);
        let Some(mut record) = txn.get_record::<DeletedVolume>(SPACE_CLUSTER, &key)? else {
            continue;
        };
        if !record.acked_by.contains(&data_service_id) {
            record.acked_by.push(data_service_id);
        }
        if up.iter().all(|id| record.acked_by.contains(id)) {
            txn.delete(SPACE_CLUSTER, key);
        } else {
            txn.put_record(SPACE_CLUSTER, key, &record);
        }
    }
    Ok(())
}
