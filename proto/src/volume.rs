//! What a volume may be made with: the settings a `CreateVolumeRequest` may ask for, and
//! what a zero field means. Part of the contract, since clients (the CLI, the CSI driver)
//! check requests against the same bounds the registry enforces and need to know what a
//! default resolves to.

/// Longest volume name, in bytes (the CSI specification's limit for names and ids).
pub const MAX_VOLUME_NAME_BYTES: usize = 128;
/// Replication factors a volume may ask for.
pub const MIN_REPLICAS: u32 = 1;
pub const MAX_REPLICAS: u32 = 5;
/// Chunk sizes a volume may ask for (powers of two in this range).
pub const MIN_CHUNK_SIZE_BYTES: u64 = 64 * 1024;
pub const MAX_CHUNK_SIZE_BYTES: u64 = 64 * 1024 * 1024;
/// Most chains one file is striped over.
pub const MAX_STRIPE_WIDTH: u32 = 64;

/// Defaults applied when a volume is created without them (a zero field).
pub const DEFAULT_REPLICAS: u32 = 3;
pub const DEFAULT_CHUNK_SIZE_BYTES: u64 = 4 * 1024 * 1024;
pub const DEFAULT_STRIPE_WIDTH: u32 = 4;

const _: () = assert!(MIN_REPLICAS <= DEFAULT_REPLICAS && DEFAULT_REPLICAS <= MAX_REPLICAS);
const _: () = assert!(MIN_CHUNK_SIZE_BYTES <= DEFAULT_CHUNK_SIZE_BYTES);
const _: () = assert!(DEFAULT_CHUNK_SIZE_BYTES <= MAX_CHUNK_SIZE_BYTES);
const _: () = assert!(DEFAULT_CHUNK_SIZE_BYTES.is_power_of_two());
const _: () = assert!(DEFAULT_STRIPE_WIDTH >= 1 && DEFAULT_STRIPE_WIDTH <= MAX_STRIPE_WIDTH);

/// Volume names: 1 to [`MAX_VOLUME_NAME_BYTES`] bytes of ASCII letters, digits, '.', '_'
/// and '-', starting with a letter or digit, so they are safe in paths, URLs and Kubernetes
/// object names.
pub fn is_valid_volume_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_VOLUME_NAME_BYTES
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && name.as_bytes()[0].is_ascii_alphanumeric()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_names() {
        assert!(is_valid_volume_name("pvc-0f3c2a5e-8a7b-4d1e-9c1f-2b3a4c5d6e7f"));
        assert!(is_valid_volume_name(&"a".repeat(MAX_VOLUME_NAME_BYTES)));
        assert!(!is_valid_volume_name(&"a".repeat(MAX_VOLUME_NAME_BYTES + 1)));
        assert!(!is_valid_volume_name(""));
        assert!(!is_valid_volume_name("-leading-dash"));
        assert!(!is_valid_volume_name("has/slash"));
        assert!(!is_valid_volume_name("späce"));
    }
}
