//! POSIX conformance of a real mount, exercised with ordinary system calls (and `setpriv` to
//! act as other users): files, directories, rename, links, permissions, times, xattrs,
//! files unlinked while open, special open flags, sparse and large files, statfs, and
//! close-to-open consistency between two mounts.

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use shoal_client::proto as pb;
use shoal_testkit::{FuseMount, MountSpec, MountedCluster, ShoalCluster, wait_for};

fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_shoal"))
}

/// A cluster with a mounted volume of `replicas` replicas.
async fn setup(replicas: u32) -> MountedCluster {
    let spec = MountSpec {
        volume: "posix",
        replicas,
        ..Default::default()
    };
    MountedCluster::start(&binary(), spec)
        .await
        .expect("cluster and mount start")
}

fn errno<T: std::fmt::Debug>(result: std::io::Result<T>) -> i32 {
    match result {
        Ok(value) => panic!("expected an error, got {value:?}"),
        Err(error) => error.raw_os_error().unwrap_or(-1),
    }
}

fn expect_errno<T: std::fmt::Debug>(what: &str, result: std::io::Result<T>, expected: i32) -> anyhow::Result<()> {
    let got = errno(result);
    anyhow::ensure!(got == expected, "{what}: expected errno {expected}, got {got}");
    Ok(())
}

fn cpath(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).expect("no NUL in test paths")
}

fn renameat2(from: &Path, to: &Path, flags: u32) -> std::io::Result<()> {
    let (from, to) = (cpath(from), cpath(to));
    let result = unsafe { libc::renameat2(libc::AT_FDCWD, from.as_ptr(), libc::AT_FDCWD, to.as_ptr(), flags) };
    if result == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Runs `script` with `sh -c` as user `uid`/`gid`; returns (success, stderr).
fn as_user(uid: u32, gid: u32, script: &str) -> (bool, String) {
    let output = Command::new("setpriv")
        .args([
            &format!("--reuid={uid}"),
            &format!("--regid={gid}"),
            "--clear-groups",
            "sh",
            "-c",
            script,
        ])
        .output()
        .expect("setpriv runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn files_and_directories() {
    let setup = setup(1).await;
    let root = setup.mount.dir.clone();
    let result = (|| {
        let file = root.join("hello.txt");
        fs::write(&file, b"hello, shoal\n")?;
        anyhow::ensure!(fs::read(&file)? == b"hello, shoal\n", "read back differs");
        // O_APPEND writes at the end, whatever the position.
        let mut append = OpenOptions::new().append(true).open(&file)?;
        append.write_all(b"more\n")?;
        drop(append);
        anyhow::ensure!(fs::read_to_string(&file)? == "hello, shoal\nmore\n", "append");
        // O_TRUNC empties, O_EXCL refuses an existing name.
        OpenOptions::new().write(true).truncate(true).open(&file)?;
        anyhow::ensure!(fs::metadata(&file)?.len() == 0, "O_TRUNC");
        expect_errno(
            "O_EXCL",
            OpenOptions::new().write(true).create_new(true).open(&file),
            libc::EEXIST,
        )?;
        expect_errno("open missing", File::open(root.join("missing")), libc::ENOENT)?;
        // Directories.
        let dir = root.join("dir");
        fs::create_dir(&dir)?;
        expect_errno("mkdir existing", fs::create_dir(&dir), libc::EEXIST)?;
        for i in 0..300 {
            fs::write(dir.join(format!("entry-{i:03}")), format!("{i}"))?;
        }
        let mut names: Vec<String> = fs::read_dir(&dir)?
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        anyhow::ensure!(
            names.len() == 300 && names[0] == "entry-000" && names[299] == "entry-299",
            "readdir saw {} entries",
            names.len()
        );
        anyhow::ensure!(
            fs::metadata(&dir)?.nlink() == 2,
            "a directory without subdirectories has 2 links"
        );
        expect_errno("rmdir non-empty", fs::remove_dir(&dir), libc::ENOTEMPTY)?;
        fs::remove_dir_all(&dir)?;
        expect_errno("stat removed", fs::metadata(&dir), libc::ENOENT)?;
        // Odd names.
        for name in ["with space", "ünïcödé-🦀", &"n".repeat(255)] {
            fs::write(root.join(name), name)?;
            anyhow::ensure!(fs::read_to_string(root.join(name))? == name, "name {name:?}");
        }
        expect_errno(
            "name of 256 bytes",
            fs::write(root.join("n".repeat(256)), b"x"),
            libc::ENAMETOOLONG,
        )?;
        // Sparse files and files over 4 GiB.
        let sparse = root.join("sparse");
        let handle = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .read(true)
            .open(&sparse)?;
        handle.write_all_at(b"tail", 5 << 30)?;
        handle.sync_all()?;
        anyhow::ensure!(handle.metadata()?.len() == (5 << 30) + 4, "size past 4 GiB");
        let mut hole = vec![1u8; 8192];
        handle.read_exact_at(&mut hole, 3 << 30)?;
        anyhow::ensure!(hole.iter().all(|b| *b == 0), "a hole reads as zeros");
        let mut tail = [0u8; 4];
        handle.read_exact_at(&mut tail, 5 << 30)?;
        anyhow::ensure!(&tail == b"tail", "bytes past 4 GiB");
        // Truncation shrinks and grows; grown bytes read as zeros.
        handle.set_len(10)?;
        handle.set_len(20_000)?;
        let mut grown = vec![1u8; 20_000];
        handle.read_exact_at(&mut grown, 0)?;
        anyhow::ensure!(grown.iter().all(|b| *b == 0), "bytes after a shrink and grow are zeros");
        handle.sync_data()?;
        drop(handle);
        // O_DIRECT with an aligned buffer.
        let layout = std::alloc::Layout::from_size_align(8192, 4096).unwrap();
        let buffer = unsafe { std::slice::from_raw_parts_mut(std::alloc::alloc_zeroed(layout), 8192) };
        buffer.fill(7);
        let direct = OpenOptions::new()
            .create(true)
            .read(true)
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(root.join("direct"))?;
        direct.write_all_at(buffer, 0)?;
        buffer.fill(0);
        direct.read_exact_at(buffer, 0)?;
        let all_seven = buffer.iter().all(|b| *b == 7);
        unsafe { std::alloc::dealloc(buffer.as_mut_ptr(), layout) };
        anyhow::ensure!(all_seven, "O_DIRECT read back");
        // statfs.
        let stat = nix::sys::statvfs::statvfs(&root)?;
        anyhow::ensure!(
            stat.block_size() == 4096 && stat.blocks() > 0 && stat.files() > 0,
            "statfs {stat:?}"
        );
        Ok(())
    })();
    setup.finish(result);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rename_and_links() {
    let setup = setup(1).await;
    let root = setup.mount.dir.clone();
    let result = (|| {
        fs::create_dir_all(root.join("a/b/c"))?;
        fs::create_dir(root.join("empty"))?;
        fs::write(root.join("a/one"), "1")?;
        fs::write(root.join("two"), "2")?;
        fs::rename(root.join("a/one"), root.join("a/b/moved"))?;
        anyhow::ensure!(
            fs::read_to_string(root.join("a/b/moved"))? == "1",
            "rename across directories"
        );
        fs::rename(root.join("two"), root.join("a/b/moved"))?;
        anyhow::ensure!(
            fs::read_to_string(root.join("a/b/moved"))? == "2",
            "rename over an existing file"
        );
        expect_errno(
            "dir into its own subtree",
            fs::rename(root.join("a"), root.join("a/b/c/a")),
            libc::EINVAL,
        )?;
        expect_errno(
            "dir over non-empty dir",
            fs::rename(root.join("empty"), root.join("a")),
            libc::ENOTEMPTY,
        )?;
        fs::rename(root.join("a/b/c"), root.join("empty"))?;
        anyhow::ensure!(fs::metadata(root.join("empty"))?.is_dir(), "dir over empty dir");
        fs::write(root.join("x"), "x")?;
        fs::write(root.join("y"), "y")?;
        expect_errno(
            "RENAME_NOREPLACE",
            renameat2(&root.join("x"), &root.join("y"), libc::RENAME_NOREPLACE),
            libc::EEXIST,
        )?;
        renameat2(&root.join("x"), &root.join("y"), libc::RENAME_EXCHANGE)?;
        anyhow::ensure!(
            fs::read_to_string(root.join("x"))? == "y" && fs::read_to_string(root.join("y"))? == "x",
            "exchange"
        );
        // Hard links share the inode and its data.
        fs::hard_link(root.join("x"), root.join("x-link"))?;
        let (a, b) = (fs::metadata(root.join("x"))?, fs::metadata(root.join("x-link"))?);
        anyhow::ensure!(
            a.ino() == b.ino() && a.nlink() == 2,
            "hard link: ino {} vs {}, nlink {}",
            a.ino(),
            b.ino(),
            a.nlink()
        );
        fs::write(root.join("x-link"), "changed")?;
        anyhow::ensure!(
            fs::read_to_string(root.join("x"))? == "changed",
            "data through the other link"
        );
        fs::remove_file(root.join("x"))?;
        anyhow::ensure!(fs::metadata(root.join("x-link"))?.nlink() == 1, "nlink after unlink");
        expect_errno(
            "link to a directory",
            fs::hard_link(root.join("a"), root.join("a-link")),
            libc::EPERM,
        )?;
        // Symlinks.
        std::os::unix::fs::symlink("a/b/moved", root.join("sym"))?;
        anyhow::ensure!(fs::read_link(root.join("sym"))? == Path::new("a/b/moved"), "readlink");
        anyhow::ensure!(fs::read_to_string(root.join("sym"))? == "2", "follow symlink");
        anyhow::ensure!(
            fs::symlink_metadata(root.join("sym"))?.file_type().is_symlink(),
            "lstat"
        );
        std::os::unix::fs::symlink("nowhere", root.join("dangling"))?;
        expect_errno("dangling symlink", fs::read(root.join("dangling")), libc::ENOENT)?;
        // Rename of an open file: the open handle follows the inode.
        let mut open = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(root.join("open-file"))?;
        open.write_all(b"before ")?;
        fs::rename(root.join("open-file"), root.join("renamed-open"))?;
        open.write_all(b"after")?;
        drop(open);
        anyhow::ensure!(
            fs::read_to_string(root.join("renamed-open"))? == "before after",
            "write after rename"
        );
        Ok(())
    })();
    setup.finish(result);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn permissions_sticky_and_setgid() {
    let setup = setup(1).await;
    let root = setup.mount.dir.clone();
    let result = (|| {
        let private = root.join("private");
        fs::create_dir(&private)?;
        fs::set_permissions(&private, fs::Permissions::from_mode(0o755))?;
        let (ok, _) = as_user(65534, 65534, &format!("touch {}/x", private.display()));
        anyhow::ensure!(!ok, "nobody created a file in a root-owned 0755 directory");
        fs::set_permissions(&private, fs::Permissions::from_mode(0o777))?;
        let (ok, err) = as_user(65534, 65534, &format!("echo hi > {}/mine", private.display()));
        anyhow::ensure!(ok, "nobody cannot create in a 0777 directory: {err}");
        anyhow::ensure!(
            fs::metadata(private.join("mine"))?.uid() == 65534,
            "owner of a file created by nobody"
        );
        fs::write(root.join("secret"), "s")?;
        fs::set_permissions(root.join("secret"), fs::Permissions::from_mode(0o600))?;
        let (ok, _) = as_user(65534, 65534, &format!("cat {}/secret", root.display()));
        anyhow::ensure!(!ok, "nobody read a 0600 root file");
        // Sticky directory: only the owner removes its files.
        let shared = root.join("shared");
        fs::create_dir(&shared)?;
        fs::set_permissions(&shared, fs::Permissions::from_mode(0o1777))?;
        let (ok, err) = as_user(1001, 1001, &format!("echo a > {}/alice", shared.display()));
        anyhow::ensure!(ok, "alice cannot create in a sticky dir: {err}");
        let (ok, _) = as_user(1002, 1002, &format!("rm -f {}/alice", shared.display()));
        anyhow::ensure!(
            !ok && shared.join("alice").exists(),
            "bob removed alice's file from a sticky directory"
        );
        let (ok, err) = as_user(1001, 1001, &format!("rm {}/alice", shared.display()));
        anyhow::ensure!(ok, "alice cannot remove her own file: {err}");
        // Setgid directory: new files take its group, new directories its setgid bit.
        let group = root.join("group");
        fs::create_dir(&group)?;
        nix::unistd::chown(&group, None, Some(nix::unistd::Gid::from_raw(4242)))?;
        fs::set_permissions(&group, fs::Permissions::from_mode(0o2775))?;
        fs::write(group.join("file"), "g")?;
        fs::create_dir(group.join("sub"))?;
        anyhow::ensure!(
            fs::metadata(group.join("file"))?.gid() == 4242,
            "file group in a setgid directory"
        );
        let sub = fs::metadata(group.join("sub"))?;
        anyhow::ensure!(
            sub.gid() == 4242 && sub.mode() & 0o2000 != 0,
            "subdirectory of a setgid directory: {:o}",
            sub.mode()
        );
        // chown and chmod.
        nix::unistd::chown(
            &root.join("secret"),
            Some(nix::unistd::Uid::from_raw(1001)),
            Some(nix::unistd::Gid::from_raw(1001)),
        )?;
        let meta = fs::metadata(root.join("secret"))?;
        anyhow::ensure!(meta.uid() == 1001 && meta.gid() == 1001, "chown");
        let (ok, err) = as_user(1001, 1001, &format!("cat {}/secret", root.display()));
        anyhow::ensure!(ok, "the new owner cannot read: {err}");
        Ok(())
    })();
    setup.finish(result);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn times_and_xattrs() {
    let setup = setup(1).await;
    let root = setup.mount.dir.clone();
    let result = (|| {
        let file = root.join("timed");
        fs::write(&file, "v1")?;
        let before = fs::metadata(&file)?;
        std::thread::sleep(Duration::from_millis(20));
        fs::write(&file, "version two")?;
        let after = fs::metadata(&file)?;
        anyhow::ensure!(
            after.mtime_nsec() != before.mtime_nsec() || after.mtime() > before.mtime(),
            "mtime after write"
        );
        std::thread::sleep(Duration::from_millis(20));
        fs::set_permissions(&file, fs::Permissions::from_mode(0o640))?;
        let changed = fs::metadata(&file)?;
        anyhow::ensure!(
            (changed.ctime(), changed.ctime_nsec()) > (after.ctime(), after.ctime_nsec()),
            "ctime after chmod"
        );
        let status = Command::new("touch")
            .args(["-m", "-d", "2001-02-03 04:05:06.789 UTC"])
            .arg(&file)
            .status()?;
        anyhow::ensure!(status.success(), "touch");
        let set = fs::metadata(&file)?;
        anyhow::ensure!(
            set.mtime() == 981_173_106 && set.mtime_nsec() == 789_000_000,
            "utimensat: {} {}",
            set.mtime(),
            set.mtime_nsec()
        );
        let dir_before = fs::metadata(&root)?;
        std::thread::sleep(Duration::from_millis(20));
        fs::write(root.join("new-entry"), "")?;
        let dir_after = fs::metadata(&root)?;
        anyhow::ensure!(
            (dir_after.mtime(), dir_after.mtime_nsec()) > (dir_before.mtime(), dir_before.mtime_nsec()),
            "directory mtime after create"
        );
        // Extended attributes.
        let path = cpath(&file);
        let set_xattr = |name: &str, value: &[u8], flags: i32| {
            let name = CString::new(name).unwrap();
            let result =
                unsafe { libc::setxattr(path.as_ptr(), name.as_ptr(), value.as_ptr().cast(), value.len(), flags) };
            if result == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        };
        let get_xattr = |name: &str| {
            let name = CString::new(name).unwrap();
            let mut buffer = vec![0u8; 256];
            let length =
                unsafe { libc::getxattr(path.as_ptr(), name.as_ptr(), buffer.as_mut_ptr().cast(), buffer.len()) };
            if length < 0 {
                return Err(std::io::Error::last_os_error());
            }
            buffer.truncate(length as usize);
            Ok(buffer)
        };
        set_xattr("user.color", b"blue", 0)?;
        anyhow::ensure!(get_xattr("user.color")? == b"blue", "getxattr");
        expect_errno(
            "XATTR_CREATE on existing",
            set_xattr("user.color", b"red", libc::XATTR_CREATE),
            libc::EEXIST,
        )?;
        expect_errno(
            "XATTR_REPLACE on missing",
            set_xattr("user.size", b"1", libc::XATTR_REPLACE),
            libc::ENODATA,
        )?;
        expect_errno("missing xattr", get_xattr("user.none"), libc::ENODATA)?;
        set_xattr("user.size", b"42", 0)?;
        let mut names = vec![0u8; 256];
        let length = unsafe { libc::listxattr(path.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
        anyhow::ensure!(length > 0, "listxattr");
        let listed: Vec<&[u8]> = names[..length as usize]
            .split(|b| *b == 0)
            .filter(|n| !n.is_empty())
            .collect();
        anyhow::ensure!(
            listed.contains(&&b"user.color"[..]) && listed.contains(&&b"user.size"[..]),
            "listxattr: {listed:?}"
        );
        let name = CString::new("user.color").unwrap();
        anyhow::ensure!(
            unsafe { libc::removexattr(path.as_ptr(), name.as_ptr()) } == 0,
            "removexattr"
        );
        expect_errno("removed xattr", get_xattr("user.color"), libc::ENODATA)?;
        Ok(())
    })();
    setup.finish(result);
}

async fn stored_chunks(cluster: &ShoalCluster) -> anyhow::Result<u64> {
    use shoal_proto::data::data_service_client::DataServiceClient;
    let status = cluster.registry.client().status(pb::Empty {}).await?;
    let mut total = 0;
    for service in status.data_services {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", service.address))?.connect_lazy();
        total += DataServiceClient::new(channel)
            .stats(shoal_proto::data::StatsRequest {})
            .await?
            .into_inner()
            .chunks;
    }
    Ok(total)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unlinked_open_file_stays_readable_until_closed() {
    let setup = setup(1).await;
    let root = setup.mount.dir.clone();
    let result = async {
        let path = root.join("doomed");
        let payload: Vec<u8> = (0..12 << 20).map(|i: u32| (i % 251) as u8).collect();
        fs::write(&path, &payload)?;
        let mut open = File::open(&path)?;
        fs::remove_file(&path)?;
        expect_errno("stat after unlink", fs::metadata(&path), libc::ENOENT)?;
        anyhow::ensure!(
            open.metadata()?.nlink() == 0,
            "fstat of an unlinked open file has nlink 0"
        );
        // Longer than a garbage-collection round: the data must survive while open.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let mut back = Vec::new();
        open.seek(SeekFrom::Start(0))?;
        open.read_to_end(&mut back)?;
        anyhow::ensure!(back == payload, "an unlinked open file must read back whole");
        drop(open);
        wait_for(
            "the closed file's chunks to be reclaimed",
            Duration::from_secs(30),
            || async { (stored_chunks(&setup.cluster).await.ok()? == 0).then_some(()) },
        )
        .await?;
        Ok(())
    }
    .await;
    setup.finish(result);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn close_to_open_between_two_mounts() {
    let setup = setup(3).await;
    let second_dir = setup.cluster.registry.root().join("mnt2");
    let second_log = setup.cluster.registry.root().join("mount2.log");
    let mut second = FuseMount::start(
        &binary(),
        &setup.cluster.registry.registry_arg(),
        "posix",
        &second_dir,
        &[],
        &second_log,
    )
    .await
    .expect("second mount");
    let first = setup.mount.dir.clone();
    let result = (|| {
        let data: Vec<u8> = (0..3 << 20).map(|i: u32| (i % 13) as u8).collect();
        fs::write(first.join("shared.bin"), &data)?;
        let seen = fs::read(second.path("shared.bin"))?;
        anyhow::ensure!(
            seen == data,
            "second mount sees {} of {} bytes after close",
            seen.len(),
            data.len()
        );
        // Appended and closed on the first mount: the second sees it on its next open,
        // although it read (and cached) the file before.
        let mut more = OpenOptions::new().append(true).open(first.join("shared.bin"))?;
        more.write_all(b"appended by the first mount")?;
        drop(more);
        let mut reopened = Vec::new();
        File::open(second.path("shared.bin"))?.read_to_end(&mut reopened)?;
        anyhow::ensure!(
            reopened.len() == data.len() + 27,
            "size after reopen: {}",
            reopened.len()
        );
        anyhow::ensure!(
            reopened.ends_with(b"appended by the first mount"),
            "new bytes after reopen"
        );
        // Overwritten in place (same size): new content after reopen.
        let file = OpenOptions::new().write(true).open(first.join("shared.bin"))?;
        file.write_all_at(b"XYZ", 0)?;
        drop(file);
        let mut head = [0u8; 3];
        File::open(second.path("shared.bin"))?.read_exact(&mut head)?;
        anyhow::ensure!(&head == b"XYZ", "overwrite seen after reopen: {head:?}");
        // A new file created on the second mount is visible on the first.
        fs::write(second.path("from-second"), "hi")?;
        anyhow::ensure!(
            fs::read_to_string(first.join("from-second"))? == "hi",
            "create seen by the other mount"
        );
        Ok(())
    })();
    second.release();
    setup.finish(result);
}
