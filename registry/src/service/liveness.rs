//! Data-service heartbeats, kept in the memory of the node that receives them (the leader).
//!
//! Not replicated on purpose: a heartbeat every second from every data service would make
//! the log's write rate grow with the cluster. After a leader change the new leader starts
//! with no heartbeats and gives every service a full lease before judging it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use crate::limits::MAX_DATA_SERVICES;

#[derive(Default)]
pub struct Liveness {
    last_seen: Mutex<HashMap<u64, Instant>>,
}

impl Liveness {
    pub fn record(&self, data_service_id: u64) {
        let mut last_seen = self.last_seen.lock().expect("liveness lock poisoned");
        if last_seen.len() >= MAX_DATA_SERVICES && !last_seen.contains_key(&data_service_id) {
            // Ids are validated against registered services before this is called, so the
            // map is bounded by the registry's own limit; keep the bound explicit anyway.
            return;
        }
        last_seen.insert(data_service_id, Instant::now());
    }

    /// Milliseconds since the last heartbeat of `data_service_id`, if any was seen.
    pub fn age_ms(&self, data_service_id: u64) -> Option<u64> {
        let last_seen = self.last_seen.lock().expect("liveness lock poisoned");
        last_seen
            .get(&data_service_id)
            .map(|seen| seen.elapsed().as_millis() as u64)
    }
}

/// How often the leader checks data-service leases.
const CHECK_INTERVAL_MS: u64 = 500;

/// On the leader: marks a data service down once it has not heartbeaten for `lease_ms`, so
/// its chains drop it and writes continue on the remaining targets. Runs until `stop`.
pub async fn run_failure_detector(
    core: super::RegistryCore,
    lease_ms: u64,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    use openraft::type_config::async_runtime::WatchReceiver;

    let lease = std::time::Duration::from_millis(lease_ms);
    let mut leader_since: Option<Instant> = None;
    let mut ticker = tokio::time::interval(std::time::Duration::from_millis(CHECK_INTERVAL_MS));
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => return,
        }
        let is_leader = core.raft.metrics().borrow_watched().current_leader == Some(core.node_id);
        if !is_leader {
            leader_since = None;
            continue;
        }
        // A new leader has heard no heartbeat yet: give every service a full lease first.
        let since = *leader_since.get_or_insert_with(Instant::now);
        if since.elapsed() < lease {
            continue;
        }
        let services = match crate::cluster::list_data_services(core.state.engine().as_ref()) {
            Ok(services) => services,
            Err(error) => {
                tracing::warn!(%error, "failure detector cannot list data services");
                continue;
            }
        };
        for service in services
            .iter()
            .filter(|s| s.state == crate::records::DataServiceState::Up)
        {
            let expired = match core.liveness.age_ms(service.id) {
                Some(age_ms) => age_ms > lease_ms,
                None => true,
            };
            if !expired {
                continue;
            }
            tracing::warn!(
                data_service = service.id,
                address = %service.address,
                lease_ms,
                "data service missed its lease; marking it down"
            );
            let command = crate::command::Command::SetDataServiceState {
                id: service.id,
                state: crate::records::DataServiceState::Down,
            };
            if let Err(status) = core.propose(command, None).await {
                tracing::warn!(data_service = service.id, %status, "could not mark data service down");
            }
        }
    }
}
