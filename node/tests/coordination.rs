//! The coordination primitives through real servers: transactions, leases, locks, elections,
//! watches and idempotent retries, including across a SIGKILLed leader.

mod common;

use std::time::Duration;
use std::time::Instant;

use common::*;
use reqwest::StatusCode;
use serde_json::Value;
use serde_json::json;

async fn call(
    node: &NodeProc,
    method: &str,
    path: &str,
    body: Option<Value>,
    headers: &[(&str, &str)],
) -> (StatusCode, Value) {
    let mut rb = reqwest::Client::new()
        .request(method.parse().unwrap(), node.url(path))
        .timeout(Duration::from_secs(60));
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    if let Some(b) = body {
        rb = rb.json(&b);
    }
    match rb.send().await {
        Ok(resp) => {
            let status = resp.status();
            let text = resp.text().await.unwrap_or_default();
            (
                status,
                serde_json::from_str(&text).unwrap_or(Value::String(text)),
            )
        }
        Err(e) => (
            StatusCode::BAD_GATEWAY,
            json!({"error": {"code": "transport", "message": e.to_string()}}),
        ),
    }
}

async fn ok(node: &NodeProc, method: &str, path: &str, body: Option<Value>) -> Value {
    let (status, v) = call(node, method, path, body, &[]).await;
    assert!(status.is_success(), "{method} {path}: {status} {v}");
    v
}

/// Sends a POST in the background (a call that waits, e.g. for a lock): its status, body and
/// when the answer came.
fn spawn_timed_post(
    url: String,
    body: Value,
) -> tokio::task::JoinHandle<(StatusCode, Value, Instant)> {
    tokio::spawn(async move {
        let r = reqwest::Client::new()
            .post(url)
            .json(&body)
            .send()
            .await
            .unwrap();
        let at = Instant::now();
        (r.status(), r.json::<Value>().await.unwrap(), at)
    })
}

/// Waits (bounded) until the lock or election queue under `prefix` holds `n` candidates;
/// returns their keys in create order (the first one holds the lock or leads).
async fn queue_of(node: &NodeProc, prefix: &str, n: usize) -> Vec<concordance_client::KeyValue> {
    let c = node.client();
    eventually(
        &format!("{n} candidates queued under {prefix}"),
        Duration::from_secs(20),
        || async {
            let mut kvs = c
                .list(
                    prefix,
                    None,
                    Some(100),
                    concordance_client::Consistency::Linearizable,
                )
                .await
                .ok()?
                .kvs;
            kvs.sort_by_key(|kv| kv.create_revision);
            (kvs.len() == n).then_some(kvs)
        },
    )
    .await
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

async fn single() -> (tempfile::TempDir, NodeProc) {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProc::start("n1", dir.path(), &["--bootstrap"]);
    node.wait_ready().await;
    (dir, node)
}

#[tokio::test(flavor = "multi_thread")]
async fn transactions_compare_and_apply_atomically() {
    let (_dir, node) = single().await;
    // Create-if-absent: succeeds once, then the failure branch reads the winner.
    let create = json!({
        "compare": [{"key": "cfg/leader", "target": "exists", "op": "equal", "value": false}],
        "success": [{"type": "put", "key": "cfg/leader", "value": "a"},
                    {"type": "put", "key": "cfg/term", "value": 1}],
        "failure": [{"type": "get", "key": "cfg/leader"}]
    });
    let first = ok(&node, "POST", "/api/v1/txn", Some(create.clone())).await;
    assert_eq!(first["succeeded"], true, "{first}");
    let rev = first["revision"].as_u64().unwrap();
    assert_eq!(first["results"][0]["revision"], rev);
    assert_eq!(
        first["results"][1]["revision"], rev,
        "one revision per transaction"
    );
    let second = ok(&node, "POST", "/api/v1/txn", Some(create)).await;
    assert_eq!(second["succeeded"], false);
    assert_eq!(
        second["revision"], rev,
        "a read-only branch takes no revision"
    );
    assert_eq!(second["results"][0]["type"], "get");
    assert_eq!(second["results"][0]["kv"]["value"], "a");
    assert_eq!(second["results"][0]["kv"]["modRevision"], rev);

    // Compare-and-swap on modRevision: the stale writer loses.
    let cas = |expect: u64, value: &str| {
        json!({
            "compare": [{"key": "cfg/leader", "target": "modRevision", "value": expect}],
            "success": [{"type": "put", "key": "cfg/leader", "value": value}]
        })
    };
    let won = ok(&node, "POST", "/api/v1/txn", Some(cas(rev, "b"))).await;
    assert_eq!(won["succeeded"], true);
    assert_eq!(won["results"][0]["prevKv"]["value"], "a");
    assert_eq!(won["results"][0]["prevKv"]["key"], "cfg/leader");
    let lost = ok(&node, "POST", "/api/v1/txn", Some(cas(rev, "c"))).await;
    assert_eq!(lost["succeeded"], false);
    assert_eq!(
        node.client()
            .get("cfg/leader")
            .await
            .unwrap()
            .unwrap()
            .kv
            .value,
        json!("b")
    );

    // Every compare target and operator.
    let all = json!({
        "compare": [
            {"key": "cfg/leader", "target": "value", "op": "equal", "value": "b"},
            {"key": "cfg/leader", "target": "value", "op": "greater", "value": "a"},
            {"key": "cfg/term", "target": "value", "op": "less", "value": 2},
            {"key": "cfg/term", "target": "version", "op": "equal", "value": 1},
            {"key": "cfg/term", "target": "createRevision", "op": "equal", "value": rev},
            {"key": "cfg/leader", "target": "modRevision", "op": "greater", "value": rev},
            {"key": "cfg/leader", "target": "lease", "op": "equal", "value": 0},
            {"key": "nope", "target": "exists", "op": "notEqual", "value": true},
            {"key": "nope", "target": "version", "op": "equal", "value": 0}
        ],
        "success": [{"type": "deletePrefix", "prefix": "cfg/"}, {"type": "get", "key": "nope"}],
        "failure": []
    });
    let r = ok(&node, "POST", "/api/v1/txn", Some(all)).await;
    assert_eq!(r["succeeded"], true, "{r}");
    assert_eq!(r["results"][0]["deleted"], 2);
    assert_eq!(r["results"][1]["kv"], Value::Null);
    assert!(node.client().get("cfg/leader").await.unwrap().is_none());
    let ver = ok(&node, "GET", "/api/v1/cluster/version", None).await;
    assert_eq!(ver["clusterCommandVersion"], ver["commandVersion"]);

    // Nothing partially applied: a put on a missing lease rejects the whole branch.
    let before = node.client().status().await.unwrap().revision;
    let (status, v) = call(
        &node,
        "POST",
        "/api/v1/txn",
        Some(json!({"success": [
            {"type": "put", "key": "x/1", "value": 1},
            {"type": "put", "key": "x/2", "value": 2, "lease": 12345}
        ]})),
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{v}");
    assert_eq!(code(&v), "lease_not_found");
    assert_eq!(node.client().status().await.unwrap().revision, before);
    assert!(node.client().get("x/1").await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn leases_keep_keys_alive_and_take_them_when_they_end() {
    let (_dir, node) = single().await;
    let grant = ok(&node, "POST", "/api/v1/lease", Some(json!({"ttlMs": 1500}))).await;
    let id = grant["id"].as_u64().unwrap();
    assert_eq!(grant["ttlMs"], 1500);
    ok(
        &node,
        "PUT",
        "/api/v1/kv/svc/a",
        Some(json!({"value": 1, "lease": id})),
    )
    .await;
    let txn = json!({"success": [{"type": "put", "key": "svc/b", "value": 2, "lease": id}]});
    ok(&node, "POST", "/api/v1/txn", Some(txn)).await;
    let info = ok(&node, "GET", &format!("/api/v1/lease/{id}"), None).await;
    assert_eq!(info["keys"], json!(["svc/a", "svc/b"]));
    assert!(info["remainingMs"].as_u64().unwrap() <= 1500);
    let list = ok(&node, "GET", "/api/v1/lease", None).await;
    assert!(
        list["leases"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["id"] == id)
    );

    // Kept alive well past its TTL, the lease and its keys stay.
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(3500) {
        ok(
            &node,
            "POST",
            &format!("/api/v1/lease/{id}/keepalive"),
            None,
        )
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(node.client().get("svc/a").await.unwrap().is_some());

    // Left alone, it expires and its keys go with it, at one revision.
    let rev = node.client().status().await.unwrap().revision;
    eventually("lease expiry", Duration::from_secs(10), || async {
        node.client()
            .get("svc/a")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    assert!(node.client().get("svc/b").await.unwrap().is_none());
    assert_eq!(node.client().status().await.unwrap().revision, rev + 1);
    let (status, v) = call(&node, "GET", &format!("/api/v1/lease/{id}"), None, &[]).await;
    assert_eq!(
        (status, code(&v)),
        (StatusCode::NOT_FOUND, "lease_not_found")
    );
    for (method, path, body) in [
        ("POST", format!("/api/v1/lease/{id}/keepalive"), None),
        ("DELETE", format!("/api/v1/lease/{id}"), None),
        (
            "PUT",
            "/api/v1/kv/svc/c".to_string(),
            Some(json!({"value": 1, "lease": id})),
        ),
    ] {
        let (status, v) = call(&node, method, &path, body, &[]).await;
        assert_eq!(
            (status, code(&v)),
            (StatusCode::NOT_FOUND, "lease_not_found"),
            "{method} {path}"
        );
    }

    // Revoke ends a lease at once; a key re-put without the lease is no longer its.
    let id2 = ok(
        &node,
        "POST",
        "/api/v1/lease",
        Some(json!({"ttlMs": 60000})),
    )
    .await["id"]
        .as_u64()
        .unwrap();
    ok(
        &node,
        "PUT",
        "/api/v1/kv/r/a",
        Some(json!({"value": 1, "lease": id2})),
    )
    .await;
    ok(
        &node,
        "PUT",
        "/api/v1/kv/r/b",
        Some(json!({"value": 1, "lease": id2})),
    )
    .await;
    ok(&node, "PUT", "/api/v1/kv/r/b", Some(json!({"value": 2}))).await;
    let revoked = ok(&node, "DELETE", &format!("/api/v1/lease/{id2}"), None).await;
    assert_eq!(revoked["deleted"], 1);
    assert!(node.client().get("r/a").await.unwrap().is_none());
    assert_eq!(
        node.client().get("r/b").await.unwrap().unwrap().kv.value,
        json!(2)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idempotency_key_applies_a_write_once() {
    let (_dir, node) = single().await;
    let h = [("Idempotency-Key", "req-1")];
    let body = json!({"success": [{"type": "put", "key": "counter", "value": 1}]});
    let (s1, a) = call(&node, "POST", "/api/v1/txn", Some(body.clone()), &h).await;
    let (s2, b) = call(&node, "POST", "/api/v1/txn", Some(body), &h).await;
    assert!(s1.is_success() && s2.is_success());
    assert_eq!(a, b, "the retry gets the first answer");
    assert_eq!(
        node.client()
            .get("counter")
            .await
            .unwrap()
            .unwrap()
            .kv
            .version,
        1
    );
    let g = [("Idempotency-Key", "grant-1")];
    let l1 = call(
        &node,
        "POST",
        "/api/v1/lease",
        Some(json!({"ttlMs": 5000})),
        &g,
    )
    .await
    .1;
    let l2 = call(
        &node,
        "POST",
        "/api/v1/lease",
        Some(json!({"ttlMs": 5000})),
        &g,
    )
    .await
    .1;
    assert_eq!(l1["id"], l2["id"]);
    // A key reused for another kind of request is refused, not misread.
    let (s, v) = call(
        &node,
        "PUT",
        "/api/v1/kv/other",
        Some(json!({"value": 1})),
        &h,
    )
    .await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused")
    );
}

/// One Server-Sent Event.
#[derive(Debug, Clone)]
struct Sse {
    id: Option<u64>,
    event: String,
    data: Value,
}

/// A watch stream being read.
struct WatchStream {
    resp: reqwest::Response,
    buf: String,
}

impl WatchStream {
    async fn open(
        node: &NodeProc,
        query: &str,
        last_event: Option<u64>,
    ) -> Result<Self, (StatusCode, Value)> {
        let mut rb = reqwest::Client::new().get(node.url(&format!("/api/v1/watch?{query}")));
        if let Some(id) = last_event {
            rb = rb.header("Last-Event-ID", id.to_string());
        }
        let resp = rb
            .send()
            .await
            .map_err(|e| (StatusCode::BAD_GATEWAY, json!(e.to_string())))?;
        if !resp.status().is_success() {
            let s = resp.status();
            return Err((s, resp.json().await.unwrap_or(Value::Null)));
        }
        Ok(Self {
            resp,
            buf: String::new(),
        })
    }

    /// The next event (skipping comments), or `None` when the stream ends or breaks.
    async fn next(&mut self, timeout: Duration) -> Option<Sse> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut ev = Sse {
                    id: None,
                    event: "message".into(),
                    data: Value::Null,
                };
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        ev.id = v.trim().parse().ok();
                    } else if let Some(v) = line.strip_prefix("event:") {
                        ev.event = v.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if data.is_empty() && ev.id.is_none() {
                    continue; // a keep-alive comment
                }
                ev.data = serde_json::from_str(&data).unwrap_or(Value::String(data));
                return Some(ev);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.resp.chunk()).await {
                Ok(Ok(Some(bytes))) => self.buf.push_str(&String::from_utf8_lossy(&bytes)),
                _ => return None,
            }
        }
    }

    /// Collects `change` events until `want` revisions were seen.
    async fn changes(&mut self, want: usize, timeout: Duration) -> Vec<Sse> {
        let mut out = Vec::new();
        let deadline = Instant::now() + timeout;
        while out.len() < want {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left).await {
                Some(ev) if ev.event == "change" => out.push(ev),
                Some(_) => {}
                None => break,
            }
        }
        out
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn watches_stream_every_change_in_order_and_resume_exactly() {
    let (_dir, node) = single().await;
    ok(
        &node,
        "PUT",
        "/api/v1/kv/other/x",
        Some(json!({"value": 0})),
    )
    .await;
    let base = node.client().status().await.unwrap().revision;
    let mut w = WatchStream::open(&node, "prefix=w/&progressMs=1000", None)
        .await
        .unwrap();
    ok(&node, "PUT", "/api/v1/kv/w/a", Some(json!({"value": 1}))).await;
    ok(
        &node,
        "PUT",
        "/api/v1/kv/other/y",
        Some(json!({"value": 1})),
    )
    .await;
    ok(&node, "PUT", "/api/v1/kv/w/a", Some(json!({"value": 2}))).await;
    let txn = json!({"success": [
        {"type": "put", "key": "w/b", "value": "b"},
        {"type": "delete", "key": "w/a"}
    ]});
    ok(&node, "POST", "/api/v1/txn", Some(txn)).await;
    let got = w.changes(3, Duration::from_secs(10)).await;
    let ids: Vec<u64> = got.iter().map(|e| e.id.unwrap()).collect();
    assert_eq!(ids, [base + 1, base + 3, base + 4], "{got:?}");
    assert_eq!(got[0].data["events"][0]["type"], "put");
    assert_eq!(got[0].data["events"][0]["kv"]["value"], 1);
    assert_eq!(got[1].data["events"][0]["kv"]["version"], 2);
    let last = &got[2].data["events"];
    assert_eq!(
        last.as_array().unwrap().len(),
        2,
        "one transaction, one message: {last}"
    );
    assert_eq!(last[0]["key"], "w/a");
    assert_eq!(last[0]["type"], "delete");
    assert_eq!(last[1]["key"], "w/b");

    // Idle: progress events carry the revision seen so far.
    let p = w.next(Duration::from_secs(5)).await.unwrap();
    assert_eq!(p.event, "progress");
    assert_eq!(p.id, Some(base + 4));
    drop(w);

    // Resuming after an id replays exactly what followed it; a key watch sees its key only.
    let mut r = WatchStream::open(&node, "prefix=w/", Some(base + 1))
        .await
        .unwrap();
    let again = r.changes(2, Duration::from_secs(10)).await;
    assert_eq!(
        again.iter().map(|e| e.id.unwrap()).collect::<Vec<_>>(),
        [base + 3, base + 4]
    );
    let mut k = WatchStream::open(&node, &format!("key=w/b&startRevision={}", base + 1), None)
        .await
        .unwrap();
    let only = k.changes(1, Duration::from_secs(10)).await;
    assert_eq!(only[0].id, Some(base + 4));
    assert_eq!(only[0].data["events"].as_array().unwrap().len(), 1);

    for (query, status, want) in [
        ("prefix=w/&key=w/a", 400, "invalid_query"),
        ("", 400, "invalid_query"),
        ("prefix=w/&startRevision=0", 400, "invalid_revision"),
        ("prefix=w/&startRevision=abc", 400, "invalid_query"),
        ("prefix=w/&bogus=1", 400, "invalid_query"),
    ] {
        let (s, v) = WatchStream::open(&node, query, None)
            .await
            .err()
            .expect(query);
        assert_eq!((s.as_u16(), code(&v)), (status, want), "{query}: {v}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_compacted_start_revision_names_the_oldest_available() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProc::start("n1", dir.path(), &["--bootstrap", "--history-revisions=10"]);
    node.wait_ready().await;
    for i in 0..40 {
        ok(
            &node,
            "PUT",
            &format!("/api/v1/kv/c/{i}"),
            Some(json!({"value": i})),
        )
        .await;
    }
    let (s, v) = WatchStream::open(&node, "prefix=c/&startRevision=1", None)
        .await
        .err()
        .unwrap();
    assert_eq!((s, code(&v)), (StatusCode::GONE, "compacted"), "{v}");
    let oldest = v["error"]["oldestRevision"].as_u64().unwrap();
    assert!(oldest > 1 && oldest <= 31, "{v}");
    let mut w = WatchStream::open(&node, &format!("prefix=c/&startRevision={oldest}"), None)
        .await
        .unwrap();
    let got = w
        .changes(40 - oldest as usize + 1, Duration::from_secs(10))
        .await;
    assert_eq!(got.first().unwrap().id, Some(oldest));
    assert_eq!(got.last().unwrap().id, Some(40));
}

#[tokio::test(flavor = "multi_thread")]
async fn locks_hand_over_in_order_and_elections_elect_one_leader() {
    let (_dir, node) = single().await;
    let lease = |ttl: u64| {
        let node = &node;
        async move {
            ok(node, "POST", "/api/v1/lease", Some(json!({"ttlMs": ttl}))).await["id"]
                .as_u64()
                .unwrap()
        }
    };
    let (a, b, c) = (lease(60000).await, lease(60000).await, lease(60000).await);
    let acquire = |l: u64, wait: bool| json!({"name": "jobs/db", "lease": l, "wait": wait, "timeoutMs": 20000});
    let held = ok(
        &node,
        "POST",
        "/api/v1/lock/acquire",
        Some(acquire(a, true)),
    )
    .await;
    let token_a = held["fencingToken"].as_u64().unwrap();
    assert!(
        held["key"]
            .as_str()
            .unwrap()
            .starts_with("_concordance/lock/jobs/db/")
    );
    // Acquiring again with the same lease is the same hold.
    let again = ok(
        &node,
        "POST",
        "/api/v1/lock/acquire",
        Some(acquire(a, true)),
    )
    .await;
    assert_eq!(again["fencingToken"], token_a);
    let (s, v) = call(
        &node,
        "POST",
        "/api/v1/lock/acquire",
        Some(acquire(b, false)),
        &[],
    )
    .await;
    assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "lock_held"), "{v}");

    // b then c queue (seen in the queue itself, in that order); releasing a hands the lock to
    // b, then c, each with its place's create revision as its token. Each answer must come
    // after its predecessor let go: a grant made early fails here however late it arrives.
    let n1 = node.url("");
    let waiter = |l: u64| spawn_timed_post(format!("{n1}/api/v1/lock/acquire"), acquire(l, true));
    let queue = "_concordance/lock/jobs/db/";
    let wb = waiter(b);
    queue_of(&node, queue, 2).await;
    let wc = waiter(c);
    let places = queue_of(&node, queue, 3).await;
    let leases: Vec<Option<u64>> = places.iter().map(|kv| kv.lease).collect();
    assert_eq!(leases, [Some(a), Some(b), Some(c)], "{places:?}");
    assert_eq!(places[0].create_revision, token_a);
    assert!(!wb.is_finished() && !wc.is_finished(), "queued behind a");
    let released_at = Instant::now();
    let rel = ok(
        &node,
        "POST",
        "/api/v1/lock/release",
        Some(json!({"name": "jobs/db", "lease": a})),
    )
    .await;
    assert_eq!(rel["released"], true);
    let (sb, vb, b_at) = wb.await.unwrap();
    assert!(sb.is_success(), "{vb}");
    assert!(b_at > released_at, "b was answered before a released");
    let token_b = vb["fencingToken"].as_u64().unwrap();
    assert_eq!(token_b, places[1].create_revision, "b's token is its place");
    assert!(token_b > token_a);
    // The holder's lease ending (here: revoked) releases too.
    let revoked_at = Instant::now();
    ok(&node, "DELETE", &format!("/api/v1/lease/{b}"), None).await;
    let (sc, vc, c_at) = wc.await.unwrap();
    assert!(sc.is_success(), "{vc}");
    assert!(c_at > revoked_at, "c was answered before b's lease ended");
    assert_eq!(
        vc["fencingToken"].as_u64().unwrap(),
        places[2].create_revision
    );
    assert!(vc["fencingToken"].as_u64().unwrap() > token_b);
    let (s, v) = call(
        &node,
        "POST",
        "/api/v1/lock/acquire",
        Some(json!({"name": "x", "lease": b})),
        &[],
    )
    .await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::NOT_FOUND, "lease_not_found"),
        "{v}"
    );

    // Elections: the first candidate leads; observers see it; resigning passes leadership.
    let d = lease(60000).await;
    let mut w = WatchStream::open(&node, "prefix=_concordance/election/web/", None)
        .await
        .unwrap();
    let won = ok(
        &node,
        "POST",
        "/api/v1/election/campaign",
        Some(json!({"name": "web", "lease": c, "value": "node-c"})),
    )
    .await;
    assert_eq!(won["leader"]["value"], "node-c");
    let seen = ok(&node, "GET", "/api/v1/election/leader?name=web", None).await;
    assert_eq!(seen["leader"]["value"], "node-c");
    assert_eq!(seen["watchPrefix"], "_concordance/election/web/");
    let url = node.url("/api/v1/election/campaign");
    let second = spawn_timed_post(url, json!({"name": "web", "lease": d, "value": "node-d"}));
    let candidates = queue_of(&node, "_concordance/election/web/", 2).await;
    assert_eq!(candidates[1].lease, Some(d), "{candidates:?}");
    assert!(!second.is_finished(), "d campaigns behind c");
    let resigned_at = Instant::now();
    let r = ok(
        &node,
        "POST",
        "/api/v1/election/resign",
        Some(json!({"name": "web", "lease": c})),
    )
    .await;
    assert_eq!(r["resigned"], true);
    let (s, led, led_at) = second.await.unwrap();
    assert!(s.is_success(), "{led}");
    assert!(
        led_at > resigned_at,
        "d was told it leads before c resigned"
    );
    assert_eq!(led["leader"]["value"], "node-d", "{led}");
    let (led_rev, won_rev) = (
        led["leader"]["revision"].as_u64().expect("d's revision"),
        won["leader"]["revision"].as_u64().expect("c's revision"),
    );
    assert!(led_rev > won_rev);
    let seen = ok(&node, "GET", "/api/v1/election/leader?name=web", None).await;
    assert_eq!(seen["leader"]["lease"], d);
    // The watch saw: c's candidacy, d's, c's resignation.
    let evs = w.changes(3, Duration::from_secs(10)).await;
    let kinds: Vec<&str> = evs
        .iter()
        .map(|e| e.data["events"][0]["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["put", "put", "delete"]);
    let none = ok(&node, "GET", "/api/v1/election/leader?name=nobody", None).await;
    assert_eq!(none["leader"], Value::Null);
}

/// Three nodes on loopback without keys; node1 bootstraps, the others join.
/// SIGTERM must not wait on requests that could last minutes: watch streams end cleanly (the
/// client resumes elsewhere with `Last-Event-ID`) and a lock waiter is told to retry elsewhere,
/// keeping its place in the queue. Several HTTP threads, so the requests land on different
/// loops and every loop must stop.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_ends_watches_and_lock_waits_and_the_lock_queue_place_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = NodeProc::start("n1", dir.path(), &["--bootstrap", "--http-threads=3"]);
    node.wait_ready().await;
    let lease = |ttl: u64| {
        let node = &node;
        async move {
            ok(node, "POST", "/api/v1/lease", Some(json!({"ttlMs": ttl}))).await["id"]
                .as_u64()
                .unwrap()
        }
    };
    let (a, b) = (lease(120_000).await, lease(120_000).await);
    let acquire =
        |l: u64| json!({"name": "jobs/sig", "lease": l, "wait": true, "timeoutMs": 120000});
    let held = ok(&node, "POST", "/api/v1/lock/acquire", Some(acquire(a))).await;
    let waiter = spawn_timed_post(node.url("/api/v1/lock/acquire"), acquire(b));
    let mut watches = Vec::new();
    for _ in 0..4 {
        watches.push(WatchStream::open(&node, "prefix=sig/", None).await.unwrap());
    }
    let put = ok(&node, "PUT", "/api/v1/kv/sig/x", Some(json!({"value": 1}))).await;
    for w in &mut watches {
        let got = w.changes(1, Duration::from_secs(10)).await;
        assert_eq!(got[0].id, put["revision"].as_u64(), "{got:?}");
    }
    assert!(!waiter.is_finished(), "b waits behind a");
    let queued_at = node.client().status().await.unwrap().revision;

    node.stop();
    for mut w in watches {
        // The stream ends (a clean end of the body, not a broken connection).
        loop {
            match tokio::time::timeout(Duration::from_secs(10), w.resp.chunk()).await {
                Ok(Ok(Some(_))) => continue,
                Ok(Ok(None)) => break,
                other => panic!("the watch stream did not end cleanly: {other:?}"),
            }
        }
    }
    let (status, v, _) = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (status, code(&v)),
        (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
        "{v}"
    );
    assert!(
        !node.log_text().contains("after the drain time"),
        "nothing had to be cut off"
    );

    // Back up, b's retry finds its place: the lock passes to it when a releases, with the
    // fencing token of its original enqueue (from before the stop).
    node.args.retain(|x| x != "--bootstrap");
    node.restart();
    node.wait_ready().await;
    ok(
        &node,
        "POST",
        "/api/v1/lock/release",
        Some(json!({"name": "jobs/sig", "lease": a})),
    )
    .await;
    let got = ok(&node, "POST", "/api/v1/lock/acquire", Some(acquire(b))).await;
    let token = got["fencingToken"].as_u64().unwrap();
    assert!(
        token > held["fencingToken"].as_u64().unwrap() && token <= queued_at,
        "b kept its place: token {token}, queued by revision {queued_at}"
    );
    node.stop();
}

async fn three() -> (tempfile::TempDir, Vec<NodeProc>) {
    let dir = tempfile::tempdir().unwrap();
    let first = NodeProc::start("node1", dir.path(), &["--bootstrap"]);
    first.wait_ready().await;
    let join = format!("--join={}", first.addr());
    let mut nodes = vec![first];
    for i in 2..=3 {
        let n = NodeProc::start(&format!("node{i}"), dir.path(), &[&join]);
        n.wait_ready().await;
        nodes.push(n);
    }
    (dir, nodes)
}

async fn leader_index(nodes: &[NodeProc], alive: &[bool]) -> usize {
    eventually("a leader", Duration::from_secs(20), || async {
        for (i, n) in nodes.iter().enumerate() {
            if alive[i]
                && let Ok(s) = n.client().status().await
                && s.role == "leader"
            {
                return Some(i);
            }
        }
        None
    })
    .await
}

/// Keeps a lease alive through whichever live node answers, until told to stop.
fn keep_alive(
    ports: Vec<u16>,
    id: u64,
    stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let http = reqwest::Client::new();
        let mut i = 0;
        while !*stop.borrow() {
            let port = ports[i % ports.len()];
            i += 1;
            let _ = http
                .post(format!(
                    "http://127.0.0.1:{port}/api/v1/lease/{id}/keepalive"
                ))
                .timeout(Duration::from_millis(800))
                .send()
                .await;
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })
}

/// Reads lease `id` linearizably every 50 ms through `ports` in turn until a read answers
/// that it is gone (at most 30 s); returns each answer's send time and whether it found it.
fn probe_lease(ports: Vec<u16>, id: u64) -> tokio::task::JoinHandle<Vec<(Instant, bool)>> {
    tokio::spawn(async move {
        let http = reqwest::Client::new();
        let mut seen = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut i = 0;
        while Instant::now() < deadline {
            let port = ports[i % ports.len()];
            i += 1;
            let call = Instant::now();
            let r = http
                .get(format!("http://127.0.0.1:{port}/api/v1/lease/{id}"))
                .timeout(Duration::from_secs(2))
                .send()
                .await;
            match r.map(|r| r.status()) {
                Ok(StatusCode::OK) => seen.push((call, true)),
                Ok(StatusCode::NOT_FOUND) => {
                    seen.push((call, false));
                    break;
                }
                _ => {}
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        seen
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn leases_locks_watches_and_retries_survive_a_leader_sigkill() {
    let (_dir, mut nodes) = three().await;
    let mut alive = vec![true; 3];
    let l = leader_index(&nodes, &alive).await;
    let (f1, f2) = ((l + 1) % 3, (l + 2) % 3);
    let survivors: Vec<u16> = vec![nodes[f1].port, nodes[f2].port];

    // A lease kept alive (through the survivors only) and one whose holder dies just before
    // the leader: kept alive until then, never again.
    let kept = ok(
        &nodes[f1],
        "POST",
        "/api/v1/lease",
        Some(json!({"ttlMs": 3000})),
    )
    .await["id"]
        .as_u64()
        .unwrap();
    let dead = ok(
        &nodes[f1],
        "POST",
        "/api/v1/lease",
        Some(json!({"ttlMs": 3000})),
    )
    .await["id"]
        .as_u64()
        .unwrap();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let keeper = keep_alive(survivors.clone(), kept, stop_rx);
    let every_node: Vec<u16> = nodes.iter().map(|n| n.port).collect();
    let (dead_stop_tx, dead_stop_rx) = tokio::sync::watch::channel(false);
    let dead_keeper = keep_alive(every_node, dead, dead_stop_rx);
    ok(
        &nodes[f2],
        "PUT",
        "/api/v1/kv/alive/k",
        Some(json!({"value": 1, "lease": kept})),
    )
    .await;
    let held = ok(
        &nodes[f1],
        "POST",
        "/api/v1/lock/acquire",
        Some(json!({"name": "m", "lease": dead})),
    )
    .await;
    let dead_token = held["fencingToken"].as_u64().unwrap();

    // The kept lease's holder waits for the lock on a follower.
    let url = nodes[f2].url("/api/v1/lock/acquire");
    let waiter = spawn_timed_post(url, json!({"name": "m", "lease": kept, "timeoutMs": 60000}));

    // A watch on the leader, and writes with idempotency keys.
    let start = nodes[f1].client().status().await.unwrap().revision + 1;
    let mut w = WatchStream::open(
        &nodes[l],
        &format!("prefix=seq/&startRevision={start}"),
        None,
    )
    .await
    .unwrap();
    let mut revisions = Vec::new();
    for i in 0..10 {
        let key = format!("seq-{i}");
        let (s, v) = call(
            &nodes[l],
            "PUT",
            &format!("/api/v1/kv/seq/{i}"),
            Some(json!({"value": i})),
            &[("Idempotency-Key", &key)],
        )
        .await;
        assert!(s.is_success(), "{v}");
        revisions.push(v["revision"].as_u64().unwrap());
    }
    let mut seen: Vec<u64> = w
        .changes(5, Duration::from_secs(10))
        .await
        .iter()
        .map(|e| e.id.unwrap())
        .collect();
    assert_eq!(seen, revisions[..5]);

    // The dead lease's holder stops; the leader dies a second later. The lease's own
    // deadline then falls within a TTL of the kill: only the new leader's grace (a full TTL
    // from its election) keeps it that long.
    dead_stop_tx.send(true).unwrap();
    dead_keeper.await.unwrap();
    eventually("the dead lease a second into its TTL", WAIT, || async {
        let (s, v) = call(
            &nodes[l],
            "GET",
            &format!("/api/v1/lease/{dead}"),
            None,
            &[],
        )
        .await;
        assert!(
            s.is_success(),
            "the lease ended before the leader died: {v}"
        );
        (v["remainingMs"].as_u64()? <= 2000).then_some(())
    })
    .await;
    nodes[l].kill();
    alive[l] = false;
    let killed_at = Instant::now();
    let probe = probe_lease(survivors.clone(), dead);

    // Retrying acknowledged writes on a survivor applies nothing again.
    for (i, rev) in revisions.iter().enumerate() {
        let key = format!("seq-{i}");
        let (s, v) = eventually_ok(
            &nodes[f1],
            "PUT",
            &format!("/api/v1/kv/seq/{i}"),
            json!({"value": i}),
            &key,
        )
        .await;
        assert!(s.is_success(), "{v}");
        assert_eq!(
            v["revision"].as_u64(),
            Some(*rev),
            "retry {i} answered the first write's revision"
        );
    }
    for i in 0..10 {
        let kv = nodes[f1]
            .client()
            .get(&format!("seq/{i}"))
            .await
            .unwrap()
            .unwrap()
            .kv;
        assert_eq!(kv.version, 1, "seq/{i} was written once");
    }
    // More writes after the failover, then resume the watch on a survivor after its last id.
    for i in 10..15 {
        let v = ok(
            &nodes[f2],
            "PUT",
            &format!("/api/v1/kv/seq/{i}"),
            Some(json!({"value": i})),
        )
        .await;
        revisions.push(v["revision"].as_u64().unwrap());
    }
    // Whatever the killed node sent before dying is kept; resume right after it.
    while let Some(ev) = w.next(Duration::from_millis(200)).await {
        if ev.event == "change" {
            seen.push(ev.id.unwrap());
        }
    }
    let mut r = WatchStream::open(&nodes[f2], "prefix=seq/", seen.last().copied())
        .await
        .unwrap();
    let rest = r
        .changes(revisions.len() - seen.len(), Duration::from_secs(20))
        .await;
    seen.extend(rest.iter().map(|e| e.id.unwrap()));
    assert_eq!(
        seen, revisions,
        "every change once, in order, across the node's death"
    );

    // The dead holder's lease expires (after the new leader's grace) and the lock passes.
    // No lease ends before a full TTL under the new leader, which was elected after the
    // kill: a linearizable read sent a TTL after the kill still found the lease, and the lock
    // passed later still (both measured when they happened, not when checked here).
    let (s, v, granted_at) = waiter.await.unwrap();
    assert!(s.is_success(), "{v}");
    assert!(v["fencingToken"].as_u64().unwrap() > dead_token);
    let ttl = Duration::from_secs(3);
    assert!(
        granted_at.duration_since(killed_at) >= ttl,
        "the lock passed {:?} after the leader died, before a full TTL",
        granted_at.duration_since(killed_at)
    );
    let seen = probe.await.unwrap();
    let last_found = seen
        .iter()
        .filter(|(_, found)| *found)
        .map(|(call, _)| call.duration_since(killed_at))
        .max();
    assert!(
        last_found.is_some_and(|t| t >= ttl),
        "the lease was last seen {last_found:?} after the leader died, less than its TTL: \
         {} reads ({} found)",
        seen.len(),
        seen.iter().filter(|(_, f)| *f).count()
    );
    assert!(
        seen.last().is_some_and(|(_, found)| !found),
        "the probe never saw the lease end"
    );
    let (s, v) = call(
        &nodes[f1],
        "GET",
        &format!("/api/v1/lease/{dead}"),
        None,
        &[],
    )
    .await;
    assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "lease_not_found"));
    // The kept lease lived through the failover, its key too.
    tokio::time::sleep(Duration::from_secs(2)).await;
    ok(&nodes[f1], "GET", &format!("/api/v1/lease/{kept}"), None).await;
    assert!(nodes[f2].client().get("alive/k").await.unwrap().is_some());
    stop_tx.send(true).unwrap();
    keeper.await.unwrap();
}

/// Retries a keyed put until the cluster answers (a new leader may still be settling).
async fn eventually_ok(
    node: &NodeProc,
    method: &str,
    path: &str,
    body: Value,
    key: &str,
) -> (StatusCode, Value) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (s, v) = call(
            node,
            method,
            path,
            Some(body.clone()),
            &[("Idempotency-Key", key)],
        )
        .await;
        if s.is_success() || Instant::now() > deadline || !s.is_server_error() {
            return (s, v);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn idempotency_answers_are_swept_after_the_retention() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProc::start(
        "n1",
        dir.path(),
        &["--bootstrap", "--idempotency-retention-secs=1"],
    );
    node.wait_ready().await;
    let h = [("Idempotency-Key", "sweep-me")];
    let body = json!({"value": 1});
    let (s1, first) = call(&node, "PUT", "/api/v1/kv/s", Some(body.clone()), &h).await;
    let (s2, retry) = call(&node, "PUT", "/api/v1/kv/s", Some(body.clone()), &h).await;
    assert!(s1.is_success() && s2.is_success(), "{first} {retry}");
    assert!(first["revision"].is_u64(), "{first}");
    assert_eq!(
        first["revision"], retry["revision"],
        "within the retention: applied once"
    );
    // After the retention the leader sweeps the answer (through the log); the key is new again.
    let again = eventually("the sweep", Duration::from_secs(15), || async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (_, v) = call(&node, "PUT", "/api/v1/kv/s", Some(json!({"value": 1})), &h).await;
        (v["revision"] != first["revision"]).then_some(v)
    })
    .await;
    let revision = |v: &Value| {
        v["revision"]
            .as_u64()
            .expect("a write's answer has its revision")
    };
    assert!(revision(&again) > revision(&first), "{again} after {first}");
    assert_eq!(node.client().get("s").await.unwrap().unwrap().kv.version, 2);
}
