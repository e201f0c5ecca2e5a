//! Bad input over HTTP: random and mutated requests on every route of the OpenAPI document and
//! the router (method,
//! path, key, query, headers, body), seeded so a failure replays. Every answer must be a
//! non-5xx with the API's error body when it is an error, the process must stay up, and no
//! refused request may leave a trace: every revision the store ever took belongs to a write
//! the fuzzer saw accepted.

use std::collections::BTreeSet;
use std::time::Duration;

use rand::Rng;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use serde_json::Value;
use serde_json::json;

use concordance::api::MAX_BODY_BYTES;

/// The router's routes (`node/src/api/mod.rs`): method, path; `{key}` is filled per request.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/api/v1/health"),
    ("GET", "/api/v1/ready"),
    ("GET", "/api/v1/cluster/status"),
    ("GET", "/api/v1/kv"),
    ("GET", "/api/v1/kv/{key}"),
    ("PUT", "/api/v1/kv/{key}"),
    ("POST", "/api/v1/kv/{key}"),
    ("DELETE", "/api/v1/kv/{key}"),
    ("GET", "/metrics"),
    ("GET", "/api/v1/metrics"),
    ("POST", "/api/v1/cluster/snapshot"),
    ("GET", "/api/v1/cluster/backup"),
    ("POST", "/api/v1/cluster/join"),
    ("POST", "/api/v1/cluster/remove"),
    ("POST", "/api/v1/cluster/transfer-leader"),
    ("POST", "/api/v1/raft/append"),
    ("POST", "/api/v1/raft/vote"),
    ("POST", "/api/v1/raft/pre-vote"),
    ("POST", "/api/v1/raft/transfer-leader"),
    ("POST", "/api/v1/raft/snapshot"),
    ("POST", "/api/v1/raft/write"),
    ("POST", "/api/v1/raft/write-batch"),
    ("POST", "/api/v1/raft/read-index"),
];

/// Every (method, path) of the OpenAPI document `docs/openapi.json`, plus the router's own
/// list above (so a route missing from the document is still fuzzed).
pub fn all_routes() -> Vec<(String, String)> {
    let doc = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json");
    let mut routes: Vec<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    // Without the document the fuzzer would miss every route the list above lacks.
    let text =
        std::fs::read_to_string(&doc).unwrap_or_else(|e| panic!("reading {}: {e}", doc.display()));
    let v: Value = serde_json::from_str(&text).expect("docs/openapi.json parses");
    for (path, ops) in v["paths"].as_object().expect("paths") {
        for method in ops.as_object().unwrap().keys() {
            let r = (method.to_uppercase(), path.clone());
            if !routes.contains(&r) {
                routes.push(r);
            }
        }
    }
    routes
}

/// Routes whose well-formed bodies would change the cluster's membership or leadership: they
/// only ever get random bodies (a random object never has their required fields).
fn membership_route(path: &str) -> bool {
    path.contains("/lock/")
        || path.contains("/election/")
        || path.contains("/lease")
        || path.contains("/cluster/join")
        || path.contains("/cluster/remove")
        || path.contains("/cluster/transfer-leader")
        || path.contains("/raft/")
}

fn random_string(rng: &mut StdRng, max: usize) -> String {
    let len = rng.random_range(0..=max);
    (0..len)
        .map(|_| match rng.random_range(0..10) {
            0 => char::from_u32(rng.random_range(0..0x20)).unwrap(),
            1 => ['é', '☃', '𝄞', '\u{7f}', '\u{200b}', '\u{fffd}'][rng.random_range(0..6)],
            2 => ['"', '\\', '/', '%', '?', '#', '&', '='][rng.random_range(0..8)],
            _ => rng.random_range(b'a'..=b'z') as char,
        })
        .collect()
}

pub fn random_json(rng: &mut StdRng, depth: u32) -> Value {
    match rng.random_range(0..if depth > 3 { 5 } else { 8 }) {
        0 => Value::Null,
        1 => json!(rng.random::<bool>()),
        2 => json!(rng.random::<i64>()),
        3 => json!(rng.random::<f64>() * 1e300),
        4 => json!(random_string(rng, 20)),
        5 => Value::Array(
            (0..rng.random_range(0..4))
                .map(|_| random_json(rng, depth + 1))
                .collect(),
        ),
        _ => {
            let mut m = serde_json::Map::new();
            for _ in 0..rng.random_range(0..4) {
                let k = match rng.random_range(0..3) {
                    0 => ["value", "lease", "nodeId", "expectedVersion"][rng.random_range(0..4)]
                        .to_string(),
                    _ => random_string(rng, 8),
                };
                m.insert(k, random_json(rng, depth + 1));
            }
            Value::Object(m)
        }
    }
}

/// A key path segment: valid paths, odd Unicode, bad percent-encoding, control characters,
/// over-long keys.
fn random_key_path(rng: &mut StdRng) -> String {
    match rng.random_range(0..12) {
        0 | 9 | 10 | 11 => format!("fz/{}", rng.random_range(0..20)),
        1 => "%00".into(),
        2 => "%zz/%".into(),
        3 => "%C3%28".into(),
        4 => "a".repeat(rng.random_range(1000..1100)),
        5 => "a/../b//c/.".into(),
        6 => format!("fz/%{:02X}", rng.random_range(0..0x20)),
        7 => "%E2%98%83/%F0%9D%84%9E".into(),
        _ => {
            let s = random_string(rng, 12);
            s.bytes()
                .map(|b| {
                    if b.is_ascii_alphanumeric() {
                        (b as char).to_string()
                    } else {
                        format!("%{b:02X}")
                    }
                })
                .collect()
        }
    }
}

fn random_body(rng: &mut StdRng, path: &str) -> Vec<u8> {
    let valid_put = path.contains("/kv/") && !membership_route(path);
    match rng.random_range(0..10) {
        0 => vec![],
        1 => (0..rng.random_range(1..200))
            .map(|_| rng.random())
            .collect(),
        2 => b"{\"value\": ".to_vec(),
        3 => {
            // Over the 2 MiB body limit.
            let mut b = b"{\"value\":\"".to_vec();
            b.extend(std::iter::repeat_n(b'a', (2 << 20) + 10));
            b.extend(b"\"}");
            b
        }
        4 => {
            let d = rng.random_range(100..3000);
            format!("{{\"value\":{}{}}}", "[".repeat(d), "]".repeat(d)).into_bytes()
        }
        5 if valid_put => {
            // A value just over 1 MiB.
            let s = "v".repeat((1 << 20) + rng.random_range(-2i64..20) as usize);
            serde_json::to_vec(&json!({ "value": s })).unwrap()
        }
        6 | 7 if valid_put => {
            let mut m = serde_json::Map::new();
            m.insert("value".into(), random_json(rng, 0));
            if rng.random_range(0..4) == 0 {
                m.insert("lease".into(), random_json(rng, 2));
            }
            if rng.random_range(0..6) == 0 {
                m.insert(random_string(rng, 6), random_json(rng, 2));
            }
            serde_json::to_vec(&Value::Object(m)).unwrap()
        }
        _ => serde_json::to_vec(&random_json(rng, 0)).unwrap(),
    }
}

fn random_query(rng: &mut StdRng) -> String {
    let mut parts = Vec::new();
    if rng.random() {
        return String::new();
    }
    for _ in 0..rng.random_range(0..4) {
        let k = ["prefix", "after", "limit", "consistency", "x"][rng.random_range(0..5)];
        let v = match rng.random_range(0..6) {
            0 => rng.random_range(-5i64..20000).to_string(),
            1 => "99999999999999999999999".into(),
            2 => {
                ["serializable", "linearizable", "LINEARIZABLE", ""][rng.random_range(0..4)].into()
            }
            3 => "%ff%fe".into(),
            _ => random_key_path(rng),
        };
        parts.push(format!("{k}={v}"));
    }
    parts.join("&")
}

pub struct FuzzReport {
    pub requests: usize,
    pub by_status: std::collections::BTreeMap<u16, usize>,
    pub accepted_writes: usize,
}

/// Sends `count` random requests to `base` (`http://host:port`); panics naming the seed and
/// request on the first broken promise.
pub async fn fuzz_http(
    base: &str,
    admin: &str,
    agent: &str,
    seed: u64,
    count: usize,
) -> FuzzReport {
    let mut rng = StdRng::seed_from_u64(seed);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        // A fresh connection per request: one the server closed early is never reused.
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let mut report = FuzzReport {
        requests: 0,
        by_status: Default::default(),
        accepted_writes: 0,
    };
    let mut revisions: BTreeSet<u64> = BTreeSet::new();
    let routes = all_routes();
    for i in 0..count {
        // Half the requests on the data routes, where most parsing happens.
        let (method, template) = if rng.random() {
            *ROUTES[3..8].choose(&mut rng).unwrap()
        } else {
            let (m, p) = routes.choose(&mut rng).unwrap();
            (m.as_str(), p.as_str())
        };
        let method = if rng.random_range(0..12) == 0 {
            ["PATCH", "OPTIONS", "HEAD", "TRACE", "PUT", "GET"][rng.random_range(0..6)]
        } else {
            method
        };
        let path = template
            .replace("{key}", &random_key_path(&mut rng))
            .replace("{id}", &rng.random_range(0..5).to_string());
        let query = random_query(&mut rng);
        let url = if query.is_empty() {
            format!("{base}{path}")
        } else {
            format!("{base}{path}?{query}")
        };
        let body = random_body(&mut rng, &path);
        let auth = match rng.random_range(0..8) {
            0 => None,
            1 => Some("Bearer wrong-key".to_string()),
            2 => Some(format!("Bearer {}", "k".repeat(5000))),
            3 => Some(format!("Basic {admin}")),
            4 | 5 => Some(format!("Bearer {agent}")),
            _ => Some(format!("Bearer {admin}")),
        };
        let mut rb = http.request(method.parse().unwrap(), &url);
        if let Some(a) = &auth {
            rb = rb.header("authorization", a);
        }
        if rng.random_range(0..3) == 0 {
            let ct = [
                "application/x-www-form-urlencoded",
                "text/plain",
                "application/json; charset=utf-16",
                "\u{1}",
            ][rng.random_range(0..4)];
            if let Ok(v) = reqwest::header::HeaderValue::from_str(ct) {
                rb = rb.header("content-type", v);
            }
        }
        if rng.random_range(0..6) == 0 {
            let ik = match rng.random_range(0..3) {
                0 => String::new(),
                1 => "i".repeat(200),
                _ => format!("fz-{}", rng.random_range(0..50)),
            };
            rb = rb.header("idempotency-key", ik);
        }
        let what = format!(
            "seed {seed} request {i}: {method} {} ({} body bytes, auth {:?})",
            url.chars().take(200).collect::<String>(),
            body.len(),
            auth.as_deref()
                .map(|a| a.chars().take(20).collect::<String>())
        );
        let body_len = body.len();
        let resp = match rb.body(body).send().await {
            Ok(r) => r,
            // A server may answer (405, 413, 401) and close before reading an over-long
            // body; the client then sees a reset while still sending. Not a crash: the
            // node must still answer.
            Err(e) if body_len > 1 << 20 => {
                let h = http.get(format!("{base}/api/v1/health")).send().await;
                assert!(h.is_ok(), "{what}: node down after: {e}");
                report.requests += 1;
                *report.by_status.entry(0).or_default() += 1;
                continue;
            }
            Err(e) => panic!("{what}: no answer: {e:?}"),
        };
        let status = resp.status().as_u16();
        // An accepted watch is an endless stream: its status is the answer.
        let bytes = if path.contains("/watch") && status == 200 {
            Default::default()
        } else {
            match resp.bytes().await {
                Ok(bytes) => bytes,
                // Refused before the whole body was read, the node closes the connection: the
                // reset can cut its answer off, as for the send above.
                Err(e) if body_len > 1 << 20 && status >= 400 => {
                    let h = http.get(format!("{base}/api/v1/health")).send().await;
                    assert!(h.is_ok(), "{what}: node down after {status}: {e}");
                    report.requests += 1;
                    *report.by_status.entry(status).or_default() += 1;
                    continue;
                }
                Err(e) => panic!("{what}: answered {status}, then its body was lost: {e}"),
            }
        };
        report.requests += 1;
        *report.by_status.entry(status).or_default() += 1;
        // The client API reads no body over its limit, whether the route needs one or not.
        assert!(
            body_len <= MAX_BODY_BYTES || status >= 400 || path.starts_with("/api/v1/raft/"),
            "{what}: a body over the {MAX_BODY_BYTES}-byte limit answered {status}"
        );
        assert!(
            status < 500,
            "{what}: answered {status}: {}",
            String::from_utf8_lossy(&bytes)
        );
        if status >= 400 && method != "HEAD" {
            let err: Value = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                panic!(
                    "{what}: error {status} without the API's error body: {:?}",
                    String::from_utf8_lossy(&bytes)
                )
            });
            assert!(
                err["error"]["code"].is_string() && err["error"]["message"].is_string(),
                "{what}: error body {err}"
            );
        }
        if (200..300).contains(&status)
            && path.contains("/kv/")
            && matches!(method, "PUT" | "POST" | "DELETE")
        {
            let v: Value = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                panic!(
                    "{what}: answered {status} with a body that is not the write's answer ({e}): {:?}",
                    String::from_utf8_lossy(&bytes)
                )
            });
            if method != "DELETE" || v["deleted"].as_u64() > Some(0) {
                report.accepted_writes += 1;
                revisions.insert(v["revision"].as_u64().unwrap());
            }
        }
    }
    // Nothing refused left a trace: the store's revisions are exactly the accepted writes'.
    let status: Value = http
        .get(format!("{base}/api/v1/cluster/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let final_rev = status["revision"].as_u64().unwrap();
    let expected: BTreeSet<u64> = (1..=final_rev).collect();
    assert_eq!(
        revisions, expected,
        "seed {seed}: revisions taken by the store are not exactly those of accepted writes"
    );
    report
}
