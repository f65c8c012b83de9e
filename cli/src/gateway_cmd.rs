//! `shoal gateway`: one host that relays clients' data-service connections.
//!
//! Why: clients that cannot reach the data services' network directly mount with
//! `-o gateway=HOST:PORT`, and the scale-out benchmark uses it as the single entry point
//! Shoal is built to avoid (every byte crosses this one host). The gateway is an HTTP
//! CONNECT relay: it reads `CONNECT host:port`, checks that `host:port` is a data service
//! the registry knows (it is not an open proxy), and then copies bytes both ways.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use shoal_client::proto as pb;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex, Semaphore};

use crate::RegistryAddress;

/// Most time a client may take to send its CONNECT head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Most time to open the connection to the data service.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// An unknown target refreshes the data-service list at most this often.
const REFRESH_INTERVAL: Duration = Duration::from_secs(1);
/// Copy buffer per direction per tunnel: large enough to keep a 1 MiB write moving.
const TUNNEL_BUFFER_BYTES: usize = 256 << 10;

#[derive(clap::Args)]
pub struct GatewayCommand {
    /// Address to serve on, e.g. 0.0.0.0:7400.
    #[arg(long)]
    listen: SocketAddr,
    /// Most tunnels open at once; later clients wait for one to close.
    #[arg(long, default_value_t = 1024)]
    max_tunnels: usize,
    #[command(flatten)]
    registry: RegistryAddress,
}

/// The data services a tunnel may lead to, as last read from the registry.
struct Targets {
    registry: shoal_client::RegistryClient,
    known: Mutex<(HashSet<String>, Option<Instant>)>,
}

impl Targets {
    async fn allows(&self, target: &str) -> bool {
        let mut known = self.known.lock().await;
        if known.0.contains(target) {
            return true;
        }
        if known.1.is_some_and(|at| at.elapsed() < REFRESH_INTERVAL) {
            return false;
        }
        known.1 = Some(Instant::now());
        match self.registry.list_data_services(pb::Empty {}).await {
            Ok(reply) => known.0 = reply.data_services.into_iter().map(|service| service.address).collect(),
            Err(error) => tracing::warn!(%error, "cannot list data services"),
        }
        known.0.contains(target)
    }
}

impl GatewayCommand {
    pub async fn run(self) -> anyhow::Result<()> {
        anyhow::ensure!(self.max_tunnels > 0, "--max-tunnels must be at least 1");
        let listener = TcpListener::bind(self.listen)
            .await
            .with_context(|| format!("cannot listen on {}", self.listen))?;
        let targets = Arc::new(Targets {
            registry: self.registry.client()?,
            known: Mutex::new((HashSet::new(), None)),
        });
        let tunnels = Arc::new(Semaphore::new(self.max_tunnels));
        println!("shoal gateway listening on {}", listener.local_addr()?);
        let serve = async {
            loop {
                let permit = tunnels.clone().acquire_owned().await.expect("semaphore never closed");
                let (client, peer) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let targets = targets.clone();
                tokio::spawn(async move {
                    if let Err(error) = relay(client, &targets).await {
                        tracing::info!(%peer, "tunnel closed: {error:#}");
                    }
                    drop(permit);
                });
            }
        };
        tokio::select! {
            () = serve => unreachable!("the accept loop never ends"),
            () = crate::stop_signal() => tracing::info!("gateway stopping"),
        }
        Ok(())
    }
}

/// One tunnel: the CONNECT handshake, then bytes both ways until either side closes.
async fn relay(mut client: TcpStream, targets: &Targets) -> anyhow::Result<()> {
    client.set_nodelay(true)?;
    let head = tokio::time::timeout(HEAD_TIMEOUT, shoal_client::gateway::read_head(&mut client))
        .await
        .context("no CONNECT request in time")??;
    let request_line = head.lines().next().unwrap_or_default();
    let mut words = request_line.split_whitespace();
    let target = match (words.next(), words.next()) {
        (Some("CONNECT"), Some(target)) => target.to_string(),
        _ => {
            client.write_all(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n").await?;
            anyhow::bail!("not a CONNECT request: {request_line:?}");
        }
    };
    if !targets.allows(&target).await {
        client.write_all(b"HTTP/1.1 403 Forbidden\r\n\r\n").await?;
        anyhow::bail!("{target} is not a data service of this cluster");
    }
    let mut service = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&target)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => {
            client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await?;
            anyhow::bail!("cannot reach data service {target}: {error}");
        }
        Err(_) => {
            client.write_all(b"HTTP/1.1 504 Gateway Timeout\r\n\r\n").await?;
            anyhow::bail!("data service {target} did not answer within {CONNECT_TIMEOUT:?}");
        }
    };
    service.set_nodelay(true)?;
    client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n").await?;
    tracing::info!("tunnel opened to {target}");
    tokio::io::copy_bidirectional_with_sizes(&mut client, &mut service, TUNNEL_BUFFER_BYTES, TUNNEL_BUFFER_BYTES)
        .await
        .with_context(|| format!("tunnel to {target}"))?;
    Ok(())
}
