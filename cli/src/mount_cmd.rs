//! `shoal mount VOLUME DIR`: mount a volume through FUSE, in the background by default.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use shoal_fuse::MountOptions;

use crate::RegistryAddress;

/// How long the background daemon may take to mount before `shoal mount` gives up.
const MOUNT_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(clap::Args)]
pub struct MountCommand {
    /// The volume to mount.
    volume: String,
    /// An existing, empty directory.
    mountpoint: PathBuf,
    /// Options, comma-separated: ro, allow_other, attr_timeout=SECONDS, entry_timeout=SECONDS,
    /// cache_size=SIZE (read-ahead memory, e.g. 256M), read_ahead=BLOCKS (1 MiB each),
    /// write_buffer=SIZE (written bytes not yet sent), retry_timeout=SECONDS (then EIO),
    /// gateway=HOST:PORT (send all data traffic through a `shoal gateway`),
    /// writeback_cache (let the kernel cache writes: faster small writes, but sizes changed by
    /// other clients show only after the file leaves the kernel's cache), relatime (default:
    /// atime updated by the first read or listing after a change, or after a day), strictatime
    /// (by every read: a registry write each), noatime (never).
    #[arg(short = 'o', value_name = "OPTIONS")]
    options: Vec<String>,
    /// Stay in the foreground (logs to stderr) instead of running as a background daemon.
    #[arg(long, short = 'f')]
    foreground: bool,
    /// Log file of the background daemon (default: /var/log/shoal/mount-<dir>.log, or the
    /// temporary directory if that is not writable).
    #[arg(long)]
    log: Option<PathBuf>,
    #[command(flatten)]
    registry: RegistryAddress,
}

/// True if `dir` is a FUSE mount point now.
pub fn is_mounted(dir: &Path) -> bool {
    let Ok(dir) = std::fs::canonicalize(dir) else {
        return false;
    };
    shoal_client::mountinfo::is_fuse_mount(&dir)
}

fn default_log(mountpoint: &Path) -> PathBuf {
    let name: String = mountpoint
        .to_string_lossy()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let dir = PathBuf::from("/var/log/shoal");
    if std::fs::create_dir_all(&dir).is_ok() && nix::unistd::access(&dir, nix::unistd::AccessFlags::W_OK).is_ok() {
        return dir.join(format!("mount{name}.log"));
    }
    std::env::temp_dir().join(format!("shoal-mount{name}.log"))
}

impl MountCommand {
    pub fn runs_daemon(&self) -> bool {
        self.foreground
    }

    pub fn run(self) -> anyhow::Result<()> {
        let mountpoint = std::fs::canonicalize(&self.mountpoint)
            .with_context(|| format!("mount point {} does not exist", self.mountpoint.display()))?;
        anyhow::ensure!(
            mountpoint.is_dir(),
            "mount point {} is not a directory",
            mountpoint.display()
        );
        if is_mounted(&mountpoint) {
            bail!(
                "{} is already mounted; unmount it first (umount {})",
                mountpoint.display(),
                mountpoint.display()
            );
        }
        let mut options = MountOptions::new(&self.volume, &mountpoint, self.registry.addresses());
        options.apply_options(&self.options)?;
        if self.foreground {
            return shoal_fuse::run(options, || {}, crate::stop_signal());
        }
        self.daemonize(&mountpoint)
    }

    /// Starts `shoal mount --foreground` detached, with its output in a log file, and waits
    /// until the mount is in place.
    fn daemonize(self, mountpoint: &Path) -> anyhow::Result<()> {
        use std::os::unix::process::CommandExt;
        let log = self.log.clone().unwrap_or_else(|| default_log(mountpoint));
        let output = std::fs::File::options()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("cannot open log file {}", log.display()))?;
        let mut command = Command::new(std::env::current_exe()?);
        command
            .arg("mount")
            .arg(&self.volume)
            .arg(mountpoint)
            .arg("--foreground")
            .arg(format!("--registry={}", self.registry.registry))
            .args(self.options.iter().flat_map(|o| ["-o".to_string(), o.clone()]))
            .env(
                "SHOAL_LOG",
                std::env::var("SHOAL_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(output.try_clone()?)
            .stderr(output);
        // Its own session: the daemon outlives the shell that started it.
        unsafe {
            command.pre_exec(|| nix::unistd::setsid().map(|_| ()).map_err(std::io::Error::from));
        }
        let mut child = command.spawn().context("cannot start the mount daemon")?;
        let started = Instant::now();
        loop {
            if is_mounted(mountpoint) {
                println!(
                    "mounted volume {:?} at {} (daemon pid {}, log {})",
                    self.volume,
                    mountpoint.display(),
                    child.id(),
                    log.display()
                );
                return Ok(());
            }
            if let Some(status) = child.try_wait()? {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(5).collect();
                bail!(
                    "the mount daemon exited ({status}) before mounting; last lines of {}:\n{}",
                    log.display(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            if started.elapsed() > MOUNT_TIMEOUT {
                let _ = child.kill();
                bail!(
                    "the mount did not appear within {MOUNT_TIMEOUT:?}; see {}",
                    log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
