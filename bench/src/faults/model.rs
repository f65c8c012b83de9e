//! What the writers know: for every 512-byte sector of every file, which write put the
//! bytes there that the file system acknowledged (a write followed by a successful fsync or
//! close), or that nobody knows (a write whose fsync or close failed: its bytes may be
//! there, in part or not at all).
//!
//! Invariant: a sector is `Acknowledged` only after the file system said so, and only the
//! writer that owns the file changes its model; so any other content read back from an
//! acknowledged sector is lost or wrong data.

/// Writes and reads are in whole sectors (at offsets that are not block-aligned, so that
/// the chunk store merges partial blocks).
pub const SECTOR_BYTES: u64 = 512;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sector {
    /// No write ever touched it: zeros (or past the end of the file).
    Never,
    /// The bytes of write `op`, acknowledged.
    Acknowledged { op: u32 },
    /// A write that failed touched it: anything may be there.
    Unknown,
}

/// One file's model.
pub struct FileModel {
    pub file_id: u32,
    sectors: Vec<Sector>,
}

/// What a read-back found.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Verdict {
    /// Acknowledged bytes compared (and found right).
    pub bytes_checked: u64,
    /// Acknowledged bytes that read back as other bytes.
    pub wrong_bytes: u64,
    /// Acknowledged bytes past the end of what was read (the file is too short).
    pub lost_bytes: u64,
    /// Bytes of failed writes, not checked.
    pub bytes_unknown: u64,
    /// Bytes never written that did not read back as zeros.
    pub stray_bytes: u64,
}

impl Verdict {
    pub fn add(&mut self, other: &Verdict) {
        self.bytes_checked += other.bytes_checked;
        self.wrong_bytes += other.wrong_bytes;
        self.lost_bytes += other.lost_bytes;
        self.bytes_unknown += other.bytes_unknown;
        self.stray_bytes += other.stray_bytes;
    }

    pub fn is_clean(&self) -> bool {
        self.wrong_bytes == 0 && self.lost_bytes == 0 && self.stray_bytes == 0
    }
}

/// The bytes write `op` of file `file_id` puts at `offset..offset + length` (both whole
/// sectors): every write's bytes differ from every other's at every position.
pub fn content(file_id: u32, op: u32, offset: u64, length: u64) -> Vec<u8> {
    shoal_testkit::pattern((u64::from(file_id) << 32) | u64::from(op), offset, length)
}

impl FileModel {
    pub fn new(file_id: u32, span_bytes: u64) -> FileModel {
        assert!(span_bytes.is_multiple_of(SECTOR_BYTES));
        FileModel {
            file_id,
            sectors: vec![Sector::Never; (span_bytes / SECTOR_BYTES) as usize],
        }
    }

    fn range(&self, offset: u64, length: u64) -> std::ops::Range<usize> {
        assert!(offset.is_multiple_of(SECTOR_BYTES) && length.is_multiple_of(SECTOR_BYTES) && length > 0);
        let (first, end) = (
            (offset / SECTOR_BYTES) as usize,
            ((offset + length) / SECTOR_BYTES) as usize,
        );
        assert!(end <= self.sectors.len(), "a write past the file's span");
        first..end
    }

    /// Write `op` at `offset..offset + length` was acknowledged.
    pub fn acknowledged(&mut self, op: u32, offset: u64, length: u64) {
        let range = self.range(offset, length);
        self.sectors[range].fill(Sector::Acknowledged { op });
    }

    /// A write at `offset..offset + length` failed: its sectors hold anything now.
    pub fn failed(&mut self, offset: u64, length: u64) {
        let range = self.range(offset, length);
        self.sectors[range].fill(Sector::Unknown);
    }

    /// The end of the last acknowledged sector: the file is at least this long.
    #[cfg(test)]
    pub fn acknowledged_end(&self) -> u64 {
        self.sectors
            .iter()
            .rposition(|s| matches!(s, Sector::Acknowledged { .. }))
            .map_or(0, |i| (i as u64 + 1) * SECTOR_BYTES)
    }

    /// Compares `read` (the bytes read from `offset` on) with the model.
    pub fn check(&self, offset: u64, read: &[u8]) -> Verdict {
        let mut verdict = Verdict::default();
        let first = (offset / SECTOR_BYTES) as usize;
        let end = (offset + read.len() as u64).div_ceil(SECTOR_BYTES) as usize;
        for index in first..end.min(self.sectors.len()) {
            let start = index as u64 * SECTOR_BYTES;
            let from = (start.saturating_sub(offset)) as usize;
            let to = ((start + SECTOR_BYTES - offset) as usize).min(read.len());
            let got = &read[from..to];
            match self.sectors[index] {
                Sector::Never => verdict.stray_bytes += got.iter().filter(|b| **b != 0).count() as u64,
                Sector::Unknown => verdict.bytes_unknown += got.len() as u64,
                Sector::Acknowledged { op } => {
                    let want = content(self.file_id, op, start, SECTOR_BYTES);
                    let wrong = got.iter().zip(&want[..got.len()]).filter(|(a, b)| a != b).count() as u64;
                    verdict.wrong_bytes += wrong;
                    verdict.bytes_checked += got.len() as u64 - wrong;
                }
            }
        }
        verdict
    }

    /// Compares `read`, asked for at `offset..offset + wanted` (a read stops early at the
    /// end of the file): acknowledged sectors it did not return are lost.
    pub fn check_range(&self, offset: u64, wanted: u64, read: &[u8]) -> Verdict {
        let mut verdict = self.check(offset, read);
        let returned_end = (offset + read.len() as u64).div_ceil(SECTOR_BYTES) as usize;
        let wanted_end = ((offset + wanted).div_ceil(SECTOR_BYTES) as usize).min(self.sectors.len());
        let missing = self.sectors[returned_end.min(wanted_end)..wanted_end]
            .iter()
            .filter(|s| matches!(s, Sector::Acknowledged { .. }))
            .count() as u64;
        verdict.lost_bytes += missing * SECTOR_BYTES;
        verdict
    }

    /// Compares the whole file (`read` from offset 0), its span included.
    pub fn check_whole(&self, read: &[u8]) -> Verdict {
        self.check_range(0, self.sectors.len() as u64 * SECTOR_BYTES, read)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_tells_acknowledged_from_unknown_bytes() {
        let mut model = FileModel::new(3, 8 * SECTOR_BYTES);
        model.acknowledged(1, 0, 4 * SECTOR_BYTES);
        model.failed(SECTOR_BYTES, SECTOR_BYTES);
        model.acknowledged(2, 2 * SECTOR_BYTES, SECTOR_BYTES);
        assert_eq!(model.acknowledged_end(), 4 * SECTOR_BYTES);
        let mut file = content(3, 1, 0, 4 * SECTOR_BYTES);
        file[SECTOR_BYTES as usize..2 * SECTOR_BYTES as usize].fill(0xaa);
        file[2 * SECTOR_BYTES as usize..3 * SECTOR_BYTES as usize].copy_from_slice(&content(
            3,
            2,
            2 * SECTOR_BYTES,
            SECTOR_BYTES,
        ));
        let verdict = model.check_whole(&file);
        assert_eq!(verdict.bytes_checked, 3 * SECTOR_BYTES);
        assert_eq!(verdict.bytes_unknown, SECTOR_BYTES);
        assert!(verdict.is_clean(), "{verdict:?}");
        file[5] ^= 1;
        assert_eq!(model.check_whole(&file).wrong_bytes, 1);
        assert_eq!(
            model.check_whole(&file[..SECTOR_BYTES as usize * 3]).lost_bytes,
            SECTOR_BYTES
        );
        let mut longer = file.clone();
        longer.extend_from_slice(&[0, 0, 7]);
        assert_eq!(
            model.check_whole(&longer).stray_bytes,
            1,
            "never-written bytes read as zeros"
        );
    }
}
