//! Starting one data service: open the disks, register with the registry, serve.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use shoal_client::RegistryClient;
use shoal_proto::data::data_service_server::DataServiceServer;
use shoal_proto::registry as registry_pb;
use tonic::transport::Server;

use crate::background;
use crate::frames;
use crate::node::DataNode;
use crate::service::DataServiceApi;
use crate::store::ChunkStore;

#[derive(Clone, Debug)]
pub struct DataServiceOptions {
    pub listen: SocketAddr,
    /// Address clients and peers use (default: the bound listen address).
    pub advertise: Option<String>,
    pub registry: Vec<String>,
    pub disks: Vec<PathBuf>,
    pub zone: String,
    pub heartbeat_interval: Duration,
}

/// How long a starting data service keeps trying to register.
const REGISTER_DEADLINE: Duration = Duration::from_secs(600);

pub struct RunningDataService {
    pub id: u64,
    pub local_address: SocketAddr,
    pub node: Arc<DataNode>,
    disks: Vec<PathBuf>,
    server: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    stop: tokio::sync::watch::Sender<bool>,
}

/// Most chunks synced in one round of a clean stop (the loop ends when none is left).
const STOP_SYNC_ROUND: usize = 4096;

impl RunningDataService {
    /// Stops serving, syncs every changed chunk, and records a clean stop (so the next
    /// start, even after a reboot, knows nothing unsynced was lost).
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        match tokio::time::timeout(Duration::from_secs(10), self.server).await {
            Ok(joined) => joined??,
            Err(_) => {
                tracing::warn!("data service did not stop within 10 s; not marking the stop clean");
                return Ok(());
            }
        }
        // Bounded: each round syncs (and forgets) the chunks it lists; writes have stopped.
        for _round in 0..1000 {
            let chunks = self
                .node
                .blocking(|store| store.unsynced_chunks(STOP_SYNC_ROUND))
                .await?;
            if chunks.is_empty() {
                break;
            }
            self.node.sync_chunks(&chunks).await?;
        }
        self.node.blocking(|store| store.sync_wal()).await?;
        let disks = self.disks.clone();
        tokio::task::spawn_blocking(move || crate::run_state::end_cleanly(&disks)).await??;
        Ok(())
    }
}

pub async fn start(options: DataServiceOptions) -> anyhow::Result<RunningDataService> {
    let disks = options.disks.clone();
    let (uuid, store, after_power_loss) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let uuid = crate::identity::load_or_create(&disks)?;
        let after_power_loss = crate::run_state::begin(&disks)?;
        Ok((uuid, ChunkStore::open(&disks)?, after_power_loss))
    })
    .await??;
    let recovered = store.recovered();
    if !recovered.is_empty() {
        tracing::warn!(
            ?recovered,
            "the last run did not finish some chunk changes; recovered them"
        );
    }
    if after_power_loss {
        tracing::warn!(
            "the last run stopped uncleanly and the machine has booted since: unsynced writes may be lost; rejoining chains as a suspect"
        );
    }
    let store = Arc::new(store);
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .with_context(|| format!("cannot listen on {}", options.listen))?;
    let local_address = listener.local_addr()?;
    let advertise = match options.advertise.clone() {
        Some(address) => address,
        None if local_address.ip().is_unspecified() => {
            anyhow::bail!(
                "--listen {} is not reachable as such; give --advertise HOST:PORT",
                options.listen
            )
        }
        None => local_address.to_string(),
    };
    let registry = RegistryClient::new(options.registry.clone())?;
    let id = register(&registry, &uuid, &advertise, &options.zone, &store, after_power_loss).await?;
    tracing::info!(id, %uuid, %advertise, "registered with the registry");
    let node = Arc::new(DataNode::new(id, store, registry));
    if let Err(error) = node.chains.refresh().await {
        tracing::warn!(%error, "cannot fetch the chain table yet; will retry");
    }

    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(background::heartbeat_loop(
        node.clone(),
        options.heartbeat_interval,
        stopped.clone(),
    ));
    tokio::spawn(background::maintenance_loop(node.clone(), stopped.clone()));
    tokio::spawn(background::orphan_sweep_loop(node.clone(), stopped.clone()));
    // One port, two transports: framed chunk calls are served by `frames`, HTTP/2 goes on
    // to tonic.
    let (grpc_connections, incoming) = tokio::sync::mpsc::channel(frames::GRPC_BACKLOG);
    tokio::spawn(frames::accept_loop(
        listener,
        node.clone(),
        grpc_connections,
        stopped.clone(),
    ));
    let incoming = tokio_stream::wrappers::ReceiverStream::new(incoming);
    let service = DataServiceServer::new(DataServiceApi::new(node.clone()))
        .max_decoding_message_size(shoal_proto::MAX_MESSAGE_SIZE_BYTES)
        .max_encoding_message_size(shoal_proto::MAX_MESSAGE_SIZE_BYTES);
    let mut shutdown = stopped;
    let server = tokio::spawn(
        Server::builder()
            .initial_stream_window_size(shoal_proto::DATA_STREAM_WINDOW_BYTES)
            .initial_connection_window_size(shoal_proto::DATA_CONNECTION_WINDOW_BYTES)
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = shutdown.changed().await;
            }),
    );
    Ok(RunningDataService {
        id,
        local_address,
        node,
        disks: options.disks,
        server,
        stop,
    })
}

async fn register(
    registry: &RegistryClient,
    uuid: &str,
    advertise: &str,
    zone: &str,
    store: &Arc<ChunkStore>,
    after_power_loss: bool,
) -> anyhow::Result<u64> {
    let started = Instant::now();
    loop {
        let disks = store
            .usage()
            .into_iter()
            .map(|d| registry_pb::Disk {
                path: d.path.display().to_string(),
                capacity_bytes: d.capacity_bytes,
                free_bytes: d.free_bytes,
                healthy: d.healthy,
            })
            .collect();
        let request = registry_pb::RegisterDataServiceRequest {
            uuid: uuid.to_string(),
            address: advertise.to_string(),
            zone: zone.to_string(),
            disks,
            after_power_loss,
        };
        match registry.register_data_service(request).await {
            Ok(reply) => return Ok(reply.id),
            Err(error @ shoal_client::ClientError::Fs(_)) => {
                anyhow::bail!("the registry refused this data service: {error}")
            }
            Err(error) if started.elapsed() < REGISTER_DEADLINE => {
                tracing::warn!(%error, "cannot register yet; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(error) => anyhow::bail!("could not register within {REGISTER_DEADLINE:?}: {error}"),
        }
    }
}
