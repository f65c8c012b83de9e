//! Metadata throughput of the registry: create, stat, rename and unlink, each phase run by
//! N concurrent clients (each with its own connections) against 1 or 3 registry nodes.

use std::time::{Duration, Instant};

use bytes::Bytes;
use shoal_client::{RegistryClient, proto as pb};
use shoal_testkit::{RegistryCluster, shoal_binary};

#[derive(clap::Args)]
pub struct MetaArgs {
    /// Registry cluster sizes to measure.
    #[arg(long, value_delimiter = ',', default_values_t = [1u64, 3])]
    nodes: Vec<u64>,
    /// Concurrent client counts to measure.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 8, 64])]
    clients: Vec<usize>,
    /// Operations per phase, split over the clients.
    #[arg(long, default_value_t = 3000)]
    operations: usize,
}

const PHASES: [&str; 4] = ["create", "stat", "rename", "unlink"];

fn name(prefix: &str, i: usize) -> Bytes {
    Bytes::from(format!("{prefix}{i}"))
}

async fn phase(
    client: &RegistryClient,
    volume_id: u64,
    directory: u64,
    phase: &str,
    count: usize,
) -> anyhow::Result<()> {
    for i in 0..count {
        match phase {
            "create" => {
                client
                    .create(pb::CreateRequest {
                        volume_id,
                        parent: directory,
                        name: name("f", i),
                        file_type: pb::FileType::Regular as i32,
                        mode: 0o644,
                        exclusive: true,
                        ..Default::default()
                    })
                    .await?;
            }
            "stat" => {
                client.lookup(volume_id, directory, &name("f", i)).await?;
            }
            "rename" => {
                client
                    .rename(pb::RenameRequest {
                        volume_id,
                        parent: directory,
                        name: name("f", i),
                        new_parent: directory,
                        new_name: name("g", i),
                        flags: 0,
                    })
                    .await?;
            }
            _ => {
                client
                    .unlink(pb::UnlinkRequest {
                        volume_id,
                        parent: directory,
                        name: name("g", i),
                        ..Default::default()
                    })
                    .await?;
            }
        }
    }
    Ok(())
}

/// Operations per second of each phase for `clients` concurrent clients.
async fn measure(
    cluster: &RegistryCluster,
    volume_id: u64,
    clients: usize,
    operations: usize,
    round: usize,
) -> anyhow::Result<Vec<f64>> {
    let per_client = operations.div_ceil(clients).max(1);
    let mut sessions = Vec::new();
    for c in 0..clients {
        let client = cluster.client();
        let directory = client
            .mkdir(pb::MkdirRequest {
                volume_id,
                parent: 1,
                name: Bytes::from(format!("round{round}-client{c}")),
                mode: 0o755,
                ..Default::default()
            })
            .await?
            .ino;
        sessions.push((client, directory));
    }
    let mut rates = Vec::new();
    for phase_name in PHASES {
        let started = Instant::now();
        let mut tasks = Vec::new();
        for (client, directory) in &sessions {
            let (client, directory) = (client.clone(), *directory);
            tasks.push(tokio::spawn(async move {
                phase(&client, volume_id, directory, phase_name, per_client).await
            }));
        }
        for task in tasks {
            task.await??;
        }
        let elapsed = started.elapsed().max(Duration::from_micros(1));
        rates.push((per_client * clients) as f64 / elapsed.as_secs_f64());
    }
    Ok(rates)
}

pub async fn run(args: MetaArgs) -> anyhow::Result<()> {
    let binary = shoal_binary()?;
    println!("| registry nodes | clients | create/s | stat/s | rename/s | unlink/s |");
    println!("|---:|---:|---:|---:|---:|---:|");
    for &nodes in &args.nodes {
        let mut cluster = RegistryCluster::start(&binary, nodes, &[]).await?;
        let client = cluster.client();
        let volume = client
            .create_volume(pb::CreateVolumeRequest {
                name: "bench".into(),
                replicas: 1,
                ..Default::default()
            })
            .await?;
        for (round, &clients) in args.clients.iter().enumerate() {
            let rates = measure(&cluster, volume.id, clients, args.operations, round).await?;
            println!(
                "| {nodes} | {clients} | {:.0} | {:.0} | {:.0} | {:.0} |",
                rates[0], rates[1], rates[2], rates[3]
            );
        }
        cluster.stop_all(Duration::from_secs(5));
    }
    Ok(())
}
