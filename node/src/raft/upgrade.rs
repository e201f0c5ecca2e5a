//! Long-lived peer connections: an HTTP request upgraded to a protocol of our own (append
//! streams, forward streams). The caller side asks for the upgrade; the serving side takes the
//! raw TCP connection over and serves it on the Raft thread, where the work it carries is
//! done, so nothing is handed between threads.

use std::time::Duration;

use bytes::Bytes;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_util::codec::LengthDelimitedCodec;

use super::client::PeerContext;
use super::client::PeerError;
use super::wire::CAPABILITIES_HEADER;
use super::wire::Capabilities;

/// How long a peer that refused an upgrade (an older binary) gets plain requests before it
/// is asked again (it may have been upgraded meanwhile).
pub const REFUSED_RETRY: Duration = Duration::from_secs(30);

/// How long opening a connection (connect and upgrade) may take.
const OPEN_TIMEOUT: Duration = Duration::from_secs(1);

/// The framing of every upgraded connection: a 4-byte big-endian length, then that many bytes
/// (JSON), at most a peer request body.
pub fn frame_codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(super::wire::PEER_BODY_BYTES)
        .new_codec()
}

pub enum OpenError {
    /// The peer's binary predates this protocol (it answered 404).
    Unsupported,
    Peer(PeerError),
}

/// Asks the peer at `addr` to upgrade `GET /api/v1/<path>` to `protocol`; the connection, and
/// what the peer serves besides (its hello's [`Capabilities`]).
pub async fn open(
    ctx: &PeerContext,
    addr: &str,
    path: &str,
    protocol: &str,
) -> Result<(reqwest::Upgraded, Capabilities), OpenError> {
    let unreachable = |e: String| OpenError::Peer(PeerError::Unreachable(addr.into(), e));
    let hello = ctx.envelope(());
    let request = ctx
        .request(reqwest::Method::GET, addr, path)
        .query(&[
            ("protocol", hello.protocol.to_string()),
            ("cluster", hello.cluster),
            ("from", hello.from.to_string()),
        ])
        .header(reqwest::header::CONNECTION, "upgrade")
        .header(reqwest::header::UPGRADE, protocol)
        .header(CAPABILITIES_HEADER, Capabilities::THIS.header_value());
    let opening = async {
        let resp = request
            .send()
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        match resp.status() {
            reqwest::StatusCode::SWITCHING_PROTOCOLS => {
                let theirs = Capabilities::from_header(
                    resp.headers()
                        .get(CAPABILITIES_HEADER)
                        .and_then(|v| v.to_str().ok()),
                );
                let io = resp
                    .upgrade()
                    .await
                    .map_err(|e| unreachable(e.to_string()))?;
                Ok((io, theirs))
            }
            reqwest::StatusCode::NOT_FOUND => Err(OpenError::Unsupported),
            _ => Err(OpenError::Peer(
                super::client::decode::<()>(addr, resp)
                    .await
                    .err()
                    .unwrap_or_else(|| PeerError::Refused(addr.into(), 200, "no upgrade".into())),
            )),
        }
    };
    tokio::time::timeout(OPEN_TIMEOUT, opening)
        .await
        .map_err(|_| unreachable(format!("no {protocol} connection within {OPEN_TIMEOUT:?}")))?
}

/// The serving side: waits for the upgrade to complete, then serves the raw connection with
/// `serve` on `raft_runtime`, the Raft thread (with the bytes already read past the request,
/// and Nagle off: every frame is a small write its peer waits for).
pub async fn serve_on_raft_thread<F, Fut>(
    raft_runtime: tokio::runtime::Handle,
    upgrade: hyper::upgrade::OnUpgrade,
    what: &'static str,
    serve: F,
) where
    F: FnOnce(TcpStream, Bytes) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let upgraded = match upgrade.await {
        Ok(upgraded) => upgraded,
        Err(e) => {
            tracing::warn!(error = %e, "{what} failed to open");
            return;
        }
    };
    let parts = match upgraded.downcast::<TokioIo<TcpStream>>() {
        Ok(parts) => parts,
        Err(_) => {
            // Our listener only ever accepts TCP connections (server.rs).
            tracing::warn!("{what} is not on a TCP connection; closing it");
            return;
        }
    };
    let read_ahead = parts.read_buf;
    let tcp = match parts.io.into_inner().into_std() {
        Ok(tcp) => tcp,
        Err(e) => {
            tracing::warn!(error = %e, "{what}'s connection is unusable");
            return;
        }
    };
    raft_runtime.spawn(async move {
        match TcpStream::from_std(tcp).and_then(|tcp| tcp.set_nodelay(true).map(|()| tcp)) {
            Ok(tcp) => serve(tcp, read_ahead).await,
            Err(e) => tracing::warn!(error = %e, "{what}'s connection is unusable"),
        }
    });
}
