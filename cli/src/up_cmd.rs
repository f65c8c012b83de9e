//! `shoal up`: a complete local Shoal under one directory, the embedded default.
//!
//! It runs a single-node registry and N data services as child processes on loopback, each
//! with its state under `--dir`, creates the `default` volume, mounts it through FUSE (a
//! `shoal mount --foreground` child; `DIR/mnt` unless told otherwise), and stops everything,
//! mount first, on Ctrl-C. The ports chosen on the first run are kept in `DIR/shoal-up.json`, so a second
//! run with the same directory brings back the same cluster with its data.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use shoal_client::RegistryClient;
use shoal_client::proto as pb;

const LAYOUT_FILE: &str = "shoal-up.json";
const DEFAULT_VOLUME: &str = "default";
/// How long the children get to come up, and to stop.
const START_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_GRACE: Duration = Duration::from_secs(10);

#[derive(clap::Args)]
pub struct UpCommand {
    /// Directory holding all state (registry, data services, logs).
    #[arg(long, default_value = "./shoal-data")]
    dir: PathBuf,
    /// Number of data services.
    #[arg(long, default_value_t = 3)]
    data_services: u32,
    /// Mount the default volume here [default: DIR/mnt].
    #[arg(long, conflicts_with = "no_mount")]
    mount: Option<PathBuf>,
    /// Do not mount the default volume.
    #[arg(long)]
    no_mount: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct LocalLayout {
    registry_port: u16,
    data_ports: Vec<u16>,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn load_layout(dir: &Path, data_services: u32) -> anyhow::Result<LocalLayout> {
    let path = dir.join(LAYOUT_FILE);
    let mut layout = match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| format!("{} is damaged", path.display()))?,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => LocalLayout {
            registry_port: free_port()?,
            data_ports: Vec::new(),
        },
        Err(error) => return Err(error).with_context(|| format!("cannot read {}", path.display())),
    };
    while layout.data_ports.len() < data_services as usize {
        layout.data_ports.push(free_port()?);
    }
    std::fs::write(&path, serde_json::to_vec_pretty(&layout)?)?;
    Ok(layout)
}

/// A child process that dies with its parent and is stopped by PID.
struct Managed {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Managed {
    fn spawn(name: &str, args: &[String], log: PathBuf) -> anyhow::Result<Managed> {
        use std::os::unix::process::CommandExt;
        let output = std::fs::File::options().create(true).append(true).open(&log)?;
        let mut command = Command::new(std::env::current_exe()?);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(output.try_clone()?)
            .stderr(output)
            // A group of its own: Ctrl-C in the terminal reaches only `shoal up`, which
            // stops the children in order (the mount first, so it can flush).
            .process_group(0);
        // If `shoal up` dies, even by SIGKILL, its children go too.
        unsafe {
            command.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM).map_err(std::io::Error::from)
            });
        }
        let child = command.spawn().with_context(|| format!("cannot start {name}"))?;
        Ok(Managed {
            name: name.to_string(),
            child,
            log,
        })
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    fn stop(&mut self) {
        if self.exited().is_some() {
            return;
        }
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let started = Instant::now();
        while started.elapsed() < STOP_GRACE {
            if self.exited().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

struct Children(Vec<Managed>);

impl Drop for Children {
    fn drop(&mut self) {
        for child in self.0.iter_mut().rev() {
            child.stop();
        }
    }
}

impl Children {
    fn check(&mut self) -> anyhow::Result<()> {
        for child in &mut self.0 {
            if let Some(status) = child.exited() {
                bail!(
                    "{} exited ({status}); last lines of {}:\n{}",
                    child.name,
                    child.log.display(),
                    child.log_tail()
                );
            }
        }
        Ok(())
    }
}

async fn wait_until<T, F, Fut>(children: &mut Children, what: &str, mut probe: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        children.check()?;
        if let Some(value) = probe().await {
            return Ok(value);
        }
        if started.elapsed() > START_TIMEOUT {
            bail!("timed out after {START_TIMEOUT:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl UpCommand {
    pub async fn run(self) -> anyhow::Result<()> {
        if self.data_services == 0 {
            bail!("--data-services must be at least 1");
        }
        std::fs::create_dir_all(self.dir.join("logs"))
            .with_context(|| format!("cannot create {}", self.dir.display()))?;
        let dir = std::fs::canonicalize(&self.dir)?;
        let layout = load_layout(&dir, self.data_services)?;
        let registry_address = format!("127.0.0.1:{}", layout.registry_port);
        let mut children = Children(Vec::new());
        children.0.push(Managed::spawn(
            "registry",
            &[
                "registry".into(),
                "--id=1".into(),
                format!("--listen={registry_address}"),
                format!("--data={}", dir.join("registry").display()),
                "--init".into(),
                format!("--peer=1={registry_address}"),
            ],
            dir.join("logs/registry.log"),
        )?);
        let registry = RegistryClient::new([registry_address.clone()])?.with_deadline(Duration::from_secs(2));
        wait_until(&mut children, "the registry", || async {
            registry
                .status(pb::Empty {})
                .await
                .ok()
                .filter(|s| s.leader_id.is_some())
        })
        .await?;
        for (index, port) in layout.data_ports.iter().take(self.data_services as usize).enumerate() {
            let name = format!("data-{}", index + 1);
            children.0.push(Managed::spawn(
                &name,
                &[
                    "data".into(),
                    format!("--listen=127.0.0.1:{port}"),
                    format!("--registry={registry_address}"),
                    format!("--disk={}", dir.join(&name).display()),
                    format!("--zone=local-{}", index + 1),
                ],
                dir.join(format!("logs/{name}.log")),
            )?);
        }
        let replicas = self.data_services.min(3);
        let wanted = self.data_services as usize;
        wait_until(&mut children, "the data services", || async {
            let status = registry.status(pb::Empty {}).await.ok()?;
            let up = status
                .data_services
                .iter()
                .filter(|s| s.state == pb::DataServiceState::Up as i32 && s.last_heartbeat_age_ms.is_some())
                .count();
            (up >= wanted && status.chain_count > 0).then_some(())
        })
        .await?;
        let volume = match registry
            .get_volume(pb::VolumeName {
                name: DEFAULT_VOLUME.into(),
            })
            .await
        {
            Ok(volume) => volume,
            Err(_) => {
                registry
                    .create_volume(pb::CreateVolumeRequest {
                        name: DEFAULT_VOLUME.into(),
                        replicas,
                        root_uid: nix::unistd::geteuid().as_raw(),
                        root_gid: nix::unistd::getegid().as_raw(),
                        root_mode: 0o755,
                        ..Default::default()
                    })
                    .await?
            }
        };
        let mountpoint = match (&self.mount, self.no_mount) {
            (_, true) => None,
            (Some(path), false) => Some(path.clone()),
            (None, false) => Some(dir.join("mnt")),
        };
        if let Some(mountpoint) = &mountpoint {
            mount_default_volume(&mut children, mountpoint, &registry_address, &dir).await?;
        }
        println!("Shoal is up.");
        println!("  state:         {}", dir.display());
        println!(
            "  registry:      {registry_address}   (log: {})",
            dir.join("logs/registry.log").display()
        );
        for (index, port) in layout.data_ports.iter().take(self.data_services as usize).enumerate() {
            println!(
                "  data service:  127.0.0.1:{port}   (disk: {}, log: {})",
                dir.join(format!("data-{}", index + 1)).display(),
                dir.join(format!("logs/data-{}.log", index + 1)).display()
            );
        }
        println!("  volume:        {:?} ({} replicas)", volume.name, volume.replicas);
        if let Some(mountpoint) = &mountpoint {
            println!(
                "  mount:         {} (volume {DEFAULT_VOLUME:?}; log: {})",
                mountpoint.display(),
                dir.join("logs/mount.log").display()
            );
        }
        println!();
        println!("Try:");
        if let Some(mountpoint) = &mountpoint {
            println!(
                "  cp /etc/hostname {}/ && ls -l {}",
                mountpoint.display(),
                mountpoint.display()
            );
        }
        println!("  export SHOAL_REGISTRY={registry_address}");
        println!("  shoal status");
        println!(
            "  shoal cp /etc/hostname shoal://{DEFAULT_VOLUME}/hostname && shoal cat shoal://{DEFAULT_VOLUME}/hostname"
        );
        println!();
        println!("Ctrl-C stops everything; run again with the same --dir to get it back.");
        let mut watch = tokio::time::interval(Duration::from_millis(500));
        let stop = crate::stop_signal();
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => break,
                _ = watch.tick() => children.check()?,
            }
        }
        println!("stopping Shoal...");
        drop(children);
        println!("stopped.");
        Ok(())
    }
}

/// Starts `shoal mount --foreground` for the default volume as one more child, and waits
/// until the kernel shows the mount.
async fn mount_default_volume(
    children: &mut Children,
    mountpoint: &Path,
    registry_address: &str,
    dir: &Path,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(mountpoint)
        .with_context(|| format!("cannot create mount point {}", mountpoint.display()))?;
    let mountpoint = match std::fs::canonicalize(mountpoint) {
        Ok(path) => path,
        Err(error) if error.raw_os_error() == Some(nix::libc::ENOTCONN) => bail!(
            "a dead mount is left at {}: release it with `umount -l {}` and run again",
            mountpoint.display(),
            mountpoint.display()
        ),
        Err(error) => return Err(error).with_context(|| format!("cannot use mount point {}", mountpoint.display())),
    };
    if crate::mount_cmd::is_mounted(&mountpoint) {
        bail!(
            "{} is already a mount point: unmount it first (umount {})",
            mountpoint.display(),
            mountpoint.display()
        );
    }
    children.0.push(Managed::spawn(
        "mount",
        &[
            "mount".into(),
            DEFAULT_VOLUME.into(),
            mountpoint.display().to_string(),
            "--foreground".into(),
            format!("--registry={registry_address}"),
        ],
        dir.join("logs/mount.log"),
    )?);
    wait_until(children, "the FUSE mount", || {
        let mounted = crate::mount_cmd::is_mounted(&mountpoint);
        async move { mounted.then_some(()) }
    })
    .await
}
