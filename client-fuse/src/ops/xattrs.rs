//! Extended attributes.

use bytes::Bytes;
use fuser::{Errno, ReplyEmpty, ReplyXattr};
use shoal_client::proto as pb;

use super::fail;
use crate::core::FsCore;

fn reply_bytes(reply: ReplyXattr, value: &[u8], size: u32) {
    if size == 0 {
        reply.size(value.len() as u32);
    } else if value.len() > size as usize {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(value);
    }
}

/// The kernel asks for this attribute before every write to a file (to drop file
/// capabilities); answering from a short-lived cache keeps writes off the registry.
const CAPABILITY_XATTR: &[u8] = b"security.capability";

/// POSIX ACLs are not supported: storing them as plain attributes would let programs (cp -a,
/// tar --acls) believe the permissions were set when the mode never changed. Refusing them
/// makes those programs fall back to chmod.
fn is_posix_acl(name: &[u8]) -> bool {
    name == b"system.posix_acl_access" || name == b"system.posix_acl_default"
}

impl FsCore {
    pub async fn getxattr(&self, ino: u64, name: Bytes, size: u32, reply: ReplyXattr) {
        if is_posix_acl(&name) {
            return reply.error(Errno::EOPNOTSUPP);
        }
        let capability = name.as_ref() == CAPABILITY_XATTR;
        if capability && let Some(cached) = self.capabilities.get(ino, self.config.attr_ttl) {
            match cached {
                Some(value) => reply_bytes(reply, &value, size),
                None => reply.error(Errno::NO_XATTR),
            }
            return;
        }
        let request = pb::GetXattrRequest {
            volume_id: self.volume_id,
            ino,
            name,
        };
        match self.registry().get_xattr(request).await {
            Ok(value) => {
                if capability {
                    self.capabilities.put(ino, Some(value.value.clone()));
                }
                reply_bytes(reply, &value.value, size)
            }
            Err(error) => {
                if capability && error.errno() == shoal_client::Errno::ENODATA {
                    self.capabilities.put(ino, None);
                }
                reply.error(fail(&error))
            }
        }
    }

    pub async fn listxattr(&self, ino: u64, size: u32, reply: ReplyXattr) {
        let request = pb::ListXattrRequest {
            volume_id: self.volume_id,
            ino,
        };
        match self.registry().list_xattr(request).await {
            Ok(list) => {
                let mut joined = Vec::new();
                for name in &list.names {
                    joined.extend_from_slice(name);
                    joined.push(0);
                }
                reply_bytes(reply, &joined, size)
            }
            Err(error) => reply.error(fail(&error)),
        }
    }

    pub async fn setxattr(&self, ino: u64, name: Bytes, value: Bytes, flags: i32, reply: ReplyEmpty) {
        if is_posix_acl(&name) {
            return reply.error(Errno::EOPNOTSUPP);
        }
        self.capabilities.forget(ino);
        let request = pb::SetXattrRequest {
            volume_id: self.volume_id,
            ino,
            name,
            value,
            flags: flags as u32,
        };
        match self.registry().set_xattr(request).await {
            Ok(_) => reply.ok(),
            Err(error) => reply.error(fail(&error)),
        }
    }

    pub async fn removexattr(&self, ino: u64, name: Bytes, reply: ReplyEmpty) {
        if is_posix_acl(&name) {
            return reply.error(Errno::EOPNOTSUPP);
        }
        self.capabilities.forget(ino);
        let request = pb::RemoveXattrRequest {
            volume_id: self.volume_id,
            ino,
            name,
        };
        match self.registry().remove_xattr(request).await {
            Ok(_) => reply.ok(),
            Err(error) => reply.error(fail(&error)),
        }
    }
}

/// Recently seen `security.capability` values (None: the file has none), bounded.
#[derive(Default)]
pub struct CapabilityCache {
    entries: std::sync::Mutex<std::collections::HashMap<u64, (Option<Bytes>, std::time::Instant)>>,
}

/// Most files whose capability answer is remembered.
const MAX_CAPABILITY_ENTRIES: usize = 16_384;

impl CapabilityCache {
    fn get(&self, ino: u64, ttl: std::time::Duration) -> Option<Option<Bytes>> {
        let entries = self.entries.lock().expect("capability cache poisoned");
        let (value, at) = entries.get(&ino)?;
        (at.elapsed() < ttl).then(|| value.clone())
    }

    fn put(&self, ino: u64, value: Option<Bytes>) {
        let mut entries = self.entries.lock().expect("capability cache poisoned");
        if entries.len() >= MAX_CAPABILITY_ENTRIES {
            entries.clear();
        }
        entries.insert(ino, (value, std::time::Instant::now()));
    }

    pub fn forget(&self, ino: u64) {
        self.entries.lock().expect("capability cache poisoned").remove(&ino);
    }
}
