//! Serving the driver on kubelet's unix socket: Identity and Controller for the controller
//! role, Identity and Node for the node role.

use std::path::PathBuf;
use std::sync::Arc;

use shoal_client::RegistryClient;
use shoal_proto::csi::controller_server::ControllerServer;
use shoal_proto::csi::identity_server::IdentityServer;
use shoal_proto::csi::node_server::NodeServer;

use crate::controller::ControllerService;
use crate::identity::IdentityService;
use crate::node::{NodeConfig, NodeService};

/// Which services a plugin process serves.
pub enum Role {
    Controller,
    Node(NodeConfig),
}

/// Serves `role` on the unix socket `socket` until `stop` resolves.
pub async fn serve(
    socket: PathBuf,
    registry: RegistryClient,
    role: Role,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let listener = shoal_client::unix::bind_private(&socket)?;
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
    let agent_socket = match &role {
        Role::Node(config) => Some(config.agent_socket.clone()),
        Role::Controller => None,
    };
    let identity = IdentityServer::new(IdentityService {
        registry: registry.clone(),
        agent_socket,
    });
    let router = tonic::transport::Server::builder().add_service(identity);
    let router = match role {
        Role::Controller => {
            tracing::info!(socket = %socket.display(), "CSI controller serving");
            router.add_service(ControllerServer::from_arc(Arc::new(ControllerService { registry })))
        }
        Role::Node(config) => {
            tracing::info!(socket = %socket.display(), node = %config.node_id, "CSI node plugin serving");
            router.add_service(NodeServer::new(NodeService::new(config)))
        }
    };
    router.serve_with_incoming_shutdown(incoming, stop).await?;
    let _ = std::fs::remove_file(&socket);
    Ok(())
}
