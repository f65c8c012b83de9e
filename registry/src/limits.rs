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

/// Longest volume name, in bytes. CSI volume names ("pvc-<uuid>") fit comfortably.
pub const MAX_VOLUME_NAME_BYTES: usize = 128;
/// Replication factors a volume may ask for.
pub const MIN_REPLICAS: u32 = 1;
pub const MAX_REPLICAS: u32 = 5;
/// Chunk sizes a volume may ask for (powers of two in this range).
pub const MIN_CHUNK_SIZE_BYTES: u64 = 64 * 1024;
pub const MAX_CHUNK_SIZE_BYTES: u64 = 64 * 1024 * 1024;
/// Most chains one file is striped over.
pub const MAX_STRIPE_WIDTH: u32 = 64;
/// Most volumes in one cluster.
pub const MAX_VOLUMES: usize = 10_000;
/// Most data services in one cluster.
pub const MAX_DATA_SERVICES: usize = 4096;
/// Most disks one data service reports.
pub const MAX_DISKS_PER_DATA_SERVICE: usize = 64;
/// Longest free-text field (addresses, zones, disk paths, uuids), in bytes.
pub const MAX_LABEL_BYTES: usize = 256;

/// Defaults applied when a volume is created without them.
pub const DEFAULT_REPLICAS: u32 = 3;
pub const DEFAULT_CHUNK_SIZE_BYTES: u64 = 4 * 1024 * 1024;
pub const DEFAULT_STRIPE_WIDTH: u32 = 4;

/// Block size reported by statfs.
pub const STATFS_BLOCK_SIZE_BYTES: u32 = 4096;
