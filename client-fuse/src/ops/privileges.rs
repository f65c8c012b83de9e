//! Set-user-ID and set-group-ID bits dropped when a process without CAP_FSETID changes a
//! regular file's contents (write, truncate, fallocate), as Linux local file systems do.
//!
//! Why the mount does it: the kernel's FUSE code drops only what the mode alone decides
//! (set-user-ID, and set-group-ID with group-execute) and only on the paths that go through
//! the page cache. Direct writes merely flag the request (`FUSE_WRITE_KILL_SUIDGID`) for the
//! file system to act on, and the rule that a writer outside the file's group also loses
//! set-group-ID needs the caller's groups, which only the file system can look up. The
//! caller's capabilities and groups come from `/proc/<pid>/status`, read only when the file
//! has a set-id bit, so ordinary writes cost nothing.

use shoal_client::ClientError;
use shoal_client::proto as pb;

use super::Caller;
use crate::core::FsCore;

const SET_ID_BITS: u32 = libc::S_ISUID | libc::S_ISGID;
/// The capability bit of CAP_FSETID in `CapEff`.
const CAP_FSETID_BIT: u64 = 1 << 4;

/// What the kernel already knows about the process that changed the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Privilege {
    /// The kernel checked: the process lacks CAP_FSETID (a direct write's kill flag).
    Lacking,
    /// Unknown: look it up.
    Unknown,
}

/// The caller's standing towards one file, as Linux's `setattr_should_drop_suidgid` needs it.
#[derive(Clone, Copy, Debug)]
struct Standing {
    may_keep_set_id: bool,
    in_file_group: bool,
}

/// The permission bits after an unprivileged change of a regular file with `mode`, or None
/// when nothing is dropped. Set-user-ID always goes; set-group-ID goes if group-execute is
/// set or the changer is outside the file's group.
fn mode_after_change(mode: u32, in_file_group: bool) -> Option<u32> {
    let mut kept = mode & 0o7777;
    kept &= !(libc::S_ISUID);
    let group_executable = mode & libc::S_IXGRP != 0;
    if group_executable || !in_file_group {
        kept &= !(libc::S_ISGID);
    }
    (kept != mode & 0o7777).then_some(kept)
}

/// Reads CapEff and the groups of `pid`. A process that is gone counts as unprivileged and
/// outside every group: the bits are dropped rather than kept by mistake.
fn standing(pid: u32, caller_gid: u32, file_gid: u32, privilege: Privilege) -> Standing {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .map(str::trim)
            .unwrap_or("")
    };
    let capable = privilege == Privilege::Unknown
        && u64::from_str_radix(field("CapEff:"), 16).is_ok_and(|caps| caps & CAP_FSETID_BIT != 0);
    let in_supplementary = field("Groups:")
        .split_whitespace()
        .any(|group| group.parse::<u32>() == Ok(file_gid));
    Standing {
        may_keep_set_id: capable,
        in_file_group: caller_gid == file_gid || in_supplementary,
    }
}

impl FsCore {
    /// The mode a setattr from `caller` may set on `ino` (of group `new_gid` if it changes
    /// that too): set-group-ID goes if the caller is outside the file's group and lacks
    /// CAP_FSETID. The kernel applies this rule to chmod, but not to the mode it sends when
    /// it drops privileges after a buffered write.
    pub(crate) async fn settable_mode(
        &self,
        ino: u64,
        mode: u32,
        new_gid: Option<u32>,
        caller: Caller,
    ) -> Result<u32, ClientError> {
        if mode & libc::S_ISGID == 0 {
            return Ok(mode);
        }
        let file_gid = match (new_gid, self.inodes.attr(ino)) {
            (Some(gid), _) => gid,
            (None, Some(attr)) => attr.gid,
            (None, None) => self.fetch_attr(ino).await?.0.gid,
        };
        let standing = standing(caller.pid, caller.gid, file_gid, Privilege::Unknown);
        if standing.may_keep_set_id || standing.in_file_group {
            return Ok(mode);
        }
        Ok(mode & !(libc::S_ISGID))
    }

    /// Drops the set-id bits of `ino` if `caller` changing it must drop them (see the module
    /// docs). Cheap unless the file has a set-id bit.
    pub(crate) async fn drop_set_id_bits(
        &self,
        ino: u64,
        caller: Caller,
        privilege: Privilege,
    ) -> Result<(), ClientError> {
        let attr = match self.inodes.attr(ino) {
            Some(attr) => attr,
            None => self.fetch_attr(ino).await?.0,
        };
        if attr.mode & SET_ID_BITS == 0 || attr.file_type != pb::FileType::Regular as i32 {
            return Ok(());
        }
        let standing = standing(caller.pid, caller.gid, attr.gid, privilege);
        if standing.may_keep_set_id {
            return Ok(());
        }
        let Some(mode) = mode_after_change(attr.mode, standing.in_file_group) else {
            return Ok(());
        };
        let request = pb::SetAttrRequest {
            volume_id: self.volume_id,
            ino,
            mode: Some(mode),
            ..Default::default()
        };
        let attr = self.registry().set_attr(request).await?;
        self.inodes.remember(&attr);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_user_id_always_goes_set_group_id_as_linux_decides() {
        // Set-group-ID without group-execute stays for a member of the file's group...
        assert_eq!(mode_after_change(0o6664, true), Some(0o2664));
        // ...and goes for anyone else.
        assert_eq!(mode_after_change(0o6664, false), Some(0o0664));
        assert_eq!(mode_after_change(0o2666, false), Some(0o0666));
        // With group-execute it always goes.
        assert_eq!(mode_after_change(0o6775, true), Some(0o0775));
        assert_eq!(mode_after_change(0o0755, false), None);
        assert_eq!(mode_after_change(0o2664, true), None);
    }

    #[test]
    fn a_process_that_is_gone_keeps_nothing() {
        let standing = standing(u32::MAX, 1, 2, Privilege::Unknown);
        assert!(!standing.may_keep_set_id && !standing.in_file_group);
    }
}
