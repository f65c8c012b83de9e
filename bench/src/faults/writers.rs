//! The workload under faults: writer processes (`shoal-bench faults-writer`), each owning a
//! few files on one mount, writing sector-aligned (but not block-aligned) ranges of known
//! bytes, each followed by fsync or close, and reading acknowledged ranges back. Each keeps
//! the model of its files, and at the end reads them whole through another mount.
//!
//! Why processes, not threads of the run: the run starts processes (restarts, `ip`), and
//! every exec closes the descriptors it inherited, which on a FUSE mount is a flush that
//! waits for the file's data to be stored; with a host cut off, that holds the run's
//! restarts up for the mount's whole retry timeout.
//!
//! Errors are expected while faults are on (a data service or the mount is down past the
//! retry timeout): a failed write only makes its range unknown. An error of another kind
//! (not an I/O, connection or timeout error) is counted as unexpected.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::BufRead;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::model::{FileModel, SECTOR_BYTES, Verdict, content};

/// Every file's writes fall within its first `FILE_SPAN_BYTES`.
pub const FILE_SPAN_BYTES: u64 = 4 << 20;
/// Largest single write.
const MAX_WRITE_BYTES: u64 = 1 << 20;
/// Pause between a writer's operations, so that faults, not the writers, set the pace.
const PAUSE: Duration = Duration::from_millis(20);
/// Pause after a failed operation.
const PAUSE_AFTER_ERROR: Duration = Duration::from_millis(200);
const _: () = assert!(MAX_WRITE_BYTES < FILE_SPAN_BYTES && MAX_WRITE_BYTES.is_multiple_of(SECTOR_BYTES));

/// Errors a fault explains: the mount or every copy unreachable for longer than the retry
/// timeout, the mount gone (not connected, or the path not there while it is remounted).
const EXPECTED_ERRNOS: &[i32] = &[
    libc::EIO,
    libc::ENOTCONN,
    libc::ENOENT,
    libc::ETIMEDOUT,
    libc::EAGAIN,
    libc::EINTR,
    libc::ECONNABORTED,
];

/// What one writer did and found, sent to the run as JSON.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct WriterOutcome {
    pub writes_acknowledged: u64,
    pub bytes_acknowledged: u64,
    pub writes_failed: u64,
    pub reads_checked: u64,
    /// Read-backs of acknowledged ranges while faults were on.
    pub verdict: Verdict,
    /// The whole files read back through the other mount, after healing.
    pub verdict_after: Verdict,
    pub files_checked: u64,
    pub expected_errors: BTreeMap<String, u64>,
    pub unexpected_errors: Vec<String>,
}

#[derive(clap::Args)]
pub struct WriterArgs {
    /// The mount this writer writes through.
    #[arg(long)]
    mount: PathBuf,
    /// The mount its files are read back through at the end.
    #[arg(long)]
    reader: PathBuf,
    /// Its files, relative to a mount (created already).
    #[arg(long, value_delimiter = ',')]
    names: Vec<String>,
    /// The model's id of its first file (the others follow).
    #[arg(long)]
    first_file_id: u32,
    #[arg(long)]
    seed: u64,
}

/// The writer process: writes until a `stop` line on stdin, then, at a `check` line, reads
/// its files whole through the other mount and prints `OUTCOME <json>`.
pub fn run_process(args: WriterArgs) -> anyhow::Result<()> {
    let files: Vec<(PathBuf, FileModel)> = args
        .names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            (
                PathBuf::from(name),
                FileModel::new(args.first_file_id + i as u32, FILE_SPAN_BYTES),
            )
        })
        .collect();
    anyhow::ensure!(!files.is_empty(), "a writer needs files");
    let stop = Arc::new(AtomicBool::new(false));
    let worker = {
        let (stop, mount, seed) = (stop.clone(), args.mount.clone(), args.seed);
        std::thread::spawn(move || write_until(files, &mount, seed, &stop))
    };
    let mut lines = std::io::stdin().lock().lines();
    let mut next = || lines.next().transpose().ok().flatten().unwrap_or_default();
    anyhow::ensure!(next() == "stop", "expected `stop` on stdin");
    stop.store(true, Ordering::Relaxed);
    let (files, mut outcome) = worker
        .join()
        .map_err(|_| anyhow::anyhow!("the writer thread panicked"))?;
    println!("stopped");
    anyhow::ensure!(next() == "check", "expected `check` on stdin");
    for (name, model) in &files {
        let path = args.reader.join(name);
        match std::fs::read(&path) {
            Ok(bytes) => {
                outcome.verdict_after.add(&model.check_whole(&bytes));
                outcome.files_checked += 1;
            }
            Err(error) => outcome
                .unexpected_errors
                .push(format!("reading {} after healing: {error}", path.display())),
        }
    }
    println!("OUTCOME {}", serde_json::to_string(&outcome)?);
    Ok(())
}

/// Writes and reads back until `stop`.
fn write_until(
    mut files: Vec<(PathBuf, FileModel)>,
    mount_dir: &std::path::Path,
    seed: u64,
    stop: &AtomicBool,
) -> (Vec<(PathBuf, FileModel)>, WriterOutcome) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut outcome = WriterOutcome::default();
    let mut op = 0u32;
    // Bounded by `stop`, which the run sets after its last fault.
    while !stop.load(Ordering::Relaxed) {
        op += 1;
        let which = rng.random_range(0..files.len());
        let (name, model) = &mut files[which];
        let path = mount_dir.join(&*name);
        let result = if rng.random_bool(0.2) {
            read_back(&path, model, &mut outcome, &mut rng)
        } else {
            write_one(&path, model, &mut outcome, op, &mut rng)
        };
        match result {
            Ok(()) => std::thread::sleep(PAUSE),
            Err(error) => {
                note_error(&mut outcome, &error);
                std::thread::sleep(PAUSE_AFTER_ERROR);
            }
        }
    }
    (files, outcome)
}

fn note_error(outcome: &mut WriterOutcome, error: &std::io::Error) {
    match error.raw_os_error() {
        Some(code) if EXPECTED_ERRNOS.contains(&code) => {
            *outcome.expected_errors.entry(errno_name(code)).or_default() += 1;
        }
        _ => {
            if outcome.unexpected_errors.len() < 100 {
                outcome.unexpected_errors.push(error.to_string());
            }
        }
    }
}

pub fn errno_name(code: i32) -> String {
    nix::errno::Errno::from_raw(code).to_string()
}

/// A sector-aligned range within the span, of at least one sector.
fn random_range(rng: &mut StdRng) -> (u64, u64) {
    let sectors = FILE_SPAN_BYTES / SECTOR_BYTES;
    let length = rng.random_range(1..=MAX_WRITE_BYTES / SECTOR_BYTES) * SECTOR_BYTES;
    let offset = rng.random_range(0..sectors - length / SECTOR_BYTES) * SECTOR_BYTES;
    (offset, length)
}

/// One write, then fsync (or, one time in four, close): acknowledged if both succeed.
fn write_one(
    path: &std::path::Path,
    model: &mut FileModel,
    outcome: &mut WriterOutcome,
    op: u32,
    rng: &mut StdRng,
) -> std::io::Result<()> {
    let (offset, length) = random_range(rng);
    let by_close = rng.random_bool(0.25);
    let bytes = content(model.file_id, op, offset, length);
    // Nothing is written until the open succeeds: a failed open changes nothing.
    let file = OpenOptions::new().read(true).write(true).open(path)?;
    let written = file
        .write_all_at(&bytes, offset)
        .and_then(|()| if by_close { close(file) } else { file.sync_all() });
    match written {
        Ok(()) => {
            model.acknowledged(op, offset, length);
            outcome.writes_acknowledged += 1;
            outcome.bytes_acknowledged += length;
            Ok(())
        }
        Err(error) => {
            model.failed(offset, length);
            outcome.writes_failed += 1;
            Err(error)
        }
    }
}

/// close(2) with its result (dropping a `File` ignores it).
fn close(file: std::fs::File) -> std::io::Result<()> {
    use std::os::fd::IntoRawFd;
    let fd = file.into_raw_fd();
    // SAFETY: `fd` was just taken from its `File`; it is closed exactly once, here.
    if unsafe { libc::close(fd) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Reads a random range of a file and checks it against the model.
fn read_back(
    path: &std::path::Path,
    model: &FileModel,
    outcome: &mut WriterOutcome,
    rng: &mut StdRng,
) -> std::io::Result<()> {
    let (offset, length) = random_range(rng);
    let file = OpenOptions::new().read(true).open(path)?;
    let mut buffer = vec![0u8; length as usize];
    let mut filled = 0;
    // Bounded: every pass reads at least one byte or ends.
    while filled < buffer.len() {
        match file.read_at(&mut buffer[filled..], offset + filled as u64)? {
            0 => break,
            read => filled += read,
        }
    }
    buffer.truncate(filled);
    let verdict = model.check_range(offset, length, &buffer);
    outcome.verdict.add(&verdict);
    outcome.reads_checked += 1;
    Ok(())
}
