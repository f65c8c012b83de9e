//! Failures under a running application: SIGKILL of a data service and then of the registry
//! leader while `fio --verify=crc32c` writes through the mount; the job finishes and
//! verifies. Then every registry node is killed and restarted, and the same mount carries on.

use std::path::{Path, PathBuf};
use std::time::Duration;

use shoal_testkit::{MountSpec, MountedCluster, Process, wait_for};

fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_shoal"))
}

const MIB: u64 = 1 << 20;
const FILE_BYTES: u64 = 384 * MIB;

/// The fio job: 1 MiB O_DIRECT writes (so every byte goes to Shoal, not the page cache),
/// paced so that the failures land mid-write, then a read-back of every block checked
/// against its crc32c.
fn fio_args(file: &Path, verify_only: bool) -> Vec<String> {
    let mut args: Vec<String> = [
        "--name=failover",
        "--rw=write",
        "--bs=1M",
        "--direct=1",
        "--ioengine=psync",
        "--verify=crc32c",
        "--do_verify=1",
        "--verify_fatal=1",
        // No verify-state file in the working directory.
        "--verify_state_save=0",
        "--end_fsync=1",
        // Grow the file as it is written (no layout pass), so its size shows progress.
        "--fallocate=none",
        "--rate=24m",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(format!("--filename={}", file.display()));
    args.push(format!("--size={}", FILE_BYTES));
    if verify_only {
        args.push("--verify_only".into());
    }
    args
}

fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

async fn wait_for_size(fio: &mut Process, path: &Path, bytes: u64) -> anyhow::Result<()> {
    wait_for(
        &format!("fio to write {} MiB", bytes / MIB),
        Duration::from_secs(120),
        || {
            let done = file_size(path) >= bytes;
            let exited = fio.exit_status();
            async move {
                match exited {
                    Some(status) => Some(Err(anyhow::anyhow!("fio exited early: {status}"))),
                    None => done.then_some(Ok(())),
                }
            }
        },
    )
    .await?
}

async fn wait_for_fio(fio: &mut Process, timeout: Duration) -> anyhow::Result<String> {
    let status = wait_for("fio to finish", timeout, || {
        let status = fio.exit_status();
        async move { status }
    })
    .await?;
    let output = fio.log();
    anyhow::ensure!(status.success(), "fio failed ({status}):\n{output}");
    anyhow::ensure!(output.contains("err= 0"), "fio reported errors:\n{output}");
    anyhow::ensure!(
        !output.contains("verify:") && !output.contains("bad magic"),
        "fio verification failed:\n{output}"
    );
    Ok(output)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fio_verify_survives_data_service_and_leader_kills_and_a_full_registry_restart() {
    let spec = MountSpec {
        registry_nodes: 3,
        data_services: 4,
        registry_args: &["--data-service-lease-ms=2000"],
        volume: "failover",
        replicas: 3,
        options: &[],
    };
    let mut setup = MountedCluster::start(&binary(), spec)
        .await
        .expect("cluster and mount start");
    let scratch = tempfile::tempdir().expect("temp dir");
    let result = async {
        let file = setup.mount.path("fio.data");
        let fio_log = scratch.path().join("fio.log");
        let mut fio = Process::spawn("fio", Path::new("fio"), &fio_args(&file, false), &fio_log)?;

        wait_for_size(&mut fio, &file, 64 * MIB).await?;
        setup.cluster.kill_data_service(0);
        eprintln!("killed data service 1 at {} MiB", file_size(&file) / MIB);

        wait_for_size(&mut fio, &file, 192 * MIB).await?;
        let leader = setup.cluster.registry.wait_for_leader(Duration::from_secs(10)).await?;
        setup.cluster.registry.kill_node(leader);
        eprintln!("killed registry leader {leader} at {} MiB", file_size(&file) / MIB);

        let output = wait_for_fio(&mut fio, Duration::from_secs(300)).await?;
        for line in output.lines().filter(|l| l.contains("clat (") || l.contains("bw=")) {
            eprintln!("fio: {}", line.trim());
        }
        anyhow::ensure!(
            file_size(&file) == FILE_BYTES,
            "file size {} after the job",
            file_size(&file)
        );
        setup.cluster.registry.start_node(leader)?;

        // Every registry node dies at once and comes back: the mount must carry on.
        let ids: Vec<u64> = (1..=3).collect();
        for id in &ids {
            setup.cluster.registry.kill_node(*id);
        }
        for id in &ids {
            setup.cluster.registry.start_node(*id)?;
        }
        setup.cluster.registry.wait_for_leader(Duration::from_secs(30)).await?;
        let after = setup.mount.path("after-restart");
        std::fs::write(&after, b"still here")?;
        anyhow::ensure!(
            std::fs::read(&after)? == b"still here",
            "a file written after the registry restart"
        );

        // Read every block back again, from the data services (O_DIRECT), after all of it.
        let mut verify = Process::spawn(
            "fio-verify",
            Path::new("fio"),
            &fio_args(&file, true),
            &scratch.path().join("verify.log"),
        )?;
        wait_for_fio(&mut verify, Duration::from_secs(300)).await?;
        Ok(())
    }
    .await;
    setup.finish(result);
}
