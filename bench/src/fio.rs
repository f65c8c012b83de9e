//! Running the yardstick fio job set (`../shared/yardsticks/jobs`) against a directory and
//! reading back one figure per job from fio's JSON output.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;

/// One job of the set: its name, the job file it runs, the figure it yields, and how the
/// page cache is prepared: dropped first (read jobs must read from the file system, not
/// from memory), or warmed by reading a file whole (the "warm cache" figures).
pub struct Job {
    pub name: &'static str,
    pub file: &'static str,
    pub figure: Figure,
    pub drop_caches_first: bool,
    pub warm_file: Option<&'static str>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Figure {
    WriteMibPerSecond,
    ReadMibPerSecond,
    WriteIops,
    ReadIops,
    /// fio's file engines (create, stat, delete) count each operation as a read.
    OperationsPerSecond,
}

impl Figure {
    pub fn unit(self) -> &'static str {
        match self {
            Figure::WriteMibPerSecond | Figure::ReadMibPerSecond => "MiB/s",
            Figure::WriteIops | Figure::ReadIops => "IOPS",
            Figure::OperationsPerSecond => "ops/s",
        }
    }
}

/// The job set in the order it must run: reads follow the writes that made their files.
/// How much of a job's file the warm-up reads: J3 and J4 use a 256 MiB file.
const WARM_BYTES: u64 = 256 << 20;

pub const JOBS: [Job; 10] = [
    job("J1x1", Figure::WriteMibPerSecond, false),
    job("J2x1", Figure::ReadMibPerSecond, true),
    job("J1x4", Figure::WriteMibPerSecond, false),
    job("J2x4", Figure::ReadMibPerSecond, true),
    job("J3", Figure::WriteIops, false),
    job("J4", Figure::ReadIops, true),
    // J4 again on a warm cache: the file J3 wrote read whole first, caches kept.
    Job {
        name: "J4warm",
        file: "J4",
        figure: Figure::ReadIops,
        drop_caches_first: false,
        warm_file: Some("j3.dat"),
    },
    job("J5create", Figure::OperationsPerSecond, false),
    job("J5stat", Figure::OperationsPerSecond, false),
    job("J5delete", Figure::OperationsPerSecond, false),
];

const fn job(name: &'static str, figure: Figure, drop_caches_first: bool) -> Job {
    Job {
        name,
        file: name,
        figure,
        drop_caches_first,
        warm_file: None,
    }
}

/// Where the job files are: `--jobs`, else `shared/yardsticks/jobs` beside the checkout
/// (looked up from the current directory, then from where this binary was built).
pub fn jobs_dir(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let candidates = match given {
        Some(dir) => vec![dir],
        None => vec![
            PathBuf::from("../shared/yardsticks/jobs"),
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/yardsticks/jobs"),
        ],
    };
    let found = candidates.iter().find(|dir| dir.join("J1x1.fio").is_file());
    let Some(dir) = found else {
        anyhow::bail!("no fio job set in {candidates:?}; pass --jobs DIR (the yardsticks' jobs directory)");
    };
    Ok(std::fs::canonicalize(dir)?)
}

/// Empties the page cache (root only; without it read figures would measure memory).
pub fn drop_caches() {
    settle_disk();
    if let Ok(mut file) = std::fs::OpenOptions::new().write(true).open("/proc/sys/vm/drop_caches") {
        let _ = file.write_all(b"3\n");
    }
}

/// Writes every dirty page back (`sync`), so that a job does not pay for the bytes an
/// earlier job or target left for the disk to flush (a 1 GiB local-disk write otherwise
/// lands on the next target's disk time).
pub fn settle_disk() {
    let _ = Command::new("sync").status();
}

/// Runs `job` with its files in `dir` and returns its figure.
pub fn run_job(jobs_dir: &Path, job: &Job, dir: &Path) -> anyhow::Result<f64> {
    if job.drop_caches_first {
        drop_caches();
    } else {
        settle_disk();
    }
    if let Some(file) = job.warm_file {
        // Only the bytes the job reads: the null file system's files claim 1 TiB.
        let path = dir.join(file);
        let reader = std::fs::File::open(&path).with_context(|| format!("warming {}", path.display()))?;
        std::io::copy(&mut reader.take(WARM_BYTES), &mut std::io::sink())
            .with_context(|| format!("warming {}", path.display()))?;
    }
    let output = Command::new("fio")
        .arg("--output-format=json")
        .arg(jobs_dir.join(format!("{}.fio", job.file)))
        .env("YS_MNT", dir)
        .output()
        .context("cannot run fio (apt-get install fio)")?;
    anyhow::ensure!(
        output.status.success(),
        "fio {} in {} failed: {}",
        job.name,
        dir.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    // fio may print warnings before the JSON document.
    let text = String::from_utf8_lossy(&output.stdout);
    let start = text
        .find('{')
        .ok_or_else(|| anyhow::anyhow!("no JSON in fio's output: {text}"))?;
    let report: serde_json::Value = serde_json::from_str(&text[start..]).context("fio's JSON output")?;
    let totals = &report["jobs"][0];
    anyhow::ensure!(
        totals["error"].as_i64() == Some(0),
        "fio {} reported error {}",
        job.name,
        totals["error"]
    );
    let number = |side: &str, field: &str| totals[side][field].as_f64().unwrap_or(0.0);
    Ok(match job.figure {
        // fio's bw is in KiB/s.
        Figure::WriteMibPerSecond => number("write", "bw") / 1024.0,
        Figure::ReadMibPerSecond => number("read", "bw") / 1024.0,
        Figure::WriteIops => number("write", "iops"),
        Figure::ReadIops | Figure::OperationsPerSecond => number("read", "iops"),
    })
}
