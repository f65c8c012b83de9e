//! The chain table: small, versioned, and the only placement state the registry keeps.
//!
//! A file's layout names chains, never data services or chunks, so the registry's size and
//! write rate grow with files, not with data. The table is maintained here, deterministically,
//! whenever a data service registers or changes state:
//!
//! - For every replication factor R, there are as many chains as data services that are up
//!   (once at least R are): each chain is headed by the service that heads the fewest, and
//!   filled with the services in the fewest chains, preferring distinct zones.
//! - A target that goes down leaves its chains (version bump) and is remembered as missing;
//!   writes continue on the others. When it comes back it rejoins at the tail, not serving
//!   reads until its predecessor has filled it (`ChainSyncDone`); if no member is left to
//!   fill it, its copy is the newest there is and it serves at once.
//! - A removed target is replaced by another service, which joins at the tail to be filled.
//!   A draining target stays until its replacement serves, then leaves.
//!
//! Invariant: a chain's version changes whenever its targets or their serving flags change,
//! and the table version whenever any chain changes.

use std::collections::{BTreeMap, BTreeSet};

use shoal_engine::KvRead;
use shoal_proto::errno::{Errno, FsError};

use super::{counters, store_counters};
use crate::keys::{self, SPACE_CLUSTER};
use crate::limits::MAX_REPLICAS;
use crate::namespace::{NsError, NsResult};
use crate::records::{ChainRecord, ChainSet, ChainTarget, DataServiceRecord, DataServiceState, Layout, VolumeRecord};
use crate::txn::Txn;

/// Most chains the table holds.
pub const MAX_CHAINS: usize = 65_536;

/// The layout of a new regular file `ino` of `volume`: `stripe_width` consecutive chains of
/// the volume's replication factor, starting at a position that rotates with the inode
/// number so that files spread over all chains. Empty while no chains exist yet.
pub fn select_layout(txn: &mut Txn<'_>, volume: &VolumeRecord, ino: u64) -> NsResult<Layout> {
    let set: ChainSet = txn
        .get_record(SPACE_CLUSTER, &keys::chain_set(volume.replicas))?
        .unwrap_or_default();
    let available = set.chain_ids.len();
    let width = (volume.stripe_width as usize).min(available);
    let start = if available == 0 {
        0
    } else {
        (ino % available as u64) as usize
    };
    let chain_ids: Vec<u64> = (0..width).map(|i| set.chain_ids[(start + i) % available]).collect();
    for chain_id in &chain_ids {
        let mut chain: ChainRecord = txn
            .get_record(SPACE_CLUSTER, &keys::chain(*chain_id))?
            .ok_or_else(|| NsError::fs(Errno::EIO, format!("chain {chain_id} is in a chain set but missing")))?;
        if !chain.used {
            chain.used = true;
            store_chain(txn, &chain);
        }
    }
    Ok(Layout {
        chunk_size_bytes: volume.chunk_size_bytes,
        stripe_width: if width == 0 { volume.stripe_width } else { width as u32 },
        chain_ids,
    })
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChainTable {
    pub version: u64,
    pub chains: Vec<ChainRecord>,
}

fn load_chains(read: &dyn KvRead) -> NsResult<Vec<ChainRecord>> {
    super::scan_records(read, SPACE_CLUSTER, &keys::chain_prefix(), MAX_CHAINS)
}

pub fn chain_table(read: &dyn KvRead) -> Result<ChainTable, FsError> {
    let txn = Txn::new(read);
    let result = (|| {
        Ok(ChainTable {
            version: counters(&txn)?.chain_table_version,
            chains: load_chains(read)?,
        })
    })();
    result.map_err(NsError::into_fs_error)
}

fn store_chain(txn: &mut Txn<'_>, chain: &ChainRecord) {
    txn.put_record(SPACE_CLUSTER, keys::chain(chain.id), chain);
}

/// Brings every chain in line with the data services' states, and creates chains where the
/// table is short of them. Called after every registration and state change.
pub(super) fn reconcile(txn: &mut Txn<'_>, services: &[DataServiceRecord]) -> NsResult<()> {
    let state: BTreeMap<u64, DataServiceState> = services.iter().map(|s| (s.id, s.state)).collect();
    let is = |id: u64, wanted: DataServiceState| state.get(&id) == Some(&wanted);
    let mut chains = load_chains(txn.base())?;
    let mut changed_any = false;
    for index in 0..chains.len() {
        let mut chain = chains[index].clone();
        let before = chain.clone();
        // Down targets leave and are remembered; removed ones leave for good.
        let mut kept = Vec::with_capacity(chain.targets.len());
        for target in chain.targets.drain(..) {
            let id = target.data_service_id;
            if is(id, DataServiceState::Down) {
                if !chain.missing.contains(&id) {
                    chain.missing.push(id);
                }
            } else if !is(id, DataServiceState::Removed) {
                kept.push(target);
            }
        }
        chain.targets = kept;
        chain.missing.retain(|id| !is(*id, DataServiceState::Removed));
        // Returning targets rejoin at the tail, to be filled before they serve.
        let returning: Vec<u64> = chain
            .missing
            .iter()
            .copied()
            .filter(|id| is(*id, DataServiceState::Up) || is(*id, DataServiceState::Draining))
            .collect();
        for id in returning {
            chain.missing.retain(|m| *m != id);
            // With no serving member left, nobody could fill it: its copy is the newest
            // there is (a chain without a serving head takes no writes), so it serves at
            // once, at the head, and fills the others.
            // Invariant: the serving members of a chain come first.
            let alone = chain.targets.iter().all(|t| !t.serving);
            let target = ChainTarget {
                data_service_id: id,
                serving: alone,
            };
            if alone {
                chain.targets.insert(0, target);
            } else {
                chain.targets.push(target);
            }
        }
        // Replace removed and draining targets with up services not yet in the chain.
        let staying = chain
            .targets
            .iter()
            .filter(|t| !is(t.data_service_id, DataServiceState::Draining))
            .count()
            + chain.missing.len();
        let mut shortfall = (chain.replicas as usize).saturating_sub(staying);
        while shortfall > 0 {
            let taken: BTreeSet<u64> = chain
                .targets
                .iter()
                .map(|t| t.data_service_id)
                .chain(chain.missing.iter().copied())
                .collect();
            let Some(replacement) = least_loaded(&chains, services, chain.replicas, &taken, &[]) else {
                break;
            };
            chain.targets.push(ChainTarget {
                data_service_id: replacement,
                serving: false,
            });
            shortfall -= 1;
        }
        if chain != before {
            chain.version += 1;
            store_chain(txn, &chain);
            chains[index] = chain;
            changed_any = true;
        }
    }
    let up: Vec<&DataServiceRecord> = services.iter().filter(|s| s.state == DataServiceState::Up).collect();
    let mut counters = counters(txn)?;
    for replicas in 1..=MAX_REPLICAS {
        if up.len() < replicas as usize {
            continue;
        }
        changed_any |= rebalance_unused(txn, &mut chains, services, replicas);
        let mut set: crate::records::ChainSet = txn
            .get_record(SPACE_CLUSTER, &keys::chain_set(replicas))?
            .unwrap_or_default();
        while set.chain_ids.len() < up.len() && chains.len() < MAX_CHAINS {
            let Some(chain) = new_chain(&chains, services, replicas, &mut counters) else {
                break;
            };
            set.chain_ids.push(chain.id);
            store_chain(txn, &chain);
            chains.push(chain);
            changed_any = true;
        }
        txn.put_record(SPACE_CLUSTER, keys::chain_set(replicas), &set);
    }
    if changed_any {
        counters.chain_table_version += 1;
    }
    store_counters(txn, &counters);
    Ok(())
}

/// Re-chooses the targets of chains that no file uses yet (they hold no data), as if they
/// were created now with every current service available: a cluster whose data services
/// registered one by one ends up as balanced as one built at once. Returns whether any
/// chain changed.
fn rebalance_unused(
    txn: &mut Txn<'_>,
    chains: &mut [ChainRecord],
    services: &[DataServiceRecord],
    replicas: u32,
) -> bool {
    let movable: Vec<usize> = (0..chains.len())
        .filter(|&i| {
            let chain = &chains[i];
            chain.replicas == replicas
                && !chain.used
                && chain.missing.is_empty()
                && chain.targets.iter().all(|t| t.serving)
        })
        .collect();
    if movable.is_empty() {
        return false;
    }
    // Take the movable chains out of the load picture, then place them again one by one.
    let originals: Vec<ChainRecord> = movable.iter().map(|&i| chains[i].clone()).collect();
    for &i in &movable {
        chains[i].targets.clear();
    }
    let mut changed = false;
    let mut scratch = crate::records::ClusterCounters::default();
    for (&i, original) in movable.iter().zip(&originals) {
        let Some(placed) = new_chain(chains, services, replicas, &mut scratch) else {
            chains[i] = original.clone();
            continue;
        };
        let mut chain = original.clone();
        if chain.targets != placed.targets {
            chain.targets = placed.targets;
            chain.version += 1;
            store_chain(txn, &chain);
            changed = true;
        }
        chains[i] = chain;
    }
    changed
}

/// Chains of `replicas` copies in which `id` is a target, and those it heads.
fn load_of(chains: &[ChainRecord], replicas: u32, id: u64) -> (usize, usize) {
    let same = chains.iter().filter(|c| c.replicas == replicas);
    let mut memberships = 0;
    let mut heads = 0;
    for chain in same {
        if chain.has_target(id) || chain.missing.contains(&id) {
            memberships += 1;
        }
        if chain.targets.first().is_some_and(|t| t.data_service_id == id) {
            heads += 1;
        }
    }
    (memberships, heads)
}

/// The up service, not in `taken`, with the fewest chain memberships (zones not in
/// `zones_taken` first, then lowest id).
fn least_loaded(
    chains: &[ChainRecord],
    services: &[DataServiceRecord],
    replicas: u32,
    taken: &BTreeSet<u64>,
    zones_taken: &[&str],
) -> Option<u64> {
    services
        .iter()
        .filter(|s| s.state == DataServiceState::Up && !taken.contains(&s.id))
        .min_by_key(|s| {
            let same_zone = zones_taken.contains(&s.zone.as_str());
            (same_zone, load_of(chains, replicas, s.id).0, s.id)
        })
        .map(|s| s.id)
}

fn new_chain(
    chains: &[ChainRecord],
    services: &[DataServiceRecord],
    replicas: u32,
    counters: &mut crate::records::ClusterCounters,
) -> Option<ChainRecord> {
    let head = services
        .iter()
        .filter(|s| s.state == DataServiceState::Up)
        .min_by_key(|s| {
            let (memberships, heads) = load_of(chains, replicas, s.id);
            (heads, memberships, s.id)
        })?;
    let mut taken = BTreeSet::from([head.id]);
    let mut zones = vec![head.zone.as_str()];
    let mut targets = vec![ChainTarget {
        data_service_id: head.id,
        serving: true,
    }];
    while targets.len() < replicas as usize {
        let next = least_loaded(chains, services, replicas, &taken, &zones)?;
        let zone = services.iter().find(|s| s.id == next).map_or("", |s| s.zone.as_str());
        zones.push(zone);
        taken.insert(next);
        targets.push(ChainTarget {
            data_service_id: next,
            serving: true,
        });
    }
    counters.next_chain_id = counters.next_chain_id.max(1);
    let id = counters.next_chain_id;
    counters.next_chain_id += 1;
    Some(ChainRecord {
        id,
        version: 1,
        replicas,
        targets,
        missing: Vec::new(),
        used: false,
    })
}

/// A target finished filling: it serves reads from now on, and draining targets that it
/// replaced leave the chain.
pub(super) fn sync_done(
    txn: &mut Txn<'_>,
    services: &[DataServiceRecord],
    chain_id: u64,
    chain_version: u64,
    data_service_id: u64,
) -> NsResult<ChainRecord> {
    let mut chain: ChainRecord = txn
        .get_record(SPACE_CLUSTER, &keys::chain(chain_id))?
        .ok_or_else(|| NsError::fs(Errno::ENOENT, format!("chain {chain_id} does not exist")))?;
    if chain.version != chain_version {
        return Err(NsError::fs(
            Errno::ESTALE,
            format!(
                "chain {chain_id} is at version {}, the sync was for version {chain_version}; sync again",
                chain.version
            ),
        ));
    }
    let target = chain
        .targets
        .iter_mut()
        .find(|t| t.data_service_id == data_service_id)
        .ok_or_else(|| {
            NsError::fs(
                Errno::ENOENT,
                format!("data service {data_service_id} is not a target of chain {chain_id}"),
            )
        })?;
    if target.serving {
        return Ok(chain);
    }
    target.serving = true;
    let draining = |id: u64| {
        services
            .iter()
            .any(|s| s.id == id && s.state == DataServiceState::Draining)
    };
    let serving_non_draining = chain
        .targets
        .iter()
        .filter(|t| t.serving && !draining(t.data_service_id))
        .count();
    if serving_non_draining >= chain.replicas as usize {
        chain.targets.retain(|t| !draining(t.data_service_id));
    }
    chain.version += 1;
    store_chain(txn, &chain);
    let mut counters = counters(txn)?;
    counters.chain_table_version += 1;
    store_counters(txn, &counters);
    Ok(chain)
}
