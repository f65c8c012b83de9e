//! Volume capabilities: what a volume can be used as. Shoal volumes are file systems
//! (`mount` access), shared by any number of nodes and writers; raw block access is refused.

use shoal_proto::csi::VolumeCapability;
use shoal_proto::csi::volume_capability::access_mode::Mode;
use shoal_proto::csi::volume_capability::{AccessMode, AccessType};
use tonic::Status;

use crate::errors::invalid;

/// File-system types a capability may name ("" lets the driver choose).
const FS_TYPES: [&str; 3] = ["", "fuse.shoal", "shoal"];

/// Mount flags (a PersistentVolume's `mountOptions`) the mount honours, passed to the
/// agent as `shoal mount -o` options. Anything else is refused: a flag silently dropped
/// would look applied.
const MOUNT_FLAGS: [&str; 8] = [
    "ro",
    "noatime",
    "relatime",
    "atime",
    "strictatime",
    "attr_timeout",
    "entry_timeout",
    "retry_timeout",
];

/// Checks one capability; `Err` says what is unsupported.
pub fn check(capability: &VolumeCapability) -> Result<(), Status> {
    let mode = capability
        .access_mode
        .as_ref()
        .map(AccessMode::mode)
        .ok_or_else(|| invalid("volume capability: the access mode is missing"))?;
    if mode == Mode::Unknown {
        return Err(invalid("volume capability: the access mode is UNKNOWN; name one"));
    }
    match &capability.access_type {
        None => Err(invalid(
            "volume capability: the access type (mount or block) is missing",
        )),
        Some(AccessType::Block(_)) => Err(invalid(
            "volume capability: block access is not supported; Shoal volumes are file systems (use volumeMode: Filesystem)",
        )),
        Some(AccessType::Mount(mount)) => {
            if !FS_TYPES.contains(&mount.fs_type.as_str()) {
                return Err(invalid(format!(
                    "volume capability: fs_type {:?} is not supported; leave it empty or use \"fuse.shoal\"",
                    mount.fs_type
                )));
            }
            if !mount.volume_mount_group.is_empty() {
                return Err(invalid(
                    "volume capability: volume_mount_group is not supported (the driver does not advertise VOLUME_MOUNT_GROUP)",
                ));
            }
            mount_options(&mount.mount_flags).map(|_| ())
        }
    }
}

/// Checks every capability of a request; at least one is required.
pub fn check_all(capabilities: &[VolumeCapability]) -> Result<(), Status> {
    if capabilities.is_empty() {
        return Err(invalid("volume capabilities are missing"));
    }
    capabilities.iter().try_for_each(check)
}

/// The mount flags of a capability as agent mount options, refusing unknown ones.
pub fn mount_options(flags: &[String]) -> Result<Vec<String>, Status> {
    let mut options = Vec::new();
    for flag in flags
        .iter()
        .flat_map(|f| f.split(','))
        .map(str::trim)
        .filter(|f| !f.is_empty())
    {
        let key = flag.split_once('=').map_or(flag, |(key, _)| key);
        if !MOUNT_FLAGS.contains(&key) {
            return Err(invalid(format!(
                "mount flag {flag:?} is not supported; Shoal mounts take {}",
                MOUNT_FLAGS.join(", ")
            )));
        }
        options.push(flag.to_string());
    }
    Ok(options)
}

/// The capability's mount flags as agent options (after [`check`]).
pub fn mount_flags(capability: &VolumeCapability) -> Result<Vec<String>, Status> {
    match &capability.access_type {
        Some(AccessType::Mount(mount)) => mount_options(&mount.mount_flags),
        _ => Ok(Vec::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_proto::csi::volume_capability::{BlockVolume, MountVolume};

    fn capability(access: AccessType, mode: Mode) -> VolumeCapability {
        VolumeCapability {
            access_type: Some(access),
            access_mode: Some(AccessMode { mode: mode as i32 }),
        }
    }

    fn mount(flags: &[&str]) -> AccessType {
        AccessType::Mount(MountVolume {
            fs_type: String::new(),
            mount_flags: flags.iter().map(|f| f.to_string()).collect(),
            volume_mount_group: String::new(),
        })
    }

    #[test]
    fn every_access_mode_on_mount_and_nothing_on_block() {
        for mode in [
            Mode::SingleNodeWriter,
            Mode::SingleNodeReaderOnly,
            Mode::MultiNodeReaderOnly,
            Mode::MultiNodeSingleWriter,
            Mode::MultiNodeMultiWriter,
            Mode::SingleNodeSingleWriter,
            Mode::SingleNodeMultiWriter,
        ] {
            check(&capability(mount(&[]), mode)).unwrap();
        }
        let block = check(&capability(
            AccessType::Block(BlockVolume {}),
            Mode::MultiNodeMultiWriter,
        ));
        assert_eq!(block.unwrap_err().code(), tonic::Code::InvalidArgument);
        assert!(check(&capability(mount(&[]), Mode::Unknown)).is_err());
        assert!(check_all(&[]).is_err());
    }

    #[test]
    fn mount_flags_become_options_and_unknown_ones_are_refused() {
        let options = mount_options(&["noatime,attr_timeout=2".into()]).unwrap();
        assert_eq!(options, ["noatime", "attr_timeout=2"]);
        let error = mount_options(&["nfsvers=4".into()]).unwrap_err();
        assert!(error.message().contains("nfsvers"));
    }
}
