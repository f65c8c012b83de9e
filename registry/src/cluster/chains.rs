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
//!   reads until its predecessor has filled it (`ChainSyncDone`).
//! - Every chain records the last version at which each member served. With no serving
//!   member left, the chain resumes only from one that served last (it holds every
//!   acknowledged change); a member that missed changes waits, however early it returns.
//!   An operator can accept the loss (`accept_loss`) when the current members are gone.
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
use crate::records::{
    ChainRecord, ChainSet, ChainTarget, DataServiceRecord, DataServiceState, Layout, ServedAt, VolumeRecord,
};
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
/// `restarted_after_loss` names a data service that registered again after a possible
/// power loss: it leaves its chains and rejoins them at once, as a suspect.
pub(super) fn reconcile(
    txn: &mut Txn<'_>,
    services: &[DataServiceRecord],
    restarted_after_loss: Option<u64>,
) -> NsResult<()> {
    let state: BTreeMap<u64, DataServiceState> = services.iter().map(|s| (s.id, s.state)).collect();
    let mut chains = load_chains(txn.base())?;
    let mut changed_any = false;
    for index in 0..chains.len() {
        let mut chain = chains[index].clone();
        let before = chain.clone();
        leave(&mut chain, &state, restarted_after_loss);
        rejoin(&mut chain, &state);
        resume(&mut chain, &state);
        replace_missing_copies(&mut chain, &chains, services, &state);
        if chain != before {
            bump_version(&mut chain);
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

type States = BTreeMap<u64, DataServiceState>;

fn is(state: &States, id: u64, wanted: DataServiceState) -> bool {
    state.get(&id) == Some(&wanted)
}

fn is_available(state: &States, id: u64) -> bool {
    is(state, id, DataServiceState::Up) || is(state, id, DataServiceState::Draining)
}

/// Down targets (and one that restarted after a possible power loss) leave and are
/// remembered as missing; removed ones leave for good.
fn leave(chain: &mut ChainRecord, state: &States, restarted_after_loss: Option<u64>) {
    let mut kept = Vec::with_capacity(chain.targets.len());
    for target in std::mem::take(&mut chain.targets) {
        let id = target.data_service_id;
        let restarted = restarted_after_loss == Some(id);
        if is(state, id, DataServiceState::Down) || restarted {
            if !chain.missing.contains(&id) {
                chain.missing.push(id);
            }
        } else if !is(state, id, DataServiceState::Removed) {
            kept.push(target);
        }
    }
    chain.targets = kept;
    chain.missing.retain(|id| !is(state, *id, DataServiceState::Removed));
    if let Some(id) = restarted_after_loss
        && chain.missing.contains(&id)
        && !chain.suspect.contains(&id)
    {
        chain.suspect.push(id);
    }
}

/// Returning members rejoin at the tail, not serving: a predecessor fills them first, or,
/// if none serves, [`resume`] decides who may.
fn rejoin(chain: &mut ChainRecord, state: &States) {
    let returning: Vec<u64> = chain
        .missing
        .iter()
        .copied()
        .filter(|id| is_available(state, *id))
        .collect();
    for id in returning {
        chain.missing.retain(|m| *m != id);
        chain.targets.push(ChainTarget {
            data_service_id: id,
            serving: false,
        });
    }
}

/// A chain with no serving member resumes only from a member that holds every acknowledged
/// change (`is_current`), which then heads it and fills the others; otherwise it waits.
/// Resuming from a suspect (back from a possible power loss) bumps the loss epoch: it can
/// be current only if it served last, so nobody has the unsynced changes it may have lost.
///
/// Invariant: a member that missed acknowledged changes never serves while a member that
/// has them may still return; only an operator's `accept-loss` overrides this.
fn resume(chain: &mut ChainRecord, state: &States) {
    if chain.is_serving() {
        return;
    }
    let candidate = chain
        .targets
        .iter()
        .map(|t| t.data_service_id)
        .filter(|id| chain.is_current(*id) && is_available(state, *id))
        .min_by_key(|id| (chain.suspect.contains(id), *id));
    let Some(candidate) = candidate else { return };
    if chain.suspect.contains(&candidate) {
        chain.loss_epoch += 1;
    }
    promote(chain, candidate);
}

/// Moves target `id` to the head, serving.
fn promote(chain: &mut ChainRecord, id: u64) {
    chain.targets.retain(|t| t.data_service_id != id);
    chain.targets.insert(
        0,
        ChainTarget {
            data_service_id: id,
            serving: true,
        },
    );
}

/// Replaces removed and draining targets with up services not yet in the chain.
fn replace_missing_copies(
    chain: &mut ChainRecord,
    chains: &[ChainRecord],
    services: &[DataServiceRecord],
    state: &States,
) {
    let staying = chain
        .targets
        .iter()
        .filter(|t| !is(state, t.data_service_id, DataServiceState::Draining))
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
        let Some(replacement) = least_loaded(chains, services, chain.replicas, &taken, &[]) else {
            break;
        };
        chain.targets.push(ChainTarget {
            data_service_id: replacement,
            serving: false,
        });
        shortfall -= 1;
    }
}

/// A new version of a changed chain: its serving targets served at it.
///
/// Invariant: serving targets come first, and each has served at the chain's version.
fn bump_version(chain: &mut ChainRecord) {
    assert!(
        chain.targets.windows(2).all(|pair| pair[0].serving || !pair[1].serving),
        "chain {}: a serving target after one being filled: {:?}",
        chain.id,
        chain.targets
    );
    chain.version += 1;
    let serving: Vec<u64> = chain
        .targets
        .iter()
        .filter(|t| t.serving)
        .map(|t| t.data_service_id)
        .collect();
    if !serving.is_empty() {
        chain.served_version = chain.version;
        chain.served_at.retain(|s| !serving.contains(&s.data_service_id));
        chain.served_at.extend(serving.iter().map(|&id| ServedAt {
            data_service_id: id,
            chain_version: chain.version,
        }));
        chain.suspect.retain(|id| !serving.contains(id));
    }
    let members: BTreeSet<u64> = chain
        .targets
        .iter()
        .map(|t| t.data_service_id)
        .chain(chain.missing.iter().copied())
        .collect();
    chain.served_at.retain(|s| members.contains(&s.data_service_id));
    chain.suspect.retain(|id| members.contains(id));
    assert!(serving.iter().all(|id| chain.is_current(*id)));
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
            bump_version(&mut chain);
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
        served_at: targets
            .iter()
            .map(|t| ServedAt {
                data_service_id: t.data_service_id,
                chain_version: 1,
            })
            .collect(),
        served_version: 1,
        targets,
        missing: Vec::new(),
        used: false,
        suspect: Vec::new(),
        loss_epoch: 0,
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
    bump_version(&mut chain);
    store_chain(txn, &chain);
    let mut counters = counters(txn)?;
    counters.chain_table_version += 1;
    store_counters(txn, &counters);
    Ok(chain)
}

/// What an operator's `accept-loss` did to a chain.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LossAccepted {
    pub chain: ChainRecord,
    /// The member that now heads the chain, serving.
    pub promoted: u64,
    /// The last chain version at which it had served (0: never; it held no complete copy).
    pub promoted_served_at: u64,
    /// The last chain version at which any member had served: changes acknowledged after
    /// `promoted_served_at` and up to this version may be lost.
    pub newest_served_version: u64,
    /// Members that held those changes and are not coming back in time.
    pub newest_holders: Vec<u64>,
}

/// An operator accepts that chain `chain_id`, which waits for members that are gone, resumes
/// from the best member still up: the one that served last (one that did not lose power
/// first). Changes only the missing members held are lost; the chain's loss epoch moves so
/// that clients with unsynced writes learn it at their next sync.
pub(super) fn accept_loss(txn: &mut Txn<'_>, services: &[DataServiceRecord], chain_id: u64) -> NsResult<LossAccepted> {
    let state: States = services.iter().map(|s| (s.id, s.state)).collect();
    let mut chain: ChainRecord = txn
        .get_record(SPACE_CLUSTER, &keys::chain(chain_id))?
        .ok_or_else(|| NsError::fs(Errno::ENOENT, format!("chain {chain_id} does not exist")))?;
    if chain.is_serving() {
        return Err(NsError::fs(
            Errno::EINVAL,
            format!("chain {chain_id} has a serving member; there is no loss to accept"),
        ));
    }
    let candidate = chain
        .targets
        .iter()
        .map(|t| t.data_service_id)
        .filter(|id| is_available(&state, *id))
        .max_by_key(|id| {
            (
                chain.served_at(*id),
                !chain.suspect.contains(id),
                std::cmp::Reverse(*id),
            )
        });
    let Some(promoted) = candidate else {
        return Err(NsError::fs(
            Errno::EAGAIN,
            format!(
                "no member of chain {chain_id} is up to resume from; start one of data services {:?} first",
                chain.missing
            ),
        ));
    };
    let accepted = LossAccepted {
        promoted,
        promoted_served_at: chain.served_at(promoted),
        newest_served_version: chain.served_version,
        newest_holders: chain
            .missing
            .iter()
            .copied()
            .filter(|id| chain.is_current(*id))
            .collect(),
        chain: chain.clone(),
    };
    chain.loss_epoch += 1;
    promote(&mut chain, promoted);
    bump_version(&mut chain);
    store_chain(txn, &chain);
    let mut counters = counters(txn)?;
    counters.chain_table_version += 1;
    store_counters(txn, &counters);
    Ok(LossAccepted { chain, ..accepted })
}
