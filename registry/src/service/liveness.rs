//! Data-service heartbeats, kept in the memory of the node that receives them (the leader).
//!
//! Not replicated on purpose: a heartbeat every second from every data service would make
//! the log's write rate grow with the cluster. After a leader change the new leader starts
//! with no heartbeats and gives every service a full lease before judging it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use crate::limits::MAX_DATA_SERVICES;

/// Most mount sessions tracked at once.
const MAX_SESSIONS: usize = 100_000;
/// A mount session not renewed for this long loses the orphans it held.
pub const SESSION_LEASE_MS: u64 = 60_000;

#[derive(Default)]
pub struct Liveness {
    last_seen: Mutex<HashMap<u64, Instant>>,
    sessions: Mutex<HashMap<u64, Instant>>,
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

    pub fn renew_session(&self, session_id: u64) {
        let mut sessions = self.sessions.lock().expect("liveness lock poisoned");
        if sessions.len() >= MAX_SESSIONS && !sessions.contains_key(&session_id) {
            // Forget the stalest first: a bound on memory, whatever the number of mounts.
            let lease = std::time::Duration::from_millis(SESSION_LEASE_MS);
            sessions.retain(|_, seen| seen.elapsed() < lease);
            if sessions.len() >= MAX_SESSIONS {
                return;
            }
        }
        sessions.insert(session_id, Instant::now());
    }

    /// True if `session_id` renewed within its lease.
    pub fn session_alive(&self, session_id: u64) -> bool {
        let sessions = self.sessions.lock().expect("liveness lock poisoned");
        sessions
            .get(&session_id)
            .is_some_and(|seen| seen.elapsed().as_millis() < u128::from(SESSION_LEASE_MS))
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
        if since.elapsed() >= std::time::Duration::from_millis(SESSION_LEASE_MS) {
            expire_orphans(&core).await;
        }
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

/// Most orphans released per check.
const MAX_ORPHANS_PER_CHECK: usize = 256;

/// Releases orphans whose mount session stopped renewing (the mount died): their chunks
/// become garbage.
async fn expire_orphans(core: &super::RegistryCore) {
    let engine = core.state.engine();
    let Ok(volumes) = crate::cluster::list_volumes(engine.as_ref()) else {
        return;
    };
    let mut expired = Vec::new();
    for volume in volumes {
        let volume_id = volume.record.id;
        let prefix = crate::keys::orphan_prefix(volume_id);
        let end = shoal_engine::prefix_end(&prefix).expect("non-empty prefix");
        let _ = shoal_engine::KvRead::scan(
            engine.as_ref(),
            crate::keys::SPACE_NAMESPACE,
            &prefix,
            Some(&end),
            &mut |_, value| {
                if let Ok(orphan) = <crate::records::OrphanRecord as crate::records::Record>::decode(value)
                    && !core.liveness.session_alive(orphan.session_id)
                {
                    expired.push((volume_id, orphan.ino, orphan.session_id));
                }
                if expired.len() >= MAX_ORPHANS_PER_CHECK {
                    shoal_engine::ScanControl::Stop
                } else {
                    shoal_engine::ScanControl::Continue
                }
            },
        );
    }
    drop(engine);
    for (volume_id, ino, session_id) in expired {
        tracing::info!(
            volume_id,
            ino,
            session_id,
            "mount session expired; releasing the file it held open"
        );
        let command = crate::command::Command::Namespace {
            volume_id,
            op: crate::command::NamespaceOp::ReleaseOrphan { ino },
        };
        if let Err(status) = core.propose(command, None).await {
            tracing::warn!(volume_id, ino, %status, "could not release orphan");
        }
    }
}
