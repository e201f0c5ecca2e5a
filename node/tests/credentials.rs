//! Named credentials (`--credentials-file`): every sub-operation checked against the caller's
//! key prefixes, a token rotated on every member under load with no failed write, a bad file
//! refused at start and a bad change not taken, and the audit log (`--audit-log`): a line per
//! admin call, prefix delete, revoke and refusal, and never a token.

mod common;

use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use common::*;
use concordance_client::Client;
use concordance_client::Consistency;
use concordance_client::ErrorCode;
use concordance_client::TxnOp;
use concordance_client::TxnRequest;
use serde_json::Value;
use serde_json::json;

const KEYS: &[(&str, &str)] = &[
    ("CONCORDANCE_API_KEY", ADMIN_KEY),
    ("CONCORDANCE_AGENT_API_KEY", AGENT_KEY),
];
const A17_TOKEN: &str = "a17-token-0123456789";
const OPS_TOKEN: &str = "ops-token-0123456789";

/// agent-a17 may write `agents/a17/` and read `shared/`; ops is an admin.
fn a17_and_ops(a17_tokens: &[&str]) -> String {
    format!(
        "credentials:\n\
         - name: agent-a17\n  role: agent\n  tokens: [{}]\n  read: [shared/]\n  write: [agents/a17/]\n\
         - name: ops\n  role: admin\n  tokens: [{OPS_TOKEN}]\n",
        a17_tokens.join(", ")
    )
}

fn write_file(path: &Path, text: &str) {
    // Written aside and renamed, as a mounted Secret changes: a reader never sees half a file.
    let aside = path.with_extension("new");
    std::fs::write(&aside, text).unwrap();
    std::fs::rename(&aside, path).unwrap();
}

fn start(dir: &Path, name: &str, file: &Path, extra: &[&str]) -> NodeProc {
    start_with_keys(dir, name, file, extra, KEYS)
}

fn start_with_keys(
    dir: &Path,
    name: &str,
    file: &Path,
    extra: &[&str],
    keys: &[(&str, &str)],
) -> NodeProc {
    let credentials = format!("--credentials-file={}", file.display());
    let mut args = vec![credentials.as_str()];
    args.extend_from_slice(extra);
    NodeProc::start_env(name, dir, &args, keys)
}

/// Three members started with `keys`, each with its own credentials file (agent-a17 and ops),
/// which the tests change member by member.
async fn three_members(dir: &Path, keys: &[(&str, &str)]) -> (Vec<PathBuf>, Vec<NodeProc>) {
    let files: Vec<PathBuf> = (1..=3)
        .map(|i| dir.join(format!("credentials-{i}.yaml")))
        .collect();
    for f in &files {
        write_file(f, &a17_and_ops(&[A17_TOKEN]));
    }
    let first = start_with_keys(dir, "node1", &files[0], &["--bootstrap"], keys);
    first.wait_ready().await;
    let join = format!("--join={}", first.addr());
    let mut nodes = vec![first];
    for i in 2..=3 {
        let node = start_with_keys(dir, &format!("node{i}"), &files[i - 1], &[&join], keys);
        node.wait_ready().await;
        nodes.push(node);
    }
    (files, nodes)
}

fn forbidden(result: Result<impl std::fmt::Debug, concordance_client::Error>, names: &str) {
    let e = result.expect_err("refused");
    assert_eq!(e.error_code(), Some(ErrorCode::Forbidden), "{e}");
    assert!(
        e.to_string().contains(names),
        "the refusal says what: {e} (wanted {names:?})"
    );
}

fn txn(compare_key: Option<&str>, success: Vec<TxnOp>, failure: Vec<TxnOp>) -> TxnRequest {
    serde_json::from_value(json!({
        "compare": compare_key.map(|k| vec![json!({"key": k, "target": "version", "op": "equal", "value": 0})]).unwrap_or_default(),
        "success": success,
        "failure": failure,
    }))
    .unwrap()
}

fn delete_prefix(prefix: &str) -> TxnRequest {
    txn(
        None,
        vec![TxnOp::DeletePrefix {
            prefix: prefix.into(),
        }],
        vec![],
    )
}

fn put(key: &str) -> TxnOp {
    TxnOp::Put {
        key: key.into(),
        value: json!(1),
        lease: None,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_sub_operation_is_checked_against_the_callers_prefixes() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("credentials.yaml");
    write_file(&file, &a17_and_ops(&[A17_TOKEN]));
    let node = start(dir.path(), "n1", &file, &["--bootstrap"]);
    node.wait_ready().await;
    newest_command_set(&node).await;
    let admin = node.admin();
    let a17 = node.client().with_key(A17_TOKEN);
    let agent = node.client().with_key(AGENT_KEY);
    admin.put("shared/config", &json!("c")).await.unwrap();
    admin.put("agents/a18/x", &json!("theirs")).await.unwrap();

    // Keys.
    a17.put("agents/a17/x", &json!(1)).await.unwrap();
    forbidden(
        a17.put("shared/config", &json!(2)).await,
        "may not write key \"shared/config\"",
    );
    assert!(a17.get("shared/config").await.unwrap().is_some());
    forbidden(a17.get("agents/a18/x").await, "may not read key");
    forbidden(a17.delete("agents/a18/x").await, "may not write key");
    // Lists: within a rule, not wider.
    a17.list("agents/a17/", None, None, Consistency::Linearizable)
        .await
        .unwrap();
    forbidden(
        a17.list("agents/", None, None, Consistency::Linearizable)
            .await,
        "the keys under \"agents/\"",
    );
    forbidden(
        a17.list("", None, None, Consistency::Linearizable).await,
        "the keys under \"\"",
    );

    // Transactions: every compare and every operation of both branches; refused whole.
    let mine = || put("agents/a17/t");
    for (what, request) in [
        ("a compare", txn(Some("agents/a18/x"), vec![mine()], vec![])),
        (
            "a get in the branch not taken",
            txn(
                None,
                vec![mine()],
                vec![TxnOp::Get {
                    key: "agents/a18/x".into(),
                }],
            ),
        ),
        ("a put", txn(None, vec![mine(), put("shared/t")], vec![])),
        (
            "a delete",
            txn(
                None,
                vec![
                    mine(),
                    TxnOp::Delete {
                        key: "shared/config".into(),
                    },
                ],
                vec![],
            ),
        ),
        (
            "a prefix delete wider than its rule",
            delete_prefix("agents/"),
        ),
    ] {
        let e = a17.txn(&request).await.expect_err(what);
        assert_eq!(e.error_code(), Some(ErrorCode::Forbidden), "{what}: {e}");
    }
    assert!(
        admin.get("agents/a17/t").await.unwrap().is_none(),
        "a refused transaction applied nothing"
    );
    assert!(admin.get("agents/a18/x").await.unwrap().is_some());
    a17.txn(&txn(
        Some("agents/a17/t"),
        vec![
            mine(),
            TxnOp::Get {
                key: "shared/config".into(),
            },
        ],
        vec![],
    ))
    .await
    .unwrap();
    a17.txn(&delete_prefix("agents/a17/")).await.unwrap();

    // Watches, raw: a refusal is an answer, an allowed watch a stream.
    let http = reqwest::Client::new();
    let watch = |query: &str| {
        http.get(node.url(&format!("/api/v1/watch?{query}")))
            .bearer_auth(A17_TOKEN)
            .send()
    };
    assert_eq!(watch("prefix=agents/a18/").await.unwrap().status(), 403);
    assert_eq!(watch("prefix=").await.unwrap().status(), 403);
    assert_eq!(watch("key=shared/config").await.unwrap().status(), 200);

    // Locks and elections go by their names.
    let lease = a17.lease_grant(Duration::from_secs(60)).await.unwrap().id;
    let lock = |name: &str| {
        http.post(node.url("/api/v1/lock/acquire"))
            .bearer_auth(A17_TOKEN)
            .json(&json!({"name": name, "lease": lease, "wait": false}))
            .send()
    };
    assert_eq!(lock("agents/a18/job").await.unwrap().status(), 403);
    let held = lock("agents/a17/job").await.unwrap();
    assert_eq!(held.status(), 200);
    let queue_key = held.json::<Value>().await.unwrap()["key"]
        .as_str()
        .unwrap()
        .to_string();
    // Its queue is readable to it, as the lock's name.
    assert!(a17.get(&queue_key).await.unwrap().is_some());
    let leader = http
        .get(node.url("/api/v1/election/leader?name=shared/lead"))
        .bearer_auth(A17_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(leader.status(), 200, "it reads shared/");
    let campaign = http
        .post(node.url("/api/v1/election/campaign"))
        .bearer_auth(A17_TOKEN)
        .json(&json!({"name": "shared/lead", "lease": lease, "value": "me"}))
        .send()
        .await
        .unwrap();
    assert_eq!(campaign.status(), 403, "it does not write shared/");

    // A lease is its granter's: another credential may not revoke it, keep it alive, put a
    // key on it, or hold a lock with it.
    let other = agent.lease_grant(Duration::from_secs(60)).await.unwrap().id;
    agent
        .put_leased("agents/a18/leased", &json!(1), other)
        .await
        .unwrap();
    let theirs = format!("may not use lease {other}, which belongs to the agent credential");
    forbidden(a17.lease_revoke(other).await, &theirs);
    forbidden(a17.lease_keep_alive(other).await, &theirs);
    // Nor put a key on it, alone or in a transaction.
    forbidden(
        a17.put_leased("agents/a17/on-theirs", &json!(1), other)
            .await,
        &theirs,
    );
    let on_theirs = TxnOp::Put {
        key: "agents/a17/on-theirs".into(),
        value: json!(1),
        lease: Some(other),
    };
    forbidden(a17.txn(&txn(None, vec![], vec![on_theirs])).await, &theirs);
    assert!(admin.get("agents/a17/on-theirs").await.unwrap().is_none());
    let with_theirs = http
        .post(node.url("/api/v1/lock/acquire"))
        .bearer_auth(A17_TOKEN)
        .json(&json!({"name": "agents/a17/other", "lease": other, "wait": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(with_theirs.status(), 403);
    assert!(admin.get("agents/a18/leased").await.unwrap().is_some());
    let info = admin.lease_get(other).await.unwrap().unwrap();
    assert_eq!(info.owner.as_deref(), Some("agent"));
    assert_eq!(
        admin
            .lease_get(lease)
            .await
            .unwrap()
            .unwrap()
            .owner
            .as_deref(),
        Some("agent-a17")
    );
    // It sees its own lease, not the other's (whose key it may not read): refused by id,
    // left out of the list. The built-in agent key reads every key, so it sees both.
    assert_eq!(
        a17.lease_get(lease).await.unwrap().unwrap().keys,
        vec![queue_key.clone()]
    );
    forbidden(
        a17.lease_get(other).await,
        &format!("may not read lease {other}: it is another credential's"),
    );
    let listed = |leases: Vec<concordance_client::LeaseInfo>| {
        leases.into_iter().map(|l| l.id).collect::<Vec<_>>()
    };
    assert_eq!(listed(a17.lease_list().await.unwrap().leases), vec![lease]);
    let mut both = vec![lease, other];
    both.sort();
    assert_eq!(listed(agent.lease_list().await.unwrap().leases), both);
    // A lease of another whose keys it may all read, it sees.
    let shared = agent.lease_grant(Duration::from_secs(60)).await.unwrap().id;
    agent
        .put_leased("shared/leased", &json!(1), shared)
        .await
        .unwrap();
    assert_eq!(
        a17.lease_get(shared)
            .await
            .unwrap()
            .unwrap()
            .owner
            .as_deref(),
        Some("agent")
    );
    admin.lease_revoke(shared).await.unwrap();
    // Its own lease, holding its lock's queue key, it revokes; an admin revokes any.
    a17.lease_keep_alive(lease).await.unwrap();
    a17.lease_revoke(lease).await.unwrap();
    assert!(admin.get(&queue_key).await.unwrap().is_none());
    admin.lease_revoke(other).await.unwrap();
    assert!(admin.get("agents/a18/leased").await.unwrap().is_none());
}

/// Writers of `agents/a17/m<n>/<i>` every 5 ms, one per client, each with whatever token its
/// cell holds at the time; they record the keys acknowledged and the writes that failed.
struct Writers {
    stop: Arc<AtomicBool>,
    written: Arc<Mutex<Vec<String>>>,
    failures: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Writers {
    fn spawn(clients: Vec<(Client, Arc<Mutex<String>>)>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let written = Arc::new(Mutex::new(Vec::new()));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let tasks = clients
            .into_iter()
            .enumerate()
            .map(|(member, (client, token))| {
                let (stop, written, failures) = (stop.clone(), written.clone(), failures.clone());
                tokio::spawn(async move {
                    let mut i = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let key = format!("agents/a17/m{member}/{i:06}");
                        let current = token.lock().unwrap().clone();
                        match client.clone().with_key(&current).put(&key, &json!(i)).await {
                            Ok(_) => written.lock().unwrap().push(key),
                            Err(e) => failures.lock().unwrap().push(format!("{key}: {e}")),
                        }
                        i += 1;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                })
            })
            .collect();
        Writers {
            stop,
            written,
            failures,
            tasks,
        }
    }

    /// Writes acknowledged so far.
    fn written(&self) -> usize {
        self.written.lock().unwrap().len()
    }

    /// Stops them: the keys acknowledged and the failures.
    async fn stop(self) -> (Vec<String>, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.unwrap();
        }
        let written = self.written.lock().unwrap().clone();
        let failures = self.failures.lock().unwrap().clone();
        (written, failures)
    }
}

/// Waits until `token` gets `expected` (a status) from every member.
async fn on_every_member(nodes: &[NodeProc], token: &str, expected: u16, what: &str) {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    for node in nodes {
        loop {
            let status = http
                .get(node.url("/api/v1/kv/agents/a17/probe"))
                .bearer_auth(token)
                .send()
                .await
                .map(|r| r.status().as_u16());
            if status.as_ref().is_ok_and(|s| *s == expected) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: {} answered {status:?}",
                node.name
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_rotates_member_by_member_under_load_with_no_failed_write_and_no_term_change() {
    const NEW_TOKEN: &str = "a17-rotated-token-0123456789";
    let dir = tempfile::tempdir().unwrap();
    let (files, nodes) = three_members(dir.path(), KEYS).await;
    let term = nodes[0].admin().status().await.unwrap().term;

    let token = Arc::new(Mutex::new(A17_TOKEN.to_string()));
    let writers = Writers::spawn(
        nodes
            .iter()
            .map(|node| (node.client(), token.clone()))
            .collect(),
    );

    // 1. Every member takes the new token besides the old, one at a time.
    for f in &files {
        write_file(f, &a17_and_ops(&[A17_TOKEN, NEW_TOKEN]));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    on_every_member(&nodes, NEW_TOKEN, 404, "the new token is taken").await;
    // 2. The writers move to it.
    *token.lock().unwrap() = NEW_TOKEN.to_string();
    tokio::time::sleep(Duration::from_secs(1)).await;
    // 3. The old one is retired, member by member.
    for f in &files {
        write_file(f, &a17_and_ops(&[NEW_TOKEN]));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    on_every_member(&nodes, A17_TOKEN, 401, "the old token is refused").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (written, failures) = writers.stop().await;
    println!(
        "{} writes through 3 members while the token rotated, {} failed",
        written.len(),
        failures.len()
    );
    assert!(failures.is_empty(), "failed writes: {failures:#?}");
    assert!(written.len() >= 100, "only {} writes", written.len());
    let admin = nodes[0].admin();
    assert_eq!(admin.status().await.unwrap().term, term, "no election");
    for key in &written {
        assert!(admin.get(key).await.unwrap().is_some(), "{key} is lost");
    }
    for node in &nodes {
        let log = node.log_text();
        assert_eq!(
            log.matches("the credentials file changed: its credentials are taken")
                .count(),
            2,
            "{}: two changes taken:\n{log}",
            node.name
        );
        assert!(!log.contains(A17_TOKEN) && !log.contains(NEW_TOKEN));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_credentials_file_stops_the_start_and_a_bad_change_is_not_taken() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("credentials.yaml");
    write_file(&file, &a17_and_ops(&["too-short"]));
    let mut refused = start(dir.path(), "refused", &file, &["--bootstrap"]);
    let status = refused.wait_exit(Duration::from_secs(20));
    assert!(!status.success());
    let log = refused.log_text();
    assert!(
        log.contains("credentials.yaml") && log.contains("at least 16 characters"),
        "the start says which file and why:\n{log}"
    );
    assert!(!log.contains("too-short"), "{log}");

    write_file(&file, &a17_and_ops(&[A17_TOKEN]));
    let node = start(dir.path(), "n1", &file, &["--bootstrap"]);
    node.wait_ready().await;
    // The data dir the node made is its own only.
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&node.data_dir)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700, "data dir mode {mode:o}");
    }
    let a17 = node.client().with_key(A17_TOKEN);
    a17.put("agents/a17/x", &json!(1)).await.unwrap();
    write_file(&file, "credentials:\n- name: agent-a17\n  role: agent\n");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !node
        .log_text()
        .contains("is not valid: the credentials before it stay")
    {
        assert!(Instant::now() < deadline, "no word of the bad change");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(node.log_text().contains("has no token"));
    a17.put("agents/a17/x", &json!(2)).await.unwrap();
    // Fixed: taken.
    write_file(&file, &a17_and_ops(&["a17-third-token-0123456789"]));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match a17.put("agents/a17/x", &json!(3)).await {
            Err(e) if e.error_code() == Some(ErrorCode::Unauthorized) => break,
            _ => {}
        }
        assert!(Instant::now() < deadline, "the fixed file was not taken");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    node.client()
        .with_key("a17-third-token-0123456789")
        .put("agents/a17/x", &json!(4))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_audit_log_has_a_line_per_admin_call_prefix_delete_revoke_and_refusal() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("credentials.yaml");
    write_file(&file, &a17_and_ops(&[A17_TOKEN]));
    let audit = dir.path().join("audit.jsonl");
    let audit_flag = format!("--audit-log={}", audit.display());
    let node = start(dir.path(), "n1", &file, &["--bootstrap", &audit_flag]);
    node.wait_ready().await;
    let admin = node.admin();
    let ops = node.client().with_key(OPS_TOKEN);
    let a17 = node.client().with_key(A17_TOKEN);

    // Not audited: data calls within the rules, and metrics scrapes.
    a17.put("agents/a17/x", &json!(1)).await.unwrap();
    a17.get("shared/none").await.unwrap();
    admin_metrics(&node).await;
    // Audited.
    admin.alarms().await.unwrap();
    ops.compact(None).await.unwrap();
    a17.txn(&delete_prefix("agents/a17/")).await.unwrap();
    let lease = a17.lease_grant(Duration::from_secs(60)).await.unwrap().id;
    a17.lease_revoke(lease).await.unwrap();
    forbidden(a17.put("shared/x", &json!(1)).await, "may not write");
    let wrong = node.client().with_key("not-a-token-at-all-0123");
    assert_eq!(
        wrong.get("agents/a17/x").await.unwrap_err().error_code(),
        Some(ErrorCode::Unauthorized)
    );
    let expected: Vec<(Option<&str>, &str, &str, u16)> = vec![
        (Some("admin"), "GET", "/api/v1/cluster/alarms", 200),
        (Some("ops"), "POST", "/api/v1/cluster/compact", 200),
        (Some("agent-a17"), "POST", "/api/v1/txn", 200),
        (Some("agent-a17"), "DELETE", "/api/v1/lease/{id}", 200),
        (Some("agent-a17"), "PUT", "/api/v1/kv/{*key}", 403),
        (None, "GET", "/api/v1/kv/{*key}", 401),
    ];
    let deadline = Instant::now() + Duration::from_secs(10);
    let lines: Vec<Value> = loop {
        let text = std::fs::read_to_string(&audit).unwrap_or_default();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
            .collect();
        if lines.len() >= expected.len() || Instant::now() > deadline {
            for token in [ADMIN_KEY, AGENT_KEY, A17_TOKEN, OPS_TOKEN, "not-a-token"] {
                assert!(!text.contains(token), "a token in the audit log:\n{text}");
            }
            break lines;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let got: Vec<(Option<&str>, &str, &str, u16)> = lines
        .iter()
        .map(|l| {
            (
                l["credential"].as_str(),
                l["method"].as_str().unwrap(),
                l["route"].as_str().unwrap(),
                u16::try_from(l["status"].as_u64().unwrap()).unwrap(),
            )
        })
        .collect();
    assert_eq!(got, expected, "{lines:#?}");
    assert_eq!(lines[2]["prefixes"], json!(["agents/a17/"]));
    assert_eq!(lines[3]["path"], format!("/api/v1/lease/{lease}"));
    assert_eq!(lines[4]["path"], "/api/v1/kv/shared/x");
    for l in &lines {
        assert!(l["time"].as_str().unwrap().ends_with('Z'), "{l}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_credential_over_its_rate_is_refused_with_when_to_retry_and_another_goes_on() {
    const SLOW: &str = "slow-token-0123456789";
    const FAST: &str = "fast-token-0123456789";
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("credentials.yaml");
    write_file(
        &file,
        &format!(
            "credentials:\n\
             - name: slow\n  role: agent\n  tokens: [{SLOW}]\n  write: [slow/]\n  requestsPerSecond: 5\n  burst: 5\n\
             - name: fast\n  role: agent\n  tokens: [{FAST}]\n  write: [fast/]\n"
        ),
    );
    let audit = dir.path().join("audit.jsonl");
    let audit_flag = format!("--audit-log={}", audit.display());
    let node = start(dir.path(), "n1", &file, &["--bootstrap", &audit_flag]);
    node.wait_ready().await;
    let slow = node.client().with_key(SLOW);
    let fast = node.client().with_key(FAST);

    let started = Instant::now();
    let (slow_results, fast_results) = tokio::join!(
        async {
            // Two seconds of a request every 20 ms: the burst, then the rate.
            let mut results = Vec::new();
            let mut i = 0;
            while started.elapsed() < Duration::from_secs(2) {
                results.push(slow.put(&format!("slow/{i}"), &json!(i)).await);
                i += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            results
        },
        async {
            let mut results = Vec::new();
            for i in 0..40 {
                results.push(fast.put(&format!("fast/{i}"), &json!(i)).await);
            }
            results
        }
    );
    let elapsed = started.elapsed();
    assert!(
        fast_results.iter().all(Result::is_ok),
        "the other credential goes on: {fast_results:?}"
    );
    let admitted = slow_results.iter().filter(|r| r.is_ok()).count();
    let refused: Vec<_> = slow_results
        .iter()
        .filter_map(|r| r.as_ref().err())
        .collect();
    println!(
        "slow: {admitted} admitted, {} refused in {elapsed:?}",
        refused.len()
    );
    // The burst, then 5 a second (a margin of one).
    assert!(
        admitted > 5,
        "the burst is admitted, and more as the rate refills it: {admitted}"
    );
    let bound = 5 + (5.0 * elapsed.as_secs_f64()).ceil() as usize + 1;
    assert!(admitted <= bound, "{admitted} admitted in {elapsed:?}");
    assert!(!refused.is_empty());
    for e in &refused {
        assert_eq!(e.error_code(), Some(ErrorCode::RateLimited), "{e}");
        assert_eq!(e.status().map(|s| s.as_u16()), Some(429), "{e}");
        assert!(
            e.to_string()
                .contains("the slow credential is over its rate of 5 requests per second"),
            "the refusal says which limit: {e}"
        );
        assert!(e.retry_after().is_some_and(|d| d >= Duration::from_secs(1)));
    }
    // Once the time it was told has passed, it is admitted again.
    tokio::time::sleep(refused.last().unwrap().retry_after().unwrap()).await;
    slow.put("slow/again", &json!(1)).await.unwrap();

    // Each refusal is audited.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(&audit).unwrap_or_default();
        let lines = text
            .lines()
            .filter(|l| l.contains("\"status\":429") && l.contains("\"credential\":\"slow\""))
            .count();
        if lines == refused.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{lines} audit lines for {} refusals:\n{text}",
            refused.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The admin key is the members' own key to each other (without peer TLS). It rotates with a
/// restart per member and no refused request: an admin credential of the file holds the old
/// and the new key while the members move to the new one, one at a time.
#[tokio::test(flavor = "multi_thread")]
async fn the_admin_key_rotates_member_by_member_while_the_file_holds_both() {
    // Keys of the file's length (the test's usual admin key is shorter).
    const OLD_ADMIN_KEY: &str = "first-admin-key-0123456789";
    const NEW_ADMIN_KEY: &str = "rotated-admin-key-0123456789";
    let with_both = format!(
        "{}- name: admin-rotation\n  role: admin\n  tokens: [{OLD_ADMIN_KEY}, {NEW_ADMIN_KEY}]\n",
        a17_and_ops(&[A17_TOKEN])
    );
    let dir = tempfile::tempdir().unwrap();
    let keys = [
        ("CONCORDANCE_API_KEY", OLD_ADMIN_KEY),
        ("CONCORDANCE_AGENT_API_KEY", AGENT_KEY),
    ];
    let (files, mut nodes) = three_members(dir.path(), &keys).await;
    // Writes through every member (a follower forwards them to the leader with its admin
    // key), by a client that moves to another member while one restarts.
    let writer = Client::builder()
        .endpoints(nodes.iter().map(NodeProc::addr))
        .api_key(A17_TOKEN)
        .build()
        .unwrap();
    let writers = Writers::spawn(
        (0..3)
            .map(|_| (writer.clone(), Arc::new(Mutex::new(A17_TOKEN.to_string()))))
            .collect(),
    );

    // 1. Every member takes the new admin key besides the old one.
    for f in &files {
        write_file(f, &with_both);
    }
    on_every_member(&nodes, NEW_ADMIN_KEY, 404, "the new admin key is taken").await;
    // 2. Member by member, the node's own key moves to the new one.
    for node in nodes.iter_mut() {
        for (name, value) in node.env.iter_mut() {
            if name == "CONCORDANCE_API_KEY" {
                *value = NEW_ADMIN_KEY.to_string();
            }
        }
        node.restart();
        node.wait_ready().await;
    }
    // 3. The old key is retired.
    for f in &files {
        write_file(f, &a17_and_ops(&[A17_TOKEN]));
    }
    on_every_member(&nodes, OLD_ADMIN_KEY, 401, "the old admin key is refused").await;
    let before = writers.written();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (written, failures) = writers.stop().await;
    println!(
        "admin key rotated over 3 restarts: {} writes, {} failed",
        written.len(),
        failures.len()
    );
    let refused: Vec<&String> = failures
        .iter()
        .filter(|f| f.contains("unauthorized") || f.contains("forbidden"))
        .collect();
    assert!(refused.is_empty(), "refused by a key: {refused:#?}");
    assert!(
        written.len() > before,
        "writes go on through every member on the new key"
    );
    let admin = nodes[0].client().with_key(NEW_ADMIN_KEY);
    let status = admin.status().await.unwrap();
    assert_eq!(status.members.len(), 3, "{status:?}");
    for key in &written {
        assert!(admin.get(key).await.unwrap().is_some(), "{key} is lost");
    }
}

fn over(result: Result<impl std::fmt::Debug, concordance_client::Error>, bound: &str) {
    let e = result.expect_err("refused by the quota");
    assert_eq!(e.error_code(), Some(ErrorCode::QuotaExceeded), "{e}");
    assert_eq!(e.status().map(|s| s.as_u16()), Some(507), "{e}");
    let message = e.to_string();
    assert!(
        message.contains("the keys under \"agents/a17/\"") && message.contains(bound),
        "the refusal says which quota: {message} (wanted {bound:?})"
    );
}

/// A quota of `agents/a17/` (5 keys, 140 bytes) and one of `agents/` (1 MiB), on 3 members:
/// `agent-a17`, writing through a follower, is refused with 507 `quota_exceeded` naming the
/// prefix and the bound, while `agent-a18` writes on. Overwrites by smaller values and deletes
/// always pass; a transaction past the quota writes nothing; a new leader counts the same;
/// a quota raised in the file is taken within its reload.
#[tokio::test(flavor = "multi_thread")]
async fn a_prefix_over_its_storage_quota_is_refused_and_another_credential_goes_on() {
    const A18_TOKEN: &str = "a18-token-0123456789";
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("credentials.yaml");
    let text = |a17_keys: u32| {
        format!(
            "credentials:\n\
             - name: agent-a17\n  role: agent\n  tokens: [{A17_TOKEN}]\n  read: [shared/]\n  write: [agents/a17/]\n\
             - name: agent-a18\n  role: agent\n  tokens: [{A18_TOKEN}]\n  write: [agents/a18/]\n\
             quotas:\n\
             - prefix: agents/a17/\n  maxKeys: {a17_keys}\n  maxBytes: 140\n\
             - prefix: agents/\n  maxBytes: 1MiB\n"
        )
    };
    write_file(&file, &text(5));
    let first = start(dir.path(), "node1", &file, &["--bootstrap"]);
    first.wait_ready().await;
    // The first request of a new cluster: a lease granted now has its owner.
    let lease = first
        .client()
        .with_key(A17_TOKEN)
        .lease_grant(Duration::from_secs(60))
        .await
        .unwrap()
        .id;
    let owner = first.admin().lease_get(lease).await.unwrap().unwrap().owner;
    assert_eq!(owner.as_deref(), Some("agent-a17"));
    let join = format!("--join={}", first.addr());
    let mut nodes = vec![first];
    for i in 2..=3 {
        let node = start(dir.path(), &format!("node{i}"), &file, &[&join]);
        node.wait_ready().await;
        nodes.push(node);
    }
    let admin = nodes[0].admin();
    let leader = admin.status().await.unwrap().leader.unwrap();
    let followers: Vec<&NodeProc> = nodes.iter().filter(|n| n.name != leader).collect();
    let follower = followers[0];
    let a17 = follower.client().with_key(A17_TOKEN);
    let a18 = follower.client().with_key(A18_TOKEN);
    // 5 keys of 14 bytes ("agents/a17/k1" and 1, ...): 70 bytes.
    for i in 1..=5 {
        a17.put(&format!("agents/a17/k{i}"), &json!(i))
            .await
            .unwrap();
    }
    over(
        a17.put("agents/a17/k6", &json!(6)).await,
        "they are 5 keys and this write adds 1, past their quota of 5 keys",
    );
    // The other credential, under the wider quota only, goes on.
    for i in 0..20 {
        a18.put(&format!("agents/a18/k{i}"), &json!(i))
            .await
            .unwrap();
    }
    // An overwrite that grows past the bytes is refused; one that does not passes.
    over(
        a17.put("agents/a17/k1", &json!("x".repeat(80))).await,
        "they take 70 bytes and this write adds 81, past their quota of 140 bytes",
    );
    a17.put("agents/a17/k1", &json!("x".repeat(40)))
        .await
        .unwrap();
    // A transaction past the quota writes nothing, not even the keys within it.
    let refused = a17
        .txn(&txn(
            None,
            vec![put("agents/a17/k1"), put("agents/a17/t1")],
            vec![],
        ))
        .await;
    over(refused, "past their quota of 5 keys");
    assert!(admin.get("agents/a17/t1").await.unwrap().is_none());
    // A delete makes room.
    a17.delete("agents/a17/k5").await.unwrap();
    a17.put("agents/a17/k6", &json!(6)).await.unwrap();

    // A new leader counts the keys from its own state.
    let other = followers[1].name.clone();
    admin.transfer_leader(Some(&other)).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while admin.status().await.unwrap().leader.as_deref() != Some(other.as_str()) {
        assert!(Instant::now() < deadline, "leadership moved to {other}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    over(
        a17.put("agents/a17/k7", &json!(7)).await,
        "they are 5 keys and this write adds 1",
    );

    // A quota raised in the file is taken within its reload.
    write_file(&file, &text(6));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match a17.put("agents/a17/k7", &json!(7)).await {
            Ok(_) => break,
            Err(e) => {
                assert_eq!(e.error_code(), Some(ErrorCode::QuotaExceeded), "{e}");
                assert!(Instant::now() < deadline, "the raised quota is taken");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    let listed = admin
        .list_all("agents/a17/", 100, Consistency::Linearizable)
        .await
        .unwrap();
    assert_eq!(listed.len(), 6);
}

/// The admin key from a file (`--api-key-file`) rotates with no restart: on 3 members with
/// no peer TLS (members call each other with the first key of their file) under admin writers
/// through each member, each file goes from the old key to both (old first), to both (new
/// first), to the new one. No write fails, no election happens, the old key is refused at the
/// end, and a fourth member joins and catches up on the new key alone: the leader calls its
/// peers with the new key. A file made invalid is not taken, and no key reaches a log.
#[tokio::test(flavor = "multi_thread")]
async fn the_admin_key_rotates_through_its_key_file_with_no_restart_and_no_failed_write() {
    const OLD: &str = "old-admin-key-0123456789";
    const NEW: &str = "new-admin-key-0123456789";
    let dir = tempfile::tempdir().unwrap();
    let env = [("CONCORDANCE_AGENT_API_KEY", AGENT_KEY)];
    let key_file = |i: usize| dir.path().join(format!("admin-keys-{i}"));
    let start_member = |i: usize, extra: &str| {
        write_file(&key_file(i), &format!("{OLD}\n"));
        let flag = format!("--api-key-file={}", key_file(i).display());
        NodeProc::start_env(&format!("node{i}"), dir.path(), &[&flag, extra], &env)
    };
    let first = start_member(1, "--bootstrap");
    first.wait_ready().await;
    let join = format!("--join={}", first.addr());
    let mut nodes = vec![first];
    for i in 2..=3 {
        let node = start_member(i, &join);
        node.wait_ready().await;
        nodes.push(node);
    }
    let first_client = nodes[0].client();
    let admin = |key: &str| first_client.clone().with_key(key);
    let term = admin(OLD).status().await.unwrap().term;
    let token = Arc::new(Mutex::new(OLD.to_string()));
    let writers = Writers::spawn(
        nodes
            .iter()
            .map(|node| (node.client(), token.clone()))
            .collect(),
    );
    let write_all = |text: &str| {
        for i in 1..=3 {
            write_file(&key_file(i), text);
        }
    };
    let taken = |times: usize| {
        let nodes = &nodes;
        async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            for node in nodes {
                while node
                    .log_text()
                    .matches("the key files changed: their keys are taken")
                    .count()
                    < times
                {
                    assert!(
                        Instant::now() < deadline,
                        "{} took change {times}",
                        node.name
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    };

    // 1. Both keys accepted, members still calling each other with the old one.
    write_all(&format!("{OLD}\n{NEW}\n"));
    taken(1).await;
    on_every_member(&nodes, NEW, 404, "the new admin key is taken").await;
    // 2. Members call each other with the new one; the clients move to it.
    write_all(&format!("# rotating\n{NEW}\n{OLD}\n"));
    taken(2).await;
    *token.lock().unwrap() = NEW.to_string();
    tokio::time::sleep(Duration::from_secs(1)).await;
    // 3. The old one is retired.
    write_all(&format!("{NEW}\n"));
    taken(3).await;
    on_every_member(&nodes, OLD, 401, "the old admin key is refused").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (written, failures) = writers.stop().await;
    println!(
        "{} admin writes through 3 members while the admin key rotated in its files, {} failed",
        written.len(),
        failures.len()
    );
    assert!(failures.is_empty(), "failed writes: {failures:#?}");
    assert!(written.len() >= 100, "only {} writes", written.len());
    assert_eq!(admin(NEW).status().await.unwrap().term, term, "no election");

    // A member that knows only the new key joins: the leader replicates to it with that key.
    write_file(&key_file(4), &format!("{NEW}\n"));
    let flag = format!("--api-key-file={}", key_file(4).display());
    let fourth = NodeProc::start_env("node4", dir.path(), &[&flag, &join], &env);
    fourth.wait_ready().await;
    let on_fourth = fourth.client().with_key(NEW);
    for key in &written {
        assert!(
            on_fourth.get(key).await.unwrap().is_some(),
            "{key} is on the fourth member"
        );
    }
    nodes.push(fourth);

    // A file made invalid is not taken: the keys before it stay.
    write_file(&key_file(1), "too-short\n");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !nodes[0]
        .log_text()
        .contains("the key files changed but are not valid: the keys before them stay")
    {
        assert!(Instant::now() < deadline, "the bad change is logged");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(admin(NEW).get("agents/a17/probe").await.is_ok());
    for node in &nodes {
        let log = node.log_text();
        assert!(
            !log.contains(OLD) && !log.contains(NEW),
            "{}: a key in the log",
            node.name
        );
    }
}
