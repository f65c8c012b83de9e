//! `shoal up`, the embedded default: a registry, data services and a FUSE mount under one
//! directory; files written through the mount are there for `shoal cat`, survive a stop
//! and a second start with the same directory, and stopping releases the mount.

use std::path::{Path, PathBuf};
use std::time::Duration;

use shoal_testkit::{Process, is_fuse_mounted, wait_for};

fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_shoal"))
}

async fn start_up(dir: &Path, log: &Path) -> anyhow::Result<Process> {
    let args = vec![
        "up".to_string(),
        format!("--dir={}", dir.display()),
        "--data-services=3".into(),
    ];
    let mut up = Process::spawn("shoal-up", &binary(), &args, log)?;
    let mountpoint = dir.join("mnt");
    let mounted = wait_for("shoal up to mount the default volume", Duration::from_secs(90), || {
        let ready = is_fuse_mounted(&mountpoint) && up.log().contains("Shoal is up.");
        let exited = up.exit_status();
        async move {
            match exited {
                Some(status) => Some(Err(anyhow::anyhow!("shoal up exited: {status}"))),
                None => ready.then_some(Ok(())),
            }
        }
    })
    .await;
    match mounted {
        Ok(Ok(())) => Ok(up),
        Ok(Err(error)) | Err(error) => anyhow::bail!("{error}\n{}", up.log()),
    }
}

/// SIGTERM, as Ctrl-C would; the mount must be gone afterwards.
async fn stop_up(mut up: Process, mountpoint: &Path) -> anyhow::Result<()> {
    up.terminate(Duration::from_secs(30));
    wait_for("the mount to be released", Duration::from_secs(10), || {
        let mounted = is_fuse_mounted(mountpoint);
        async move { (!mounted).then_some(()) }
    })
    .await
}

/// PIDs of processes (other than this test) whose command line names `dir`: the
/// registry, data services and mount daemon that `shoal up` started there.
fn processes_under(dir: &Path) -> Vec<u32> {
    let needle = std::fs::canonicalize(dir)
        .unwrap_or_else(|_| dir.to_path_buf())
        .display()
        .to_string();
    let own = std::process::id();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if pid != own && cmdline.contains(&needle) && !cmdline.contains("shoal up") {
            found.push(pid);
        }
    }
    found
}

fn registry_address(dir: &Path) -> anyhow::Result<String> {
    let layout: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("shoal-up.json"))?)?;
    let port = layout["registry_port"]
        .as_u64()
        .ok_or_else(|| anyhow::anyhow!("no registry port in shoal-up.json"))?;
    Ok(format!("127.0.0.1:{port}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn up_mounts_the_default_volume_and_keeps_data_across_runs() {
    let scratch = tempfile::tempdir().expect("temp dir");
    let dir = scratch.path().join("shoal-data");
    let mountpoint = dir.join("mnt");
    let log = scratch.path().join("up.log");
    let result = async {
        let up = start_up(&dir, &log).await?;
        std::fs::write(mountpoint.join("hello.txt"), b"hello from the mount")?;
        let output = std::process::Command::new(binary())
            .args([
                "cat",
                "shoal://default/hello.txt",
                "--registry",
                &registry_address(&dir)?,
            ])
            .output()?;
        anyhow::ensure!(
            output.status.success() && output.stdout == b"hello from the mount",
            "shoal cat of a file written through the mount: {output:?}"
        );
        // A registry and three data services run as children (plus the mount daemon).
        let children = processes_under(&dir);
        anyhow::ensure!(children.len() >= 4, "children of shoal up: {children:?}");
        stop_up(up, &mountpoint).await?;
        wait_for("every child of shoal up to exit", Duration::from_secs(15), || {
            let left = processes_under(&dir);
            async move { left.is_empty().then_some(()) }
        })
        .await?;

        let up = start_up(&dir, &log).await?;
        let kept = std::fs::read(mountpoint.join("hello.txt"))?;
        anyhow::ensure!(kept == b"hello from the mount", "the file after a restart: {kept:?}");
        stop_up(up, &mountpoint).await?;
        Ok(())
    }
    .await;
    if is_fuse_mounted(&mountpoint) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&mountpoint).status();
    }
    if let Err(error) = result {
        panic!(
            "{error:#}\n---- shoal up log\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }
}
