//! TLS for clients and peers: members talk mutual TLS and know each other by certificate (a
//! key is not enough on the Raft routes), certificates from another CA, with a name outside
//! `--peer-names` or expired are refused with a reason, certificates replaced on disk are
//! served with no failed write, and what crosses the network is unreadable: a recording
//! proxy sees the token and the value in plaintext, and neither once TLS is on.
//!
//! Certificates come from `concordance certs` (the one exception, an expired certificate it
//! refuses to make, from the same library).

mod common;

use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use common::*;
use concordance_client::Client;
use concordance_client::RetryPolicy;
use serde_json::json;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;

const KEYS: &[(&str, &str)] = &[("CONCORDANCE_API_KEY", ADMIN_KEY)];
const PEER_NAMES: &str = "--peer-names=*.peers.test";

/// A CA made by `concordance certs` in its own folder, and what it signs.
struct Pki {
    dir: PathBuf,
}

fn certs(args: &[&str]) {
    let mut all = vec!["certs"];
    all.extend_from_slice(args);
    let out = run_bin(&all, &[]);
    assert!(
        out.status.success(),
        "concordance {all:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Pki {
    fn new(parent: &Path, name: &str) -> Self {
        let dir = parent.join(name);
        certs(&["ca", "--dir", dir.to_str().unwrap(), "--name", name]);
        Self { dir }
    }

    fn ca(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// A node certificate for `hosts`; `name` names its files.
    fn node(&self, name: &str, hosts: &[&str]) -> (PathBuf, PathBuf) {
        let dir = self.dir.to_str().unwrap();
        let mut args = vec!["node", "--dir", dir, "--name", name];
        for host in hosts {
            args.extend(["--host", host]);
        }
        certs(&args);
        (
            self.dir.join(format!("{name}.crt")),
            self.dir.join(format!("{name}.key")),
        )
    }

    fn client(&self, name: &str) -> (PathBuf, PathBuf) {
        certs(&[
            "client",
            "--dir",
            self.dir.to_str().unwrap(),
            "--name",
            name,
        ]);
        (
            self.dir.join(format!("{name}.crt")),
            self.dir.join(format!("{name}.key")),
        )
    }

    /// A member's certificate (127.0.0.1 and `<name>.peers.test`) that expired an hour ago.
    fn expired_node(&self, name: &str) -> (PathBuf, PathBuf) {
        let ca_key =
            rcgen::KeyPair::from_pem(&std::fs::read_to_string(self.dir.join("ca.key")).unwrap())
                .unwrap();
        let issuer =
            rcgen::Issuer::from_ca_cert_pem(&std::fs::read_to_string(self.ca()).unwrap(), ca_key)
                .unwrap();
        let mut params = rcgen::CertificateParams::new(vec![format!("{name}.peers.test")]).unwrap();
        params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap()));
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(2);
        params.not_after = now - time::Duration::hours(1);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        let (crt_path, key_path) = (
            self.dir.join(format!("{name}.crt")),
            self.dir.join(format!("{name}.key")),
        );
        std::fs::write(&crt_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (crt_path, key_path)
    }
}

/// The flags of a member serving TLS and talking mutual TLS to its peers.
fn tls_args(pki: &Pki, cert: &Path, key: &Path) -> Vec<String> {
    vec![
        format!("--tls-cert={}", cert.display()),
        format!("--tls-key={}", key.display()),
        format!("--peer-ca={}", pki.ca().display()),
        PEER_NAMES.to_string(),
    ]
}

/// Spawns `name` serving TLS with `cert` and `key`, with `--bootstrap` or `--join=<join>` and
/// the environment `env`; does not wait for it.
fn spawn_tls(
    dir: &Path,
    pki: &Pki,
    name: &str,
    (cert, key): (&Path, &Path),
    join: Option<&NodeProc>,
    env: &[(&str, &str)],
) -> NodeProc {
    let mut args = tls_args(pki, cert, key);
    args.push(match join {
        None => "--bootstrap".to_string(),
        Some(first) => format!("--join={}", first.addr()),
    });
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut node = NodeProc::start_env(name, dir, &args, env);
    node.ca = Some(pki.ca());
    node
}

/// Starts `name` with TLS (its certificate for 127.0.0.1 and `<name>.peers.test`), bootstrapping
/// or joining `join`; waits until it is ready.
async fn start_member(dir: &Path, pki: &Pki, name: &str, join: Option<&NodeProc>) -> NodeProc {
    let peer_name = format!("{name}.peers.test");
    let (cert, key) = pki.node(name, &["127.0.0.1", &peer_name]);
    let node = spawn_tls(dir, pki, name, (&cert, &key), join, KEYS);
    node.wait_ready().await;
    node
}

async fn start_cluster(dir: &Path, pki: &Pki) -> Vec<NodeProc> {
    let first = start_member(dir, pki, "node1", None).await;
    let second = start_member(dir, pki, "node2", Some(&first)).await;
    let third = start_member(dir, pki, "node3", Some(&first)).await;
    let nodes = vec![first, second, third];
    let admin = nodes[0].admin();
    eventually("three voters", WAIT, || {
        let admin = admin.clone();
        async move {
            let status = admin.status().await.ok()?;
            (status.members.iter().filter(|m| m.voter).count() == 3).then_some(())
        }
    })
    .await;
    nodes
}

/// An HTTPS client of one node, trusting `ca`, with a client certificate when given.
fn https(ca: &Path, identity: Option<(&Path, &Path)>) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(ca).unwrap()).unwrap())
        .timeout(Duration::from_secs(10));
    if let Some((cert, key)) = identity {
        let mut pem = std::fs::read(cert).unwrap();
        pem.extend(std::fs::read(key).unwrap());
        builder = builder.identity(reqwest::Identity::from_pem(&pem).unwrap());
    }
    builder.build().unwrap()
}

/// POSTs an empty vote to a Raft route: (status, body), or the transport error.
async fn raft_vote(
    node: &NodeProc,
    http: &reqwest::Client,
    key: Option<&str>,
) -> Result<(u16, String), reqwest::Error> {
    let mut rb = http.post(node.url("/api/v1/raft/vote")).body("{}");
    if let Some(key) = key {
        rb = rb.bearer_auth(key);
    }
    let resp = rb.send().await?;
    let status = resp.status().as_u16();
    Ok((status, resp.text().await.unwrap_or_default()))
}

/// The certificate a node serves to a new connection (its DER), trusting `ca`.
async fn served_certificate(node: &NodeProc, ca: &Path) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(node.addr()).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect("127.0.0.1".try_into().unwrap(), tcp)
        .await
        .unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

/// Waits until `node` serves `wanted` (DER) to a new connection.
async fn until_served(node: &NodeProc, ca: &Path, wanted: &[u8], what: &str) {
    eventually(&format!("{} serving {what}", node.name), WAIT, || async {
        (served_certificate(node, ca).await == wanted).then_some(())
    })
    .await;
}

/// When the certificate `node` serves expires, from its metrics.
async fn expiry_metric(node: &NodeProc) -> i64 {
    admin_metrics(node)
        .await
        .lines()
        .find(|l| l.starts_with("concordance_tls_certificate_expiry_timestamp_seconds "))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .expect("the expiry metric")
}

fn der_of(cert: &Path) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_file(cert)
        .unwrap()
        .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_talk_mutual_tls_and_the_raft_routes_take_only_a_members_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "cluster-ca");
    let nodes = start_cluster(dir.path(), &pki).await;

    // Replication works over mutual TLS: every member serves what the leader acknowledged.
    let admin = Client::builder()
        .endpoints(nodes.iter().map(|n| n.addr()))
        .ca_file(pki.ca())
        .unwrap()
        .api_key(ADMIN_KEY)
        .build()
        .unwrap();
    for i in 0..20 {
        admin.put(&format!("tls/{i}"), &json!(i)).await.unwrap();
    }
    for node in &nodes {
        let got = node
            .admin()
            .get("tls/19")
            .await
            .unwrap()
            .expect("replicated");
        assert_eq!(got.kv.value, json!(19), "on {}", node.name);
    }

    let node1 = &nodes[0];
    // Plaintext to a TLS port: no answer.
    let plaintext = reqwest::Client::new()
        .get(format!("http://{}/api/v1/health", node1.addr()))
        .timeout(Duration::from_secs(10))
        .send()
        .await;
    assert!(plaintext.is_err(), "plaintext was answered: {plaintext:?}");

    // The admin key is not a member's credential once peers are known by certificate.
    let (status, body) = raft_vote(node1, &https(&pki.ca(), None), Some(ADMIN_KEY))
        .await
        .unwrap();
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("member's certificate"), "{body}");

    // A certificate from the cluster's CA whose name --peer-names does not allow.
    let (cert, key) = pki.client("agent-7");
    let (status, body) = raft_vote(node1, &https(&pki.ca(), Some((&cert, &key))), None)
        .await
        .unwrap();
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("not among --peer-names"), "{body}");

    // A member's certificate from another CA: refused at the handshake, and logged.
    let other = Pki::new(dir.path(), "other-ca");
    let (cert, key) = other.node("rogue", &["127.0.0.1", "rogue.peers.test"]);
    let refused = raft_vote(node1, &https(&pki.ca(), Some((&cert, &key))), None).await;
    assert!(
        refused.is_err(),
        "a stranger's certificate was taken: {refused:?}"
    );
    eventually("the refused handshake in node1's log", WAIT, || async {
        node1
            .log_text()
            .lines()
            .any(|l| l.contains("TLS handshake refused") && l.contains("UnknownIssuer"))
            .then_some(())
    })
    .await;

    // And a member's own certificate passes the same check (the route then reads the body).
    let member = pki.dir.join("node2.crt");
    let member_key = pki.dir.join("node2.key");
    let (status, body) = raft_vote(node1, &https(&pki.ca(), Some((&member, &member_key))), None)
        .await
        .unwrap();
    assert_ne!(status, 401, "a member's certificate was refused: {body}");
    assert!((400..500).contains(&status), "{status} {body}");
}

/// How many times a node has taken changed certificate files.
fn reloads(node: &NodeProc) -> usize {
    node.log_text()
        .matches("TLS certificates changed on disk: serving the new ones")
        .count()
}

/// Waits until every node has taken one more change of its files than `before`.
async fn all_reloaded(nodes: &[NodeProc], before: &[usize], what: &str) {
    for (node, before) in nodes.iter().zip(before) {
        eventually(&format!("{} taking {what}", node.name), WAIT, || async {
            (reloads(node) > *before).then_some(())
        })
        .await;
    }
}

/// Replaces a file the way a Secret volume or a renewal tool does: whole, by a rename.
fn replace(path: &Path, bytes: &[u8]) {
    let staged = path.with_extension("staged");
    std::fs::write(&staged, bytes).unwrap();
    std::fs::rename(&staged, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_renewed_and_the_ca_rotated_on_disk_with_no_failed_write() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "cluster-ca");
    let nodes = start_cluster(dir.path(), &pki).await;
    // The trust bundle every member and client reads: the CA file itself.
    let bundle = pki.ca();

    // Two writers: one on a kept connection to node1, one opening a new connection for every
    // write to node2 (a follower: the write crosses the peers' TLS to the leader). Each new
    // connection reads the bundle as it is then.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let acknowledged = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let acknowledged_keys = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut writers = Vec::new();
    for (writer, node) in [(0, &nodes[0]), (1, &nodes[1])] {
        let (stop, acknowledged, failures) = (stop.clone(), acknowledged.clone(), failures.clone());
        let acknowledged_keys = acknowledged_keys.clone();
        let endpoint = format!("https://{}", node.addr());
        let bundle = bundle.clone();
        writers.push(tokio::spawn(async move {
            let connect = || {
                Client::builder()
                    .endpoint(&endpoint)
                    .ca_file(&bundle)
                    .unwrap()
                    .api_key(ADMIN_KEY)
                    .retry(RetryPolicy::none())
                    .build()
                    .unwrap()
            };
            let kept = connect();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let client = if writer == 0 { kept.clone() } else { connect() };
                let key = format!("w{writer}/{i}");
                match client.put(&key, &json!(i)).await {
                    Ok(_) => {
                        acknowledged_keys.lock().unwrap().push(key);
                        acknowledged.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => failures.lock().unwrap().push(format!("{key}: {e}")),
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }));
    }
    let floor = |what: &str, since: usize| {
        let now = acknowledged.load(Ordering::Relaxed);
        assert!(
            now >= since + 20,
            "only {} writes acknowledged {what}",
            now - since
        );
        now
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut count = floor("before any change", 0);

    // 1. Renewal: each member's certificate and key replaced by new ones from the same CA
    // (the key first, so a member may read a pair that does not match for a moment).
    let renew = |node: &NodeProc, issuer: &Pki, suffix: &str| {
        let issued = format!("{}-{suffix}", node.name);
        let (cert, key) = issuer.node(
            &issued,
            &["127.0.0.1", &format!("{}.peers.test", node.name)],
        );
        let current = pki.dir.join(&node.name);
        replace(
            &current.with_extension("key"),
            &std::fs::read(&key).unwrap(),
        );
        replace(
            &current.with_extension("crt"),
            &std::fs::read(&cert).unwrap(),
        );
        der_of(&cert)
    };
    for node in &nodes {
        let served_until = expiry_metric(node).await;
        let wanted = renew(node, &pki, "renewed");
        let started = Instant::now();
        until_served(node, &bundle, &wanted, "its renewed certificate").await;
        // The renewed certificate was issued later for as long: its expiry is later.
        eventually(
            &format!("{}'s expiry metric moving", node.name),
            WAIT,
            || async { (expiry_metric(node).await > served_until).then_some(()) },
        )
        .await;
        println!(
            "{} serves its renewed certificate after {:?}",
            node.name,
            started.elapsed()
        );
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    count = floor("after the renewal", count);

    // 2. CA rotation. First every member and client trusts the old and the new CA ...
    let new_ca = Pki::new(dir.path(), "new-ca");
    let old_ca_pem = std::fs::read(pki.ca()).unwrap();
    let new_ca_pem = std::fs::read(new_ca.ca()).unwrap();
    let before: Vec<usize> = nodes.iter().map(reloads).collect();
    replace(&bundle, &[old_ca_pem.clone(), new_ca_pem.clone()].concat());
    all_reloaded(&nodes, &before, "the two-CA bundle").await;
    // ... then each member gets a certificate from the new CA ...
    for node in &nodes {
        let wanted = renew(node, &new_ca, "new-ca");
        until_served(node, &bundle, &wanted, "its new CA's certificate").await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    count = floor("with certificates from the new CA", count);
    // ... and last the old CA is dropped.
    let before: Vec<usize> = nodes.iter().map(reloads).collect();
    replace(&bundle, &new_ca_pem);
    all_reloaded(&nodes, &before, "the new CA alone").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    floor("with the old CA dropped", count);

    // A certificate from the old CA is now a stranger's: refused at the handshake.
    let (cert, key) = pki.node("old-member", &["127.0.0.1", "old-member.peers.test"]);
    let refused = raft_vote(&nodes[0], &https(&bundle, Some((&cert, &key))), None).await;
    assert!(
        refused.is_err(),
        "the old CA's certificate was taken: {refused:?}"
    );

    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.unwrap();
    }
    let failures = failures.lock().unwrap().clone();
    let total = acknowledged.load(Ordering::Relaxed);
    println!("{total} writes acknowledged, {} failed", failures.len());
    assert!(
        failures.is_empty(),
        "writes failed across the rotation: {failures:?}"
    );
    // New connections between members after the rotation: a fourth member with a
    // certificate from the new CA joins and catches up.
    let node4 = start_member(dir.path(), &new_ca, "node4", Some(&nodes[0])).await;
    let newest = acknowledged_keys.lock().unwrap().last().cloned().unwrap();
    eventually("node4 holding the last acknowledged write", WAIT, || {
        let (client, newest) = (node4.admin(), newest.clone());
        async move { client.get(&newest).await.ok().flatten().map(|_| ()) }
    })
    .await;

    // Every acknowledged write reads back, through a client trusting the new CA alone.
    let admin = nodes[2].admin();
    let mut stored = std::collections::HashSet::new();
    for writer in 0..2 {
        let listed = admin
            .list_all(&format!("w{writer}/"), 500, Default::default())
            .await
            .unwrap();
        stored.extend(listed.into_iter().map(|kv| kv.key));
    }
    let acknowledged_keys = acknowledged_keys.lock().unwrap().clone();
    let lost: Vec<&String> = acknowledged_keys
        .iter()
        .filter(|k| !stored.contains(*k))
        .collect();
    assert!(lost.is_empty(), "acknowledged writes missing: {lost:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_and_mismatched_certificates_are_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "cluster-ca");

    // A node refuses to start on an expired certificate of its own, or a key of another one.
    let (expired, expired_key) = pki.expired_node("expired");
    let mut node = spawn_tls(
        dir.path(),
        &pki,
        "expired",
        (&expired, &expired_key),
        None,
        KEYS,
    );
    assert!(!node.wait_exit(WAIT).success());
    let log = node.log_text();
    assert!(log.contains("expired.crt is valid from"), "{log}");
    assert!(log.contains("not now"), "{log}");

    let (good, _) = pki.node("good", &["127.0.0.1", "good.peers.test"]);
    let (_, other_key) = pki.node("other", &["127.0.0.1", "other.peers.test"]);
    let mut node = spawn_tls(
        dir.path(),
        &pki,
        "mismatched",
        (&good, &other_key),
        None,
        KEYS,
    );
    assert!(!node.wait_exit(WAIT).success());
    let log = node.log_text();
    assert!(log.contains("does not go with"), "{log}");

    // A running member refuses an expired peer certificate at the handshake, saying why.
    let node = start_member(dir.path(), &pki, "node1", None).await;
    let (cert, key) = pki.expired_node("expired-peer");
    let refused = raft_vote(&node, &https(&pki.ca(), Some((&cert, &key))), None).await;
    assert!(
        refused.is_err(),
        "an expired certificate was taken: {refused:?}"
    );
    eventually("the refused handshake in the log", WAIT, || async {
        node.log_text()
            .lines()
            .any(|l| l.contains("TLS handshake refused") && l.contains("xpired"))
            .then_some(())
    })
    .await;

    // Files replaced by an expired certificate are not taken: the node says so and goes on
    // serving the one it has.
    let served = served_certificate(&node, &pki.ca()).await;
    std::fs::copy(&expired_key, pki.dir.join("node1.key")).unwrap();
    std::fs::copy(&expired, pki.dir.join("node1.crt")).unwrap();
    eventually("the refused reload in the log", WAIT, || async {
        node.log_text()
            .contains("TLS certificates changed on disk but cannot be used")
            .then_some(())
    })
    .await;
    assert_eq!(served_certificate(&node, &pki.ca()).await, served);
    node.admin().put("still", &json!("served")).await.unwrap();
}

/// Forwards one connection at a time from a loopback port to `to`, keeping every byte that
/// crosses it in either direction.
async fn recording_proxy(to: String) -> (u16, Arc<Mutex<Vec<u8>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let recorded = seen.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let server = tokio::net::TcpStream::connect(&to).await.unwrap();
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            tokio::spawn(pump(client_read, server_write, recorded.clone()));
            tokio::spawn(pump(server_read, client_write, recorded.clone()));
        }
    });
    (port, seen)
}

/// Copies `from` into `into`, keeping a copy of every byte, until either side closes.
async fn pump(
    mut from: impl tokio::io::AsyncRead + Unpin,
    mut into: impl tokio::io::AsyncWrite + Unpin,
    recorded: Arc<Mutex<Vec<u8>>>,
) {
    let mut buf = vec![0u8; 16 << 10];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0 || into.write_all(&buf[..n]).await.is_err() {
            break;
        }
        recorded.lock().unwrap().extend_from_slice(&buf[..n]);
    }
    let _ = into.shutdown().await;
}

/// Writes `value` with `token` through a recording proxy in front of `node`, reads it back,
/// and returns every byte the proxy saw.
async fn recorded_round_trip(
    node: &NodeProc,
    builder: concordance_client::ClientBuilder,
    token: &str,
    value: &str,
) -> Vec<u8> {
    let (port, seen) = recording_proxy(node.addr()).await;
    let client = builder
        .endpoint(format!("127.0.0.1:{port}"))
        .api_key(token)
        .follow_leader(false)
        .build()
        .unwrap();
    client.put("wire/value", &json!(value)).await.unwrap();
    assert_eq!(
        client.get("wire/value").await.unwrap().unwrap().kv.value,
        json!(value)
    );
    seen.lock().unwrap().clone()
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_wire_tls_hides_the_key_and_the_values_that_plaintext_shows() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "cluster-ca");
    let token = "wire-token-0123456789abcdef";
    let value = "wire-value-canary-42";
    let keys = [("CONCORDANCE_API_KEY", token)];

    // Plaintext: the proxy sees both (so it could see them at all).
    let plain = NodeProc::start_env("plain", dir.path(), &["--bootstrap"], &keys);
    plain.wait_ready().await;
    let bytes = recorded_round_trip(&plain, Client::builder(), token, value).await;
    assert!(
        contains(&bytes, token),
        "the proxy saw no token in plaintext"
    );
    assert!(
        contains(&bytes, value),
        "the proxy saw no value in plaintext"
    );

    // TLS: the same calls through the same kind of proxy show neither.
    let (cert, key) = pki.node("secure", &["127.0.0.1", "secure.peers.test"]);
    let secure = spawn_tls(dir.path(), &pki, "secure", (&cert, &key), None, &keys);
    secure.wait_ready().await;
    let tls = Client::builder().ca_file(pki.ca()).unwrap();
    let bytes = recorded_round_trip(&secure, tls, token, value).await;
    assert!(
        bytes.len() > 1000,
        "the proxy saw only {} bytes",
        bytes.len()
    );
    assert!(
        !contains(&bytes, token),
        "the token crossed the wire readable"
    );
    assert!(
        !contains(&bytes, value),
        "the value crossed the wire readable"
    );
}

/// Restarts `node` (SIGTERM: a leader hands over first) with its flags changed by `change`,
/// and waits until it is ready.
async fn restart_with(node: &mut NodeProc, change: impl FnOnce(&mut Vec<String>)) {
    node.stop();
    change(&mut node.args);
    node.restart();
    node.wait_ready().await;
}

/// A writer through every member with the client's retries, as an application runs, until
/// `stop`: the keys acknowledged and the failures (retries given up).
fn spawn_writer(
    name: &'static str,
    client: Client,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<(Vec<String>, Vec<String>)> {
    tokio::spawn(async move {
        let (mut acknowledged, mut failed) = (Vec::new(), Vec::new());
        let mut i = 0;
        while !stop.load(Ordering::Relaxed) {
            let key = format!("{name}/{i}");
            match client.put(&key, &json!(i)).await {
                Ok(_) => acknowledged.push(key),
                Err(e) => failed.push(format!("{key}: {e}")),
            }
            i += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        (acknowledged, failed)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_plaintext_cluster_turns_tls_on_member_by_member_with_no_failed_write() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "cluster-ca");
    let first = NodeProc::start_env("node1", dir.path(), &["--bootstrap"], KEYS);
    first.wait_ready().await;
    let join = format!("--join={}", first.addr());
    let mut nodes = vec![first];
    for name in ["node2", "node3"] {
        let node = NodeProc::start_env(name, dir.path(), &[join.as_str()], KEYS);
        node.wait_ready().await;
        nodes.push(node);
    }
    let endpoints: Vec<String> = nodes.iter().map(|n| n.addr()).collect();
    let stop_plain = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let plain_writer = spawn_writer(
        "plain",
        Client::builder()
            .endpoints(endpoints.clone())
            .api_key(ADMIN_KEY)
            .build()
            .unwrap(),
        stop_plain.clone(),
    );

    // 1. Each member in turn: TLS files and peer certificates, still serving and dialing
    // plaintext (the others serve nothing else yet).
    for node in nodes.iter_mut() {
        let (cert, key) = pki.node(
            &node.name,
            &["127.0.0.1", &format!("{}.peers.test", node.name)],
        );
        let tls = tls_args(&pki, &cert, &key);
        restart_with(node, |args| {
            args.extend(tls);
            args.push("--accept-plaintext".into());
            args.push("--dial-peers-plaintext".into());
        })
        .await;
    }
    // Clients may move to TLS from here on.
    let stop_tls = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let tls_writer = spawn_writer(
        "tls",
        Client::builder()
            .endpoints(endpoints.clone())
            .ca_file(pki.ca())
            .unwrap()
            .api_key(ADMIN_KEY)
            .build()
            .unwrap(),
        stop_tls.clone(),
    );
    // 2. Each member in turn dials its peers over mutual TLS (every member serves it now).
    for node in nodes.iter_mut() {
        restart_with(node, |args| args.retain(|a| a != "--dial-peers-plaintext")).await;
    }
    stop_plain.store(true, Ordering::Relaxed);
    let (plain_acknowledged, plain_failed) = plain_writer.await.unwrap();
    // 3. Each member in turn serves TLS only.
    for node in nodes.iter_mut() {
        node.ca = Some(pki.ca());
        restart_with(node, |args| args.retain(|a| a != "--accept-plaintext")).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop_tls.store(true, Ordering::Relaxed);
    let (tls_acknowledged, tls_failed) = tls_writer.await.unwrap();
    println!(
        "plaintext writer: {} acknowledged, {} failed; TLS writer: {} acknowledged, {} failed",
        plain_acknowledged.len(),
        plain_failed.len(),
        tls_acknowledged.len(),
        tls_failed.len()
    );
    assert!(plain_failed.is_empty(), "{plain_failed:?}");
    assert!(tls_failed.is_empty(), "{tls_failed:?}");
    assert!(plain_acknowledged.len() >= 50 && tls_acknowledged.len() >= 50);

    // The cluster is TLS only now: plaintext gets no answer, the Raft routes no key, and
    // every acknowledged write reads back.
    let plaintext = reqwest::Client::new()
        .get(format!("http://{}/api/v1/health", nodes[0].addr()))
        .timeout(Duration::from_secs(10))
        .send()
        .await;
    assert!(plaintext.is_err(), "plaintext was answered: {plaintext:?}");
    let (status, body) = raft_vote(&nodes[0], &https(&pki.ca(), None), Some(ADMIN_KEY))
        .await
        .unwrap();
    assert_eq!(status, 401, "{body}");
    let admin = nodes[1].admin();
    let mut stored = std::collections::HashSet::new();
    for prefix in ["plain/", "tls/"] {
        let listed = admin
            .list_all(prefix, 500, Default::default())
            .await
            .unwrap();
        stored.extend(listed.into_iter().map(|kv| kv.key));
    }
    let lost: Vec<&String> = plain_acknowledged
        .iter()
        .chain(&tls_acknowledged)
        .filter(|k| !stored.contains(*k))
        .collect();
    assert!(lost.is_empty(), "acknowledged writes missing: {lost:?}");
}
