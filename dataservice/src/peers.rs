//! Connections to other data services: one lazily connected gRPC channel per address, and
//! a pool of framed connections for forwarded writes.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use shoal_client::frames::FrameClient;
use shoal_proto::data::data_service_client::DataServiceClient;
use tonic::transport::{Channel, Endpoint};

/// Most peer channels kept; a cluster has far fewer data services.
const MAX_PEERS: usize = 4096;

pub struct Peers {
    channels: Mutex<HashMap<String, Channel>>,
    /// Forwarded writes travel framed, their bytes uncopied (see `shoal_proto::frame`).
    pub frames: FrameClient,
}

impl Default for Peers {
    fn default() -> Peers {
        Peers {
            channels: Mutex::default(),
            frames: FrameClient::new(None),
        }
    }
}

/// A data-service client tuned for bulk transfer.
pub fn data_client(channel: Channel) -> DataServiceClient<Channel> {
    DataServiceClient::new(channel)
        .max_decoding_message_size(shoal_proto::MAX_MESSAGE_SIZE_BYTES)
        .max_encoding_message_size(shoal_proto::MAX_MESSAGE_SIZE_BYTES)
}

pub fn data_endpoint(address: &str) -> Result<Endpoint, tonic::Status> {
    let endpoint = Endpoint::from_shared(format!("http://{address}"))
        .map_err(|e| tonic::Status::internal(format!("invalid data service address {address:?}: {e}")))?;
    Ok(endpoint
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .initial_stream_window_size(shoal_proto::DATA_STREAM_WINDOW_BYTES)
        .initial_connection_window_size(shoal_proto::DATA_CONNECTION_WINDOW_BYTES))
}

impl Peers {
    pub fn client(&self, address: &str) -> Result<DataServiceClient<Channel>, tonic::Status> {
        let mut channels = self.channels.lock().expect("peer lock poisoned");
        if let Some(channel) = channels.get(address) {
            return Ok(data_client(channel.clone()));
        }
        if channels.len() >= MAX_PEERS {
            channels.clear();
        }
        let channel = data_endpoint(address)?.connect_lazy();
        channels.insert(address.to_string(), channel.clone());
        Ok(data_client(channel))
    }
}
