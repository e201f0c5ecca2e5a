//! The client: endpoints, leader discovery, retries with backoff and idempotency keys, and the
//! key-value and cluster routes. Leases, locks, elections, watches and membership live in their
//! own modules as further `impl Client` blocks.

use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use backon::ExponentialBuilder;
use backon::Retryable;
use reqwest::Method;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::Error;
use crate::types::*;

/// How long an idle connection stays in the pool: below a node's default header timeout.
const POOL_IDLE: std::time::Duration = std::time::Duration::from_secs(5);
/// How failed calls are retried. Only failures that [`Error::is_retryable`] are retried, and
/// writes carry an `Idempotency-Key` (the same on every attempt) so a retry applies once. A
/// node that answers `overloaded` names a pause (`Retry-After`): the next attempt waits at
/// least that long.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts after the first one; 0 disables retries.
    pub max_retries: usize,
    pub min_delay: Duration,
    pub max_delay: Duration,
    /// Bound on the sum of the waits between attempts.
    pub max_total_delay: Duration,
}

impl Default for RetryPolicy {
    /// 50 ms doubling to 1 s with jitter, at most 15 s of waiting (and 25 retries): enough to
    /// ride out a leader election (well under 3 s) and a node restart. The waiting time is
    /// the real bound; the count only stops a pathological loop.
    fn default() -> Self {
        Self {
            max_retries: 25,
            min_delay: Duration::from_millis(50),
            max_delay: Duration::from_secs(1),
            max_total_delay: Duration::from_secs(15),
        }
    }
}

impl RetryPolicy {
    /// Every failure is returned at once.
    pub fn none() -> Self {
        Self {
            max_retries: 0,
            ..Self::default()
        }
    }

    pub(crate) fn backoff(&self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_jitter()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .with_max_times(self.max_retries)
            .with_total_delay(Some(self.max_total_delay))
    }
}

/// Endpoints shared by every clone of a client: the one in use moves on failure and to the
/// leader when a node names it.
#[derive(Debug)]
struct Endpoints {
    list: Vec<String>,
    current: usize,
}

/// A client of a Concordance cluster. Cheap to clone; clones share the endpoint state.
///
/// [`Client::new`] talks to one endpoint, never another, and returns every failure as is
/// (what a test of one node wants). [`Client::builder`] / [`Client::connect`] take several
/// endpoints, follow the leader, retry with backoff, and give every write a generated
/// `Idempotency-Key`.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    endpoints: Arc<Mutex<Endpoints>>,
    key: Option<Arc<str>>,
    pub(crate) retry: RetryPolicy,
    auto_idempotency: bool,
    follow_leader: bool,
    request_timeout: Duration,
    /// Every endpoint's scheme: a leader is followed only within it.
    scheme: Scheme,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key is a secret: never printed.
        f.debug_struct("Client")
            .field("endpoints", &self.endpoints())
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

/// Builds a [`Client`]: endpoints, key, retry policy, timeouts.
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    endpoints: Vec<String>,
    key: Option<String>,
    retry: RetryPolicy,
    auto_idempotency: bool,
    follow_leader: bool,
    connect_timeout: Duration,
    request_timeout: Duration,
    /// PEM CA certificates the nodes' certificates must chain to (instead of the system's).
    ca_pem: Option<Vec<u8>>,
    /// PEM client certificate and its key, for nodes that ask for one (`--tls-client-ca`).
    identity_pem: Option<Vec<u8>>,
    /// Host names reached at a given address instead of through DNS.
    resolve: Vec<(String, std::net::SocketAddr)>,
}

impl Default for ClientBuilder {
    fn default() -> Self {
        Self {
            endpoints: Vec::new(),
            key: None,
            retry: RetryPolicy::default(),
            auto_idempotency: true,
            follow_leader: true,
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(30),
            ca_pem: None,
            identity_pem: None,
            resolve: Vec::new(),
        }
    }
}

impl ClientBuilder {
    /// Adds an endpoint: `http://host:port` or a bare `host:port`.
    pub fn endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoints.push(endpoint.into());
        self
    }

    pub fn endpoints<I, S>(mut self, endpoints: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.endpoints.extend(endpoints.into_iter().map(Into::into));
        self
    }

    /// Sends `Authorization: Bearer <key>` with every request.
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Whether writes without an explicit idempotency key get a generated one (default on).
    pub fn auto_idempotency(mut self, on: bool) -> Self {
        self.auto_idempotency = on;
        self
    }

    /// Whether a node naming the leader (or failing) moves the client to another endpoint
    /// (default on). Off, every call goes to the endpoint in use, and a serializable read
    /// always comes from that node.
    pub fn follow_leader(mut self, on: bool) -> Self {
        self.follow_leader = on;
        self
    }

    pub fn connect_timeout(mut self, t: Duration) -> Self {
        self.connect_timeout = t;
        self
    }

    /// Bound on one attempt of a call (blocking lock and campaign calls get their own wait on
    /// top; watches have none).
    pub fn request_timeout(mut self, t: Duration) -> Self {
        self.request_timeout = t;
        self
    }

    /// Trusts the nodes' certificates only if they chain to one of these PEM CA certificates
    /// (a cluster's own CA, from `concordance certs ca` or the operator's ConfigMap), instead
    /// of the system's roots. Endpoints given as `host:port` then get `https://` (as they do
    /// when another endpoint is an `https://` URL).
    pub fn ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_pem = Some(pem.into());
        self
    }

    /// [`ClientBuilder::ca_pem`] from a file.
    pub fn ca_file(self, path: impl AsRef<std::path::Path>) -> Result<Self, Error> {
        let pem = read_file(path.as_ref())?;
        Ok(self.ca_pem(pem))
    }

    /// Sends this client certificate when a node asks for one: `cert_and_key` holds the PEM
    /// certificate (chain) and its PEM private key.
    pub fn client_certificate_pem(mut self, cert_and_key: impl Into<Vec<u8>>) -> Self {
        self.identity_pem = Some(cert_and_key.into());
        self
    }

    /// [`ClientBuilder::client_certificate_pem`] from a certificate file and a key file.
    pub fn client_certificate_files(
        self,
        cert: impl AsRef<std::path::Path>,
        key: impl AsRef<std::path::Path>,
    ) -> Result<Self, Error> {
        let mut pem = read_file(cert.as_ref())?;
        pem.push(b'\n');
        pem.extend(read_file(key.as_ref())?);
        Ok(self.client_certificate_pem(pem))
    }

    /// Reaches `host` at `address` instead of looking it up, its certificate still checked
    /// for `host`: for a caller that knows a node's address but cannot resolve the name its
    /// certificate carries (the operator, which reaches members at their pod addresses).
    pub fn resolve(mut self, host: impl Into<String>, address: std::net::SocketAddr) -> Self {
        self.resolve.push((host.into(), address));
        self
    }

    pub fn build(self) -> Result<Client, Error> {
        if self.endpoints.is_empty() {
            return Err(Error::Endpoint(String::new(), "no endpoint given".into()));
        }
        let scheme = if self.ca_pem.is_some()
            || self.identity_pem.is_some()
            || self
                .endpoints
                .iter()
                .any(|e| e.trim().starts_with("https://"))
        {
            Scheme::Https
        } else {
            Scheme::Http
        };
        let list = self
            .endpoints
            .iter()
            .map(|e| normalize_as(e, scheme))
            .collect::<Result<Vec<_>, _>>()?;
        let scheme = Scheme::of(&list[0]);
        if let Some(other) = list.iter().find(|e| Scheme::of(e) != scheme) {
            return Err(Error::Endpoint(
                other.clone(),
                format!("every endpoint must use {}://", scheme.as_str()),
            ));
        }
        // No client-wide timeout: it would cut watch streams. Each call sets its own.
        let mut http = reqwest::Client::builder()
            .connect_timeout(self.connect_timeout)
            // A node closes a connection idle for its header timeout (10 s by default); one
            // closed by us first is never reused at the moment the node closes it.
            .pool_idle_timeout(POOL_IDLE)
            // Leaders are followed by the client itself, within one scheme.
            .redirect(reqwest::redirect::Policy::none());
        if let Some(pem) = &self.ca_pem {
            let certificates = reqwest::Certificate::from_pem_bundle(pem).map_err(Error::Tls)?;
            if certificates.is_empty() {
                return Err(Error::TlsFiles("the CA PEM holds no certificate".into()));
            }
            http = http.tls_built_in_root_certs(false);
            for certificate in certificates {
                http = http.add_root_certificate(certificate);
            }
        }
        if let Some(pem) = &self.identity_pem {
            http = http.identity(reqwest::Identity::from_pem(pem).map_err(Error::Tls)?);
        }
        for (host, address) in &self.resolve {
            http = http.resolve(host, *address);
        }
        let http = http.build()?;
        Ok(Client {
            http,
            endpoints: Arc::new(Mutex::new(Endpoints { list, current: 0 })),
            scheme,
            key: self.key.map(Into::into),
            retry: self.retry,
            auto_idempotency: self.auto_idempotency,
            follow_leader: self.follow_leader,
            request_timeout: self.request_timeout,
        })
    }
}

/// `http` or `https`: a client uses one for every node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scheme {
    Http,
    Https,
}

impl Scheme {
    fn of(base: &str) -> Self {
        if base.starts_with("https://") {
            Scheme::Https
        } else {
            Scheme::Http
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

fn read_file(path: &std::path::Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|e| Error::TlsFiles(format!("cannot read {}: {e}", path.display())))
}

/// `<scheme>://host:port` without a trailing slash; a bare `host:port` gets `scheme`.
pub(crate) fn normalize_as(endpoint: &str, scheme: Scheme) -> Result<String, Error> {
    let endpoint = endpoint.trim();
    let base = if endpoint.contains("://") {
        endpoint.trim_end_matches('/').to_string()
    } else {
        format!("{}://{}", scheme.as_str(), endpoint.trim_end_matches('/'))
    };
    if !(base.starts_with("http://") || base.starts_with("https://")) {
        return Err(Error::Endpoint(
            endpoint.into(),
            "use http:// or https://".into(),
        ));
    }
    let url =
        reqwest::Url::parse(&base).map_err(|e| Error::Endpoint(endpoint.into(), e.to_string()))?;
    if url.host_str().is_none() {
        return Err(Error::Endpoint(endpoint.into(), "no host".into()));
    }
    Ok(base)
}

/// Path segments of a key, each percent-encoded, joined with `/`.
pub(crate) fn key_path(key: &str) -> String {
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

/// One logical call: sent once, or again (same body, same idempotency key) on retry.
#[derive(Debug, Clone)]
pub(crate) struct Call {
    pub method: Method,
    pub path: String,
    pub query: Vec<(&'static str, String)>,
    pub body: Option<Vec<u8>>,
    /// Changes state: gets an idempotency key when the client adds them.
    pub write: bool,
    pub idempotency_key: Option<String>,
    /// Extra time on top of the request timeout (for calls that wait on the server).
    pub extra_wait: Duration,
}

impl Call {
    pub fn new(method: Method, path: impl Into<String>) -> Self {
        let write = method != Method::GET;
        Self {
            method,
            path: path.into(),
            query: Vec::new(),
            body: None,
            write,
            idempotency_key: None,
            extra_wait: Duration::ZERO,
        }
    }

    pub fn get(path: impl Into<String>) -> Self {
        Self::new(Method::GET, path)
    }

    pub fn post(path: impl Into<String>) -> Self {
        Self::new(Method::POST, path)
    }

    pub fn json<B: Serialize + ?Sized>(mut self, body: &B) -> Self {
        self.body = Some(serde_json::to_vec(body).expect("request bodies serialize"));
        self
    }

    pub fn query(mut self, name: &'static str, value: impl ToString) -> Self {
        self.query.push((name, value.to_string()));
        self
    }

    pub fn idempotency_key(mut self, key: Option<&str>) -> Self {
        self.idempotency_key = key.map(str::to_string);
        self
    }

    pub fn wait(mut self, extra: Duration) -> Self {
        self.extra_wait = extra;
        self
    }
}

impl Client {
    /// One endpoint and only that one (a leader named in an answer is not followed), no
    /// retries, no generated idempotency keys: every failure is returned as the server (or
    /// the network) gave it. `endpoint` is `http://host:port` or `host:port`.
    pub fn new(endpoint: &str) -> Result<Self, Error> {
        Self::single_endpoint(endpoint).build()
    }

    /// What [`Client::new`] builds, as a builder, to add TLS settings to.
    pub fn single_endpoint(endpoint: impl Into<String>) -> ClientBuilder {
        Self::builder()
            .endpoint(endpoint)
            .retry(RetryPolicy::none())
            .auto_idempotency(false)
            .follow_leader(false)
    }

    /// Several endpoints with leader discovery, retries and generated idempotency keys.
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    /// [`Client::builder`] with these endpoints and the default retry policy.
    pub fn connect<I, S>(endpoints: I) -> Result<Self, Error>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::builder().endpoints(endpoints).build()
    }

    /// Sends `Authorization: Bearer <key>` with every request.
    pub fn with_key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into().into());
        self
    }

    /// Replaces the retry policy of this handle (clones made before keep theirs).
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// The endpoint calls go to now.
    pub fn endpoint(&self) -> String {
        let e = self.endpoints.lock().expect("endpoint lock");
        e.list[e.current].clone()
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.endpoints.lock().expect("endpoint lock").list.clone()
    }

    /// Moves on to the next endpoint (after a failure of `failed`, unless another call already
    /// moved on).
    pub(crate) fn rotate_from(&self, failed: &str) {
        let mut e = self.endpoints.lock().expect("endpoint lock");
        if e.list[e.current] == failed {
            e.current = (e.current + 1) % e.list.len();
        }
    }

    /// Makes `address` (a leader named by a node) the endpoint in use, adding it if new.
    /// A client that does not follow the leader stays where it is.
    pub(crate) fn prefer(&self, address: &str) {
        if !self.follow_leader {
            return;
        }
        // Never to another scheme: a node cannot move a TLS client onto plaintext. (The name
        // is checked against the certificate by the TLS handshake itself.)
        let Ok(base) = normalize_as(address, self.scheme) else {
            return;
        };
        if Scheme::of(&base) != self.scheme {
            return;
        }
        let mut e = self.endpoints.lock().expect("endpoint lock");
        match e.list.iter().position(|x| *x == base) {
            Some(i) => e.current = i,
            None => {
                e.list.push(base);
                e.current = e.list.len() - 1;
            }
        }
    }

    pub(crate) fn request(
        &self,
        base: &str,
        method: Method,
        path: &str,
    ) -> reqwest::RequestBuilder {
        let rb = self.http.request(method, format!("{base}/api/v1/{path}"));
        match &self.key {
            Some(k) => rb.bearer_auth(k),
            None => rb,
        }
    }

    /// One attempt on the current endpoint; moves the endpoint on when it failed in a way
    /// another node may not.
    async fn attempt<T: DeserializeOwned>(&self, call: &Call) -> Result<T, Error> {
        let base = self.endpoint();
        let mut rb = self
            .request(&base, call.method.clone(), &call.path)
            .timeout(self.request_timeout + call.extra_wait);
        if !call.query.is_empty() {
            rb = rb.query(&call.query);
        }
        if let Some(body) = &call.body {
            rb = rb
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.clone());
        }
        if let Some(ik) = &call.idempotency_key {
            rb = rb.header("Idempotency-Key", ik);
        }
        let result = match rb.send().await {
            Ok(resp) => decode(resp).await,
            Err(e) => Err(Error::Transport(e)),
        };
        if let Err(e) = &result
            && self.follow_leader
        {
            if let Some(leader) = e.leader_address() {
                self.prefer(leader);
            } else if e.error_code() == Some(ErrorCode::NotLeader) && self.retry.max_retries > 0 {
                // A node that knows it does not lead but not who does: ask the others.
                if self.discover_leader().await.is_none() {
                    self.rotate_from(&base);
                }
            } else if e.is_retryable() {
                self.rotate_from(&base);
            }
        }
        result
    }

    /// Runs a call under the retry policy.
    pub(crate) async fn execute<T: DeserializeOwned>(&self, mut call: Call) -> Result<T, Error> {
        if call.write && call.idempotency_key.is_none() && self.auto_idempotency {
            call.idempotency_key = Some(uuid::Uuid::new_v4().to_string());
        }
        if self.retry.max_retries == 0 {
            return self.attempt(&call).await;
        }
        // Without a key a write that failed mid-flight may have applied: only retry it when
        // it surely never reached a node.
        let keyed = !call.write || call.idempotency_key.is_some();
        (|| self.attempt::<T>(&call))
            .retry(self.retry.backoff())
            .sleep(tokio::time::sleep)
            .when(|e| {
                e.is_retryable() && (keyed || matches!(e, Error::Transport(t) if t.is_connect()))
            })
            // A node that asked for a pause (`overloaded`, `Retry-After`) gets at least that.
            .adjust(|e, delay| match (delay, e.retry_after()) {
                (Some(d), Some(asked)) => Some(d.max(asked)),
                (d, _) => d,
            })
            // Even after a node named the leader, wait the backoff delay: during an election
            // followers still name the dead leader, and going back and forth at once would
            // spend every retry before a new one is elected.
            .await
    }

    /// Any call by path (under `/api/v1/`), for routes without a typed method.
    pub async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, Error> {
        let mut call = Call::new(method, path);
        if let Some(b) = body {
            call = call.json(b);
        }
        self.execute(call).await
    }

    // -----------------------------------------------------------------------------------------
    // Keys
    // -----------------------------------------------------------------------------------------

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

    /// A put attached to a lease: the key goes when the lease ends.
    pub async fn put_leased(
        &self,
        key: &str,
        value: &Value,
        lease: u64,
    ) -> Result<PutResponse, Error> {
        self.put_with(
            key,
            &PutRequest {
                value: value.clone(),
                lease: Some(lease),
            },
            None,
        )
        .await
    }

    /// A put with every option: a lease, and an idempotency key of the caller's (one is
    /// generated when not given and the client adds them).
    pub async fn put_with(
        &self,
        key: &str,
        body: &PutRequest,
        idempotency_key: Option<&str>,
    ) -> Result<PutResponse, Error> {
        self.execute(
            Call::new(Method::PUT, format!("kv/{}", key_path(key)))
                .json(body)
                .idempotency_key(idempotency_key),
        )
        .await
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
        let call =
            Call::get(format!("kv/{}", key_path(key))).query("consistency", consistency.as_str());
        match self.execute(call).await {
            Err(e) if e.error_code() == Some(ErrorCode::KeyNotFound) => Ok(None),
            other => other.map(Some),
        }
    }

    pub async fn delete(&self, key: &str) -> Result<DeleteResponse, Error> {
        self.delete_with(key, None).await
    }

    pub async fn delete_with(
        &self,
        key: &str,
        idempotency_key: Option<&str>,
    ) -> Result<DeleteResponse, Error> {
        self.execute(
            Call::new(Method::DELETE, format!("kv/{}", key_path(key)))
                .idempotency_key(idempotency_key),
        )
        .await
    }

    /// One page: keys under `prefix`, strictly after `after`, at most `limit` of them.
    pub async fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: Option<usize>,
        consistency: Consistency,
    ) -> Result<ListResponse, Error> {
        let mut call = Call::get("kv")
            .query("prefix", prefix)
            .query("consistency", consistency.as_str());
        if let Some(a) = after {
            call = call.query("after", a);
        }
        if let Some(l) = limit {
            call = call.query("limit", l);
        }
        self.execute(call).await
    }

    /// Every key under `prefix`, fetched `page_size` at a time. Each page is read at its own
    /// revision: a key changed meanwhile shows as it was when its page was read.
    pub async fn list_all(
        &self,
        prefix: &str,
        page_size: usize,
        consistency: Consistency,
    ) -> Result<Vec<KeyValue>, Error> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self
                .list(prefix, after.as_deref(), Some(page_size), consistency)
                .await?;
            out.extend(page.kvs);
            match (page.more, page.next) {
                (true, Some(next)) => after = Some(next),
                (true, None) => {
                    after = out.last().map(|kv| kv.key.clone());
                    if after.is_none() {
                        break;
                    }
                }
                (false, _) => break,
            }
        }
        Ok(out)
    }

    /// An atomic transaction (see [`crate::Txn`] for a builder).
    pub async fn txn(&self, txn: &TxnRequest) -> Result<TxnResponse, Error> {
        self.execute(Call::post("txn").json(txn)).await
    }

    pub async fn txn_with(
        &self,
        txn: &TxnRequest,
        idempotency_key: Option<&str>,
    ) -> Result<TxnResponse, Error> {
        self.execute(Call::post("txn").json(txn).idempotency_key(idempotency_key))
            .await
    }

    // -----------------------------------------------------------------------------------------
    // Probes and status
    // -----------------------------------------------------------------------------------------

    pub async fn health(&self) -> Result<HealthResponse, Error> {
        self.execute(Call::get("health")).await
    }

    /// Readiness of the current endpoint; a 503 "not ready" answer is `Ok` with `ready: false`.
    pub async fn ready(&self) -> Result<ReadyResponse, Error> {
        let base = self.endpoint();
        let resp = self
            .request(&base, Method::GET, "ready")
            .timeout(self.request_timeout)
            .send()
            .await?;
        let status = resp.status();
        let bytes = resp.bytes().await?;
        serde_json::from_slice(&bytes).map_err(|_| Error::Unexpected {
            status,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        })
    }

    /// The status as the current endpoint sees it.
    pub async fn status(&self) -> Result<ClusterStatus, Error> {
        self.execute(Call::get("cluster/status")).await
    }

    /// The binary's and the cluster's versions.
    pub async fn version(&self) -> Result<VersionInfo, Error> {
        self.execute(Call::get("cluster/version")).await
    }

    /// Asks the endpoints in turn for the leader and makes it the endpoint in use (unless the
    /// client does not follow the leader); returns its address, or `None` when no endpoint
    /// knows one.
    pub async fn discover_leader(&self) -> Option<String> {
        for base in self.endpoints() {
            let resp = self
                .request(&base, Method::GET, "cluster/status")
                .timeout(self.request_timeout)
                .send()
                .await;
            let Ok(resp) = resp else { continue };
            let Ok(status) = decode::<ClusterStatus>(resp).await else {
                continue;
            };
            let address = status.leader.as_ref().and_then(|leader| {
                status
                    .members
                    .iter()
                    .find(|m| &m.node_id == leader)
                    .map(|m| m.address.clone())
            });
            if let Some(address) = address {
                self.prefer(&address);
                return normalize_as(&address, self.scheme).ok();
            }
        }
        None
    }
}

/// A success body as `T`, or the error the server answered.
pub(crate) async fn decode<T: DeserializeOwned>(resp: reqwest::Response) -> Result<T, Error> {
    let status = resp.status();
    // Seconds only: the node never sends the HTTP-date form.
    let retry_after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let bytes = resp.bytes().await?;
    if status.is_success() {
        return serde_json::from_slice(&bytes).map_err(|_| Error::Unexpected {
            status,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        });
    }
    match serde_json::from_slice::<ErrorBody>(&bytes) {
        Ok(body) => Err(Error::Api {
            status,
            body,
            retry_after,
        }),
        Err(_) => Err(Error::Unexpected {
            status,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        }),
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
        assert!(Client::new("http://").is_err());
        assert!(Client::builder().build().is_err());
    }

    #[test]
    fn a_named_leader_becomes_the_endpoint_in_use() {
        let c = Client::connect(["a:1", "b:2"]).unwrap();
        c.prefer("b:2");
        assert_eq!(c.endpoint(), "http://b:2");
        c.prefer("http://c:3");
        assert_eq!(c.endpoints().len(), 3);
        assert_eq!(c.endpoint(), "http://c:3");
        c.rotate_from("http://c:3");
        assert_eq!(c.endpoint(), "http://a:1");
        // A stale failure report does not move the endpoint again.
        c.rotate_from("http://c:3");
        assert_eq!(c.endpoint(), "http://a:1");
    }

    #[test]
    fn a_single_endpoint_client_stays_on_its_node() {
        // A serializable read through it must come from that node, even after an answer
        // that named the leader.
        let c = Client::new("a:1").unwrap();
        c.prefer("b:2");
        assert_eq!(c.endpoint(), "http://a:1");
        assert_eq!(c.endpoints(), vec!["http://a:1".to_string()]);
        let pinned = Client::builder()
            .endpoints(["a:1", "b:2"])
            .follow_leader(false)
            .build()
            .unwrap();
        pinned.prefer("http://c:3");
        assert_eq!(pinned.endpoint(), "http://a:1");
    }

    #[test]
    fn a_tls_client_follows_leaders_only_over_tls() {
        let c = Client::builder()
            .endpoints(["https://a:1", "b:2"])
            .build()
            .unwrap();
        // A bare endpoint takes the client's scheme.
        assert_eq!(c.endpoints(), vec!["https://a:1", "https://b:2"]);
        c.prefer("c:3");
        assert_eq!(c.endpoint(), "https://c:3");
        // A node naming a plaintext address cannot move it off TLS.
        c.prefer("http://d:4");
        assert_eq!(c.endpoint(), "https://c:3");
        assert_eq!(c.endpoints().len(), 3);

        let mixed = Client::builder()
            .endpoints(["https://a:1", "http://b:2"])
            .build()
            .unwrap_err();
        assert!(
            mixed
                .to_string()
                .contains("every endpoint must use https://"),
            "{mixed}"
        );
        let not_pem = Client::builder()
            .endpoint("a:1")
            .ca_pem(b"not a certificate".to_vec())
            .build()
            .unwrap_err();
        assert!(not_pem.to_string().starts_with("TLS: "), "{not_pem}");
        assert!(
            Client::builder()
                .endpoint("a:1")
                .ca_file("/nonexistent/ca.crt")
                .is_err()
        );
    }

    #[test]
    fn debug_output_hides_the_key() {
        let c = Client::new("a:1").unwrap().with_key("s3cret");
        assert!(!format!("{c:?}").contains("s3cret"));
    }
}
