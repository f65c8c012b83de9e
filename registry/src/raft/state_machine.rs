//! The replicated state machine: applies committed proposals to an engine instance, builds
//! snapshots from a point-in-time view, and installs snapshots crash-atomically.
//!
//! On disk (under the node's data directory):
//! - `state/gen-NNNNNN/`: the engine instance holding the state; `state/CURRENT` names the
//!   live generation. Installing a snapshot builds the next generation beside the live one
//!   and switches `CURRENT` with an atomic rename, so a crash leaves either the old or the
//!   new state, never a mix.
//! - `snapshots/current.snap`: the last snapshot built or installed.
//!
//! Invariant: `last_applied` is written in the same atomic batch as the entry's effects.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::TryStreamExt;
use openraft::entry::RaftEntry;
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use shoal_engine::{Durability, KvEngine, KvRead, RocksOptions, ScanControl, WriteBatch};

use super::snapshot_file::{self, SnapshotData, SnapshotWriter};
use super::{LogId, Snapshot, SnapshotMeta, StoredMembership, TypeConfig, decode, encode, io_error};
use crate::command::Outcome;
use crate::execute::execute;
use crate::keys::{META_LAST_APPLIED, META_LAST_MEMBERSHIP, SPACE_META, STATE_SPACES};

const CURRENT_FILE: &str = "CURRENT";
const SNAPSHOT_FILE: &str = "current.snap";
/// Install writes the snapshot into the new engine in batches of about this size.
const INSTALL_BATCH_BYTES: usize = 4 << 20;
/// How long a replaced engine generation may stay open for in-flight reads before its
/// directory is left for the next start to remove.
const RETIRE_WAIT_MS: u64 = 60_000;

/// Shared access to the live state: the state machine applies through it, the gRPC
/// services read through it.
#[derive(Clone)]
pub struct StateHandle {
    inner: Arc<StateInner>,
}

struct StateInner {
    state_dir: PathBuf,
    snapshot_dir: PathBuf,
    engine: RwLock<Arc<dyn KvEngine>>,
    generation: Mutex<u64>,
    unique: AtomicU64,
    /// Snapshots received from a leader (InstallSnapshot) and installed.
    snapshots_received: AtomicU64,
    /// Snapshots restored from this node's own snapshot file at start.
    snapshots_restored: AtomicU64,
}

fn generation_dir(state_dir: &Path, generation: u64) -> PathBuf {
    state_dir.join(format!("gen-{generation:06}"))
}

fn open_engine(path: &Path) -> io::Result<Arc<dyn KvEngine>> {
    shoal_engine::open(path, STATE_SPACES, &RocksOptions::default())
        .map(Arc::from)
        .map_err(|e| io_error("open state", e))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

/// Replaces `target` with `source` atomically and durably.
fn publish(source: &Path, target: &Path) -> io::Result<()> {
    fs::rename(source, target)?;
    sync_dir(target.parent().expect("published files live in a directory"))
}

impl StateHandle {
    /// Opens the live generation under `data_dir`, removing leftovers of interrupted
    /// installs and snapshot builds.
    pub fn open(data_dir: &Path) -> anyhow::Result<StateHandle> {
        let state_dir = data_dir.join("state");
        let snapshot_dir = data_dir.join("snapshots");
        fs::create_dir_all(&state_dir)?;
        fs::create_dir_all(&snapshot_dir)?;
        let current_path = state_dir.join(CURRENT_FILE);
        let generation = match fs::read_to_string(&current_path) {
            Ok(text) => text.trim().parse::<u64>().map_err(|e| {
                anyhow::anyhow!(
                    "{} is damaged ({e}); restore the node from a peer",
                    current_path.display()
                )
            })?,
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                write_current(&state_dir, 1)?;
                1
            }
            Err(error) => return Err(error.into()),
        };
        for entry in fs::read_dir(&state_dir)? {
            let path = entry?.path();
            let stale = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|name| name.starts_with("gen-") && path != generation_dir(&state_dir, generation));
            if stale {
                tracing::info!(path = %path.display(), "removing a state generation left by an interrupted install");
                fs::remove_dir_all(&path)?;
            }
        }
        for entry in fs::read_dir(&snapshot_dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|ext| ext == "tmp") {
                fs::remove_file(&path)?;
            }
        }
        let engine = open_engine(&generation_dir(&state_dir, generation))?;
        Ok(StateHandle {
            inner: Arc::new(StateInner {
                state_dir,
                snapshot_dir,
                engine: RwLock::new(engine),
                generation: Mutex::new(generation),
                unique: AtomicU64::new(0),
                snapshots_received: AtomicU64::new(0),
                snapshots_restored: AtomicU64::new(0),
            }),
        })
    }

    /// The live engine. Readers hold the returned handle for one request at most.
    pub fn engine(&self) -> Arc<dyn KvEngine> {
        self.inner.engine.read().expect("state lock poisoned").clone()
    }

    /// Snapshots installed since this process started (received from a leader or restored).
    pub fn snapshots_installed(&self) -> u64 {
        self.snapshots_received() + self.snapshots_restored()
    }

    /// Snapshots received from a leader and installed since this process started: the
    /// proof that a lagging node caught up through InstallSnapshot, not through its log.
    pub fn snapshots_received(&self) -> u64 {
        self.inner.snapshots_received.load(Ordering::Relaxed)
    }

    /// Snapshots restored from this node's own snapshot file at start (openraft installs the
    /// last snapshot when the state machine is behind it, e.g. after a crash mid-install).
    pub fn snapshots_restored(&self) -> u64 {
        self.inner.snapshots_restored.load(Ordering::Relaxed)
    }

    /// The last log index the current snapshot covers, if there is one.
    pub fn snapshot_last_index(&self) -> Option<u64> {
        let snapshot = self.current_snapshot().ok()??;
        snapshot.meta.last_log_id.map(|log_id| log_id.index)
    }

    /// A fresh path for a snapshot being received or built.
    pub fn temporary_snapshot_path(&self, purpose: &str) -> PathBuf {
        let n = self.inner.unique.fetch_add(1, Ordering::Relaxed);
        self.inner
            .snapshot_dir
            .join(format!("{purpose}-{}-{n}.tmp", std::process::id()))
    }

    fn current_snapshot_path(&self) -> PathBuf {
        self.inner.snapshot_dir.join(SNAPSHOT_FILE)
    }

    /// Last applied log id and membership, as recorded in `read`.
    fn applied(read: &dyn KvRead) -> io::Result<(Option<LogId>, StoredMembership)> {
        let last_applied = match read
            .get(SPACE_META, META_LAST_APPLIED)
            .map_err(|e| io_error("read state", e))?
        {
            Some(bytes) => decode::<Option<LogId>>(&bytes, "last applied log id")?,
            None => None,
        };
        let membership = match read
            .get(SPACE_META, META_LAST_MEMBERSHIP)
            .map_err(|e| io_error("read state", e))?
        {
            Some(bytes) => decode::<StoredMembership>(&bytes, "last membership")?,
            None => StoredMembership::default(),
        };
        Ok((last_applied, membership))
    }

    fn build_snapshot(&self) -> io::Result<Snapshot> {
        let engine = self.engine();
        let view = engine.view();
        let (last_log_id, last_membership) = Self::applied(view.as_ref())?;
        let meta = SnapshotMeta {
            last_log_id,
            last_membership,
        };
        let temporary = self.temporary_snapshot_path("build");
        let mut writer = SnapshotWriter::create(&temporary, &meta)?;
        for (index, space) in STATE_SPACES.iter().enumerate() {
            let mut failure = None;
            view.scan(
                space,
                &[],
                None,
                &mut |key, value| match writer.record(index as u8, key, value) {
                    Ok(()) => ScanControl::Continue,
                    Err(error) => {
                        failure = Some(error);
                        ScanControl::Stop
                    }
                },
            )
            .map_err(|e| io_error("scan state for snapshot", e))?;
            if let Some(error) = failure {
                let _ = fs::remove_file(&temporary);
                return Err(error);
            }
        }
        let file = writer.finish()?;
        let _guard = self.inner.generation.lock().expect("generation lock poisoned");
        let current = self.current_snapshot_path();
        let newer_exists = match SnapshotData::open(&current) {
            Ok(mut existing) => snapshot_file::read_meta(&mut existing.file, &current)?.last_log_id >= meta.last_log_id,
            Err(_) => false,
        };
        if newer_exists {
            // An install overtook this build; keep the newer snapshot. The open file stays
            // readable after unlinking.
            fs::remove_file(&temporary)?;
            return Ok(Snapshot {
                meta,
                snapshot: SnapshotData { file, path: temporary },
            });
        }
        publish(&temporary, &current)?;
        tracing::info!(last_log_id = ?meta.last_log_id, "built snapshot");
        Ok(Snapshot {
            meta,
            snapshot: SnapshotData { file, path: current },
        })
    }

    fn install_snapshot(&self, meta: &SnapshotMeta, mut data: SnapshotData) -> io::Result<()> {
        let mut generation = self.inner.generation.lock().expect("generation lock poisoned");
        let next = *generation + 1;
        let next_dir = generation_dir(&self.inner.state_dir, next);
        if next_dir.exists() {
            fs::remove_dir_all(&next_dir)?;
        }
        let engine = open_engine(&next_dir)?;
        let loaded = (|| {
            let mut batch = WriteBatch::new();
            let file_meta = snapshot_file::read_records(&mut data.file, &data.path, &mut |space, key, value| {
                let space = STATE_SPACES.get(space as usize).ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("snapshot names unknown key space {space}"),
                    )
                })?;
                batch.put(space, key.to_vec(), value.to_vec());
                if batch.size_bytes() >= INSTALL_BATCH_BYTES {
                    engine
                        .write(std::mem::take(&mut batch), Durability::Buffered)
                        .map_err(|e| io_error("install snapshot", e))?;
                }
                Ok(())
            })?;
            if file_meta.last_log_id != meta.last_log_id {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "snapshot file holds {:?}, expected {:?}",
                        file_meta.last_log_id, meta.last_log_id
                    ),
                ));
            }
            batch.put(SPACE_META, META_LAST_APPLIED.to_vec(), encode(&meta.last_log_id));
            batch.put(SPACE_META, META_LAST_MEMBERSHIP.to_vec(), encode(&meta.last_membership));
            engine
                .write(batch, Durability::Buffered)
                .map_err(|e| io_error("install snapshot", e))?;
            engine.flush().map_err(|e| io_error("install snapshot", e))
        })();
        if let Err(error) = loaded {
            drop(engine);
            let _ = fs::remove_dir_all(&next_dir);
            return Err(error);
        }
        // Keep the snapshot first, then switch the state: a crash in between restarts
        // with a snapshot newer than the state, which openraft installs again.
        let current = self.current_snapshot_path();
        // A snapshot from a leader arrives in a temporary file (see `PeerService`); a restore
        // at start reads this node's own current snapshot file.
        let received = data.path != current;
        if received {
            publish(&data.path, &current)?;
        }
        write_current(&self.inner.state_dir, next)?;
        let old = std::mem::replace(&mut *self.inner.engine.write().expect("state lock poisoned"), engine);
        let old_dir = generation_dir(&self.inner.state_dir, *generation);
        *generation = next;
        drop(generation);
        retire(old, old_dir);
        let counter = if received {
            &self.inner.snapshots_received
        } else {
            &self.inner.snapshots_restored
        };
        counter.fetch_add(1, Ordering::Relaxed);
        tracing::info!(last_log_id = ?meta.last_log_id, generation = next, received, "installed snapshot");
        Ok(())
    }

    fn current_snapshot(&self) -> io::Result<Option<Snapshot>> {
        let _guard = self.inner.generation.lock().expect("generation lock poisoned");
        let path = self.current_snapshot_path();
        let mut data = match SnapshotData::open(&path) {
            Ok(data) => data,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(error),
        };
        let meta = snapshot_file::read_meta(&mut data.file, &path)?;
        Ok(Some(Snapshot { meta, snapshot: data }))
    }
}

fn write_current(state_dir: &Path, generation: u64) -> io::Result<()> {
    let temporary = state_dir.join("CURRENT.tmp");
    let mut file = fs::File::create(&temporary)?;
    io::Write::write_all(&mut file, format!("{generation}\n").as_bytes())?;
    file.sync_all()?;
    publish(&temporary, &state_dir.join(CURRENT_FILE))
}

/// Closes a replaced engine once no reader holds it, then deletes its directory.
fn retire(engine: Arc<dyn KvEngine>, dir: PathBuf) {
    let spawned = std::thread::Builder::new().name("retire-state".into()).spawn(move || {
        let poll = Duration::from_millis(100);
        let mut waited_ms = 0;
        while Arc::strong_count(&engine) > 1 && waited_ms < RETIRE_WAIT_MS {
            std::thread::sleep(poll);
            waited_ms += poll.as_millis() as u64;
        }
        if Arc::strong_count(&engine) > 1 {
            tracing::warn!(dir = %dir.display(), "old state still in use; it is removed at next start");
            return;
        }
        drop(engine);
        if let Err(error) = fs::remove_dir_all(&dir) {
            tracing::warn!(dir = %dir.display(), %error, "could not remove old state generation");
        }
    });
    if let Err(error) = spawned {
        tracing::warn!(%error, "could not start state retirement; the old generation is removed at next start");
    }
}

/// openraft's view of the state: apply, snapshot, install.
pub struct StateMachine {
    handle: StateHandle,
}

impl StateMachine {
    pub fn new(handle: StateHandle) -> StateMachine {
        StateMachine { handle }
    }
}

pub struct SnapshotBuilder {
    handle: StateHandle,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let handle = self.handle.clone();
        tokio::task::spawn_blocking(move || handle.build_snapshot())
            .await
            .map_err(|e| io_error("build snapshot", e))?
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        StateHandle::applied(self.handle.engine().as_ref())
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: futures::Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        let engine = self.handle.engine();
        while let Some((entry, responder)) = entries.try_next().await? {
            let log_id = entry.log_id();
            let (mut batch, result) = match &entry.payload {
                EntryPayload::Blank => (WriteBatch::new(), Ok(Outcome::Done)),
                EntryPayload::Normal(proposal) => execute(engine.as_ref(), proposal)
                    .map_err(|fault| io_error(format!("apply {log_id} ({proposal})"), fault))?,
                EntryPayload::Membership(membership) => {
                    let mut batch = WriteBatch::new();
                    let stored = StoredMembership::new(Some(log_id), membership.clone());
                    batch.put(SPACE_META, META_LAST_MEMBERSHIP.to_vec(), encode(&stored));
                    (batch, Ok(Outcome::Done))
                }
            };
            batch.put(SPACE_META, META_LAST_APPLIED.to_vec(), encode(&Some(log_id)));
            engine
                .write(batch, Durability::Buffered)
                .map_err(|e| io_error(format!("apply {log_id}"), e))?;
            if let Some(responder) = responder {
                responder.send(result);
            }
        }
        Ok(())
    }

    async fn try_create_snapshot_builder(&mut self, _force: bool) -> Option<Self::SnapshotBuilder> {
        Some(SnapshotBuilder {
            handle: self.handle.clone(),
        })
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            handle: self.handle.clone(),
        }
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: SnapshotData) -> Result<(), io::Error> {
        let handle = self.handle.clone();
        let meta = meta.clone();
        tokio::task::spawn_blocking(move || handle.install_snapshot(&meta, snapshot))
            .await
            .map_err(|e| io_error("install snapshot", e))?
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        let handle = self.handle.clone();
        tokio::task::spawn_blocking(move || handle.current_snapshot())
            .await
            .map_err(|e| io_error("read current snapshot", e))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installs_count_received_and_restored_apart() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let handle = StateHandle::open(dir.path()).map_err(|e| io::Error::other(format!("{e:#}")))?;
        let built = handle.build_snapshot()?;
        // A copy in a temporary file stands for a snapshot streamed from a leader.
        let incoming = handle.temporary_snapshot_path("incoming");
        fs::copy(&built.snapshot.path, &incoming)?;
        handle.install_snapshot(&built.meta, SnapshotData::open(&incoming)?)?;
        assert_eq!((handle.snapshots_received(), handle.snapshots_restored()), (1, 0));
        assert!(!incoming.exists(), "the received file became the current snapshot");
        // The node's own current snapshot, as openraft installs it at start when the state
        // is behind it.
        let current = handle.current_snapshot()?.expect("a current snapshot");
        handle.install_snapshot(&current.meta, current.snapshot)?;
        assert_eq!((handle.snapshots_received(), handle.snapshots_restored()), (1, 1));
        assert_eq!(handle.snapshots_installed(), 2);
        Ok(())
    }
}
