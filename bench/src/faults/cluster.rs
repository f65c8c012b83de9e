//! The cluster the faults are injected into: three registry nodes, four data services and
//! two mounts, each on its own lab host (a network namespace on one bridge), so that any
//! of them can be SIGKILLed, paused, restarted or cut off the network.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use shoal_client::RegistryClient;
use shoal_client::proto as pb;
use shoal_testkit::{is_fuse_mounted, wait_for};

use crate::cleanup;
use crate::scale_out::lab::{Host, HostProcess, Lab};

const REGISTRY_PORT: u16 = 7100;
const DATA_PORT: u16 = 7200;
pub const REGISTRY_NODES: usize = 3;
pub const DATA_SERVICES: usize = 4;
pub const MOUNTS: usize = 2;
pub const REPLICAS: u32 = 3;
/// A data service silent this long leaves its chains (faults are made to outlast it).
pub const LEASE_MS: u64 = 2000;
/// How long a mount retries before an operation fails with EIO.
pub const MOUNT_RETRY_SECONDS: u64 = 8;
/// Bound on every start-up and recovery wait.
pub const RECOVERY_TIMEOUT: Duration = Duration::from_secs(90);
pub const VOLUME: &str = "faults";

/// One role on one host: how to (re)start it, and its process while it runs.
pub struct Node {
    pub host: Host,
    args: Vec<String>,
    log: PathBuf,
    pub process: Option<HostProcess>,
    /// Paused with SIGSTOP.
    pub paused: bool,
}

impl Node {
    fn start(&mut self, binary: &Path) -> anyhow::Result<()> {
        assert!(self.process.is_none(), "{} is running already", self.host.name);
        self.process = Some(HostProcess::start(
            &self.host,
            &self.host.name,
            binary,
            &self.args,
            &self.log,
        )?);
        Ok(())
    }

    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
        self.paused = false;
    }

    pub fn pause(&mut self, paused: bool) -> anyhow::Result<()> {
        if let Some(process) = &self.process {
            process.pause(paused)?;
            self.paused = paused;
        }
        Ok(())
    }
}

pub struct FaultCluster {
    pub lab: Lab,
    pub registry: Vec<Node>,
    pub data: Vec<Node>,
    pub mounts: Vec<Node>,
    /// Mount directories, by mount index.
    pub mount_dirs: Vec<PathBuf>,
    /// Hosts cut off the network now.
    pub cut: Vec<Host>,
    pub client: RegistryClient,
    binary: PathBuf,
    root: PathBuf,
}

/// The registry nodes (not started) and their addresses.
fn registry_nodes(lab: &mut Lab, root: &Path) -> anyhow::Result<(Vec<Node>, Vec<String>)> {
    let hosts = (1..=REGISTRY_NODES)
        .map(|i| lab.add_host(&format!("reg{i}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let peers: Vec<String> = hosts
        .iter()
        .enumerate()
        .map(|(i, host)| format!("--peer={}={}", i + 1, host.address(REGISTRY_PORT)))
        .collect();
    let addresses = hosts.iter().map(|h| h.address(REGISTRY_PORT)).collect();
    let nodes = hosts
        .into_iter()
        .enumerate()
        .map(|(i, host)| {
            let mut args = vec![
                "registry".to_string(),
                format!("--id={}", i + 1),
                format!("--listen={}", host.address(REGISTRY_PORT)),
                format!("--data={}", root.join(&host.name).display()),
                "--init".into(),
                format!("--data-service-lease-ms={LEASE_MS}"),
            ];
            args.extend(peers.iter().cloned());
            node(host, args, root)
        })
        .collect();
    Ok((nodes, addresses))
}

fn node(host: Host, args: Vec<String>, root: &Path) -> Node {
    let log = root.join(format!("{}.log", host.name));
    Node {
        host,
        args,
        log,
        process: None,
        paused: false,
    }
}

impl FaultCluster {
    pub async fn start(binary: &Path, root: &Path) -> anyhow::Result<FaultCluster> {
        std::fs::create_dir_all(root)?;
        cleanup::directory(root.to_path_buf());
        let mut lab = Lab::create(None)?;
        let (registry, registry_addresses) = registry_nodes(&mut lab, root)?;
        let registry_arg = format!("--registry={}", registry_addresses.join(","));
        let mut data = Vec::new();
        for i in 1..=DATA_SERVICES {
            let host = lab.add_host(&format!("data{i}"))?;
            let args = vec![
                "data".to_string(),
                format!("--listen={}", host.address(DATA_PORT)),
                registry_arg.clone(),
                format!("--disk={}", root.join(&host.name).display()),
                format!("--zone={}", host.name),
                "--heartbeat-interval-ms=300".into(),
            ];
            data.push(node(host, args, root));
        }
        let mut mounts = Vec::new();
        let mut mount_dirs = Vec::new();
        for i in 1..=MOUNTS {
            let host = lab.add_host(&format!("web{i}"))?;
            let dir = root.join(format!("mnt{i}"));
            std::fs::create_dir_all(&dir)?;
            let args = vec![
                "mount".to_string(),
                VOLUME.into(),
                dir.display().to_string(),
                "--foreground".into(),
                registry_arg.clone(),
                "-o".into(),
                format!("retry_timeout={MOUNT_RETRY_SECONDS}"),
            ];
            mounts.push(node(host, args, root));
            mount_dirs.push(dir);
        }
        let mut cluster = FaultCluster {
            lab,
            registry,
            data,
            mounts,
            mount_dirs,
            cut: Vec::new(),
            client: RegistryClient::new(registry_addresses)?,
            binary: binary.to_path_buf(),
            root: root.to_path_buf(),
        };
        cluster.start_all().await?;
        Ok(cluster)
    }

    /// Starts the registry and the data services, creates the volume, mounts it.
    async fn start_all(&mut self) -> anyhow::Result<()> {
        for index in 0..REGISTRY_NODES {
            self.restart_registry(index)?;
        }
        for index in 0..DATA_SERVICES {
            self.restart_data(index)?;
        }
        self.wait_for_data_services().await.with_context(|| self.logs())?;
        self.client
            .create_volume(pb::CreateVolumeRequest {
                name: VOLUME.into(),
                replicas: REPLICAS,
                chunk_size_bytes: 1 << 20,
                root_mode: 0o777,
                ..Default::default()
            })
            .await
            .context("creating the volume")?;
        for index in 0..MOUNTS {
            self.start_mount(index).await?;
        }
        Ok(())
    }

    async fn wait_for_data_services(&self) -> anyhow::Result<()> {
        let client = self.client.clone();
        wait_for("every data service to register", RECOVERY_TIMEOUT, || {
            let client = client.clone();
            async move {
                let status = client.status(pb::Empty {}).await.ok()?;
                let up = status
                    .data_services
                    .iter()
                    .filter(|s| s.state == pb::DataServiceState::Up as i32)
                    .count();
                (up >= DATA_SERVICES && status.chain_count > 0).then_some(())
            }
        })
        .await
    }

    /// (Re)starts mount `index`, once its directory is no longer mounted.
    pub async fn start_mount(&mut self, index: usize) -> anyhow::Result<()> {
        let dir = self.mount_dirs[index].clone();
        // A killed daemon's mount is released by its auto-unmount helper; do it by hand
        // if that is slow.
        let released = wait_for("the old mount to go away", Duration::from_secs(5), || {
            let mounted = is_fuse_mounted(&dir);
            async move { (!mounted).then_some(()) }
        })
        .await;
        if released.is_err() {
            let _ = std::process::Command::new("umount").arg("-l").arg(&dir).status();
        }
        cleanup::mount(dir.clone());
        self.mounts[index].start(&self.binary)?;
        wait_for("the mount", RECOVERY_TIMEOUT, || {
            let mounted = is_fuse_mounted(&dir);
            async move { mounted.then_some(()) }
        })
        .await
        .with_context(|| self.logs())
    }

    pub fn restart_registry(&mut self, index: usize) -> anyhow::Result<()> {
        self.registry[index].start(&self.binary)
    }

    pub fn restart_data(&mut self, index: usize) -> anyhow::Result<()> {
        self.data[index].start(&self.binary)
    }

    /// Cuts `host` off (`connected` false) or joins it again.
    pub fn connect(&mut self, host: &Host, connected: bool) -> anyhow::Result<()> {
        self.lab.connect(host, connected)?;
        if connected {
            self.cut.retain(|h| h.name != host.name);
        } else {
            self.cut.push(host.clone());
        }
        Ok(())
    }

    /// The registry node that leads now, by index.
    pub async fn leader(&self) -> Option<usize> {
        let status = self.client.status(pb::Empty {}).await.ok()?;
        status.leader_id.map(|id| id as usize - 1)
    }

    /// Undoes every fault still on: reconnects hosts, resumes paused processes, restarts
    /// what is not running.
    pub async fn heal(&mut self) -> anyhow::Result<()> {
        for host in self.cut.clone() {
            self.connect(&host, true)?;
        }
        for index in 0..REGISTRY_NODES {
            self.registry[index].pause(false)?;
            if self.registry[index].process.as_mut().is_none_or(|p| !p.is_running()) {
                self.registry[index].process = None;
                self.restart_registry(index)?;
            }
        }
        for index in 0..DATA_SERVICES {
            self.data[index].pause(false)?;
            if self.data[index].process.as_mut().is_none_or(|p| !p.is_running()) {
                self.data[index].process = None;
                self.restart_data(index)?;
            }
        }
        for index in 0..MOUNTS {
            if self.mounts[index].process.as_mut().is_none_or(|p| !p.is_running()) {
                self.mounts[index].process = None;
                self.start_mount(index).await?;
            }
        }
        Ok(())
    }

    /// Why the cluster is not back to full health yet, if it is not: a leader, every data
    /// service up and heartbeating, every mount in place, and (`complete`) every chain with
    /// all its copies serving (refills done).
    pub async fn unhealthy(&self, complete: bool) -> Option<String> {
        let status = match self.client.status(pb::Empty {}).await {
            Ok(status) => status,
            Err(error) => return Some(format!("registry: {error}")),
        };
        if status.leader_id.is_none() {
            return Some("no registry leader".into());
        }
        for service in &status.data_services {
            let fresh = service.last_heartbeat_age_ms.is_some_and(|age| age < 1500);
            if service.state != pb::DataServiceState::Up as i32 || !fresh {
                return Some(format!("data service {} is not up", service.id));
            }
        }
        if let Some(dir) = self.mount_dirs.iter().find(|dir| !is_fuse_mounted(dir)) {
            return Some(format!("{} is not mounted", dir.display()));
        }
        if !complete {
            return None;
        }
        let table = match self.client.get_chain_table(pb::Empty {}).await {
            Ok(table) => table,
            Err(error) => return Some(format!("chain table: {error}")),
        };
        table
            .chains
            .iter()
            .filter(|c| c.replicas == REPLICAS)
            .find(|c| {
                c.targets.len() != REPLICAS as usize || !c.targets.iter().all(|t| t.serving) || !c.missing.is_empty()
            })
            .map(|chain| format!("chain {} is not complete: {chain:?}", chain.id))
    }

    /// Waits until [`FaultCluster::unhealthy`] finds nothing.
    pub async fn wait_healthy(&self, complete: bool) -> anyhow::Result<()> {
        let started = std::time::Instant::now();
        // Bounded by the recovery timeout.
        loop {
            let Some(reason) = self.unhealthy(complete).await else {
                return Ok(());
            };
            if started.elapsed() > RECOVERY_TIMEOUT {
                anyhow::bail!("the cluster did not recover within {RECOVERY_TIMEOUT:?}: {reason}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The last lines of every log, for an error report.
    pub fn logs(&self) -> String {
        crate::scale_out::lab::log_tails(&self.root, 20)
    }

    /// Unmounts and stops everything, and removes the cluster's files.
    pub fn stop(mut self) {
        for host in self.cut.clone() {
            let _ = self.connect(&host, true);
        }
        for node in self.mounts.iter_mut().chain(&mut self.data).chain(&mut self.registry) {
            let _ = node.pause(false);
        }
        for dir in &self.mount_dirs {
            if is_fuse_mounted(dir) {
                let _ = std::process::Command::new("umount").arg("-l").arg(dir).status();
            }
            cleanup::forget_mount(dir);
        }
        self.mounts.clear();
        self.data.clear();
        self.registry.clear();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}
