//! Every bound the registry enforces, in one place, with units in the names.

/// Longest file name, in bytes (NAME_MAX).
pub const MAX_NAME_BYTES: usize = 255;
/// Longest symlink target, in bytes (PATH_MAX - 1).
pub const MAX_SYMLINK_TARGET_BYTES: usize = 4095;
/// Longest extended-attribute name, in bytes (XATTR_NAME_MAX).
pub const MAX_XATTR_NAME_BYTES: usize = 255;
/// Largest extended-attribute value, in bytes (XATTR_SIZE_MAX).
pub const MAX_XATTR_VALUE_BYTES: usize = 64 * 1024;
/// Most extended attributes on one inode; beyond it setxattr fails with ENOSPC.
pub const MAX_XATTRS_PER_INODE: u32 = 1024;
/// Largest file size, in bytes (1 PiB). Larger sizes are refused with EFBIG.
pub const MAX_FILE_SIZE_BYTES: u64 = 1 << 50;
/// Most hard links to one inode (and subdirectories of one directory, plus two).
pub const MAX_LINK_COUNT: u32 = 65_000;
/// Deepest directory nesting the rename cycle check walks; deeper trees get ELOOP.
pub const MAX_DIRECTORY_DEPTH: usize = 4096;
/// Most entries one readdir call returns.
pub const MAX_READDIR_ENTRIES: u32 = 4096;
/// Most entries one listxattr call returns (bounded by MAX_XATTRS_PER_INODE anyway).
pub const MAX_LISTXATTR_ENTRIES: usize = MAX_XATTRS_PER_INODE as usize;

/// What a volume may be created with, and the defaults of a zero field: defined with the
/// wire contract, since clients check requests against them too.
pub use shoal_proto::volume::{
    DEFAULT_CHUNK_SIZE_BYTES, DEFAULT_REPLICAS, DEFAULT_STRIPE_WIDTH, MAX_CHUNK_SIZE_BYTES, MAX_REPLICAS,
    MAX_STRIPE_WIDTH, MAX_VOLUME_NAME_BYTES, MIN_CHUNK_SIZE_BYTES, MIN_REPLICAS,
};

/// Most volumes in one cluster.
pub const MAX_VOLUMES: usize = 10_000;
/// Most data services in one cluster.
pub const MAX_DATA_SERVICES: usize = 4096;
/// Most disks one data service reports.
pub const MAX_DISKS_PER_DATA_SERVICE: usize = 64;
/// Longest free-text field (addresses, zones, disk paths, uuids), in bytes.
pub const MAX_LABEL_BYTES: usize = 256;

/// Block size reported by statfs.
pub const STATFS_BLOCK_SIZE_BYTES: u32 = 4096;
