//! Everything a benchmark made outside its own memory (processes, mounts, network
//! namespaces, links, directories), recorded before it is made so that one call removes it
//! all: at the normal end, on an error, and from the Ctrl-C / SIGTERM handler.
//!
//! Invariant: a resource is recorded before it is created, so an interrupt between the two
//! can only lead to removing something that does not exist (harmless), never to a leak.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// A bound on the records: a benchmark that makes more than this has a bug.
const MAX_RESOURCES: usize = 4096;
/// How long a process gets to exit after SIGTERM before SIGKILL.
const TERMINATE_GRACE: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Resources {
    /// Removed in reverse order of recording within each kind.
    mounts: Vec<PathBuf>,
    processes: Vec<(String, u32)>,
    namespaces: Vec<String>,
    links: Vec<String>,
    directories: Vec<PathBuf>,
    /// Shell commands that undo something (e.g. a peer file system's stop script).
    undo_commands: Vec<(String, Vec<String>)>,
}

impl Resources {
    fn len(&self) -> usize {
        self.mounts.len()
            + self.processes.len()
            + self.namespaces.len()
            + self.links.len()
            + self.directories.len()
            + self.undo_commands.len()
    }
}

fn resources() -> &'static Mutex<Resources> {
    static RESOURCES: OnceLock<Mutex<Resources>> = OnceLock::new();
    RESOURCES.get_or_init(Mutex::default)
}

fn record(add: impl FnOnce(&mut Resources)) {
    let mut resources = resources().lock().expect("cleanup lock poisoned");
    assert!(
        resources.len() < MAX_RESOURCES,
        "more than {MAX_RESOURCES} resources recorded"
    );
    add(&mut resources);
}

pub fn mount(dir: PathBuf) {
    record(|r| r.mounts.push(dir));
}
pub fn process(name: &str, pid: u32) {
    record(|r| r.processes.push((name.to_string(), pid)));
}
pub fn namespace(name: &str) {
    record(|r| r.namespaces.push(name.to_string()));
}
pub fn link(name: &str) {
    record(|r| r.links.push(name.to_string()));
}
pub fn directory(dir: PathBuf) {
    record(|r| r.directories.push(dir));
}
pub fn undo_command(program: &str, args: Vec<String>) {
    record(|r| r.undo_commands.push((program.to_string(), args)));
}

/// Forgets a process that has already been stopped by its owner.
pub fn forget_process(pid: u32) {
    record(|r| r.processes.retain(|(_, recorded)| *recorded != pid));
}

/// Forgets a mount its owner has already unmounted.
pub fn forget_mount(dir: &std::path::Path) {
    record(|r| r.mounts.retain(|recorded| recorded != dir));
}

fn quiet(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// True if `dir` is a mount point of any kind now (from /proc, without touching it).
pub fn mounted(dir: &std::path::Path) -> bool {
    let wanted = dir.to_string_lossy().replace(' ', "\\040");
    std::fs::read_to_string("/proc/self/mounts").is_ok_and(|mounts| {
        mounts
            .lines()
            .any(|line| line.split(' ').nth(1) == Some(wanted.as_str()))
    })
}

fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Removes everything recorded: mounts first (so no process is stuck on one), then
/// processes, namespaces, links, directories. Safe to call more than once.
pub fn run() {
    let taken = std::mem::take(&mut *resources().lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
    for (program, args) in taken.undo_commands.iter().rev() {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        if !quiet(program, &args) {
            eprintln!("cleanup: `{program} {}` failed", args.join(" "));
        }
    }
    for dir in taken.mounts.iter().rev() {
        let dir = dir.to_string_lossy();
        if mounted(std::path::Path::new(dir.as_ref())) {
            quiet("umount", &["-l", &dir]);
        }
    }
    for (_, pid) in taken.processes.iter().rev() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    let started = Instant::now();
    while taken.processes.iter().any(|(_, pid)| alive(*pid)) && started.elapsed() < TERMINATE_GRACE {
        std::thread::sleep(Duration::from_millis(50));
    }
    for (name, pid) in &taken.processes {
        if alive(*pid) {
            eprintln!("cleanup: {name} (pid {pid}) ignored SIGTERM; killing it");
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    for namespace in taken.namespaces.iter().rev() {
        quiet("ip", &["netns", "delete", namespace]);
    }
    for link in taken.links.iter().rev() {
        quiet("ip", &["link", "delete", link]);
    }
    for dir in taken.directories.iter().rev() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Runs [`run`] and exits when the process is interrupted (Ctrl-C) or terminated.
pub fn on_interrupt() {
    tokio::spawn(async {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("cannot watch SIGTERM");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
        eprintln!("\ninterrupted: removing every mount, process, namespace and directory this run made");
        tokio::task::spawn_blocking(run).await.ok();
        std::process::exit(130);
    });
}

/// Removes everything the run made when dropped (normal end, error or panic).
pub struct Guard;

impl Drop for Guard {
    fn drop(&mut self) {
        run();
    }
}
