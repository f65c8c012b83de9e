//! Data services: registration (idempotent by uuid), reported disks, administrative state.
//!
//! Liveness (heartbeats) is not replicated: the leader keeps it in memory, and only changes
//! of state (up, down, draining, removed) and of capacity go through the log.

use shoal_engine::{KvRead, ScanControl};
use shoal_proto::errno::{Errno, FsError};

use super::{counters, store_counters, validate_label};
use crate::keys::{self, SPACE_CLUSTER};
use crate::limits::{MAX_DATA_SERVICES, MAX_DISKS_PER_DATA_SERVICE};
use crate::namespace::{NsError, NsResult};
use crate::records::{DataServiceRecord, DataServiceState, DiskRecord, decode_u64, encode_u64};
use crate::txn::Txn;

fn validate_disks(disks: &[DiskRecord]) -> NsResult<()> {
    if disks.len() > MAX_DISKS_PER_DATA_SERVICE {
        return Err(NsError::fs(
            Errno::EINVAL,
            format!(
                "{} disks reported; the limit is {MAX_DISKS_PER_DATA_SERVICE}",
                disks.len()
            ),
        ));
    }
    for disk in disks {
        validate_label("disk path", &disk.path, false)?;
        if disk.free_bytes > disk.capacity_bytes {
            return Err(NsError::fs(
                Errno::EINVAL,
                format!(
                    "disk {:?} reports {} free bytes of {} capacity",
                    disk.path, disk.free_bytes, disk.capacity_bytes
                ),
            ));
        }
    }
    Ok(())
}

fn load(txn: &Txn<'_>, id: u64) -> NsResult<DataServiceRecord> {
    txn.get_record(SPACE_CLUSTER, &keys::data_service(id))?
        .ok_or_else(|| NsError::fs(Errno::ENOENT, format!("data service {id} is not registered")))
}

/// A data service announcing itself at start.
pub(super) struct Registration<'a> {
    pub uuid: &'a str,
    pub address: &'a str,
    pub zone: &'a str,
    pub disks: &'a [DiskRecord],
    /// Its machine may have lost power since it last ran: writes it had not synced may be
    /// gone, so it rejoins its chains as a suspect (see `chains::reconcile`).
    pub after_power_loss: bool,
}

pub(super) fn register(txn: &mut Txn<'_>, now_ns: i64, registration: &Registration<'_>) -> NsResult<DataServiceRecord> {
    let Registration {
        uuid,
        address,
        zone,
        disks,
        after_power_loss,
    } = *registration;
    validate_label("data service uuid", uuid, false)?;
    validate_label("data service address", address, false)?;
    validate_label("zone", zone, true)?;
    validate_disks(disks)?;
    if let Some(bytes) = txn.get(SPACE_CLUSTER, &keys::data_service_uuid(uuid))? {
        let id = decode_u64(&bytes, "data service uuid index")?;
        let mut record = load(txn, id)?;
        if record.state == DataServiceState::Removed {
            return Err(NsError::fs(
                Errno::EPERM,
                format!("data service {id} ({uuid}) was removed; wipe its disks to add it as a new service"),
            ));
        }
        record.address = address.to_string();
        record.zone = zone.to_string();
        record.disks = disks.to_vec();
        if record.state == DataServiceState::Down {
            record.state = DataServiceState::Up;
        }
        txn.put_record(SPACE_CLUSTER, keys::data_service(id), &record);
        let services = services_after(txn, Some(&record))?;
        super::chains::reconcile(txn, &services, after_power_loss.then_some(id))?;
        return Ok(record);
    }
    if count(txn.base())? >= MAX_DATA_SERVICES {
        return Err(NsError::fs(
            Errno::ENOSPC,
            format!("the cluster already has {MAX_DATA_SERVICES} data services"),
        ));
    }
    let mut counters = counters(txn)?;
    counters.next_data_service_id = counters.next_data_service_id.max(1);
    let id = counters.next_data_service_id;
    counters.next_data_service_id += 1;
    store_counters(txn, &counters);
    let record = DataServiceRecord {
        id,
        uuid: uuid.to_string(),
        address: address.to_string(),
        zone: zone.to_string(),
        disks: disks.to_vec(),
        state: DataServiceState::Up,
        registered_ns: now_ns,
    };
    txn.put_record(SPACE_CLUSTER, keys::data_service(id), &record);
    txn.put(SPACE_CLUSTER, keys::data_service_uuid(uuid), encode_u64(id));
    reconcile_chains(txn, &record)?;
    Ok(record)
}

/// Every data service as this command leaves it (`changed` overrides the stored copy).
pub(super) fn services_after(txn: &Txn<'_>, changed: Option<&DataServiceRecord>) -> NsResult<Vec<DataServiceRecord>> {
    let mut services = list_data_services(txn.base()).map_err(NsError::Fs)?;
    if let Some(changed) = changed {
        match services.iter_mut().find(|s| s.id == changed.id) {
            Some(existing) => *existing = changed.clone(),
            None => services.push(changed.clone()),
        }
    }
    Ok(services)
}

fn reconcile_chains(txn: &mut Txn<'_>, changed: &DataServiceRecord) -> NsResult<()> {
    let services = services_after(txn, Some(changed))?;
    super::chains::reconcile(txn, &services, None)
}

pub(super) fn update_disks(txn: &mut Txn<'_>, id: u64, disks: &[DiskRecord]) -> NsResult<DataServiceRecord> {
    validate_disks(disks)?;
    let mut record = load(txn, id)?;
    record.disks = disks.to_vec();
    txn.put_record(SPACE_CLUSTER, keys::data_service(id), &record);
    Ok(record)
}

pub(super) fn set_state(txn: &mut Txn<'_>, id: u64, state: DataServiceState) -> NsResult<DataServiceRecord> {
    let mut record = load(txn, id)?;
    if record.state == DataServiceState::Removed && state != DataServiceState::Removed {
        return Err(NsError::fs(
            Errno::EPERM,
            format!("data service {id} was removed; removal is final"),
        ));
    }
    let changed = record.state != state;
    record.state = state;
    txn.put_record(SPACE_CLUSTER, keys::data_service(id), &record);
    if changed {
        reconcile_chains(txn, &record)?;
    }
    Ok(record)
}

fn count(read: &dyn KvRead) -> NsResult<usize> {
    let prefix = keys::data_service_prefix();
    let end = shoal_engine::prefix_end(&prefix).expect("non-empty prefix");
    let mut count = 0;
    read.scan(SPACE_CLUSTER, &prefix, Some(&end), &mut |_, _| {
        count += 1;
        if count > MAX_DATA_SERVICES {
            ScanControl::Stop
        } else {
            ScanControl::Continue
        }
    })?;
    Ok(count)
}

pub fn data_service(read: &dyn KvRead, id: u64) -> Result<DataServiceRecord, FsError> {
    load(&Txn::new(read), id).map_err(NsError::into_fs_error)
}

pub fn list_data_services(read: &dyn KvRead) -> Result<Vec<DataServiceRecord>, FsError> {
    super::scan_records(read, SPACE_CLUSTER, &keys::data_service_prefix(), MAX_DATA_SERVICES)
        .map_err(NsError::into_fs_error)
}

/// Free bytes on the healthy disks of data services that are up.
pub fn cluster_free_bytes(read: &dyn KvRead) -> Result<u64, FsError> {
    Ok(list_data_services(read)?
        .iter()
        .filter(|service| service.state == DataServiceState::Up)
        .flat_map(|service| service.disks.iter())
        .filter(|disk| disk.healthy)
        .map(|disk| disk.free_bytes)
        .sum())
}
