//! Paths inside a volume ("/a/b/c"), resolved one component at a time through the registry.

use shoal_proto::errno::{Errno, FsError};
use shoal_proto::registry as pb;

use crate::{ClientError, RegistryClient};

/// Deepest path resolved (a bound on the walk).
pub const MAX_PATH_COMPONENTS: usize = 4096;
/// The root directory of every volume.
pub const ROOT_INO: u64 = 1;

/// The non-empty components of `path`; "." components are dropped, ".." is kept.
pub fn components(path: &str) -> Result<Vec<&str>, ClientError> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty() && *p != ".").collect();
    if parts.len() > MAX_PATH_COMPONENTS {
        return Err(ClientError::Fs(FsError::new(
            Errno::ENAMETOOLONG,
            format!("path has more than {MAX_PATH_COMPONENTS} components"),
        )));
    }
    Ok(parts)
}

/// Attributes of the entry at `path` in volume `volume_id`.
pub async fn resolve(registry: &RegistryClient, volume_id: u64, path: &str) -> Result<pb::Attr, ClientError> {
    let mut attr = registry.get_attr(volume_id, ROOT_INO).await?;
    for part in components(path)? {
        attr = registry.lookup(volume_id, attr.ino, part.as_bytes()).await?;
    }
    Ok(attr)
}

/// The directory holding `path` and the last component's name.
pub async fn resolve_parent<'p>(
    registry: &RegistryClient,
    volume_id: u64,
    path: &'p str,
) -> Result<(pb::Attr, &'p str), ClientError> {
    let parts = components(path)?;
    let Some((name, parents)) = parts.split_last() else {
        return Err(ClientError::Fs(FsError::new(
            Errno::EINVAL,
            "the volume root has no parent",
        )));
    };
    let mut attr = registry.get_attr(volume_id, ROOT_INO).await?;
    for part in parents {
        attr = registry.lookup(volume_id, attr.ino, part.as_bytes()).await?;
    }
    Ok((attr, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_skip_empty_and_dot() {
        assert_eq!(components("/a//b/./c/").unwrap(), vec!["a", "b", "c"]);
        assert!(components("/").unwrap().is_empty());
    }
}
