//! Concordance's HTTP API types and a typed async client.
//!
//! ```no_run
//! # async fn demo() -> Result<(), concordance_client::Error> {
//! let client = concordance_client::Client::new("http://127.0.0.1:4100")?.with_key("secret");
//! client.put("agents/a17/state", &serde_json::json!({"step": 3})).await?;
//! let kv = client.get("agents/a17/state").await?;
//! # Ok(()) }
//! ```

pub mod types;

use std::time::Duration;

use reqwest::Method;
use reqwest::StatusCode;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

pub use crate::types::*;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server answered with an error body.
    #[error("{status}: {code}: {message}", code = .body.error.code, message = .body.error.message)]
    Api { status: StatusCode, body: ErrorBody },
    #[error("request failed: {0}")]
    Transport(#[from] reqwest::Error),
    #[error("invalid endpoint {0:?}: {1}")]
    Endpoint(String, String),
    #[error("unexpected answer {status}: {body}")]
    Unexpected { status: StatusCode, body: String },
}

impl Error {
    /// The API error code, when the server answered one.
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Api { body, .. } => Some(&body.error.code),
            _ => None,
        }
    }

    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Error::Api { status, .. } | Error::Unexpected { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A client of one Concordance endpoint.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    key: Option<String>,
}

/// Path segments of a key, each percent-encoded, joined with `/`.
fn key_path(key: &str) -> String {
    key.split('/')
        .map(|seg| {
            let mut out = String::new();
            for b in seg.bytes() {
                if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                    out.push(b as char);
                } else {
                    out.push_str(&format!("%{b:02X}"));
                }
            }
            out
        })
        .collect::<Vec<_>>()
        .join("/")
}

impl Client {
    /// `endpoint` is `http://host:port` (a bare `host:port` gets `http://`).
    pub fn new(endpoint: &str) -> Result<Self, Error> {
        let base = if endpoint.contains("://") {
            endpoint.trim_end_matches('/').to_string()
        } else {
            format!("http://{}", endpoint.trim_end_matches('/'))
        };
        reqwest::Url::parse(&base).map_err(|e| Error::Endpoint(endpoint.into(), e.to_string()))?;
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(30))
            .build()?;
        Ok(Self {
            http,
            base,
            key: None,
        })
    }

    /// Sends `Authorization: Bearer <key>` with every request.
    pub fn with_key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    pub fn endpoint(&self) -> &str {
        &self.base
    }

    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let rb = self
            .http
            .request(method, format!("{}/api/v1/{}", self.base, path));
        match &self.key {
            Some(k) => rb.bearer_auth(k),
            None => rb,
        }
    }

    async fn send<T: DeserializeOwned>(&self, rb: reqwest::RequestBuilder) -> Result<T, Error> {
        let resp = rb.send().await?;
        let status = resp.status();
        let bytes = resp.bytes().await?;
        if status.is_success() {
            return serde_json::from_slice(&bytes).map_err(|_| Error::Unexpected {
                status,
                body: String::from_utf8_lossy(&bytes).into_owned(),
            });
        }
        match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(body) => Err(Error::Api { status, body }),
            Err(_) => Err(Error::Unexpected {
                status,
                body: String::from_utf8_lossy(&bytes).into_owned(),
            }),
        }
    }

    pub async fn put(&self, key: &str, value: &Value) -> Result<PutResponse, Error> {
        self.put_with(
            key,
            &PutRequest {
                value: value.clone(),
                lease: None,
            },
            None,
        )
        .await
    }

    /// A put with every option: a lease, and an idempotency key so a retry applies once.
    pub async fn put_with(
        &self,
        key: &str,
        body: &PutRequest,
        idempotency_key: Option<&str>,
    ) -> Result<PutResponse, Error> {
        let mut rb = self
            .request(Method::PUT, &format!("kv/{}", key_path(key)))
            .json(body);
        if let Some(ik) = idempotency_key {
            rb = rb.header("Idempotency-Key", ik);
        }
        self.send(rb).await
    }

    /// A linearizable get; `Ok(None)` when the key does not exist.
    pub async fn get(&self, key: &str) -> Result<Option<GetResponse>, Error> {
        self.get_with(key, Consistency::Linearizable).await
    }

    pub async fn get_with(
        &self,
        key: &str,
        consistency: Consistency,
    ) -> Result<Option<GetResponse>, Error> {
        let rb = self
            .request(Method::GET, &format!("kv/{}", key_path(key)))
            .query(&[("consistency", consistency.as_str())]);
        match self.send(rb).await {
            Err(e) if e.code() == Some("key_not_found") => Ok(None),
            other => other.map(Some),
        }
    }

    pub async fn delete(&self, key: &str) -> Result<DeleteResponse, Error> {
        self.send(self.request(Method::DELETE, &format!("kv/{}", key_path(key))))
            .await
    }

    /// Keys under `prefix`, strictly after `after`, at most `limit` of them.
    pub async fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: Option<usize>,
        consistency: Consistency,
    ) -> Result<ListResponse, Error> {
        let mut q: Vec<(&str, String)> = vec![
            ("prefix", prefix.to_string()),
            ("consistency", consistency.as_str().to_string()),
        ];
        if let Some(a) = after {
            q.push(("after", a.to_string()));
        }
        if let Some(l) = limit {
            q.push(("limit", l.to_string()));
        }
        self.send(self.request(Method::GET, "kv").query(&q)).await
    }

    pub async fn health(&self) -> Result<HealthResponse, Error> {
        self.send(self.request(Method::GET, "health")).await
    }

    /// Readiness; a 503 "not ready" answer is returned as `Ok` with `ready: false`.
    pub async fn ready(&self) -> Result<ReadyResponse, Error> {
        let resp = self.request(Method::GET, "ready").send().await?;
        let status = resp.status();
        let bytes = resp.bytes().await?;
        serde_json::from_slice(&bytes).map_err(|_| Error::Unexpected {
            status,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        })
    }

    pub async fn status(&self) -> Result<ClusterStatus, Error> {
        self.send(self.request(Method::GET, "cluster/status")).await
    }

    /// Any call by path, for routes without a typed method yet.
    pub async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, Error> {
        let mut rb = self.request(method, path);
        if let Some(b) = body {
            rb = rb.json(b);
        }
        self.send(rb).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_paths_keep_slashes_and_escape_the_rest() {
        assert_eq!(key_path("agents/a17/state"), "agents/a17/state");
        assert_eq!(key_path("a b/ü?#"), "a%20b/%C3%BC%3F%23");
    }

    #[test]
    fn endpoints_get_a_scheme() {
        assert_eq!(
            Client::new("node1:4100").unwrap().endpoint(),
            "http://node1:4100"
        );
        assert_eq!(Client::new("http://x:1/").unwrap().endpoint(), "http://x:1");
    }
}
