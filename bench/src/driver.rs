//! The two systems' HTTP APIs, driven with identical payloads: Concordance's `/api/v1/kv`
//! and etcd's JSON gateway (`/v3/kv/put`, `/v3/kv/range`, base64 keys and values).

use std::time::Duration;

use anyhow::Context;
use anyhow::bail;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;

/// Which system the endpoints belong to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum System {
    Concordance,
    Etcd,
}

impl System {
    pub fn name(self) -> &'static str {
        match self {
            System::Concordance => "concordance",
            System::Etcd => "etcd",
        }
    }
}

/// What one request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Put,
    Get { linearizable: bool },
}

/// Payload shape shared by both systems.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Payload {
    /// Bytes per key (keys are lowercase hex of the key's number, zero-padded).
    pub key_bytes: usize,
    /// Bytes per value as stored: raw bytes for etcd, the JSON text of a string for Concordance.
    pub value_bytes: usize,
    /// Number of distinct keys written and read.
    pub key_space: u64,
}

impl Payload {
    pub fn key(&self, n: u64) -> String {
        let hex = format!("{n:x}");
        if hex.len() >= self.key_bytes {
            hex
        } else {
            format!("{}{hex}", "0".repeat(self.key_bytes - hex.len()))
        }
    }
}

/// Prepared requests for one system: every key's URL and body built once, so the generator
/// spends its CPU on sending, the same way for both systems.
pub struct Driver {
    pub system: System,
    http: reqwest::Client,
    endpoints: Vec<String>,
    api_key: Option<String>,
    /// Per key: (path part of the Concordance URL, etcd put body, etcd range bodies).
    keys: Vec<PreparedKey>,
    concordance_put_body: Bytes,
}

struct PreparedKey {
    /// Concordance: `/api/v1/kv/<key>`.
    path: String,
    /// etcd: the bodies of a put and of both kinds of range (built only for etcd).
    etcd: Option<EtcdBodies>,
}

struct EtcdBodies {
    put: Bytes,
    range_linearizable: Bytes,
    range_serializable: Bytes,
}

/// `host:port` or a URL, as a base URL without a trailing slash.
pub fn base_url(endpoint: &str) -> String {
    let e = endpoint.trim_end_matches('/');
    if e.contains("://") {
        e.to_string()
    } else {
        format!("http://{e}")
    }
}

impl Driver {
    pub fn new(
        system: System,
        endpoints: &[String],
        api_key: Option<String>,
        payload: Payload,
        max_clients: usize,
    ) -> anyhow::Result<Self> {
        Self::with_ca(system, endpoints, api_key, payload, max_clients, None)
    }

    /// [`Driver::new`] for `https://` endpoints whose certificates `ca` signed.
    pub fn with_ca(
        system: System,
        endpoints: &[String],
        api_key: Option<String>,
        payload: Payload,
        max_clients: usize,
        ca: Option<reqwest::Certificate>,
    ) -> anyhow::Result<Self> {
        if endpoints.is_empty() {
            bail!("no endpoints given");
        }
        let mut http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(max_clients.max(1))
            .tcp_nodelay(true);
        if let Some(ca) = ca {
            http = http.tls_built_in_root_certs(false).add_root_certificate(ca);
        }
        let http = http.build()?;
        // A JSON string of `value_bytes` bytes: quotes plus that many characters less two.
        let text = "v".repeat(payload.value_bytes.saturating_sub(2));
        let concordance_put_body =
            Bytes::from(serde_json::to_vec(&serde_json::json!({ "value": text }))?);
        let value_b64 = B64.encode(vec![b'v'; payload.value_bytes]);
        let keys = (0..payload.key_space)
            .map(|n| {
                let key = payload.key(n);
                let k64 = B64.encode(key.as_bytes());
                PreparedKey {
                    path: format!("/api/v1/kv/{key}"),
                    etcd: (system == System::Etcd).then(|| EtcdBodies {
                        put: Bytes::from(format!(r#"{{"key":"{k64}","value":"{value_b64}"}}"#)),
                        range_linearizable: Bytes::from(format!(r#"{{"key":"{k64}"}}"#)),
                        range_serializable: Bytes::from(format!(
                            r#"{{"key":"{k64}","serializable":true}}"#
                        )),
                    }),
                }
            })
            .collect();
        Ok(Self {
            system,
            http,
            endpoints: endpoints.iter().map(|e| base_url(e)).collect(),
            api_key,
            keys,
            concordance_put_body,
        })
    }

    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    pub fn key_space(&self) -> u64 {
        self.keys.len() as u64
    }

    /// Sends one request for key number `key` to endpoint number `endpoint`; `Ok` only for an
    /// answer that says the operation succeeded (a get must find the key).
    pub async fn call(&self, endpoint: usize, op: Op, key: u64) -> anyhow::Result<()> {
        let base = &self.endpoints[endpoint % self.endpoints.len()];
        let k = &self.keys[(key % self.key_space()) as usize];
        let rb = match (self.system, op) {
            (System::Concordance, Op::Put) => self
                .http
                .put(format!("{base}{}", k.path))
                .header("content-type", "application/json")
                .body(self.concordance_put_body.clone()),
            (System::Concordance, Op::Get { linearizable }) => {
                let url = if linearizable {
                    format!("{base}{}", k.path)
                } else {
                    format!("{base}{}?consistency=serializable", k.path)
                };
                self.http.get(url)
            }
            (System::Etcd, op) => {
                let bodies = k.etcd.as_ref().expect("etcd bodies are built for etcd");
                let (path, body) = match op {
                    Op::Put => ("put", &bodies.put),
                    Op::Get { linearizable: true } => ("range", &bodies.range_linearizable),
                    Op::Get {
                        linearizable: false,
                    } => ("range", &bodies.range_serializable),
                };
                self.http
                    .post(format!("{base}/v3/kv/{path}"))
                    .header("content-type", "application/json")
                    .body(body.clone())
            }
        };
        let rb = match &self.api_key {
            Some(key) => rb.bearer_auth(key),
            None => rb,
        };
        let resp = rb.send().await?;
        let status = resp.status();
        let body = resp.bytes().await?;
        if !status.is_success() {
            bail!(
                "{status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(300)])
            );
        }
        // etcd's gateway answers 200 with no `kvs` for a missing key; a get must find it.
        if self.system == System::Etcd
            && matches!(op, Op::Get { .. })
            && !contains(&body, b"\"kvs\"")
        {
            bail!("etcd range found no key");
        }
        Ok(())
    }

    /// Writes every key once (so reads find them), with `clients` concurrent writers.
    pub async fn preload(self: &std::sync::Arc<Self>, clients: usize) -> anyhow::Result<()> {
        let n = self.key_space();
        let mut tasks = Vec::new();
        for c in 0..clients.max(1) as u64 {
            let d = self.clone();
            tasks.push(tokio::spawn(async move {
                let mut k = c;
                while k < n {
                    // Rewriting the same value is harmless, so a write refused during a leader
                    // change is retried a few times.
                    let mut attempt = 0;
                    while let Err(e) = d.call(c as usize, Op::Put, k).await {
                        attempt += 1;
                        if attempt == 20 {
                            return Err(e).with_context(|| format!("preloading key {k}"));
                        }
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    }
                    k += clients.max(1) as u64;
                }
                anyhow::Ok(())
            }));
        }
        for t in tasks {
            t.await??;
        }
        Ok(())
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_the_asked_size_and_values_the_same_bytes_for_both_systems() {
        let p = Payload {
            key_bytes: 8,
            value_bytes: 256,
            key_space: 100,
        };
        assert_eq!(p.key(0), "00000000");
        assert_eq!(p.key(255), "000000ff");
        let d = Driver::new(System::Concordance, &["127.0.0.1:1".into()], None, p, 1).unwrap();
        let body: serde_json::Value = serde_json::from_slice(&d.concordance_put_body).unwrap();
        assert_eq!(serde_json::to_vec(&body["value"]).unwrap().len(), 256);
        let e = Driver::new(System::Etcd, &["127.0.0.1:1".into()], None, p, 1).unwrap();
        let bodies = e.keys[5].etcd.as_ref().unwrap();
        let put: serde_json::Value = serde_json::from_slice(&bodies.put).unwrap();
        let v = B64.decode(put["value"].as_str().unwrap()).unwrap();
        assert_eq!(v.len(), 256);
        let k = B64.decode(put["key"].as_str().unwrap()).unwrap();
        assert_eq!(k, b"00000005");
    }
}
