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

/// What a target is, for the ratio rows.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    Shoal {
        replicas: u32,
    },
    /// A peer that keeps several copies (MooseFS goal 3, GlusterFS replica 3).
    Replicated,
    /// JuiceFS with a local file store: one copy.
    OneCopy,
}

/// CPU seconds per GiB moved by one job: all the target's processes, and its client (the
/// FUSE daemon) alone.
#[derive(Clone, Copy)]
struct Cpu {
    all_per_gib: f64,
    client_per_gib: f64,
}

struct Row {
    name: String,
    class: Class,
    figures: Vec<Option<f64>>,
    /// J1x1 (1 GiB written).
    write_cpu: Option<Cpu>,
    /// J2x1 (the same GiB read back, caches dropped).
    read_cpu: Option<Cpu>,
    failure: Option<String>,
}

impl Row {
    fn new(name: String, class: Class, jobs: usize) -> Row {
        Row {
            name,
            class,
            figures: vec![None; jobs],
            write_cpu: None,
            read_cpu: None,
            failure: None,
        }
    }
}

/// The processes whose CPU a target is charged: all of them, and which are its client.
struct Pids {
    all: Vec<u32>,
    client: Vec<u32>,
}

/// FUSE daemons of the peers, by executable name (the rest are servers).
const PEER_CLIENTS: [&str; 3] = ["mfsmount", "glusterfs", "juicefs"];

impl Pids {
    /// A peer's recorded processes, its client told apart by name.
    fn of_peer(all: Vec<u32>) -> Pids {
        let client = all
            .iter()
            .copied()
            .filter(|pid| {
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                PEER_CLIENTS.contains(&comm.trim())
            })
            .collect();
        Pids { all, client }
    }
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

fn run_jobs(jobs_dir: &Path, jobs: &[&fio::Job], dir: &Path, pids: &Pids, row: &mut Row) -> anyhow::Result<()> {
    for (column, job) in jobs.iter().enumerate() {
        eprint!("  {} ... ", job.name);
        let (all_before, client_before) = (
            crate::fuse::cpu_seconds(&pids.all),
            crate::fuse::cpu_seconds(&pids.client),
        );
        let figure = fio::run_job(jobs_dir, job, dir)?;
        // J1x1 writes 1 GiB and J2x1 reads it back: their CPU seconds are per GiB.
        let cpu = (!pids.all.is_empty()).then(|| Cpu {
            all_per_gib: crate::fuse::cpu_seconds(&pids.all) - all_before,
            client_per_gib: crate::fuse::cpu_seconds(&pids.client) - client_before,
        });
        match job.name {
            "J1x1" => row.write_cpu = cpu,
            "J2x1" => row.read_cpu = cpu,
            _ => {}
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
        let mut row = Row::new(name, Class::Shoal { replicas }, jobs.len());
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
        let class = if peer == "juicefs" {
            Class::OneCopy
        } else {
            Class::Replicated
        };
        let mut row = Row::new(peer.clone(), class, jobs.len());
        let outcome = match script(peer, &["start", &work_arg, &mount_arg], START_TIMEOUT) {
            Ok(description) => {
                row.name = description;
                eprintln!("{}", row.name);
                let pids = Pids::of_peer(recorded_pids(&work));
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
        let client: Vec<u32> = mount.process.as_ref().and_then(Process::pid).into_iter().collect();
        pids.extend(&client);
        let pids = Pids {
            all: pids.clone(),
            client,
        };
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

fn cpu_cell(cpu: Option<Cpu>) -> String {
    cpu.map_or("–".into(), |cpu| {
        format!("{:.1} / {:.1}", cpu.all_per_gib, cpu.client_per_gib)
    })
}

/// Per job, the best figure among the rows `pick` selects.
fn best_of(jobs: usize, rows: &[Row], pick: impl Fn(&Row) -> bool) -> Vec<Option<f64>> {
    (0..jobs)
        .map(|column| {
            rows.iter()
                .filter(|row| pick(row))
                .filter_map(|row| row.figures[column])
                .fold(None, |best: Option<f64>, value| {
                    Some(best.map_or(value, |b| b.max(value)))
                })
        })
        .collect()
}

fn ratio_row(name: &str, shoal: Option<&Row>, reference: &[Option<f64>]) -> String {
    let ratios: Vec<String> = reference
        .iter()
        .enumerate()
        .map(
            |(column, best)| match (shoal.and_then(|row| row.figures[column]), best) {
                (Some(shoal), Some(best)) if *best > 0.0 => format!("**{:.2}x**", shoal / best),
                _ => "–".into(),
            },
        )
        .collect();
    format!("| {name} | {} | | |\n", ratios.join(" | "))
}

fn table(jobs: &[&fio::Job], rows: &[Row]) -> String {
    let header: Vec<String> = jobs
        .iter()
        .map(|job| format!("{} {}", job.name, job.figure.unit()))
        .collect();
    let mut out = String::from(
        "### Shoal beside peer file systems: the yardstick fio job set, one run, all on loopback\n\n\
         `bench/peers/compare` (= `shoal-bench peers`). Every target has a registry/master and 3 \
         storage daemons on this machine; targets run one after another; caches dropped before read jobs. \
         CPU columns: CPU seconds per GiB of all the target's processes / of its FUSE client alone \
         (J1x1 writes 1 GiB, J2x1 reads it back).\n\n",
    );
    out.push_str(&format!(
        "| target | {} | CPU-s per GiB written (J1x1): all / client | CPU-s per GiB read (J2x1): all / client |\n|---|{}---:|---:|\n",
        header.join(" | "),
        "---:|".repeat(jobs.len())
    ));
    for row in rows {
        let cells: Vec<String> = row
            .figures
            .iter()
            .map(|figure| figure.map_or("–".into(), |value| format!("{value:.0}")))
            .collect();
        out.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            row.name,
            cells.join(" | "),
            cpu_cell(row.write_cpu),
            cpu_cell(row.read_cpu)
        ));
    }
    let shoal = |replicas| rows.iter().find(|row| row.class == Class::Shoal { replicas });
    let is_peer = |row: &Row| !matches!(row.class, Class::Shoal { .. });
    // Row names are fixed: scripts look for them.
    out.push_str(&ratio_row(
        "Shoal, 3 copies ÷ best replicated peer",
        shoal(3),
        &best_of(jobs.len(), rows, |row| row.class == Class::Replicated),
    ));
    out.push_str(&ratio_row(
        "Shoal, 1 copy ÷ JuiceFS",
        shoal(1),
        &best_of(jobs.len(), rows, |row| row.class == Class::OneCopy),
    ));
    out.push_str(&ratio_row(
        "Shoal, 3 copies ÷ best peer",
        shoal(3),
        &best_of(jobs.len(), rows, is_peer),
    ));
    out.push_str(&ratio_row(
        "Shoal, 1 copy ÷ best peer",
        shoal(1),
        &best_of(jobs.len(), rows, is_peer),
    ));
    let failures: Vec<String> = rows
        .iter()
        .filter_map(|row| row.failure.as_ref().map(|failure| format!("- {}: {failure}", row.name)))
        .collect();
    if !failures.is_empty() {
        out.push_str(&format!("\nFailed in this run:\n{}\n", failures.join("\n")));
    }
    out
}
