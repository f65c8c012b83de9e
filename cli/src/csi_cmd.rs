//! `shoal csi controller|node`: the Kubernetes CSI driver's two roles, served on kubelet's
//! unix socket (see `deploy/kubernetes/`).

use std::path::PathBuf;

use shoal_csi::node::NodeConfig;
use shoal_csi::server::Role;

use crate::RegistryAddress;
use crate::agent_cmd::DEFAULT_AGENT_SOCKET;

#[derive(clap::Args)]
pub struct CsiCommand {
    #[command(subcommand)]
    role: CsiRole,
}

#[derive(clap::Args)]
struct Common {
    /// The CSI endpoint kubelet and the sidecars use (unix:///path or a path).
    #[arg(long, env = "CSI_ENDPOINT", default_value = "unix:///csi/csi.sock")]
    endpoint: String,
    #[command(flatten)]
    registry: RegistryAddress,
}

#[derive(clap::Subcommand)]
enum CsiRole {
    /// Create, expand and delete volumes (beside the external-provisioner and -resizer).
    Controller(Common),
    /// Stage and publish volumes on this node (beside node-driver-registrar).
    Node {
        #[command(flatten)]
        common: Common,
        /// This node's name in Kubernetes (the downward API's spec.nodeName).
        #[arg(long, env = "NODE_ID")]
        node_id: String,
        /// kubelet's root directory: staging and target paths must be inside it.
        #[arg(long, default_value = "/var/lib/kubelet")]
        kubelet_dir: PathBuf,
        /// The socket of this node's `shoal agent`.
        #[arg(long, default_value = DEFAULT_AGENT_SOCKET)]
        agent_socket: PathBuf,
    },
}

impl CsiCommand {
    pub async fn run(self) -> anyhow::Result<()> {
        let (common, role) = match self.role {
            CsiRole::Controller(common) => (common, Role::Controller),
            CsiRole::Node {
                common,
                node_id,
                kubelet_dir,
                agent_socket,
            } => {
                anyhow::ensure!(!node_id.is_empty(), "--node-id (or NODE_ID) must name this node");
                anyhow::ensure!(kubelet_dir.is_absolute(), "--kubelet-dir must be an absolute path");
                let config = NodeConfig {
                    node_id,
                    kubelet_dir,
                    agent_socket,
                };
                (common, Role::Node(config))
            }
        };
        let socket = shoal_client::unix::endpoint_path(&common.endpoint).to_path_buf();
        shoal_csi::server::serve(socket, common.registry.client()?, role, crate::stop_signal()).await
    }
}
