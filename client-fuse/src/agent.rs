//! `shoal agent`: one long-lived process per node that owns the FUSE session of every Shoal
//! volume mounted on the node.
//!
//! Why a process of its own: the kernel cannot hand a FUSE mount to a new daemon, so a
//! mount dies ("transport endpoint is not connected") with the process that serves it. The
//! CSI node plugin is restarted whenever Kubernetes likes (upgrades, evictions, crashes);
//! if it served the mounts, every pod on the node would lose its volume each time. The
//! plugin therefore only asks this agent, over a unix socket, to mount and unmount, and
//! keeps no state of its own. One agent also means one memory budget for the node
//! ([`crate::budget`]) instead of one daemon, and one budget, per volume.
//!
//! Invariant: every mount the agent serves is in its table until its session ends, and
//! its memory share is returned when the session ends, however it ends (unmounted by the
//! agent, by `umount` from outside, or by the kernel).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shoal_proto::agent as pb;
use shoal_proto::agent::agent_server::{Agent, AgentServer};
use tonic::{Request, Response, Status};

use crate::budget::{MemoryPool, ShareRequest};
use crate::core::FsCore;
use crate::mount::{MountOptions, Unmounter, mount};
use crate::writes::MIN_WRITE_FLOOR_BYTES;

/// How long an unmount waits for the mount's session to end before it reports failure.
const UNMOUNT_TIMEOUT: Duration = Duration::from_secs(30);
pub use shoal_proto::agent::MAX_MOUNTS;

/// How the agent runs.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub socket: PathBuf,
    pub registry: Vec<String>,
    /// Memory all mounts share: write-back buffers and read-ahead caches.
    pub budget_bytes: u64,
    /// Write-back memory each mount keeps for itself, whatever the others do.
    pub write_floor_bytes: u64,
    /// Read-ahead cache of each mount (a mount's `cache_size` option may ask for less).
    pub read_cache_bytes: u64,
    pub retry_deadline: Duration,
}

impl AgentConfig {
    /// Checks the settings against each other; the message says what to change.
    pub fn validate(&self) -> Result<(), String> {
        if self.write_floor_bytes < MIN_WRITE_FLOOR_BYTES {
            return Err(format!(
                "the per-volume write floor must be at least {MIN_WRITE_FLOOR_BYTES} bytes (two write-back buffers)"
            ));
        }
        let one_mount = self.write_floor_bytes + self.read_cache_bytes + crate::core::session_memory_bytes(1);
        if one_mount > self.budget_bytes {
            return Err(format!(
                "a memory budget of {} bytes cannot hold even one volume's floor, read cache and FUSE buffers ({one_mount} bytes)",
                self.budget_bytes
            ));
        }
        Ok(())
    }
}

/// One mount the agent serves.
struct Served {
    volume: String,
    core: Arc<FsCore>,
    unmounter: Option<Unmounter>,
    ended: tokio::sync::watch::Receiver<bool>,
}

impl Served {
    fn alive(&self) -> bool {
        !*self.ended.borrow()
    }
}

type MountTable = Arc<Mutex<HashMap<PathBuf, Served>>>;

pub struct AgentService {
    config: AgentConfig,
    pool: Arc<MemoryPool>,
    mounts: MountTable,
    /// Mounts and unmounts one at a time: the table and the kernel's view change together.
    changes: tokio::sync::Mutex<()>,
}

fn lock(mounts: &MountTable) -> std::sync::MutexGuard<'_, HashMap<PathBuf, Served>> {
    mounts.lock().expect("agent mount table poisoned")
}

impl AgentService {
    pub fn new(config: AgentConfig) -> AgentService {
        AgentService {
            pool: MemoryPool::new(config.budget_bytes),
            config,
            mounts: Arc::default(),
            changes: tokio::sync::Mutex::new(()),
        }
    }

    fn mount_options(&self, request: &pb::MountRequest) -> Result<(MountOptions, ShareRequest), Status> {
        let mountpoint = checked_mountpoint(&request.mountpoint)?;
        if request.volume.is_empty() {
            return Err(Status::invalid_argument("mount: the volume name is missing"));
        }
        let mut options = MountOptions::new(&request.volume, &mountpoint, self.config.registry.clone());
        options.allow_other = true;
        options.retry_deadline = self.config.retry_deadline;
        options
            .apply_options(&request.options)
            .map_err(|error| Status::invalid_argument(format!("mount options: {error:#}")))?;
        let share = ShareRequest {
            write_floor_bytes: self.config.write_floor_bytes,
            write_ceiling_bytes: options
                .fs
                .write_buffer_memory_bytes()
                .max(self.config.write_floor_bytes),
            read_cache_bytes: options.fs.read_cache_bytes.min(self.config.read_cache_bytes),
            session_bytes: crate::core::session_memory_bytes(options.session_threads),
        };
        Ok((options, share))
    }

    /// Starts serving a new mount on a thread of its own; the table entry goes when the
    /// session ends.
    async fn start(&self, options: MountOptions, share: ShareRequest) -> Result<(), Status> {
        let budget = self
            .pool
            .reserve(share)
            .map_err(|error| Status::resource_exhausted(error.to_string()))?;
        let mut mounted = mount(&options, budget).await.map_err(|error| {
            let text = format!("{error:#}");
            if text.contains("does not exist") {
                Status::not_found(text)
            } else {
                Status::unavailable(text)
            }
        })?;
        let (ended_tx, ended) = tokio::sync::watch::channel(false);
        let served = Served {
            volume: options.volume.clone(),
            core: mounted.core().clone(),
            unmounter: Some(mounted.unmounter()),
            ended,
        };
        let mountpoint = options.mountpoint.clone();
        lock(&self.mounts).insert(mountpoint.clone(), served);
        let mounts = self.mounts.clone();
        std::thread::Builder::new()
            .name(format!("shoal-mount-{}", options.volume))
            .spawn(move || {
                if let Err(error) = mounted.serve() {
                    tracing::warn!(mountpoint = %mountpoint.display(), error = %format!("{error:#}"), "mount session ended with an error");
                }
                lock(&mounts).remove(&mountpoint);
                let _ = ended_tx.send(true);
            })
            .map_err(|error| Status::internal(format!("cannot start the mount's session thread: {error}")))?;
        Ok(())
    }
}

/// An absolute, existing directory with no `..`: the agent runs as root and must not be
/// steered into mounting somewhere else.
fn checked_mountpoint(path: &str) -> Result<PathBuf, Status> {
    let path = Path::new(path);
    if !path.is_absolute() || path.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
        return Err(Status::invalid_argument(format!(
            "mount point {path:?} must be an absolute path without '..'"
        )));
    }
    if !path.is_dir() {
        return Err(Status::invalid_argument(format!(
            "mount point {} is not an existing directory",
            path.display()
        )));
    }
    Ok(path.to_path_buf())
}

#[tonic::async_trait]
impl Agent for AgentService {
    async fn mount(&self, request: Request<pb::MountRequest>) -> Result<Response<pb::MountReply>, Status> {
        let request = request.into_inner();
        let (options, share) = self.mount_options(&request)?;
        let _change = self.changes.lock().await;
        if let Some(served) = lock(&self.mounts).get(&options.mountpoint) {
            if served.volume == options.volume && served.alive() {
                return Ok(Response::new(pb::MountReply {}));
            }
            return Err(Status::failed_precondition(format!(
                "{} already serves volume {:?}; unmount it first",
                options.mountpoint.display(),
                served.volume
            )));
        }
        if lock(&self.mounts).len() >= MAX_MOUNTS {
            return Err(Status::resource_exhausted(format!(
                "this agent already serves {MAX_MOUNTS} mounts"
            )));
        }
        if crate::mount::is_mount_point(&options.mountpoint) {
            return Err(Status::failed_precondition(format!(
                "{} is already a mount point that this agent does not serve; unmount it first (umount -l)",
                options.mountpoint.display()
            )));
        }
        self.start(options, share).await?;
        Ok(Response::new(pb::MountReply {}))
    }

    async fn unmount(&self, request: Request<pb::UnmountRequest>) -> Result<Response<pb::UnmountReply>, Status> {
        let mountpoint = PathBuf::from(&request.get_ref().mountpoint);
        let _change = self.changes.lock().await;
        let (unmounter, mut ended) = {
            let mut mounts = lock(&self.mounts);
            let Some(served) = mounts.get_mut(&mountpoint) else {
                return Ok(Response::new(pb::UnmountReply {}));
            };
            (served.unmounter.take(), served.ended.clone())
        };
        if let Some(unmounter) = unmounter {
            tokio::task::spawn_blocking(move || unmounter.unmount())
                .await
                .map_err(|error| Status::internal(format!("unmount task failed: {error}")))?;
        }
        let waited = tokio::time::timeout(UNMOUNT_TIMEOUT, ended.wait_for(|ended| *ended)).await;
        if waited.is_err() {
            return Err(Status::deadline_exceeded(format!(
                "{} was unmounted but its session did not end within {UNMOUNT_TIMEOUT:?}",
                mountpoint.display()
            )));
        }
        Ok(Response::new(pb::UnmountReply {}))
    }

    async fn status(&self, _request: Request<pb::StatusRequest>) -> Result<Response<pb::StatusReply>, Status> {
        let mounts = lock(&self.mounts)
            .iter()
            .map(|(mountpoint, served)| {
                let budget = served.core.writeback.budget();
                pb::MountStatus {
                    volume: served.volume.clone(),
                    mountpoint: mountpoint.to_string_lossy().into_owned(),
                    reserved_bytes: budget.reserved_bytes(),
                    write_buffer_bytes: budget.held_bytes(),
                    write_buffer_limit_bytes: budget.ceiling_bytes(),
                    read_cache_bytes: budget.read_cache_bytes(),
                }
            })
            .collect();
        Ok(Response::new(pb::StatusReply {
            budget_bytes: self.pool.size_bytes(),
            reserved_bytes: self.pool.reserved_bytes(),
            in_use_bytes: self.pool.held_bytes(),
            rss_bytes: resident_bytes().unwrap_or(0),
            mounts,
            version: env!("CARGO_PKG_VERSION").to_string(),
        }))
    }
}

/// Allocations of at least this size get their own pages, returned when freed.
const MMAP_THRESHOLD_BYTES: i32 = 256 * 1024;

/// Makes glibc give every large allocation (write buffers, encoded messages, read-ahead
/// blocks) its own mapping and return it when freed. By default glibc raises that
/// threshold after the first large free and keeps later buffers in its heaps, where freed
/// memory stays resident: the agent's memory would then exceed its budget by whatever the
/// heaps once held. A few more mmap calls per MiB are the price of a budget that holds.
fn return_large_allocations_at_once() {
    // SAFETY: mallopt only changes allocator parameters; called before mounts allocate.
    let applied = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) };
    if applied != 1 {
        tracing::warn!("could not set the allocator's mmap threshold; memory use may exceed the budget");
    }
}

/// This process's resident memory (VmRSS), in bytes.
pub fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Serves the agent on its unix socket until `stop` resolves; then unmounts everything it
/// serves (lazily where busy) so no mount is left to a dead process.
pub async fn serve(config: AgentConfig, stop: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
    config.validate().map_err(anyhow::Error::msg)?;
    return_large_allocations_at_once();
    let listener = shoal_client::unix::bind_private(&config.socket)?;
    let service = Arc::new(AgentService::new(config.clone()));
    tracing::info!(socket = %config.socket.display(), budget_bytes = config.budget_bytes, "agent serving");
    tonic::transport::Server::builder()
        .add_service(AgentServer::from_arc(service.clone()))
        .serve_with_incoming_shutdown(tokio_stream::wrappers::UnixListenerStream::new(listener), stop)
        .await?;
    let mountpoints: Vec<PathBuf> = lock(&service.mounts).keys().cloned().collect();
    for mountpoint in mountpoints {
        let request = Request::new(pb::UnmountRequest {
            mountpoint: mountpoint.to_string_lossy().into_owned(),
        });
        if let Err(status) = service.unmount(request).await {
            tracing::warn!(mountpoint = %mountpoint.display(), %status, "could not unmount at shutdown");
        }
    }
    let _ = std::fs::remove_file(&config.socket);
    Ok(())
}
