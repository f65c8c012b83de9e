//! `shoal cp`, `shoal ls`, `shoal cat`: scripting against volumes without a mount.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use bytes::Bytes;
use shoal_client::proto as pb;
use shoal_client::{DataClient, FileLayout, file, path};

use crate::{RegistryAddress, format};

/// Bytes moved per round of a copy; the data client spreads each round over the chains.
const COPY_BLOCK_BYTES: usize = 16 << 20;
/// Copies at least this large show a progress bar.
const PROGRESS_THRESHOLD_BYTES: u64 = 16 << 20;
/// Entries fetched per readdir call.
const LIST_PAGE_ENTRIES: u32 = 1024;

/// A location in a volume: `shoal://VOLUME/PATH`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShoalPath {
    pub volume: String,
    pub path: String,
}

impl ShoalPath {
    pub fn parse(text: &str) -> Option<ShoalPath> {
        let rest = text.strip_prefix("shoal://")?;
        let (volume, path) = rest.split_once('/').unwrap_or((rest, ""));
        Some(ShoalPath {
            volume: volume.to_string(),
            path: format!("/{path}"),
        })
    }
}

impl std::fmt::Display for ShoalPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "shoal://{}{}", self.volume, self.path)
    }
}

fn require_shoal(text: &str) -> anyhow::Result<ShoalPath> {
    ShoalPath::parse(text).with_context(|| format!("{text:?} is not a shoal://VOLUME/PATH location"))
}

struct Session {
    data: DataClient,
}

impl Session {
    fn new(registry: &RegistryAddress) -> anyhow::Result<Session> {
        Ok(Session {
            data: DataClient::new(registry.client()?),
        })
    }

    fn registry(&self) -> &shoal_client::RegistryClient {
        self.data.registry()
    }

    async fn volume_id(&self, name: &str) -> anyhow::Result<u64> {
        let volume = self
            .registry()
            .get_volume(pb::VolumeName { name: name.to_string() })
            .await
            .with_context(|| format!("volume {name:?}"))?;
        Ok(volume.id)
    }
}

fn progress(total: u64, label: &str) -> indicatif::ProgressBar {
    if total < PROGRESS_THRESHOLD_BYTES {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message(label.to_string());
    bar
}

#[derive(clap::Args)]
pub struct CpCommand {
    /// Source: a local file or shoal://VOLUME/PATH.
    source: String,
    /// Destination: a local path or shoal://VOLUME/PATH (an existing directory takes the
    /// source's name).
    destination: String,
    #[command(flatten)]
    registry: RegistryAddress,
}

impl CpCommand {
    pub async fn run(self) -> anyhow::Result<()> {
        let session = Session::new(&self.registry)?;
        match (ShoalPath::parse(&self.source), ShoalPath::parse(&self.destination)) {
            (None, Some(destination)) => upload(&session, Path::new(&self.source), destination).await,
            (Some(source), None) => download(&session, source, Path::new(&self.destination)).await,
            (Some(_), Some(_)) => {
                bail!("copying between two shoal:// locations is not supported; copy through a local file")
            }
            (None, None) => bail!("one of the two paths must be a shoal://VOLUME/PATH location"),
        }
    }
}

fn base_name(path: &str) -> &str {
    path.rsplit('/').find(|p| !p.is_empty()).unwrap_or("")
}

async fn upload(session: &Session, source: &Path, mut destination: ShoalPath) -> anyhow::Result<()> {
    let metadata = std::fs::metadata(source).with_context(|| format!("cannot read {}", source.display()))?;
    if metadata.is_dir() {
        bail!("{} is a directory; shoal cp copies files", source.display());
    }
    let volume_id = session.volume_id(&destination.volume).await?;
    let registry = session.registry();
    if let Ok(existing) = path::resolve(registry, volume_id, &destination.path).await
        && existing.file_type == pb::FileType::Directory as i32
    {
        let name = source
            .file_name()
            .and_then(|n| n.to_str())
            .context("source has no file name")?;
        destination.path = format!("{}/{name}", destination.path.trim_end_matches('/'));
    }
    let (parent, name) = path::resolve_parent(registry, volume_id, &destination.path).await?;
    let attr = registry
        .create(pb::CreateRequest {
            volume_id,
            parent: parent.ino,
            name: Bytes::copy_from_slice(name.as_bytes()),
            file_type: pb::FileType::Regular as i32,
            mode: metadata.permissions().mode() & 0o7777,
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
            exclusive: false,
            ..Default::default()
        })
        .await
        .with_context(|| format!("cannot create {destination}"))?;
    let attr = if attr.size_bytes > 0 {
        file::truncate(&session.data, volume_id, &attr, 0).await?
    } else {
        attr
    };
    let layout = file::layout_of(&session.data, volume_id, &attr).await?;
    let total = metadata.len();
    let bar = progress(total, &format!("{} -> {destination}", source.display()));
    let mut input = std::fs::File::open(source).with_context(|| format!("cannot open {}", source.display()))?;
    let mut offset = 0u64;
    // Bounded by the file's size: every round moves the offset forward or ends.
    loop {
        let mut block = vec![0u8; COPY_BLOCK_BYTES];
        let mut filled = 0;
        while filled < block.len() {
            let read = input
                .read(&mut block[filled..])
                .with_context(|| format!("cannot read {}", source.display()))?;
            if read == 0 {
                break;
            }
            filled += read;
        }
        if filled == 0 {
            break;
        }
        block.truncate(filled);
        session.data.write(&layout, offset, Bytes::from(block), false).await?;
        offset += filled as u64;
        bar.set_position(offset);
    }
    let chunks: Vec<u64> = (0..offset.div_ceil(layout.chunk_size_bytes)).collect();
    session.data.sync(&layout, &chunks).await?;
    registry.extend_file(volume_id, attr.ino, offset).await?;
    bar.finish_and_clear();
    println!(
        "copied {} to {destination} ({})",
        source.display(),
        format::bytes(offset)
    );
    Ok(())
}

async fn download(session: &Session, source: ShoalPath, destination: &Path) -> anyhow::Result<()> {
    let volume_id = session.volume_id(&source.volume).await?;
    let attr = path::resolve(session.registry(), volume_id, &source.path)
        .await
        .with_context(|| format!("{source}"))?;
    if attr.file_type != pb::FileType::Regular as i32 {
        bail!("{source} is not a regular file");
    }
    let target: PathBuf = if destination.is_dir() {
        destination.join(base_name(&source.path))
    } else {
        destination.to_path_buf()
    };
    let mut output = std::fs::File::create(&target).with_context(|| format!("cannot create {}", target.display()))?;
    let _ = output.set_permissions(std::fs::Permissions::from_mode(attr.mode & 0o7777));
    let bar = progress(attr.size_bytes, &format!("{source} -> {}", target.display()));
    let layout = FileLayout::of(volume_id, &attr)?;
    let mut offset = 0;
    while offset < attr.size_bytes {
        let length = (attr.size_bytes - offset).min(COPY_BLOCK_BYTES as u64);
        let bytes = session.data.read(&layout, offset, length).await?;
        output
            .write_all(&bytes)
            .with_context(|| format!("cannot write {}", target.display()))?;
        offset += length;
        bar.set_position(offset);
    }
    output.sync_all()?;
    bar.finish_and_clear();
    println!("copied {source} to {} ({})", target.display(), format::bytes(offset));
    Ok(())
}

#[derive(clap::Args)]
pub struct LsCommand {
    /// shoal://VOLUME/PATH
    location: String,
    #[command(flatten)]
    registry: RegistryAddress,
}

fn type_char(file_type: i32) -> char {
    match pb::FileType::try_from(file_type) {
        Ok(pb::FileType::Directory) => 'd',
        Ok(pb::FileType::Symlink) => 'l',
        Ok(pb::FileType::Fifo) => 'p',
        Ok(pb::FileType::Socket) => 's',
        Ok(pb::FileType::CharDevice) => 'c',
        Ok(pb::FileType::BlockDevice) => 'b',
        _ => '-',
    }
}

fn mode_string(attr: &pb::Attr) -> String {
    let mut text = String::with_capacity(10);
    text.push(type_char(attr.file_type));
    for shift in [6, 3, 0] {
        let bits = (attr.mode >> shift) & 7;
        text.push(if bits & 4 != 0 { 'r' } else { '-' });
        text.push(if bits & 2 != 0 { 'w' } else { '-' });
        text.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    text
}

fn line(attr: &pb::Attr, name: &str) -> String {
    let seconds = attr.mtime_ns.div_euclid(1_000_000_000);
    format!(
        "{} {:>3} {:>5} {:>5} {:>12} {:>12} {name}",
        mode_string(attr),
        attr.nlink,
        attr.uid,
        attr.gid,
        attr.size_bytes,
        seconds
    )
}

impl LsCommand {
    pub async fn run(self) -> anyhow::Result<()> {
        let location = require_shoal(&self.location)?;
        let session = Session::new(&self.registry)?;
        let volume_id = session.volume_id(&location.volume).await?;
        let registry = session.registry();
        let attr = path::resolve(registry, volume_id, &location.path)
            .await
            .with_context(|| format!("{location}"))?;
        if attr.file_type != pb::FileType::Directory as i32 {
            println!("{}", line(&attr, base_name(&location.path)));
            return Ok(());
        }
        let mut cookie = 0;
        let mut stdout = std::io::stdout().lock();
        // Bounded by the directory's size: every page moves the cookie forward or ends.
        loop {
            let reply = registry
                .read_dir(pb::ReadDirRequest {
                    volume_id,
                    ino: attr.ino,
                    after_cookie: cookie,
                    max_entries: LIST_PAGE_ENTRIES,
                    with_attrs: true,
                })
                .await?;
            for entry in &reply.entries {
                cookie = entry.cookie;
                if let Some(attr) = &entry.attr {
                    writeln!(stdout, "{}", line(attr, &String::from_utf8_lossy(&entry.name)))?;
                }
            }
            if reply.end_of_directory || reply.entries.is_empty() {
                return Ok(());
            }
        }
    }
}

#[derive(clap::Args)]
pub struct CatCommand {
    /// shoal://VOLUME/PATH
    location: String,
    #[command(flatten)]
    registry: RegistryAddress,
}

impl CatCommand {
    pub async fn run(self) -> anyhow::Result<()> {
        let location = require_shoal(&self.location)?;
        let session = Session::new(&self.registry)?;
        let volume_id = session.volume_id(&location.volume).await?;
        let attr = path::resolve(session.registry(), volume_id, &location.path)
            .await
            .with_context(|| format!("{location}"))?;
        if attr.file_type != pb::FileType::Regular as i32 {
            bail!("{location} is not a regular file");
        }
        let layout = FileLayout::of(volume_id, &attr)?;
        let mut stdout = std::io::stdout().lock();
        let mut offset = 0;
        while offset < attr.size_bytes {
            let length = (attr.size_bytes - offset).min(COPY_BLOCK_BYTES as u64);
            let bytes = session.data.read(&layout, offset, length).await?;
            stdout.write_all(&bytes)?;
            offset += length;
        }
        stdout.flush()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shoal_paths_parse() {
        let parsed = ShoalPath::parse("shoal://www/a/b.txt").unwrap();
        assert_eq!((parsed.volume.as_str(), parsed.path.as_str()), ("www", "/a/b.txt"));
        assert_eq!(ShoalPath::parse("shoal://www").unwrap().path, "/");
        assert_eq!(ShoalPath::parse("/tmp/x"), None);
    }
}
