//! Reaching data services through a gateway (`shoal gateway`) instead of directly.
//!
//! Why: a client outside the data services' network, and the single-entry-point baseline of
//! the scale-out benchmark, send every data-service connection through one host. The
//! gateway speaks HTTP CONNECT: the client opens a TCP connection to it, asks for
//! `CONNECT host:port`, and once the gateway answers 200 the connection is a plain tunnel
//! to that data service, over which gRPC runs unchanged.

use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint};

/// Invariant: a gateway's reply head is one status line and a few headers; anything
/// longer is not a gateway and the connection is refused.
pub const MAX_REPLY_HEAD_BYTES: usize = 4096;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// A lazily connected channel to `target` (a data service's `host:port`) through the
/// gateway at `gateway`.
pub fn channel(endpoint: Endpoint, gateway: &str, target: &str) -> Channel {
    let gateway = gateway.to_string();
    let target = target.to_string();
    let connector = tower::service_fn(move |_: tonic::transport::Uri| {
        let gateway = gateway.clone();
        let target = target.clone();
        async move {
            let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, tunnel(&gateway, &target))
                .await
                .map_err(|_| {
                    std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("gateway {gateway} did not open a tunnel to {target} within {HANDSHAKE_TIMEOUT:?}"),
                    )
                })??;
            Ok::<_, std::io::Error>(TokioIo::new(stream))
        }
    });
    endpoint.connect_with_connector_lazy(connector)
}

/// Opens a TCP connection to `gateway` and asks it for a tunnel to `target`.
pub async fn tunnel(gateway: &str, target: &str) -> std::io::Result<TcpStream> {
    let mut stream = TcpStream::connect(gateway)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot reach gateway {gateway}: {e}")))?;
    stream.set_nodelay(true)?;
    stream
        .write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .await?;
    let head = read_head(&mut stream).await?;
    let status_line = head.lines().next().unwrap_or_default();
    let status = status_line.split_whitespace().nth(1).unwrap_or_default();
    if status != "200" {
        return Err(std::io::Error::other(format!(
            "gateway {gateway} refused a tunnel to {target}: {status_line}"
        )));
    }
    Ok(stream)
}

/// Reads an HTTP head (up to the blank line) one byte at a time: the data service may
/// speak first (HTTP/2 SETTINGS) right behind it, and those bytes belong to gRPC.
pub async fn read_head(stream: &mut TcpStream) -> std::io::Result<String> {
    let mut head = Vec::with_capacity(256);
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() >= MAX_REPLY_HEAD_BYTES {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("HTTP head longer than {MAX_REPLY_HEAD_BYTES} bytes"),
            ));
        }
        let byte = stream.read_u8().await?;
        head.push(byte);
    }
    String::from_utf8(head).map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "HTTP head is not UTF-8"))
}
