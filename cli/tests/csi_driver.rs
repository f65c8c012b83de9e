//! The CSI driver through its sockets, in the order the external-provisioner and kubelet
//! call it, with real processes (`shoal agent`, `shoal csi node`, `shoal csi controller`)
//! and real FUSE and bind mounts. Kubernetes itself cannot run here; these tests are what
//! it would do.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use shoal_proto::csi;
use shoal_proto::csi::volume_capability::access_mode::Mode;
use shoal_testkit::csi::{CsiNode, NODE_ID, capability, registry_volume, rwx_capability};
use shoal_testkit::{ShoalCluster, pattern, wait_for};
use tonic::Code;

const MIB: i64 = 1 << 20;

fn binary() -> PathBuf {
    std::env::var_os("SHOAL_TEST_BIN")
        .filter(|path| !path.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_shoal")))
}

/// A cluster of one registry node and three data services, with the CSI processes beside it.
struct Setup {
    cluster: ShoalCluster,
    node: CsiNode,
}

impl Setup {
    async fn start(agent_args: &[&str]) -> anyhow::Result<Setup> {
        let binary = binary();
        let cluster = ShoalCluster::start(&binary, 1, 3, &["--data-service-lease-ms=3000"]).await?;
        let root = cluster.registry.root().join("node");
        let node = CsiNode::start(&binary, &cluster.registry.registry_arg(), &root, agent_args).await?;
        Ok(Setup { cluster, node })
    }

    /// Stops everything and fails the test with every log if `result` is an error.
    fn finish(mut self, result: anyhow::Result<()>) {
        self.node.unmount_everything();
        let logs = format!("{}{}", self.node.logs(), self.cluster.logs());
        drop(self.node);
        self.cluster.stop_all();
        if let Err(error) = result {
            panic!("{error:#}\n{logs}");
        }
    }

    async fn create(
        &self,
        name: &str,
        capacity_bytes: i64,
        parameters: &[(&str, &str)],
    ) -> anyhow::Result<csi::Volume> {
        let reply = self
            .node
            .controller()
            .create_volume(create_request(name, capacity_bytes, parameters))
            .await?;
        reply
            .into_inner()
            .volume
            .ok_or_else(|| anyhow::anyhow!("CreateVolume returned no volume"))
    }

    async fn stage(&self, volume_id: &str) -> Result<(), tonic::Status> {
        let request = csi::NodeStageVolumeRequest {
            volume_id: volume_id.into(),
            staging_target_path: self.node.staging_path(volume_id).to_string_lossy().into(),
            volume_capability: Some(rwx_capability()),
            ..Default::default()
        };
        self.node.node().node_stage_volume(request).await.map(|_| ())
    }

    async fn publish(&self, volume_id: &str, pod: &str, readonly: bool) -> Result<PathBuf, tonic::Status> {
        let target = self.node.target_path(pod, volume_id);
        let request = csi::NodePublishVolumeRequest {
            volume_id: volume_id.into(),
            staging_target_path: self.node.staging_path(volume_id).to_string_lossy().into(),
            target_path: target.to_string_lossy().into(),
            volume_capability: Some(rwx_capability()),
            readonly,
            ..Default::default()
        };
        self.node.node().node_publish_volume(request).await?;
        Ok(target)
    }

    async fn unpublish(&self, volume_id: &str, target: &Path) -> Result<(), tonic::Status> {
        let request = csi::NodeUnpublishVolumeRequest {
            volume_id: volume_id.into(),
            target_path: target.to_string_lossy().into(),
        };
        self.node.node().node_unpublish_volume(request).await.map(|_| ())
    }

    async fn unstage(&self, volume_id: &str) -> Result<(), tonic::Status> {
        let request = csi::NodeUnstageVolumeRequest {
            volume_id: volume_id.into(),
            staging_target_path: self.node.staging_path(volume_id).to_string_lossy().into(),
        };
        self.node.node().node_unstage_volume(request).await.map(|_| ())
    }

    async fn stats(&self, volume_id: &str, path: &Path) -> Result<csi::NodeGetVolumeStatsResponse, tonic::Status> {
        let request = csi::NodeGetVolumeStatsRequest {
            volume_id: volume_id.into(),
            volume_path: path.to_string_lossy().into(),
            staging_target_path: String::new(),
        };
        Ok(self.node.node().node_get_volume_stats(request).await?.into_inner())
    }

    /// Mounts under the node's kubelet directory now.
    fn mounts(&self) -> Vec<PathBuf> {
        shoal_client::mountinfo::mounts()
            .unwrap()
            .into_iter()
            .map(|mount| mount.mount_point)
            .filter(|point| point.starts_with(&self.node.kubelet_dir))
            .collect()
    }
}

fn create_request(name: &str, capacity_bytes: i64, parameters: &[(&str, &str)]) -> csi::CreateVolumeRequest {
    csi::CreateVolumeRequest {
        name: name.into(),
        capacity_range: Some(csi::CapacityRange {
            required_bytes: capacity_bytes,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![rwx_capability()],
        parameters: parameters.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        ..Default::default()
    }
}

fn usage(reply: &csi::NodeGetVolumeStatsResponse, unit: csi::volume_usage::Unit) -> csi::VolumeUsage {
    reply
        .usage
        .iter()
        .find(|usage| usage.unit == unit as i32)
        .cloned()
        .unwrap_or_else(|| panic!("no {unit:?} usage in {reply:?}"))
}

fn total_bytes(path: &Path) -> u64 {
    let stat = nix::sys::statvfs::statvfs(path).unwrap();
    stat.blocks() as u64 * stat.fragment_size() as u64
}

fn expect_code<T: std::fmt::Debug>(what: &str, result: Result<T, tonic::Status>, code: Code) -> anyhow::Result<()> {
    match result {
        Err(status) if status.code() == code => {
            anyhow::ensure!(!status.message().is_empty(), "{what}: {code:?} without a message");
            Ok(())
        }
        other => anyhow::bail!("{what}: expected {code:?}, got {other:?}"),
    }
}

fn write_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut file = std::fs::File::create(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_shared_volume_from_create_to_delete_every_step_twice() {
    let setup = Setup::start(&[]).await.expect("start");
    let result = lifecycle(&setup).await;
    setup.finish(result);
}

async fn lifecycle(setup: &Setup) -> anyhow::Result<()> {
    let info = setup
        .node
        .controller_identity()
        .get_plugin_info(csi::GetPluginInfoRequest {})
        .await?
        .into_inner();
    anyhow::ensure!(
        info.name == shoal_csi::DRIVER_NAME && !info.vendor_version.is_empty(),
        "{info:?}"
    );
    let probe = setup
        .node
        .node_identity()
        .probe(csi::ProbeRequest {})
        .await?
        .into_inner();
    anyhow::ensure!(probe.ready == Some(true), "the node plugin is ready: {probe:?}");
    let node_info = setup
        .node
        .node()
        .node_get_info(csi::NodeGetInfoRequest {})
        .await?
        .into_inner();
    anyhow::ensure!(node_info.node_id == NODE_ID, "{node_info:?}");

    let parameters = [("replicas", "2"), ("stripeWidth", "2"), ("chunkSize", "1Mi")];
    let volume = setup.create("pvc-lifecycle", 256 * MIB, &parameters).await?;
    let again = setup.create("pvc-lifecycle", 256 * MIB, &parameters).await?;
    anyhow::ensure!(
        volume == again,
        "the same request returns the same volume: {volume:?} vs {again:?}"
    );
    anyhow::ensure!(volume.capacity_bytes == 256 * MIB, "{volume:?}");
    let id = volume.volume_id.clone();
    let record = registry_volume(&setup.cluster.registry.client(), &id).await?;
    anyhow::ensure!(
        record.quota_bytes == 256 << 20
            && record.replicas == 2
            && record.stripe_width == 2
            && record.chunk_size_bytes == 1 << 20,
        "the registry's volume: {record:?}"
    );

    for _ in 0..2 {
        setup.stage(&id).await?;
    }
    let mut targets = Vec::new();
    for pod in ["pod-a", "pod-b"] {
        let target = setup.publish(&id, pod, false).await?;
        anyhow::ensure!(setup.publish(&id, pod, false).await? == target, "publish again");
        targets.push(target);
    }
    let (a, b) = (targets[0].clone(), targets[1].clone());
    let readonly = setup.publish(&id, "pod-r", true).await?;
    setup.publish(&id, "pod-r", true).await?;
    shares_files(&a, &b, &readonly)?;

    // Expansion: the quota grows, every mount's df and the stats say so at once.
    for _ in 0..2 {
        let request = csi::ControllerExpandVolumeRequest {
            volume_id: id.clone(),
            capacity_range: Some(csi::CapacityRange {
                required_bytes: 512 * MIB,
                limit_bytes: 0,
            }),
            ..Default::default()
        };
        let expanded = setup
            .node
            .controller()
            .controller_expand_volume(request)
            .await?
            .into_inner();
        anyhow::ensure!(
            expanded.capacity_bytes == 512 * MIB && !expanded.node_expansion_required,
            "{expanded:?}"
        );
    }
    for target in [&a, &b] {
        anyhow::ensure!(
            total_bytes(target) == 512 << 20,
            "df of {} shows the new size",
            target.display()
        );
    }
    let stats = setup.stats(&id, &a).await?;
    let bytes = usage(&stats, csi::volume_usage::Unit::Bytes);
    anyhow::ensure!(
        bytes.total == 512 * MIB && bytes.used >= 64 * MIB && bytes.available == bytes.total - bytes.used,
        "{stats:?}"
    );
    anyhow::ensure!(usage(&stats, csi::volume_usage::Unit::Inodes).used >= 3, "{stats:?}");
    anyhow::ensure!(
        stats.volume_condition.as_ref().is_some_and(|c| !c.abnormal),
        "{stats:?}"
    );
    let got = setup
        .node
        .controller()
        .controller_get_volume(csi::ControllerGetVolumeRequest { volume_id: id.clone() })
        .await?
        .into_inner();
    let condition = got.status.and_then(|s| s.volume_condition);
    anyhow::ensure!(condition.is_some_and(|c| !c.abnormal), "ControllerGetVolume: healthy");

    // Unpublish one pod: its target is gone, the other keeps working.
    for _ in 0..2 {
        setup.unpublish(&id, &a).await?;
    }
    anyhow::ensure!(!a.exists(), "the unpublished target path is removed");
    anyhow::ensure!(
        std::fs::read(b.join("renamed/big"))?.len() == 64 << 20,
        "the other pod still reads"
    );
    write_file(&b.join("after-unpublish"), b"still here")?;
    for target in [&b, &readonly] {
        setup.unpublish(&id, target).await?;
    }
    for _ in 0..2 {
        setup.unstage(&id).await?;
    }
    anyhow::ensure!(setup.mounts().is_empty(), "nothing left mounted: {:?}", setup.mounts());
    let agent = setup
        .node
        .agent_client()
        .status(shoal_proto::agent::StatusRequest {})
        .await?
        .into_inner();
    anyhow::ensure!(
        agent.mounts.is_empty() && agent.reserved_bytes == 0,
        "the agent let go: {agent:?}"
    );

    for _ in 0..2 {
        setup
            .node
            .controller()
            .delete_volume(csi::DeleteVolumeRequest {
                volume_id: id.clone(),
                ..Default::default()
            })
            .await?;
    }
    let client = setup.cluster.registry.client();
    let gone = registry_volume(&client, &id).await;
    anyhow::ensure!(gone.is_err(), "the volume is deleted: {gone:?}");
    wait_for(
        "every data service to reclaim the deleted volume's chunks",
        Duration::from_secs(60),
        || async {
            let services = client.list_data_services(shoal_client::proto::Empty {}).await.ok()?;
            for service in services.data_services {
                let request = shoal_client::proto::ListGarbageRequest {
                    data_service_id: service.id,
                    max_entries: 100,
                };
                let garbage = client.list_garbage(request).await.ok()?;
                if garbage.volumes.contains(&record.id) {
                    return None;
                }
            }
            Some(())
        },
    )
    .await?;
    Ok(())
}

/// What one pod does through `a`, the other sees through `b`; `readonly` refuses writes.
fn shares_files(a: &Path, b: &Path, readonly: &Path) -> anyhow::Result<()> {
    let big = pattern(13, 0, 64 << 20);
    write_file(&a.join("big"), &big)?;
    anyhow::ensure!(
        std::fs::read(b.join("big"))? == big,
        "64 MiB written through one target reads back through the other"
    );
    std::fs::create_dir(a.join("renamed"))?;
    std::fs::rename(a.join("big"), a.join("renamed/big"))?;
    write_file(&a.join("doomed"), b"x")?;
    std::fs::remove_file(a.join("doomed"))?;
    anyhow::ensure!(
        b.join("renamed/big").exists() && !b.join("big").exists(),
        "the rename is seen"
    );
    anyhow::ensure!(!b.join("doomed").exists(), "the unlink is seen");
    anyhow::ensure!(
        std::fs::read(readonly.join("renamed/big"))?.len() == big.len(),
        "the read-only target reads"
    );
    let refused = std::fs::File::create(readonly.join("new"));
    anyhow::ensure!(
        refused.as_ref().err().and_then(std::io::Error::raw_os_error) == Some(libc::EROFS),
        "a write through the read-only target gets EROFS: {refused:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn listing_pages_and_capacity() {
    let mut setup = Setup::start(&[]).await.expect("start");
    let result = listing(&mut setup).await;
    setup.finish(result);
}

async fn listing(setup: &mut Setup) -> anyhow::Result<()> {
    for name in ["pvc-1", "pvc-2", "pvc-3"] {
        setup.create(name, 64 * MIB, &[]).await?;
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    for _ in 0..10 {
        let request = csi::ListVolumesRequest {
            max_entries: 2,
            starting_token: token.clone(),
        };
        let page = setup.node.controller().list_volumes(request).await?.into_inner();
        anyhow::ensure!(page.entries.len() <= 2, "{page:?}");
        seen.extend(page.entries.into_iter().filter_map(|e| e.volume).map(|v| v.volume_id));
        token = page.next_token;
        if token.is_empty() {
            break;
        }
    }
    anyhow::ensure!(
        seen == ["pvc-1", "pvc-2", "pvc-3"],
        "every volume once, in order: {seen:?}"
    );
    let capacity = setup
        .node
        .controller()
        .get_capacity(csi::GetCapacityRequest {
            volume_capabilities: vec![rwx_capability()],
            parameters: HashMap::from([("replicas".to_string(), "3".to_string())]),
            accessible_topology: None,
        })
        .await?
        .into_inner();
    let services = setup
        .cluster
        .registry
        .client()
        .list_data_services(shoal_client::proto::Empty {})
        .await?;
    let free: u64 = services
        .data_services
        .iter()
        .flat_map(|s| s.disks.iter())
        .map(|d| d.free_bytes)
        .sum();
    let expected = (free / 3) as i64;
    // Free space moves a little as the data services write; a tenth of a percent is noise.
    anyhow::ensure!(
        (capacity.available_capacity - expected).abs() <= expected / 1000,
        "capacity {} at 3 copies, the data services' free bytes / 3 = {expected}",
        capacity.available_capacity
    );
    // Ready only while the registry answers.
    setup.cluster.registry.kill_node(1);
    for identity in [setup.node.controller_identity(), setup.node.node_identity()] {
        let probe = identity.clone().probe(csi::ProbeRequest {}).await;
        expect_code("a probe with the registry down", probe, Code::FailedPrecondition)?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_the_specs_code_and_changes_nothing() {
    let setup = Setup::start(&[]).await.expect("start");
    let result = bad_input(&setup).await;
    setup.finish(result);
}

async fn bad_input(setup: &Setup) -> anyhow::Result<()> {
    let mut controller = setup.node.controller();
    let good = setup.create("pvc-good", 64 * MIB, &[]).await?;
    let id = good.volume_id.clone();
    let volumes_before = setup
        .cluster
        .registry
        .client()
        .list_volumes(shoal_client::proto::Empty {})
        .await?
        .volumes
        .len();

    let mut no_name = create_request("", MIB, &[]);
    expect_code(
        "create without a name",
        controller.create_volume(no_name.clone()).await,
        Code::InvalidArgument,
    )?;
    no_name.name = "x".repeat(129);
    expect_code(
        "create with a 129-byte name",
        controller.create_volume(no_name).await,
        Code::InvalidArgument,
    )?;
    let mut no_caps = create_request("pvc-nocaps", MIB, &[]);
    no_caps.volume_capabilities.clear();
    expect_code(
        "create without capabilities",
        controller.create_volume(no_caps).await,
        Code::InvalidArgument,
    )?;
    let mut block = create_request("pvc-block", MIB, &[]);
    block.volume_capabilities[0].access_type = Some(csi::volume_capability::AccessType::Block(Default::default()));
    expect_code(
        "create a block volume",
        controller.create_volume(block).await,
        Code::InvalidArgument,
    )?;
    for (key, value) in [
        ("replica", "3"),
        ("replicas", "7"),
        ("chunkSize", "3M"),
        ("stripeWidth", "0"),
    ] {
        let result = controller
            .create_volume(create_request("pvc-params", MIB, &[(key, value)]))
            .await;
        let message = result
            .as_ref()
            .err()
            .map(|s| s.message().to_string())
            .unwrap_or_default();
        expect_code(&format!("create with {key}={value}"), result, Code::InvalidArgument)?;
        anyhow::ensure!(message.contains(key), "the error names {key}: {message}");
    }
    let mut inverted = create_request("pvc-range", 10 * MIB, &[]);
    inverted.capacity_range.as_mut().unwrap().limit_bytes = MIB;
    expect_code(
        "create with required above limit",
        controller.create_volume(inverted).await,
        Code::OutOfRange,
    )?;
    expect_code(
        "the same name with another capacity",
        controller
            .create_volume(create_request("pvc-good", 128 * MIB, &[]))
            .await,
        Code::AlreadyExists,
    )?;
    expect_code(
        "the same name with other parameters",
        controller
            .create_volume(create_request("pvc-good", 64 * MIB, &[("replicas", "1")]))
            .await,
        Code::AlreadyExists,
    )?;
    let volumes_after = setup
        .cluster
        .registry
        .client()
        .list_volumes(shoal_client::proto::Empty {})
        .await?
        .volumes
        .len();
    anyhow::ensure!(volumes_before == volumes_after, "no refused create made a volume");

    // The longest name the specification allows, of characters a Shoal name cannot hold.
    let odd_name = format!("PVC with spaces/é {}", "z".repeat(100));
    let odd_name: String = odd_name.chars().take(120).collect();
    let odd = setup.create(&odd_name, MIB, &[]).await?;
    anyhow::ensure!(
        odd == setup.create(&odd_name, MIB, &[]).await?,
        "an odd name maps to one volume"
    );

    expect_code(
        "delete without an id",
        controller.delete_volume(csi::DeleteVolumeRequest::default()).await,
        Code::InvalidArgument,
    )?;
    controller
        .delete_volume(csi::DeleteVolumeRequest {
            volume_id: "pvc-unknown".into(),
            ..Default::default()
        })
        .await?;
    let validate = |volume_id: &str, capabilities: Vec<csi::VolumeCapability>| csi::ValidateVolumeCapabilitiesRequest {
        volume_id: volume_id.into(),
        volume_capabilities: capabilities,
        ..Default::default()
    };
    expect_code(
        "validate without an id",
        controller
            .validate_volume_capabilities(validate("", vec![rwx_capability()]))
            .await,
        Code::InvalidArgument,
    )?;
    expect_code(
        "validate without capabilities",
        controller.validate_volume_capabilities(validate(&id, vec![])).await,
        Code::InvalidArgument,
    )?;
    expect_code(
        "validate an unknown volume",
        controller
            .validate_volume_capabilities(validate("pvc-unknown", vec![rwx_capability()]))
            .await,
        Code::NotFound,
    )?;
    let confirmed = controller
        .validate_volume_capabilities(validate(&id, vec![capability(Mode::SingleNodeWriter)]))
        .await?
        .into_inner();
    anyhow::ensure!(confirmed.confirmed.is_some(), "{confirmed:?}");
    let mut block_capability = rwx_capability();
    block_capability.access_type = Some(csi::volume_capability::AccessType::Block(Default::default()));
    let refused = controller
        .validate_volume_capabilities(validate(&id, vec![block_capability]))
        .await?
        .into_inner();
    anyhow::ensure!(
        refused.confirmed.is_none() && refused.message.contains("block"),
        "{refused:?}"
    );
    expect_code(
        "list from a token never handed out",
        controller
            .list_volumes(csi::ListVolumesRequest {
                max_entries: 1,
                starting_token: "invalid-token".into(),
            })
            .await,
        Code::Aborted,
    )?;
    expect_code(
        "list a negative page",
        controller
            .list_volumes(csi::ListVolumesRequest {
                max_entries: -1,
                starting_token: String::new(),
            })
            .await,
        Code::InvalidArgument,
    )?;
    let expand = |volume_id: &str, range: Option<csi::CapacityRange>| csi::ControllerExpandVolumeRequest {
        volume_id: volume_id.into(),
        capacity_range: range,
        ..Default::default()
    };
    let range = Some(csi::CapacityRange {
        required_bytes: 128 * MIB,
        limit_bytes: 0,
    });
    expect_code(
        "expand without an id",
        controller.controller_expand_volume(expand("", range)).await,
        Code::InvalidArgument,
    )?;
    expect_code(
        "expand without a range",
        controller.controller_expand_volume(expand(&id, None)).await,
        Code::InvalidArgument,
    )?;
    expect_code(
        "expand an unknown volume",
        controller.controller_expand_volume(expand("pvc-unknown", range)).await,
        Code::NotFound,
    )?;
    expect_code(
        "get an unknown volume",
        controller
            .controller_get_volume(csi::ControllerGetVolumeRequest {
                volume_id: "pvc-unknown".into(),
            })
            .await,
        Code::NotFound,
    )?;
    node_bad_input(setup, &id).await
}

async fn node_bad_input(setup: &Setup, id: &str) -> anyhow::Result<()> {
    let mut node = setup.node.node();
    let staging = setup.node.staging_path(id).to_string_lossy().into_owned();
    let stage = |volume_id: &str, path: &str, capability: Option<csi::VolumeCapability>| csi::NodeStageVolumeRequest {
        volume_id: volume_id.into(),
        staging_target_path: path.into(),
        volume_capability: capability,
        ..Default::default()
    };
    let rwx = Some(rwx_capability());
    expect_code(
        "stage without an id",
        node.node_stage_volume(stage("", &staging, rwx.clone())).await,
        Code::InvalidArgument,
    )?;
    expect_code(
        "stage without a path",
        node.node_stage_volume(stage(id, "", rwx.clone())).await,
        Code::InvalidArgument,
    )?;
    expect_code(
        "stage without a capability",
        node.node_stage_volume(stage(id, &staging, None)).await,
        Code::InvalidArgument,
    )?;
    let outside = setup.node.root.join("elsewhere").to_string_lossy().into_owned();
    expect_code(
        "stage outside kubelet's directory",
        node.node_stage_volume(stage(id, &outside, rwx.clone())).await,
        Code::InvalidArgument,
    )?;
    let escaping = format!("{}/../../elsewhere", setup.node.kubelet_dir.join("plugins").display());
    expect_code(
        "stage through '..'",
        node.node_stage_volume(stage(id, &escaping, rwx.clone())).await,
        Code::InvalidArgument,
    )?;
    let mut block = rwx_capability();
    block.access_type = Some(csi::volume_capability::AccessType::Block(Default::default()));
    expect_code(
        "stage a block volume",
        node.node_stage_volume(stage(id, &staging, Some(block))).await,
        Code::InvalidArgument,
    )?;
    let mut flagged = rwx_capability();
    if let Some(csi::volume_capability::AccessType::Mount(mount)) = &mut flagged.access_type {
        mount.mount_flags = vec!["nfsvers=4".into()];
    }
    expect_code(
        "stage with an unknown mount flag",
        node.node_stage_volume(stage(id, &staging, Some(flagged))).await,
        Code::InvalidArgument,
    )?;
    let unknown_staging = setup.node.staging_path("pvc-unknown").to_string_lossy().into_owned();
    expect_code(
        "stage an unknown volume",
        node.node_stage_volume(stage("pvc-unknown", &unknown_staging, rwx.clone()))
            .await,
        Code::NotFound,
    )?;

    let target = setup.node.target_path("pod-x", id);
    let publish = |volume_id: &str, staging: &str, target: &str, capability: Option<csi::VolumeCapability>| {
        csi::NodePublishVolumeRequest {
            volume_id: volume_id.into(),
            staging_target_path: staging.into(),
            target_path: target.into(),
            volume_capability: capability,
            ..Default::default()
        }
    };
    let t = target.to_string_lossy().into_owned();
    expect_code(
        "publish without an id",
        node.node_publish_volume(publish("", &staging, &t, rwx.clone())).await,
        Code::InvalidArgument,
    )?;
    expect_code(
        "publish without a target",
        node.node_publish_volume(publish(id, &staging, "", rwx.clone())).await,
        Code::InvalidArgument,
    )?;
    expect_code(
        "publish without a staging path",
        node.node_publish_volume(publish(id, "", &t, rwx.clone())).await,
        Code::InvalidArgument,
    )?;
    expect_code(
        "publish without a capability",
        node.node_publish_volume(publish(id, &staging, &t, None)).await,
        Code::InvalidArgument,
    )?;
    expect_code(
        "publish outside kubelet's directory",
        node.node_publish_volume(publish(id, &staging, &outside, rwx.clone()))
            .await,
        Code::InvalidArgument,
    )?;
    expect_code(
        "publish before staging",
        node.node_publish_volume(publish(id, &staging, &t, rwx.clone())).await,
        Code::FailedPrecondition,
    )?;
    let unpublish = |volume_id: &str, target: &str| csi::NodeUnpublishVolumeRequest {
        volume_id: volume_id.into(),
        target_path: target.into(),
    };
    expect_code(
        "unpublish without an id",
        node.node_unpublish_volume(unpublish("", &t)).await,
        Code::InvalidArgument,
    )?;
    expect_code(
        "unpublish without a target",
        node.node_unpublish_volume(unpublish(id, "")).await,
        Code::InvalidArgument,
    )?;
    let unstage = |volume_id: &str, path: &str| csi::NodeUnstageVolumeRequest {
        volume_id: volume_id.into(),
        staging_target_path: path.into(),
    };
    expect_code(
        "unstage without an id",
        node.node_unstage_volume(unstage("", &staging)).await,
        Code::InvalidArgument,
    )?;
    expect_code(
        "unstage without a path",
        node.node_unstage_volume(unstage(id, "")).await,
        Code::InvalidArgument,
    )?;
    let stats = |volume_id: &str, path: &str| csi::NodeGetVolumeStatsRequest {
        volume_id: volume_id.into(),
        volume_path: path.into(),
        staging_target_path: String::new(),
    };
    expect_code(
        "stats without an id",
        node.node_get_volume_stats(stats("", &t)).await,
        Code::InvalidArgument,
    )?;
    expect_code(
        "stats without a path",
        node.node_get_volume_stats(stats(id, "")).await,
        Code::InvalidArgument,
    )?;
    std::fs::create_dir_all(&target)?;
    expect_code(
        "stats of a path where nothing is mounted",
        node.node_get_volume_stats(stats(id, &t)).await,
        Code::NotFound,
    )?;
    anyhow::ensure!(
        setup.mounts().is_empty(),
        "no refused call mounted anything: {:?}",
        setup.mounts()
    );
    anyhow::ensure!(
        !setup.node.root.join("elsewhere").exists(),
        "no refused call made a directory outside kubelet's"
    );

    // A path that holds another volume is not this volume's.
    let other = setup.create("pvc-other", MIB, &[]).await?.volume_id;
    setup.stage(&other).await?;
    let other_target = setup.publish(&other, "pod-o", false).await?;
    expect_code(
        "stats of another volume's path",
        setup.stats(id, &other_target).await,
        Code::NotFound,
    )?;
    setup.unpublish(&other, &other_target).await?;
    setup.unstage(&other).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_plugin_killed_twice_under_a_writer_changes_nothing_for_the_pod() {
    let setup = Setup::start(&[]).await.expect("start");
    let result = plugin_restarts(setup).await;
    let (setup, result) = result;
    setup.finish(result);
}

/// Appends fixed records to `path` until `stop` is set; returns the number written and
/// every error met.
fn append_records(path: PathBuf, stop: std::sync::Arc<std::sync::atomic::AtomicBool>) -> (u64, Vec<String>) {
    let mut errors = Vec::new();
    let mut file = match std::fs::OpenOptions::new().create(true).append(true).open(&path) {
        Ok(file) => file,
        Err(error) => return (0, vec![format!("open: {error}")]),
    };
    let mut written = 0u64;
    // Bounded: a writer that never sees `stop` ends after this many records.
    while written < 1_000_000 && !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let record = pattern(written, 0, 4096);
        if let Err(error) = file.write_all(&record) {
            errors.push(format!("record {written}: {error}"));
            break;
        }
        written += 1;
        if written.is_multiple_of(64)
            && let Err(error) = file.sync_data()
        {
            errors.push(format!("fsync after {written}: {error}"));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    if let Err(error) = file.sync_all() {
        errors.push(format!("final fsync: {error}"));
    }
    (written, errors)
}

async fn plugin_restarts(mut setup: Setup) -> (Setup, anyhow::Result<()>) {
    let result = async {
        let id = setup.create("pvc-restart", 0, &[]).await?.volume_id;
        setup.stage(&id).await?;
        let target = setup.publish(&id, "pod-w", false).await?;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = std::thread::spawn({
            let (path, stop) = (target.join("log"), stop.clone());
            move || append_records(path, stop)
        });
        let growing = |min: u64| {
            let path = target.join("log");
            move || {
                let path = path.clone();
                async move { std::fs::metadata(&path).ok().filter(|m| m.len() >= min).map(|_| ()) }
            }
        };
        for round in 1..=2u64 {
            wait_for(
                "the writer to make progress",
                Duration::from_secs(30),
                growing(round * 256 * 4096),
            )
            .await?;
            setup.node.node_plugin.as_mut().expect("node plugin").kill();
            // Past any retry window the sidecars have: the pod's mount does not depend on it.
            tokio::time::sleep(Duration::from_secs(2)).await;
            setup.node.start_node_plugin().await?;
        }
        wait_for(
            "the writer to go on after the restarts",
            Duration::from_secs(30),
            growing(3 * 256 * 4096),
        )
        .await?;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (written, errors) = writer.join().expect("writer thread");
        anyhow::ensure!(errors.is_empty(), "the writer met errors: {errors:?}");
        let mut bytes = Vec::new();
        std::fs::File::open(target.join("log"))?.read_to_end(&mut bytes)?;
        anyhow::ensure!(
            bytes.len() as u64 == written * 4096,
            "{} bytes for {written} records",
            bytes.len()
        );
        for (index, record) in bytes.chunks(4096).enumerate() {
            anyhow::ensure!(record == pattern(index as u64, 0, 4096), "record {index} is intact");
        }
        // The restarted plugin knows the volume from the kernel alone.
        let stats = setup.stats(&id, &target).await?;
        anyhow::ensure!(
            stats.volume_condition.as_ref().is_some_and(|c| !c.abnormal),
            "{stats:?}"
        );
        setup.stage(&id).await?;
        setup.publish(&id, "pod-w", false).await?;
        setup.unpublish(&id, &target).await?;
        setup.unstage(&id).await?;
        anyhow::ensure!(setup.mounts().is_empty(), "nothing left mounted: {:?}", setup.mounts());
        Ok(())
    }
    .await;
    (setup, result)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_agent_is_reported_abnormal_and_the_next_stage_and_publish_repair_it() {
    let setup = Setup::start(&[]).await.expect("start");
    let (setup, result) = agent_restart(setup).await;
    setup.finish(result);
}

async fn agent_restart(mut setup: Setup) -> (Setup, anyhow::Result<()>) {
    let result = async {
        let id = setup.create("pvc-agent", 0, &[]).await?.volume_id;
        setup.stage(&id).await?;
        let target = setup.publish(&id, "pod-k", false).await?;
        write_file(&target.join("before"), b"written before the agent died")?;
        setup.node.agent.as_mut().expect("agent").kill();
        let stats = wait_for(
            "the stats to report the dead mount",
            Duration::from_secs(30),
            || async {
                let stats = setup.stats(&id, &target).await.ok()?;
                stats
                    .volume_condition
                    .as_ref()
                    .is_some_and(|c| c.abnormal)
                    .then_some(stats)
            },
        )
        .await?;
        let message = stats.volume_condition.map(|c| c.message).unwrap_or_default();
        anyhow::ensure!(message.contains("does not answer"), "the condition says why: {message}");
        setup.node.start_agent().await?;
        // kubelet may retry only the publish: it repairs the staging mount too.
        setup.publish(&id, "pod-k", false).await?;
        setup.stage(&id).await?;
        let stats = setup.stats(&id, &target).await?;
        anyhow::ensure!(
            stats.volume_condition.as_ref().is_some_and(|c| !c.abnormal),
            "repaired: {stats:?}"
        );
        anyhow::ensure!(
            std::fs::read(target.join("before"))? == b"written before the agent died",
            "data survives"
        );
        write_file(&target.join("after"), b"written after the repair")?;
        anyhow::ensure!(std::fs::read(target.join("after"))? == b"written after the repair");
        setup.unpublish(&id, &target).await?;
        setup.unstage(&id).await?;
        anyhow::ensure!(setup.mounts().is_empty(), "nothing left mounted: {:?}", setup.mounts());
        Ok(())
    }
    .await;
    (setup, result)
}

/// Resident memory of a process, in bytes, from /proc.
fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
}

const BUDGET_MIB: u64 = 144;
/// What each of the four pods writes and reads back.
const STREAM_MIB: usize = 192;

#[tokio::test(flavor = "multi_thread")]
async fn one_agent_serves_four_busy_volumes_within_its_memory_budget() {
    let budget = format!("--memory-budget={BUDGET_MIB}M");
    let setup = Setup::start(&[&budget, "--write-floor=16M", "--read-cache=16M"])
        .await
        .expect("start");
    let result = four_volumes(&setup).await;
    setup.finish(result);
}

async fn four_volumes(setup: &Setup) -> anyhow::Result<()> {
    let mut targets = Vec::new();
    for index in 0..4 {
        let id = setup
            .create(&format!("pvc-busy-{index}"), 0, &[("replicas", "1")])
            .await?
            .volume_id;
        setup.stage(&id).await?;
        targets.push(setup.publish(&id, &format!("pod-{index}"), false).await?);
    }
    // A fifth does not fit: four reservations of 34 MiB (write floor, read cache, FUSE
    // request buffers) leave 8 MiB of 144.
    let fifth = setup.create("pvc-busy-4", 0, &[]).await?.volume_id;
    expect_code(
        "a mount beyond the budget",
        setup.stage(&fifth).await,
        Code::ResourceExhausted,
    )?;
    let pid = setup
        .node
        .agent
        .as_ref()
        .and_then(|agent| agent.pid())
        .expect("agent pid");
    let idle_rss = rss_bytes(pid).expect("agent rss");
    // Each pod writes a stream, syncs it, and reads it back through read-ahead.
    let writers: Vec<_> = targets
        .iter()
        .enumerate()
        .map(|(index, target)| {
            let path = target.join("stream");
            std::thread::spawn(move || -> anyhow::Result<()> {
                let mut file = std::fs::File::create(&path)?;
                let block = pattern(index as u64, 0, 1 << 20);
                for _ in 0..STREAM_MIB {
                    file.write_all(&block)?;
                }
                file.sync_all()?;
                let mut reader = std::fs::File::open(&path)?;
                let mut read = vec![0u8; 1 << 20];
                for mib in 0..STREAM_MIB {
                    reader.read_exact(&mut read)?;
                    anyhow::ensure!(read == block, "stream {index} MiB {mib} reads back");
                }
                Ok(())
            })
        })
        .collect();
    let (mut peak_rss, mut peak_in_use) = (idle_rss, 0);
    let mut agent = setup.node.agent_client();
    // Bounded: four streams of 192 MiB are written and read long before this many samples.
    for _ in 0..6000 {
        if writers.iter().all(|w| w.is_finished()) {
            break;
        }
        peak_rss = peak_rss.max(rss_bytes(pid).unwrap_or(0));
        let status = agent.status(shoal_proto::agent::StatusRequest {}).await?.into_inner();
        peak_in_use = peak_in_use.max(status.in_use_bytes);
        anyhow::ensure!(
            status.in_use_bytes <= status.budget_bytes,
            "within the budget: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for writer in writers {
        writer.join().expect("writer thread")?;
    }
    let budget = BUDGET_MIB << 20;
    println!(
        "agent memory: idle {} MiB with 4 mounts, peak {} MiB while writing and reading, write-back peak {} MiB, budget {} MiB",
        idle_rss >> 20,
        peak_rss >> 20,
        peak_in_use >> 20,
        BUDGET_MIB
    );
    anyhow::ensure!(
        peak_rss <= budget,
        "the agent's resident memory reached {} MiB, more than its budget of {BUDGET_MIB} MiB",
        peak_rss >> 20
    );
    anyhow::ensure!(
        peak_in_use > 16 << 20,
        "the writers did use the buffers ({} bytes)",
        peak_in_use
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_plugin_killed_in_the_middle_of_a_publish_finishes_it_when_asked_again() {
    let setup = Setup::start(&[]).await.expect("start");
    let (setup, result) = killed_mid_publish(setup).await;
    setup.finish(result);
}

/// Kills the node plugin at the entry of its `nth` mount(2) call on `target` while it
/// publishes, restarts it, and publishes again.
async fn publish_killed_at(
    setup: &mut Setup,
    id: &str,
    pod: &str,
    readonly: bool,
    nth: u32,
) -> anyhow::Result<PathBuf> {
    let target = setup.node.target_path(pod, id);
    std::fs::create_dir_all(&target)?;
    let pid = setup
        .node
        .node_plugin
        .as_ref()
        .and_then(|p| p.pid())
        .expect("plugin pid");
    let log = setup.node.root.join(format!("strace-{pod}.log"));
    let mut kill = shoal_testkit::KillAt::arm(pid, "mount", &target, nth, &log).await?;
    let interrupted = setup.publish(id, pod, readonly).await;
    anyhow::ensure!(interrupted.is_err(), "the publish was cut off: {interrupted:?}");
    kill.wait_for_kill(Duration::from_secs(10)).await?;
    drop(kill);
    setup.node.node_plugin.as_mut().expect("plugin").kill();
    setup.node.start_node_plugin().await?;
    anyhow::ensure!(setup.publish(id, pod, readonly).await? == target, "the retried publish");
    let stacked = setup.mounts().iter().filter(|m| **m == target).count();
    anyhow::ensure!(stacked == 1, "one mount at the target, not {stacked}");
    Ok(target)
}

async fn killed_mid_publish(mut setup: Setup) -> (Setup, anyhow::Result<()>) {
    let result = async {
        let id = setup.create("pvc-midway", 0, &[]).await?.volume_id;
        setup.stage(&id).await?;
        // Killed before the bind: the retry binds.
        let writable = publish_killed_at(&mut setup, &id, "pod-rw", false, 1).await?;
        write_file(&writable.join("through-the-retried-bind"), b"ok")?;
        // Killed between the bind and the read-only remount: the retry finishes the remount
        // instead of leaving a writable target or refusing forever.
        let readonly = publish_killed_at(&mut setup, &id, "pod-ro", true, 2).await?;
        let refused = std::fs::File::create(readonly.join("new"));
        anyhow::ensure!(
            refused.as_ref().err().and_then(std::io::Error::raw_os_error) == Some(libc::EROFS),
            "the finished read-only publish refuses writes: {refused:?}"
        );
        for target in [&writable, &readonly] {
            setup.unpublish(&id, target).await?;
        }
        setup.unstage(&id).await?;
        anyhow::ensure!(setup.mounts().is_empty(), "nothing left mounted: {:?}", setup.mounts());
        Ok(())
    }
    .await;
    (setup, result)
}
