//! `shoal-bench faults`: Jepsen-style fault injection with real processes. Writers on two
//! FUSE mounts keep a model of what Shoal acknowledged (a write followed by a successful
//! fsync or close) while a nemesis SIGKILLs, pauses and restarts data services, registry
//! nodes and mounts and cuts hosts off the network (network namespaces). Checkers read every
//! acknowledged byte back, during the run and, after healing, through the other mount; and
//! compare every chain's replicas. Lost or wrong bytes, replicas that differ and unexpected
//! errors must all be zero; the run exits non-zero otherwise.
//!
//! The short form (`--faults 30`) runs in CI (`bench/tests/faults.rs`); the long one writes
//! the `faults` section of `bench/RESULTS.md`.

mod cluster;
mod model;
mod nemesis;
mod replicas;
mod writers;

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use shoal_testkit::shoal_binary;

use crate::{cleanup, report};
use cluster::{FaultCluster, MOUNTS};
use model::Verdict;
use nemesis::{Fault, Tally};
use writers::WriterOutcome;
pub use writers::{WriterArgs, run_process as run_writer};

/// Steps between waits for the whole cluster to be complete again (chains refilled).
const COMPLETE_EVERY_STEPS: u64 = 8;

#[derive(clap::Args)]
pub struct FaultArgs {
    /// Faults to inject (a repeated kill counts twice).
    #[arg(long, default_value_t = 1000)]
    faults: u64,
    /// Seed of every random choice (default: from the clock; printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Writer threads per mount.
    #[arg(long, default_value_t = 2)]
    writers_per_mount: usize,
    /// Files per writer.
    #[arg(long, default_value_t = 3)]
    files_per_writer: usize,
    /// Write the `faults` section of this file.
    #[arg(long, default_value_os_t = report::default_results_file())]
    results: PathBuf,
    /// Print the summary only; leave RESULTS.md alone.
    #[arg(long)]
    no_report: bool,
}

/// The counts a run ends with.
#[derive(Default)]
struct Summary {
    seed: u64,
    tally: Tally,
    seconds: f64,
    writes_acknowledged: u64,
    bytes_acknowledged: u64,
    writes_failed: u64,
    reads_checked: u64,
    during: Verdict,
    after: Verdict,
    files_checked: u64,
    chunks_compared: u64,
    replicas_differing: Vec<String>,
    expected_errors: std::collections::BTreeMap<String, u64>,
    unexpected_errors: Vec<String>,
    recoveries_slow: u64,
}

impl Summary {
    fn failed(&self) -> bool {
        !self.during.is_clean()
            || !self.after.is_clean()
            || !self.replicas_differing.is_empty()
            || !self.unexpected_errors.is_empty()
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "seed": self.seed,
            "faults": self.tally.total(),
            "faults_by_kind": self.tally.by_kind.iter().map(|(k, v)| (k.name(), *v)).collect::<std::collections::BTreeMap<_, _>>(),
            "seconds": self.seconds,
            "writes_acknowledged": self.writes_acknowledged,
            "bytes_acknowledged": self.bytes_acknowledged,
            "writes_failed": self.writes_failed,
            "reads_checked": self.reads_checked,
            "bytes_checked": self.during.bytes_checked + self.after.bytes_checked,
            "lost_bytes": self.during.lost_bytes + self.after.lost_bytes,
            "wrong_bytes": self.during.wrong_bytes + self.after.wrong_bytes,
            "stray_bytes": self.during.stray_bytes + self.after.stray_bytes,
            "bytes_unknown_at_end": self.after.bytes_unknown,
            "files_checked": self.files_checked,
            "chunks_compared": self.chunks_compared,
            "replicas_differing": self.replicas_differing,
            "expected_errors": self.expected_errors,
            "unexpected_errors": self.unexpected_errors,
            "recoveries_slower_than_timeout": self.recoveries_slow,
        })
    }
}

pub async fn run(args: FaultArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.faults > 0 && args.writers_per_mount > 0 && args.files_per_writer > 0,
        "counts must be positive"
    );
    let seed = args.seed.unwrap_or_else(|| rand::rng().random());
    println!("faults: seed {seed} (rerun with --seed {seed})");
    let binary = shoal_binary()?;
    cleanup::on_interrupt();
    let _guard = cleanup::Guard;
    let root = PathBuf::from(format!("/tmp/shoal-faults-{}", std::process::id()));
    let mut cluster = FaultCluster::start(&binary, &root).await?;
    let outcome = inject_and_check(&mut cluster, &args, seed).await;
    let logs = cluster.logs();
    if outcome.as_ref().map_or(true, Summary::failed) {
        keep_logs(&root);
    }
    cluster.stop();
    let summary = outcome.map_err(|error| error.context(logs.clone()))?;
    println!("FAULTS-SUMMARY {}", summary.json());
    if !args.no_report {
        report::replace_section(&args.results, "faults", &markdown(&summary, &args))?;
        println!("wrote the faults section of {}", args.results.display());
    }
    if summary.failed() {
        anyhow::bail!(
            "acknowledged data was lost or wrong, replicas differ, or errors were unexpected:\n{}\n{logs}",
            summary.json()
        );
    }
    Ok(())
}

/// Copies a failed run's logs out of its cluster directory (which `stop` removes, data and
/// all) to `ROOT-logs`, so the whole history of every process can be read afterwards.
fn keep_logs(root: &std::path::Path) {
    let kept = root.with_file_name(format!(
        "{}-logs",
        root.file_name().unwrap_or_default().to_string_lossy()
    ));
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    if std::fs::create_dir_all(&kept).is_err() {
        return;
    }
    for entry in entries.flatten() {
        if entry.path().extension().is_some_and(|e| e == "log") {
            let _ = std::fs::copy(entry.path(), kept.join(entry.file_name()));
        }
    }
    println!(
        "faults: the run failed; every process's log is kept in {}",
        kept.display()
    );
}

async fn inject_and_check(cluster: &mut FaultCluster, args: &FaultArgs, seed: u64) -> anyhow::Result<Summary> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut writers = start_writers(cluster, args, seed)?;
    let started = Instant::now();
    let mut summary = Summary {
        seed,
        ..Summary::default()
    };
    let progress = indicatif::ProgressBar::new(args.faults);
    let mut steps = 0u64;
    // Bounded: every step injects at least one fault.
    while summary.tally.total() < args.faults {
        steps += 1;
        let fault = Fault::ALL[rng.random_range(0..Fault::ALL.len())];
        progress.set_message(fault.name());
        let step_started = Instant::now();
        let injected = nemesis::inject(cluster, fault, &mut rng).await;
        let injected_after = step_started.elapsed();
        let injected = match injected {
            Ok(count) => count,
            Err(error) => {
                summary
                    .unexpected_errors
                    .push(format!("injecting {}: {error:#}", fault.name()));
                cluster.heal().await?;
                cluster.wait_healthy(true).await?;
                1
            }
        };
        summary.tally.add(fault, injected);
        progress.inc(injected);
        // Every process is back after each step; the next fault may land during refills,
        // but every few steps the cluster must become whole again.
        let complete = steps.is_multiple_of(COMPLETE_EVERY_STEPS);
        if let Err(error) = cluster.wait_healthy(complete).await {
            summary.recoveries_slow += 1;
            summary
                .unexpected_errors
                .push(format!("after {}: {error:#}", fault.name()));
            cluster.heal().await?;
            cluster.wait_healthy(true).await?;
        }
        progress.suspend(|| {
            eprintln!(
                "step {steps}: {} ({:.1} s), recovered{} after {:.1} s",
                fault.name(),
                injected_after.as_secs_f64(),
                if complete { " completely" } else { "" },
                (step_started.elapsed() - injected_after).as_secs_f64()
            )
        });
    }
    progress.finish_and_clear();
    for writer in &mut writers {
        writer.tell("stop")?;
    }
    for writer in &mut writers {
        writer.expect("stopped")?;
    }
    cluster.heal().await?;
    cluster.wait_healthy(true).await?;
    summary.seconds = started.elapsed().as_secs_f64();
    let mut outcomes = Vec::new();
    for writer in &mut writers {
        writer.tell("check")?;
        outcomes.push(writer.outcome()?);
    }
    for outcome in &outcomes {
        summary.writes_acknowledged += outcome.writes_acknowledged;
        summary.bytes_acknowledged += outcome.bytes_acknowledged;
        summary.writes_failed += outcome.writes_failed;
        summary.reads_checked += outcome.reads_checked;
        summary.during.add(&outcome.verdict);
        summary.after.add(&outcome.verdict_after);
        summary.files_checked += outcome.files_checked;
        for (errno, count) in &outcome.expected_errors {
            *summary.expected_errors.entry(errno.clone()).or_default() += count;
        }
        summary
            .unexpected_errors
            .extend(outcome.unexpected_errors.iter().cloned());
    }
    let (compared, differing) = replicas::compare_until_converged(&cluster.client).await?;
    summary.chunks_compared = compared;
    summary.replicas_differing = differing;
    Ok(summary)
}

/// A writer process, driven over its stdin and stdout.
struct WriterProcess {
    child: Child,
    stdout: BufReader<ChildStdout>,
}

impl WriterProcess {
    fn tell(&mut self, line: &str) -> anyhow::Result<()> {
        let stdin = self.child.stdin.as_mut().expect("stdin is piped");
        writeln!(stdin, "{line}")?;
        Ok(stdin.flush()?)
    }

    /// The next line the writer prints that starts with `prefix`, without it.
    fn expect(&mut self, prefix: &str) -> anyhow::Result<String> {
        // Bounded by the writer's output, which ends when it exits.
        loop {
            let mut line = String::new();
            if self.stdout.read_line(&mut line)? == 0 {
                anyhow::bail!("a writer exited before printing {prefix:?}: {:?}", self.child.wait());
            }
            if let Some(rest) = line.trim_end().strip_prefix(prefix) {
                return Ok(rest.trim().to_string());
            }
        }
    }

    fn outcome(&mut self) -> anyhow::Result<WriterOutcome> {
        let json = self.expect("OUTCOME")?;
        let _ = self.child.wait();
        Ok(serde_json::from_str(&json)?)
    }
}

impl Drop for WriterProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        cleanup::forget_process(self.child.id());
    }
}

/// Creates every writer's files (before any fault; this process keeps none open) and
/// starts one process per writer.
fn start_writers(cluster: &FaultCluster, args: &FaultArgs, seed: u64) -> anyhow::Result<Vec<WriterProcess>> {
    let mut writers = Vec::new();
    let mut file_id = 1u32;
    for mount in 0..MOUNTS {
        for w in 0..args.writers_per_mount {
            let names: Vec<String> = (0..args.files_per_writer)
                .map(|f| format!("m{mount}-w{w}-f{f}"))
                .collect();
            for name in &names {
                std::fs::File::create(cluster.mount_dirs[mount].join(name))?.sync_all()?;
            }
            let mut child = Command::new(std::env::current_exe()?)
                .arg("faults-writer")
                .arg(format!("--mount={}", cluster.mount_dirs[mount].display()))
                .arg(format!(
                    "--reader={}",
                    cluster.mount_dirs[(mount + 1) % MOUNTS].display()
                ))
                .arg(format!("--names={}", names.join(",")))
                .arg(format!("--first-file-id={file_id}"))
                .arg(format!(
                    "--seed={}",
                    seed ^ u64::from(file_id).wrapping_mul(0x9E37_79B9)
                ))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()?;
            cleanup::process("faults-writer", child.id());
            let stdout = BufReader::new(child.stdout.take().expect("stdout is piped"));
            writers.push(WriterProcess { child, stdout });
            file_id += names.len() as u32;
        }
    }
    Ok(writers)
}

fn markdown(summary: &Summary, args: &FaultArgs) -> String {
    let json = summary.json();
    let mut out = String::new();
    out.push_str(&format!(
        "### Fault injection: {} faults, {:.0} min\n\n`shoal-bench faults --faults {} --seed {}` on {}, commit {} (3 registry nodes, 4 data services, 3 copies, 2 mounts, each its own network namespace; data-service lease {} ms, mount retry timeout {} s; {} writers with {} files each). Every acknowledged write (followed by a successful fsync or close) is in the writers' model; checked by read-backs during the run and, after healing, by reading every file whole through the other mount; then every chain's replicas are compared.\n\n",
        summary.tally.total(),
        summary.seconds / 60.0,
        args.faults,
        summary.seed,
        chrono_free_date(),
        commit(),
        cluster::LEASE_MS,
        cluster::MOUNT_RETRY_SECONDS,
        MOUNTS * args.writers_per_mount,
        args.files_per_writer,
    ));
    out.push_str("| fault | injected |\n|---|---:|\n");
    for (fault, count) in &summary.tally.by_kind {
        out.push_str(&format!("| {} | {count} |\n", fault.name()));
    }
    out.push_str(&format!("| **total** | **{}** |\n\n", summary.tally.total()));
    out.push_str("| count | value |\n|---|---:|\n");
    for key in [
        "writes_acknowledged",
        "bytes_acknowledged",
        "writes_failed",
        "reads_checked",
        "bytes_checked",
        "files_checked",
        "chunks_compared",
        "lost_bytes",
        "wrong_bytes",
        "stray_bytes",
        "recoveries_slower_than_timeout",
    ] {
        out.push_str(&format!("| {} | {} |\n", key.replace('_', " "), json[key]));
    }
    out.push_str(&format!(
        "| replicas differing | {} |\n| unexpected errors | {} |\n\nExpected errors (operations that failed while a fault was on; their bytes count as unknown): {}.\n",
        summary.replicas_differing.len(),
        summary.unexpected_errors.len(),
        json["expected_errors"]
    ));
    if !summary.unexpected_errors.is_empty() {
        out.push_str("\nUnexpected errors:\n");
        for error in summary.unexpected_errors.iter().take(20) {
            out.push_str(&format!("- {error}\n"));
        }
    }
    out
}

/// The checkout's commit, short (the binary under test is built from it).
fn commit() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(report::bench_dir())
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// Today's date (UTC) as YYYY-MM-DD, from `date`.
fn chrono_free_date() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}
