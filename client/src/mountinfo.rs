//! The mounts the kernel reports in `/proc/self/mountinfo`: which directory is a mount
//! point, of what, from which device. The CSI node plugin rebuilds its view of the node
//! from here after a restart; the FUSE client finds its own mount's device here.

use std::path::{Path, PathBuf};

/// One line of mountinfo.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// "major:minor" of the mounted file system: a bind mount shares its source's.
    pub device: String,
    /// The directory of the file system that is mounted ("/" unless a bind of a subtree).
    pub root: PathBuf,
    pub mount_point: PathBuf,
    /// Per-mount options ("rw,nosuid,relatime"), read-only shows as "ro".
    pub mount_options: String,
    pub fs_type: String,
    pub source: String,
}

impl Mount {
    pub fn read_only(&self) -> bool {
        self.mount_options.split(',').any(|option| option == "ro")
    }
}

/// Undoes the kernel's octal escapes (`\040` for a space, `\011`, `\012`, `\134`).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|digits| digits.iter().all(|d| (b'0'..=b'7').contains(d)));
        match (bytes[i], octal) {
            (b'\\', Some(digits)) => {
                let value = digits.iter().fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                out.push(value as u8);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses one mountinfo line; `None` if it is not one.
pub fn parse_line(line: &str) -> Option<Mount> {
    let (before, after) = line.split_once(" - ")?;
    let fields: Vec<&str> = before.split(' ').collect();
    let tail: Vec<&str> = after.split(' ').collect();
    if fields.len() < 6 || tail.len() < 2 {
        return None;
    }
    Some(Mount {
        device: fields[2].to_string(),
        root: PathBuf::from(unescape(fields[3])),
        mount_point: PathBuf::from(unescape(fields[4])),
        mount_options: fields[5].to_string(),
        fs_type: tail[0].to_string(),
        source: unescape(tail[1]),
    })
}

/// Every mount of this process's mount namespace, in mount order.
pub fn mounts() -> std::io::Result<Vec<Mount>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(text.lines().filter_map(parse_line).collect())
}

/// The mount on top at `dir` (the last one mounted there), if `dir` is a mount point.
pub fn mount_at(dir: &Path) -> std::io::Result<Option<Mount>> {
    Ok(mounts()?.into_iter().rev().find(|mount| mount.mount_point == dir))
}

/// True if a FUSE file system is mounted at `dir` now, on top or under another mount (read
/// from the mount table, never by touching the mount, which may be dead).
pub fn is_fuse_mount(dir: &Path) -> bool {
    mounts().is_ok_and(|all| {
        all.iter()
            .any(|m| m.mount_point == dir && m.fs_type.starts_with("fuse"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse_with_escapes_and_optional_fields() {
        let line = "36 35 0:52 / /var/lib/kubelet/pods/a\\040b/mount rw,nosuid,relatime shared:1 master:2 - fuse.shoal shoal:web rw,user_id=0";
        let mount = parse_line(line).unwrap();
        assert_eq!(mount.device, "0:52");
        assert_eq!(mount.mount_point, PathBuf::from("/var/lib/kubelet/pods/a b/mount"));
        assert_eq!(mount.fs_type, "fuse.shoal");
        assert_eq!(mount.source, "shoal:web");
        assert!(!mount.read_only());
        let read_only = parse_line("37 35 0:52 / /t ro,relatime - fuse.shoal shoal:web rw").unwrap();
        assert!(read_only.read_only());
        assert_eq!(parse_line("garbage"), None);
        assert_eq!(unescape("a\\134b\\011"), "a\\b\t");
    }

    #[test]
    fn this_process_sees_its_root() {
        let all = mounts().unwrap();
        assert!(all.iter().any(|mount| mount.mount_point == Path::new("/")));
    }
}
