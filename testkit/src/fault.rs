//! Faults injected into real processes at exact points, for crash-consistency tests.
//!
//! `KillAt` attaches strace to a running process and has it deliver SIGKILL at the entry of
//! the n-th call of one system call on one file: the call never runs, everything before it
//! did. That is how a test lands a crash between two steps of a write (say, after a chunk's
//! bytes are written and before they are synced) without any hook in the program itself.
//! The process's threads are all traced (`-f`), including those it starts later.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::{Process, wait_for};

/// An armed strace; stopped (by PID) when dropped.
pub struct KillAt {
    strace: Process,
    target: u32,
}

/// True if every thread of `pid` is traced.
fn all_threads_traced(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    let mut any = false;
    for task in tasks.flatten() {
        any = true;
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        let traced = status
            .lines()
            .find_map(|line| line.strip_prefix("TracerPid:"))
            .is_some_and(|tracer| tracer.trim() != "0");
        if !traced {
            return false;
        }
    }
    any
}

impl KillAt {
    /// Arms a SIGKILL of process `pid` at the entry of its `nth` call (counted from now) of
    /// `syscalls` (comma-separated, e.g. `fdatasync` or `write,writev,pwrite64`) on `path`.
    pub async fn arm(pid: u32, syscalls: &str, path: &Path, nth: u32, log: &Path) -> anyhow::Result<KillAt> {
        anyhow::ensure!(nth >= 1, "calls are counted from 1");
        let args: Vec<String> = vec![
            "-f".into(),
            "-qq".into(),
            format!("-p{pid}"),
            format!("-P{}", path.display()),
            format!("-etrace={syscalls}"),
            format!("-einject={syscalls}:signal=SIGKILL:when={nth}"),
        ];
        let strace = Process::spawn("strace", Path::new("strace"), &args, log)?;
        let armed = KillAt { strace, target: pid };
        wait_for("strace to attach to every thread", Duration::from_secs(20), || {
            let traced = all_threads_traced(pid);
            async move { traced.then_some(()) }
        })
        .await?;
        Ok(armed)
    }

    /// Waits until the target has been killed.
    pub async fn wait_for_kill(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let target = self.target;
        wait_for("the armed SIGKILL to land", timeout, || {
            let gone = !Path::new(&format!("/proc/{target}")).exists()
                || std::fs::read_to_string(format!("/proc/{target}/stat"))
                    .is_ok_and(|stat| stat.split(' ').nth(2) == Some("Z"));
            async move { gone.then_some(()) }
        })
        .await
    }

    /// What strace printed (the calls it saw).
    pub fn log(&self) -> String {
        self.strace.log()
    }
}

impl Drop for KillAt {
    fn drop(&mut self) {
        self.strace.terminate(Duration::from_secs(2));
    }
}

/// The write-ahead log file the engine under `engine_dir` appends to now (the newest
/// `*.log`).
pub fn newest_engine_log(engine_dir: &Path) -> anyhow::Result<PathBuf> {
    let mut logs: Vec<PathBuf> = std::fs::read_dir(engine_dir)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "log") && p.file_stem().is_some_and(|s| s != "LOG"))
        .collect();
    logs.sort();
    logs.pop()
        .ok_or_else(|| anyhow::anyhow!("no write-ahead log in {}", engine_dir.display()))
}
