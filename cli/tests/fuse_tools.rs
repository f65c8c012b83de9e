//! Real programs on a real mount: the `fsx` exerciser for 100,000 operations, `git clone`
//! and `git fsck`, `tar` extraction of a large tree compared with `diff -r`, a `cp -a`
//! round trip that keeps modes, owners, times, links and xattrs; and a mount whose daemon
//! is killed is released rather than left hanging.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use shoal_testkit::{MountSpec, MountedCluster, is_fuse_mounted, wait_for};

fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_shoal"))
}

async fn setup(replicas: u32) -> MountedCluster {
    let spec = MountSpec {
        volume: "tools",
        replicas,
        ..Default::default()
    };
    MountedCluster::start(&binary(), spec)
        .await
        .expect("cluster and mount start")
}

/// Runs `program` with `args` (in `dir` if given); an error carries its output.
fn run(program: &str, args: &[&str], dir: Option<&Path>) -> anyhow::Result<String> {
    let mut command = Command::new(program);
    command.args(args);
    if let Some(dir) = dir {
        command.current_dir(dir);
    }
    let output = command
        .output()
        .map_err(|error| anyhow::anyhow!("cannot run {program}: {error} (scripts/dev test installs it)"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    anyhow::ensure!(
        output.status.success(),
        "{program} {args:?} failed ({}):\n{text}",
        output.status
    );
    Ok(text)
}

/// `fsx` from PATH or from cargo's bin directory (`cargo install fsx`).
fn fsx_program() -> anyhow::Result<String> {
    if Command::new("fsx").arg("--version").output().is_ok() {
        return Ok("fsx".into());
    }
    let home = std::env::var("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|_| std::env::var("HOME").map(|home| PathBuf::from(home).join(".cargo")))?;
    let candidate = home.join("bin/fsx");
    anyhow::ensure!(
        candidate.is_file(),
        "fsx not found: run `cargo install fsx --locked` (scripts/dev test does)"
    );
    Ok(candidate.display().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fsx_runs_100000_operations_without_a_mismatch() {
    let setup = setup(3).await;
    let root = setup.mount.dir.clone();
    let result = tokio::task::spawn_blocking(move || {
        let fsx = fsx_program()?;
        let file = root.join("fsx.data");
        let output = run(
            &fsx,
            &["-N", "100000", "-S", "20261122", &file.display().to_string()],
            Some(&root),
        )?;
        anyhow::ensure!(
            output.contains("All operations completed A-OK"),
            "fsx did not report success:\n{}",
            tail(&output, 60)
        );
        Ok(())
    })
    .await
    .expect("fsx task");
    setup.finish(result);
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn git_clone_commit_and_fsck() {
    let setup = setup(3).await;
    let root = setup.mount.dir.clone();
    let source = tempfile::tempdir().expect("temp dir");
    let result = (|| {
        let source = source.path();
        let git = |args: &[&str], dir: &Path| {
            let mut all = vec!["-c", "user.name=Shoal Test", "-c", "user.email=test@shoal.invalid"];
            all.extend_from_slice(args);
            run("git", &all, Some(dir))
        };
        // A repository with some history: source files of this workspace over three commits.
        git(&["init", "-q", "-b", "main"], source)?;
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root");
        for (round, crate_dir) in ["registry", "dataservice", "client-fuse"].iter().enumerate() {
            copy_tree(&workspace.join(crate_dir).join("src"), &source.join(crate_dir))?;
            git(&["add", "-A"], source)?;
            git(&["commit", "-q", "-m", &format!("round {round}")], source)?;
        }
        // file:// makes git use its pack protocol, as a clone from another host would.
        let url = format!("file://{}", source.display());
        git(&["clone", "-q", &url, "clone"], &root)?;
        let clone = root.join("clone");
        git(&["fsck", "--full", "--strict"], &clone)?;
        let head = |dir: &Path| git(&["rev-parse", "HEAD"], dir);
        anyhow::ensure!(
            head(&clone)? == head(source)?,
            "HEAD of the clone differs from the source"
        );
        run(
            "diff",
            &[
                "-r",
                "--exclude=.git",
                &source.display().to_string(),
                &clone.display().to_string(),
            ],
            None,
        )?;
        // Work in the clone: edit, commit (index locks, renames of refs), repack, fsck again.
        fs::write(clone.join("registry/NOTES"), "edited on shoal\n")?;
        git(&["add", "-A"], &clone)?;
        git(&["commit", "-q", "-m", "on shoal"], &clone)?;
        git(&["gc", "-q", "--aggressive", "--prune=now"], &clone)?;
        git(&["fsck", "--full", "--strict"], &clone)?;
        let status = git(&["status", "--porcelain"], &clone)?;
        anyhow::ensure!(status.trim().is_empty(), "a clean tree after commit, got {status}");
        let count = git(&["rev-list", "--count", "HEAD"], &clone)?;
        anyhow::ensure!(count.trim() == "4", "four commits, got {count}");
        Ok(())
    })();
    setup.finish(result);
}

fn copy_tree(from: &Path, to: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tar_extraction_of_a_large_tree_matches() {
    let setup = setup(3).await;
    let root = setup.mount.dir.clone();
    let scratch = tempfile::tempdir().expect("temp dir");
    let result = (|| {
        // /usr/include: thousands of files and directories, symlinks, a few large headers.
        let archive = scratch.path().join("include.tar");
        run(
            "tar",
            &["-C", "/usr", "-cf", &archive.display().to_string(), "include"],
            None,
        )?;
        run(
            "tar",
            &["-C", &root.display().to_string(), "-xf", &archive.display().to_string()],
            None,
        )?;
        // Compared with the same archive extracted on local disk (/usr/include itself may
        // change while the test runs).
        let local = scratch.path().join("local");
        fs::create_dir(&local)?;
        run(
            "tar",
            &[
                "-C",
                &local.display().to_string(),
                "-xf",
                &archive.display().to_string(),
            ],
            None,
        )?;
        run(
            "diff",
            &[
                "-r",
                "--no-dereference",
                &local.join("include").display().to_string(),
                &root.join("include").display().to_string(),
            ],
            None,
        )?;
        // And back out again through tar: the same entries, modes, owners, sizes and times.
        let again = scratch.path().join("again.tar");
        run(
            "tar",
            &[
                "-C",
                &root.display().to_string(),
                "-cf",
                &again.display().to_string(),
                "include",
            ],
            None,
        )?;
        let list = |path: &Path| run("tar", &["-tvf", &path.display().to_string()], None);
        // Directory order differs between file systems: compare sorted listings.
        let sorted = |listing: String| {
            let mut lines: Vec<String> = listing.lines().map(str::to_string).collect();
            lines.sort();
            lines
        };
        let (before, after) = (sorted(list(&archive)?), sorted(list(&again)?));
        let differing: Vec<_> = before
            .iter()
            .zip(after.iter())
            .filter(|(a, b)| a != b)
            .take(5)
            .collect();
        anyhow::ensure!(
            differing.is_empty() && before.len() == after.len(),
            "tar listings differ (modes, owners, sizes or times): {differing:#?}"
        );
        Ok(())
    })();
    setup.finish(result);
}

/// What `cp -a` must keep of each entry, by path relative to the tree's root.
#[derive(Debug, PartialEq, Eq)]
struct Entry {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: (i64, i64),
    size: u64,
    nlink: u64,
    content: Vec<u8>,
    xattr: Option<Vec<u8>>,
}

fn snapshot(root: &Path) -> anyhow::Result<BTreeMap<PathBuf, Entry>> {
    let mut out = BTreeMap::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir)? {
            let path = entry?.path();
            let meta = fs::symlink_metadata(&path)?;
            let (kind, content) = if meta.file_type().is_symlink() {
                ("symlink", fs::read_link(&path)?.into_os_string().into_encoded_bytes())
            } else if meta.is_dir() {
                pending.push(path.clone());
                ("dir", Vec::new())
            } else {
                ("file", fs::read(&path)?)
            };
            let xattr = if meta.file_type().is_symlink() {
                None
            } else {
                xattr::get(&path, "user.origin")?
            };
            out.insert(
                path.strip_prefix(root)?.to_path_buf(),
                Entry {
                    kind,
                    mode: meta.mode(),
                    uid: meta.uid(),
                    gid: meta.gid(),
                    // Directory times change as entries are added; cp -a sets them last.
                    mtime: (meta.mtime(), meta.mtime_nsec()),
                    size: if meta.is_dir() { 0 } else { meta.size() },
                    nlink: if meta.is_dir() { 0 } else { meta.nlink() },
                    content,
                    xattr,
                },
            );
        }
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cp_a_round_trip_keeps_everything() {
    let setup = setup(1).await;
    let root = setup.mount.dir.clone();
    let scratch = tempfile::tempdir().expect("temp dir");
    let result = (|| {
        let original = scratch.path().join("original");
        fs::create_dir_all(original.join("dir/sub"))?;
        fs::write(original.join("plain"), "plain")?;
        fs::write(original.join("dir/big"), vec![0xabu8; 3 << 20])?;
        fs::write(original.join("dir/sub/exec"), "#!/bin/sh\n")?;
        run(
            "chmod",
            &["0751", &original.join("dir/sub/exec").display().to_string()],
            None,
        )?;
        run(
            "chmod",
            &["2770", &original.join("dir/sub").display().to_string()],
            None,
        )?;
        run(
            "chown",
            &["1234:5678", &original.join("plain").display().to_string()],
            None,
        )?;
        fs::hard_link(original.join("plain"), original.join("dir/plain-link"))?;
        std::os::unix::fs::symlink("../plain", original.join("dir/to-plain"))?;
        std::os::unix::fs::symlink("nowhere", original.join("dangling"))?;
        xattr::set(original.join("dir/big"), "user.origin", b"local disk")?;
        run(
            "touch",
            &[
                "-h",
                "-d",
                "2001-02-03 04:05:06.789",
                &original.join("dir/to-plain").display().to_string(),
            ],
            None,
        )?;
        run(
            "touch",
            &[
                "-d",
                "1999-12-31 23:59:59.123456789",
                &original.join("dir/big").display().to_string(),
            ],
            None,
        )?;
        let on_shoal = root.join("copy");
        let back = scratch.path().join("back");
        run(
            "cp",
            &["-a", &original.display().to_string(), &on_shoal.display().to_string()],
            None,
        )?;
        run(
            "cp",
            &["-a", &on_shoal.display().to_string(), &back.display().to_string()],
            None,
        )?;
        let (expected, there, returned) = (snapshot(&original)?, snapshot(&on_shoal)?, snapshot(&back)?);
        anyhow::ensure!(expected.len() == 8, "the tree has 8 entries, found {}", expected.len());
        for (path, entry) in &expected {
            anyhow::ensure!(
                there.get(path) == Some(entry),
                "{path:?} on shoal: {:?}, expected {entry:?}",
                there.get(path)
            );
            anyhow::ensure!(
                returned.get(path) == Some(entry),
                "{path:?} copied back: {:?}",
                returned.get(path)
            );
        }
        anyhow::ensure!(
            there.len() == expected.len() && returned.len() == expected.len(),
            "extra entries"
        );
        Ok(())
    })();
    setup.finish(result);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_mount_daemon_releases_the_mount() {
    let mut setup = setup(1).await;
    let dir = setup.mount.dir.clone();
    let result = async {
        fs::write(dir.join("before"), "x")?;
        anyhow::ensure!(is_fuse_mounted(&dir), "mounted at first");
        setup.mount.kill_daemon();
        let released = wait_for("the dead mount to be released", Duration::from_secs(30), || {
            let mounted = is_fuse_mounted(&dir);
            async move { (!mounted).then_some(()) }
        })
        .await;
        if let Err(error) = released {
            // Which process keeps the FUSE connection (or fusermount3) alive, for the log.
            let processes = Command::new("ps")
                .args(["-eo", "pid,ppid,stat,wchan:32,args"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            let related: Vec<&str> = processes
                .lines()
                .filter(|l| l.contains("fusermount") || l.contains("shoal"))
                .collect();
            anyhow::bail!("{error}\n{}", related.join("\n"));
        }
        // The directory is an ordinary (empty) directory again, not a dead endpoint.
        let entries = fs::read_dir(&dir)?.count();
        anyhow::ensure!(
            entries == 0,
            "the mount point is empty after release, found {entries} entries"
        );
        Ok(())
    }
    .await;
    setup.finish(result);
}
