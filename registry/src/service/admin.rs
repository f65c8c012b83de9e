//! The `Admin` gRPC service: volumes, data services, the chain table, Raft membership and
//! the cluster status.

use std::sync::Arc;

use openraft::type_config::async_runtime::WatchReceiver;
use shoal_proto::registry as pb;
use shoal_proto::registry::admin_server::Admin;
use tonic::{Request, Response, Status};

use super::convert::{chain_to_wire, data_service_to_wire, disk_from_wire, state_from_wire, volume_to_wire};
use super::membership::MembershipChanges;
use super::{RegistryCore, request_id};
use crate::cluster;
use crate::command::{Command, Outcome, VolumeSpec};
use crate::records::{DataServiceRecord, DataServiceState};

pub struct AdminService {
    core: RegistryCore,
    membership: Arc<MembershipChanges>,
}

impl AdminService {
    pub fn new(core: RegistryCore) -> AdminService {
        AdminService {
            membership: Arc::new(MembershipChanges::new(core.clone())),
            core,
        }
    }

    async fn volume_command<T>(&self, request: &Request<T>, command: Command) -> Result<Response<pb::Volume>, Status> {
        match self.core.propose(command, request_id(request)?).await? {
            Outcome::Volume(info) => Ok(Response::new(volume_to_wire(&info))),
            other => Err(Status::internal(format!("unexpected result {other:?}"))),
        }
    }

    async fn data_service_command<T>(
        &self,
        request: &Request<T>,
        command: Command,
    ) -> Result<DataServiceRecord, Status> {
        match self.core.propose(command, request_id(request)?).await? {
            Outcome::DataService(record) => Ok(record),
            other => Err(Status::internal(format!("unexpected result {other:?}"))),
        }
    }

    fn data_service_wire(&self, record: &DataServiceRecord) -> pb::DataService {
        data_service_to_wire(record, self.core.liveness.age_ms(record.id))
    }
}

/// Capacity reports go through the log only when they matter: a disk added, removed, its
/// health changed, or its free space moved by more than 1% of its capacity. Otherwise every
/// heartbeat would be a log write.
fn disks_changed_materially(old: &[crate::records::DiskRecord], new: &[crate::records::DiskRecord]) -> bool {
    if old.len() != new.len() {
        return true;
    }
    old.iter().zip(new).any(|(a, b)| {
        a.path != b.path
            || a.healthy != b.healthy
            || a.capacity_bytes != b.capacity_bytes
            || a.free_bytes.abs_diff(b.free_bytes) > b.capacity_bytes / 100
    })
}

/// The chain table with the addresses of the data services it names.
fn chain_table_wire(read: &dyn shoal_engine::KvRead) -> Result<pb::ChainTable, Status> {
    let table = cluster::chain_table(read)?;
    let services = cluster::list_data_services(read)?;
    Ok(pb::ChainTable {
        version: table.version,
        chains: table.chains.iter().map(chain_to_wire).collect(),
        data_services: services
            .iter()
            .map(|s| pb::DataServiceAddress {
                id: s.id,
                address: s.address.clone(),
            })
            .collect(),
    })
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn create_volume(&self, request: Request<pb::CreateVolumeRequest>) -> Result<Response<pb::Volume>, Status> {
        let r = request.get_ref();
        let spec = VolumeSpec {
            name: r.name.clone(),
            replicas: r.replicas,
            quota_bytes: r.quota_bytes,
            quota_inodes: r.quota_inodes,
            stripe_width: r.stripe_width,
            chunk_size_bytes: r.chunk_size_bytes,
            root_uid: r.root_uid,
            root_gid: r.root_gid,
            root_mode: r.root_mode,
        };
        self.volume_command(&request, Command::CreateVolume { spec }).await
    }

    async fn get_volume(&self, request: Request<pb::VolumeName>) -> Result<Response<pb::Volume>, Status> {
        let state = self.core.read_barrier(&request).await?;
        let info = cluster::volume_by_name(state.as_ref(), &request.get_ref().name)?;
        Ok(Response::new(volume_to_wire(&info)))
    }

    async fn list_volumes(&self, request: Request<pb::Empty>) -> Result<Response<pb::ListVolumesReply>, Status> {
        let state = self.core.read_barrier(&request).await?;
        let volumes = cluster::list_volumes(state.as_ref())?;
        Ok(Response::new(pb::ListVolumesReply {
            volumes: volumes.iter().map(volume_to_wire).collect(),
        }))
    }

    async fn delete_volume(&self, request: Request<pb::VolumeName>) -> Result<Response<pb::Empty>, Status> {
        let name = request.get_ref().name.clone();
        self.core
            .propose(Command::DeleteVolume { name }, request_id(&request)?)
            .await?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn set_volume_quota(
        &self,
        request: Request<pb::SetVolumeQuotaRequest>,
    ) -> Result<Response<pb::Volume>, Status> {
        let r = request.get_ref();
        let command = Command::SetVolumeQuota {
            name: r.name.clone(),
            quota_bytes: r.quota_bytes,
            quota_inodes: r.quota_inodes,
        };
        self.volume_command(&request, command).await
    }

    async fn register_data_service(
        &self,
        request: Request<pb::RegisterDataServiceRequest>,
    ) -> Result<Response<pb::RegisterDataServiceReply>, Status> {
        let r = request.get_ref();
        let (uuid, address, zone) = (r.uuid.clone(), r.address.clone(), r.zone.clone());
        let disks = r.disks.iter().map(disk_from_wire).collect();
        let command = if r.after_power_loss {
            tracing::warn!(%uuid, %address, "data service restarted after a possible power loss; it rejoins its chains as a suspect");
            Command::RegisterDataServiceAfterPowerLoss {
                uuid,
                address,
                zone,
                disks,
            }
        } else {
            Command::RegisterDataService {
                uuid,
                address,
                zone,
                disks,
            }
        };
        let record = self.data_service_command(&request, command).await?;
        self.core.liveness.record(record.id);
        Ok(Response::new(pb::RegisterDataServiceReply { id: record.id }))
    }

    async fn heartbeat(&self, request: Request<pb::HeartbeatRequest>) -> Result<Response<pb::HeartbeatReply>, Status> {
        self.core.require_leader()?;
        let state = self.core.read_barrier(&request).await?;
        let r = request.get_ref();
        let record = cluster::data_service(state.as_ref(), r.id)?;
        self.core.liveness.record(r.id);
        if record.state == DataServiceState::Down {
            tracing::info!(data_service = r.id, "data service is heartbeating again; marking it up");
            let command = Command::SetDataServiceState {
                id: r.id,
                state: DataServiceState::Up,
            };
            self.core.propose(command, None).await?;
        }
        let disks: Vec<_> = r.disks.iter().map(disk_from_wire).collect();
        if disks_changed_materially(&record.disks, &disks) {
            let command = Command::UpdateDataServiceDisks { id: r.id, disks };
            self.core.propose(command, None).await?;
        }
        let table = cluster::chain_table(self.core.state.engine().as_ref())?;
        Ok(Response::new(pb::HeartbeatReply {
            chain_table_version: table.version,
        }))
    }

    async fn list_data_services(
        &self,
        request: Request<pb::Empty>,
    ) -> Result<Response<pb::ListDataServicesReply>, Status> {
        let state = self.core.read_barrier(&request).await?;
        let records = cluster::list_data_services(state.as_ref())?;
        Ok(Response::new(pb::ListDataServicesReply {
            data_services: records.iter().map(|r| self.data_service_wire(r)).collect(),
        }))
    }

    async fn set_data_service_state(
        &self,
        request: Request<pb::SetDataServiceStateRequest>,
    ) -> Result<Response<pb::DataService>, Status> {
        let r = request.get_ref();
        let command = Command::SetDataServiceState {
            id: r.id,
            state: state_from_wire(r.state)?,
        };
        let record = self.data_service_command(&request, command).await?;
        Ok(Response::new(self.data_service_wire(&record)))
    }

    async fn get_chain_table(&self, request: Request<pb::Empty>) -> Result<Response<pb::ChainTable>, Status> {
        let state = self.core.read_barrier(&request).await?;
        Ok(Response::new(chain_table_wire(state.as_ref())?))
    }

    async fn chain_sync_done(
        &self,
        request: Request<pb::ChainSyncDoneRequest>,
    ) -> Result<Response<pb::ChainTable>, Status> {
        let r = request.get_ref();
        let command = Command::ChainSyncDone {
            chain_id: r.chain_id,
            chain_version: r.chain_version,
            data_service_id: r.data_service_id,
        };
        self.core.propose(command, request_id(&request)?).await?;
        Ok(Response::new(chain_table_wire(self.core.state.engine().as_ref())?))
    }

    async fn accept_chain_loss(
        &self,
        request: Request<pb::AcceptChainLossRequest>,
    ) -> Result<Response<pb::AcceptChainLossReply>, Status> {
        let chain_id = request.get_ref().chain_id;
        let outcome = self
            .core
            .propose(Command::AcceptChainLoss { chain_id }, request_id(&request)?)
            .await?;
        let Outcome::LossAccepted(accepted) = outcome else {
            return Err(Status::internal(format!("unexpected result {outcome:?}")));
        };
        tracing::warn!(
            chain = chain_id,
            resumed_from = accepted.promoted,
            served_at = accepted.promoted_served_at,
            newest_served_version = accepted.newest_served_version,
            lost_holders = ?accepted.newest_holders,
            "operator accepted data loss: the chain resumed from a member that may lack changes acknowledged \
             after the version it last served at"
        );
        Ok(Response::new(pb::AcceptChainLossReply {
            chain: Some(chain_to_wire(&accepted.chain)),
            promoted_data_service_id: accepted.promoted,
            promoted_served_at_version: accepted.promoted_served_at,
            newest_served_version: accepted.newest_served_version,
            newest_holders: accepted.newest_holders,
        }))
    }

    async fn list_garbage(
        &self,
        request: Request<pb::ListGarbageRequest>,
    ) -> Result<Response<pb::GarbageList>, Status> {
        let state = self.core.read_barrier(&request).await?;
        let r = request.get_ref();
        let list = cluster::list_garbage(state.as_ref(), r.data_service_id, r.max_entries as usize)?;
        Ok(Response::new(pb::GarbageList {
            files: list
                .files
                .into_iter()
                .map(|(volume_id, ino)| pb::FileRef { volume_id, ino })
                .collect(),
            volumes: list.volumes,
        }))
    }

    async fn renew_session(&self, request: Request<pb::RenewSessionRequest>) -> Result<Response<pb::Empty>, Status> {
        self.core.require_leader()?;
        self.core.liveness.renew_session(request.get_ref().session_id);
        Ok(Response::new(pb::Empty {}))
    }

    async fn ack_garbage(&self, request: Request<pb::AckGarbageRequest>) -> Result<Response<pb::Empty>, Status> {
        let r = request.get_ref();
        let command = Command::AckGarbage {
            data_service_id: r.data_service_id,
            files: r.files.iter().map(|f| (f.volume_id, f.ino)).collect(),
            volumes: r.volumes.clone(),
        };
        self.core.propose(command, request_id(&request)?).await?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn members(&self, request: Request<pb::Empty>) -> Result<Response<pb::MembersReply>, Status> {
        self.core.read_barrier(&request).await?;
        Ok(Response::new(self.membership.members()))
    }

    async fn add_member(&self, request: Request<pb::AddMemberRequest>) -> Result<Response<pb::MembersReply>, Status> {
        let r = request.into_inner();
        // Run to completion even if the caller goes away: a half-done change (a learner added,
        // never promoted or removed) must not depend on the caller's patience.
        let membership = self.membership.clone();
        let change = tokio::spawn(async move { membership.add(r.node_id, r.address).await });
        Ok(Response::new(
            change.await.map_err(|e| Status::internal(e.to_string()))??,
        ))
    }

    async fn remove_member(
        &self,
        request: Request<pb::RemoveMemberRequest>,
    ) -> Result<Response<pb::MembersReply>, Status> {
        let node_id = request.get_ref().node_id;
        let membership = self.membership.clone();
        let change = tokio::spawn(async move { membership.remove(node_id).await });
        Ok(Response::new(
            change.await.map_err(|e| Status::internal(e.to_string()))??,
        ))
    }

    async fn status(&self, request: Request<pb::Empty>) -> Result<Response<pb::StatusReply>, Status> {
        let state = self.core.read_barrier(&request).await?;
        let metrics = self.core.raft.metrics().borrow_watched().clone();
        let members = self.membership.members();
        let leader_address = metrics
            .current_leader
            .and_then(|leader| {
                metrics
                    .membership_config
                    .membership()
                    .get_node(&leader)
                    .map(|n| n.addr.clone())
            })
            .unwrap_or_default();
        let volumes = cluster::list_volumes(state.as_ref())?;
        let data_services = cluster::list_data_services(state.as_ref())?;
        let table = cluster::chain_table(state.as_ref())?;
        Ok(Response::new(pb::StatusReply {
            node_id: self.core.node_id,
            leader_id: metrics.current_leader,
            leader_address,
            term: metrics.current_term,
            last_log_index: metrics.last_log_index.unwrap_or(0),
            last_applied_index: metrics.last_applied.as_ref().map_or(0, |l| l.index),
            members: members.members,
            volumes: volumes.iter().map(volume_to_wire).collect(),
            data_services: data_services.iter().map(|r| self.data_service_wire(r)).collect(),
            chain_table_version: table.version,
            chain_count: table.chains.len() as u32,
            snapshots_installed: self.core.state.snapshots_installed(),
            snapshot_last_index: self.core.state.snapshot_last_index(),
            local_read: super::is_local_read(&request),
            snapshots_received_from_leader: self.core.state.snapshots_received(),
            snapshots_restored_at_start: self.core.state.snapshots_restored(),
            last_purged_log_index: metrics.purged.as_ref().map(|log_id| log_id.index),
            log_entries_appended: self.core.log_counters.entries_appended(),
            log_fsyncs: self.core.log_counters.fsyncs(),
        }))
    }
}
