//! Long-lived peer connections: an HTTP request upgraded to a protocol of our own (append
//! streams, forward streams). The caller side asks for the upgrade; the serving side takes the
//! connection (plaintext or TLS) over and serves it on the Raft thread, where the work it carries is
//! done, so nothing is handed between threads.

use std::io;
use std::time::Duration;

use bytes::Buf;
use bytes::Bytes;
use bytes::BytesMut;
use hyper_util::rt::TokioIo;
use tokio_util::codec::Decoder;
use tokio_util::codec::Encoder;
use tokio_util::codec::LengthDelimitedCodec;

use super::client::PeerContext;
use super::client::PeerError;
use super::wire::CAPABILITIES_HEADER;
use super::wire::Capabilities;
use crate::tls::Conn;

/// How long a peer that refused an upgrade (an older binary) gets plain requests before it
/// is asked again (it may have been upgraded meanwhile).
pub const REFUSED_RETRY: Duration = Duration::from_secs(30);

/// How long opening a connection (connect and upgrade) may take.
const OPEN_TIMEOUT: Duration = Duration::from_secs(1);

/// The framing of every upgraded connection: a 4-byte big-endian length, then that many bytes
/// (JSON), at most a peer request body.
pub fn frame_codec() -> FrameCodec {
    FrameCodec(
        LengthDelimitedCodec::builder()
            .max_frame_length(super::wire::PEER_BODY_BYTES)
            .new_codec(),
    )
}

/// Writes frames as [`LengthDelimitedCodec`] does, and reads them without it: that codec
/// reserves room for a whole frame as soon as it has read the frame's length, so 4 bytes
/// claiming 512 MiB allocated 512 MiB before any of it came. Here a frame is taken once it is
/// all there, and the read buffer grows only with the bytes received.
pub struct FrameCodec(LengthDelimitedCodec);

impl Decoder for FrameCodec {
    type Item = BytesMut;
    type Error = io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> io::Result<Option<BytesMut>> {
        let Some(head) = src.get(..4) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes(head.try_into().expect("4 bytes")) as usize;
        if len > super::wire::PEER_BODY_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "a frame of {len} bytes; the limit is {}",
                    super::wire::PEER_BODY_BYTES
                ),
            ));
        }
        if src.len() < 4 + len {
            return Ok(None);
        }
        src.advance(4);
        Ok(Some(src.split_to(len)))
    }
}

impl Encoder<Bytes> for FrameCodec {
    type Error = io::Error;

    fn encode(&mut self, frame: Bytes, dst: &mut BytesMut) -> io::Result<()> {
        self.0.encode(frame, dst)
    }
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

/// The serving side: waits for the upgrade to complete, then serves the connection with
/// `serve` on `raft_runtime`, the Raft thread (with the bytes already read past the request,
/// and Nagle off: every frame is a small write its peer waits for).
pub async fn serve_on_raft_thread<F, Fut>(
    raft_runtime: tokio::runtime::Handle,
    upgrade: hyper::upgrade::OnUpgrade,
    what: &'static str,
    serve: F,
) where
    F: FnOnce(Conn, Bytes) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let upgraded = match upgrade.await {
        Ok(upgraded) => upgraded,
        Err(e) => {
            tracing::warn!(error = %e, "{what} failed to open");
            return;
        }
    };
    let parts = match upgraded.downcast::<TokioIo<Conn>>() {
        Ok(parts) => parts,
        Err(_) => {
            // Our listener only ever serves `Conn`s (server.rs).
            tracing::warn!("{what} is not on a served connection; closing it");
            return;
        }
    };
    let read_ahead = parts.read_buf;
    let conn = parts.io.into_inner();
    raft_runtime.spawn(async move {
        match conn.onto_current_runtime() {
            Ok(conn) => serve(conn, read_ahead).await,
            Err(e) => tracing::warn!(error = %e, "{what}'s connection is unusable"),
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame's length is not a reason to allocate: what a frame claims is held only as its
    /// bytes come (the fuzz target of the streams found this, `fuzz/peer.rs`).
    #[test]
    fn a_frame_claiming_the_limit_allocates_nothing_for_it_before_its_bytes_come() {
        let mut codec = frame_codec();
        let mut received = BytesMut::new();
        received.extend_from_slice(&(crate::raft::wire::PEER_BODY_BYTES as u32).to_be_bytes());
        received.extend_from_slice(br#"{"vote":"#);
        let (frame, usage) = crate::fuzz::measure(|| codec.decode(&mut received));
        assert!(frame.unwrap().is_none(), "the frame is not all there");
        assert!(usage.peak < 64 << 10, "{usage:?}");

        // Over the limit: refused at once.
        let mut over = BytesMut::from(&u32::MAX.to_be_bytes()[..]);
        let err = codec.decode(&mut over).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);

        // A whole frame, then the next one's first bytes.
        let mut two = BytesMut::new();
        codec.encode(Bytes::from_static(b"[1]"), &mut two).unwrap();
        two.extend_from_slice(&[0, 0]);
        assert_eq!(&codec.decode(&mut two).unwrap().unwrap()[..], b"[1]");
        assert!(codec.decode(&mut two).unwrap().is_none());
        assert_eq!(&two[..], &[0, 0]);
    }
}
