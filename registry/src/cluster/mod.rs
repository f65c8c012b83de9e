//! Cluster-wide state: volumes, data services and the chain table.
//!
//! Like the namespace, this is pure logic over a [`Txn`], applied identically on every node.

mod chains;
mod data_services;
mod garbage;
mod volumes;

pub use chains::{ChainTable, LossAccepted, chain_table, select_layout};
pub use data_services::{cluster_free_bytes, data_service, list_data_services};
pub use garbage::{GarbageList, list_garbage};
pub use volumes::{list_volumes, volume_by_name, volume_info};

use crate::command::{Command, Outcome};
use crate::namespace::NsResult;
use crate::records::Record;
use crate::txn::Txn;
use shoal_engine::{KvRead, ScanControl};

/// Applies a cluster command. Namespace commands are not handled here.
pub fn apply(txn: &mut Txn<'_>, now_ns: i64, command: &Command) -> NsResult<Outcome> {
    match command {
        Command::Namespace { .. } => unreachable!("namespace commands are applied by the namespace module"),
        Command::CreateVolume { spec } => volumes::create(txn, now_ns, spec).map(Outcome::Volume),
        Command::DeleteVolume { name } => volumes::delete(txn, name).map(|()| Outcome::Done),
        Command::SetVolumeQuota {
            name,
            quota_bytes,
            quota_inodes,
        } => volumes::set_quota(txn, name, *quota_bytes, *quota_inodes).map(Outcome::Volume),
        Command::RegisterDataService {
            uuid,
            address,
            zone,
            disks,
        } => register(txn, now_ns, uuid, address, zone, disks, false),
        Command::RegisterDataServiceAfterPowerLoss {
            uuid,
            address,
            zone,
            disks,
        } => register(txn, now_ns, uuid, address, zone, disks, true),
        Command::UpdateDataServiceDisks { id, disks } => {
            data_services::update_disks(txn, *id, disks).map(Outcome::DataService)
        }
        Command::SetDataServiceState { id, state } => {
            data_services::set_state(txn, *id, *state).map(Outcome::DataService)
        }
        Command::ChainSyncDone {
            chain_id,
            chain_version,
            data_service_id,
        } => {
            let services = data_services::services_after(txn, None)?;
            chains::sync_done(txn, &services, *chain_id, *chain_version, *data_service_id).map(Outcome::Chain)
        }
        Command::AckGarbage {
            data_service_id,
            files,
            volumes,
        } => garbage::ack(txn, *data_service_id, files, volumes).map(|()| Outcome::Done),
        Command::AcceptChainLoss { chain_id } => {
            let services = data_services::services_after(txn, None)?;
            chains::accept_loss(txn, &services, *chain_id).map(Outcome::LossAccepted)
        }
    }
}

fn register(
    txn: &mut Txn<'_>,
    now_ns: i64,
    uuid: &str,
    address: &str,
    zone: &str,
    disks: &[crate::records::DiskRecord],
    after_power_loss: bool,
) -> NsResult<Outcome> {
    let registration = data_services::Registration {
        uuid,
        address,
        zone,
        disks,
        after_power_loss,
    };
    data_services::register(txn, now_ns, &registration).map(Outcome::DataService)
}

/// Counters shared by the cluster records.
fn counters(txn: &Txn<'_>) -> NsResult<crate::records::ClusterCounters> {
    Ok(txn
        .get_record(crate::keys::SPACE_CLUSTER, &crate::keys::cluster_counters())?
        .unwrap_or_default())
}

fn store_counters(txn: &mut Txn<'_>, counters: &crate::records::ClusterCounters) {
    txn.put_record(crate::keys::SPACE_CLUSTER, crate::keys::cluster_counters(), counters);
}

/// A short, printable label: non-empty, bounded, no control characters.
fn validate_label(what: &str, value: &str, allow_empty: bool) -> NsResult<()> {
    use shoal_proto::errno::Errno;
    if value.is_empty() && !allow_empty {
        return Err(crate::namespace::NsError::fs(Errno::EINVAL, format!("{what} is empty")));
    }
    if value.len() > crate::limits::MAX_LABEL_BYTES {
        return Err(crate::namespace::NsError::fs(
            Errno::EINVAL,
            format!(
                "{what} is {} bytes; the limit is {}",
                value.len(),
                crate::limits::MAX_LABEL_BYTES
            ),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(crate::namespace::NsError::fs(
            Errno::EINVAL,
            format!("{what} {value:?} contains control characters"),
        ));
    }
    Ok(())
}

/// Up to `limit` records of type `R` stored under `prefix`; a record that does not decode
/// stops the scan and is reported.
pub(crate) fn scan_records<R: Record>(
    read: &dyn KvRead,
    space: &'static str,
    prefix: &[u8],
    limit: usize,
) -> NsResult<Vec<R>> {
    let end = shoal_engine::prefix_end(prefix).expect("non-empty prefix");
    let mut records = Vec::new();
    let mut corrupt = None;
    read.scan(space, prefix, Some(&end), &mut |_, value| {
        match R::decode(value) {
            Ok(record) => records.push(record),
            Err(error) => {
                corrupt = Some(error);
                return ScanControl::Stop;
            }
        }
        if records.len() >= limit {
            ScanControl::Stop
        } else {
            ScanControl::Continue
        }
    })?;
    match corrupt {
        Some(error) => Err(error.into()),
        None => Ok(records),
    }
}
