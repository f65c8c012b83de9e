//! After healing, every chain's members must hold the same chunks, at the same versions,
//! with the same bytes: convergence, checked member by member over their own gRPC API.

use std::time::Duration;

use shoal_client::RegistryClient;
use shoal_client::chains::{ChainInfo, ChainTable};
use shoal_client::proto as pb;
use shoal_proto::data as data_pb;
use shoal_proto::data::data_service_client::DataServiceClient;
use tonic::transport::Channel;

/// Chunks listed per page, and most pages per member (a bound far above the run's data).
const PAGE: u32 = 256;
const MAX_PAGES: usize = 10_000;
/// Chunks of the fault run are 1 MiB; a read of this much covers any chunk it makes.
const READ_BYTES: u32 = 4 << 20;

fn member(table: &ChainTable, id: u64) -> anyhow::Result<DataServiceClient<Channel>> {
    let address = table
        .address(id)
        .ok_or_else(|| anyhow::anyhow!("no address for data service {id}"))?;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))?.connect_lazy();
    Ok(DataServiceClient::new(channel).max_decoding_message_size(shoal_proto::MAX_MESSAGE_SIZE_BYTES))
}

async fn chunks_of(table: &ChainTable, chain: &ChainInfo, id: u64) -> anyhow::Result<Vec<(data_pb::ChunkId, u64)>> {
    let mut client = member(table, id)?;
    let mut listed = Vec::new();
    let mut after: Option<data_pb::ChunkId> = None;
    for _page in 0..MAX_PAGES {
        let reply = client
            .list_chunks(data_pb::ListChunksRequest {
                chain_id: chain.id,
                after_volume_id: after.map_or(0, |c| c.volume_id),
                after_ino: after.map_or(0, |c| c.ino),
                after_index: after.map_or(0, |c| c.index),
                has_after: after.is_some(),
                max_chunks: PAGE,
            })
            .await?
            .into_inner();
        for chunk in &reply.chunks {
            let id = chunk
                .chunk
                .ok_or_else(|| anyhow::anyhow!("a listed chunk without an id"))?;
            listed.push((id, chunk.chunk_version));
            after = Some(id);
        }
        if reply.end || reply.chunks.is_empty() {
            return Ok(listed);
        }
    }
    anyhow::bail!(
        "data service {id} lists more than {} chunks",
        MAX_PAGES as u64 * PAGE as u64
    )
}

/// How long members get to converge after healing (a change a failure left unacknowledged
/// is copied down its chain by a background sweep every few seconds).
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(60);

/// Compares every chain's members until they agree or [`CONVERGE_TIMEOUT`] passes.
/// Returns the chunks compared and, if they never agreed, what differed last.
pub async fn compare_until_converged(registry: &RegistryClient) -> anyhow::Result<(u64, Vec<String>)> {
    let started = std::time::Instant::now();
    // Bounded by the timeout.
    loop {
        let (compared, differing) = match compare(registry).await {
            Ok(found) => found,
            Err(error) => (0, vec![format!("{error:#}")]),
        };
        if differing.is_empty() || started.elapsed() > CONVERGE_TIMEOUT {
            return Ok((compared, differing));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Compares every chain's members once. Returns the chunks compared and what differs; an
/// error if a member did not answer.
async fn compare(registry: &RegistryClient) -> anyhow::Result<(u64, Vec<String>)> {
    let table = ChainTable::from_wire(registry.get_chain_table(pb::Empty {}).await?);
    let mut compared = 0;
    let mut differing = Vec::new();
    for chain in table.chains() {
        let mut lists = Vec::new();
        for target in &chain.targets {
            lists.push((
                target.data_service_id,
                chunks_of(&table, chain, target.data_service_id).await?,
            ));
        }
        let Some((first_id, first)) = lists.first().cloned() else {
            continue;
        };
        for (id, list) in &lists[1..] {
            if *list != first {
                differing.push(format!(
                    "chain {}: data service {id} lists other chunks than {first_id}",
                    chain.id
                ));
            }
        }
        for (chunk, _) in &first {
            let mut reference: Option<bytes::Bytes> = None;
            for target in &chain.targets {
                let request = data_pb::ReadRequest {
                    chain_id: chain.id,
                    chain_version: chain.version,
                    chunk: Some(*chunk),
                    offset: 0,
                    length: READ_BYTES,
                };
                let data = member(&table, target.data_service_id)?
                    .read(request)
                    .await?
                    .into_inner()
                    .data;
                match &reference {
                    None => reference = Some(data),
                    Some(bytes) if *bytes != data => differing.push(format!(
                        "chunk {}/{}/{}: data service {} holds other bytes",
                        chunk.volume_id, chunk.ino, chunk.index, target.data_service_id
                    )),
                    Some(_) => {}
                }
            }
            compared += 1;
        }
    }
    Ok((compared, differing))
}
