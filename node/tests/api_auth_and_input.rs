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

/// Every route the node serves, with the role it needs.
const ROUTES: &[(&str, &str, Option<&str>, Needs)] = &[
    ("GET", "/api/v1/health", None, Needs::Nothing),
    ("GET", "/api/v1/ready", None, Needs::Nothing),
    ("GET", "/api/v1/cluster/status", None, Needs::Nothing),
    (
        "PUT",
        "/api/v1/kv/auth/k",
        Some(r#"{"value": 1}"#),
        Needs::Agent,
    ),
    (
        "POST",
        "/api/v1/kv/auth/k",
        Some(r#"{"value": 2}"#),
        Needs::Agent,
    ),
    ("GET", "/api/v1/kv/auth/k", None, Needs::Agent),
    ("GET", "/api/v1/kv?prefix=auth/", None, Needs::Agent),
    ("DELETE", "/api/v1/kv/auth/k", None, Needs::Agent),
    ("GET", "/metrics", None, Needs::Admin),
    ("GET", "/api/v1/metrics", None, Needs::Admin),
    ("POST", "/api/v1/cluster/snapshot", None, Needs::Admin),
    ("GET", "/api/v1/cluster/backup", None, Needs::Admin),
    ("POST", "/api/v1/cluster/join", Some("{}"), Needs::Admin),
    (
        "POST",
        "/api/v1/cluster/remove",
        Some(r#"{"nodeId": "nobody"}"#),
        Needs::Admin,
    ),
    (
        "POST",
        "/api/v1/cluster/transfer-leader",
        Some(r#"{"nodeId": "nobody"}"#),
        Needs::Admin,
    ),
    ("POST", "/api/v1/raft/append", Some("{}"), Needs::Admin),
    ("POST", "/api/v1/raft/vote", Some("{}"), Needs::Admin),
    ("POST", "/api/v1/raft/pre-vote", Some("{}"), Needs::Admin),
    (
        "POST",
        "/api/v1/raft/transfer-leader",
        Some("{}"),
        Needs::Admin,
    ),
    ("POST", "/api/v1/raft/snapshot", Some(""), Needs::Admin),
    ("POST", "/api/v1/raft/write", Some("{}"), Needs::Admin),
    ("POST", "/api/v1/raft/read-index", Some("{}"), Needs::Admin),
];

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

#[tokio::test(flavor = "multi_thread")]
async fn every_route_checks_the_callers_role() {
    let dir = tempfile::tempdir().unwrap();
    let admin = format!("--api-key={ADMIN_KEY}");
    let agent = format!("--agent-key={AGENT_KEY}");
    let node = NodeProc::start("n1", dir.path(), &["--bootstrap", &admin, &agent]);
    node.wait_ready().await;

    for &(method, path, body, needs) in ROUTES {
        for (who, key) in [
            ("nobody", None),
            ("a wrong key", Some("not-the-key")),
            ("agent", Some(AGENT_KEY)),
            ("admin", Some(ADMIN_KEY)),
        ] {
            let (status, text) = call(&node, method, path, body, key).await;
            let allowed = match needs {
                Needs::Nothing => true,
                Needs::Agent => who == "agent" || who == "admin",
                Needs::Admin => who == "admin",
            };
            let case = format!("{method} {path} as {who}: {status} {text}");
            // Peer and membership routes get deliberately bogus bodies: they must pass the role
            // check and then refuse the request itself; every other route must succeed.
            let bogus = path.contains("/raft/")
                || ["/join", "/remove", "/transfer-leader"]
                    .iter()
                    .any(|p| path.ends_with(p));
            if allowed && !bogus {
                assert!(status.is_success(), "{case}");
            } else if allowed {
                assert!(
                    status != StatusCode::UNAUTHORIZED
                        && status != StatusCode::FORBIDDEN
                        && !status.is_server_error(),
                    "{case}"
                );
            } else if who == "agent" {
                assert_eq!(status, StatusCode::FORBIDDEN, "{case}");
                assert_eq!(error_code(&text), "forbidden", "{case}");
            } else {
                assert_eq!(status, StatusCode::UNAUTHORIZED, "{case}");
                assert_eq!(error_code(&text), "unauthorized", "{case}");
            }
        }
    }

    // Public answers reveal no secret.
    let (_, status) = call(&node, "GET", "/api/v1/cluster/status", None, None).await;
    assert!(!status.contains(ADMIN_KEY) && !status.contains(AGENT_KEY));
    assert!(
        !node.log_text().contains(ADMIN_KEY),
        "keys must never be logged"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_a_clear_4xx() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProc::start("n1", dir.path(), &["--bootstrap"]);
    node.wait_ready().await;
    let long_key = "k".repeat(1025);
    let big_value = format!(r#"{{"value": "{}"}}"#, "x".repeat((1 << 20) + 10));
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
    ];
    for (method, path, body, status, code) in cases {
        let (got, text) = call(&node, method, &path, body.as_deref(), None).await;
        let shown = &path[..path.len().min(60)];
        assert_eq!(got.as_u16(), status, "{method} {shown}: {text}");
        assert_eq!(error_code(&text), code, "{method} {shown}: {text}");
    }

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
}
