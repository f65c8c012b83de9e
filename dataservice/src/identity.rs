//! A data service's identity, kept on its disks so that it survives restarts and moves with
//! the disks: the registry knows the service by this uuid.
//!
//! Each disk also records its place in the service's `--disk` list: chunks are placed on a
//! disk by hashing over that list, so a reordered, added or missing disk would make the
//! service look for chunks on the wrong disk. Such a start is refused.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

const IDENTITY_FILE: &str = "shoal-data-service.json";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Identity {
    uuid: String,
    /// This disk's position in the `--disk` list, and the list's length (absent in files
    /// written before disks were numbered; filled in on the next start).
    #[serde(default)]
    disk_index: Option<usize>,
    #[serde(default)]
    disk_count: Option<usize>,
}

fn read(disk: &Path) -> anyhow::Result<Option<Identity>> {
    crate::json_file::read(disk, IDENTITY_FILE)
}

fn write(disk: &Path, identity: &Identity) -> anyhow::Result<()> {
    crate::json_file::write(disk, IDENTITY_FILE, identity)
}

/// The uuid recorded on `disks`, or a new one written to all of them. Disks that belong to
/// different data services are refused.
pub fn load_or_create(disks: &[PathBuf]) -> anyhow::Result<String> {
    let mut found: Option<(PathBuf, Identity)> = None;
    let mut recorded = Vec::with_capacity(disks.len());
    let mut seen = std::collections::HashSet::new();
    for disk in disks {
        std::fs::create_dir_all(disk)
            .map_err(|e| anyhow::anyhow!("cannot create disk directory {}: {e}", disk.display()))?;
        let canonical = std::fs::canonicalize(disk)?;
        anyhow::ensure!(
            seen.insert(canonical.clone()),
            "{} is given twice as a --disk (as {}); give each disk once",
            canonical.display(),
            disk.display()
        );
    }
    for (index, disk) in disks.iter().enumerate() {
        std::fs::create_dir_all(disk)
            .map_err(|e| anyhow::anyhow!("cannot create disk directory {}: {e}", disk.display()))?;
        let identity = read(disk)?;
        if let Some(identity) = &identity {
            match &found {
                Some((other, known)) if known.uuid != identity.uuid => anyhow::bail!(
                    "{} belongs to data service {} but {} to {}; give each data service its own disks",
                    disk.display(),
                    identity.uuid,
                    other.display(),
                    known.uuid
                ),
                Some(_) => {}
                None => found = Some((disk.clone(), identity.clone())),
            }
            if let (Some(was_index), Some(was_count)) = (identity.disk_index, identity.disk_count)
                && (was_index, was_count) != (index, disks.len())
            {
                anyhow::bail!(
                    "{} was disk {} of {was_count} of data service {}, now it is given as disk {} of {}: chunks \
                     are placed by their disk's position, so give the same --disk list in the same order (to add \
                     capacity, start another data service)",
                    disk.display(),
                    was_index + 1,
                    identity.uuid,
                    index + 1,
                    disks.len()
                );
            }
        }
        recorded.push(identity);
    }
    if let Some((known_disk, known)) = &found
        && let Some(new_disk) = disks.iter().zip(&recorded).find_map(|(d, r)| r.is_none().then_some(d))
    {
        anyhow::bail!(
            "{} is a new disk, but {} already belongs to data service {}: adding a disk to a data service \
             is not supported (chunks are placed by their disk's position); start another data service on it \
             (if this data service never finished its first start, remove {} from its disks and start again)",
            new_disk.display(),
            known_disk.display(),
            known.uuid,
            IDENTITY_FILE
        );
    }
    let uuid = match found {
        Some((_, identity)) => identity.uuid,
        None => format!("{:032x}", rand::random::<u128>()),
    };
    for (index, (disk, identity)) in disks.iter().zip(&recorded).enumerate() {
        let numbered = Identity {
            uuid: uuid.clone(),
            disk_index: Some(index),
            disk_count: Some(disks.len()),
        };
        if identity.as_ref() != Some(&numbered) {
            write(disk, &numbered)?;
        }
    }
    Ok(uuid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_is_stable_and_shared_by_disks() {
        let dir = tempfile::tempdir().unwrap();
        let disks = vec![dir.path().join("a"), dir.path().join("b")];
        let first = load_or_create(&disks).unwrap();
        assert_eq!(load_or_create(&disks).unwrap(), first);
        let other = tempfile::tempdir().unwrap();
        let foreign = load_or_create(&[other.path().to_path_buf()]).unwrap();
        assert_ne!(foreign, first);
        let mixed = vec![disks[0].clone(), other.path().to_path_buf()];
        assert!(
            load_or_create(&mixed)
                .unwrap_err()
                .to_string()
                .contains("give each data service its own disks")
        );
    }

    #[test]
    fn reordered_added_or_missing_disks_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c) = (dir.path().join("a"), dir.path().join("b"), dir.path().join("c"));
        let uuid = load_or_create(&[a.clone(), b.clone()]).unwrap();
        let refusal = |disks: &[PathBuf]| load_or_create(disks).unwrap_err().to_string();
        assert!(refusal(&[b.clone(), a.clone()]).contains("same order"));
        assert!(refusal(std::slice::from_ref(&a)).contains("was disk 1 of 2"));
        assert!(refusal(&[a.clone(), b.clone(), c.clone()]).contains("given as disk 1 of 3"));
        assert!(
            !c.join(IDENTITY_FILE).exists(),
            "a refused start must not claim the new disk"
        );
        assert_eq!(load_or_create(&[a, b]).unwrap(), uuid);
    }
}
