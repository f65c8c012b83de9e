//! `shoal-bench peers`: the yardstick fio job set on Shoal and on the file systems users
//! would otherwise pick (MooseFS, GlusterFS, JuiceFS), all on loopback on this machine, in
//! one run, with Shoal's ratio to the best peer for each job.
//!
//! The peers are installed, started and stopped by the scripts in `bench/peers/` (one per
//! peer: `NAME.sh start WORKDIR MOUNTDIR` prints a one-line description, `NAME.sh stop
//! WORKDIR MOUNTDIR` removes everything it made). Targets run one after another, each
//! removed before the next starts: the job set writes 5 GiB per target, 15 GiB at three
//! copies, and the disk cannot hold every target's files at once.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use shoal_client::proto as pb;
use shoal_testkit::{FuseMount, Process, ShoalCluster, shoal_binary};

use crate::fio::{self, JOBS};
use crate::{cleanup, report};

#[derive(clap::Args)]
pub struct PeersArgs {
    /// The yardsticks' fio job directory [default: ../shared/yardsticks/jobs].
    #[arg(long)]
    jobs: Option<PathBuf>,
    /// Only these jobs (names as in the job set, e.g. J1x1,J4).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Peers to run: scripts `bench/peers/NAME.sh`.
    #[arg(long, value_delimiter = ',', default_value = "moosefs,glusterfs,juicefs")]
    peers: Vec<String>,
    /// Where targets keep their data (on the local disk, not tmpfs).
    #[arg(long, default_value = "/var/tmp")]
    work_dir: PathBuf,
    /// Where the table goes (a marked section is replaced).
    #[arg(long, default_value_os_t = report::default_results_file())]
    results: PathBuf,
}

/// Bound on a peer's install and start (a first install downloads packages).
const START_TIMEOUT: Duration = Duration::from_secs(900);

struct Row {
    name: String,
    is_shoal: bool,
    figures: Vec<Option<f64>>,
    /// CPU seconds per GiB written in J1x1, summed over the target's processes.
    write_cpu_per_gib: Option<f64>,
    failure: Option<String>,
}

fn peers_dir() -> PathBuf {
    report::bench_dir().join("peers")
}

/// Runs a peer script with a bounded wait; returns its standard output.
fn script(name: &str, args: &[&str], timeout: Duration) -> anyhow::Result<String> {
    let path = peers_dir().join(format!("{name}.sh"));
    anyhow::ensure!(path.is_file(), "no peer script {}", path.display());
    let output = Command::new("timeout")
        .arg(timeout.as_secs().to_string())
        .arg("bash")
        .arg(&path)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", path.display()))?;
    anyhow::ensure!(
        output.status.success(),
        "`{} {}` failed ({}): {}",
        path.display(),
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// PIDs a peer script recorded (WORKDIR/pids, one per line), for CPU accounting.
fn recorded_pids(work: &Path) -> Vec<u32> {
    std::fs::read_to_string(work.join("pids"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|pid| pid.parse().ok())
        .collect()
}

fn run_jobs(jobs_dir: &Path, jobs: &[&fio::Job], dir: &Path, pids: &[u32], row: &mut Row) -> anyhow::Result<()> {
    for (column, job) in jobs.iter().enumerate() {
        eprint!("  {} ... ", job.name);
        let cpu_before = crate::fuse::cpu_seconds(pids);
        let figure = fio::run_job(jobs_dir, job, dir)?;
        if job.name == "J1x1" && !pids.is_empty() {
            // J1x1 writes 1 GiB.
            row.write_cpu_per_gib = Some(crate::fuse::cpu_seconds(pids) - cpu_before);
        }
        eprintln!("{figure:.0} {}", job.figure.unit());
        row.figures[column] = Some(figure);
    }
    Ok(())
}

pub async fn run(args: PeersArgs) -> anyhow::Result<()> {
    let jobs_dir = fio::jobs_dir(args.jobs.clone())?;
    let jobs: Vec<&fio::Job> = JOBS
        .iter()
        .filter(|job| args.only.is_empty() || args.only.iter().any(|name| name == job.name))
        .collect();
    cleanup::on_interrupt();
    let _guard = crate::cleanup::Guard;
    let root = args.work_dir.join(format!("shoal-peers-{}", std::process::id()));
    cleanup::directory(root.clone());
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    let mut rows = Vec::new();

    for replicas in [3u32, 1] {
        let name = format!("Shoal, {replicas} {}", if replicas == 1 { "copy" } else { "copies" });
        eprintln!("{name}: starting (1 registry, 3 data services on loopback)");
        let mut row = Row {
            name,
            is_shoal: true,
            figures: vec![None; jobs.len()],
            write_cpu_per_gib: None,
            failure: None,
        };
        let outcome = shoal_target(&jobs_dir, &jobs, replicas, &root, &mut row).await;
        if let Err(error) = outcome {
            row.failure = Some(format!("{error:#}"));
            eprintln!("{}: failed: {error:#}", row.name);
        }
        rows.push(row);
    }
    for peer in &args.peers {
        let work = root.join(peer).join("work");
        let mount = root.join(peer).join("mnt");
        std::fs::create_dir_all(&mount)?;
        let (work_arg, mount_arg) = (work.display().to_string(), mount.display().to_string());
        cleanup::undo_command(
            "bash",
            vec![
                peers_dir().join(format!("{peer}.sh")).display().to_string(),
                "stop".into(),
                work_arg.clone(),
                mount_arg.clone(),
            ],
        );
        eprintln!("{peer}: installing and starting");
        let mut row = Row {
            name: peer.clone(),
            is_shoal: false,
            figures: vec![None; jobs.len()],
            write_cpu_per_gib: None,
            failure: None,
        };
        let outcome = match script(peer, &["start", &work_arg, &mount_arg], START_TIMEOUT) {
            Ok(description) => {
                row.name = description;
                eprintln!("{}", row.name);
                let pids = recorded_pids(&work);
                run_jobs(&jobs_dir, &jobs, &mount, &pids, &mut row)
            }
            Err(error) => Err(error),
        };
        if let Err(error) = outcome {
            eprintln!("{peer}: failed: {error:#}");
            row.failure = Some(format!("{error:#}"));
        }
        if let Err(error) = script(peer, &["stop", &work_arg, &mount_arg], Duration::from_secs(120)) {
            eprintln!("{peer}: stop failed: {error:#}");
        }
        let _ = std::fs::remove_dir_all(root.join(peer));
        rows.push(row);
    }

    let markdown = table(&jobs, &rows);
    println!("\n{markdown}");
    report::replace_section(&args.results, "peers", &markdown)?;
    eprintln!("table written to {}", args.results.display());
    Ok(())
}

async fn shoal_target(
    jobs_dir: &Path,
    jobs: &[&fio::Job],
    replicas: u32,
    root: &Path,
    row: &mut Row,
) -> anyhow::Result<()> {
    let binary = shoal_binary()?;
    let mut cluster = ShoalCluster::start(&binary, 1, 3, &[]).await?;
    let mut pids: Vec<u32> = cluster.data.iter().filter_map(|d| d.process.as_ref()?.pid()).collect();
    pids.extend(cluster.registry.node(1).process.as_ref().and_then(Process::pid));
    let result = async {
        cluster
            .registry
            .client()
            .create_volume(pb::CreateVolumeRequest {
                name: "peers".into(),
                replicas,
                ..Default::default()
            })
            .await?;
        let dir = root.join(format!("shoal-r{replicas}"));
        cleanup::mount(dir.clone());
        let mount = FuseMount::start(
            &binary,
            &cluster.registry.registry_arg(),
            "peers",
            &dir,
            &[],
            &root.join(format!("shoal-r{replicas}.log")),
        )
        .await?;
        pids.extend(mount.process.as_ref().and_then(Process::pid));
        let outcome = run_jobs(jobs_dir, jobs, &mount.dir, &pids, row);
        drop(mount);
        cleanup::forget_mount(&dir);
        outcome
    }
    .await;
    let logs = if result.is_err() { cluster.logs() } else { String::new() };
    cluster.stop_all();
    result.with_context(|| logs)
}

fn table(jobs: &[&fio::Job], rows: &[Row]) -> String {
    let header: Vec<String> = jobs
        .iter()
        .map(|job| format!("{} {}", job.name, job.figure.unit()))
        .collect();
    let mut out = String::from(
        "### Shoal beside peer file systems: the yardstick fio job set, one run, all on loopback\n\n\
         `bench/peers/compare` (= `shoal-bench peers`). Every target has a registry/master and 3 \
         storage daemons on this machine; targets run one after another; caches dropped before read jobs.\n\n",
    );
    out.push_str(&format!(
        "| target | {} | CPU-s per GiB written (J1x1) |\n|---|{}---:|\n",
        header.join(" | "),
        "---:|".repeat(jobs.len())
    ));
    let best_peer: Vec<Option<f64>> = (0..jobs.len())
        .map(|column| {
            rows.iter()
                .filter(|row| !row.is_shoal)
                .filter_map(|row| row.figures[column])
                .fold(None, |best: Option<f64>, value| {
                    Some(best.map_or(value, |b| b.max(value)))
                })
        })
        .collect();
    for row in rows {
        let cells: Vec<String> = row
            .figures
            .iter()
            .map(|figure| figure.map_or("–".into(), |value| format!("{value:.0}")))
            .collect();
        let cpu = row
            .write_cpu_per_gib
            .map_or("–".into(), |seconds| format!("{seconds:.1}"));
        out.push_str(&format!("| {} | {} | {cpu} |\n", row.name, cells.join(" | ")));
    }
    for row in rows.iter().filter(|row| row.is_shoal) {
        let ratios: Vec<String> = (0..jobs.len())
            .map(|column| match (row.figures[column], best_peer[column]) {
                (Some(shoal), Some(best)) if best > 0.0 => format!("**{:.2}x**", shoal / best),
                _ => "–".into(),
            })
            .collect();
        out.push_str(&format!("| {} ÷ best peer | {} | |\n", row.name, ratios.join(" | ")));
    }
    let failures: Vec<String> = rows
        .iter()
        .filter_map(|row| row.failure.as_ref().map(|failure| format!("- {}: {failure}", row.name)))
        .collect();
    if !failures.is_empty() {
        out.push_str(&format!("\nFailed in this run:\n{}\n", failures.join("\n")));
    }
    out
}
