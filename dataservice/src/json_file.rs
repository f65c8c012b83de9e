//! Small JSON files a data service keeps on each disk (its identity, its run state): read
//! if present, replaced durably (a temporary file, synced, renamed, the directory synced),
//! so that a crash leaves the old file or the new one, never a torn one.

use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// `disk/name`, if it exists.
pub fn read<T: DeserializeOwned>(disk: &Path, name: &str) -> anyhow::Result<Option<T>> {
    let path = disk.join(name);
    match std::fs::read(&path) {
        Ok(bytes) => Ok(Some(
            serde_json::from_slice(&bytes).map_err(|e| anyhow::anyhow!("{} is damaged: {e}", path.display()))?,
        )),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(anyhow::anyhow!("cannot read {}: {error}", path.display())),
    }
}

/// Replaces `disk/name` with `value`, durably.
pub fn write<T: Serialize>(disk: &Path, name: &str, value: &T) -> anyhow::Result<()> {
    let path = disk.join(name);
    let temporary = disk.join(format!("{name}.tmp"));
    std::fs::write(&temporary, serde_json::to_vec_pretty(value)?)?;
    std::fs::File::open(&temporary)?.sync_all()?;
    std::fs::rename(&temporary, &path)?;
    std::fs::File::open(disk)?.sync_all()?;
    Ok(())
}
