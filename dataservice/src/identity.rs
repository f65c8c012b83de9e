//! A data service's identity, kept on its disks so that it survives restarts and moves with
//! the disks: the registry knows the service by this uuid.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

const IDENTITY_FILE: &str = "shoal-data-service.json";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Identity {
    uuid: String,
}

fn read(disk: &Path) -> anyhow::Result<Option<Identity>> {
    let path = disk.join(IDENTITY_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => Ok(Some(
            serde_json::from_slice(&bytes).map_err(|e| anyhow::anyhow!("{} is damaged: {e}", path.display()))?,
        )),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(anyhow::anyhow!("cannot read {}: {error}", path.display())),
    }
}

fn write(disk: &Path, identity: &Identity) -> anyhow::Result<()> {
    let path = disk.join(IDENTITY_FILE);
    let temporary = disk.join(format!("{IDENTITY_FILE}.tmp"));
    std::fs::write(&temporary, serde_json::to_vec_pretty(identity)?)?;
    std::fs::File::open(&temporary)?.sync_all()?;
    std::fs::rename(&temporary, &path)?;
    std::fs::File::open(disk)?.sync_all()?;
    Ok(())
}

/// The uuid recorded on `disks`, or a new one written to all of them. Disks that belong to
/// different data services are refused.
pub fn load_or_create(disks: &[PathBuf]) -> anyhow::Result<String> {
    let mut found: Option<(PathBuf, Identity)> = None;
    for disk in disks {
        std::fs::create_dir_all(disk)
            .map_err(|e| anyhow::anyhow!("cannot create disk directory {}: {e}", disk.display()))?;
        if let Some(identity) = read(disk)? {
            match &found {
                Some((other, known)) if *known != identity => anyhow::bail!(
                    "{} belongs to data service {} but {} to {}; give each data service its own disks",
                    disk.display(),
                    identity.uuid,
                    other.display(),
                    known.uuid
                ),
                Some(_) => {}
                None => found = Some((disk.clone(), identity)),
            }
        }
    }
    let identity = match found {
        Some((_, identity)) => identity,
        None => Identity {
            uuid: format!("{:032x}", rand::random::<u128>()),
        },
    };
    for disk in disks {
        if read(disk)?.is_none() {
            write(disk, &identity)?;
        }
    }
    Ok(identity.uuid)
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
}
