//! The faults: SIGKILLs and restarts of data services, registry nodes and mounts (inside
//! and past the data services' lease, twice in a row, two at once), pauses that outlast the
//! lease (the process comes back believing it still has its place), and hosts cut off the
//! network. Each step injects one or two faults, undoes them, and the run waits for the
//! cluster to be whole again before the next.

use std::collections::BTreeMap;
use std::time::Duration;

use rand::Rng;
use rand::rngs::StdRng;

use super::cluster::{DATA_SERVICES, FaultCluster, LEASE_MS, MOUNT_RETRY_SECONDS, MOUNTS, REGISTRY_NODES};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    /// A data service SIGKILLed, back before its lease ends.
    KillDataWithinLease,
    /// A data service SIGKILLed, back after it left its chains.
    KillDataPastLease,
    /// A data service SIGKILLed again while it is being refilled after a restart.
    KillDataWhileRecovering,
    /// Two data services SIGKILLed at once.
    KillTwoData,
    /// A data service stopped (SIGSTOP) past its lease, then resumed.
    PauseData,
    /// The registry leader SIGKILLed.
    KillRegistryLeader,
    /// A registry follower SIGKILLed.
    KillRegistryFollower,
    /// A mount daemon SIGKILLed, then mounted again.
    KillMount,
    /// A data service's host cut off the network.
    PartitionData,
    /// A registry node's host cut off the network.
    PartitionRegistry,
    /// A client host cut off the network.
    PartitionClient,
    /// Every data service SIGKILLed for longer than the mounts retry: writes fail, and
    /// their errors must reach fsync and close.
    KillEveryDataPastRetry,
    /// A client host cut off for longer than its mount retries.
    PartitionClientPastRetry,
}

impl Fault {
    pub const ALL: [Fault; 13] = [
        Fault::KillDataWithinLease,
        Fault::KillDataPastLease,
        Fault::KillDataWhileRecovering,
        Fault::KillTwoData,
        Fault::PauseData,
        Fault::KillRegistryLeader,
        Fault::KillRegistryFollower,
        Fault::KillMount,
        Fault::PartitionData,
        Fault::PartitionRegistry,
        Fault::PartitionClient,
        Fault::KillEveryDataPastRetry,
        Fault::PartitionClientPastRetry,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Fault::KillDataWithinLease => "SIGKILL data service, back within its lease",
            Fault::KillDataPastLease => "SIGKILL data service, back after its lease",
            Fault::KillDataWhileRecovering => "SIGKILL data service again while it recovers",
            Fault::KillTwoData => "SIGKILL two data services at once",
            Fault::PauseData => "SIGSTOP data service past its lease, then SIGCONT",
            Fault::KillRegistryLeader => "SIGKILL registry leader",
            Fault::KillRegistryFollower => "SIGKILL registry follower",
            Fault::KillMount => "SIGKILL mount daemon, remount",
            Fault::PartitionData => "partition a data service's host",
            Fault::PartitionRegistry => "partition a registry node's host",
            Fault::PartitionClient => "partition a client host",
            Fault::KillEveryDataPastRetry => "SIGKILL every data service past the mounts' retry timeout",
            Fault::PartitionClientPastRetry => "partition a client host past its mount's retry timeout",
        }
    }
}

fn millis(rng: &mut StdRng, range: std::ops::RangeInclusive<u64>) -> Duration {
    Duration::from_millis(rng.random_range(range))
}

/// A pause that ends within the lease, and one that outlasts it.
fn within_lease(rng: &mut StdRng) -> Duration {
    millis(rng, 100..=LEASE_MS / 2)
}

fn past_lease(rng: &mut StdRng) -> Duration {
    millis(rng, LEASE_MS + 500..=2 * LEASE_MS)
}

/// Longer than a mount retries an operation before it fails.
fn past_retry(rng: &mut StdRng) -> Duration {
    let retry_ms = MOUNT_RETRY_SECONDS * 1000;
    millis(rng, retry_ms + 1000..=retry_ms + 3000)
}

/// Injects `fault` and undoes it. Returns how many faults that was (a kill repeated
/// counts twice).
pub async fn inject(cluster: &mut FaultCluster, fault: Fault, rng: &mut StdRng) -> anyhow::Result<u64> {
    match fault {
        Fault::KillDataWithinLease
        | Fault::KillDataPastLease
        | Fault::KillDataWhileRecovering
        | Fault::KillTwoData
        | Fault::PauseData
        | Fault::KillEveryDataPastRetry => data_fault(cluster, fault, rng).await,
        _ => other_fault(cluster, fault, rng).await,
    }
}

/// Faults of data services: kills, repeated kills, pauses.
async fn data_fault(cluster: &mut FaultCluster, fault: Fault, rng: &mut StdRng) -> anyhow::Result<u64> {
    let data = rng.random_range(0..DATA_SERVICES);
    Ok(match fault {
        Fault::KillDataWithinLease | Fault::KillDataPastLease => {
            cluster.data[data].kill();
            let down = if fault == Fault::KillDataWithinLease {
                within_lease(rng)
            } else {
                past_lease(rng)
            };
            tokio::time::sleep(down).await;
            cluster.restart_data(data)?;
            1
        }
        Fault::KillDataWhileRecovering => {
            cluster.data[data].kill();
            tokio::time::sleep(past_lease(rng)).await;
            cluster.restart_data(data)?;
            // In the middle of its registration or its refill.
            tokio::time::sleep(millis(rng, 200..=1500)).await;
            cluster.data[data].kill();
            tokio::time::sleep(within_lease(rng)).await;
            cluster.restart_data(data)?;
            2
        }
        Fault::KillTwoData => {
            let other = (data + rng.random_range(1..DATA_SERVICES)) % DATA_SERVICES;
            cluster.data[data].kill();
            cluster.data[other].kill();
            tokio::time::sleep(if rng.random_bool(0.5) {
                within_lease(rng)
            } else {
                past_lease(rng)
            })
            .await;
            cluster.restart_data(data)?;
            tokio::time::sleep(millis(rng, 0..=1000)).await;
            cluster.restart_data(other)?;
            2
        }
        Fault::PauseData => {
            cluster.data[data].pause(true)?;
            tokio::time::sleep(past_lease(rng)).await;
            cluster.data[data].pause(false)?;
            1
        }
        Fault::KillEveryDataPastRetry => {
            for index in 0..DATA_SERVICES {
                cluster.data[index].kill();
            }
            tokio::time::sleep(past_retry(rng)).await;
            for index in 0..DATA_SERVICES {
                cluster.restart_data(index)?;
            }
            1
        }
        other => unreachable!("{other:?} is not a data-service fault"),
    })
}

/// Faults of registry nodes and mounts, and partitions.
async fn other_fault(cluster: &mut FaultCluster, fault: Fault, rng: &mut StdRng) -> anyhow::Result<u64> {
    Ok(match fault {
        Fault::KillRegistryLeader | Fault::KillRegistryFollower => {
            let leader = cluster.leader().await.unwrap_or(0).min(REGISTRY_NODES - 1);
            let node = if fault == Fault::KillRegistryLeader {
                leader
            } else {
                (leader + rng.random_range(1..REGISTRY_NODES)) % REGISTRY_NODES
            };
            cluster.registry[node].kill();
            tokio::time::sleep(millis(rng, 200..=3000)).await;
            cluster.restart_registry(node)?;
            1
        }
        Fault::KillMount => {
            let mount = rng.random_range(0..MOUNTS);
            cluster.mounts[mount].kill();
            tokio::time::sleep(millis(rng, 100..=1500)).await;
            cluster.start_mount(mount).await?;
            1
        }
        Fault::PartitionClientPastRetry => {
            let host = cluster.mounts[rng.random_range(0..MOUNTS)].host.clone();
            cluster.connect(&host, false)?;
            tokio::time::sleep(past_retry(rng)).await;
            cluster.connect(&host, true)?;
            1
        }
        Fault::PartitionData | Fault::PartitionRegistry | Fault::PartitionClient => {
            let host = match fault {
                Fault::PartitionData => cluster.data[rng.random_range(0..DATA_SERVICES)].host.clone(),
                Fault::PartitionRegistry => cluster.registry[rng.random_range(0..REGISTRY_NODES)].host.clone(),
                _ => cluster.mounts[rng.random_range(0..MOUNTS)].host.clone(),
            };
            cluster.connect(&host, false)?;
            tokio::time::sleep(if rng.random_bool(0.5) {
                within_lease(rng)
            } else {
                past_lease(rng)
            })
            .await;
            cluster.connect(&host, true)?;
            1
        }
        other => unreachable!("{other:?} is a data-service fault"),
    })
}

/// Counts of faults injected, by kind.
#[derive(Default)]
pub struct Tally {
    pub by_kind: BTreeMap<Fault, u64>,
}

impl Tally {
    pub fn add(&mut self, fault: Fault, count: u64) {
        *self.by_kind.entry(fault).or_default() += count;
    }

    pub fn total(&self) -> u64 {
        self.by_kind.values().sum()
    }
}
