//! The registry's snapshot file: the state machine's key spaces, streamed, checksummed.
//!
//! Layout (integers little-endian):
//! `"SHOALSNP"`, format u32, meta length u32, meta (postcard), then records
//! `[0u8][space u8][key length u32][value length u32][key][value]`, then
//! `[1u8][record count u64][crc32 of every byte before it, u32]`.
//!
//! Why our own format and not an engine checkpoint: the snapshot crosses the network and
//! outlives engine versions; it must not depend on RocksDB's file layout. Files are written
//! and read as streams, so neither building nor installing holds the state in memory.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::{SnapshotMeta, decode, encode};

const MAGIC: &[u8; 8] = b"SHOALSNP";
const FORMAT_V1: u32 = 1;
const TAG_RECORD: u8 = 0;
const TAG_END: u8 = 1;
/// Bounds on what a snapshot may contain; anything larger is treated as corruption.
const MAX_META_BYTES: u32 = 1 << 20;
const MAX_KEY_BYTES: u32 = 64 << 10;
const MAX_VALUE_BYTES: u32 = 16 << 20;

/// A snapshot as openraft passes it around: an open file positioned at its start.
///
/// A snapshot still at a temporary path (`*.tmp`: being received, or built and not kept)
/// is deleted when dropped; installing or publishing it renames it away first.
#[derive(Debug)]
pub struct SnapshotData {
    pub file: File,
    pub path: PathBuf,
}

impl Drop for SnapshotData {
    fn drop(&mut self) {
        if self.path.extension().is_some_and(|ext| ext == "tmp") {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl SnapshotData {
    pub fn open(path: &Path) -> io::Result<SnapshotData> {
        Ok(SnapshotData {
            file: File::open(path)?,
            path: path.to_path_buf(),
        })
    }
}

fn corrupt(path: &Path, what: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("snapshot {}: {what}", path.display()),
    )
}

/// Receives each record of a snapshot: (key space index, key, value).
pub type RecordVisitor<'a> = dyn FnMut(u8, &[u8], &[u8]) -> io::Result<()> + 'a;

pub struct SnapshotWriter {
    out: BufWriter<File>,
    hasher: crc32fast::Hasher,
    records: u64,
    path: PathBuf,
}

impl SnapshotWriter {
    pub fn create(path: &Path, meta: &SnapshotMeta) -> io::Result<SnapshotWriter> {
        // Readable too: the finished file is handed on open, to be read and sent.
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        let mut writer = SnapshotWriter {
            out: BufWriter::with_capacity(1 << 20, file),
            hasher: crc32fast::Hasher::new(),
            records: 0,
            path: path.to_path_buf(),
        };
        let meta_bytes = encode(meta);
        assert!(meta_bytes.len() as u32 <= MAX_META_BYTES, "snapshot meta too large");
        writer.write(MAGIC)?;
        writer.write(&FORMAT_V1.to_le_bytes())?;
        writer.write(&(meta_bytes.len() as u32).to_le_bytes())?;
        writer.write(&meta_bytes)?;
        Ok(writer)
    }

    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.hasher.update(bytes);
        self.out.write_all(bytes)
    }

    pub fn record(&mut self, space_index: u8, key: &[u8], value: &[u8]) -> io::Result<()> {
        if key.len() > MAX_KEY_BYTES as usize || value.len() > MAX_VALUE_BYTES as usize {
            return Err(io::Error::other(format!(
                "snapshot {}: record too large (key {} bytes, value {} bytes)",
                self.path.display(),
                key.len(),
                value.len()
            )));
        }
        self.write(&[TAG_RECORD, space_index])?;
        self.write(&(key.len() as u32).to_le_bytes())?;
        self.write(&(value.len() as u32).to_le_bytes())?;
        self.write(key)?;
        self.write(value)?;
        self.records += 1;
        Ok(())
    }

    /// Writes the trailer and fsyncs. Returns the file, positioned at its start.
    pub fn finish(mut self) -> io::Result<File> {
        self.write(&[TAG_END])?;
        let records = self.records;
        self.write(&records.to_le_bytes())?;
        let crc = self.hasher.clone().finalize();
        self.out.write_all(&crc.to_le_bytes())?;
        let mut file = self.out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        file.seek(SeekFrom::Start(0))?;
        Ok(file)
    }
}

struct HashingReader<'a> {
    input: BufReader<&'a mut File>,
    hasher: crc32fast::Hasher,
}

impl HashingReader<'_> {
    fn exact(&mut self, buffer: &mut [u8]) -> io::Result<()> {
        self.input.read_exact(buffer)?;
        self.hasher.update(buffer);
        Ok(())
    }

    fn u8(&mut self) -> io::Result<u8> {
        let mut buffer = [0u8; 1];
        self.exact(&mut buffer)?;
        Ok(buffer[0])
    }

    fn u32(&mut self) -> io::Result<u32> {
        let mut buffer = [0u8; 4];
        self.exact(&mut buffer)?;
        Ok(u32::from_le_bytes(buffer))
    }

    fn u64(&mut self) -> io::Result<u64> {
        let mut buffer = [0u8; 8];
        self.exact(&mut buffer)?;
        Ok(u64::from_le_bytes(buffer))
    }
}

fn read_header(reader: &mut HashingReader<'_>, path: &Path) -> io::Result<SnapshotMeta> {
    let mut magic = [0u8; 8];
    reader.exact(&mut magic).map_err(|e| corrupt(path, e))?;
    if &magic != MAGIC {
        return Err(corrupt(path, "not a Shoal snapshot (bad magic)"));
    }
    let format = reader.u32()?;
    if format != FORMAT_V1 {
        return Err(corrupt(path, format!("unknown format {format}")));
    }
    let meta_len = reader.u32()?;
    if meta_len > MAX_META_BYTES {
        return Err(corrupt(path, format!("meta of {meta_len} bytes")));
    }
    let mut meta = vec![0u8; meta_len as usize];
    reader.exact(&mut meta)?;
    decode(&meta, "snapshot meta")
}

/// Reads the meta of a snapshot file and rewinds it.
pub fn read_meta(file: &mut File, path: &Path) -> io::Result<SnapshotMeta> {
    file.seek(SeekFrom::Start(0))?;
    let meta = {
        let mut reader = HashingReader {
            input: BufReader::new(&mut *file),
            hasher: crc32fast::Hasher::new(),
        };
        read_header(&mut reader, path)?
    };
    file.seek(SeekFrom::Start(0))?;
    Ok(meta)
}

/// Streams every record of a snapshot file to `visit`, then checks the record count and
/// checksum. The caller must discard whatever it built if this returns an error.
pub fn read_records(file: &mut File, path: &Path, visit: &mut RecordVisitor<'_>) -> io::Result<SnapshotMeta> {
    file.seek(SeekFrom::Start(0))?;
    let mut reader = HashingReader {
        input: BufReader::with_capacity(1 << 20, &mut *file),
        hasher: crc32fast::Hasher::new(),
    };
    let meta = read_header(&mut reader, path)?;
    let mut records = 0u64;
    let mut key = Vec::new();
    let mut value = Vec::new();
    loop {
        match reader.u8().map_err(|e| corrupt(path, e))? {
            TAG_RECORD => {
                let space = reader.u8()?;
                let key_len = reader.u32()?;
                let value_len = reader.u32()?;
                if key_len > MAX_KEY_BYTES || value_len > MAX_VALUE_BYTES {
                    return Err(corrupt(
                        path,
                        format!("record {records} has key {key_len} and value {value_len} bytes"),
                    ));
                }
                key.resize(key_len as usize, 0);
                value.resize(value_len as usize, 0);
                reader.exact(&mut key).map_err(|e| corrupt(path, e))?;
                reader.exact(&mut value).map_err(|e| corrupt(path, e))?;
                visit(space, &key, &value)?;
                records += 1;
            }
            TAG_END => break,
            tag => return Err(corrupt(path, format!("unknown tag {tag} after {records} records"))),
        }
    }
    let expected_records = reader.u64()?;
    let computed = reader.hasher.clone().finalize();
    let mut stored = [0u8; 4];
    reader.input.read_exact(&mut stored).map_err(|e| corrupt(path, e))?;
    if u32::from_le_bytes(stored) != computed {
        return Err(corrupt(path, "checksum mismatch"));
    }
    if expected_records != records {
        return Err(corrupt(
            path,
            format!("{records} records, trailer says {expected_records}"),
        ));
    }
    drop(reader);
    file.seek(SeekFrom::Start(0))?;
    Ok(meta)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(path: &Path) -> File {
        let meta = SnapshotMeta::default();
        let mut writer = SnapshotWriter::create(path, &meta).unwrap();
        writer.record(1, b"k1", b"v1").unwrap();
        writer.record(2, b"k2", &vec![7u8; 100_000]).unwrap();
        writer.finish().unwrap()
    }

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let mut file = sample(&path);
        let mut seen = Vec::new();
        read_records(&mut file, &path, &mut |space, key, value| {
            seen.push((space, key.to_vec(), value.len()));
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, vec![(1, b"k1".to_vec(), 2), (2, b"k2".to_vec(), 100_000)]);
        assert_eq!(read_meta(&mut file, &path).unwrap(), SnapshotMeta::default());
    }

    #[test]
    fn any_flipped_byte_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        drop(sample(&path));
        let original = std::fs::read(&path).unwrap();
        for position in [0, 9, 20, original.len() / 2, original.len() - 10, original.len() - 1] {
            let mut damaged = original.clone();
            damaged[position] ^= 0x40;
            std::fs::write(&path, &damaged).unwrap();
            let mut file = File::open(&path).unwrap();
            let result = read_records(&mut file, &path, &mut |_, _, _| Ok(()));
            assert!(result.is_err(), "flip at byte {position} went unnoticed");
        }
        std::fs::write(&path, &original[..original.len() - 3]).unwrap();
        let mut file = File::open(&path).unwrap();
        assert!(
            read_records(&mut file, &path, &mut |_, _, _| Ok(())).is_err(),
            "truncation went unnoticed"
        );
    }
}
