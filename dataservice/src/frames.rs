//! The data service's listener: gRPC and the framed data transport on one port.
//!
//! Why one port: the registry, the gateway and every client know a data service by one
//! address. A framed connection opens with [`PREFACE`] (`S…`), an HTTP/2 one with its own
//! preface (`PRI …`); the first byte tells them apart, and HTTP/2 connections are handed to
//! tonic unchanged. Framed calls reach the same [`DataNode`] handlers as the gRPC ones.
//!
//! Invariant: a connection serves one call at a time, in order, and is closed on the first
//! frame it cannot parse: after a framing error nothing on it can be trusted.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use shoal_client::frames::{READ_BUFFER_BYTES, SERVER_IDLE_TIMEOUT_MS};
use shoal_proto::data as pb;
use shoal_proto::frame::{self, Frame, FrameKind, PREFACE};
use tokio::io::{AsyncReadExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};
use tonic::Status;

use crate::node::DataNode;
use crate::status::invalid;

/// Most framed connections served at once; one more is closed at once.
const MAX_FRAMED_CONNECTIONS: usize = 4096;
/// A connection that sends nothing this long after connecting is closed.
const PREFACE_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 connections accepted but not yet taken by tonic.
pub const GRPC_BACKLOG: usize = 64;

/// Accepts connections until `stopped` fires: framed ones are served here, the others sent
/// to `grpc` for tonic.
pub async fn accept_loop(
    listener: TcpListener,
    node: Arc<DataNode>,
    grpc: mpsc::Sender<io::Result<TcpStream>>,
    mut stopped: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(MAX_FRAMED_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stopped.changed() => return,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                // Out of descriptors and the like: the next accept may succeed.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (node, grpc, permits, stopped) = (node.clone(), grpc.clone(), permits.clone(), stopped.clone());
        tokio::spawn(async move {
            match tokio::time::timeout(PREFACE_TIMEOUT, is_framed(&stream)).await {
                Ok(Ok(true)) => {
                    let Ok(_permit) = permits.try_acquire() else {
                        tracing::warn!("{MAX_FRAMED_CONNECTIONS} framed connections open; refusing one more");
                        return;
                    };
                    serve(node, stream, stopped).await;
                }
                Ok(Ok(false)) => {
                    let _ = grpc.send(Ok(stream)).await;
                }
                Ok(Err(error)) => tracing::debug!(%error, "connection failed before its preface"),
                Err(_) => tracing::debug!("connection sent no preface within {PREFACE_TIMEOUT:?}"),
            }
        });
    }
}

/// Whether the connection speaks frames. Only the first byte is peeked, so an HTTP/2
/// connection reaches tonic with every byte it sent.
async fn is_framed(stream: &TcpStream) -> io::Result<bool> {
    let mut first = [0u8; 1];
    if stream.peek(&mut first).await? == 0 {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed at once"));
    }
    Ok(first[0] == PREFACE[0])
}

/// Serves one framed connection until the client closes it, stays idle too long, breaks
/// the protocol, or the service stops.
async fn serve(node: Arc<DataNode>, stream: TcpStream, mut stopped: watch::Receiver<bool>) {
    let mut connection = BufReader::with_capacity(READ_BUFFER_BYTES, stream);
    let mut preface = [0u8; PREFACE.len()];
    if connection.read_exact(&mut preface).await.is_err() || preface != PREFACE {
        tracing::debug!("not a Shoal frame preface; closing the connection");
        return;
    }
    let idle = Duration::from_millis(SERVER_IDLE_TIMEOUT_MS);
    loop {
        let frame = tokio::select! {
            frame = tokio::time::timeout(idle, frame::read_frame(&mut connection)) => frame,
            _ = stopped.changed() => return,
        };
        let frame = match frame {
            Ok(Ok(Some(frame))) => frame,
            Ok(Ok(None)) | Err(_) => return,
            Ok(Err(error)) => {
                tracing::debug!(%error, "closing a framed connection");
                return;
            }
        };
        let (kind, header, payload) = match handle(&node, frame).await {
            Ok((header, payload)) => (FrameKind::Reply, header, payload),
            Err(status) => (
                FrameKind::Failed,
                frame::status_to_wire(&status).encode_to_vec(),
                Bytes::new(),
            ),
        };
        if let Err(error) = frame::write_frame(connection.get_mut(), kind, &header, &payload).await {
            tracing::debug!(%error, "cannot send a reply; closing the framed connection");
            return;
        }
    }
}

/// One call: the reply's header and payload, or the status it is refused with.
async fn handle(node: &Arc<DataNode>, frame: Frame) -> Result<(Vec<u8>, Bytes), Status> {
    match frame.kind {
        FrameKind::Write | FrameKind::WriteExtents => {
            let mut request = decode::<pb::WriteRequest>(&frame.header)?;
            if !request.data.is_empty() {
                return Err(invalid(
                    "a framed write carries its data as the payload, not in its header",
                ));
            }
            if request.extents.is_empty() != (frame.kind == FrameKind::Write) {
                return Err(invalid("a write with extents travels as WriteExtents, and only it"));
            }
            request.data = frame.payload;
            let reply = node.write(request).await?;
            Ok((reply.encode_to_vec(), Bytes::new()))
        }
        FrameKind::Read => {
            if !frame.payload.is_empty() {
                return Err(invalid("a read request carries no payload"));
            }
            let request = decode::<pb::ReadRequest>(&frame.header)?;
            let mut reply = node.read(request).await?;
            let data = std::mem::take(&mut reply.data);
            Ok((reply.encode_to_vec(), data))
        }
        FrameKind::Reply | FrameKind::Failed => Err(invalid(format!("a client sent a {:?} frame", frame.kind))),
    }
}

fn decode<M: Message + Default>(header: &Bytes) -> Result<M, Status> {
    M::decode(header.clone()).map_err(|error| invalid(format!("undecodable frame header: {error}")))
}
