//! The real `concordancectl` binary against a real node (spawned with `dev::LocalNode`).
//!
//! The node binary is found through `CONCORDANCE_BIN` or next to this test's target folder
//! (`<target>/release/concordance`); `cargo test --workspace` builds it, otherwise run
//! `cargo build --release -p concordance` first.

use std::io::Write;
use std::process::Command;
use std::process::Output;
use std::process::Stdio;

use concordance_client::dev::LocalNode;
use concordance_client::dev::LocalNodeOptions;
use concordance_test_support::concordance_bin;
use serde_json::Value;
use serde_json::json;

const KEY: &str = "cli-test-admin-key";

async fn node() -> LocalNode {
    LocalNode::spawn(LocalNodeOptions {
        binary: Some(concordance_bin()),
        node_id: "cli".into(),
        api_key: Some(KEY.into()),
        ..LocalNodeOptions::default()
    })
    .await
    .expect("local node")
}

/// Runs `concordancectl` against `node` with the admin key from the environment.
fn ctl_in(node: &LocalNode, args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_concordancectl"));
    cmd.args(args)
        .env("CONCORDANCE_ENDPOINTS", node.address())
        .env("CONCORDANCE_API_KEY", KEY)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("run concordancectl");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    child.wait_with_output().unwrap()
}

fn ctl(node: &LocalNode, args: &[&str]) -> Output {
    ctl_in(node, args, None)
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn json_of(out: &Output) -> Value {
    let text = ok(out);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[tokio::test]
async fn put_get_list_and_delete() {
    let n = node().await;
    assert!(ok(&ctl(&n, &["put", "cfg/a", "{\"n\":1}"])).starts_with("OK cfg/a revision "));
    ok(&ctl(&n, &["put", "cfg/b", "plain text"]));
    ok(&ctl(&n, &["put", "cfg/c", "42", "--string"]));
    ok(&ctl_in(&n, &["put", "cfg/d", "-"], Some("[1,2]\n")));

    assert_eq!(ok(&ctl(&n, &["get", "cfg/a"])), "{\"n\":1}\n");
    assert_eq!(ok(&ctl(&n, &["get", "cfg/b"])), "plain text\n");
    let got = json_of(&ctl(&n, &["get", "cfg/c", "-o", "json"]));
    assert_eq!(got["kv"]["value"], json!("42"));
    assert_eq!(got["kv"]["version"], json!(1));
    let got = json_of(&ctl(&n, &["-o", "json", "get", "cfg/d", "--serializable"]));
    assert_eq!(got["kv"]["value"], json!([1, 2]));

    let table = ok(&ctl(&n, &["ls", "cfg/"]));
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("KEY"), "{table}");
    assert_eq!(lines.len(), 5, "{table}");
    assert!(lines[2].starts_with("cfg/b") && lines[2].ends_with("plain text"));
    assert_eq!(
        ok(&ctl(&n, &["list", "cfg/", "--keys-only"])),
        "cfg/a\ncfg/b\ncfg/c\ncfg/d\n"
    );
    let listed = json_of(&ctl(&n, &["list", "cfg/", "--limit", "2", "-o", "json"]));
    assert_eq!(listed["kvs"].as_array().unwrap().len(), 2);

    assert!(ok(&ctl(&n, &["del", "cfg/a"])).starts_with("deleted 1 "));
    let gone = json_of(&ctl(&n, &["del", "cfg/", "--prefix", "-o", "json"]));
    assert_eq!(gone["deleted"], json!(3));
    assert_eq!(ok(&ctl(&n, &["ls", "cfg/", "--keys-only"])), "");
}

#[tokio::test]
async fn transactions_from_flags_and_json() {
    let n = node().await;
    let claim = [
        "txn",
        "--if-missing",
        "job/owner",
        "--put",
        "job/owner=\"a17\"",
        "--else-get",
        "job/owner",
        "-o",
        "json",
    ];
    let first = json_of(&ctl(&n, &claim));
    assert_eq!(first["succeeded"], json!(true));
    let second = json_of(&ctl(&n, &claim));
    assert_eq!(second["succeeded"], json!(false));
    assert_eq!(second["results"][0]["kv"]["value"], json!("a17"));

    // --require-success turns a failed comparison into exit 1.
    let failed = ctl(
        &n,
        &["txn", "--if-missing", "job/owner", "--require-success"],
    );
    assert_eq!(failed.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&failed.stdout).starts_with("FAILED"));

    let txn = json!({
        "compare": [{"key": "job/owner", "target": "value", "op": "equal", "value": "a17"}],
        "success": [{"type": "put", "key": "job/state", "value": "running"},
                    {"type": "get", "key": "job/owner"}],
    });
    let text = ok(&ctl_in(&n, &["txn", "-f", "-"], Some(&txn.to_string())));
    assert!(text.starts_with("SUCCEEDED revision "), "{text}");
    assert!(text.contains("get job/owner = a17"), "{text}");
    assert_eq!(ok(&ctl(&n, &["get", "job/state"])), "running\n");

    // A malformed transaction: the API's code, exit 1.
    let bad = ctl_in(&n, &["txn", "-f", "-"], Some("{\"compare\": 3}"));
    assert_eq!(bad.status.code(), Some(1));
    let bad = ctl(&n, &["txn", "--put", "=1"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("HTTP 400"));
}

#[tokio::test]
async fn leases_from_the_command_line() {
    let n = node().await;
    let granted = json_of(&ctl(&n, &["lease", "grant", "60s", "-o", "json"]));
    let id = granted["id"].as_u64().unwrap();
    assert_eq!(granted["ttlMs"], json!(60_000));
    let id_s = id.to_string();
    ok(&ctl(&n, &["put", "sess/a", "1", "--lease", &id_s]));
    let info = json_of(&ctl(&n, &["lease", "get", &id_s, "-o", "json"]));
    assert_eq!(info["keys"], json!(["sess/a"]));
    assert!(ok(&ctl(&n, &["lease", "keepalive", &id_s])).contains("kept alive"));
    let list = ok(&ctl(&n, &["lease", "list"]));
    assert!(list.lines().any(|l| l.starts_with(&id_s)), "{list}");
    let revoked = json_of(&ctl(&n, &["lease", "revoke", &id_s, "-o", "json"]));
    assert_eq!(revoked["deleted"], json!(1));
    let missing = ctl(&n, &["get", "sess/a"]);
    assert_eq!(missing.status.code(), Some(1));
    let gone = ctl(&n, &["lease", "keepalive", &id_s]);
    assert_eq!(gone.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&gone.stderr).contains("lease_not_found"));
}

#[tokio::test]
async fn status_version_and_members() {
    let n = node().await;
    let status = json_of(&ctl(&n, &["status", "-o", "json"]));
    assert_eq!(status["nodeId"], json!("cli"));
    assert_eq!(status["role"], json!("leader"));
    let text = ok(&ctl(&n, &["status"]));
    assert!(text.contains("node:        cli (leader)"), "{text}");
    assert!(text.contains("(leader)"));
    let version = json_of(&ctl(&n, &["version", "-o", "json"]));
    assert_eq!(version["client"], json!(env!("CARGO_PKG_VERSION")));
    assert_eq!(version["node"]["nodeId"], json!("cli"));
    let members = json_of(&ctl(&n, &["member", "list", "-o", "json"]));
    assert_eq!(members["members"].as_array().unwrap().len(), 1);
    // Removing an unknown member: the API refuses, with its code.
    let refused = ctl(&n, &["member", "remove", "nobody", "-o", "json"]);
    assert_eq!(refused.status.code(), Some(1));
    let err: Value = serde_json::from_slice(&refused.stderr).unwrap();
    assert!(err["error"]["code"].is_string(), "{err}");
}

#[tokio::test]
async fn failures_exit_non_zero_with_the_code() {
    let n = node().await;
    let missing = ctl(&n, &["get", "nope"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("key_not_found"));

    // A wrong key: refused with `unauthorized`, and the key never echoed.
    let wrong = Command::new(env!("CARGO_BIN_EXE_concordancectl"))
        .args(["get", "x", "--api-key", "not-the-key-xyz", "-o", "json"])
        .env("CONCORDANCE_ENDPOINTS", n.address())
        .output()
        .unwrap();
    assert_eq!(wrong.status.code(), Some(1));
    let err: Value = serde_json::from_slice(&wrong.stderr).unwrap();
    assert_eq!(err["error"]["code"], json!("unauthorized"));
    assert_eq!(err["error"]["status"], json!(401));
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&wrong.stdout),
        String::from_utf8_lossy(&wrong.stderr)
    );
    assert!(!all.contains("not-the-key-xyz"));

    // Nobody listening: exit 3.
    let port = concordance_client::dev::free_port().unwrap();
    let down = Command::new(env!("CARGO_BIN_EXE_concordancectl"))
        .args(["get", "x", "--timeout", "2s"])
        .env("CONCORDANCE_ENDPOINTS", format!("127.0.0.1:{port}"))
        .output()
        .unwrap();
    assert_eq!(down.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&down.stderr).contains("unreachable"));

    // Usage errors: clap's exit 2.
    let usage = ctl(&n, &["put", "only-a-key"]);
    assert_eq!(usage.status.code(), Some(2));
}

#[tokio::test]
async fn lock_runs_a_command_under_the_lock() {
    let n = node().await;
    let out = ok(&ctl(
        &n,
        &[
            "lock",
            "deploy",
            "--ttl",
            "5s",
            "--",
            "sh",
            "-c",
            "echo token=$CONCORDANCE_FENCING_TOKEN",
        ],
    ));
    let token = out
        .lines()
        .find_map(|l| l.strip_prefix("token="))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        out.contains(&format!("locked deploy (fencing token {token}")),
        "{out}"
    );
    assert!(out.ends_with("released deploy\n"), "{out}");
    // The command's exit code is the tool's.
    let failed = ctl(&n, &["lock", "deploy", "--", "sh", "-c", "exit 7"]);
    assert_eq!(failed.status.code(), Some(7));

    // While one holds it, another without waiting is refused with `lock_held`.
    let holder = Command::new(env!("CARGO_BIN_EXE_concordancectl"))
        .args(["lock", "deploy", "--", "sleep", "3"])
        .env("CONCORDANCE_ENDPOINTS", n.address())
        .env("CONCORDANCE_API_KEY", KEY)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_key_under(n.client(), "_concordance/lock/deploy/").await;
    let refused = ctl(&n, &["lock", "deploy", "--no-wait", "--", "true"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("lock_held"));
    assert!(holder.wait_with_output().unwrap().status.success());
    // Released: the lock is free again, and the lease the tool granted is gone.
    ok(&ctl(&n, &["lock", "deploy", "--no-wait", "--", "true"]));
    let leases = json_of(&ctl(&n, &["lease", "list", "-o", "json"]));
    assert_eq!(leases["leases"], json!([]));
}

/// Polls until some key exists under `prefix`.
async fn wait_for_key_under(c: &concordance_client::Client, prefix: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let page = c
            .list(
                prefix,
                None,
                Some(1),
                concordance_client::Consistency::Linearizable,
            )
            .await
            .unwrap();
        if !page.kvs.is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "nothing under {prefix}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn watch_prints_changes_and_elections_are_observable() {
    let n = node().await;
    let c = n.client().clone();
    let now = c
        .list(
            "",
            None,
            Some(1),
            concordance_client::Consistency::Linearizable,
        )
        .await
        .unwrap()
        .revision;
    let watcher = Command::new(env!("CARGO_BIN_EXE_concordancectl"))
        .args(["watch", "w/", "--prefix", "--count", "3", "-o", "json"])
        .args(["--from-revision", &(now + 1).to_string()])
        .env("CONCORDANCE_ENDPOINTS", n.address())
        .env("CONCORDANCE_API_KEY", KEY)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    c.put("w/a", &json!(1)).await.unwrap();
    c.put("other", &json!(2)).await.unwrap();
    c.put("w/b", &json!("x")).await.unwrap();
    c.delete("w/a").await.unwrap();
    let out = tokio::task::spawn_blocking(move || watcher.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let text = ok(&out);
    let changes: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(changes.len(), 3, "{text}");
    let keys: Vec<&str> = changes
        .iter()
        .map(|c| c["events"][0]["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["w/a", "w/b", "w/a"]);
    assert_eq!(changes[2]["events"][0]["type"], json!("delete"));

    let none = json_of(&ctl(
        &n,
        &["election", "observe", "sched", "--once", "-o", "json"],
    ));
    assert_eq!(none["leader"], Value::Null);
    let lease = c
        .lease_grant(std::time::Duration::from_secs(30))
        .await
        .unwrap();
    c.campaign(&concordance_client::CampaignRequest {
        name: "sched".into(),
        lease: lease.id,
        value: json!("node-a:9000"),
        timeout_ms: None,
    })
    .await
    .unwrap();
    let text = ok(&ctl(&n, &["election", "observe", "sched", "--once"]));
    assert!(text.starts_with("sched: node-a:9000 (revision "), "{text}");
    let resigned = ok(&ctl(
        &n,
        &["election", "resign", "sched", &lease.id.to_string()],
    ));
    assert!(resigned.starts_with("resigned"), "{resigned}");
}

/// Three keyed nodes: node1 bootstraps, node2 and node3 join it.
async fn cluster3() -> Vec<LocalNode> {
    let first = node_named("node1", None).await;
    let join = first.address();
    let mut nodes = vec![first];
    for name in ["node2", "node3"] {
        nodes.push(node_named(name, Some(join.clone())).await);
    }
    nodes
}

async fn node_named(name: &str, join: Option<String>) -> LocalNode {
    LocalNode::spawn(LocalNodeOptions {
        binary: Some(concordance_bin()),
        node_id: name.into(),
        api_key: Some(KEY.into()),
        join,
        ..LocalNodeOptions::default()
    })
    .await
    .expect("local node")
}

/// Runs `concordancectl` with the given endpoints.
fn ctl_at(endpoints: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_concordancectl"))
        .args(args)
        .env("CONCORDANCE_ENDPOINTS", endpoints)
        .env("CONCORDANCE_API_KEY", KEY)
        .output()
        .unwrap()
}

#[tokio::test]
async fn membership_on_a_three_node_cluster() {
    let nodes = cluster3().await;
    // A dead endpoint first: the tool moves on to a live one.
    let dead = concordance_client::dev::free_port().unwrap();
    let endpoints = format!(
        "127.0.0.1:{dead},{}",
        nodes
            .iter()
            .map(|n| n.address())
            .collect::<Vec<_>>()
            .join(",")
    );
    let voters = || {
        let m = json_of(&ctl_at(&endpoints, &["member", "list", "-o", "json"]));
        m["members"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["voter"] == json!(true))
            .count()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while voters() < 3 {
        assert!(std::time::Instant::now() < deadline, "3 voters");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let table = ok(&ctl_at(&endpoints, &["member", "list"]));
    assert_eq!(table.lines().count(), 4, "{table}");
    assert_eq!(table.matches("(leader)").count(), 1, "{table}");

    let moved = json_of(&ctl_at(
        &endpoints,
        &["member", "transfer-leader", "--to", "node2", "-o", "json"],
    ));
    assert_eq!(moved["leader"], json!("node2"));

    let status = json_of(&ctl_at(&endpoints, &["status", "-o", "json"]));
    let version = status["membershipVersion"].as_u64().unwrap();
    let stale = (version - 1).to_string();
    let refused = ctl_at(
        &endpoints,
        &["member", "remove", "node3", "--expected-version", &stale],
    );
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("membership_changed") && stderr.contains("HTTP 409"),
        "{stderr}"
    );
    let removed = ok(&ctl_at(
        &endpoints,
        &[
            "member",
            "remove",
            "node3",
            "--expected-version",
            &version.to_string(),
        ],
    ));
    assert!(removed.contains("membership version"), "{removed}");
    let members = json_of(&ctl_at(&endpoints, &["member", "list", "-o", "json"]));
    assert_eq!(members["members"].as_array().unwrap().len(), 2);
}

/// A node process killed when dropped.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `concordancectl` over TLS to a node that also asks clients for a certificate
/// (`--tls-client-ca`): with the CA and a client certificate it works; without the
/// certificate it is refused with the reason; over plaintext it gets no answer.
#[tokio::test]
async fn tls_with_a_ca_file_and_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let certs_arg = certs.to_str().unwrap();
    for args in [
        vec!["certs", "ca", "--dir", certs_arg],
        vec![
            "certs",
            "node",
            "--dir",
            certs_arg,
            "--name",
            "n1",
            "--host",
            "127.0.0.1",
        ],
        vec!["certs", "client", "--dir", certs_arg, "--name", "ops"],
    ] {
        let out = Command::new(concordance_bin())
            .args(&args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let port = concordance_client::dev::free_port().unwrap();
    let file = |name: &str| certs.join(name).display().to_string();
    let _node = Killed(
        Command::new(concordance_bin())
            .args([
                "--node-id=n1".to_string(),
                format!("--listen=127.0.0.1:{port}"),
                format!("--data-dir={}", dir.path().join("data").display()),
                "--bootstrap".to_string(),
                format!("--tls-cert={}", file("n1.crt")),
                format!("--tls-key={}", file("n1.key")),
                format!("--tls-client-ca={}", file("ca.crt")),
            ])
            .env("CONCORDANCE_API_KEY", KEY)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let ctl_tls = |args: &[&str], with_certificate: bool| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_concordancectl"));
        cmd.args(args)
            .env("CONCORDANCE_ENDPOINTS", format!("127.0.0.1:{port}"))
            .env("CONCORDANCE_API_KEY", KEY)
            .env("CONCORDANCE_CA_FILE", file("ca.crt"));
        if with_certificate {
            cmd.env("CONCORDANCE_CERT_FILE", file("ops.crt"))
                .env("CONCORDANCE_KEY_FILE", file("ops.key"));
        }
        cmd.output().unwrap()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !ctl_tls(&["put", "tls/k", "v1"], true).status.success() {
        assert!(
            std::time::Instant::now() < deadline,
            "the TLS node never took a write"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(ok(&ctl_tls(&["get", "tls/k"], true)).contains("v1"));

    let refused = ctl_tls(&["get", "tls/k"], false);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("--tls-client-ca"), "{stderr}");

    let plaintext = Command::new(env!("CARGO_BIN_EXE_concordancectl"))
        .args(["get", "tls/k", "--retry-for", "0s"])
        .env("CONCORDANCE_ENDPOINTS", format!("127.0.0.1:{port}"))
        .env("CONCORDANCE_API_KEY", KEY)
        .output()
        .unwrap();
    assert!(!plaintext.status.success(), "plaintext was answered");
}
