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
