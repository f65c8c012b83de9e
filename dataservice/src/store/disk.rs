//! One disk of the store: a directory with `meta/` (the engine) and `chunks/xx/` (chunk files
//! spread over 256 subdirectories so no directory grows huge).

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use std::sync::atomic::{AtomicU64, Ordering};

use shoal_engine::{KvEngine, RocksOptions, ScanControl, WriteBatch};

use super::meta::{
    self, ChunkId, ChunkMeta, CrcGroup, SPACE_BY_CHAIN, SPACE_CHUNKS, SPACE_CRCS, SPACE_DIRTY, SPACE_INSTALLS,
    SPACE_UNSYNCED, SPACE_UNSYNCED_BLOCKS, SPACES, Unsynced,
};
use super::{StoreError, StoreResult};

/// Capacity of one disk, as reported to the registry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskUsage {
    pub path: PathBuf,
    pub capacity_bytes: u64,
    pub free_bytes: u64,
    pub healthy: bool,
}

pub struct Disk {
    root: PathBuf,
    chunk_dir: PathBuf,
    engine: Box<dyn KvEngine>,
    /// Makes the names of received copies unique, so two copies of one chunk never share
    /// a file.
    next_incoming: AtomicU64,
    /// The disk's file system takes O_DIRECT writes (ext4 and xfs do; tmpfs may not).
    direct_io: bool,
}

/// The file-name suffix of a copy being received.
pub const INCOMING_SUFFIX: &str = "incoming";

/// Chunk files are spread over 256 subdirectories (`chunks/00` to `chunks/ff`).
const SUBDIR_MASK: u32 = 0xff;

/// Whether files under `root` can be opened with O_DIRECT.
fn probe_direct_io(root: &Path) -> bool {
    let probe = root.join("direct-io-probe");
    let opened = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(nix::libc::O_DIRECT)
        .open(&probe);
    let _ = fs::remove_file(&probe);
    opened.is_ok()
}

fn corrupt(error: String) -> StoreError {
    StoreError::Metadata(error)
}

impl Disk {
    pub fn open(root: &Path) -> anyhow::Result<Disk> {
        let chunk_dir = root.join("chunks");
        fs::create_dir_all(&chunk_dir).map_err(|e| anyhow::anyhow!("cannot create {}: {e}", chunk_dir.display()))?;
        let tuning = RocksOptions {
            block_cache_size_bytes: 32 << 20,
            ..RocksOptions::default()
        };
        let engine = shoal_engine::open(&root.join("meta"), SPACES, &tuning)?;
        // Every chunk subdirectory exists, durably, before any chunk is created: a synced
        // write to a new chunk then only needs its own directory entry made durable.
        let mut created_any = false;
        for subdir in 0..=SUBDIR_MASK {
            let path = chunk_dir.join(format!("{subdir:02x}"));
            if !path.is_dir() {
                fs::create_dir(&path).map_err(|e| anyhow::anyhow!("cannot create {}: {e}", path.display()))?;
                created_any = true;
            }
        }
        if created_any {
            File::open(&chunk_dir)?.sync_all()?;
        }
        let direct_io = probe_direct_io(root);
        if !direct_io {
            tracing::info!(disk = %root.display(), "the file system takes no O_DIRECT writes; chunks are written through the page cache");
        }
        Ok(Disk {
            root: root.to_path_buf(),
            chunk_dir,
            engine,
            next_incoming: AtomicU64::new(0),
            direct_io,
        })
    }

    /// A chunk's file opened for writes that bypass the page cache, if this disk allows
    /// them. The file must exist (a write opens it the ordinary way first).
    pub fn open_chunk_direct(&self, chunk: &ChunkId) -> io::Result<Option<File>> {
        if !self.direct_io {
            return Ok(None);
        }
        OpenOptions::new()
            .write(true)
            .custom_flags(nix::libc::O_DIRECT)
            .open(self.chunk_path(chunk))
            .map(Some)
    }

    /// Files of copies being received when the service stopped (none is in use yet: call
    /// before serving). Bounded by the chunk directories' contents.
    pub fn incoming_files(&self) -> io::Result<Vec<PathBuf>> {
        let mut found = Vec::new();
        for entry in fs::read_dir(&self.chunk_dir)? {
            let dir = entry?.path();
            if dir.is_dir() {
                for file in fs::read_dir(&dir)? {
                    let path = file?.path();
                    if path.extension().is_some_and(|e| e == INCOMING_SUFFIX) {
                        found.push(path);
                    }
                }
            }
        }
        Ok(found)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn engine(&self) -> &dyn KvEngine {
        self.engine.as_ref()
    }

    fn subdir(&self, chunk: &ChunkId) -> PathBuf {
        let hash = super::crc(&chunk.key());
        self.chunk_dir.join(format!("{:02x}", (hash >> 8) & SUBDIR_MASK))
    }

    pub fn chunk_path(&self, chunk: &ChunkId) -> PathBuf {
        self.subdir(chunk)
            .join(format!("{}-{}-{}", chunk.volume_id, chunk.ino, chunk.index))
    }

    /// A path no other copy of `chunk` uses, for a copy about to be received.
    pub fn incoming_path(&self, chunk: &ChunkId) -> PathBuf {
        let sequence = self.next_incoming.fetch_add(1, Ordering::Relaxed);
        self.chunk_path(chunk)
            .with_extension(format!("{sequence}.{INCOMING_SUFFIX}"))
    }

    /// Opens a chunk file; `create` also makes it (and its directory) if missing. A new
    /// file's directory entry is made durable before returning, so a synced write to a
    /// new chunk survives a crash with its file.
    pub fn open_chunk(&self, chunk: &ChunkId, create: bool) -> io::Result<File> {
        let path = self.chunk_path(chunk);
        let existing = OpenOptions::new().read(true).write(create).open(&path);
        match existing {
            Err(error) if create && error.kind() == io::ErrorKind::NotFound => {}
            other => return other,
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        File::open(self.subdir(chunk))?.sync_all()?;
        Ok(file)
    }

    /// Opens the file of a chunk that has no metadata yet, emptied: whatever a file of that
    /// name holds (a removal interrupted between its metadata and its file) is not the
    /// chunk's.
    pub fn create_chunk(&self, chunk: &ChunkId) -> io::Result<File> {
        let file = self.open_chunk(chunk, true)?;
        if file.metadata()?.len() > 0 {
            file.set_len(0)?;
        }
        Ok(file)
    }

    pub fn create_incoming(&self, path: &Path) -> io::Result<File> {
        fs::create_dir_all(path.parent().expect("chunk paths have a directory"))?;
        File::create(path)
    }

    /// Renames a received copy over the chunk file, durably.
    pub fn install(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)?;
        File::open(to.parent().expect("chunk paths have a directory"))?.sync_all()
    }

    pub fn meta(&self, chunk: &ChunkId) -> StoreResult<Option<ChunkMeta>> {
        match self.engine.get(SPACE_CHUNKS, &chunk.key())? {
            Some(bytes) => Ok(Some(meta::decode(&bytes, "chunk metadata").map_err(corrupt)?)),
            None => Ok(None),
        }
    }

    pub fn crc_group(&self, chunk: &ChunkId, group: u64) -> StoreResult<Option<CrcGroup>> {
        match self.engine.get(SPACE_CRCS, &meta::crc_key(chunk, group))? {
            Some(bytes) => Ok(Some(meta::decode(&bytes, "checksum group").map_err(corrupt)?)),
            None => Ok(None),
        }
    }

    pub fn put_meta(&self, batch: &mut WriteBatch, chunk: &ChunkId, chunk_meta: &ChunkMeta) {
        batch.put(SPACE_CHUNKS, chunk.key().to_vec(), meta::encode(chunk_meta));
        batch.put(
            SPACE_BY_CHAIN,
            meta::by_chain_key(chunk_meta.chain_id, chunk),
            Vec::new(),
        );
    }

    pub fn put_crc_group(&self, batch: &mut WriteBatch, chunk: &ChunkId, group: u64, crcs: &CrcGroup) {
        batch.put(SPACE_CRCS, meta::crc_key(chunk, group), meta::encode(crcs));
    }

    /// The chunk's whole [`Unsynced`] record: its head with every block's earlier checksums
    /// (for recovery; a write reads only what it changes).
    pub fn unsynced(&self, chunk: &ChunkId) -> StoreResult<Option<Unsynced>> {
        let Some(mut record) = self.unsynced_head(chunk)? else {
            return Ok(None);
        };
        let prefix = chunk.key();
        let (start, end) = (
            meta::unsynced_block_key(chunk, 0),
            meta::unsynced_block_key(chunk, u64::MAX),
        );
        let mut failed = None;
        self.engine
            .scan(SPACE_UNSYNCED_BLOCKS, &start, Some(&end), &mut |key, value| {
                let block = key[prefix.len()..].try_into().map(u64::from_be_bytes);
                match (block, meta::decode::<Vec<Option<u32>>>(value, "unsynced block")) {
                    (Ok(block), Ok(versions)) => {
                        record.earlier.entry(block).or_default().extend(versions);
                        ScanControl::Continue
                    }
                    (_, Err(error)) => {
                        failed = Some(error);
                        ScanControl::Stop
                    }
                    (Err(_), _) => {
                        failed = Some(format!("corrupt unsynced block key of {chunk}"));
                        ScanControl::Stop
                    }
                }
            })?;
        match failed {
            Some(error) => Err(corrupt(error)),
            None => Ok(Some(record)),
        }
    }

    /// The head of the chunk's [`Unsynced`] record (its durable length), if it has one.
    pub fn unsynced_head(&self, chunk: &ChunkId) -> StoreResult<Option<Unsynced>> {
        match self.engine.get(SPACE_UNSYNCED, &chunk.key())? {
            Some(bytes) => Ok(Some(meta::decode(&bytes, "unsynced record").map_err(corrupt)?)),
            None => Ok(None),
        }
    }

    /// One block's earlier checksums in the chunk's [`Unsynced`] record.
    pub fn unsynced_block(&self, chunk: &ChunkId, block: u64) -> StoreResult<Vec<Option<u32>>> {
        match self
            .engine
            .get(SPACE_UNSYNCED_BLOCKS, &meta::unsynced_block_key(chunk, block))?
        {
            Some(bytes) => Ok(meta::decode(&bytes, "unsynced block").map_err(corrupt)?),
            None => Ok(Vec::new()),
        }
    }

    /// Starts the chunk's [`Unsynced`] record (no block has earlier checksums yet).
    pub fn put_unsynced_head(&self, batch: &mut WriteBatch, chunk: &ChunkId, durable_length_bytes: u64) {
        let head = Unsynced::starting_at(durable_length_bytes);
        batch.put(SPACE_UNSYNCED, chunk.key().to_vec(), meta::encode(&head));
    }

    pub fn put_unsynced_block(&self, batch: &mut WriteBatch, chunk: &ChunkId, block: u64, versions: &Vec<Option<u32>>) {
        batch.put(
            SPACE_UNSYNCED_BLOCKS,
            meta::unsynced_block_key(chunk, block),
            meta::encode(versions),
        );
    }

    pub fn delete_unsynced(&self, batch: &mut WriteBatch, chunk: &ChunkId) {
        batch.delete(SPACE_UNSYNCED, chunk.key().to_vec());
        // Blocks of a chunk are far below u64::MAX, so the range's exclusive end is no block.
        batch.delete_range(
            SPACE_UNSYNCED_BLOCKS,
            meta::unsynced_block_key(chunk, 0),
            meta::unsynced_block_key(chunk, u64::MAX),
        );
    }

    /// Chunks with an [`Unsynced`] record, at most `max`.
    pub fn unsynced_chunks(&self, max: usize) -> StoreResult<Vec<ChunkId>> {
        self.scan_chunks(SPACE_UNSYNCED, &[], None, 0, max)
    }

    /// Records that the copy in `incoming` is about to be renamed over `chunk`'s file.
    pub fn put_install(&self, batch: &mut WriteBatch, chunk: &ChunkId, incoming: &Path) {
        let name = incoming
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        batch.put(SPACE_INSTALLS, chunk.key().to_vec(), name.into_bytes());
    }

    pub fn delete_install(&self, batch: &mut WriteBatch, chunk: &ChunkId) {
        batch.delete(SPACE_INSTALLS, chunk.key().to_vec());
    }

    /// Copies whose rename into place may not have happened: (chunk, received file).
    pub fn installs(&self, max: usize) -> StoreResult<Vec<(ChunkId, PathBuf)>> {
        let mut found = Vec::new();
        self.engine.scan(SPACE_INSTALLS, &[], None, &mut |key, value| {
            if let Some(chunk) = ChunkId::from_key(key) {
                let name = String::from_utf8_lossy(value).into_owned();
                found.push((chunk, self.subdir(&chunk).join(name)));
            }
            if found.len() >= max {
                ScanControl::Stop
            } else {
                ScanControl::Continue
            }
        })?;
        Ok(found)
    }

    /// Chunk ids of up to `max` keys in `[start, end)` of `space`, each key holding the id
    /// after `skip` bytes of prefix.
    fn scan_chunks(
        &self,
        space: &str,
        start: &[u8],
        end: Option<&[u8]>,
        skip: usize,
        max: usize,
    ) -> StoreResult<Vec<ChunkId>> {
        let mut chunks = Vec::new();
        self.engine.scan(space, start, end, &mut |key, _| {
            if let Some(chunk) = key.get(skip..).and_then(ChunkId::from_key) {
                chunks.push(chunk);
            }
            if chunks.len() >= max {
                ScanControl::Stop
            } else {
                ScanControl::Continue
            }
        })?;
        Ok(chunks)
    }

    pub fn delete_chunk_records(&self, batch: &mut WriteBatch, chunk: &ChunkId, chain_id: u64) {
        batch.delete(SPACE_CHUNKS, chunk.key().to_vec());
        batch.delete_range(SPACE_CRCS, meta::crc_key(chunk, 0), meta::crc_key(chunk, u64::MAX));
        batch.delete(SPACE_CRCS, meta::crc_key(chunk, u64::MAX));
        batch.delete(SPACE_BY_CHAIN, meta::by_chain_key(chain_id, chunk));
        batch.delete(SPACE_DIRTY, chunk.key().to_vec());
        batch.delete(SPACE_UNSYNCED, chunk.key().to_vec());
    }

    pub fn list_chain(&self, chain_id: u64, after: Option<ChunkId>, max: usize) -> StoreResult<Vec<ChunkId>> {
        let prefix = chain_id.to_be_bytes();
        let start = match after {
            Some(after) => {
                let mut key = meta::by_chain_key(chain_id, &after);
                key.push(0);
                key
            }
            None => prefix.to_vec(),
        };
        let end = shoal_engine::prefix_end(&prefix);
        self.scan_chunks(SPACE_BY_CHAIN, &start, end.as_deref(), prefix.len(), max)
    }

    pub fn chunks_with_prefix(&self, prefix: &[u8], max: usize) -> StoreResult<Vec<ChunkId>> {
        let end = shoal_engine::prefix_end(prefix);
        self.scan_chunks(SPACE_CHUNKS, prefix, end.as_deref(), 0, max)
    }

    pub fn usage(&self) -> DiskUsage {
        match nix::sys::statvfs::statvfs(&self.root) {
            Ok(stat) => {
                let fragment = stat.fragment_size();
                DiskUsage {
                    path: self.root.clone(),
                    capacity_bytes: stat.blocks() * fragment,
                    free_bytes: stat.blocks_available() * fragment,
                    healthy: true,
                }
            }
            Err(_) => DiskUsage {
                path: self.root.clone(),
                capacity_bytes: 0,
                free_bytes: 0,
                healthy: false,
            },
        }
    }
}
