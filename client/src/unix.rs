//! gRPC over unix sockets: how the CSI plugin is reached by kubelet and the sidecars, and
//! how the node plugin reaches `shoal agent`.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

/// Binds a unix socket only its owner (root, in a deployment) may use, replacing a stale
/// socket a previous run left. Refuses to replace anything that is not a socket.
pub fn bind_private(path: &Path) -> anyhow::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::FileTypeExt;
    if let Ok(metadata) = std::fs::symlink_metadata(path) {
        anyhow::ensure!(
            metadata.file_type().is_socket(),
            "{} exists and is not a socket; remove it or choose another path",
            path.display()
        );
        std::fs::remove_file(path)?;
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let listener = tokio::net::UnixListener::bind(path)
        .map_err(|error| anyhow::anyhow!("cannot listen on {}: {error}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// A channel to the gRPC server on the unix socket at `path`; connects lazily, so a server
/// that is not up yet (or restarts) is reached on a later call.
pub fn channel(path: &Path) -> Channel {
    let path = path.to_path_buf();
    Endpoint::from_static("http://[::1]:50051").connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
        let path = path.clone();
        async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?)) }
    }))
}

/// The socket path in a CSI endpoint as kubelet and the sidecars write it: `unix:///csi/csi.sock`,
/// `unix:/csi/csi.sock` or a plain path.
pub fn endpoint_path(endpoint: &str) -> &Path {
    let path = endpoint
        .strip_prefix("unix://")
        .or_else(|| endpoint.strip_prefix("unix:"))
        .unwrap_or(endpoint);
    Path::new(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_name_their_socket() {
        assert_eq!(endpoint_path("unix:///csi/csi.sock"), Path::new("/csi/csi.sock"));
        assert_eq!(endpoint_path("unix:/csi/csi.sock"), Path::new("/csi/csi.sock"));
        assert_eq!(
            endpoint_path("/run/shoal/agent.sock"),
            Path::new("/run/shoal/agent.sock")
        );
    }
}
