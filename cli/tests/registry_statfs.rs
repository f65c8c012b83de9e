//! statfs of a volume, from a real registry node: with quotas, the size is the quota and
//! what is free is the quota minus what is used (bytes and inodes alike); usage follows
//! creates, size changes and unlinks; a change beyond the quota is refused (EDQUOT) and
//! changes nothing.

use std::path::PathBuf;

use shoal_client::proto::{self as pb};
use shoal_client::{ClientError, Errno, RegistryClient};
use shoal_testkit::RegistryCluster;

const QUOTA_BYTES: u64 = 10 << 20;
const QUOTA_INODES: u64 = 50;
const FILE_SIZES_BYTES: [u64; 5] = [0, 1_000, 4_096, 1 << 20, (3 << 20) + 7];
/// What statfs reports free on a volume without an inode quota (the registry's choice).
const UNLIMITED_FREE_INODES: u64 = 1 << 32;

fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_shoal"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statfs_reports_quota_and_usage() {
    let cluster = RegistryCluster::start(&binary(), 1, &[])
        .await
        .expect("registry starts");
    let result = scenario(&cluster.client()).await;
    cluster.finish(result);
}

/// statfs must equal the quota-and-usage arithmetic, and agree with the volume record.
async fn check_statfs(
    client: &RegistryClient,
    volume_id: u64,
    used_bytes: u64,
    used_inodes: u64,
) -> anyhow::Result<pb::StatFsReply> {
    let stat = client.stat_fs(pb::StatFsRequest { volume_id }).await?;
    let volume = client.list_volumes(pb::Empty {}).await?.volumes;
    let volume = volume
        .iter()
        .find(|v| v.id == volume_id)
        .ok_or_else(|| anyhow::anyhow!("volume {volume_id} not listed"))?;
    println!(
        "statfs: {} of {} bytes used ({} free), {} of {} inodes used ({} free)",
        stat.used_bytes, stat.total_bytes, stat.free_bytes, stat.used_inodes, stat.total_inodes, stat.free_inodes
    );
    anyhow::ensure!(
        (stat.used_bytes, stat.used_inodes) == (used_bytes, used_inodes),
        "statfs counts {} bytes and {} inodes used, expected {used_bytes} and {used_inodes}",
        stat.used_bytes,
        stat.used_inodes
    );
    anyhow::ensure!(
        (volume.used_bytes, volume.used_inodes) == (used_bytes, used_inodes),
        "the volume record counts {} bytes and {} inodes used, expected {used_bytes} and {used_inodes}",
        volume.used_bytes,
        volume.used_inodes
    );
    let (quota_bytes, quota_inodes) = (volume.quota_bytes, volume.quota_inodes);
    anyhow::ensure!(
        stat.total_bytes == quota_bytes && stat.free_bytes == quota_bytes - used_bytes,
        "bytes: total {} free {}, expected {quota_bytes} and {}",
        stat.total_bytes,
        stat.free_bytes,
        quota_bytes - used_bytes
    );
    anyhow::ensure!(
        stat.total_inodes == quota_inodes && stat.free_inodes == quota_inodes - used_inodes,
        "inodes: total {} free {}, expected {quota_inodes} and {}",
        stat.total_inodes,
        stat.free_inodes,
        quota_inodes - used_inodes
    );
    anyhow::ensure!(stat.block_size_bytes > 0 && stat.max_name_bytes == 255, "{stat:?}");
    Ok(stat)
}

async fn set_size(client: &RegistryClient, volume_id: u64, ino: u64, size_bytes: u64) -> Result<pb::Attr, ClientError> {
    client
        .set_attr(pb::SetAttrRequest {
            volume_id,
            ino,
            size_bytes: Some(size_bytes),
            ..Default::default()
        })
        .await
}

async fn scenario(client: &RegistryClient) -> anyhow::Result<()> {
    let volume = client
        .create_volume(pb::CreateVolumeRequest {
            name: "quota".into(),
            replicas: 1,
            quota_bytes: QUOTA_BYTES,
            quota_inodes: QUOTA_INODES,
            ..Default::default()
        })
        .await?;
    let id = volume.id;
    // A new volume holds its root directory only.
    check_statfs(client, id, 0, 1).await?;

    let dir = client
        .mkdir(pb::MkdirRequest {
            volume_id: id,
            parent: 1,
            name: "data".as_bytes().to_vec().into(),
            mode: 0o755,
            ..Default::default()
        })
        .await?;
    let mut files = Vec::new();
    for (index, size_bytes) in FILE_SIZES_BYTES.iter().enumerate() {
        let file = client
            .create(pb::CreateRequest {
                volume_id: id,
                parent: dir.ino,
                name: format!("file-{index}").into_bytes().into(),
                file_type: pb::FileType::Regular as i32,
                mode: 0o644,
                exclusive: true,
                ..Default::default()
            })
            .await?;
        set_size(client, id, file.ino, *size_bytes).await?;
        files.push(file.ino);
    }
    let used_bytes: u64 = FILE_SIZES_BYTES.iter().sum();
    let used_inodes = 2 + FILE_SIZES_BYTES.len() as u64;
    check_statfs(client, id, used_bytes, used_inodes).await?;

    // Growing a file past the byte quota is refused and changes nothing.
    let too_big = QUOTA_BYTES - used_bytes + 1 + FILE_SIZES_BYTES[0];
    match set_size(client, id, files[0], too_big).await {
        Err(ClientError::Fs(error)) if error.errno == Errno::EDQUOT => {}
        other => anyhow::bail!("growing past the byte quota: expected EDQUOT, got {other:?}"),
    }
    check_statfs(client, id, used_bytes, used_inodes).await?;

    // Shrinking a file and unlinking another give their bytes and inode back.
    set_size(client, id, files[4], 7).await?;
    client
        .unlink(pb::UnlinkRequest {
            volume_id: id,
            parent: dir.ino,
            name: "file-3".as_bytes().to_vec().into(),
            ..Default::default()
        })
        .await?;
    let used_bytes = used_bytes - FILE_SIZES_BYTES[4] + 7 - FILE_SIZES_BYTES[3];
    check_statfs(client, id, used_bytes, used_inodes - 1).await?;

    // A new quota is the new size at once.
    client
        .set_volume_quota(pb::SetVolumeQuotaRequest {
            name: "quota".into(),
            quota_bytes: 2 * QUOTA_BYTES,
            quota_inodes: 2 * QUOTA_INODES,
        })
        .await?;
    let stat = check_statfs(client, id, used_bytes, used_inodes - 1).await?;
    anyhow::ensure!(stat.total_bytes == 2 * QUOTA_BYTES && stat.total_inodes == 2 * QUOTA_INODES);

    // Without quotas: no data services means no free bytes, and inodes are plentiful.
    client
        .set_volume_quota(pb::SetVolumeQuotaRequest {
            name: "quota".into(),
            quota_bytes: 0,
            quota_inodes: 0,
        })
        .await?;
    let stat = client.stat_fs(pb::StatFsRequest { volume_id: id }).await?;
    anyhow::ensure!(
        stat.total_bytes == used_bytes && stat.free_bytes == 0,
        "unlimited bytes without data services: {stat:?}"
    );
    anyhow::ensure!(
        stat.free_inodes == UNLIMITED_FREE_INODES && stat.total_inodes == stat.used_inodes + UNLIMITED_FREE_INODES,
        "unlimited inodes: {stat:?}"
    );
    Ok(())
}
