//! The chain table as clients and data services use it: which data services hold a chain,
//! in which order, at which version, and where they listen. Fetched from the registry and
//! refreshed when a data service says a version is stale.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use shoal_proto::registry as pb;

use crate::{ClientError, RegistryClient};

/// Refreshes closer together than this are served from the last fetch.
const MIN_REFRESH_INTERVAL: Duration = Duration::from_millis(50);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    pub data_service_id: u64,
    pub serving: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainInfo {
    pub id: u64,
    pub version: u64,
    pub replicas: u32,
    /// Head first.
    pub targets: Vec<Target>,
    /// With no serving target: the missing members that hold every acknowledged change.
    pub waiting_for: Vec<u64>,
    /// Moves when the chain resumed from a member that may lack unsynced changes.
    pub loss_epoch: u64,
}

impl ChainInfo {
    pub fn position(&self, data_service_id: u64) -> Option<usize> {
        self.targets.iter().position(|t| t.data_service_id == data_service_id)
    }

    pub fn head(&self) -> Option<u64> {
        self.targets.first().map(|t| t.data_service_id)
    }

    /// Targets that serve reads.
    pub fn serving(&self) -> impl Iterator<Item = u64> + '_ {
        self.targets.iter().filter(|t| t.serving).map(|t| t.data_service_id)
    }

    /// Why nothing can be read from or written to this chain, if nothing can: no member
    /// serves. Names the members it waits for, so the error tells the operator what to do.
    pub fn unavailable(&self) -> Option<String> {
        if self.targets.iter().any(|t| t.serving) {
            return None;
        }
        Some(if self.waiting_for.is_empty() {
            format!(
                "chain {} has no serving member and none with every acknowledged change is left; \
                 an operator can resume it with `shoal chain accept-loss {}`",
                self.id, self.id
            )
        } else {
            format!(
                "chain {} has no serving member: it waits for data service {:?}, which holds every \
                 acknowledged change (start it, or `shoal chain accept-loss {}`)",
                self.id, self.waiting_for, self.id
            )
        })
    }
}

#[derive(Clone, Debug, Default)]
pub struct ChainTable {
    pub version: u64,
    chains: HashMap<u64, ChainInfo>,
    addresses: HashMap<u64, String>,
}

impl ChainTable {
    pub fn from_wire(table: pb::ChainTable) -> ChainTable {
        ChainTable {
            version: table.version,
            chains: table
                .chains
                .into_iter()
                .map(|chain| {
                    let info = ChainInfo {
                        id: chain.id,
                        version: chain.version,
                        replicas: chain.replicas,
                        targets: chain
                            .targets
                            .iter()
                            .map(|t| Target {
                                data_service_id: t.data_service_id,
                                serving: t.serving,
                            })
                            .collect(),
                        waiting_for: chain.waiting_for,
                        loss_epoch: chain.loss_epoch,
                    };
                    (chain.id, info)
                })
                .collect(),
            addresses: table.data_services.into_iter().map(|s| (s.id, s.address)).collect(),
        }
    }

    pub fn chain(&self, chain_id: u64) -> Option<&ChainInfo> {
        self.chains.get(&chain_id)
    }

    pub fn chains(&self) -> impl Iterator<Item = &ChainInfo> {
        self.chains.values()
    }

    pub fn address(&self, data_service_id: u64) -> Option<&str> {
        self.addresses.get(&data_service_id).map(String::as_str)
    }
}

/// The latest chain table, shared and refreshed on demand.
pub struct ChainCache {
    registry: RegistryClient,
    current: RwLock<Arc<ChainTable>>,
    refresh_lock: tokio::sync::Mutex<Option<Instant>>,
    refreshes: AtomicU64,
}

impl ChainCache {
    pub fn new(registry: RegistryClient) -> ChainCache {
        ChainCache {
            registry,
            current: RwLock::new(Arc::new(ChainTable::default())),
            refresh_lock: tokio::sync::Mutex::new(None),
            refreshes: AtomicU64::new(0),
        }
    }

    pub fn current(&self) -> Arc<ChainTable> {
        self.current.read().expect("chain table lock poisoned").clone()
    }

    /// Fetches the table from the registry. Callers that arrive while a fetch is running get
    /// its result instead of starting another one.
    pub async fn refresh(&self) -> Result<Arc<ChainTable>, ClientError> {
        let seen = self.refreshes.load(Ordering::Acquire);
        let mut last = self.refresh_lock.lock().await;
        if self.refreshes.load(Ordering::Acquire) != seen {
            return Ok(self.current());
        }
        if let Some(at) = *last
            && at.elapsed() < MIN_REFRESH_INTERVAL
        {
            tokio::time::sleep(MIN_REFRESH_INTERVAL - at.elapsed()).await;
        }
        let table = ChainTable::from_wire(self.registry.get_chain_table(pb::Empty {}).await?);
        let table = Arc::new(table);
        {
            let mut current = self.current.write().expect("chain table lock poisoned");
            // Never go back to an older table (a lagging reply).
            if table.version >= current.version {
                *current = table;
            }
        }
        *last = Some(Instant::now());
        self.refreshes.fetch_add(1, Ordering::Release);
        Ok(self.current())
    }

    /// The current table, refreshed first if it is older than `version`.
    pub async fn at_least(&self, version: u64) -> Result<Arc<ChainTable>, ClientError> {
        let current = self.current();
        if current.version >= version {
            return Ok(current);
        }
        self.refresh().await
    }
}
