//! Mounting a volume: resolve it, start the FUSE session, keep the mount's background work
//! going (recording sizes of files being written, renewing the session), and run until
//! unmounted.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use fuser::{Config, MountOption, SessionACL};
use shoal_client::proto as pb;
use shoal_client::{DataClient, RegistryClient, RetryPolicy};

use crate::budget::{MemoryPool, MountBudget};
use crate::core::{AtimeMode, FsConfig, FsCore};
use crate::fs::ShoalFs;

pub use shoal_proto::agent::FS_NAME_PREFIX;

/// How often unrecorded writes older than [`RECORD_AFTER`] get their size recorded.
const RECORD_INTERVAL: Duration = Duration::from_millis(500);
const RECORD_AFTER: Duration = Duration::from_secs(1);
/// How often the mount renews its session (its lease is a minute).
const SESSION_RENEW_INTERVAL: Duration = Duration::from_secs(10);
/// Read-ahead the kernel is asked to use for this mount (root only), in KiB.
const KERNEL_READ_AHEAD_KB: u32 = 1024;

#[derive(Clone, Debug)]
pub struct MountOptions {
    pub volume: String,
    pub mountpoint: PathBuf,
    pub registry: Vec<String>,
    /// Let other users (and root) use the mount; needed for shared and container use.
    pub allow_other: bool,
    /// Retry budget of every registry and data-service call (then EIO).
    pub retry_deadline: Duration,
    /// `host:port` of a `shoal gateway` all data-service traffic goes through (`None`:
    /// straight to each data service, the normal case).
    pub gateway: Option<String>,
    /// FUSE session loop threads.
    pub session_threads: usize,
    /// Runtime worker threads that do the requests' work.
    pub worker_threads: usize,
    pub fs: FsConfig,
}

impl MountOptions {
    pub fn new(volume: &str, mountpoint: &Path, registry: Vec<String>) -> MountOptions {
        MountOptions {
            volume: volume.to_string(),
            mountpoint: mountpoint.to_path_buf(),
            registry,
            allow_other: nix::unistd::geteuid().is_root(),
            retry_deadline: Duration::from_secs(60),
            gateway: None,
            session_threads: 2,
            worker_threads: 4,
            fs: FsConfig::default(),
        }
    }
}

fn seconds(option: &str, value: &str) -> anyhow::Result<Duration> {
    let seconds: f64 = value
        .parse()
        .with_context(|| format!("-o {option}={value}: not a number of seconds"))?;
    anyhow::ensure!((0.0..86_400.0).contains(&seconds), "-o {option}={value}: out of range");
    Ok(Duration::from_secs_f64(seconds))
}

fn size(option: &str, value: &str) -> anyhow::Result<u64> {
    shoal_client::parse_size(value).map_err(|error| anyhow::anyhow!("-o {option}: {error}"))
}

impl MountOptions {
    /// Applies `-o` options (comma-separated, possibly several lists); see `shoal mount
    /// --help` for the list. An unknown option is an error, never ignored.
    pub fn apply_options(&mut self, list: &[String]) -> anyhow::Result<()> {
        for item in list
            .iter()
            .flat_map(|o| o.split(','))
            .map(str::trim)
            .filter(|o| !o.is_empty())
        {
            let (key, value) = item.split_once('=').unwrap_or((item, ""));
            match key {
                "ro" => self.fs.read_only = true,
                "rw" => self.fs.read_only = false,
                "allow_other" => self.allow_other = true,
                "writeback_cache" => self.fs.kernel_writeback_cache = true,
                "noatime" => self.fs.atime = AtimeMode::NoAtime,
                "relatime" | "atime" => self.fs.atime = AtimeMode::RelAtime,
                "strictatime" => self.fs.atime = AtimeMode::StrictAtime,
                "write_buffer" => self.fs.write_buffer_bytes = size(key, value)? as usize,
                "attr_timeout" => self.fs.attr_ttl = seconds(key, value)?,
                "entry_timeout" => self.fs.entry_ttl = seconds(key, value)?,
                "retry_timeout" => self.retry_deadline = seconds(key, value)?,
                "gateway" => {
                    anyhow::ensure!(value.contains(':'), "-o gateway={value}: expected HOST:PORT");
                    self.gateway = Some(value.to_string());
                }
                "cache_size" => self.fs.read_cache_bytes = size(key, value)?,
                "read_ahead" => {
                    self.fs.read_ahead_blocks = Some(value.parse().with_context(|| format!("-o read_ahead={value}"))?)
                }
                other => anyhow::bail!("unknown mount option {other:?} (see `shoal mount --help`)"),
            }
        }
        Ok(())
    }
}

/// True if `dir` is a mount point now (of anything).
pub fn is_mount_point(dir: &Path) -> bool {
    shoal_client::mountinfo::mount_at(dir).is_ok_and(|mount| mount.is_some())
}

/// The "major:minor" device of the mount at `mountpoint`, from /proc/self/mountinfo. (Not
/// from stat(2): the mount does not answer until its session loop runs.)
fn mount_device(mountpoint: &Path) -> Option<String> {
    Some(shoal_client::mountinfo::mount_at(mountpoint).ok()??.device)
}

/// Raises the kernel's read-ahead for this mount's backing device (best effort: root only).
fn raise_kernel_read_ahead(mountpoint: &Path) {
    let Some(device) = mount_device(mountpoint) else { return };
    let path = format!("/sys/class/bdi/{device}/read_ahead_kb");
    match std::fs::write(&path, KERNEL_READ_AHEAD_KB.to_string()) {
        Ok(()) => tracing::info!(%path, kb = KERNEL_READ_AHEAD_KB, "raised kernel read-ahead"),
        Err(error) => tracing::debug!(%path, %error, "could not raise kernel read-ahead"),
    }
}

/// A mounted volume whose FUSE session is not yet being served.
pub struct Mounted {
    session: fuser::Session<ShoalFs>,
    core: Arc<FsCore>,
    mountpoint: PathBuf,
    stop_background: tokio::sync::watch::Sender<bool>,
}

/// Ends a mount from any thread: [`Mounted::serve`] then returns.
pub struct Unmounter {
    mountpoint: PathBuf,
    session: fuser::SessionUnmounter,
}

impl Unmounter {
    pub fn unmount(mut self) {
        tracing::info!(mountpoint = %self.mountpoint.display(), "unmounting");
        // fuser's own unmount only hands an auto-unmount mount to fusermount3, which leaves
        // a mount alone while its daemon still answers: unmount it here.
        unmount(&self.mountpoint);
        if let Err(error) = self.session.unmount() {
            tracing::warn!(%error, "unmount failed; unmount by hand with `umount -l`");
        }
    }
}

/// Mounts `options.volume` at `options.mountpoint`, its buffers within `budget`; its
/// requests run on the current tokio runtime (a multi-threaded one). Serve it with
/// [`Mounted::serve`].
pub async fn mount(options: &MountOptions, budget: MountBudget) -> anyhow::Result<Mounted> {
    let policy = RetryPolicy {
        deadline: options.retry_deadline,
        ..RetryPolicy::default()
    };
    let registry = RegistryClient::new(options.registry.clone())?.with_policy(policy.clone());
    let volume = registry
        .get_volume(pb::VolumeName {
            name: options.volume.clone(),
        })
        .await
        .with_context(|| format!("volume {:?}", options.volume))?;
    let mut data = DataClient::new(registry.clone()).with_policy(policy);
    if let Some(gateway) = &options.gateway {
        data = data.with_gateway(gateway.clone());
    }
    let runtime = tokio::runtime::Handle::current();
    let core = Arc::new(FsCore::new(
        runtime.clone(),
        data,
        volume.id,
        options.fs.clone(),
        budget,
    ));
    let config = session_config(options);
    let filesystem = ShoalFs::new(core.clone());
    let session = tokio::task::block_in_place(|| fuser::Session::new(filesystem, &options.mountpoint, &config))
        .with_context(|| format!("cannot mount on {}", options.mountpoint.display()))?;
    let _ = core.notifier.set(session.notifier());
    raise_kernel_read_ahead(&options.mountpoint);
    tracing::info!(volume = %options.volume, mountpoint = %options.mountpoint.display(), "mounted");
    let (stop_background, background_stopped) = tokio::sync::watch::channel(false);
    runtime.spawn(record_sizes(core.clone(), background_stopped.clone()));
    runtime.spawn(renew_session(core.clone(), background_stopped));
    Ok(Mounted {
        session,
        core,
        mountpoint: options.mountpoint.clone(),
        stop_background,
    })
}

fn session_config(options: &MountOptions) -> Config {
    let mut mount_options = vec![
        MountOption::FSName(format!("{FS_NAME_PREFIX}{}", options.volume)),
        MountOption::Subtype("shoal".into()),
        MountOption::DefaultPermissions,
    ];
    if options.fs.atime == AtimeMode::NoAtime {
        mount_options.push(MountOption::NoAtime);
    }
    if options.fs.read_only {
        mount_options.push(MountOption::RO);
    }
    let acl = if options.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    if acl != SessionACL::Owner {
        // A mount whose daemon dies is released instead of left "not connected".
        mount_options.push(MountOption::AutoUnmount);
    }
    let mut config = Config::default();
    config.mount_options = mount_options;
    config.acl = acl;
    config.n_threads = Some(options.session_threads.max(1));
    config.clone_fd = true;
    config
}

impl Mounted {
    pub fn core(&self) -> &Arc<FsCore> {
        &self.core
    }

    pub fn unmounter(&mut self) -> Unmounter {
        Unmounter {
            mountpoint: self.mountpoint.clone(),
            session: self.session.unmount_callable(),
        }
    }

    /// Serves the mount's requests on this thread until it is unmounted.
    pub fn serve(self) -> anyhow::Result<()> {
        let result = self.session.run();
        let _ = self.stop_background.send(true);
        tracing::info!(mountpoint = %self.mountpoint.display(), "unmounted");
        result.context("FUSE session ended with an error")
    }
}

/// Mounts and serves until the file system is unmounted (`umount DIR`, `fusermount3 -u`),
/// or `stop` resolves. `ready` is called once the mount is in place. The mount's memory is
/// its own (a pool of exactly what it asks for).
pub fn run(
    options: MountOptions,
    ready: impl FnOnce(),
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(options.worker_threads.max(1))
        .thread_name("shoal-fuse")
        .enable_all()
        .build()?;
    let share = options.fs.own_share(options.session_threads);
    let budget = MemoryPool::new(share.reserved_bytes()).reserve(share)?;
    let mut mounted = runtime.block_on(mount(&options, budget))?;
    let unmounter = mounted.unmounter();
    runtime.spawn(async move {
        stop.await;
        unmounter.unmount();
    });
    ready();
    mounted.serve()
}

/// Unmounts `mountpoint`: directly when allowed (root), else through `fusermount3 -u`. A
/// mount still in use is detached lazily (as `umount -l`): stopping must not hang on a
/// process that keeps a file open.
fn unmount(mountpoint: &Path) {
    use nix::mount::{MntFlags, umount2};
    match umount2(mountpoint, MntFlags::empty()) {
        Ok(()) => {}
        Err(nix::errno::Errno::EBUSY) => {
            tracing::warn!(mountpoint = %mountpoint.display(), "mount busy; detaching it lazily");
            if let Err(error) = umount2(mountpoint, MntFlags::MNT_DETACH) {
                tracing::warn!(%error, "lazy unmount failed");
            }
        }
        Err(nix::errno::Errno::EPERM) => {
            let status = std::process::Command::new("fusermount3")
                .arg("-uz")
                .arg(mountpoint)
                .status();
            if !status.as_ref().is_ok_and(|s| s.success()) {
                tracing::warn!(?status, "fusermount3 -uz failed");
            }
        }
        Err(error) => tracing::warn!(%error, "unmount failed"),
    }
}

/// Records, in the registry, the sizes of files whose writes are older than a second, so
/// other clients see growing files even before the writer closes them.
async fn record_sizes(core: Arc<FsCore>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut ticker = tokio::time::interval(RECORD_INTERVAL);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => return,
        }
        for ino in core.inodes.stale_pending(RECORD_AFTER) {
            if let Err(error) = core.commit(ino, false).await {
                tracing::debug!(ino, %error, "could not record a file's size yet");
            }
        }
    }
}

async fn renew_session(core: Arc<FsCore>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut ticker = tokio::time::interval(SESSION_RENEW_INTERVAL);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => return,
        }
        let request = pb::RenewSessionRequest {
            session_id: core.session_id,
        };
        if let Err(error) = core.registry().renew_session(request).await {
            tracing::warn!(%error, "could not renew the mount session");
        }
    }
}
