//! The Controller service: Shoal volumes for PersistentVolumeClaims.
//!
//! A CSI volume is a Shoal volume; its id is the Shoal volume's name. A CSI name (up to 128
//! bytes of anything) that is a valid Shoal volume name, as the external-provisioner's
//! `pvc-<uuid>` names are, is used as it is; any other is mapped to `csi-` and a hash of it
//! ([`volume_name_for`]), so every name the specification allows has exactly one volume.
//! Every call is idempotent: a repeated create with a compatible request returns the same
//! volume, a delete of an unknown volume succeeds. Deleted volumes' data is reclaimed by the
//! registry's garbage collection.

use sha2::{Digest, Sha256};
use shoal_client::RegistryClient;
use shoal_proto::csi;
use shoal_proto::csi::controller_server::Controller;
use shoal_proto::csi::controller_service_capability::rpc::Type as Rpc;
use shoal_proto::registry as pb;
use shoal_proto::volume::is_valid_volume_name;
use tonic::{Request, Response, Status};

use crate::capability;
use crate::errors::{from_registry, invalid, is_not_found};
use crate::params::{VolumeParams, quota_for, quota_satisfies};

/// Longest CSI name or volume id accepted (the specification's size limit for strings).
pub const MAX_CSI_NAME_BYTES: usize = 128;
/// Most entries one ListVolumes page returns when the caller sets no limit.
pub const MAX_LIST_PAGE: usize = 1000;
/// Prefix of a ListVolumes paging token (the rest is the hex of the last name returned).
const TOKEN_PREFIX: &str = "after:";
/// Prefix of Shoal volume names made from CSI names that are not valid volume names.
const HASHED_PREFIX: &str = "csi-";

pub struct ControllerService {
    pub registry: RegistryClient,
}

/// The Shoal volume a CSI name maps to.
pub fn volume_name_for(csi_name: &str) -> String {
    if is_valid_volume_name(csi_name) {
        return csi_name.to_string();
    }
    let digest = Sha256::digest(csi_name.as_bytes());
    let hex: String = digest.iter().take(20).map(|b| format!("{b:02x}")).collect();
    let name = format!("{HASHED_PREFIX}{hex}");
    assert!(is_valid_volume_name(&name), "a hashed volume name is always valid");
    name
}

fn csi_volume(volume: &pb::Volume) -> csi::Volume {
    let context = [
        ("replicas", volume.replicas.to_string()),
        ("stripeWidth", volume.stripe_width.to_string()),
        ("chunkSize", volume.chunk_size_bytes.to_string()),
    ];
    csi::Volume {
        capacity_bytes: volume.quota_bytes.min(i64::MAX as u64) as i64,
        volume_id: volume.name.clone(),
        volume_context: context.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        content_source: None,
        accessible_topology: Vec::new(),
    }
}

fn check_volume_id(volume_id: &str) -> Result<(), Status> {
    if volume_id.is_empty() {
        return Err(invalid("the volume id is missing"));
    }
    if volume_id.len() > MAX_CSI_NAME_BYTES {
        return Err(invalid(format!(
            "volume id of {} bytes exceeds {MAX_CSI_NAME_BYTES}",
            volume_id.len()
        )));
    }
    Ok(())
}

fn page_token(name: &str) -> String {
    let hex: String = name.bytes().map(|b| format!("{b:02x}")).collect();
    format!("{TOKEN_PREFIX}{hex}")
}

/// The volume name a paging token continues after, or ABORTED for a token this driver
/// never handed out.
fn parse_token(token: &str) -> Result<Option<String>, Status> {
    if token.is_empty() {
        return Ok(None);
    }
    let aborted = || {
        Status::aborted(format!(
            "ListVolumes: starting token {token:?} is not one this driver returned; list again from the start"
        ))
    };
    let hex = token.strip_prefix(TOKEN_PREFIX).ok_or_else(aborted)?;
    if hex.len() % 2 != 0 || hex.len() > 2 * MAX_CSI_NAME_BYTES {
        return Err(aborted());
    }
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok())
        .collect();
    let name = bytes.and_then(|b| String::from_utf8(b).ok()).ok_or_else(aborted)?;
    if !is_valid_volume_name(&name) {
        return Err(aborted());
    }
    Ok(Some(name))
}

impl ControllerService {
    async fn volume(&self, volume_id: &str) -> Result<Option<pb::Volume>, Status> {
        if !is_valid_volume_name(volume_id) {
            return Ok(None);
        }
        let request = pb::VolumeName {
            name: volume_id.to_string(),
        };
        match self.registry.get_volume(request).await {
            Ok(volume) => Ok(Some(volume)),
            Err(error) if is_not_found(&error) => Ok(None),
            Err(error) => Err(from_registry("reading the volume", error)),
        }
    }

    async fn existing_volume(&self, volume_id: &str) -> Result<pb::Volume, Status> {
        self.volume(volume_id)
            .await?
            .ok_or_else(|| Status::not_found(format!("volume {volume_id:?} does not exist")))
    }

    /// The same name again: the same volume if compatible, else ALREADY_EXISTS saying why.
    fn compatible(
        existing: pb::Volume,
        params: &VolumeParams,
        range: Option<&csi::CapacityRange>,
        csi_name: &str,
    ) -> Result<csi::Volume, Status> {
        if let Some(why) = params.mismatch(&existing) {
            return Err(Status::already_exists(format!(
                "a volume named {csi_name:?} exists with other parameters: {why}"
            )));
        }
        if !quota_satisfies(existing.quota_bytes, range) {
            return Err(Status::already_exists(format!(
                "a volume named {csi_name:?} exists with a capacity of {} bytes (0: unlimited), outside the requested range",
                existing.quota_bytes
            )));
        }
        Ok(csi_volume(&existing))
    }

    /// Why the volume's data cannot be served now, if it cannot: a chain of its replication
    /// waiting for a member. A degraded chain (fewer copies) still serves, and is normal.
    async fn condition(&self, volume: &pb::Volume) -> Result<csi::VolumeCondition, Status> {
        let table = self
            .registry
            .get_chain_table(pb::Empty {})
            .await
            .map_err(|error| from_registry("reading the chain table", error))?;
        let waiting: Vec<String> = table
            .chains
            .iter()
            .filter(|chain| chain.replicas == volume.replicas && !chain.waiting_for.is_empty())
            .map(|chain| format!("chain {} waits for data service {:?}", chain.id, chain.waiting_for))
            .collect();
        Ok(match waiting.is_empty() {
            true => csi::VolumeCondition {
                abnormal: false,
                message: "healthy".into(),
            },
            false => csi::VolumeCondition {
                abnormal: true,
                message: format!("files on some chains cannot be read or written: {}", waiting.join("; ")),
            },
        })
    }
}

fn capabilities(list: &[Rpc]) -> Vec<csi::ControllerServiceCapability> {
    list.iter()
        .map(|rpc| csi::ControllerServiceCapability {
            r#type: Some(csi::controller_service_capability::Type::Rpc(
                csi::controller_service_capability::Rpc { r#type: *rpc as i32 },
            )),
        })
        .collect()
}

#[tonic::async_trait]
impl Controller for ControllerService {
    async fn create_volume(
        &self,
        request: Request<csi::CreateVolumeRequest>,
    ) -> Result<Response<csi::CreateVolumeResponse>, Status> {
        let request = request.into_inner();
        if request.name.is_empty() {
            return Err(invalid("CreateVolume: the name is missing"));
        }
        if request.name.len() > MAX_CSI_NAME_BYTES {
            return Err(invalid(format!(
                "CreateVolume: a name of {} bytes exceeds {MAX_CSI_NAME_BYTES}",
                request.name.len()
            )));
        }
        capability::check_all(&request.volume_capabilities)?;
        if request.volume_content_source.is_some() {
            return Err(invalid(
                "CreateVolume: volumes cannot be made from snapshots or other volumes yet (no CLONE_VOLUME or snapshot capability)",
            ));
        }
        let params = VolumeParams::parse(&request.parameters)?;
        let range = request.capacity_range.as_ref();
        let quota_bytes = quota_for(range)?;
        let name = volume_name_for(&request.name);
        if let Some(existing) = self.volume(&name).await? {
            let volume = Self::compatible(existing, &params, range, &request.name)?;
            return Ok(Response::new(csi::CreateVolumeResponse { volume: Some(volume) }));
        }
        let create = pb::CreateVolumeRequest {
            name: name.clone(),
            replicas: params.replicas.unwrap_or(0),
            quota_bytes,
            quota_inodes: params.inode_quota.unwrap_or(0),
            stripe_width: params.stripe_width.unwrap_or(0),
            chunk_size_bytes: params.chunk_size_bytes.unwrap_or(0),
            // Pods of any user share the volume; access is for them to set (fsGroup, mode).
            root_uid: 0,
            root_gid: 0,
            root_mode: 0o777,
        };
        let volume = match self.registry.create_volume(create).await {
            Ok(volume) => csi_volume(&volume),
            // Created meanwhile by a concurrent retry: compare with what it made.
            Err(error) if matches!(&error, shoal_client::ClientError::Fs(fs) if fs.errno == shoal_client::Errno::EEXIST) =>
            {
                let existing = self.existing_volume(&name).await?;
                Self::compatible(existing, &params, range, &request.name)?
            }
            Err(error) => return Err(from_registry("CreateVolume", error)),
        };
        tracing::info!(csi_name = %request.name, volume = %name, quota_bytes, "created volume");
        Ok(Response::new(csi::CreateVolumeResponse { volume: Some(volume) }))
    }

    async fn delete_volume(
        &self,
        request: Request<csi::DeleteVolumeRequest>,
    ) -> Result<Response<csi::DeleteVolumeResponse>, Status> {
        let volume_id = &request.get_ref().volume_id;
        check_volume_id(volume_id)?;
        if !is_valid_volume_name(volume_id) {
            // Never a volume this driver made: nothing to delete.
            return Ok(Response::new(csi::DeleteVolumeResponse {}));
        }
        let name = pb::VolumeName {
            name: volume_id.clone(),
        };
        match self.registry.delete_volume(name).await {
            Ok(_) => tracing::info!(volume = %volume_id, "deleted volume; its chunks are reclaimed in the background"),
            Err(error) if is_not_found(&error) => {}
            Err(error) => return Err(from_registry("DeleteVolume", error)),
        }
        Ok(Response::new(csi::DeleteVolumeResponse {}))
    }

    async fn validate_volume_capabilities(
        &self,
        request: Request<csi::ValidateVolumeCapabilitiesRequest>,
    ) -> Result<Response<csi::ValidateVolumeCapabilitiesResponse>, Status> {
        let request = request.into_inner();
        check_volume_id(&request.volume_id)?;
        if request.volume_capabilities.is_empty() {
            return Err(invalid("ValidateVolumeCapabilities: volume capabilities are missing"));
        }
        let volume = self.existing_volume(&request.volume_id).await?;
        let unsupported = request
            .volume_capabilities
            .iter()
            .find_map(|capability| capability::check(capability).err())
            .map(|status| status.message().to_string())
            .or_else(|| {
                let params = VolumeParams::parse(&request.parameters).map_err(|s| s.message().to_string());
                match params {
                    Ok(params) => params.mismatch(&volume),
                    Err(message) => Some(message),
                }
            });
        let reply = match unsupported {
            Some(message) => csi::ValidateVolumeCapabilitiesResponse {
                confirmed: None,
                message,
            },
            None => csi::ValidateVolumeCapabilitiesResponse {
                confirmed: Some(csi::validate_volume_capabilities_response::Confirmed {
                    volume_context: request.volume_context,
                    volume_capabilities: request.volume_capabilities,
                    parameters: request.parameters,
                    mutable_parameters: Default::default(),
                }),
                message: String::new(),
            },
        };
        Ok(Response::new(reply))
    }

    async fn list_volumes(
        &self,
        request: Request<csi::ListVolumesRequest>,
    ) -> Result<Response<csi::ListVolumesResponse>, Status> {
        let request = request.into_inner();
        if request.max_entries < 0 {
            return Err(invalid(format!(
                "ListVolumes: max_entries {} is negative",
                request.max_entries
            )));
        }
        let after = parse_token(&request.starting_token)?;
        let page = match request.max_entries {
            0 => MAX_LIST_PAGE,
            n => (n as usize).min(MAX_LIST_PAGE),
        };
        let mut volumes = self
            .registry
            .list_volumes(pb::Empty {})
            .await
            .map_err(|error| from_registry("ListVolumes", error))?
            .volumes;
        volumes.sort_by(|a, b| a.name.cmp(&b.name));
        let rest: Vec<&pb::Volume> = volumes
            .iter()
            .filter(|volume| after.as_ref().is_none_or(|after| volume.name > *after))
            .collect();
        let next_token = match rest.len() > page {
            true => page_token(&rest[page - 1].name),
            false => String::new(),
        };
        let entries = rest
            .into_iter()
            .take(page)
            .map(|volume| csi::list_volumes_response::Entry {
                volume: Some(csi_volume(volume)),
                status: None,
            })
            .collect();
        Ok(Response::new(csi::ListVolumesResponse { entries, next_token }))
    }

    async fn get_capacity(
        &self,
        request: Request<csi::GetCapacityRequest>,
    ) -> Result<Response<csi::GetCapacityResponse>, Status> {
        let request = request.into_inner();
        let supported = request
            .volume_capabilities
            .iter()
            .all(|capability| capability::check(capability).is_ok());
        let params = VolumeParams::parse(&request.parameters)?;
        let services = self
            .registry
            .list_data_services(pb::Empty {})
            .await
            .map_err(|error| from_registry("GetCapacity", error))?
            .data_services;
        let free_bytes: u64 = services
            .iter()
            .filter(|service| service.state == pb::DataServiceState::Up as i32)
            .flat_map(|service| service.disks.iter())
            .filter(|disk| disk.healthy)
            .map(|disk| disk.free_bytes)
            .sum();
        let available = match supported {
            true => free_bytes / u64::from(params.effective_replicas().max(1)),
            false => 0,
        };
        Ok(Response::new(csi::GetCapacityResponse {
            available_capacity: available.min(i64::MAX as u64) as i64,
            maximum_volume_size: None,
            minimum_volume_size: None,
        }))
    }

    async fn controller_get_capabilities(
        &self,
        _request: Request<csi::ControllerGetCapabilitiesRequest>,
    ) -> Result<Response<csi::ControllerGetCapabilitiesResponse>, Status> {
        Ok(Response::new(csi::ControllerGetCapabilitiesResponse {
            capabilities: capabilities(&[
                Rpc::CreateDeleteVolume,
                Rpc::ListVolumes,
                Rpc::GetCapacity,
                Rpc::ExpandVolume,
                Rpc::GetVolume,
                Rpc::VolumeCondition,
                Rpc::SingleNodeMultiWriter,
            ]),
        }))
    }

    async fn controller_expand_volume(
        &self,
        request: Request<csi::ControllerExpandVolumeRequest>,
    ) -> Result<Response<csi::ControllerExpandVolumeResponse>, Status> {
        let request = request.into_inner();
        check_volume_id(&request.volume_id)?;
        let range = request
            .capacity_range
            .as_ref()
            .ok_or_else(|| invalid("ControllerExpandVolume: the capacity range is missing"))?;
        if let Some(capability) = &request.volume_capability {
            capability::check(capability)?;
        }
        let wanted = quota_for(Some(range))?;
        let volume = self.existing_volume(&request.volume_id).await?;
        let reply = |capacity_bytes: u64| {
            Response::new(csi::ControllerExpandVolumeResponse {
                capacity_bytes: capacity_bytes.min(i64::MAX as u64) as i64,
                // A quota is enforced by the registry; every mount sees it in its next statfs.
                node_expansion_required: false,
            })
        };
        // No quota: already as large as anything asked for. A quota at least as large:
        // nothing to do (expansion never shrinks).
        if volume.quota_bytes == 0 || volume.quota_bytes >= wanted {
            let capacity = if volume.quota_bytes == 0 {
                wanted
            } else {
                volume.quota_bytes
            };
            return Ok(reply(capacity));
        }
        let set = pb::SetVolumeQuotaRequest {
            name: volume.name.clone(),
            quota_bytes: wanted,
            quota_inodes: volume.quota_inodes,
        };
        let expanded = self
            .registry
            .set_volume_quota(set)
            .await
            .map_err(|error| from_registry("ControllerExpandVolume", error))?;
        assert_eq!(expanded.quota_bytes, wanted, "the registry set another quota");
        tracing::info!(volume = %volume.name, from = volume.quota_bytes, to = wanted, "expanded volume");
        Ok(reply(expanded.quota_bytes))
    }

    async fn controller_get_volume(
        &self,
        request: Request<csi::ControllerGetVolumeRequest>,
    ) -> Result<Response<csi::ControllerGetVolumeResponse>, Status> {
        let volume_id = &request.get_ref().volume_id;
        check_volume_id(volume_id)?;
        let volume = self.existing_volume(volume_id).await?;
        let condition = self.condition(&volume).await?;
        Ok(Response::new(csi::ControllerGetVolumeResponse {
            volume: Some(csi_volume(&volume)),
            status: Some(csi::controller_get_volume_response::VolumeStatus {
                published_node_ids: Vec::new(),
                volume_condition: Some(condition),
            }),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_csi_name_maps_to_one_valid_volume_name() {
        assert_eq!(volume_name_for("pvc-1234"), "pvc-1234");
        let odd = volume_name_for("Ünïcode name/with slashes");
        assert!(is_valid_volume_name(&odd) && odd.starts_with(HASHED_PREFIX));
        assert_eq!(odd, volume_name_for("Ünïcode name/with slashes"), "stable");
        assert_ne!(odd, volume_name_for("Ünïcode name/with slashes!"));
        let longest = "x".repeat(MAX_CSI_NAME_BYTES);
        assert_eq!(volume_name_for(&longest), longest);
    }

    #[test]
    fn paging_tokens_round_trip_and_strangers_are_aborted() {
        let token = page_token("pvc-7");
        assert_eq!(parse_token(&token).unwrap().as_deref(), Some("pvc-7"));
        assert_eq!(parse_token("").unwrap(), None);
        for bad in ["invalid-token", "after:zz", "after:2f", "after:1"] {
            assert_eq!(parse_token(bad).unwrap_err().code(), tonic::Code::Aborted, "{bad}");
        }
    }
}
