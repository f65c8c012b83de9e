//! The chain table's maintenance, applied through the state machine's own entry point on a
//! real RocksDB: chain creation and balance, failure, return, fill, removal and draining,
//! and garbage acknowledgement.

use std::collections::BTreeSet;

use shoal_engine::{Durability, KvEngine, RocksEngine, RocksOptions};
use shoal_registry::cluster::{self, ChainTable};
use shoal_registry::command::{Command, CommandResult, NamespaceOp, Outcome, Proposal, VolumeSpec};
use shoal_registry::execute::execute;
use shoal_registry::keys::STATE_SPACES;
use shoal_registry::records::{DataServiceState, DiskRecord, FileType};

struct State {
    engine: RocksEngine,
    clock_ns: i64,
    _dir: tempfile::TempDir,
}

impl State {
    fn new() -> State {
        let dir = tempfile::tempdir().unwrap();
        let engine = RocksEngine::open(dir.path(), STATE_SPACES, &RocksOptions::default()).unwrap();
        State {
            engine,
            clock_ns: 1,
            _dir: dir,
        }
    }

    fn run(&mut self, command: Command) -> CommandResult {
        self.clock_ns += 1;
        let proposal = Proposal {
            request_id: None,
            now_ns: self.clock_ns,
            command,
        };
        let (batch, result) = execute(&self.engine, &proposal).expect("no storage fault");
        self.engine.write(batch, Durability::Buffered).unwrap();
        result
    }

    fn register(&mut self, uuid: &str, zone: &str) -> u64 {
        let disks = vec![DiskRecord {
            path: "/d".into(),
            capacity_bytes: 100,
            free_bytes: 50,
            healthy: true,
        }];
        let command = Command::RegisterDataService {
            uuid: uuid.into(),
            address: format!("{uuid}:1"),
            zone: zone.into(),
            disks,
        };
        self.registered(command)
    }

    /// `uuid` registers again after its machine may have lost power.
    fn register_after_power_loss(&mut self, uuid: &str) -> u64 {
        let command = Command::RegisterDataServiceAfterPowerLoss {
            uuid: uuid.into(),
            address: format!("{uuid}:1"),
            zone: String::new(),
            disks: Vec::new(),
        };
        self.registered(command)
    }

    fn registered(&mut self, command: Command) -> u64 {
        match self.run(command) {
            Ok(Outcome::DataService(record)) => record.id,
            other => panic!("register failed: {other:?}"),
        }
    }

    fn set_state(&mut self, id: u64, state: DataServiceState) {
        self.run(Command::SetDataServiceState { id, state })
            .expect("state change");
    }

    /// Creates a file striped over every chain of every replication factor, so that all
    /// chains hold (notional) data and are no longer free to move.
    fn use_all_chains(&mut self) {
        for replicas in 1..=4u32 {
            let spec = VolumeSpec {
                name: format!("use{replicas}"),
                replicas,
                quota_bytes: 0,
                quota_inodes: 0,
                stripe_width: 64,
                chunk_size_bytes: 0,
                root_uid: 0,
                root_gid: 0,
                root_mode: 0,
            };
            let Ok(Outcome::Volume(info)) = self.run(Command::CreateVolume { spec }) else {
                panic!("volume")
            };
            let op = NamespaceOp::Create {
                parent: 1,
                name: b"wide".to_vec(),
                file_type: FileType::Regular,
                mode: 0o644,
                uid: 0,
                gid: 0,
                rdev: 0,
                exclusive: true,
            };
            self.run(Command::Namespace {
                volume_id: info.record.id,
                op,
            })
            .unwrap();
        }
        assert!(self.table().chains.iter().all(|c| c.used));
    }

    fn table(&self) -> ChainTable {
        cluster::chain_table(&self.engine).unwrap()
    }
}

fn targets(table: &ChainTable, replicas: u32) -> Vec<Vec<(u64, bool)>> {
    table
        .chains
        .iter()
        .filter(|c| c.replicas == replicas)
        .map(|c| c.targets.iter().map(|t| (t.data_service_id, t.serving)).collect())
        .collect()
}

#[test]
fn chains_are_created_balanced_and_spread_over_zones() {
    let mut state = State::new();
    let ids: Vec<u64> = (0..4)
        .map(|i| state.register(&format!("ds{i}"), &format!("z{}", i % 2)))
        .collect();
    let table = state.table();
    for replicas in 1..=3u32 {
        let chains = targets(&table, replicas);
        assert_eq!(chains.len(), 4, "replicas {replicas}: one chain per data service");
        let heads: BTreeSet<u64> = chains.iter().map(|c| c[0].0).collect();
        assert_eq!(heads.len(), 4, "replicas {replicas}: every service heads one chain");
        for chain in &chains {
            assert_eq!(chain.len(), replicas as usize);
            let members: BTreeSet<u64> = chain.iter().map(|t| t.0).collect();
            assert_eq!(members.len(), chain.len(), "a chain holds distinct services");
            assert!(chain.iter().all(|t| t.1), "new chains serve at once");
        }
        for id in &ids {
            let memberships = chains.iter().filter(|c| c.iter().any(|t| t.0 == *id)).count();
            assert_eq!(
                memberships, replicas as usize,
                "service {id} is in {memberships} chains of {replicas}"
            );
        }
    }
    // Two zones: chains of two copies never put both in one zone.
    for chain in targets(&table, 2) {
        let zones: BTreeSet<u64> = chain.iter().map(|t| (t.0 - 1) % 2).collect();
        assert_eq!(zones.len(), 2, "chain {chain:?} has both copies in one zone");
    }
    assert!(targets(&table, 5).is_empty(), "five copies need five services");
}

#[test]
fn failure_return_fill_removal_and_draining() {
    let mut state = State::new();
    let ids: Vec<u64> = (0..4).map(|i| state.register(&format!("ds{i}"), "")).collect();
    state.use_all_chains();
    let before = state.table();
    let victim = ids[1];
    state.set_state(victim, DataServiceState::Down);
    let down = state.table();
    assert!(down.version > before.version);
    for chain in &down.chains {
        assert!(!chain.has_target(victim), "a down service leaves chain {}", chain.id);
        let old = before.chains.iter().find(|c| c.id == chain.id).unwrap();
        if old.has_target(victim) {
            assert_eq!(chain.missing, vec![victim]);
            assert_eq!(chain.version, old.version + 1);
        } else {
            assert_eq!(chain.version, old.version, "untouched chains keep their version");
        }
    }
    // Back: at the tail, filled before it serves (or at once where it is alone).
    state.set_state(victim, DataServiceState::Up);
    let back = state.table();
    for chain in back.chains.iter().filter(|c| c.has_target(victim)) {
        let last = chain.targets.last().unwrap();
        assert_eq!(
            last.data_service_id, victim,
            "chain {} puts the returning service last",
            chain.id
        );
        let others_serving = chain.targets.iter().any(|t| t.data_service_id != victim && t.serving);
        assert_eq!(last.serving, !others_serving, "chain {}", chain.id);
        if !last.serving {
            let done = state.run(Command::ChainSyncDone {
                chain_id: chain.id,
                chain_version: chain.version - 1,
                data_service_id: victim,
            });
            assert_eq!(
                done.unwrap_err().errno,
                shoal_proto::errno::Errno::ESTALE,
                "a stale sync is refused"
            );
            state
                .run(Command::ChainSyncDone {
                    chain_id: chain.id,
                    chain_version: chain.version,
                    data_service_id: victim,
                })
                .unwrap();
        }
    }
    assert!(state.table().chains.iter().all(|c| c.targets.iter().all(|t| t.serving)));

    // Removed for good: replaced by another service, which must be filled.
    let removed = ids[0];
    state.set_state(removed, DataServiceState::Removed);
    let table = state.table();
    for chain in &table.chains {
        assert!(!chain.has_target(removed) && !chain.missing.contains(&removed));
        let expected = (chain.replicas as usize).min(3);
        assert_eq!(
            chain.targets.len(),
            expected,
            "chain {} was given a replacement",
            chain.id
        );
    }
    assert!(
        state
            .run(Command::SetDataServiceState {
                id: removed,
                state: DataServiceState::Up
            })
            .is_err(),
        "removal is final"
    );
    for chain in table.chains.iter().filter(|c| c.targets.iter().any(|t| !t.serving)) {
        let filling = chain.targets.iter().find(|t| !t.serving).unwrap();
        state
            .run(Command::ChainSyncDone {
                chain_id: chain.id,
                chain_version: chain.version,
                data_service_id: filling.data_service_id,
            })
            .unwrap();
    }

    // Draining: stays until its replacement serves, then leaves.
    let draining = ids[2];
    state.set_state(draining, DataServiceState::Draining);
    let table = state.table();
    let chain = table
        .chains
        .iter()
        .find(|c| c.has_target(draining) && c.replicas == 2)
        .unwrap()
        .clone();
    let replacement = chain
        .targets
        .iter()
        .find(|t| !t.serving)
        .expect("a replacement is being filled");
    state
        .run(Command::ChainSyncDone {
            chain_id: chain.id,
            chain_version: chain.version,
            data_service_id: replacement.data_service_id,
        })
        .unwrap();
    let after = state.table();
    let chain = after.chains.iter().find(|c| c.id == chain.id).unwrap();
    assert!(
        !chain.has_target(draining),
        "the drained service left once its replacement served"
    );
}

/// A chain whose only serving member fails while another is still being filled: the one
/// being filled holds a partial copy and must not head the chain. When the complete one
/// returns it serves at once, at the head, and fills the other.
#[test]
fn a_complete_member_returning_to_a_chain_without_one_rejoins_at_the_head() {
    let mut state = State::new();
    let ids: Vec<u64> = (0..2).map(|i| state.register(&format!("ds{i}"), "")).collect();
    state.use_all_chains();
    let chain_id = state.table().chains.iter().find(|c| c.replicas == 2).unwrap().id;
    let chain = |state: &State| {
        let table = state.table();
        let chain = table.chains.iter().find(|c| c.id == chain_id).unwrap();
        chain
            .targets
            .iter()
            .map(|t| (t.data_service_id, t.serving))
            .collect::<Vec<_>>()
    };
    let [first, second] = [chain(&state)[0].0, chain(&state)[1].0];
    assert!(ids.contains(&first) && ids.contains(&second));
    // The second leaves and returns: it is being filled behind the first.
    state.set_state(second, DataServiceState::Down);
    state.set_state(second, DataServiceState::Up);
    assert_eq!(chain(&state), vec![(first, true), (second, false)]);
    // The first fails before the fill ends: nobody serves.
    state.set_state(first, DataServiceState::Down);
    assert_eq!(chain(&state), vec![(second, false)]);
    // It returns: serving, at the head, ahead of the partial copy.
    state.set_state(first, DataServiceState::Up);
    assert_eq!(chain(&state), vec![(first, true), (second, false)]);
}

#[test]
fn unused_chains_move_but_used_chains_keep_their_targets() {
    let mut state = State::new();
    state.register("a", "");
    state.register("b", "");
    state.use_all_chains();
    let used = state.table();
    state.register("c", "");
    let after = state.table();
    for chain in &used.chains {
        let now = after.chains.iter().find(|c| c.id == chain.id).unwrap();
        assert_eq!(now.targets, chain.targets, "used chain {} must not move", chain.id);
    }
}

#[test]
fn garbage_is_forgotten_once_every_holder_acknowledged() {
    let mut state = State::new();
    let ids: Vec<u64> = (0..3).map(|i| state.register(&format!("ds{i}"), "")).collect();
    let volume_id = match state.run(Command::CreateVolume {
        spec: VolumeSpec {
            name: "v".into(),
            replicas: 2,
            quota_bytes: 0,
            quota_inodes: 0,
            stripe_width: 1,
            chunk_size_bytes: 0,
            root_uid: 0,
            root_gid: 0,
            root_mode: 0,
        },
    }) {
        Ok(Outcome::Volume(info)) => info.record.id,
        other => panic!("{other:?}"),
    };
    let create = NamespaceOp::Create {
        parent: 1,
        name: b"f".to_vec(),
        file_type: FileType::Regular,
        mode: 0o644,
        uid: 0,
        gid: 0,
        rdev: 0,
        exclusive: true,
    };
    let ino = match state.run(Command::Namespace { volume_id, op: create }) {
        Ok(Outcome::Attr(attr)) => attr.ino,
        other => panic!("{other:?}"),
    };
    state
        .run(Command::Namespace {
            volume_id,
            op: NamespaceOp::Unlink {
                parent: 1,
                name: b"f".to_vec(),
            },
        })
        .unwrap();
    let holders: Vec<u64> = ids
        .iter()
        .copied()
        .filter(|id| cluster::list_garbage(&state.engine, *id, 10).unwrap().files == vec![(volume_id, ino)])
        .collect();
    assert_eq!(holders.len(), 2, "a file on one chain of two copies has two holders");
    state
        .run(Command::AckGarbage {
            data_service_id: holders[0],
            files: vec![(volume_id, ino)],
            volumes: vec![],
        })
        .unwrap();
    assert!(
        cluster::list_garbage(&state.engine, holders[0], 10)
            .unwrap()
            .files
            .is_empty()
    );
    assert_eq!(
        cluster::list_garbage(&state.engine, holders[1], 10).unwrap().files,
        vec![(volume_id, ino)]
    );
    state
        .run(Command::AckGarbage {
            data_service_id: holders[1],
            files: vec![(volume_id, ino)],
            volumes: vec![],
        })
        .unwrap();
    for id in &ids {
        assert!(cluster::list_garbage(&state.engine, *id, 10).unwrap().files.is_empty());
    }
    state.run(Command::DeleteVolume { name: "v".into() }).unwrap();
    for id in &ids {
        assert_eq!(
            cluster::list_garbage(&state.engine, *id, 10).unwrap().volumes,
            vec![volume_id]
        );
        state
            .run(Command::AckGarbage {
                data_service_id: *id,
                files: vec![],
                volumes: vec![volume_id],
            })
            .unwrap();
    }
    assert!(
        cluster::list_garbage(&state.engine, ids[0], 10)
            .unwrap()
            .volumes
            .is_empty(),
        "acknowledged by all, forgotten"
    );
}

/// The first two-member chain's targets as (id, serving), and the chain itself.
fn two_copy_chain(state: &State, chain_id: u64) -> (Vec<(u64, bool)>, shoal_registry::records::ChainRecord) {
    let table = state.table();
    let chain = table.chains.iter().find(|c| c.id == chain_id).unwrap().clone();
    let targets = chain.targets.iter().map(|t| (t.data_service_id, t.serving)).collect();
    (targets, chain)
}

fn used_two_copy_chain(ids_wanted: usize) -> (State, Vec<u64>, u64) {
    let mut state = State::new();
    let ids: Vec<u64> = (0..ids_wanted).map(|i| state.register(&format!("ds{i}"), "")).collect();
    state.use_all_chains();
    let chain_id = state.table().chains.iter().find(|c| c.replicas == 2).unwrap().id;
    (state, ids, chain_id)
}

/// Chain [A, B]: B dies, A takes writes alone, A dies. B returns first: it missed A's
/// acknowledged changes, so it must not serve; the chain waits for A and says so. When A
/// returns it heads the chain, serving, and B is filled from it.
#[test]
fn a_member_that_missed_changes_waits_for_the_one_that_has_them() {
    let (mut state, _, chain_id) = used_two_copy_chain(2);
    let (targets, _) = two_copy_chain(&state, chain_id);
    let [a, b] = [targets[0].0, targets[1].0];
    state.set_state(b, DataServiceState::Down);
    state.set_state(a, DataServiceState::Down);
    let (_, chain) = two_copy_chain(&state, chain_id);
    assert_eq!(
        chain.waiting_for(),
        vec![a],
        "the chain waits for the member that served last"
    );
    state.set_state(b, DataServiceState::Up);
    let (targets, chain) = two_copy_chain(&state, chain_id);
    assert_eq!(targets, vec![(b, false)], "the stale member rejoins but does not serve");
    assert_eq!(chain.waiting_for(), vec![a]);
    state.set_state(a, DataServiceState::Up);
    let (targets, chain) = two_copy_chain(&state, chain_id);
    assert_eq!(
        targets,
        vec![(a, true), (b, false)],
        "the current member heads the chain"
    );
    assert!(chain.waiting_for().is_empty());
    assert_eq!(chain.loss_epoch, 0, "nothing was lost");
    state
        .run(Command::ChainSyncDone {
            chain_id,
            chain_version: chain.version,
            data_service_id: b,
        })
        .unwrap();
    let (targets, _) = two_copy_chain(&state, chain_id);
    assert_eq!(targets, vec![(a, true), (b, true)]);
}

/// An operator gives up on the missing current member: the chain resumes from the best
/// member that is up, its loss epoch moves, and the reply says what may be lost.
#[test]
fn accepting_the_loss_resumes_from_the_best_member_left() {
    let (mut state, _, chain_id) = used_two_copy_chain(2);
    let (targets, _) = two_copy_chain(&state, chain_id);
    let [a, b] = [targets[0].0, targets[1].0];
    let refused = state.run(Command::AcceptChainLoss { chain_id }).unwrap_err();
    assert_eq!(
        refused.errno,
        shoal_proto::errno::Errno::EINVAL,
        "a serving chain has no loss to accept"
    );
    state.set_state(b, DataServiceState::Down);
    let (_, b_left) = two_copy_chain(&state, chain_id);
    state.set_state(a, DataServiceState::Down);
    let none_up = state.run(Command::AcceptChainLoss { chain_id }).unwrap_err();
    assert_eq!(
        none_up.errno,
        shoal_proto::errno::Errno::EAGAIN,
        "nobody is up to resume from"
    );
    assert!(none_up.message.contains("start one of"), "{}", none_up.message);
    state.set_state(b, DataServiceState::Up);
    let (_, waiting) = two_copy_chain(&state, chain_id);
    let Ok(Outcome::LossAccepted(accepted)) = state.run(Command::AcceptChainLoss { chain_id }) else {
        panic!("loss accepted")
    };
    assert_eq!(accepted.promoted, b);
    assert_eq!(
        accepted.promoted_served_at,
        b_left.version - 1,
        "b last served before it left"
    );
    assert_eq!(accepted.newest_served_version, waiting.served_version);
    assert_eq!(accepted.newest_holders, vec![a]);
    let (targets, chain) = two_copy_chain(&state, chain_id);
    assert_eq!(targets, vec![(b, true)]);
    assert_eq!(chain.loss_epoch, 1);
    // When a returns it is stale now: it is filled from b.
    state.set_state(a, DataServiceState::Up);
    let (targets, _) = two_copy_chain(&state, chain_id);
    assert_eq!(targets, vec![(b, true), (a, false)]);
}

/// A data service back from a possible power loss may lack acknowledged but unsynced
/// writes: where another member serves, it is filled from it; where it served alone, the
/// chain resumes from it and its loss epoch moves; where it had already missed changes, it
/// waits for the member that has them like any other stale member.
#[test]
fn a_member_back_from_a_power_loss_is_a_suspect() {
    let (mut state, _, chain_id) = used_two_copy_chain(2);
    let (targets, before) = two_copy_chain(&state, chain_id);
    let [a, b] = [targets[0].0, targets[1].0];
    let uuid = |id: u64| format!("ds{}", id - 1);
    // With its partner serving: it rejoins behind it, to be filled.
    state.register_after_power_loss(&uuid(a));
    let (targets, chain) = two_copy_chain(&state, chain_id);
    assert_eq!(targets, vec![(b, true), (a, false)]);
    assert_eq!(chain.suspect, vec![a]);
    assert_eq!(chain.loss_epoch, before.loss_epoch);
    state
        .run(Command::ChainSyncDone {
            chain_id,
            chain_version: chain.version,
            data_service_id: a,
        })
        .unwrap();
    let (_, chain) = two_copy_chain(&state, chain_id);
    assert!(chain.suspect.is_empty(), "serving again clears the suspicion");

    // Alone: b fails, then a's machine loses power.
    state.set_state(b, DataServiceState::Down);
    state.register_after_power_loss(&uuid(a));
    let (targets, chain) = two_copy_chain(&state, chain_id);
    assert_eq!(targets, vec![(a, true)], "nobody else has its changes: it resumes");
    assert_eq!(
        chain.loss_epoch,
        before.loss_epoch + 1,
        "clients with unsynced writes must learn it"
    );

    // Fill b again; then a fails first and b after it (b has every change), and a comes
    // back after a power loss: it waits for b.
    state.set_state(b, DataServiceState::Up);
    let (_, chain) = two_copy_chain(&state, chain_id);
    state
        .run(Command::ChainSyncDone {
            chain_id,
            chain_version: chain.version,
            data_service_id: b,
        })
        .unwrap();
    state.set_state(a, DataServiceState::Down);
    state.set_state(b, DataServiceState::Down);
    state.register_after_power_loss(&uuid(a));
    let (targets, chain) = two_copy_chain(&state, chain_id);
    assert_eq!(chain.waiting_for(), vec![b]);
    assert_eq!(
        targets,
        vec![(a, false)],
        "a suspect waits while a current member may return"
    );
    state.set_state(b, DataServiceState::Up);
    let (targets, chain) = two_copy_chain(&state, chain_id);
    assert_eq!(
        targets,
        vec![(b, true), (a, false)],
        "the member that kept its writes resumes"
    );
    assert_eq!(chain.loss_epoch, before.loss_epoch + 1, "and nothing more was lost");
}

/// Chain records written before serving versions were kept still decode, as if every
/// serving target had served at the current version.
#[test]
fn chain_records_of_the_first_format_still_decode() {
    use shoal_registry::records::{ChainRecord, ChainTarget, Record};
    #[derive(serde::Serialize)]
    struct Old {
        id: u64,
        version: u64,
        replicas: u32,
        targets: Vec<ChainTarget>,
        missing: Vec<u64>,
        used: bool,
    }
    let old = Old {
        id: 7,
        version: 4,
        replicas: 2,
        targets: vec![
            ChainTarget {
                data_service_id: 1,
                serving: true,
            },
            ChainTarget {
                data_service_id: 2,
                serving: false,
            },
        ],
        missing: vec![3],
        used: true,
    };
    let bytes = postcard::to_extend(&old, vec![1u8]).unwrap();
    let chain = ChainRecord::decode(&bytes).unwrap();
    assert_eq!((chain.id, chain.version, chain.missing.clone()), (7, 4, vec![3]));
    assert!(chain.is_current(1) && !chain.is_current(2) && !chain.is_current(3));
    assert_eq!(ChainRecord::decode(&chain.encode()).unwrap(), chain);
}
