//! `shoal data`: run a data service.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use shoal_dataservice::server::{DataServiceOptions, start};

use crate::RegistryAddress;

#[derive(clap::Args)]
pub struct DataCommand {
    /// Address to serve on, e.g. 0.0.0.0:7200.
    #[arg(long)]
    listen: SocketAddr,
    /// Address clients and other data services use (default: --listen).
    #[arg(long)]
    advertise: Option<String>,
    /// A directory to store chunks in; repeat for each disk.
    #[arg(long = "disk", required = true, value_name = "DIR")]
    disks: Vec<PathBuf>,
    /// Failure domain label (rack, host, zone); chain members are spread over zones.
    #[arg(long, default_value = "")]
    zone: String,
    #[arg(long, default_value_t = 1000)]
    heartbeat_interval_ms: u64,
    #[command(flatten)]
    registry: RegistryAddress,
}

impl DataCommand {
    pub async fn run(self) -> anyhow::Result<()> {
        let options = DataServiceOptions {
            listen: self.listen,
            advertise: self.advertise,
            registry: self.registry.addresses(),
            disks: self.disks,
            zone: self.zone,
            heartbeat_interval: Duration::from_millis(self.heartbeat_interval_ms.max(100)),
        };
        let service = start(options).await?;
        println!(
            "shoal data service {} listening on {}",
            service.id, service.local_address
        );
        crate::stop_signal().await;
        tracing::info!("data service stopping");
        service.shutdown().await
    }
}
