//! Files a test holds open on a mount without lending them to the processes it starts.
//!
//! Why: a child started with fork and exec gets a copy of its parent's descriptor table,
//! and exec then closes the copies marked close-on-exec. To FUSE each of those closes is a
//! flush, and Shoal's flush waits until the file's writes are durable. A test that holds a
//! file with writes its data services cannot take yet (they are down on purpose) would make
//! every process started meanwhile, by itself or by a test running beside it, hang in exec
//! until the mount gives up. [`PrivateFiles`] runs file operations on a thread with its own
//! descriptor table (`unshare(CLONE_FILES)`), so children of other threads never see them.

use std::collections::BTreeMap;
use std::fs::File;
use std::sync::mpsc;
use std::thread::JoinHandle;

type Job = Box<dyn FnOnce(&mut BTreeMap<String, File>) + Send>;

/// A thread with a private descriptor table and the files opened on it, by name.
pub struct PrivateFiles {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl PrivateFiles {
    pub fn start() -> anyhow::Result<PrivateFiles> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let (ready, started) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("private-files".into())
            .spawn(move || {
                let unshared = nix::sched::unshare(nix::sched::CloneFlags::CLONE_FILES);
                let failed = unshared.is_err();
                let _ = ready.send(unshared);
                if failed {
                    return;
                }
                let mut files = BTreeMap::new();
                // Ends when the owner drops its sender; the files close with the thread.
                for job in queue {
                    job(&mut files);
                }
            })?;
        started
            .recv()?
            .map_err(|e| anyhow::anyhow!("unshare(CLONE_FILES): {e}"))?;
        Ok(PrivateFiles {
            jobs: Some(jobs),
            thread: Some(thread),
        })
    }

    /// Runs `job` on the private thread and waits for its result. Files must stay in the
    /// map: a descriptor number means nothing on any other thread.
    pub fn run<R, F>(&self, job: F) -> anyhow::Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&mut BTreeMap<String, File>) -> R + Send + 'static,
    {
        let (reply, result) = mpsc::channel();
        let jobs = self.jobs.as_ref().expect("jobs open until drop");
        jobs.send(Box::new(move |files| {
            let _ = reply.send(job(files));
        }))
        .map_err(|_| anyhow::anyhow!("the private-files thread has stopped"))?;
        result
            .recv()
            .map_err(|_| anyhow::anyhow!("a private-files job panicked"))
    }
}

impl Drop for PrivateFiles {
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Paths the process-wide descriptor table has open.
    fn shared_open_paths() -> Vec<std::path::PathBuf> {
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .flatten()
            .filter_map(|entry| std::fs::read_link(entry.path()).ok())
            .collect()
    }

    #[test]
    fn a_private_file_is_not_in_the_shared_table() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("held");
        let files = PrivateFiles::start().unwrap();
        let create = path.clone();
        files
            .run(move |files| files.insert("held".into(), File::create(&create).unwrap()))
            .unwrap();
        assert!(files.run(|files| files.contains_key("held")).unwrap());
        assert!(
            !shared_open_paths().contains(&path),
            "{} is open in the shared table",
            path.display()
        );
    }
}
