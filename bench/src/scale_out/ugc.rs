//! The user-generated-content workload of the mission: every web host uploads files of
//! 64 KiB to 4 MiB into one shared volume through its own mount, while the other hosts
//! read those uploads back through theirs (each upload read at most once per host, so no
//! read is served from the reader's cache).
//!
//! Uploads are closed (close-to-open) before they are announced to readers; every read is
//! checked against the upload's length and CRC32, so the figures are of correct reads.

use std::io::{Read, Write};
use std::os::fd::IntoRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const MIN_FILE_BYTES: u64 = 64 << 10;
const MAX_FILE_BYTES: u64 = 4 << 20;
/// Bound on uploads announced in one run (far above what the links allow).
const MAX_UPLOADS: usize = 1_000_000;
/// How long a reader waits before looking for new uploads again.
const IDLE_WAIT: Duration = Duration::from_millis(2);

struct Upload {
    host: usize,
    relative: String,
    size_bytes: u64,
    crc: u32,
}

#[derive(Default)]
struct Timings {
    upload_ms: Vec<f64>,
    upload_bytes: u64,
    read_ms: Vec<f64>,
    read_bytes: u64,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct UgcResult {
    pub uploads_per_second: f64,
    pub upload_mib_per_second: f64,
    pub upload_p50_ms: f64,
    pub upload_p99_ms: f64,
    pub reads_per_second: f64,
    pub read_mib_per_second: f64,
    pub read_p50_ms: f64,
    pub read_p99_ms: f64,
}

/// A file size between 64 KiB and 4 MiB, uniform in its logarithm (small files are many,
/// large ones carry most bytes, as with photos and attachments).
fn file_size(rng: &mut SmallRng) -> u64 {
    let (low, high) = ((MIN_FILE_BYTES as f64).ln(), (MAX_FILE_BYTES as f64).ln());
    (rng.random_range(low..=high).exp() as u64).clamp(MIN_FILE_BYTES, MAX_FILE_BYTES)
}

fn percentile(sorted: &[f64], fraction: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((sorted.len() - 1) as f64 * fraction).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// Runs the workload for `duration` on `mounts` (one per web host).
pub fn run(mounts: &[PathBuf], duration: Duration) -> anyhow::Result<UgcResult> {
    assert!(mounts.len() >= 2, "uploads must be read by another host");
    let uploads: Arc<Mutex<Vec<Upload>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    // Random content made once; each upload starts at its own offset and carries its id.
    let mut content = vec![0u8; 2 * MAX_FILE_BYTES as usize];
    SmallRng::seed_from_u64(20261122).fill(&mut content[..]);
    let content = Arc::new(content);
    for (host, mount) in mounts.iter().enumerate() {
        let dir = mount.join("uploads").join(format!("host{host}"));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let started = Instant::now();
    let mut workers = Vec::new();
    for (host, mount) in mounts.iter().enumerate() {
        let (dir, announced, stopping, content) = (mount.clone(), uploads.clone(), stop.clone(), content.clone());
        workers.push(std::thread::spawn(move || {
            upload_loop(host, &dir, &announced, &stopping, &content)
        }));
        let (mount, announced, stopping) = (mount.clone(), uploads.clone(), stop.clone());
        workers.push(std::thread::spawn(move || {
            read_loop(host, &mount, &announced, &stopping)
        }));
    }
    while started.elapsed() < duration && !workers.iter().any(|worker| worker.is_finished()) {
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    let mut all = Timings::default();
    for worker in workers {
        let timings = worker.join().map_err(|_| anyhow::anyhow!("a UGC worker panicked"))??;
        all.upload_ms.extend(timings.upload_ms);
        all.upload_bytes += timings.upload_bytes;
        all.read_ms.extend(timings.read_ms);
        all.read_bytes += timings.read_bytes;
    }
    let seconds = started.elapsed().as_secs_f64();
    all.upload_ms.sort_by(f64::total_cmp);
    all.read_ms.sort_by(f64::total_cmp);
    anyhow::ensure!(!all.read_ms.is_empty(), "no upload was read back in {duration:?}");
    Ok(UgcResult {
        uploads_per_second: all.upload_ms.len() as f64 / seconds,
        upload_mib_per_second: all.upload_bytes as f64 / seconds / (1 << 20) as f64,
        upload_p50_ms: percentile(&all.upload_ms, 0.50),
        upload_p99_ms: percentile(&all.upload_ms, 0.99),
        reads_per_second: all.read_ms.len() as f64 / seconds,
        read_mib_per_second: all.read_bytes as f64 / seconds / (1 << 20) as f64,
        read_p50_ms: percentile(&all.read_ms, 0.50),
        read_p99_ms: percentile(&all.read_ms, 0.99),
    })
}

fn upload_loop(
    host: usize,
    mount: &std::path::Path,
    uploads: &Mutex<Vec<Upload>>,
    stop: &AtomicBool,
    content: &[u8],
) -> anyhow::Result<Timings> {
    let mut rng = SmallRng::seed_from_u64(host as u64);
    let mut timings = Timings::default();
    for number in 0..MAX_UPLOADS {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let size_bytes = file_size(&mut rng);
        let offset = rng.random_range(0..MAX_FILE_BYTES) as usize;
        let mut body = content[offset..offset + size_bytes as usize].to_vec();
        body[..8].copy_from_slice(&(number as u64).to_le_bytes());
        let relative = format!("uploads/host{host}/{number:07}.bin");
        let path = mount.join(&relative);
        let begun = Instant::now();
        let mut file = std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        file.write_all(&body)
            .with_context(|| format!("writing {}", path.display()))?;
        // close(2)'s result: it is where the mount reports a failed flush.
        nix::unistd::close(file.into_raw_fd()).with_context(|| format!("closing {}", path.display()))?;
        timings.upload_ms.push(begun.elapsed().as_secs_f64() * 1000.0);
        timings.upload_bytes += size_bytes;
        let mut announced = uploads.lock().expect("upload list lock poisoned");
        assert!(announced.len() < MAX_UPLOADS);
        announced.push(Upload {
            host,
            relative,
            size_bytes,
            crc: crc32fast::hash(&body),
        });
    }
    Ok(timings)
}

fn read_loop(
    host: usize,
    mount: &std::path::Path,
    uploads: &Mutex<Vec<Upload>>,
    stop: &AtomicBool,
) -> anyhow::Result<Timings> {
    let mut timings = Timings::default();
    let mut next = 0usize;
    let mut buffer = Vec::with_capacity(MAX_FILE_BYTES as usize);
    while !stop.load(Ordering::Relaxed) {
        // The oldest upload of another host this reader has not read yet.
        let wanted = {
            let announced = uploads.lock().expect("upload list lock poisoned");
            let found = announced[next..].iter().position(|upload| upload.host != host);
            match found {
                Some(offset) => {
                    let upload = &announced[next + offset];
                    next += offset + 1;
                    Some((upload.relative.clone(), upload.size_bytes, upload.crc))
                }
                // Everything after `next` is this host's own: skip it for good.
                None => {
                    next = announced.len();
                    None
                }
            }
        };
        let Some((relative, size_bytes, crc)) = wanted else {
            std::thread::sleep(IDLE_WAIT);
            continue;
        };
        let path = mount.join(&relative);
        let begun = Instant::now();
        buffer.clear();
        std::fs::File::open(&path)
            .and_then(|mut file| file.read_to_end(&mut buffer))
            .with_context(|| format!("host {host} reading {}", path.display()))?;
        timings.read_ms.push(begun.elapsed().as_secs_f64() * 1000.0);
        anyhow::ensure!(
            buffer.len() as u64 == size_bytes && crc32fast::hash(&buffer) == crc,
            "host {host} read {relative} wrong: {} bytes (uploaded {size_bytes}), CRC {:08x} (uploaded {crc:08x})",
            buffer.len(),
            crc32fast::hash(&buffer)
        );
        timings.read_bytes += size_bytes;
    }
    Ok(timings)
}
