//! FUSE mounts of `shoal mount --foreground`, released however the test ends.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::{Process, wait_for};

/// True if `dir` is a FUSE mount point now (read from /proc, never by touching the mount).
pub fn is_fuse_mounted(dir: &Path) -> bool {
    shoal_client::mountinfo::is_fuse_mount(dir)
}

pub struct FuseMount {
    pub dir: PathBuf,
    pub process: Option<Process>,
}

impl FuseMount {
    /// Mounts `volume` at `dir` (created if missing) with `options` (`-o` values).
    pub async fn start(
        binary: &Path,
        registry: &str,
        volume: &str,
        dir: &Path,
        options: &[&str],
        log: &Path,
    ) -> anyhow::Result<FuseMount> {
        std::fs::create_dir_all(dir)?;
        let dir = std::fs::canonicalize(dir)?;
        let mut args = vec![
            "mount".to_string(),
            volume.to_string(),
            dir.display().to_string(),
            "--foreground".to_string(),
            format!("--registry={registry}"),
        ];
        for option in options {
            args.push("-o".into());
            args.push(option.to_string());
        }
        let process = Process::spawn(&format!("mount-{volume}"), binary, &args, log)?;
        let mut mount = FuseMount {
            dir: dir.clone(),
            process: Some(process),
        };
        let started = wait_for("the FUSE mount", Duration::from_secs(30), || {
            let mounted = is_fuse_mounted(&dir);
            async move { mounted.then_some(()) }
        })
        .await;
        if let Err(error) = started {
            let log = mount.process.as_ref().map(Process::log).unwrap_or_default();
            mount.release();
            anyhow::bail!("{error}\n{log}");
        }
        Ok(mount)
    }

    pub fn path(&self, relative: &str) -> PathBuf {
        self.dir.join(relative)
    }

    pub fn log(&self) -> String {
        self.process.as_ref().map(Process::log).unwrap_or_default()
    }

    /// SIGKILL of the mount daemon (the kernel mount is then released by auto-unmount).
    pub fn kill_daemon(&mut self) {
        if let Some(process) = self.process.as_mut() {
            process.kill();
        }
    }

    /// Unmounts (lazily, so a busy mount cannot keep the test waiting) and stops the daemon.
    pub fn release(&mut self) {
        if is_fuse_mounted(&self.dir) {
            let _ = std::process::Command::new("umount").arg("-l").arg(&self.dir).status();
        }
        if let Some(mut process) = self.process.take() {
            process.terminate(Duration::from_secs(5));
        }
        if is_fuse_mounted(&self.dir) {
            let _ = std::process::Command::new("fusermount3")
                .arg("-uz")
                .arg(&self.dir)
                .status();
        }
    }
}

impl Drop for FuseMount {
    fn drop(&mut self) {
        self.release();
    }
}

/// A cluster, one volume on it, and a mount of that volume: the setup of every FUSE test.
pub struct MountedCluster {
    pub cluster: crate::ShoalCluster,
    pub mount: FuseMount,
    pub volume: String,
}

/// What [`MountedCluster::start`] builds.
pub struct MountSpec<'a> {
    pub registry_nodes: u64,
    pub data_services: usize,
    pub registry_args: &'a [&'a str],
    pub volume: &'a str,
    pub replicas: u32,
    /// `-o` options of the mount.
    pub options: &'a [&'a str],
}

impl Default for MountSpec<'_> {
    fn default() -> Self {
        MountSpec {
            registry_nodes: 1,
            data_services: 3,
            registry_args: &["--data-service-lease-ms=3000"],
            volume: "test",
            replicas: 1,
            options: &[],
        }
    }
}

impl MountedCluster {
    /// Starts the cluster, creates the volume (root world-writable, so tests can act as
    /// other users) and mounts it under the cluster's temporary directory.
    pub async fn start(binary: &Path, spec: MountSpec<'_>) -> anyhow::Result<MountedCluster> {
        let mut cluster =
            crate::ShoalCluster::start(binary, spec.registry_nodes, spec.data_services, spec.registry_args).await?;
        let created = cluster
            .registry
            .client()
            .create_volume(shoal_client::proto::CreateVolumeRequest {
                name: spec.volume.into(),
                replicas: spec.replicas,
                root_mode: 0o777,
                ..Default::default()
            })
            .await;
        if let Err(error) = created {
            cluster.stop_all();
            anyhow::bail!("creating volume {}: {error}", spec.volume);
        }
        let dir = cluster.registry.root().join("mnt");
        let log = cluster.registry.root().join("mount.log");
        let mount = match FuseMount::start(
            binary,
            &cluster.registry.registry_arg(),
            spec.volume,
            &dir,
            spec.options,
            &log,
        )
        .await
        {
            Ok(mount) => mount,
            Err(error) => {
                let logs = cluster.logs();
                cluster.stop_all();
                anyhow::bail!("{error:#}\n{logs}");
            }
        };
        Ok(MountedCluster {
            cluster,
            mount,
            volume: spec.volume.to_string(),
        })
    }

    /// Unmounts, stops every process, and fails the test with all logs if `result` is an error.
    pub fn finish(mut self, result: anyhow::Result<()>) {
        let log = self.mount.log();
        self.mount.release();
        let logs = self.cluster.logs();
        self.cluster.stop_all();
        if let Err(error) = result {
            panic!("{error:#}\n---- mount log\n{log}\n{logs}");
        }
    }
}
