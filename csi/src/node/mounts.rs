//! The node's mounts as the plugin sees them: which Shoal volume a directory serves, whether
//! its FUSE session still answers, bind mounts and unmounts. Everything is read from the
//! kernel (`/proc/self/mountinfo`, statfs) on every call; nothing is remembered, so a
//! restarted plugin knows exactly what its predecessor left.

use std::path::Path;
use std::time::Duration;

use nix::mount::{MntFlags, MsFlags};
use shoal_client::mountinfo::{self, Mount};

/// How long a statfs may take before the mount counts as hung.
const STATFS_TIMEOUT: Duration = Duration::from_secs(10);
/// Most mounts stacked on one directory that an unmount peels off.
const MAX_STACKED_MOUNTS: usize = 16;
/// The file-system type FUSE reports for a Shoal mount (`fuse.` + its subtype).
pub const SHOAL_FS_TYPE: &str = "fuse.shoal";

/// The Shoal volume a mount serves, if it is a Shoal mount.
pub fn shoal_volume(mount: &Mount) -> Option<&str> {
    (mount.fs_type == SHOAL_FS_TYPE)
        .then(|| mount.source.strip_prefix(shoal_proto::agent::FS_NAME_PREFIX))
        .flatten()
}

/// The mount on top at `dir`.
pub fn mount_at(dir: &Path) -> std::io::Result<Option<Mount>> {
    mountinfo::mount_at(dir)
}

/// What statfs says about a mounted directory.
#[derive(Debug)]
pub enum Health {
    Alive(nix::sys::statvfs::Statvfs),
    /// Its FUSE session is gone (ENOTCONN) or it fails otherwise.
    Dead(String),
}

pub async fn health(dir: &Path) -> Health {
    let path = dir.to_path_buf();
    let stat = tokio::task::spawn_blocking(move || nix::sys::statvfs::statvfs(&path));
    match tokio::time::timeout(STATFS_TIMEOUT, stat).await {
        Err(_) => Health::Dead(format!("statfs did not answer within {STATFS_TIMEOUT:?}")),
        Ok(Err(error)) => Health::Dead(format!("statfs task failed: {error}")),
        Ok(Ok(Ok(stat))) => Health::Alive(stat),
        Ok(Ok(Err(nix::errno::Errno::ENOTCONN))) => {
            Health::Dead("its FUSE session is gone (transport endpoint is not connected)".into())
        }
        Ok(Ok(Err(errno))) => Health::Dead(format!("statfs fails with {errno}")),
    }
}

/// Bind-mounts `source` at `target`, read-only if asked (a second, remounting step: the
/// kernel ignores MS_RDONLY on the bind itself).
pub fn bind(source: &Path, target: &Path, read_only: bool) -> nix::Result<()> {
    nix::mount::mount(Some(source), target, None::<&str>, MsFlags::MS_BIND, None::<&str>)?;
    if read_only && let Err(error) = remount_read_only(target) {
        let _ = nix::mount::umount2(target, MntFlags::MNT_DETACH);
        return Err(error);
    }
    Ok(())
}

/// Makes the bind mount at `target` read-only.
pub fn remount_read_only(target: &Path) -> nix::Result<()> {
    let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
    nix::mount::mount(None::<&str>, target, None::<&str>, flags, None::<&str>)
}

/// Unmounts everything mounted at `dir`, lazily where a mount is busy or dead (a process
/// that keeps a file open must not make an unpublish fail forever). A directory that is
/// not a mount point is left alone.
pub fn unmount_all(dir: &Path) -> Result<(), String> {
    for _ in 0..MAX_STACKED_MOUNTS {
        match mount_at(dir) {
            Ok(None) => return Ok(()),
            Ok(Some(_)) => {}
            Err(error) => return Err(format!("cannot read mountinfo: {error}")),
        }
        match nix::mount::umount2(dir, MntFlags::empty()) {
            Ok(()) => {}
            Err(nix::errno::Errno::EBUSY | nix::errno::Errno::ENOTCONN | nix::errno::Errno::EIO) => {
                nix::mount::umount2(dir, MntFlags::MNT_DETACH)
                    .map_err(|error| format!("lazy unmount of {} failed: {error}", dir.display()))?;
            }
            Err(error) => return Err(format!("unmount of {} failed: {error}", dir.display())),
        }
    }
    Err(format!(
        "{} still has mounts after {MAX_STACKED_MOUNTS} unmounts",
        dir.display()
    ))
}
