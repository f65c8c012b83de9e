//! One registry node: everything survives SIGKILL and restart, and bad input is refused
//! with the right errno without changing anything.

use std::path::PathBuf;

use bytes::Bytes;
use std::time::Duration;

use shoal_client::proto::{self as pb};
use shoal_client::{ClientError, Errno, RegistryClient};
use shoal_testkit::{RegistryCluster, dump_volume};

fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_shoal"))
}

async fn single_node(extra: &[&str]) -> RegistryCluster {
    RegistryCluster::start(&binary(), 1, extra)
        .await
        .expect("registry starts")
}

fn name(text: &str) -> Bytes {
    Bytes::copy_from_slice(text.as_bytes())
}

async fn create_file(client: &RegistryClient, volume_id: u64, parent: u64, file: &str) -> anyhow::Result<pb::Attr> {
    Ok(client
        .create(pb::CreateRequest {
            volume_id,
            parent,
            name: name(file),
            file_type: pb::FileType::Regular as i32,
            mode: 0o640,
            uid: 1000,
            gid: 1000,
            exclusive: true,
            ..Default::default()
        })
        .await?)
}

async fn mkdir(client: &RegistryClient, volume_id: u64, parent: u64, dir: &str) -> anyhow::Result<pb::Attr> {
    Ok(client
        .mkdir(pb::MkdirRequest {
            volume_id,
            parent,
            name: name(dir),
            mode: 0o755,
            uid: 1000,
            gid: 1000,
        })
        .await?)
}

/// A tree with every kind of record: directories, files with sizes, a symlink, a hard
/// link, xattrs, a rename and an unlink.
async fn build_tree(client: &RegistryClient, volume_id: u64) -> anyhow::Result<()> {
    let docs = mkdir(client, volume_id, 1, "docs").await?;
    let deep = mkdir(client, volume_id, docs.ino, "deep").await?;
    for i in 0..40 {
        let file = create_file(client, volume_id, deep.ino, &format!("file-{i}")).await?;
        client
            .set_attr(pb::SetAttrRequest {
                volume_id,
                ino: file.ino,
                size_bytes: Some(i * 1000),
                ..Default::default()
            })
            .await?;
    }
    let note = create_file(client, volume_id, docs.ino, "note.txt").await?;
    client
        .set_xattr(pb::SetXattrRequest {
            volume_id,
            ino: note.ino,
            name: name("user.tag"),
            value: name("blue"),
            flags: 0,
        })
        .await?;
    client
        .link(pb::LinkRequest {
            volume_id,
            ino: note.ino,
            new_parent: 1,
            new_name: name("note-link"),
        })
        .await?;
    client
        .symlink(pb::SymlinkRequest {
            volume_id,
            parent: 1,
            name: name("shortcut"),
            target: name("docs/deep/file-3"),
            uid: 1000,
            gid: 1000,
        })
        .await?;
    client
        .rename(pb::RenameRequest {
            volume_id,
            parent: deep.ino,
            name: name("file-7"),
            new_parent: docs.ino,
            new_name: name("moved"),
            flags: 0,
        })
        .await?;
    client
        .unlink(pb::UnlinkRequest {
            volume_id,
            parent: deep.ino,
            name: name("file-8"),
            ..Default::default()
        })
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_from_disk_keeps_everything() {
    // Frequent snapshots, so restarts recover from a snapshot plus log entries after it.
    let mut cluster = single_node(&["--snapshot-every-logs=30", "--logs-kept-after-snapshot=5"]).await;
    let result: anyhow::Result<()> = async {
        let client = cluster.client();
        let volume = client
            .create_volume(pb::CreateVolumeRequest {
                name: "keep".into(),
                replicas: 1,
                quota_bytes: 1 << 30,
                quota_inodes: 10_000,
                ..Default::default()
            })
            .await?;
        build_tree(&client, volume.id).await?;
        let mut before = dump_volume(&client, volume.id).await?;
        let mut volume_before = client.get_volume(pb::VolumeName { name: "keep".into() }).await?;
        anyhow::ensure!(before.len() == 45, "tree has {} entries", before.len());

        for how in ["SIGKILL", "SIGTERM"] {
            if how == "SIGKILL" {
                cluster.kill_node(1);
            } else {
                cluster.stop_all(Duration::from_secs(10));
            }
            cluster.start_node(1)?;
            cluster.wait_for_leader(Duration::from_secs(30)).await?;
            let client = cluster.client();
            let after = dump_volume(&client, volume.id).await?;
            ensure_same(&before, &after, &format!("after {how} and restart"))?;
            let volume_after = client.get_volume(pb::VolumeName { name: "keep".into() }).await?;
            anyhow::ensure!(
                volume_after == volume_before,
                "volume record differs after {how}: {volume_after:?}"
            );
            // The restarted node still accepts changes and allocates fresh inode numbers.
            let fresh = create_file(&client, volume.id, 1, &format!("after-{how}")).await?;
            anyhow::ensure!(
                !before.values().any(|d| d.starts_with(&format!("ino={} ", fresh.ino))),
                "inode {} was reused",
                fresh.ino
            );
            client
                .unlink(pb::UnlinkRequest {
                    volume_id: volume.id,
                    parent: 1,
                    name: name(&format!("after-{how}")),
                    ..Default::default()
                })
                .await?;
            before = dump_volume(&client, volume.id).await?;
            volume_before = client.get_volume(pb::VolumeName { name: "keep".into() }).await?;
        }
        Ok(())
    }
    .await;
    if let Err(error) = result {
        panic!("{error:#}\n{}", cluster.logs());
    }
    cluster.stop_all(Duration::from_secs(5));
}

fn errno_of<T: std::fmt::Debug>(result: Result<T, ClientError>) -> Errno {
    match result {
        Err(ClientError::Fs(error)) => error.errno,
        other => panic!("expected a file-system error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_and_changes_nothing() {
    let mut cluster = single_node(&[]).await;
    let result: anyhow::Result<()> = async {
        let client = cluster.client();
        let volume = client
            .create_volume(pb::CreateVolumeRequest {
                name: "strict".into(),
                replicas: 1,
                quota_bytes: 1 << 20,
                quota_inodes: 64,
                ..Default::default()
            })
            .await?;
        let v = volume.id;
        build_tree(&client, v).await?;
        let docs = client.lookup(v, 1, b"docs").await?;
        let deep = client.lookup(v, docs.ino, b"deep").await?;
        let file = client.lookup(v, deep.ino, b"file-1").await?;
        let before = dump_volume(&client, v).await?;
        let usage_before = client.get_volume(pb::VolumeName { name: "strict".into() }).await?;

        let long = "x".repeat(256);
        let bad_names: [(&[u8], Errno); 6] = [
            (b"a/b", Errno::EINVAL),
            (b"a\0b", Errno::EINVAL),
            (b".", Errno::EINVAL),
            (b"..", Errno::EINVAL),
            (b"", Errno::EINVAL),
            (long.as_bytes(), Errno::ENAMETOOLONG),
        ];
        for (bad, errno) in bad_names {
            let bad: Bytes = bad.to_vec().into();
            let create = client
                .create(pb::CreateRequest {
                    volume_id: v,
                    parent: 1,
                    name: bad.clone(),
                    file_type: 1,
                    mode: 0o644,
                    exclusive: true,
                    ..Default::default()
                })
                .await;
            assert_eq!(errno_of(create), errno, "create {bad:?}");
            let made = client
                .mkdir(pb::MkdirRequest {
                    volume_id: v,
                    parent: 1,
                    name: bad.clone(),
                    mode: 0o755,
                    ..Default::default()
                })
                .await;
            assert_eq!(errno_of(made), errno, "mkdir {bad:?}");
            let linked = client
                .link(pb::LinkRequest {
                    volume_id: v,
                    ino: file.ino,
                    new_parent: 1,
                    new_name: bad.clone(),
                })
                .await;
            assert_eq!(errno_of(linked), errno, "link {bad:?}");
            let symlinked = client
                .symlink(pb::SymlinkRequest {
                    volume_id: v,
                    parent: 1,
                    name: bad.clone(),
                    target: name("x"),
                    ..Default::default()
                })
                .await;
            assert_eq!(errno_of(symlinked), errno, "symlink {bad:?}");
            let renamed = client
                .rename(pb::RenameRequest {
                    volume_id: v,
                    parent: docs.ino,
                    name: name("note.txt"),
                    new_parent: 1,
                    new_name: bad.clone(),
                    flags: 0,
                })
                .await;
            assert_eq!(errno_of(renamed), errno, "rename to {bad:?}");
        }
        // Lookup of an over-long name is ENAMETOOLONG; "." and ".." resolve.
        assert_eq!(
            errno_of(client.lookup(v, 1, long.as_bytes()).await),
            Errno::ENAMETOOLONG
        );
        assert_eq!(client.lookup(v, deep.ino, b"..").await?.ino, docs.ino);

        // Directory cycles, in both rename forms.
        let cycle = client
            .rename(pb::RenameRequest {
                volume_id: v,
                parent: 1,
                name: name("docs"),
                new_parent: deep.ino,
                new_name: name("loop"),
                flags: 0,
            })
            .await;
        assert_eq!(errno_of(cycle), Errno::EINVAL, "directory into its own subtree");
        let cycle = client
            .rename(pb::RenameRequest {
                volume_id: v,
                parent: 1,
                name: name("docs"),
                new_parent: docs.ino,
                new_name: name("self"),
                flags: 0,
            })
            .await;
        assert_eq!(errno_of(cycle), Errno::EINVAL, "directory into itself");
        let exchange_cycle = client
            .rename(pb::RenameRequest {
                volume_id: v,
                parent: 1,
                name: name("docs"),
                new_parent: deep.ino,
                new_name: name("file-1"),
                flags: 2,
            })
            .await;
        assert_eq!(errno_of(exchange_cycle), Errno::EINVAL, "exchange into own subtree");
        let both_flags = client
            .rename(pb::RenameRequest {
                volume_id: v,
                parent: 1,
                name: name("shortcut"),
                new_parent: 1,
                new_name: name("note-link"),
                flags: 3,
            })
            .await;
        assert_eq!(errno_of(both_flags), Errno::EINVAL);
        let noreplace = client
            .rename(pb::RenameRequest {
                volume_id: v,
                parent: 1,
                name: name("shortcut"),
                new_parent: 1,
                new_name: name("note-link"),
                flags: 1,
            })
            .await;
        assert_eq!(errno_of(noreplace), Errno::EEXIST);
        let over_nonempty = client
            .rename(pb::RenameRequest {
                volume_id: v,
                parent: docs.ino,
                name: name("deep"),
                new_parent: 1,
                new_name: name("docs"),
                flags: 0,
            })
            .await;
        assert_eq!(errno_of(over_nonempty), Errno::ENOTEMPTY);
        let dir_over_file = client
            .rename(pb::RenameRequest {
                volume_id: v,
                parent: 1,
                name: name("docs"),
                new_parent: 1,
                new_name: name("note-link"),
                flags: 0,
            })
            .await;
        assert_eq!(errno_of(dir_over_file), Errno::ENOTDIR);
        let file_over_dir = client
            .rename(pb::RenameRequest {
                volume_id: v,
                parent: 1,
                name: name("note-link"),
                new_parent: 1,
                new_name: name("docs"),
                flags: 0,
            })
            .await;
        assert_eq!(errno_of(file_over_dir), Errno::EISDIR);

        // Unknown volumes and inodes.
        assert_eq!(errno_of(client.get_attr(v + 100, 1).await), Errno::ENOENT);
        assert_eq!(errno_of(client.get_attr(v, 999_999).await), Errno::ENOENT);
        assert_eq!(
            errno_of(create_file(&client, v + 100, 1, "x").await.map_err(into_client)),
            Errno::ENOENT
        );
        assert_eq!(
            errno_of(create_file(&client, v, 999_999, "x").await.map_err(into_client)),
            Errno::ENOENT
        );
        assert_eq!(
            errno_of(create_file(&client, v, file.ino, "x").await.map_err(into_client)),
            Errno::ENOTDIR
        );
        assert_eq!(
            errno_of(client.get_volume(pb::VolumeName { name: "nope".into() }).await),
            Errno::ENOENT
        );
        assert_eq!(
            errno_of(client.delete_volume(pb::VolumeName { name: "../etc".into() }).await),
            Errno::EINVAL
        );

        // Removal errors.
        assert_eq!(
            errno_of(
                client
                    .rmdir(pb::RmdirRequest {
                        volume_id: v,
                        parent: 1,
                        name: name("docs")
                    })
                    .await
            ),
            Errno::ENOTEMPTY
        );
        assert_eq!(
            errno_of(
                client
                    .rmdir(pb::RmdirRequest {
                        volume_id: v,
                        parent: 1,
                        name: name("note-link")
                    })
                    .await
            ),
            Errno::ENOTDIR
        );
        assert_eq!(
            errno_of(
                client
                    .unlink(pb::UnlinkRequest {
                        volume_id: v,
                        parent: 1,
                        name: name("docs"),
                        ..Default::default()
                    })
                    .await
            ),
            Errno::EISDIR
        );
        assert_eq!(
            errno_of(
                client
                    .unlink(pb::UnlinkRequest {
                        volume_id: v,
                        parent: 1,
                        name: name("ghost"),
                        ..Default::default()
                    })
                    .await
            ),
            Errno::ENOENT
        );
        assert_eq!(
            errno_of(
                client
                    .link(pb::LinkRequest {
                        volume_id: v,
                        ino: docs.ino,
                        new_parent: 1,
                        new_name: name("dirlink")
                    })
                    .await
            ),
            Errno::EPERM
        );
        assert_eq!(
            errno_of(create_file(&client, v, 1, "note-link").await.map_err(into_client)),
            Errno::EEXIST
        );

        // Absurd sizes, wrong types for sizes, quotas.
        let absurd = client
            .set_attr(pb::SetAttrRequest {
                volume_id: v,
                ino: file.ino,
                size_bytes: Some(1 << 60),
                ..Default::default()
            })
            .await;
        assert_eq!(errno_of(absurd), Errno::EFBIG);
        let dir_size = client
            .set_attr(pb::SetAttrRequest {
                volume_id: v,
                ino: docs.ino,
                size_bytes: Some(0),
                ..Default::default()
            })
            .await;
        assert_eq!(errno_of(dir_size), Errno::EISDIR);
        let over_quota = client
            .set_attr(pb::SetAttrRequest {
                volume_id: v,
                ino: file.ino,
                size_bytes: Some(2 << 20),
                ..Default::default()
            })
            .await;
        assert_eq!(errno_of(over_quota), Errno::EDQUOT, "byte quota");
        // Xattrs and symlinks.
        let note = client.lookup(v, docs.ino, b"note.txt").await?;
        let xattr = |name_: &str, value: Vec<u8>, flags: u32| pb::SetXattrRequest {
            volume_id: v,
            ino: note.ino,
            name: name(name_),
            value: value.into(),
            flags,
        };
        assert_eq!(
            errno_of(client.set_xattr(xattr("user.tag", b"x".to_vec(), 1)).await),
            Errno::EEXIST,
            "XATTR_CREATE on existing"
        );
        assert_eq!(
            errno_of(client.set_xattr(xattr("user.new", b"x".to_vec(), 2)).await),
            Errno::ENODATA,
            "XATTR_REPLACE on missing"
        );
        assert_eq!(
            errno_of(client.set_xattr(xattr("user.big", vec![0; 70_000], 0)).await),
            Errno::E2BIG
        );
        assert_eq!(
            errno_of(client.set_xattr(xattr("user.x", b"x".to_vec(), 7)).await),
            Errno::EINVAL
        );
        assert_eq!(
            errno_of(client.set_xattr(xattr(&"n".repeat(300), b"x".to_vec(), 0)).await),
            Errno::ERANGE
        );
        assert_eq!(
            errno_of(
                client
                    .get_xattr(pb::GetXattrRequest {
                        volume_id: v,
                        ino: note.ino,
                        name: name("user.none")
                    })
                    .await
            ),
            Errno::ENODATA
        );
        let long_target = client
            .symlink(pb::SymlinkRequest {
                volume_id: v,
                parent: 1,
                name: name("far"),
                target: vec![b'a'; 5000].into(),
                ..Default::default()
            })
            .await;
        assert_eq!(errno_of(long_target), Errno::ENAMETOOLONG);
        assert_eq!(
            errno_of(
                client
                    .readlink(pb::ReadlinkRequest {
                        volume_id: v,
                        ino: docs.ino
                    })
                    .await
            ),
            Errno::EINVAL
        );

        // Malformed requests: an unknown file type, an invalid volume spec.
        let weird_type = client
            .create(pb::CreateRequest {
                volume_id: v,
                parent: 1,
                name: name("weird"),
                file_type: 99,
                mode: 0o644,
                exclusive: true,
                ..Default::default()
            })
            .await;
        assert_eq!(errno_of(weird_type), Errno::EINVAL);
        for bad_volume in [
            pb::CreateVolumeRequest {
                name: "bad name".into(),
                ..Default::default()
            },
            pb::CreateVolumeRequest {
                name: "r9".into(),
                replicas: 9,
                ..Default::default()
            },
            pb::CreateVolumeRequest {
                name: "odd-chunk".into(),
                chunk_size_bytes: 100_000,
                ..Default::default()
            },
            pb::CreateVolumeRequest {
                name: "wide".into(),
                stripe_width: 1000,
                ..Default::default()
            },
        ] {
            assert_eq!(
                errno_of(client.create_volume(bad_volume.clone()).await),
                Errno::EINVAL,
                "{bad_volume:?}"
            );
        }
        assert_eq!(
            errno_of(
                client
                    .create_volume(pb::CreateVolumeRequest {
                        name: "strict".into(),
                        ..Default::default()
                    })
                    .await
            ),
            Errno::EEXIST
        );

        let after = dump_volume(&client, v).await?;
        let usage_after = client.get_volume(pb::VolumeName { name: "strict".into() }).await?;
        ensure_same(&before, &after, "after bad input")?;
        anyhow::ensure!(
            usage_after == usage_before,
            "bad input changed usage: {usage_before:?} -> {usage_after:?}"
        );
        let volumes = client.list_volumes(pb::Empty {}).await?.volumes;
        anyhow::ensure!(
            volumes.len() == 1,
            "refused volume creations left {} volumes",
            volumes.len()
        );

        // Inode quota: 64 inodes allowed; fill up to it, then one more is refused and
        // changes nothing.
        let used = usage_after.used_inodes;
        for i in used..64 {
            create_file(&client, v, 1, &format!("fill-{i}")).await?;
        }
        let full = dump_volume(&client, v).await?;
        assert_eq!(
            errno_of(create_file(&client, v, 1, "one-too-many").await.map_err(into_client)),
            Errno::EDQUOT,
            "inode quota"
        );
        assert_eq!(
            errno_of(
                client
                    .mkdir(pb::MkdirRequest {
                        volume_id: v,
                        parent: 1,
                        name: name("one-dir-too-many"),
                        mode: 0o755,
                        ..Default::default()
                    })
                    .await
            ),
            Errno::EDQUOT
        );
        ensure_same(
            &full,
            &dump_volume(&client, v).await?,
            "after refused creations over the inode quota",
        )?;
        Ok(())
    }
    .await;
    if let Err(error) = result {
        panic!("{error:#}\n{}", cluster.logs());
    }
    cluster.stop_all(Duration::from_secs(5));
}

fn ensure_same(
    before: &std::collections::BTreeMap<String, String>,
    after: &std::collections::BTreeMap<String, String>,
    when: &str,
) -> anyhow::Result<()> {
    let mut differences = Vec::new();
    for (path, description) in before {
        match after.get(path) {
            None => differences.push(format!("{path} disappeared")),
            Some(other) if other != description => differences.push(format!("{path}: {description} -> {other}")),
            _ => {}
        }
    }
    for path in after.keys().filter(|p| !before.contains_key(*p)) {
        differences.push(format!("{path} appeared"));
    }
    anyhow::ensure!(
        differences.is_empty(),
        "namespace changed {when}:\n{}",
        differences.join("\n")
    );
    Ok(())
}

fn into_client(error: anyhow::Error) -> ClientError {
    match error.downcast::<ClientError>() {
        Ok(error) => error,
        Err(other) => panic!("unexpected error {other:#}"),
    }
}
