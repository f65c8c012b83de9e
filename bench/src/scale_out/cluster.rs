//! A Shoal cluster spread over lab hosts: one registry host, N data-service hosts, client
//! hosts that each mount the volume, and optionally the gateway host that every client's
//! data traffic goes through (the single-entry-point baseline).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use shoal_client::RegistryClient;
use shoal_client::proto as pb;
use shoal_testkit::{is_fuse_mounted, wait_for};

use super::lab::{Host, HostProcess};
use crate::cleanup;

const REGISTRY_PORT: u16 = 7100;
const DATA_PORT: u16 = 7200;
const GATEWAY_PORT: u16 = 7400;
/// Bound on every start-up wait (registry election, data services registering, mounts).
const START_TIMEOUT: Duration = Duration::from_secs(60);

pub struct ClientMount {
    pub dir: PathBuf,
    process: HostProcess,
}

impl Drop for ClientMount {
    fn drop(&mut self) {
        if is_fuse_mounted(&self.dir) {
            let _ = std::process::Command::new("umount").arg("-l").arg(&self.dir).status();
        }
        self.process.stop();
        cleanup::forget_mount(&self.dir);
    }
}

/// Where each part of the cluster runs.
pub struct Placement<'a> {
    pub registry: &'a Host,
    pub data: &'a [Host],
    pub gateway: Option<&'a Host>,
    pub clients: &'a [Host],
}

pub struct VirtualCluster {
    /// Dropped first: mounts before the services they use.
    pub mounts: Vec<ClientMount>,
    gateway: Option<HostProcess>,
    data: Vec<HostProcess>,
    registry: HostProcess,
    root: PathBuf,
}

impl VirtualCluster {
    /// Starts every part under `root` (made fresh), creates `volume` with one copy (the
    /// benchmark measures bandwidth, not replication) and mounts it on every client host.
    pub async fn start(binary: &Path, root: &Path, placement: &Placement<'_>, volume: &str) -> anyhow::Result<Self> {
        std::fs::create_dir_all(root)?;
        cleanup::directory(root.to_path_buf());
        let registry_address = placement.registry.address(REGISTRY_PORT);
        let registry = HostProcess::start(
            placement.registry,
            "registry",
            binary,
            &[
                "registry".into(),
                "--id=1".into(),
                format!("--listen={registry_address}"),
                format!("--data={}", root.join("registry").display()),
                "--init".into(),
                format!("--peer=1={registry_address}"),
            ],
            &root.join("registry.log"),
        )?;
        let mut cluster = VirtualCluster {
            mounts: Vec::new(),
            gateway: None,
            data: Vec::new(),
            registry,
            root: root.to_path_buf(),
        };
        for host in placement.data {
            let disk = root.join(&host.name);
            std::fs::create_dir_all(&disk)?;
            cluster.data.push(HostProcess::start(
                host,
                &host.name,
                binary,
                &[
                    "data".into(),
                    format!("--listen={}", host.address(DATA_PORT)),
                    format!("--registry={registry_address}"),
                    format!("--disk={}", disk.display()),
                    format!("--zone={}", host.name),
                ],
                &root.join(format!("{}.log", host.name)),
            )?);
        }
        let client = RegistryClient::new([registry_address.clone()])?;
        let wanted = placement.data.len();
        wait_for(&format!("{wanted} data services to register"), START_TIMEOUT, || {
            let client = client.clone();
            async move {
                let reply = client.list_data_services(pb::Empty {}).await.ok()?;
                let up = reply
                    .data_services
                    .iter()
                    .filter(|service| service.state() == pb::DataServiceState::Up)
                    .count();
                (up >= wanted).then_some(())
            }
        })
        .await
        .with_context(|| cluster.logs())?;
        client
            .create_volume(pb::CreateVolumeRequest {
                name: volume.into(),
                replicas: 1,
                root_mode: 0o777,
                ..Default::default()
            })
            .await
            .with_context(|| format!("creating volume {volume}"))?;

        let mut options = Vec::new();
        if let Some(host) = placement.gateway {
            let address = host.address(GATEWAY_PORT);
            cluster.gateway = Some(HostProcess::start(
                host,
                "gateway",
                binary,
                &[
                    "gateway".into(),
                    format!("--listen={address}"),
                    format!("--registry={registry_address}"),
                ],
                &root.join("gateway.log"),
            )?);
            wait_for("the gateway to listen", START_TIMEOUT, || {
                let up = std::net::TcpStream::connect(&address).is_ok();
                async move { up.then_some(()) }
            })
            .await
            .with_context(|| cluster.logs())?;
            options.push(format!("gateway={address}"));
        }
        for host in placement.clients {
            let dir = root.join(format!("{}-mnt", host.name));
            std::fs::create_dir_all(&dir)?;
            let mut args = vec![
                "mount".to_string(),
                volume.to_string(),
                dir.display().to_string(),
                "--foreground".into(),
                format!("--registry={registry_address}"),
            ];
            for option in &options {
                args.extend(["-o".to_string(), option.clone()]);
            }
            cleanup::mount(dir.clone());
            let process = HostProcess::start(
                host,
                &format!("mount-{}", host.name),
                binary,
                &args,
                &root.join(format!("{}-mount.log", host.name)),
            )?;
            cluster.mounts.push(ClientMount {
                dir: dir.clone(),
                process,
            });
            wait_for(&format!("the mount on {}", host.name), START_TIMEOUT, || {
                let mounted = is_fuse_mounted(&dir);
                async move { mounted.then_some(()) }
            })
            .await
            .with_context(|| cluster.logs())?;
        }
        Ok(cluster)
    }

    /// The last lines of every log, for an error report.
    pub fn logs(&self) -> String {
        super::lab::log_tails(&self.root, 20)
    }

    /// Unmounts, stops every process (mounts, gateway, data services, registry) and removes
    /// the cluster's files.
    pub fn stop(mut self) {
        self.mounts.clear();
        if let Some(mut gateway) = self.gateway.take() {
            gateway.stop();
        }
        for service in &mut self.data {
            service.stop();
        }
        self.registry.stop();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}
