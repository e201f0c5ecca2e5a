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
