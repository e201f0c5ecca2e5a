//! The calling side of the peer protocol: how a node reaches its peers (the HTTP client, the
//! admin key and cluster UUID every peer request carries) and the errors a peer request can end
//! in. The serving side is `api/raft_rpc.rs`.

use std::sync::Arc;
use std::sync::RwLock;
use std::time::Duration;

use concordance_client::ErrorBody;
use concordance_client::ErrorCode;
use openraft::errors::NetworkError;
use openraft::errors::RPCError;
use openraft::errors::Unreachable;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::wire;
use super::wire::PeerMessage;
use crate::store::types::TypeConfig;

/// What every outgoing peer request needs: an HTTP client (TLS with this node's certificate
/// when peers talk mutual TLS), the admin key, the cluster UUID.
#[derive(Clone)]
pub struct PeerContext {
    pub http: reqwest::Client,
    /// The admin key (the first of its file, which may change).
    key: Arc<RwLock<Option<String>>>,
    cluster: Arc<RwLock<String>>,
    self_id: u64,
    /// `https` when peers talk mutual TLS: the Raft routes then get the certificate, never
    /// the key.
    scheme: &'static str,
}

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("{0} is unreachable: {1}")]
    Unreachable(String, String),
    #[error("{0} answered {1}: {2}")]
    Refused(String, u16, String),
    #[error("{0} answered {1}: {2}: {3}")]
    Api(String, u16, ErrorCode, String),
}

impl PeerContext {
    pub fn new(
        key: Option<String>,
        cluster: Option<String>,
        self_id: u64,
        tls: Option<&Arc<crate::tls::Tls>>,
    ) -> Self {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(500))
            // Below a member's default header timeout (10 s), after which it closes an idle
            // connection: a pooled one is given up before it could be reused as it closes.
            .pool_idle_timeout(Duration::from_secs(5))
            .tcp_nodelay(true);
        let peer_tls = tls.and_then(|tls| tls.peer_client_config());
        let scheme = if peer_tls.is_some() { "https" } else { "http" };
        if let Some(config) = peer_tls {
            builder = builder.use_preconfigured_tls(config);
        }
        Self {
            http: builder.build().expect("HTTP client builds"),
            key: Arc::new(RwLock::new(key)),
            cluster: Arc::new(RwLock::new(cluster.unwrap_or_default())),
            self_id,
            scheme,
        }
    }

    /// The URL of a route of the member at `addr`.
    pub fn url(&self, addr: &str, path: &str) -> String {
        format!("{}://{addr}/api/v1/{path}", self.scheme)
    }

    /// Calls peers with this admin key from now on (the admin key file changed).
    pub fn set_key(&self, key: String) {
        *self.key.write().unwrap_or_else(|p| p.into_inner()) = Some(key);
    }

    pub fn set_cluster(&self, uuid: &str) {
        *self.cluster.write().expect("not poisoned") = uuid.to_string();
    }

    pub fn cluster(&self) -> String {
        self.cluster.read().expect("not poisoned").clone()
    }

    pub fn envelope<T>(&self, body: T) -> PeerMessage<T> {
        PeerMessage {
            protocol: wire::PROTOCOL_VERSION,
            cluster: self.cluster(),
            from: self.self_id,
            body,
        }
    }

    pub(super) fn request(
        &self,
        method: reqwest::Method,
        addr: &str,
        path: &str,
    ) -> reqwest::RequestBuilder {
        let rb = self.http.request(method, self.url(addr, path));
        // Over mutual TLS the Raft routes know a member by its certificate; the key is not
        // sent where it is not needed.
        let certificate_is_enough = self.scheme == "https" && path.starts_with("raft/");
        match &*self.key.read().unwrap_or_else(|p| p.into_inner()) {
            Some(k) if !certificate_is_enough => rb.bearer_auth(k),
            _ => rb,
        }
    }

    /// GETs a route of a peer and decodes its JSON answer.
    pub async fn get<T: DeserializeOwned>(
        &self,
        addr: &str,
        path: &str,
        timeout: Duration,
    ) -> Result<T, PeerError> {
        let rb = self.request(reqwest::Method::GET, addr, path);
        exchange(addr, rb.timeout(timeout)).await
    }

    /// POSTs a JSON message to a peer and decodes its JSON answer.
    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        addr: &str,
        path: &str,
        body: &B,
        timeout: Duration,
    ) -> Result<T, PeerError> {
        let rb = self.request(reqwest::Method::POST, addr, path);
        exchange(addr, rb.timeout(timeout).json(body)).await
    }
}

/// Sends a request to the peer at `addr` and decodes its JSON answer.
async fn exchange<T: DeserializeOwned>(
    addr: &str,
    rb: reqwest::RequestBuilder,
) -> Result<T, PeerError> {
    let resp = rb
        .send()
        .await
        .map_err(|e| PeerError::Unreachable(addr.into(), e.to_string()))?;
    decode(addr, resp).await
}

pub(super) async fn decode<T: DeserializeOwned>(
    addr: &str,
    resp: reqwest::Response,
) -> Result<T, PeerError> {
    let status = resp.status();
    let bytes = resp
        .bytes()
        .await
        .map_err(|e| PeerError::Unreachable(addr.into(), e.to_string()))?;
    if status.is_success() {
        return serde_json::from_slice(&bytes).map_err(|e| {
            PeerError::Refused(
                addr.into(),
                status.as_u16(),
                format!("undecodable answer: {e}"),
            )
        });
    }
    match serde_json::from_slice::<ErrorBody>(&bytes) {
        Ok(b) => Err(PeerError::Api(
            addr.into(),
            status.as_u16(),
            b.error.code,
            b.error.message,
        )),
        Err(_) => Err(PeerError::Refused(
            addr.into(),
            status.as_u16(),
            String::from_utf8_lossy(&bytes).into_owned(),
        )),
    }
}

/// A failed peer request as Raft sees it: an unreachable peer, or a network failure.
pub(super) fn rpc_error<E: std::error::Error>(e: PeerError) -> RPCError<TypeConfig, E> {
    match e {
        PeerError::Unreachable(..) => RPCError::Unreachable(Unreachable::new(&e)),
        _ => RPCError::Network(NetworkError::new(&e)),
    }
}
