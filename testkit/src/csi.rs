//! The CSI driver as a node runs it: `shoal agent`, `shoal csi node` and `shoal csi
//! controller` as separate processes on unix sockets, with a kubelet-like directory tree.
//! Tests call the sockets in the order kubelet and the external-provisioner do.
//!
//! Dropping a [`CsiNode`] detaches every mount under its kubelet directory (deepest first)
//! before its processes are killed, so a failing test leaves no mount behind.

use std::path::{Path, PathBuf};
use std::time::Duration;

use shoal_client::proto as registry_pb;
use shoal_client::unix::channel;
use shoal_proto::agent::agent_client::AgentClient;
use shoal_proto::csi;
use shoal_proto::csi::controller_client::ControllerClient;
use shoal_proto::csi::identity_client::IdentityClient;
use shoal_proto::csi::node_client::NodeClient;
use tonic::transport::Channel;

use crate::{Process, wait_for};

/// How long a plugin or the agent may take to answer on its socket after starting.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// The node id the node plugin is started with.
pub const NODE_ID: &str = "node-a";

pub struct CsiNode {
    pub root: PathBuf,
    pub kubelet_dir: PathBuf,
    pub agent_socket: PathBuf,
    pub node_socket: PathBuf,
    pub controller_socket: PathBuf,
    binary: PathBuf,
    registry_arg: String,
    agent_args: Vec<String>,
    pub agent: Option<Process>,
    pub node_plugin: Option<Process>,
    pub controller: Option<Process>,
}

impl CsiNode {
    /// Starts the agent (with `agent_args` beside its socket and registry), the node plugin
    /// and the controller under `root`, and waits until each answers.
    pub async fn start(binary: &Path, registry_arg: &str, root: &Path, agent_args: &[&str]) -> anyhow::Result<CsiNode> {
        let kubelet_dir = root.join("kubelet");
        std::fs::create_dir_all(kubelet_dir.join("plugins"))?;
        let mut node = CsiNode {
            root: root.to_path_buf(),
            agent_socket: root.join("agent.sock"),
            node_socket: kubelet_dir.join("plugins/csi.shoal.io/csi.sock"),
            controller_socket: root.join("controller/csi.sock"),
            kubelet_dir,
            binary: binary.to_path_buf(),
            registry_arg: registry_arg.to_string(),
            agent_args: agent_args.iter().map(|a| a.to_string()).collect(),
            agent: None,
            node_plugin: None,
            controller: None,
        };
        node.start_agent().await?;
        node.start_node_plugin().await?;
        let args = vec![
            "csi".to_string(),
            "controller".into(),
            format!("--endpoint=unix://{}", node.controller_socket.display()),
            format!("--registry={}", node.registry_arg),
        ];
        node.controller = Some(Process::spawn(
            "csi controller",
            &node.binary,
            &args,
            &node.root.join("controller.log"),
        )?);
        wait_answers(&node.controller_socket).await?;
        Ok(node)
    }

    pub async fn start_agent(&mut self) -> anyhow::Result<()> {
        let mut args = vec![
            "agent".to_string(),
            format!("--socket={}", self.agent_socket.display()),
            format!("--registry={}", self.registry_arg),
        ];
        args.extend(self.agent_args.iter().cloned());
        self.agent = Some(Process::spawn(
            "agent",
            &self.binary,
            &args,
            &self.root.join("agent.log"),
        )?);
        wait_for("the agent to answer", START_TIMEOUT, || async {
            self.agent_client()
                .status(shoal_proto::agent::StatusRequest {})
                .await
                .ok()
        })
        .await?;
        Ok(())
    }

    pub async fn start_node_plugin(&mut self) -> anyhow::Result<()> {
        let args = vec![
            "csi".to_string(),
            "node".into(),
            format!("--endpoint=unix://{}", self.node_socket.display()),
            format!("--registry={}", self.registry_arg),
            format!("--node-id={NODE_ID}"),
            format!("--kubelet-dir={}", self.kubelet_dir.display()),
            format!("--agent-socket={}", self.agent_socket.display()),
        ];
        self.node_plugin = Some(Process::spawn(
            "csi node",
            &self.binary,
            &args,
            &self.root.join("node.log"),
        )?);
        wait_answers(&self.node_socket).await
    }

    pub fn agent_client(&self) -> AgentClient<Channel> {
        AgentClient::new(channel(&self.agent_socket))
    }

    pub fn node(&self) -> NodeClient<Channel> {
        NodeClient::new(channel(&self.node_socket))
    }

    pub fn node_identity(&self) -> IdentityClient<Channel> {
        IdentityClient::new(channel(&self.node_socket))
    }

    pub fn controller(&self) -> ControllerClient<Channel> {
        ControllerClient::new(channel(&self.controller_socket))
    }

    pub fn controller_identity(&self) -> IdentityClient<Channel> {
        IdentityClient::new(channel(&self.controller_socket))
    }

    /// Where kubelet stages a volume (`plugins/kubernetes.io/csi/<driver>/<hash>/globalmount`).
    pub fn staging_path(&self, volume_id: &str) -> PathBuf {
        self.kubelet_dir
            .join("plugins/kubernetes.io/csi/csi.shoal.io")
            .join(volume_id)
            .join("globalmount")
    }

    /// Where kubelet publishes a volume into a pod (`pods/<uid>/volumes/kubernetes.io~csi/<pv>/mount`).
    pub fn target_path(&self, pod: &str, volume_id: &str) -> PathBuf {
        self.kubelet_dir
            .join("pods")
            .join(pod)
            .join("volumes/kubernetes.io~csi")
            .join(volume_id)
            .join("mount")
    }

    /// Every log, for a failing test's message.
    pub fn logs(&self) -> String {
        [&self.agent, &self.node_plugin, &self.controller]
            .into_iter()
            .flatten()
            .map(|process| format!("---- {}\n{}", process.name(), process.log()))
            .collect()
    }

    /// Detaches every mount under this node's root, deepest first.
    pub fn unmount_everything(&self) {
        let Ok(mounts) = shoal_client::mountinfo::mounts() else {
            return;
        };
        for mount in mounts.iter().rev().filter(|m| m.mount_point.starts_with(&self.root)) {
            let _ = nix::mount::umount2(&mount.mount_point, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

impl Drop for CsiNode {
    fn drop(&mut self) {
        self.unmount_everything();
    }
}

async fn wait_answers(socket: &Path) -> anyhow::Result<()> {
    let socket = socket.to_path_buf();
    wait_for(&format!("a CSI plugin on {}", socket.display()), START_TIMEOUT, || {
        let mut identity = IdentityClient::new(channel(&socket));
        async move { identity.get_plugin_info(csi::GetPluginInfoRequest {}).await.ok() }
    })
    .await?;
    Ok(())
}

/// A multi-node multi-writer file-system capability, as a ReadWriteMany claim asks.
pub fn rwx_capability() -> csi::VolumeCapability {
    capability(csi::volume_capability::access_mode::Mode::MultiNodeMultiWriter)
}

pub fn capability(mode: csi::volume_capability::access_mode::Mode) -> csi::VolumeCapability {
    csi::VolumeCapability {
        access_type: Some(csi::volume_capability::AccessType::Mount(
            csi::volume_capability::MountVolume::default(),
        )),
        access_mode: Some(csi::volume_capability::AccessMode { mode: mode as i32 }),
    }
}

/// The registry's record of a volume, for checks of what the controller made.
pub async fn registry_volume(
    client: &shoal_client::RegistryClient,
    name: &str,
) -> Result<registry_pb::Volume, shoal_client::ClientError> {
    client
        .get_volume(registry_pb::VolumeName { name: name.to_string() })
        .await
}
