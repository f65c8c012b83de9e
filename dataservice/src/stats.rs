//! Counters of one data service, reported by the `Stats` call.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Default)]
pub struct Stats {
    pub bytes_written: AtomicU64,
    pub bytes_read: AtomicU64,
    pub corruptions_detected: AtomicU64,
    pub chunks_repaired: AtomicU64,
    pub stale_requests_refused: AtomicU64,
    pub chunks_resynced: AtomicU64,
    pub writes_merged: AtomicU64,
}

impl Stats {
    pub fn add(counter: &AtomicU64, value: u64) {
        counter.fetch_add(value, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
