//! The yardstick fio job set through a Shoal FUSE mount (replication 1 and 3), beside the
//! FUSE ceiling (`nullfs.c`), a FUSE passthrough (bindfs) and the local disk, all in one
//! run. Jobs are interleaved across targets (J1x1 on every target, then J2x1, …) so that
//! a noisy moment of the machine does not land on one target only.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context;
use shoal_client::proto as pb;
use shoal_testkit::{FuseMount, Process, ShoalCluster, is_fuse_mounted, shoal_binary, wait_for};

use crate::fio::{self, JOBS};

#[derive(clap::Args)]
pub struct FuseArgs {
    /// The yardsticks' fio job directory [default: ../shared/yardsticks/jobs].
    #[arg(long)]
    jobs: Option<PathBuf>,
    /// The null FUSE file system's source [default: the yardsticks' nullfs.c].
    #[arg(long)]
    nullfs_source: Option<PathBuf>,
    /// Only these jobs (names as in the job set, e.g. J1x1,J4).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Data services to start.
    #[arg(long, default_value_t = 3)]
    data_services: usize,
    /// Directory on the local disk for the local-disk target [default: /var/tmp].
    #[arg(long, default_value = "/var/tmp")]
    local_dir: PathBuf,
}

/// A FUSE file system other than Shoal run for comparison, unmounted and stopped on drop.
struct OtherMount {
    dir: PathBuf,
    process: Option<Process>,
}

impl OtherMount {
    async fn start(name: &str, program: &Path, args: &[String], dir: &Path, log: &Path) -> anyhow::Result<OtherMount> {
        let process = Process::spawn(name, program, args, log)?;
        let mount = OtherMount {
            dir: dir.to_path_buf(),
            process: Some(process),
        };
        wait_for(&format!("{name} to mount"), Duration::from_secs(30), || {
            let mounted = is_fuse_mounted(dir);
            async move { mounted.then_some(()) }
        })
        .await
        .with_context(|| std::fs::read_to_string(log).unwrap_or_default())?;
        Ok(mount)
    }
}

impl Drop for OtherMount {
    fn drop(&mut self) {
        if is_fuse_mounted(&self.dir) {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
        if let Some(mut process) = self.process.take() {
            process.terminate(Duration::from_secs(5));
        }
    }
}

struct Target {
    name: &'static str,
    dir: PathBuf,
    /// Processes whose CPU time is charged to this target (Shoal's), for CPU-s per GiB.
    pids: Vec<u32>,
}

/// CPU seconds (user + system) used so far by `pids`. /proc counts in USER_HZ, which is
/// 100 on every Linux this runs on.
pub fn cpu_seconds(pids: &[u32]) -> f64 {
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .filter_map(|stat| {
            // Fields after the command name (which may hold spaces) start after ") ".
            let rest = &stat[stat.rfind(')')? + 2..];
            let fields: Vec<&str> = rest.split(' ').collect();
            Some(fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?)
        })
        .sum::<f64>()
        / 100.0
}

fn build_nullfs(source: &Path, out_dir: &Path) -> anyhow::Result<PathBuf> {
    let binary = out_dir.join("nullfs");
    let flags = Command::new("pkg-config")
        .args(["fuse3", "--cflags", "--libs"])
        .output()
        .context("pkg-config (apt-get install pkg-config libfuse3-dev)")?;
    anyhow::ensure!(flags.status.success(), "pkg-config fuse3 failed: install libfuse3-dev");
    let flags = String::from_utf8(flags.stdout)?;
    let status = Command::new("gcc")
        .args(["-O2", "-o"])
        .arg(&binary)
        .arg(source)
        .args(flags.split_whitespace())
        .status()
        .context("gcc")?;
    anyhow::ensure!(status.success(), "building {} failed", source.display());
    Ok(binary)
}

pub async fn run(args: FuseArgs) -> anyhow::Result<()> {
    let jobs_dir = fio::jobs_dir(args.jobs.clone())?;
    let nullfs_source = args
        .nullfs_source
        .clone()
        .unwrap_or_else(|| jobs_dir.join("../nullfs.c"));
    let scratch = tempfile::tempdir()?;
    let local =
        tempfile::tempdir_in(&args.local_dir).with_context(|| format!("temp dir in {}", args.local_dir.display()))?;

    // Ctrl-C reaches fio too; the failed job then unwinds through every guard below.
    tokio::spawn(async {
        let _ = tokio::signal::ctrl_c().await;
        eprintln!("interrupted: cleaning up");
    });

    let nullfs_binary = build_nullfs(&nullfs_source, scratch.path())?;
    let nullfs_dir = scratch.path().join("nullfs-mnt");
    std::fs::create_dir_all(&nullfs_dir)?;
    let _nullfs = OtherMount::start(
        "nullfs",
        &nullfs_binary,
        &[
            "-f".into(),
            "-o".into(),
            "max_read=1048576".into(),
            nullfs_dir.display().to_string(),
        ],
        &nullfs_dir,
        &scratch.path().join("nullfs.log"),
    )
    .await?;
    let bindfs_source = local.path().join("bindfs-source");
    let bindfs_dir = scratch.path().join("bindfs-mnt");
    std::fs::create_dir_all(&bindfs_source)?;
    std::fs::create_dir_all(&bindfs_dir)?;
    let _bindfs = OtherMount::start(
        "bindfs",
        Path::new("bindfs"),
        &[
            "-f".into(),
            bindfs_source.display().to_string(),
            bindfs_dir.display().to_string(),
        ],
        &bindfs_dir,
        &scratch.path().join("bindfs.log"),
    )
    .await
    .context("bindfs (apt-get install bindfs)")?;

    let binary = shoal_binary()?;
    eprintln!("starting Shoal: 1 registry, {} data services", args.data_services);
    let mut cluster = ShoalCluster::start(&binary, 1, args.data_services, &[]).await?;
    let mut mounts = Vec::new();
    for replicas in [1u32, 3] {
        let name = format!("bench-r{replicas}");
        cluster
            .registry
            .client()
            .create_volume(pb::CreateVolumeRequest {
                name: name.clone(),
                replicas,
                ..Default::default()
            })
            .await?;
        let dir = scratch.path().join(&name);
        let log = scratch.path().join(format!("{name}.log"));
        mounts.push(FuseMount::start(&binary, &cluster.registry.registry_arg(), &name, &dir, &[], &log).await?);
    }
    let mut shoal_pids: Vec<u32> = cluster.data.iter().filter_map(|d| d.process.as_ref()?.pid()).collect();
    shoal_pids.extend(cluster.registry.node(1).process.as_ref().and_then(Process::pid));
    let pids_with = |mount: &FuseMount| {
        let mut pids = shoal_pids.clone();
        pids.extend(mount.process.as_ref().and_then(Process::pid));
        pids
    };
    let targets = [
        Target {
            name: "local disk (ext4)",
            dir: local.path().join("local"),
            pids: Vec::new(),
        },
        Target {
            name: "FUSE ceiling (nullfs.c)",
            dir: nullfs_dir.clone(),
            pids: Vec::new(),
        },
        Target {
            name: "FUSE passthrough (bindfs)",
            dir: bindfs_dir.clone(),
            pids: Vec::new(),
        },
        Target {
            name: "Shoal, 1 copy",
            dir: mounts[0].dir.clone(),
            pids: pids_with(&mounts[0]),
        },
        Target {
            name: "Shoal, 3 copies",
            dir: mounts[1].dir.clone(),
            pids: pids_with(&mounts[1]),
        },
    ];
    std::fs::create_dir_all(&targets[0].dir)?;

    let jobs: Vec<&fio::Job> = JOBS
        .iter()
        .filter(|job| args.only.is_empty() || args.only.iter().any(|name| name == job.name))
        .collect();
    let mut figures = vec![vec![None; jobs.len()]; targets.len()];
    let mut write_cpu = vec![None; targets.len()];
    let result = (|| {
        for (column, job) in jobs.iter().enumerate() {
            for (row, target) in targets.iter().enumerate() {
                eprint!("{} on {} ... ", job.name, target.name);
                let cpu_before = cpu_seconds(&target.pids);
                let figure = fio::run_job(&jobs_dir, job, &target.dir)?;
                if job.name == "J1x1" && !target.pids.is_empty() {
                    // J1x1 writes 1 GiB.
                    write_cpu[row] = Some(cpu_seconds(&target.pids) - cpu_before);
                }
                eprintln!("{figure:.0} {}", job.figure.unit());
                figures[row][column] = Some(figure);
            }
        }
        Ok::<(), anyhow::Error>(())
    })();
    let logs = if result.is_err() { cluster.logs() } else { String::new() };
    drop(mounts);
    cluster.stop_all();
    result.with_context(|| logs)?;
    print_table(&targets, &jobs, &figures, &write_cpu);
    Ok(())
}

fn print_table(targets: &[Target], jobs: &[&fio::Job], figures: &[Vec<Option<f64>>], write_cpu: &[Option<f64>]) {
    println!();
    let header: Vec<String> = jobs
        .iter()
        .map(|job| format!("{} {}", job.name, job.figure.unit()))
        .collect();
    println!("| target | {} | CPU-s per GiB written (J1x1) |", header.join(" | "));
    println!("|---|{}---:|", "---:|".repeat(jobs.len()));
    for (row, target) in targets.iter().enumerate() {
        let cells: Vec<String> = figures[row]
            .iter()
            .map(|figure| figure.map_or("–".into(), |value| format!("{value:.0}")))
            .collect();
        let cpu = write_cpu[row].map_or("–".into(), |seconds| format!("{seconds:.1}"));
        println!("| {} | {} | {cpu} |", target.name, cells.join(" | "));
    }
    // The targets, as ratios measured in this run.
    let find = |row: usize, name: &str| {
        jobs.iter()
            .position(|job| job.name == name)
            .and_then(|column| figures[row][column])
    };
    let (local, nullfs, bindfs, shoal_one) = (0, 1, 2, 3);
    println!();
    for (job, what) in [
        ("J1x1", "sequential write, 1 job"),
        ("J2x1", "sequential read, 1 job"),
        ("J1x4", "sequential write, 4 jobs"),
        ("J2x4", "sequential read, 4 jobs"),
    ] {
        if let (Some(shoal), Some(ceiling), Some(disk)) = (find(shoal_one, job), find(nullfs, job), find(local, job)) {
            let limit = ceiling.min(disk);
            println!(
                "- {what} ({job}), 1 copy: {shoal:.0} MiB/s = {:.0}% of min(FUSE ceiling, local disk) = {limit:.0} MiB/s",
                100.0 * shoal / limit
            );
        }
    }
    for (job, what) in [
        ("J4", "4 KiB random read, cold cache"),
        ("J4warm", "4 KiB random read, warm cache"),
    ] {
        if let (Some(shoal), Some(passthrough)) = (find(shoal_one, job), find(bindfs, job)) {
            println!(
                "- {what} ({job}), 1 copy: {shoal:.0} IOPS = {:.2}x bindfs ({passthrough:.0} IOPS)",
                shoal / passthrough
            );
        }
    }
}
