//! The Identity service both roles serve: the driver's name and version, what it can do,
//! and whether it is ready (only while the registry, and on a node the agent, answer).

use std::path::PathBuf;
use std::time::Duration;

use shoal_client::RegistryClient;
use shoal_proto::csi;
use shoal_proto::csi::identity_server::Identity;
use shoal_proto::csi::plugin_capability::{self, service, volume_expansion};
use tonic::{Request, Response, Status};

/// How long a Probe waits for the registry (and agent) before it answers "not ready".
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

pub struct IdentityService {
    pub registry: RegistryClient,
    /// The node agent's socket, for the node role: a node without its agent cannot mount.
    pub agent_socket: Option<PathBuf>,
}

impl IdentityService {
    async fn ready(&self) -> Result<(), String> {
        let registry = self.registry.clone().with_deadline(PROBE_TIMEOUT);
        registry
            .list_data_services(shoal_proto::registry::Empty {})
            .await
            .map_err(|error| format!("the registry does not answer: {error}"))?;
        if let Some(socket) = &self.agent_socket {
            let mut agent = shoal_proto::agent::agent_client::AgentClient::new(shoal_client::unix::channel(socket));
            tokio::time::timeout(PROBE_TIMEOUT, agent.status(shoal_proto::agent::StatusRequest {}))
                .await
                .map_err(|_| format!("the agent at {} does not answer", socket.display()))?
                .map_err(|status| format!("the agent at {} does not answer: {status}", socket.display()))?;
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl Identity for IdentityService {
    async fn get_plugin_info(
        &self,
        _request: Request<csi::GetPluginInfoRequest>,
    ) -> Result<Response<csi::GetPluginInfoResponse>, Status> {
        Ok(Response::new(csi::GetPluginInfoResponse {
            name: crate::DRIVER_NAME.to_string(),
            vendor_version: env!("CARGO_PKG_VERSION").to_string(),
            manifest: [("csi-spec".to_string(), crate::CSI_SPEC_VERSION.to_string())].into(),
        }))
    }

    async fn get_plugin_capabilities(
        &self,
        _request: Request<csi::GetPluginCapabilitiesRequest>,
    ) -> Result<Response<csi::GetPluginCapabilitiesResponse>, Status> {
        let controller = plugin_capability::Type::Service(plugin_capability::Service {
            r#type: service::Type::ControllerService as i32,
        });
        let expansion = plugin_capability::Type::VolumeExpansion(plugin_capability::VolumeExpansion {
            r#type: volume_expansion::Type::Online as i32,
        });
        Ok(Response::new(csi::GetPluginCapabilitiesResponse {
            capabilities: [controller, expansion]
                .into_iter()
                .map(|t| csi::PluginCapability { r#type: Some(t) })
                .collect(),
        }))
    }

    async fn probe(&self, _request: Request<csi::ProbeRequest>) -> Result<Response<csi::ProbeResponse>, Status> {
        match self.ready().await {
            Ok(()) => Ok(Response::new(csi::ProbeResponse { ready: Some(true) })),
            Err(reason) => {
                tracing::warn!(%reason, "probe: not ready");
                Err(Status::failed_precondition(format!("not ready: {reason}")))
            }
        }
    }
}
