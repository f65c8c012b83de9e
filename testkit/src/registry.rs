//! A registry cluster of real `shoal registry` processes on loopback.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use shoal_client::{RegistryClient, proto};

use crate::{Process, free_port, wait_for};

pub struct RegistryNode {
    pub id: u64,
    pub address: String,
    pub data_dir: PathBuf,
    pub process: Option<Process>,
    args: Vec<String>,
}

impl RegistryNode {
    /// A client that talks to this node only and reads its local state.
    pub fn local_client(&self) -> RegistryClient {
        RegistryClient::new([self.address.clone()])
            .expect("valid address")
            .with_deadline(Duration::from_secs(2))
            .with_local_reads()
    }

    /// This node's own status (possibly stale), or None if it does not answer.
    pub async fn local_status(&self) -> Option<proto::StatusReply> {
        self.local_client().status(proto::Empty {}).await.ok()
    }
}

/// Registry nodes started with `--init` and the same peer list, in one temporary directory.
pub struct RegistryCluster {
    binary: PathBuf,
    root: PathBuf,
    _temp: Option<tempfile::TempDir>,
    pub nodes: BTreeMap<u64, RegistryNode>,
}

impl RegistryCluster {
    /// Starts `size` nodes (ids 1..=size) under a new temporary directory and waits for a
    /// leader. `extra_args` go to every node.
    pub async fn start(binary: &Path, size: u64, extra_args: &[&str]) -> anyhow::Result<RegistryCluster> {
        let temp = tempfile::Builder::new().prefix("shoal-registry-").tempdir()?;
        let root = temp.path().to_path_buf();
        let mut cluster = RegistryCluster::prepare(binary, &root, size, extra_args)?;
        cluster._temp = Some(temp);
        for id in 1..=size {
            cluster.start_node(id)?;
        }
        cluster.wait_for_leader(Duration::from_secs(30)).await?;
        Ok(cluster)
    }

    /// Lays out `size` nodes under `root` without starting them.
    pub fn prepare(binary: &Path, root: &Path, size: u64, extra_args: &[&str]) -> anyhow::Result<RegistryCluster> {
        let mut addresses = BTreeMap::new();
        for id in 1..=size {
            addresses.insert(id, format!("127.0.0.1:{}", free_port()?));
        }
        let peers: Vec<String> = addresses
            .iter()
            .map(|(id, address)| format!("--peer={id}={address}"))
            .collect();
        let mut nodes = BTreeMap::new();
        for (id, address) in &addresses {
            let data_dir = root.join(format!("registry-{id}"));
            let mut args = vec![
                "registry".to_string(),
                format!("--id={id}"),
                format!("--listen={address}"),
                format!("--data={}", data_dir.display()),
                "--init".to_string(),
            ];
            args.extend(peers.iter().cloned());
            args.extend(extra_args.iter().map(|a| a.to_string()));
            nodes.insert(
                *id,
                RegistryNode {
                    id: *id,
                    address: address.clone(),
                    data_dir,
                    process: None,
                    args,
                },
            );
        }
        Ok(RegistryCluster {
            binary: binary.to_path_buf(),
            root: root.to_path_buf(),
            _temp: None,
            nodes,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Starts (or restarts) node `id` with its original arguments and data directory.
    pub fn start_node(&mut self, id: u64) -> anyhow::Result<()> {
        let node = self
            .nodes
            .get_mut(&id)
            .ok_or_else(|| anyhow::anyhow!("no registry node {id}"))?;
        if let Some(process) = &mut node.process {
            anyhow::ensure!(!process.is_running(), "registry node {id} is already running");
        }
        let log = self.root.join(format!("registry-{id}.log"));
        node.process = Some(Process::spawn(
            &format!("registry-{id}"),
            &self.binary,
            &node.args,
            &log,
        )?);
        Ok(())
    }

    /// SIGKILL of node `id`.
    pub fn kill_node(&mut self, id: u64) {
        if let Some(process) = self.nodes.get_mut(&id).and_then(|n| n.process.as_mut()) {
            process.kill();
        }
    }

    pub fn node(&self, id: u64) -> &RegistryNode {
        &self.nodes[&id]
    }

    pub fn addresses(&self) -> Vec<String> {
        self.nodes.values().map(|n| n.address.clone()).collect()
    }

    pub fn registry_arg(&self) -> String {
        self.addresses().join(",")
    }

    pub fn client(&self) -> RegistryClient {
        RegistryClient::new(self.addresses()).expect("valid addresses")
    }

    /// Waits until a running node reports a leader, and returns its id.
    pub async fn wait_for_leader(&self, timeout: Duration) -> anyhow::Result<u64> {
        self.wait_for_new_leader(None, timeout).await.map(|(id, _)| id)
    }

    /// Waits until a running node other than `excluded` reports a leader that is not
    /// `excluded`, and returns it with the time it took.
    pub async fn wait_for_new_leader(
        &self,
        excluded: Option<u64>,
        timeout: Duration,
    ) -> anyhow::Result<(u64, Duration)> {
        let started = Instant::now();
        let leader = wait_for("a registry leader", timeout, || async {
            for node in self.nodes.values() {
                if Some(node.id) == excluded {
                    continue;
                }
                let Some(status) = node.local_status().await else {
                    continue;
                };
                let Some(leader) = status.leader_id else { continue };
                if Some(leader) != excluded && status.node_id == leader {
                    return Some(leader);
                }
            }
            None
        })
        .await?;
        Ok((leader, started.elapsed()))
    }

    /// Stops every node gracefully (SIGTERM, then SIGKILL after `grace`).
    pub fn stop_all(&mut self, grace: Duration) {
        for node in self.nodes.values_mut() {
            if let Some(process) = &mut node.process {
                process.terminate(grace);
            }
        }
    }

    /// Ends a test: on failure, prints every node's log and panics (dropping the cluster
    /// kills its nodes); on success, stops every node gracefully.
    pub fn finish<T>(mut self, result: anyhow::Result<T>) -> T {
        match result {
            Ok(value) => {
                self.stop_all(Duration::from_secs(5));
                value
            }
            Err(error) => {
                eprintln!("{}", self.logs());
                panic!("{error:#}");
            }
        }
    }

    /// Every node's log, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for node in self.nodes.values() {
            let log = std::fs::read_to_string(self.root.join(format!("registry-{}.log", node.id))).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            out.push_str(&format!("---- registry-{} (last 40 lines)\n", node.id));
            for line in tail.into_iter().rev() {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }
}
