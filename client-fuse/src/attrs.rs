//! Registry attributes as the kernel wants them, and errors as errnos.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{Errno, FileAttr, FileType, INodeNo};
use shoal_client::ClientError;
use shoal_client::proto as pb;

/// `st_blksize`: tools size their buffers from it; a large value makes them write in large
/// pieces, which the data path likes.
const BLOCK_SIZE_BYTES: u32 = 1 << 20;

pub fn time(ns: i64) -> SystemTime {
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(ns.unsigned_abs())
    }
}

pub fn time_ns(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_nanos()).unwrap_or(i64::MAX),
        Err(before) => -i64::try_from(before.duration().as_nanos()).unwrap_or(i64::MAX),
    }
}

pub fn file_type(value: i32) -> FileType {
    match pb::FileType::try_from(value) {
        Ok(pb::FileType::Directory) => FileType::Directory,
        Ok(pb::FileType::Symlink) => FileType::Symlink,
        Ok(pb::FileType::Fifo) => FileType::NamedPipe,
        Ok(pb::FileType::Socket) => FileType::Socket,
        Ok(pb::FileType::CharDevice) => FileType::CharDevice,
        Ok(pb::FileType::BlockDevice) => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

/// The registry's file type for a mode's `S_IFMT` bits (regular if none).
pub fn file_type_of_mode(mode: u32) -> pb::FileType {
    match mode & libc::S_IFMT {
        libc::S_IFIFO => pb::FileType::Fifo,
        libc::S_IFSOCK => pb::FileType::Socket,
        libc::S_IFCHR => pb::FileType::CharDevice,
        libc::S_IFBLK => pb::FileType::BlockDevice,
        libc::S_IFDIR => pb::FileType::Directory,
        libc::S_IFLNK => pb::FileType::Symlink,
        _ => pb::FileType::Regular,
    }
}

/// Kernel attributes for `attr`, with the size this mount knows to be larger if it has
/// written past the registry's size.
pub fn file_attr(attr: &pb::Attr, local_size: Option<u64>) -> FileAttr {
    let size = local_size.map_or(attr.size_bytes, |local| local.max(attr.size_bytes));
    FileAttr {
        ino: INodeNo(attr.ino),
        size,
        blocks: size.div_ceil(512),
        atime: time(attr.atime_ns),
        mtime: time(attr.mtime_ns),
        ctime: time(attr.ctime_ns),
        crtime: time(attr.ctime_ns),
        kind: file_type(attr.file_type),
        perm: (attr.mode & 0o7777) as u16,
        nlink: attr.nlink,
        uid: attr.uid,
        gid: attr.gid,
        rdev: attr.rdev,
        blksize: BLOCK_SIZE_BYTES,
        flags: 0,
    }
}

pub fn errno(error: &ClientError) -> Errno {
    Errno::from_i32(error.errno().code())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip_on_both_sides_of_the_epoch() {
        for ns in [0, 1, 1_700_000_000_123_456_789, -5_000_000_001] {
            assert_eq!(time_ns(time(ns)), ns);
        }
    }

    #[test]
    fn modes_map_to_file_types() {
        assert_eq!(file_type_of_mode(libc::S_IFIFO | 0o644), pb::FileType::Fifo);
        assert_eq!(file_type_of_mode(0o644), pb::FileType::Regular);
    }
}
