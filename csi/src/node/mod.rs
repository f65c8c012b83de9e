//! The Node service: a volume staged once per node, published into each pod.
//!
//! - NodeStageVolume asks `shoal agent` to mount the volume at the staging path (one FUSE
//!   session per volume per node, whatever the number of pods).
//! - NodePublishVolume bind-mounts the staging mount at the pod's target path (read-only
//!   if asked); NodeUnpublishVolume unmounts and removes the target.
//! - NodeUnstageVolume asks the agent to unmount the staging path.
//!
//! The plugin remembers nothing: every call reads the kernel's mount table ([`mounts`]), so
//! a plugin restarted mid-lifecycle answers as its predecessor would have. A mount whose
//! FUSE session died (the agent was killed) is found by statfs, reported abnormal by
//! NodeGetVolumeStats, and repaired by the next Stage or Publish: lazy unmount, a new
//! mount by the agent, a new bind.

pub mod mounts;

use std::path::{Component, Path, PathBuf};

use shoal_proto::agent as agent_pb;
use shoal_proto::agent::agent_client::AgentClient;
use shoal_proto::csi;
use shoal_proto::csi::node_server::Node;
use shoal_proto::csi::node_service_capability::rpc::Type as Rpc;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};

use crate::capability;
use crate::errors::invalid;
use mounts::Health;

/// How the node plugin runs.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// This node's id: the Kubernetes node name.
    pub node_id: String,
    /// kubelet's root directory; every staging and target path must be inside it.
    pub kubelet_dir: PathBuf,
    pub agent_socket: PathBuf,
}

/// Stats come from statfs of the mount itself (which asks the registry), so what a pod's
/// `df` shows and what kubelet reports are one figure; the plugin needs no registry client.
pub struct NodeService {
    config: NodeConfig,
    agent: AgentClient<Channel>,
}

/// The request's path, checked: absolute, no `..`, inside kubelet's directory.
fn kubelet_path(config: &NodeConfig, what: &str, path: &str) -> Result<PathBuf, Status> {
    if path.is_empty() {
        return Err(invalid(format!("the {what} is missing")));
    }
    let path = Path::new(path);
    let clean = path.is_absolute() && !path.components().any(|c| matches!(c, Component::ParentDir));
    if !clean || !path.starts_with(&config.kubelet_dir) {
        return Err(invalid(format!(
            "the {what} {} is not a path inside kubelet's directory {}",
            path.display(),
            config.kubelet_dir.display()
        )));
    }
    Ok(path.to_path_buf())
}

fn volume_id(volume_id: &str) -> Result<&str, Status> {
    if volume_id.is_empty() {
        return Err(invalid("the volume id is missing"));
    }
    if !shoal_proto::volume::is_valid_volume_name(volume_id) {
        return Err(Status::not_found(format!(
            "volume {volume_id:?} is not a Shoal volume id"
        )));
    }
    Ok(volume_id)
}

fn capability_of(capability: Option<&csi::VolumeCapability>) -> Result<&csi::VolumeCapability, Status> {
    let capability = capability.ok_or_else(|| invalid("the volume capability is missing"))?;
    capability::check(capability)?;
    Ok(capability)
}

fn internal(what: &str, error: impl std::fmt::Display) -> Status {
    Status::internal(format!("{what}: {error}"))
}

fn mount_at(dir: &Path) -> Result<Option<shoal_client::mountinfo::Mount>, Status> {
    mounts::mount_at(dir).map_err(|error| internal("cannot read /proc/self/mountinfo", error))
}

fn create_dir(dir: &Path) -> Result<(), Status> {
    std::fs::create_dir_all(dir).map_err(|error| internal(&format!("cannot create {}", dir.display()), error))
}

/// The refusal for a path that holds a mount of something other than `volume`.
fn holds_other(code: Code, path: &Path, mount: &shoal_client::mountinfo::Mount, volume: &str) -> Status {
    Status::new(
        code,
        format!(
            "{} holds {} {}, not volume {volume:?}",
            path.display(),
            mount.fs_type,
            mount.source
        ),
    )
}

/// The agent's refusal, as this call's status: it already says what was wrong.
fn from_agent(what: &str, status: Status) -> Status {
    let code = match status.code() {
        Code::Unknown => Code::Unavailable,
        code => code,
    };
    Status::new(code, format!("{what}: the node agent says: {}", status.message()))
}

impl NodeService {
    pub fn new(config: NodeConfig) -> NodeService {
        let agent = AgentClient::new(shoal_client::unix::channel(&config.agent_socket));
        NodeService { config, agent }
    }

    /// Makes `staging` a live mount of `volume`: nothing to do if it is one; a dead one is
    /// detached and mounted again; anything else there is ALREADY_EXISTS.
    async fn ensure_staged(&self, volume: &str, staging: &Path, options: Vec<String>) -> Result<(), Status> {
        if let Some(mount) = mount_at(staging)? {
            if mounts::shoal_volume(&mount) != Some(volume) {
                return Err(Status::already_exists(format!(
                    "{} already holds another mount ({} {}); unstage it first",
                    staging.display(),
                    mount.fs_type,
                    mount.source
                )));
            }
            match mounts::health(staging).await {
                Health::Alive(_) => return Ok(()),
                Health::Dead(why) => {
                    tracing::warn!(staging = %staging.display(), %why, "staging mount is dead; mounting it again");
                    self.release(staging).await?;
                }
            }
        }
        create_dir(staging)?;
        let request = agent_pb::MountRequest {
            volume: volume.to_string(),
            mountpoint: staging.to_string_lossy().into_owned(),
            options,
        };
        self.agent
            .clone()
            .mount(request)
            .await
            .map_err(|status| from_agent(&format!("mounting volume {volume:?}"), status))?;
        tracing::info!(volume, staging = %staging.display(), "staged");
        Ok(())
    }

    /// Ends the mount at `dir`: the agent ends its session (flushing what it buffered), and
    /// whatever is still mounted there (a mount of an agent that died) is detached. An agent
    /// that does not answer cannot be serving a live mount, so it does not stop the cleanup.
    async fn release(&self, dir: &Path) -> Result<(), Status> {
        let request = agent_pb::UnmountRequest {
            mountpoint: dir.to_string_lossy().into_owned(),
        };
        match self.agent.clone().unmount(request).await {
            Ok(_) => {}
            Err(status) if matches!(status.code(), Code::Unavailable | Code::Unknown) => {
                tracing::warn!(dir = %dir.display(), %status, "the agent does not answer; detaching the mount");
            }
            Err(status) => return Err(from_agent(&format!("unmounting {}", dir.display()), status)),
        }
        mounts::unmount_all(dir).map_err(|e| internal("cannot unmount", e))
    }

    /// Makes `target` a live bind of the staging mount (read-only if asked): nothing to do if
    /// it is one; a dead or stale bind is replaced; another mount there is ALREADY_EXISTS.
    async fn ensure_published(
        &self,
        volume: &str,
        staging: &Path,
        target: &Path,
        read_only: bool,
    ) -> Result<(), Status> {
        let staged = mount_at(staging)?.ok_or_else(|| internal("the staging mount vanished", staging.display()))?;
        if let Some(mount) = mount_at(target)? {
            // A bind of this volume left read-write by a publish that was killed between its
            // bind and its read-only remount: finish the remount (tightening is always safe).
            let unfinished = mounts::shoal_volume(&mount) == Some(volume) && read_only && !mount.read_only();
            if unfinished && mount.device == staged.device {
                mounts::remount_read_only(target)
                    .map_err(|error| internal(&format!("cannot make {} read-only", target.display()), error))?;
                tracing::info!(volume, target = %target.display(), "finished a read-only publish");
                return Ok(());
            }
            if mounts::shoal_volume(&mount) != Some(volume) || mount.read_only() != read_only {
                return Err(Status::already_exists(format!(
                    "{} is already published differently ({} {}, read-only: {}); unpublish it first",
                    target.display(),
                    mount.fs_type,
                    mount.source,
                    mount.read_only()
                )));
            }
            let current = mount.device == staged.device;
            match mounts::health(target).await {
                Health::Alive(_) if current => return Ok(()),
                Health::Alive(_) => {
                    tracing::warn!(target = %target.display(), "target binds an older mount; binding again")
                }
                Health::Dead(why) => tracing::warn!(target = %target.display(), %why, "target is dead; binding again"),
            }
            mounts::unmount_all(target).map_err(|e| internal("cannot clear the old bind", e))?;
        }
        create_dir(target)?;
        mounts::bind(staging, target, read_only).map_err(|error| {
            internal(
                &format!("cannot bind {} at {}", staging.display(), target.display()),
                error,
            )
        })?;
        tracing::info!(volume, target = %target.display(), read_only, "published");
        Ok(())
    }
}

fn stats_reply(stat: &nix::sys::statvfs::Statvfs) -> csi::NodeGetVolumeStatsResponse {
    let block = stat.fragment_size();
    let clamp = |value: u64| value.min(i64::MAX as u64) as i64;
    let bytes = csi::VolumeUsage {
        total: clamp(stat.blocks() * block),
        available: clamp(stat.blocks_available() * block),
        used: clamp(stat.blocks().saturating_sub(stat.blocks_free()) * block),
        unit: csi::volume_usage::Unit::Bytes as i32,
    };
    let inodes = csi::VolumeUsage {
        total: clamp(stat.files()),
        available: clamp(stat.files_available()),
        used: clamp(stat.files().saturating_sub(stat.files_free())),
        unit: csi::volume_usage::Unit::Inodes as i32,
    };
    csi::NodeGetVolumeStatsResponse {
        usage: vec![bytes, inodes],
        volume_condition: Some(csi::VolumeCondition {
            abnormal: false,
            message: "mounted and answering".into(),
        }),
    }
}

#[tonic::async_trait]
impl Node for NodeService {
    async fn node_stage_volume(
        &self,
        request: Request<csi::NodeStageVolumeRequest>,
    ) -> Result<Response<csi::NodeStageVolumeResponse>, Status> {
        let request = request.into_inner();
        let volume = volume_id(&request.volume_id)?;
        let staging = kubelet_path(&self.config, "staging target path", &request.staging_target_path)?;
        let capability = capability_of(request.volume_capability.as_ref())?;
        let options = capability::mount_flags(capability)?;
        self.ensure_staged(volume, &staging, options).await?;
        Ok(Response::new(csi::NodeStageVolumeResponse {}))
    }

    async fn node_unstage_volume(
        &self,
        request: Request<csi::NodeUnstageVolumeRequest>,
    ) -> Result<Response<csi::NodeUnstageVolumeResponse>, Status> {
        let request = request.into_inner();
        let volume = volume_id(&request.volume_id)?;
        let staging = kubelet_path(&self.config, "staging target path", &request.staging_target_path)?;
        if let Some(mount) = mount_at(&staging)? {
            if mounts::shoal_volume(&mount) != Some(volume) {
                return Err(holds_other(Code::FailedPrecondition, &staging, &mount, volume));
            }
            self.release(&staging).await?;
            tracing::info!(volume, staging = %staging.display(), "unstaged");
        }
        Ok(Response::new(csi::NodeUnstageVolumeResponse {}))
    }

    async fn node_publish_volume(
        &self,
        request: Request<csi::NodePublishVolumeRequest>,
    ) -> Result<Response<csi::NodePublishVolumeResponse>, Status> {
        let request = request.into_inner();
        let volume = volume_id(&request.volume_id)?;
        let staging = kubelet_path(&self.config, "staging target path", &request.staging_target_path)?;
        let target = kubelet_path(&self.config, "target path", &request.target_path)?;
        let capability = capability_of(request.volume_capability.as_ref())?;
        let staged = mount_at(&staging)?.is_some_and(|m| mounts::shoal_volume(&m) == Some(volume));
        // A target that already binds this volume proves it was staged here: a staging mount
        // released since (its agent died and fusermount3 took the dead mount away) is made
        // again, as is one whose session died.
        let published_before = mount_at(&target)?.is_some_and(|m| mounts::shoal_volume(&m) == Some(volume));
        if !staged && !published_before {
            return Err(Status::failed_precondition(format!(
                "volume {volume:?} is not staged at {}; call NodeStageVolume first",
                staging.display()
            )));
        }
        self.ensure_staged(volume, &staging, capability::mount_flags(capability)?)
            .await?;
        self.ensure_published(volume, &staging, &target, request.readonly)
            .await?;
        Ok(Response::new(csi::NodePublishVolumeResponse {}))
    }

    async fn node_unpublish_volume(
        &self,
        request: Request<csi::NodeUnpublishVolumeRequest>,
    ) -> Result<Response<csi::NodeUnpublishVolumeResponse>, Status> {
        let request = request.into_inner();
        let volume = volume_id(&request.volume_id)?;
        let target = kubelet_path(&self.config, "target path", &request.target_path)?;
        if let Some(mount) = mount_at(&target)?
            && mounts::shoal_volume(&mount) != Some(volume)
        {
            return Err(holds_other(Code::FailedPrecondition, &target, &mount, volume));
        }
        mounts::unmount_all(&target).map_err(|e| internal("cannot unmount the target", e))?;
        match std::fs::remove_dir(&target) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(internal(&format!("cannot remove {}", target.display()), error)),
        }
        tracing::info!(volume, target = %target.display(), "unpublished");
        Ok(Response::new(csi::NodeUnpublishVolumeResponse {}))
    }

    async fn node_get_volume_stats(
        &self,
        request: Request<csi::NodeGetVolumeStatsRequest>,
    ) -> Result<Response<csi::NodeGetVolumeStatsResponse>, Status> {
        let request = request.into_inner();
        if request.volume_id.is_empty() {
            return Err(invalid("the volume id is missing"));
        }
        let path = kubelet_path(&self.config, "volume path", &request.volume_path)?;
        let mount =
            mount_at(&path)?.ok_or_else(|| Status::not_found(format!("nothing is mounted at {}", path.display())))?;
        if mounts::shoal_volume(&mount) != Some(request.volume_id.as_str()) {
            return Err(holds_other(Code::NotFound, &path, &mount, &request.volume_id));
        }
        let reply = match mounts::health(&path).await {
            Health::Alive(stat) => stats_reply(&stat),
            Health::Dead(why) => csi::NodeGetVolumeStatsResponse {
                usage: Vec::new(),
                volume_condition: Some(csi::VolumeCondition {
                    abnormal: true,
                    message: format!(
                        "the mount at {} does not answer: {why}. The next NodeStageVolume and NodePublishVolume mount it again; pods using it must be restarted",
                        path.display()
                    ),
                }),
            },
        };
        Ok(Response::new(reply))
    }

    async fn node_get_capabilities(
        &self,
        _request: Request<csi::NodeGetCapabilitiesRequest>,
    ) -> Result<Response<csi::NodeGetCapabilitiesResponse>, Status> {
        let capabilities = [
            Rpc::StageUnstageVolume,
            Rpc::GetVolumeStats,
            Rpc::VolumeCondition,
            Rpc::SingleNodeMultiWriter,
        ]
        .iter()
        .map(|rpc| csi::NodeServiceCapability {
            r#type: Some(csi::node_service_capability::Type::Rpc(
                csi::node_service_capability::Rpc { r#type: *rpc as i32 },
            )),
        })
        .collect();
        Ok(Response::new(csi::NodeGetCapabilitiesResponse { capabilities }))
    }

    async fn node_get_info(
        &self,
        _request: Request<csi::NodeGetInfoRequest>,
    ) -> Result<Response<csi::NodeGetInfoResponse>, Status> {
        Ok(Response::new(csi::NodeGetInfoResponse {
            node_id: self.config.node_id.clone(),
            max_volumes_per_node: shoal_proto::agent::MAX_MOUNTS as i64,
            accessible_topology: None,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_clean_paths_inside_kubelets_directory() {
        let config = NodeConfig {
            node_id: "n1".into(),
            kubelet_dir: PathBuf::from("/var/lib/kubelet"),
            agent_socket: PathBuf::from("/run/shoal/agent.sock"),
        };
        let ok = "/var/lib/kubelet/pods/uid/volumes/kubernetes.io~csi/pv/mount";
        assert_eq!(kubelet_path(&config, "target path", ok).unwrap(), PathBuf::from(ok));
        for bad in [
            "",
            "relative/path",
            "/etc",
            "/var/lib/kubelet/../../etc",
            "/var/lib/kubeletx/a",
        ] {
            let error = kubelet_path(&config, "target path", bad).unwrap_err();
            assert_eq!(error.code(), Code::InvalidArgument, "{bad}");
        }
    }
}
