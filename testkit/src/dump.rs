//! A full, comparable description of a volume's namespace, read through the registry API.

use std::collections::BTreeMap;

use shoal_client::{RegistryClient, proto as pb};

/// Most entries a dump walks: tests build small trees, and a bound keeps a bug from
/// turning into an endless walk.
const MAX_DUMP_ENTRIES: usize = 1_000_000;

fn describe(attr: &pb::Attr) -> String {
    format!(
        "ino={} type={} mode={:o} uid={} gid={} size={} nlink={} mtime={} ctime={} rdev={} layout={:?}",
        attr.ino,
        attr.file_type,
        attr.mode,
        attr.uid,
        attr.gid,
        attr.size_bytes,
        attr.nlink,
        attr.mtime_ns,
        attr.ctime_ns,
        attr.rdev,
        attr.layout
    )
}

/// Path → description (attributes, symlink target, xattrs) of every entry of a volume,
/// the root included as "/".
pub async fn dump_volume(client: &RegistryClient, volume_id: u64) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![("/".to_string(), 1u64)];
    while let Some((path, ino)) = stack.pop() {
        let attr = client.get_attr(volume_id, ino).await?;
        out.insert(path.clone(), describe_with_extras(client, volume_id, &attr).await?);
        let mut cookie = 0;
        loop {
            let reply = client
                .read_dir(pb::ReadDirRequest {
                    volume_id,
                    ino,
                    after_cookie: cookie,
                    max_entries: 256,
                    with_attrs: true,
                })
                .await?;
            for entry in reply.entries {
                cookie = entry.cookie;
                let name = String::from_utf8_lossy(&entry.name);
                let child = if path == "/" {
                    format!("/{name}")
                } else {
                    format!("{path}/{name}")
                };
                let attr = entry
                    .attr
                    .ok_or_else(|| anyhow::anyhow!("readdir-plus entry without attributes"))?;
                if attr.file_type == pb::FileType::Directory as i32 {
                    stack.push((child, entry.ino));
                } else {
                    out.insert(child, describe_with_extras(client, volume_id, &attr).await?);
                }
                anyhow::ensure!(
                    out.len() < MAX_DUMP_ENTRIES,
                    "volume {volume_id} has too many entries to dump"
                );
            }
            if reply.end_of_directory {
                break;
            }
        }
    }
    Ok(out)
}

async fn describe_with_extras(client: &RegistryClient, volume_id: u64, attr: &pb::Attr) -> anyhow::Result<String> {
    let mut text = describe(attr);
    if attr.file_type == pb::FileType::Symlink as i32 {
        let target = client
            .readlink(pb::ReadlinkRequest {
                volume_id,
                ino: attr.ino,
            })
            .await?
            .target;
        text.push_str(&format!(" target={}", String::from_utf8_lossy(&target)));
    }
    let names = client
        .list_xattr(pb::ListXattrRequest {
            volume_id,
            ino: attr.ino,
        })
        .await?
        .names;
    for name in names {
        let value = client
            .get_xattr(pb::GetXattrRequest {
                volume_id,
                ino: attr.ino,
                name: name.clone(),
            })
            .await?
            .value;
        text.push_str(&format!(" xattr[{}]={:?}", String::from_utf8_lossy(&name), value));
    }
    Ok(text)
}
