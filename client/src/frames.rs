//! Chunk reads and writes on the framed data transport (see [`shoal_proto::frame`]), with
//! a pool of connections per data service. Used by [`crate::DataClient`] and by data
//! services forwarding writes down a chain.
//!
//! Why a pool and not one multiplexed connection: one call at a time per connection keeps
//! both ends simple (a reply is whatever frame comes next, a cancelled call just drops its
//! connection) and lets the kernel carry parallel calls on parallel sockets; the pool makes
//! the connection set-up a one-time cost.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message;
use shoal_proto::data::{CallStatus, ReadReply, ReadRequest, WriteReply, WriteRequest};
use shoal_proto::frame::{self, Frame, FrameKind, PREFACE};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tonic::Status;

/// Calls in flight to one data service; more wait for one of them to end. It bounds the
/// connections a client opens to a data service (a data service has one lock per chunk, so
/// more calls at once than it has busy chunks would only queue there).
pub const MAX_CALLS_PER_ADDRESS: usize = 64;
/// Idle connections kept per data service: as many as there can be calls.
const MAX_IDLE_PER_ADDRESS: usize = MAX_CALLS_PER_ADDRESS;
/// Data services with idle connections kept; a cluster has far fewer.
const MAX_ADDRESSES: usize = 4096;
/// An idle connection older than this is closed instead of reused. It is well inside the
/// data service's own idle timeout, so a reused connection is not one it is closing.
pub const IDLE_REUSE_MS: u64 = 30_000;
/// How long a data service keeps a connection that carries no call.
pub const SERVER_IDLE_TIMEOUT_MS: u64 = 120_000;
const _: () = assert!(IDLE_REUSE_MS * 2 <= SERVER_IDLE_TIMEOUT_MS);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Read buffer of a connection: a frame's head and header arrive in one system call; a
/// payload larger than this is read straight into its own buffer.
pub const READ_BUFFER_BYTES: usize = 16 << 10;

type Connection = BufReader<TcpStream>;

struct Idle {
    connection: Connection,
    since: Instant,
}

/// Framed calls to data services. Cheap to share; every call takes a pooled connection.
pub struct FrameClient {
    /// `host:port` of a `shoal gateway` every connection is tunnelled through.
    gateway: Option<String>,
    idle: Mutex<HashMap<String, Vec<Idle>>>,
    /// Permits for calls in flight, per data service.
    calls: Mutex<HashMap<String, Arc<Semaphore>>>,
}

fn unavailable(address: &str, error: &io::Error) -> Status {
    Status::unavailable(format!("data service at {address}: {error}"))
}

/// A connection the data service closed while it sat in the pool fails this way on reuse.
fn is_closed_by_peer(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionAborted
    )
}

impl FrameClient {
    pub fn new(gateway: Option<String>) -> FrameClient {
        FrameClient {
            gateway,
            idle: Mutex::default(),
            calls: Mutex::default(),
        }
    }

    /// A chain write: `request.data` travels as the frame's payload, uncopied.
    pub async fn write(&self, address: &str, mut request: WriteRequest) -> Result<WriteReply, Status> {
        let payload = std::mem::take(&mut request.data);
        let kind = if request.extents.is_empty() {
            FrameKind::Write
        } else {
            FrameKind::WriteExtents
        };
        let reply = self.call(address, kind, &request.encode_to_vec(), &payload).await?;
        decode::<WriteReply>(address, &reply.header)
    }

    /// A chunk read: the reply's `data` is the frame's payload.
    pub async fn read(&self, address: &str, request: ReadRequest) -> Result<ReadReply, Status> {
        let reply = self
            .call(address, FrameKind::Read, &request.encode_to_vec(), &[])
            .await?;
        let mut message = decode::<ReadReply>(address, &reply.header)?;
        message.data = reply.payload;
        Ok(message)
    }

    /// One call: a reply frame, or the status the data service refused it with. A pooled
    /// connection the data service has closed meanwhile is replaced once, at once.
    async fn call(&self, address: &str, kind: FrameKind, header: &[u8], payload: &[u8]) -> Result<Frame, Status> {
        let _permit = self
            .permits(address)
            .acquire_owned()
            .await
            .expect("call permits are never closed");
        let (mut connection, reused) = match self.take_idle(address) {
            Some(connection) => (connection, true),
            None => (self.connect(address).await?, false),
        };
        let mut outcome = exchange(&mut connection, kind, header, payload).await;
        if reused && matches!(&outcome, Err(error) if is_closed_by_peer(error)) {
            connection = self.connect(address).await?;
            outcome = exchange(&mut connection, kind, header, payload).await;
        }
        let reply = outcome.map_err(|error| unavailable(address, &error))?;
        match reply.kind {
            FrameKind::Reply => {
                self.put_idle(address, connection);
                Ok(reply)
            }
            FrameKind::Failed => {
                self.put_idle(address, connection);
                Err(frame::status_from_wire(decode::<CallStatus>(address, &reply.header)?))
            }
            FrameKind::Write | FrameKind::WriteExtents | FrameKind::Read => Err(Status::internal(format!(
                "data service at {address} answered with a {:?} frame",
                reply.kind
            ))),
        }
    }

    async fn connect(&self, address: &str) -> Result<Connection, Status> {
        let connecting = async {
            let mut stream = match &self.gateway {
                Some(gateway) => crate::gateway::tunnel(gateway, address).await?,
                None => TcpStream::connect(address).await?,
            };
            stream.set_nodelay(true)?;
            stream.write_all(&PREFACE).await?;
            io::Result::Ok(stream)
        };
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| {
                Status::unavailable(format!(
                    "data service at {address}: no connection within {CONNECT_TIMEOUT:?}"
                ))
            })?
            .map_err(|error| unavailable(address, &error))?;
        Ok(BufReader::with_capacity(READ_BUFFER_BYTES, stream))
    }

    fn permits(&self, address: &str) -> Arc<Semaphore> {
        let mut calls = self.calls.lock().expect("frame call lock poisoned");
        if !calls.contains_key(address) && calls.len() >= MAX_ADDRESSES {
            // Only addresses with no call in flight are forgotten.
            calls.retain(|_, permits| permits.available_permits() < MAX_CALLS_PER_ADDRESS);
        }
        calls
            .entry(address.to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(MAX_CALLS_PER_ADDRESS)))
            .clone()
    }

    fn take_idle(&self, address: &str) -> Option<Connection> {
        let mut idle = self.idle.lock().expect("frame pool lock poisoned");
        let pool = idle.get_mut(address)?;
        // The freshest first; any too old to trust is closed on the way.
        while let Some(entry) = pool.pop() {
            if entry.since.elapsed() < Duration::from_millis(IDLE_REUSE_MS) {
                return Some(entry.connection);
            }
        }
        None
    }

    fn put_idle(&self, address: &str, connection: Connection) {
        let mut idle = self.idle.lock().expect("frame pool lock poisoned");
        if !idle.contains_key(address) && idle.len() >= MAX_ADDRESSES {
            idle.clear();
        }
        let pool = idle.entry(address.to_string()).or_default();
        if pool.len() < MAX_IDLE_PER_ADDRESS {
            pool.push(Idle {
                connection,
                since: Instant::now(),
            });
        }
    }
}

async fn exchange(connection: &mut Connection, kind: FrameKind, header: &[u8], payload: &[u8]) -> io::Result<Frame> {
    frame::write_frame(connection.get_mut(), kind, header, payload).await?;
    frame::read_frame(connection)
        .await?
        .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed before the reply"))
}

fn decode<M: Message + Default>(address: &str, header: &Bytes) -> Result<M, Status> {
    M::decode(header.clone())
        .map_err(|error| Status::internal(format!("data service at {address} sent an undecodable reply: {error}")))
}
