//! Every route against every kind of caller, and bad input answered with a clear 4xx.

mod common;

use common::*;
use reqwest::Method;
use reqwest::StatusCode;
use serde_json::Value;
use serde_json::json;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Needs {
    Nothing,
    Agent,
    Admin,
}

/// Every route the node serves, with the role it needs. `lease` is a live lease's id.
/// A test below checks this list against the node's OpenAPI document, both ways.
fn routes(lease: u64) -> Vec<(&'static str, String, Option<String>, Needs)> {
    let b = |s: &str| Some(s.to_string());
    let lock = format!(r#"{{"name": "auth", "lease": {lease}, "wait": false}}"#);
    let campaign = format!(r#"{{"name": "auth", "lease": {lease}, "value": "me"}}"#);
    let unlock = format!(r#"{{"name": "auth", "lease": {lease}}}"#);
    vec![
        ("GET", "/api/v1/health".into(), None, Needs::Nothing),
        ("GET", "/api/v1/ready".into(), None, Needs::Nothing),
        ("GET", "/api/v1/cluster/status".into(), None, Needs::Nothing),
        (
            "GET",
            "/api/v1/cluster/version".into(),
            None,
            Needs::Nothing,
        ),
        ("GET", "/api/v1/openapi.json".into(), None, Needs::Nothing),
        (
            "PUT",
            "/api/v1/kv/auth/k".into(),
            b(r#"{"value": 1}"#),
            Needs::Agent,
        ),
        (
            "POST",
            "/api/v1/kv/auth/k".into(),
            b(r#"{"value": 2}"#),
            Needs::Agent,
        ),
        ("GET", "/api/v1/kv/auth/k".into(), None, Needs::Agent),
        ("GET", "/api/v1/kv?prefix=auth/".into(), None, Needs::Agent),
        ("DELETE", "/api/v1/kv/auth/k".into(), None, Needs::Agent),
        (
            "POST",
            "/api/v1/txn".into(),
            b(
                r#"{"compare": [{"key": "auth/t", "target": "version", "op": "greater", "value": 0}],
                  "success": [{"type": "delete", "key": "auth/t"}],
                  "failure": [{"type": "put", "key": "auth/t", "value": 1}, {"type": "get", "key": "auth/k"}]}"#,
            ),
            Needs::Agent,
        ),
        (
            "POST",
            "/api/v1/lease".into(),
            b(r#"{"ttlMs": 60000}"#),
            Needs::Agent,
        ),
        ("GET", "/api/v1/lease".into(), None, Needs::Agent),
        ("GET", format!("/api/v1/lease/{lease}"), None, Needs::Agent),
        (
            "POST",
            format!("/api/v1/lease/{lease}/keepalive"),
            None,
            Needs::Agent,
        ),
        (
            "GET",
            "/api/v1/watch?prefix=auth/".into(),
            None,
            Needs::Agent,
        ),
        (
            "POST",
            "/api/v1/lock/acquire".into(),
            Some(lock),
            Needs::Agent,
        ),
        (
            "POST",
            "/api/v1/lock/release".into(),
            Some(unlock.clone()),
            Needs::Agent,
        ),
        (
            "POST",
            "/api/v1/election/campaign".into(),
            Some(campaign),
            Needs::Agent,
        ),
        (
            "GET",
            "/api/v1/election/leader?name=auth".into(),
            None,
            Needs::Agent,
        ),
        (
            "POST",
            "/api/v1/election/resign".into(),
            Some(unlock),
            Needs::Agent,
        ),
        // Last: revoking twice answers lease_not_found the second time (checked as "passes").
        (
            "DELETE",
            format!("/api/v1/lease/{lease}"),
            None,
            Needs::Agent,
        ),
        ("GET", "/metrics".into(), None, Needs::Admin),
        ("GET", "/api/v1/metrics".into(), None, Needs::Admin),
        (
            "POST",
            "/api/v1/cluster/snapshot".into(),
            None,
            Needs::Admin,
        ),
        ("GET", "/api/v1/cluster/backup".into(), None, Needs::Admin),
        ("GET", "/api/v1/cluster/alarms".into(), None, Needs::Admin),
        (
            "POST",
            "/api/v1/cluster/alarms/disarm".into(),
            b(r#"{"kind": "no_space"}"#),
            Needs::Admin,
        ),
        (
            "POST",
            "/api/v1/cluster/compact".into(),
            b("{}"),
            Needs::Admin,
        ),
        ("POST", "/api/v1/cluster/join".into(), b("{}"), Needs::Admin),
        (
            "POST",
            "/api/v1/cluster/remove".into(),
            b(r#"{"nodeId": "nobody"}"#),
            Needs::Admin,
        ),
        (
            "POST",
            "/api/v1/cluster/transfer-leader".into(),
            b(r#"{"nodeId": "nobody"}"#),
            Needs::Admin,
        ),
        ("POST", "/api/v1/raft/append".into(), b("{}"), Needs::Admin),
        ("GET", "/api/v1/raft/stream".into(), None, Needs::Admin),
        ("GET", "/api/v1/raft/forward".into(), None, Needs::Admin),
        ("POST", "/api/v1/raft/vote".into(), b("{}"), Needs::Admin),
        (
            "POST",
            "/api/v1/raft/pre-vote".into(),
            b("{}"),
            Needs::Admin,
        ),
        (
            "POST",
            "/api/v1/raft/transfer-leader".into(),
            b("{}"),
            Needs::Admin,
        ),
        ("POST", "/api/v1/raft/snapshot".into(), b(""), Needs::Admin),
        ("POST", "/api/v1/raft/write".into(), b("{}"), Needs::Admin),
        (
            "POST",
            "/api/v1/raft/write-batch".into(),
            b("{}"),
            Needs::Admin,
        ),
        (
            "POST",
            "/api/v1/raft/read-index".into(),
            b("{}"),
            Needs::Admin,
        ),
        ("POST", "/api/v1/raft/lease".into(), b("{}"), Needs::Admin),
        (
            "POST",
            "/api/v1/raft/state-hash".into(),
            b("{}"),
            Needs::Admin,
        ),
        (
            "POST",
            "/api/v1/raft/check-state".into(),
            b("{}"),
            Needs::Admin,
        ),
    ]
}

/// Whether a concrete request path is an instance of an OpenAPI path template.
fn instance_of(path: &str, template: &str) -> bool {
    let path = path.split('?').next().unwrap();
    let p: Vec<&str> = path.split('/').collect();
    let t: Vec<&str> = template.split('/').collect();
    if t.last() == Some(&"{key}") {
        return p.len() >= t.len() && p[..t.len() - 1] == t[..t.len() - 1];
    }
    p.len() == t.len()
        && p.iter()
            .zip(&t)
            .all(|(a, b)| a == b || (b.starts_with('{') && b.ends_with('}')))
}

async fn call(
    node: &NodeProc,
    method: &str,
    path: &str,
    body: Option<&str>,
    key: Option<&str>,
) -> (StatusCode, String) {
    let http = reqwest::Client::new();
    let mut rb = http.request(
        Method::from_bytes(method.as_bytes()).unwrap(),
        node.url(path),
    );
    if let Some(k) = key {
        rb = rb.bearer_auth(k);
    }
    if let Some(b) = body {
        rb = rb.body(b.to_string());
    }
    let resp = rb.send().await.unwrap();
    let status = resp.status();
    if status.is_success()
        && resp
            .headers()
            .get("content-type")
            .is_some_and(|c| c.as_bytes().starts_with(b"text/event-stream"))
    {
        // A watch streams until closed: its status is the answer.
        return (status, String::new());
    }
    (status, resp.text().await.unwrap())
}

fn error_code(body: &str) -> String {
    let v: Value =
        serde_json::from_str(body).unwrap_or_else(|_| panic!("error body is not JSON: {body}"));
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "no message: {body}"
    );
    v["error"]["code"].as_str().unwrap().to_string()
}

/// Credentials of a credentials file: an admin, an agent whose rules cover every key and
/// name the matrix uses (`auth...`), and one whose rules cover none of them.
const OPS_TOKEN: &str = "ops-token-0123456789";
const INSIDE_TOKEN: &str = "inside-token-0123456789";
const OUTSIDE_TOKEN: &str = "outside-token-0123456789";

fn credentials_file(dir: &std::path::Path) -> String {
    let path = dir.join("credentials.yaml");
    std::fs::write(
        &path,
        format!(
            "credentials:\n\
             - name: ops\n  role: admin\n  tokens: [{OPS_TOKEN}]\n\
             - name: inside\n  role: agent\n  tokens: [{INSIDE_TOKEN}]\n  write: [auth]\n\
             - name: outside\n  role: agent\n  tokens: [{OUTSIDE_TOKEN}]\n  read: [other/]\n  write: [mine/]\n"
        ),
    )
    .unwrap();
    format!("--credentials-file={}", path.display())
}

#[tokio::test(flavor = "multi_thread")]
async fn every_route_checks_the_callers_role() {
    let dir = tempfile::tempdir().unwrap();
    let admin = format!("--api-key={ADMIN_KEY}");
    let agent = format!("--agent-key={AGENT_KEY}");
    let credentials = credentials_file(dir.path());
    let node = NodeProc::start(
        "n1",
        dir.path(),
        &["--bootstrap", &admin, &agent, &credentials],
    );
    node.wait_ready().await;
    // The lease below is owned by the agent key's credential.
    newest_command_set(&node).await;
    let (_, granted) = call(
        &node,
        "POST",
        "/api/v1/lease",
        Some(r#"{"ttlMs": 600000}"#),
        Some(AGENT_KEY),
    )
    .await;
    let lease = serde_json::from_str::<Value>(&granted).unwrap()["id"]
        .as_u64()
        .unwrap();
    let routes = routes(lease);

    // The matrix is exhaustive: every documented operation is in it, and nothing else.
    let (status, doc) = call(&node, "GET", "/api/v1/openapi.json", None, None).await;
    assert!(status.is_success());
    let doc: Value = serde_json::from_str(&doc).unwrap();
    let checked_in: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.json"))
            .unwrap(),
    )
    .unwrap();
    assert!(
        doc == checked_in,
        "the served OpenAPI document differs from docs/openapi.json"
    );
    let mut documented = Vec::new();
    for (template, ops) in doc["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            documented.push((method.to_uppercase(), template.clone()));
        }
    }
    for (method, template) in &documented {
        assert!(
            routes
                .iter()
                .any(|(m, p, _, _)| m == method && instance_of(p, template)),
            "{method} {template} is documented but not in this test's matrix"
        );
    }
    for (method, path, _, _) in &routes {
        assert!(
            documented
                .iter()
                .any(|(m, t)| m == method && instance_of(path, t)),
            "{method} {path} is not in the OpenAPI document"
        );
    }

    for (method, path, body, needs) in routes.iter().cloned() {
        let (method, path, body) = (method, path.as_str(), body.as_deref());
        // The lease routes touch no key; those that use the lease (keep it alive, revoke it,
        // hold a lock or an election's place with it) are its owner's (the agent key's,
        // which granted it) and the admins'.
        let keyed = !path.starts_with("/api/v1/lease");
        let uses_lease = (path.starts_with("/api/v1/lease/") && method != "GET")
            || ["/lock/acquire", "/lock/release", "/campaign", "/resign"]
                .iter()
                .any(|p| path.ends_with(p));
        for (who, key) in [
            ("nobody", None),
            ("a wrong key", Some("not-the-key")),
            ("outside", Some(OUTSIDE_TOKEN)),
            ("inside", Some(INSIDE_TOKEN)),
            ("agent", Some(AGENT_KEY)),
            ("ops", Some(OPS_TOKEN)),
            ("admin", Some(ADMIN_KEY)),
        ] {
            let (status, text) = call(&node, method, path, body, key).await;
            let admin = who == "admin" || who == "ops";
            // A lease's answer names its keys and owner: another credential's lease is shown
            // only to one that reads every key (this one holds no key when it is read).
            let reads_lease = method == "GET" && path.starts_with("/api/v1/lease/");
            let allowed = match needs {
                Needs::Nothing => true,
                Needs::Agent if uses_lease && (who == "inside" || who == "outside") => false,
                Needs::Agent if reads_lease && (who == "inside" || who == "outside") => false,
                Needs::Agent if who == "outside" => !keyed,
                Needs::Agent => who == "agent" || who == "inside" || admin,
                Needs::Admin => admin,
            };
            let case = format!("{method} {path} as {who}: {status} {text}");
            // Peer and membership routes get deliberately bogus bodies: they must pass the role
            // check and then refuse the request itself; every other route must succeed.
            let bogus = path.contains("/raft/")
                || ["/join", "/remove", "/transfer-leader"]
                    .iter()
                    .any(|p| path.ends_with(p))
                || (method == "DELETE" && path.starts_with("/api/v1/lease/"));
            if allowed && !bogus {
                assert!(status.is_success(), "{case}");
            } else if allowed {
                assert!(
                    status != StatusCode::UNAUTHORIZED
                        && status != StatusCode::FORBIDDEN
                        && !status.is_server_error(),
                    "{case}"
                );
            } else if ["agent", "inside", "outside"].contains(&who) {
                assert_eq!(status, StatusCode::FORBIDDEN, "{case}");
                assert_eq!(error_code(&text), "forbidden", "{case}");
                assert!(text.contains(&format!("the {who} credential")), "{case}");
            } else {
                assert_eq!(status, StatusCode::UNAUTHORIZED, "{case}");
                assert_eq!(error_code(&text), "unauthorized", "{case}");
            }
        }
    }

    // Public answers reveal no secret.
    let (_, status) = call(&node, "GET", "/api/v1/cluster/status", None, None).await;
    assert!(!status.contains(ADMIN_KEY) && !status.contains(AGENT_KEY));
    for key in [ADMIN_KEY, AGENT_KEY, OPS_TOKEN, INSIDE_TOKEN, OUTSIDE_TOKEN] {
        assert!(!node.log_text().contains(key), "keys must never be logged");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_a_clear_4xx() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProc::start("n1", dir.path(), &["--bootstrap"]);
    node.wait_ready().await;
    let long_key = "k".repeat(1025);
    let big_value = format!(r#"{{"value": "{}"}}"#, "x".repeat((1 << 20) + 10));
    let big_txn = format!(
        r#"{{"success": [{}]}}"#,
        (0..129)
            .map(|i| format!(r#"{{"type": "get", "key": "k{i}"}}"#))
            .collect::<Vec<_>>()
            .join(",")
    );
    let cases: Vec<(&str, String, Option<String>, u16, &str)> = vec![
        (
            "PUT",
            "/api/v1/kv/a".into(),
            Some("{not json".into()),
            400,
            "invalid_body",
        ),
        (
            "PUT",
            "/api/v1/kv/a".into(),
            Some("".into()),
            400,
            "invalid_body",
        ),
        (
            "PUT",
            "/api/v1/kv/a".into(),
            Some(r#"{"valu": 1}"#.into()),
            400,
            "invalid_body",
        ),
        (
            "PUT",
            "/api/v1/kv/a".into(),
            Some(r#"{"value": 1, "extra": 2}"#.into()),
            400,
            "invalid_body",
        ),
        (
            "PUT",
            "/api/v1/kv/a".into(),
            Some(r#"[1, 2]"#.into()),
            400,
            "invalid_body",
        ),
        (
            "PUT",
            format!("/api/v1/kv/{long_key}"),
            Some(r#"{"value": 1}"#.into()),
            400,
            "invalid_key",
        ),
        (
            "PUT",
            "/api/v1/kv/a%0Ab".into(),
            Some(r#"{"value": 1}"#.into()),
            400,
            "invalid_key",
        ),
        (
            "PUT",
            "/api/v1/kv/a".into(),
            Some(big_value),
            400,
            "value_too_large",
        ),
        (
            "GET",
            "/api/v1/kv/a?consistency=sometimes".into(),
            None,
            400,
            "invalid_query",
        ),
        (
            "GET",
            "/api/v1/kv?limit=0".into(),
            None,
            400,
            "invalid_limit",
        ),
        (
            "GET",
            "/api/v1/kv?limit=-1".into(),
            None,
            400,
            "invalid_query",
        ),
        (
            "GET",
            "/api/v1/kv?bogus=1".into(),
            None,
            400,
            "invalid_query",
        ),
        (
            "GET",
            "/api/v1/kv/missing".into(),
            None,
            404,
            "key_not_found",
        ),
        ("GET", "/api/v1/nope".into(), None, 404, "not_found"),
        // Transactions.
        ("POST", "/api/v1/txn".into(), Some("{not json".into()), 400, "invalid_body"),
        ("POST", "/api/v1/txn".into(), Some(r#"{"succes": []}"#.into()), 400, "invalid_body"),
        (
            "POST",
            "/api/v1/txn".into(),
            Some(r#"{"success": [{"type": "increment", "key": "a"}]}"#.into()),
            400,
            "invalid_body",
        ),
        (
            "POST",
            "/api/v1/txn".into(),
            Some(r#"{"success": [{"type": "put", "key": "a", "value": 1, "ttl": 5}]}"#.into()),
            400,
            "invalid_body",
        ),
        (
            "POST",
            "/api/v1/txn".into(),
            Some(r#"{"compare": [{"key": "a", "target": "size", "value": 1}]}"#.into()),
            400,
            "invalid_body",
        ),
        (
            "POST",
            "/api/v1/txn".into(),
            Some(r#"{"compare": [{"key": "a", "target": "modRevision", "value": -1}]}"#.into()),
            400,
            "invalid_compare",
        ),
        (
            "POST",
            "/api/v1/txn".into(),
            Some(r#"{"compare": [{"key": "a", "target": "modRevision", "value": "7"}]}"#.into()),
            400,
            "invalid_compare",
        ),
        (
            "POST",
            "/api/v1/txn".into(),
            Some(r#"{"compare": [{"key": "a", "target": "exists", "op": "greater", "value": true}]}"#.into()),
            400,
            "invalid_compare",
        ),
        (
            "POST",
            "/api/v1/txn".into(),
            Some(r#"{"compare": [{"key": "a", "target": "value", "op": "less", "value": [1]}]}"#.into()),
            400,
            "invalid_compare",
        ),
        ("POST", "/api/v1/txn".into(), Some(big_txn), 400, "txn_too_large"),
        (
            "POST",
            "/api/v1/txn".into(),
            Some(r#"{"success": [{"type": "put", "key": "a", "value": 1}, {"type": "delete", "key": "a"}]}"#.into()),
            400,
            "duplicate_key",
        ),
        (
            "POST",
            "/api/v1/txn".into(),
            Some(r#"{"success": [{"type": "put", "key": "d/a", "value": 1}, {"type": "deletePrefix", "prefix": "d/"}]}"#.into()),
            400,
            "duplicate_key",
        ),
        (
            "POST",
            "/api/v1/txn".into(),
            Some(format!(r#"{{"success": [{{"type": "put", "key": "{long_key}", "value": 1}}]}}"#)),
            400,
            "invalid_key",
        ),
        (
            "POST",
            "/api/v1/txn".into(),
            Some(r#"{"success": [{"type": "put", "key": "a", "value": 1, "lease": 987654}]}"#.into()),
            404,
            "lease_not_found",
        ),
        // Leases.
        ("POST", "/api/v1/lease".into(), Some(r#"{"ttlMs": 10}"#.into()), 400, "invalid_ttl"),
        ("POST", "/api/v1/lease".into(), Some(r#"{"ttl": 10}"#.into()), 400, "invalid_body"),
        ("GET", "/api/v1/lease/abc".into(), None, 400, "invalid_lease"),
        ("GET", "/api/v1/lease/0".into(), None, 400, "invalid_lease"),
        ("GET", "/api/v1/lease/987654".into(), None, 404, "lease_not_found"),
        ("POST", "/api/v1/lease/987654/keepalive".into(), None, 404, "lease_not_found"),
        ("DELETE", "/api/v1/lease/987654".into(), None, 404, "lease_not_found"),
        (
            "PUT",
            "/api/v1/kv/a".into(),
            Some(r#"{"value": 1, "lease": 987654}"#.into()),
            404,
            "lease_not_found",
        ),
        ("PUT", "/api/v1/kv/a".into(), Some(r#"{"value": 1, "lease": 0}"#.into()), 400, "invalid_lease"),
        // Watches.
        ("GET", "/api/v1/watch?prefix=a&startRevision=0".into(), None, 400, "invalid_revision"),
        ("GET", "/api/v1/watch?prefix=a&startRevision=-3".into(), None, 400, "invalid_query"),
        ("GET", "/api/v1/watch?prefix=a&progressMs=5".into(), None, 400, "invalid_query"),
        // Locks and elections.
        (
            "POST",
            "/api/v1/lock/acquire".into(),
            Some(r#"{"name": "", "lease": 1}"#.into()),
            400,
            "invalid_name",
        ),
        (
            "POST",
            "/api/v1/lock/acquire".into(),
            Some(r#"{"name": "x", "lease": 987654, "timeoutMs": 999999999}"#.into()),
            400,
            "invalid_timeout",
        ),
        (
            "POST",
            "/api/v1/lock/acquire".into(),
            Some(r#"{"name": "x", "lease": 987654}"#.into()),
            404,
            "lease_not_found",
        ),
        (
            "POST",
            "/api/v1/election/campaign".into(),
            Some(r#"{"name": "x", "lease": 987654}"#.into()),
            400,
            "invalid_body",
        ),
        ("GET", "/api/v1/election/leader".into(), None, 400, "invalid_query"),
    ];
    for (method, path, body, status, code) in cases {
        let (got, text) = call(&node, method, &path, body.as_deref(), None).await;
        let shown = &path[..path.len().min(60)];
        assert_eq!(got.as_u16(), status, "{method} {shown}: {text}");
        assert_eq!(error_code(&text), code, "{method} {shown}: {text}");
    }

    // A bad Last-Event-ID is refused.
    let resp = reqwest::Client::new()
        .get(node.url("/api/v1/watch?prefix=a"))
        .header("Last-Event-ID", "yesterday")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&resp.text().await.unwrap()), "invalid_revision");

    // A body over the request limit is refused before it is parsed.
    let huge = format!(r#"{{"value": "{}"}}"#, "x".repeat(3 << 20));
    let (got, text) = call(&node, "PUT", "/api/v1/kv/a", Some(&huge), None).await;
    assert_eq!(got, StatusCode::PAYLOAD_TOO_LARGE, "{text}");
    assert_eq!(error_code(&text), "body_too_large");
    // JSON labelled as a form (what `curl -d` sends) is still JSON; nothing bad was applied.
    let resp = reqwest::Client::new()
        .put(node.url("/api/v1/kv/form"))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(r#"{"value": {"ok": true}}"#)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
    let status = node.client().status().await.unwrap();
    assert_eq!(
        status.revision, 1,
        "only the one good write changed anything"
    );
    assert_eq!(
        node.client().get("form").await.unwrap().unwrap().kv.value,
        json!({"ok": true})
    );

    // Also on a route that reads no body: the delete is refused, not applied.
    let (got, text) = call(
        &node,
        "PUT",
        "/api/v1/kv/kept",
        Some(r#"{"value": 1}"#),
        None,
    )
    .await;
    assert_eq!(got, StatusCode::OK, "{text}");
    let (got, text) = call(&node, "DELETE", "/api/v1/kv/kept", Some(&huge), None).await;
    assert_eq!(got, StatusCode::PAYLOAD_TOO_LARGE, "{text}");
    assert_eq!(error_code(&text), "body_too_large");
    let (got, text) = call(&node, "GET", "/api/v1/kv/kept", None, None).await;
    assert_eq!(
        got,
        StatusCode::OK,
        "the refused delete was applied: {text}"
    );

    // A value nested as deep as allowed is stored and read back by a default JSON parser (its
    // answer wraps it deeper); one level more is refused.
    let nested = |depth: usize| format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    let body = format!(r#"{{"value": {}}}"#, nested(64));
    let (got, text) = call(&node, "PUT", "/api/v1/kv/deep", Some(&body), None).await;
    assert_eq!(got, StatusCode::OK, "{text}");
    let (got, text) = call(&node, "GET", "/api/v1/kv/deep", None, None).await;
    assert_eq!(got, StatusCode::OK, "{text}");
    let read: serde_json::Value = serde_json::from_str(&text).expect("the answer parses");
    assert_eq!(
        read["kv"]["value"],
        serde_json::from_str::<serde_json::Value>(&nested(64)).unwrap()
    );
    let body = format!(r#"{{"value": {}}}"#, nested(65));
    let (got, text) = call(&node, "PUT", "/api/v1/kv/deeper", Some(&body), None).await;
    assert_eq!(got, StatusCode::BAD_REQUEST, "{text}");
    assert_eq!(error_code(&text), "value_too_large", "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_agent_key_may_not_write_lock_and_election_keys_in_any_way() {
    let dir = tempfile::tempdir().unwrap();
    let admin = format!("--api-key={ADMIN_KEY}");
    let agent = format!("--agent-key={AGENT_KEY}");
    let node = NodeProc::start("n1", dir.path(), &["--bootstrap", &admin, &agent]);
    node.wait_ready().await;
    let (_, granted) = call(
        &node,
        "POST",
        "/api/v1/lease",
        Some(r#"{"ttlMs": 60000}"#),
        Some(AGENT_KEY),
    )
    .await;
    let lease = serde_json::from_str::<Value>(&granted).unwrap()["id"]
        .as_u64()
        .unwrap();
    let lock = format!(r#"{{"name": "db", "lease": {lease}}}"#);
    let (s, held) = call(
        &node,
        "POST",
        "/api/v1/lock/acquire",
        Some(&lock),
        Some(AGENT_KEY),
    )
    .await;
    assert!(s.is_success(), "{held}");
    let key = serde_json::from_str::<Value>(&held).unwrap()["key"]
        .as_str()
        .unwrap()
        .to_string();
    let before = node.admin().status().await.unwrap().revision;

    let writes = [
        (
            "PUT",
            format!("/api/v1/kv/{key}"),
            Some(r#"{"value": "mine"}"#.to_string()),
        ),
        (
            "POST",
            "/api/v1/kv/_concordance/lock/db/0000000000000001".into(),
            Some(r#"{"value": 1}"#.into()),
        ),
        ("DELETE", format!("/api/v1/kv/{key}"), None),
        (
            "POST",
            "/api/v1/txn".into(),
            Some(format!(
                r#"{{"success": [{{"type": "put", "key": "{key}", "value": 1}}]}}"#
            )),
        ),
        (
            "POST",
            "/api/v1/txn".into(),
            Some(format!(
                r#"{{"success": [{{"type": "delete", "key": "{key}"}}]}}"#
            )),
        ),
        // Hidden in the failure branch: still refused, whatever the compares say.
        (
            "POST",
            "/api/v1/txn".into(),
            Some(format!(
                r#"{{"failure": [{{"type": "get", "key": "a"}}, {{"type": "delete", "key": "{key}"}}]}}"#
            )),
        ),
        (
            "POST",
            "/api/v1/txn".into(),
            Some(
                r#"{"success": [{"type": "deletePrefix", "prefix": "_concordance/lock/"}]}"#.into(),
            ),
        ),
        (
            "POST",
            "/api/v1/txn".into(),
            Some(r#"{"success": [{"type": "deletePrefix", "prefix": "_"}]}"#.into()),
        ),
        (
            "POST",
            "/api/v1/txn".into(),
            Some(r#"{"success": [{"type": "deletePrefix", "prefix": ""}]}"#.into()),
        ),
    ];
    for (method, path, body) in &writes {
        let (s, text) = call(&node, method, path, body.as_deref(), Some(AGENT_KEY)).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{method} {path} {body:?}: {text}");
        assert_eq!(error_code(&text), "forbidden");
    }
    assert_eq!(
        node.admin().status().await.unwrap().revision,
        before,
        "nothing was written"
    );
    // Reading them is fine, and other keys in the same transaction shape are fine.
    let (s, _) = call(
        &node,
        "GET",
        &format!("/api/v1/kv/{key}"),
        None,
        Some(AGENT_KEY),
    )
    .await;
    assert!(s.is_success());
    let (s, text) = call(&node, "POST", "/api/v1/txn", Some(r#"{"success": [{"type": "deletePrefix", "prefix": "a"}, {"type": "get", "key": "_concordance/x"}]}"#), Some(AGENT_KEY)).await;
    assert!(s.is_success(), "{text}");
    // The admin may repair them (here: force-release the lock).
    let (s, text) = call(
        &node,
        "DELETE",
        &format!("/api/v1/kv/{key}"),
        None,
        Some(ADMIN_KEY),
    )
    .await;
    assert!(s.is_success(), "{text}");
    assert_eq!(serde_json::from_str::<Value>(&text).unwrap()["deleted"], 1);
}
