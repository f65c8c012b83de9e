//! Data services as real `shoal data` processes, beside a registry cluster.

use std::path::{Path, PathBuf};
use std::time::Duration;

use shoal_client::proto as pb;

use crate::{Process, RegistryCluster, free_port, wait_for};

pub struct DataServiceProcess {
    pub index: usize,
    pub address: String,
    pub disks: Vec<PathBuf>,
    pub process: Option<Process>,
    log: PathBuf,
}

impl DataServiceProcess {
    /// The data service's id in the registry (by address), once registered.
    pub async fn id(&self, cluster: &RegistryCluster) -> Option<u64> {
        let status = cluster.client().status(pb::Empty {}).await.ok()?;
        status
            .data_services
            .iter()
            .find(|s| s.address == self.address)
            .map(|s| s.id)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// A registry cluster and data services, all in one temporary directory.
pub struct ShoalCluster {
    pub registry: RegistryCluster,
    pub data: Vec<DataServiceProcess>,
    binary: PathBuf,
}

impl ShoalCluster {
    /// Starts `registry_nodes` registry nodes (with `registry_args`) and `data_services`
    /// data services, and waits until every data service is up and chains exist.
    pub async fn start(
        binary: &Path,
        registry_nodes: u64,
        data_services: usize,
        registry_args: &[&str],
    ) -> anyhow::Result<ShoalCluster> {
        let registry = RegistryCluster::start(binary, registry_nodes, registry_args).await?;
        let mut cluster = ShoalCluster {
            registry,
            data: Vec::new(),
            binary: binary.to_path_buf(),
        };
        for _ in 0..data_services {
            let disk = cluster.registry.root().join(format!("data-{}", cluster.data.len() + 1));
            cluster.add_data_service(vec![disk])?;
        }
        if let Err(error) = cluster.wait_for_data_services(Duration::from_secs(60)).await {
            let logs = cluster.logs();
            cluster.stop_all();
            anyhow::bail!("{error:#}\n{logs}");
        }
        Ok(cluster)
    }

    /// Data services beside an already running registry cluster (none started yet).
    pub fn from_registry(binary: &Path, registry: RegistryCluster) -> ShoalCluster {
        ShoalCluster {
            registry,
            data: Vec::new(),
            binary: binary.to_path_buf(),
        }
    }

    /// Starts another data service on `disks`.
    pub fn add_data_service(&mut self, disks: Vec<PathBuf>) -> anyhow::Result<usize> {
        let index = self.data.len();
        let address = format!("127.0.0.1:{}", free_port()?);
        let log = self.registry.root().join(format!("data-{}.log", index + 1));
        let mut service = DataServiceProcess {
            index,
            address,
            disks,
            process: None,
            log,
        };
        service.process = Some(self.spawn(&service)?);
        self.data.push(service);
        Ok(index)
    }

    fn spawn(&self, service: &DataServiceProcess) -> anyhow::Result<Process> {
        let mut args = vec![
            "data".to_string(),
            format!("--listen={}", service.address),
            format!("--registry={}", self.registry.registry_arg()),
            format!("--zone=zone-{}", service.index + 1),
            "--heartbeat-interval-ms=300".to_string(),
        ];
        args.extend(service.disks.iter().map(|d| format!("--disk={}", d.display())));
        Process::spawn(
            &format!("data-{}", service.index + 1),
            &self.binary,
            &args,
            &service.log,
        )
    }

    pub fn kill_data_service(&mut self, index: usize) {
        if let Some(process) = self.data[index].process.as_mut() {
            process.kill();
        }
    }

    pub fn restart_data_service(&mut self, index: usize) -> anyhow::Result<()> {
        let process = self.spawn(&self.data[index])?;
        self.data[index].process = Some(process);
        Ok(())
    }

    /// Waits until every running data service is registered, up and heartbeating, and the
    /// chain table has chains.
    pub async fn wait_for_data_services(&self, timeout: Duration) -> anyhow::Result<()> {
        let wanted: Vec<String> = self
            .data
            .iter()
            .filter(|d| d.process.is_some())
            .map(|d| d.address.clone())
            .collect();
        let client = self.registry.client();
        wait_for("data services to come up", timeout, || async {
            let status = client.status(pb::Empty {}).await.ok()?;
            let all_up = wanted.iter().all(|address| {
                status.data_services.iter().any(|s| {
                    &s.address == address
                        && s.state == pb::DataServiceState::Up as i32
                        && s.last_heartbeat_age_ms.is_some_and(|age| age < 2_000)
                })
            });
            (all_up && status.chain_count > 0).then_some(())
        })
        .await
    }

    pub fn logs(&self) -> String {
        let mut out = self.registry.logs();
        for service in &self.data {
            let log = service.log();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            out.push_str(&format!("---- data-{} (last 30 lines)\n", service.index + 1));
            for line in tail.into_iter().rev() {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    pub fn stop_all(&mut self) {
        for service in &mut self.data {
            if let Some(process) = service.process.as_mut() {
                process.terminate(Duration::from_secs(5));
            }
        }
        self.registry.stop_all(Duration::from_secs(5));
    }
}
