//! Block checksums on disk: the same CRC-32 and 4 KiB granularity as the wire convention
//! (`shoal_proto::checksum`), so aligned writes store the writer's CRCs unchanged.

pub use shoal_proto::checksum::{PIECE_SIZE_BYTES as BLOCK_SIZE_BYTES, crc, payload_crcs, verify_payload};

/// CRC of a block whose stored bytes are `bytes` (shorter at the end of a chunk): the block
/// is checksummed as if padded with zeros to the full block size, so a block's checksum does
/// not depend on where the chunk happens to end.
pub fn block_crc(bytes: &[u8]) -> u32 {
    assert!(
        bytes.len() <= BLOCK_SIZE_BYTES,
        "a block is at most {BLOCK_SIZE_BYTES} bytes"
    );
    if bytes.len() == BLOCK_SIZE_BYTES {
        return crc(bytes);
    }
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(bytes);
    hasher.update(&ZEROS[..BLOCK_SIZE_BYTES - bytes.len()]);
    hasher.finalize()
}

static ZEROS: [u8; BLOCK_SIZE_BYTES] = [0; BLOCK_SIZE_BYTES];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_blocks_are_checksummed_as_zero_padded() {
        let mut full = vec![0u8; BLOCK_SIZE_BYTES];
        full[..3].copy_from_slice(b"abc");
        assert_eq!(block_crc(b"abc"), crc(&full));
    }
}
