//! fio on every client host at once, and the aggregate it moved.
//!
//! Aggregates are total bytes (or operations) over the wall-clock time from the first fio
//! start to the last fio exit: a client that finishes early does not inflate the figure.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::cleanup;

/// Bound on one phase: a stuck mount must fail the run, not hang it.
const PHASE_TIMEOUT: Duration = Duration::from_secs(900);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    SequentialWrite,
    SequentialRead,
    RandomRead4k,
}

impl Workload {
    pub const ALL: [Workload; 3] = [
        Workload::SequentialWrite,
        Workload::SequentialRead,
        Workload::RandomRead4k,
    ];

    pub fn title(self) -> &'static str {
        match self {
            Workload::SequentialWrite => "sequential write (1 MiB)",
            Workload::SequentialRead => "sequential read (1 MiB)",
            Workload::RandomRead4k => "4 KiB random read",
        }
    }

    pub fn short(self) -> &'static str {
        match self {
            Workload::SequentialWrite => "seq-write",
            Workload::SequentialRead => "seq-read",
            Workload::RandomRead4k => "rand-read-4k",
        }
    }
}

/// What one phase moved, summed over the client hosts.
#[derive(Clone, Copy, Debug, Default)]
pub struct Aggregate {
    pub mib_per_second: f64,
    pub iops: f64,
    /// Share of the machine's CPU time that was busy during the phase, in percent: every
    /// host shares the same cores, so a phase near 100% is bound by them, not by links.
    pub cpu_busy_percent: f64,
}

/// (busy, total) jiffies of all CPUs so far, from /proc/stat.
fn cpu_jiffies() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|field| field.parse().ok())
        .collect();
    let total: u64 = fields.iter().take(8).sum();
    // idle and iowait are the fourth and fifth fields.
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

pub struct Sizes {
    /// Bytes each client writes, then another client reads.
    pub file_bytes: u64,
    pub random_runtime: Duration,
    /// fio jobs per client for random reads (each one request at a time).
    pub random_jobs_per_client: u32,
}

/// The file client `index` writes. Client `index` reads its neighbour's sequentially and
/// the next one's at random, so no read is served from what the reader cached before.
fn file_of(index: usize) -> String {
    format!("seq.c{index}")
}

fn fio_args(workload: Workload, index: usize, clients: usize, sizes: &Sizes) -> Vec<String> {
    let mut args = vec![
        "--output-format=json".to_string(),
        format!("--name={}", workload.short()),
        "--ioengine=psync".into(),
        "--fallocate=none".into(),
        "--group_reporting=1".into(),
        format!("--size={}", sizes.file_bytes),
    ];
    let neighbour = (index + 1) % clients;
    let second_neighbour = (index + 2) % clients;
    match workload {
        Workload::SequentialWrite => args.extend([
            "--rw=write".into(),
            "--bs=1m".into(),
            "--end_fsync=1".into(),
            format!("--filename={}", file_of(index)),
        ]),
        Workload::SequentialRead => args.extend([
            "--rw=read".into(),
            "--bs=1m".into(),
            format!("--filename={}", file_of(neighbour)),
        ]),
        Workload::RandomRead4k => args.extend([
            "--rw=randread".into(),
            "--bs=4k".into(),
            // Repeated offsets must not be answered by the reader's page cache.
            "--direct=1".into(),
            "--time_based=1".into(),
            format!("--runtime={}", sizes.random_runtime.as_secs().max(1)),
            format!("--numjobs={}", sizes.random_jobs_per_client),
            format!("--filename={}", file_of(second_neighbour)),
        ]),
    }
    args
}

struct Running {
    child: Child,
    output: PathBuf,
}

/// Runs `workload` on every mount in `mounts` at once.
pub fn run(workload: Workload, mounts: &[PathBuf], sizes: &Sizes, scratch: &Path) -> anyhow::Result<Aggregate> {
    assert!(!mounts.is_empty());
    if workload != Workload::SequentialWrite {
        crate::fio::drop_caches();
    }
    let started = Instant::now();
    let cpu_before = cpu_jiffies();
    let mut running = Vec::with_capacity(mounts.len());
    for (index, dir) in mounts.iter().enumerate() {
        let output = scratch.join(format!("fio-{}-{index}.json", workload.short()));
        let child = Command::new("fio")
            .args(fio_args(workload, index, mounts.len(), sizes))
            .arg(format!("--output={}", output.display()))
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot run fio (apt-get install fio)")?;
        cleanup::process("fio", child.id());
        running.push(Running { child, output });
    }
    let mut total_bytes = 0u64;
    let mut total_operations = 0u64;
    let mut failures = Vec::new();
    for (index, mut run) in running.into_iter().enumerate() {
        let status = wait_bounded(&mut run.child, PHASE_TIMEOUT.saturating_sub(started.elapsed()));
        cleanup::forget_process(run.child.id());
        let mut stderr = String::new();
        if let Some(mut pipe) = run.child.stderr.take() {
            use std::io::Read;
            let _ = pipe.read_to_string(&mut stderr);
        }
        match status {
            Some(status) if status.success() => {}
            Some(status) => {
                failures.push(format!("client {index}: fio exited with {status}: {stderr}"));
                continue;
            }
            None => {
                failures.push(format!("client {index}: fio did not finish within {PHASE_TIMEOUT:?}"));
                continue;
            }
        }
        let (bytes, operations) = moved(&run.output, workload).with_context(|| format!("client {index}"))?;
        total_bytes += bytes;
        total_operations += operations;
    }
    anyhow::ensure!(
        failures.is_empty(),
        "{} failed: {}",
        workload.title(),
        failures.join("; ")
    );
    let seconds = started.elapsed().as_secs_f64();
    let cpu_after = cpu_jiffies();
    let busy = cpu_after.0.saturating_sub(cpu_before.0) as f64;
    let total = cpu_after.1.saturating_sub(cpu_before.1).max(1) as f64;
    Ok(Aggregate {
        mib_per_second: total_bytes as f64 / seconds / (1 << 20) as f64,
        iops: total_operations as f64 / seconds,
        cpu_busy_percent: 100.0 * busy / total,
    })
}

/// Waits for `child` at most `timeout`; kills it after that.
fn wait_bounded(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let started = Instant::now();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if started.elapsed() >= timeout {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Bytes and operations of one fio run, from its JSON report.
fn moved(output: &Path, workload: Workload) -> anyhow::Result<(u64, u64)> {
    let text = std::fs::read_to_string(output).with_context(|| format!("reading {}", output.display()))?;
    let start = text.find('{').context("no JSON in fio's output")?;
    let report: serde_json::Value = serde_json::from_str(&text[start..]).context("fio's JSON output")?;
    let job = &report["jobs"][0];
    anyhow::ensure!(job["error"].as_i64() == Some(0), "fio reported error {}", job["error"]);
    let side = if workload == Workload::SequentialWrite {
        "write"
    } else {
        "read"
    };
    let bytes = job[side]["io_bytes"].as_u64().unwrap_or(0);
    let operations = job[side]["total_ios"].as_u64().unwrap_or(0);
    anyhow::ensure!(bytes > 0, "fio moved no bytes");
    Ok((bytes, operations))
}
