//! One registry node: opens its storage, starts Raft and the gRPC server, and joins or
//! initializes the cluster.

use std::collections::BTreeMap;
use std::fs;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use openraft::errors::{InitializeError, RaftError};
use openraft::impls::BasicNode;
use shoal_proto::MAX_MESSAGE_SIZE_BYTES;
use shoal_proto::registry::admin_server::AdminServer;
use shoal_proto::registry::namespace_server::NamespaceServer;
use shoal_proto::registry::raft_peer_server::RaftPeerServer;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

use crate::raft::log_store::LogStore;
use crate::raft::network::PeerNetwork;
use crate::raft::peer_service::PeerService;
use crate::raft::state_machine::{StateHandle, StateMachine};
use crate::raft::{NodeId, Raft, RaftTuning};
use crate::service::RegistryCore;
use crate::service::admin::AdminService;
use crate::service::namespace::NamespaceService;

/// How a node finds its cluster.
#[derive(Clone, Debug)]
pub enum Bootstrap {
    /// Start from what the data directory holds (and wait to be added, if it holds nothing).
    Resume,
    /// Form a new cluster with these members. Every initial member may be started with the
    /// same list; a node that is already part of a cluster ignores it.
    Initialize(BTreeMap<NodeId, String>),
    /// Ask the cluster reachable at these addresses to add this node.
    Join(Vec<String>),
}

#[derive(Clone, Debug)]
pub struct NodeOptions {
    pub node_id: NodeId,
    pub listen: SocketAddr,
    /// The address peers and clients use to reach this node.
    pub advertise: String,
    pub data_dir: PathBuf,
    pub bootstrap: Bootstrap,
    pub tuning: RaftTuning,
    /// A data service that has not heartbeaten for this long is marked down.
    pub data_service_lease_ms: u64,
}

/// Default data-service lease: ten heartbeats.
pub const DEFAULT_DATA_SERVICE_LEASE_MS: u64 = 10_000;

/// How long a joining node keeps asking the cluster to add it.
const JOIN_DEADLINE_MS: u64 = 120_000;

/// Holds the data directory's lock for the life of the node: two processes on one
/// directory would corrupt it.
fn lock_data_dir(data_dir: &Path) -> anyhow::Result<fs::File> {
    let path = data_dir.join("LOCK");
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    if file.try_lock().is_err() {
        bail!(
            "{} is in use by another registry process; stop it or choose another --data directory",
            data_dir.display()
        );
    }
    Ok(file)
}

/// Refuses to start a data directory under another node id.
fn check_identity(data_dir: &Path, node_id: NodeId) -> anyhow::Result<()> {
    let path = data_dir.join("node-id");
    match fs::read_to_string(&path) {
        Ok(text) => {
            let stored: NodeId = text
                .trim()
                .parse()
                .with_context(|| format!("{} is damaged", path.display()))?;
            if stored != node_id {
                bail!(
                    "{} belongs to registry node {stored}, not {node_id}; start it with --id {stored} or use an empty directory",
                    data_dir.display()
                );
            }
            Ok(())
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            fs::write(&path, format!("{node_id}\n")).with_context(|| format!("cannot write {}", path.display()))?;
            Ok(())
        }
        Err(error) => Err(error).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// A started node. Dropping it does not stop it; call [`RunningNode::shutdown`].
pub struct RunningNode {
    pub raft: Raft,
    pub local_address: SocketAddr,
    server: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    stop: tokio::sync::oneshot::Sender<()>,
    stop_background: tokio::sync::watch::Sender<bool>,
    _lock: fs::File,
}

impl RunningNode {
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        let _ = self.stop_background.send(true);
        if let Err(error) = self.raft.shutdown().await {
            tracing::warn!(%error, "raft did not shut down cleanly");
        }
        match tokio::time::timeout(Duration::from_secs(10), self.server).await {
            Ok(joined) => joined??,
            Err(_) => tracing::warn!("gRPC server did not stop within 10 s"),
        }
        Ok(())
    }
}

/// Starts a node and returns once it serves requests (initialization or joining continues
/// in the background for joins, and is finished for initialization).
pub async fn start(options: NodeOptions) -> anyhow::Result<RunningNode> {
    fs::create_dir_all(&options.data_dir)
        .with_context(|| format!("cannot create data directory {}", options.data_dir.display()))?;
    let lock = lock_data_dir(&options.data_dir)?;
    check_identity(&options.data_dir, options.node_id)?;
    let log_store = LogStore::open(&options.data_dir.join("raft-log")).context("cannot open the raft log")?;
    let log_counters = log_store.counters();
    let state = StateHandle::open(&options.data_dir).context("cannot open the registry state")?;
    let config = options.tuning.to_config()?;
    let network = PeerNetwork { local: options.node_id };
    let raft = Raft::new(
        options.node_id,
        config,
        network,
        log_store,
        StateMachine::new(state.clone()),
    )
    .await
    .context("cannot start raft")?;
    let core = RegistryCore {
        node_id: options.node_id,
        raft: raft.clone(),
        state: state.clone(),
        liveness: Arc::default(),
        log_counters,
    };

    let (stop_background, background_stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(crate::service::liveness::run_failure_detector(
        core.clone(),
        options.data_service_lease_ms,
        background_stopped,
    ));

    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .with_context(|| format!("cannot listen on {}", options.listen))?;
    let local_address = listener.local_addr()?;
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let router = Server::builder()
        .add_service(
            RaftPeerServer::new(PeerService::new(options.node_id, raft.clone(), state))
                .max_decoding_message_size(MAX_MESSAGE_SIZE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_SIZE_BYTES),
        )
        .add_service(NamespaceServer::new(NamespaceService::new(core.clone())))
        .add_service(AdminServer::new(AdminService::new(core)));
    let server = tokio::spawn(router.serve_with_incoming_shutdown(incoming, async {
        let _ = stopped.await;
    }));
    tracing::info!(node_id = options.node_id, %local_address, "registry node serving");

    match &options.bootstrap {
        Bootstrap::Resume => {}
        Bootstrap::Initialize(members) => initialize(&raft, options.node_id, members).await?,
        Bootstrap::Join(seeds) => {
            let seeds = seeds.clone();
            let (node_id, advertise) = (options.node_id, options.advertise.clone());
            tokio::spawn(async move {
                if let Err(error) = join(seeds, node_id, advertise).await {
                    tracing::error!(%error, "could not join the registry cluster");
                }
            });
        }
    }
    Ok(RunningNode {
        raft,
        local_address,
        server,
        stop,
        stop_background,
        _lock: lock,
    })
}

/// Runs a node until `shutdown` resolves.
pub async fn run(options: NodeOptions, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let node = start(options).await?;
    shutdown.await;
    tracing::info!("registry node stopping");
    node.shutdown().await
}

async fn initialize(raft: &Raft, node_id: NodeId, members: &BTreeMap<NodeId, String>) -> anyhow::Result<()> {
    if !members.contains_key(&node_id) {
        bail!("--init member list does not include this node ({node_id}); add --peer {node_id}=ADDRESS");
    }
    let nodes: BTreeMap<NodeId, BasicNode> = members
        .iter()
        .map(|(id, address)| (*id, BasicNode { addr: address.clone() }))
        .collect();
    match raft.initialize(nodes).await {
        Ok(()) => {
            tracing::info!(?members, "initialized a new registry cluster");
            Ok(())
        }
        Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {
            tracing::info!("registry already initialized; --init ignored");
            Ok(())
        }
        Err(error) => Err(anyhow::anyhow!("cannot initialize the registry cluster: {error}")),
    }
}

async fn join(seeds: Vec<String>, node_id: NodeId, advertise: String) -> anyhow::Result<()> {
    let client = shoal_client::RegistryClient::new(seeds)?.with_deadline(Duration::from_millis(JOIN_DEADLINE_MS));
    let members = client.add_member(node_id, &advertise).await?;
    tracing::info!(node_id, leader = ?members.leader_id, "joined the registry cluster");
    Ok(())
}
