//! Input checks shared by every namespace operation. They run before anything changes.

use shoal_proto::errno::{Errno, FsError};

use crate::limits::{MAX_NAME_BYTES, MAX_SYMLINK_TARGET_BYTES, MAX_XATTR_NAME_BYTES, MAX_XATTR_VALUE_BYTES};

/// Checks a name that is about to be created, removed or renamed.
///
/// Refused: empty names, names with '/' or NUL (EINVAL), "." and ".." (EINVAL: they are
/// not entries Shoal stores), and names over 255 bytes (ENAMETOOLONG).
pub fn entry_name(name: &[u8]) -> Result<(), FsError> {
    if name.len() > MAX_NAME_BYTES {
        return Err(FsError::new(
            Errno::ENAMETOOLONG,
            format!("name is {} bytes; the limit is {MAX_NAME_BYTES}", name.len()),
        ));
    }
    if name.is_empty() {
        return Err(FsError::new(Errno::EINVAL, "empty name"));
    }
    if name == b"." || name == b".." {
        return Err(FsError::new(
            Errno::EINVAL,
            format!(
                "{:?} cannot be created, removed or renamed",
                String::from_utf8_lossy(name)
            ),
        ));
    }
    if let Some(bad) = name.iter().find(|byte| **byte == b'/' || **byte == 0) {
        let what = if *bad == 0 { "NUL" } else { "'/'" };
        return Err(FsError::new(
            Errno::EINVAL,
            format!("name {:?} contains {what}", String::from_utf8_lossy(name)),
        ));
    }
    Ok(())
}

/// Checks a name used for lookup: "." and ".." are allowed, everything else as `entry_name`.
pub fn lookup_name(name: &[u8]) -> Result<(), FsError> {
    if name == b"." || name == b".." {
        return Ok(());
    }
    entry_name(name)
}

pub fn symlink_target(target: &[u8]) -> Result<(), FsError> {
    if target.is_empty() {
        return Err(FsError::new(Errno::ENOENT, "empty symlink target"));
    }
    if target.len() > MAX_SYMLINK_TARGET_BYTES {
        return Err(FsError::new(
            Errno::ENAMETOOLONG,
            format!(
                "symlink target is {} bytes; the limit is {MAX_SYMLINK_TARGET_BYTES}",
                target.len()
            ),
        ));
    }
    if target.contains(&0) {
        return Err(FsError::new(Errno::EINVAL, "symlink target contains NUL"));
    }
    Ok(())
}

pub fn xattr_name(name: &[u8]) -> Result<(), FsError> {
    if name.is_empty() {
        return Err(FsError::new(Errno::EINVAL, "empty extended attribute name"));
    }
    if name.len() > MAX_XATTR_NAME_BYTES {
        return Err(FsError::new(
            Errno::ERANGE,
            format!(
                "extended attribute name is {} bytes; the limit is {MAX_XATTR_NAME_BYTES}",
                name.len()
            ),
        ));
    }
    if name.contains(&0) {
        return Err(FsError::new(Errno::EINVAL, "extended attribute name contains NUL"));
    }
    Ok(())
}

pub fn xattr_value(value: &[u8]) -> Result<(), FsError> {
    if value.len() > MAX_XATTR_VALUE_BYTES {
        return Err(FsError::new(
            Errno::E2BIG,
            format!(
                "extended attribute value is {} bytes; the limit is {MAX_XATTR_VALUE_BYTES}",
                value.len()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_names_get_the_right_errno() {
        let cases: &[(&[u8], Errno)] = &[
            (b"", Errno::EINVAL),
            (b".", Errno::EINVAL),
            (b"..", Errno::EINVAL),
            (b"a/b", Errno::EINVAL),
            (b"a\0b", Errno::EINVAL),
            (&[b'x'; 256], Errno::ENAMETOOLONG),
        ];
        for (name, errno) in cases {
            assert_eq!(entry_name(name).unwrap_err().errno, *errno, "{name:?}");
        }
        assert!(entry_name(&[b'x'; 255]).is_ok());
        assert!(entry_name("ünïcödé \u{1F980}".as_bytes()).is_ok());
        assert!(entry_name(&[0xff, 0xfe]).is_ok(), "names need not be UTF-8");
        assert!(lookup_name(b"..").is_ok());
    }
}
