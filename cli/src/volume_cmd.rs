//! `shoal volume create|list|info|delete|quota`.

use shoal_proto::registry as pb;

use crate::{RegistryAddress, format};

#[derive(clap::Args)]
pub struct VolumeCommand {
    #[command(subcommand)]
    action: VolumeAction,
}

#[derive(clap::Subcommand)]
enum VolumeAction {
    /// Create a volume.
    Create {
        /// Letters, digits, '.', '_' or '-'; up to 128 characters.
        name: String,
        /// Copies of every chunk (1 to 5).
        #[arg(long, default_value_t = 3)]
        replicas: u32,
        /// Most bytes the volume may hold, e.g. 100G (default: unlimited).
        #[arg(long, value_parser = format::parse_size)]
        quota: Option<u64>,
        /// Most files and directories the volume may hold (default: unlimited).
        #[arg(long)]
        quota_inodes: Option<u64>,
        /// Chains one file is striped over.
        #[arg(long, default_value_t = 4)]
        stripe_width: u32,
        /// Chunk size, a power of two from 64K to 64M.
        #[arg(long, value_parser = format::parse_size, default_value = "4M")]
        chunk_size: u64,
        #[command(flatten)]
        registry: RegistryAddress,
    },
    /// List volumes.
    List {
        #[command(flatten)]
        registry: RegistryAddress,
        #[arg(long)]
        json: bool,
    },
    /// Show one volume.
    Info {
        name: String,
        #[command(flatten)]
        registry: RegistryAddress,
        #[arg(long)]
        json: bool,
    },
    /// Delete a volume and everything in it.
    Delete {
        name: String,
        #[command(flatten)]
        registry: RegistryAddress,
    },
    /// Change a volume's quotas; a quota not given keeps its current value (0: unlimited).
    Quota {
        name: String,
        /// Most bytes the volume may hold, e.g. 200G (0: unlimited).
        #[arg(long, value_parser = format::parse_size)]
        bytes: Option<u64>,
        /// Most files and directories the volume may hold (0: unlimited).
        #[arg(long)]
        inodes: Option<u64>,
        #[command(flatten)]
        registry: RegistryAddress,
    },
}

pub fn volume_json(volume: &pb::Volume) -> serde_json::Value {
    serde_json::json!({
        "id": volume.id,
        "name": volume.name,
        "replicas": volume.replicas,
        "chunk_size_bytes": volume.chunk_size_bytes,
        "stripe_width": volume.stripe_width,
        "quota_bytes": volume.quota_bytes,
        "quota_inodes": volume.quota_inodes,
        "used_bytes": volume.used_bytes,
        "used_inodes": volume.used_inodes,
        "created_ns": volume.created_ns,
    })
}

pub fn volumes_table(volumes: &[pb::Volume]) -> comfy_table::Table {
    let mut table = format::table(&[
        "volume",
        "id",
        "replicas",
        "stripe",
        "chunk",
        "used",
        "quota",
        "inodes",
        "inode quota",
    ]);
    for volume in volumes {
        table.add_row(vec![
            volume.name.clone(),
            volume.id.to_string(),
            volume.replicas.to_string(),
            volume.stripe_width.to_string(),
            format::bytes(volume.chunk_size_bytes),
            format::bytes(volume.used_bytes),
            format::quota_bytes(volume.quota_bytes),
            volume.used_inodes.to_string(),
            format::quota_count(volume.quota_inodes),
        ]);
    }
    table
}

impl VolumeCommand {
    pub async fn run(self) -> anyhow::Result<()> {
        match self.action {
            VolumeAction::Create {
                name,
                replicas,
                quota,
                quota_inodes,
                stripe_width,
                chunk_size,
                registry,
            } => {
                let request = pb::CreateVolumeRequest {
                    name,
                    replicas,
                    quota_bytes: quota.unwrap_or(0),
                    quota_inodes: quota_inodes.unwrap_or(0),
                    stripe_width,
                    chunk_size_bytes: chunk_size,
                    ..Default::default()
                };
                let volume = registry.client()?.create_volume(request).await?;
                println!("created volume {:?} (id {})", volume.name, volume.id);
                println!("{}", volumes_table(&[volume]));
            }
            VolumeAction::List { registry, json } => {
                let reply = registry.client()?.list_volumes(pb::Empty {}).await?;
                if json {
                    let all: Vec<_> = reply.volumes.iter().map(volume_json).collect();
                    println!("{}", serde_json::to_string_pretty(&all)?);
                } else {
                    println!("{}", volumes_table(&reply.volumes));
                }
            }
            VolumeAction::Info { name, registry, json } => {
                let volume = registry.client()?.get_volume(pb::VolumeName { name }).await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&volume_json(&volume))?);
                } else {
                    println!("{}", volumes_table(&[volume]));
                }
            }
            VolumeAction::Delete { name, registry } => {
                registry
                    .client()?
                    .delete_volume(pb::VolumeName { name: name.clone() })
                    .await?;
                println!("deleted volume {name:?}");
            }
            VolumeAction::Quota {
                name,
                bytes,
                inodes,
                registry,
            } => {
                let client = registry.client()?;
                let request = quota_request(&client, name, bytes, inodes).await?;
                let volume = client.set_volume_quota(request).await?;
                println!("{}", volumes_table(&[volume]));
            }
        }
        Ok(())
    }
}

/// The quota change to send: the registry sets both quotas at once, so a quota the
/// operator did not name is sent with the volume's current value (read just before; a
/// concurrent change of that quota by another operator can be overwritten).
async fn quota_request(
    client: &shoal_client::RegistryClient,
    name: String,
    bytes: Option<u64>,
    inodes: Option<u64>,
) -> anyhow::Result<pb::SetVolumeQuotaRequest> {
    let (quota_bytes, quota_inodes) = match (bytes, inodes) {
        (None, None) => anyhow::bail!("give --bytes SIZE, --inodes COUNT or both (0 means unlimited)"),
        (Some(bytes), Some(inodes)) => (bytes, inodes),
        (bytes, inodes) => {
            let current = client.get_volume(pb::VolumeName { name: name.clone() }).await?;
            (
                bytes.unwrap_or(current.quota_bytes),
                inodes.unwrap_or(current.quota_inodes),
            )
        }
    };
    Ok(pb::SetVolumeQuotaRequest {
        name,
        quota_bytes,
        quota_inodes,
    })
}
