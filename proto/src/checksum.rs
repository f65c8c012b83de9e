//! The checksum convention on the data path: CRC-32 (crc32fast, hardware-accelerated) of
//! every 4 KiB piece of a payload, the last piece possibly shorter. Writers send them with
//! every write; data services send them with every read; each side verifies.

/// Size of one checksummed piece, on the wire and on disk.
pub const PIECE_SIZE_BYTES: usize = 4096;

pub fn crc(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

/// CRCs of `payload` in 4 KiB pieces.
pub fn payload_crcs(payload: &[u8]) -> Vec<u32> {
    payload.chunks(PIECE_SIZE_BYTES).map(crc).collect()
}

/// Checks a payload against its CRCs. Returns the index of the first piece that does not
/// match (or the piece count, if the number of CRCs is wrong).
pub fn verify_payload(payload: &[u8], crcs: &[u32]) -> Result<(), usize> {
    let pieces = payload.len().div_ceil(PIECE_SIZE_BYTES);
    if crcs.len() != pieces {
        return Err(crcs.len().min(pieces));
    }
    for (index, (piece, expected)) in payload.chunks(PIECE_SIZE_BYTES).zip(crcs).enumerate() {
        if crc(piece) != *expected {
            return Err(index);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verification_finds_the_bad_piece() {
        let payload = vec![7u8; PIECE_SIZE_BYTES * 2 + 10];
        let crcs = payload_crcs(&payload);
        assert_eq!(crcs.len(), 3);
        assert_eq!(verify_payload(&payload, &crcs), Ok(()));
        let mut damaged = payload.clone();
        damaged[PIECE_SIZE_BYTES + 5] ^= 1;
        assert_eq!(verify_payload(&damaged, &crcs), Err(1));
        assert!(verify_payload(&payload, &crcs[..2]).is_err());
    }
}
