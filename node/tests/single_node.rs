//! A single-node cluster as a real process: durability across restarts, data API semantics,
//! corruption detection, refused starts and inspect.

mod common;

use std::time::Duration;

use common::*;
use concordance_client::Client;
use concordance_client::Consistency;
use concordance_client::PutRequest;
use serde_json::json;

/// Every acknowledged (key, revision) is served at that revision.
async fn assert_every_write_served(c: &Client, acked: &[(String, u64)], when: &str) {
    for (key, rev) in acked {
        let got = c
            .get(key)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{key} lost {when}"));
        assert_eq!(got.kv.mod_revision, *rev, "{key}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn restart_keeps_every_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = NodeProc::start("n1", dir.path(), &["--bootstrap"]);
    node.wait_ready().await;
    let c = node.client();

    // Concurrent writers: every acknowledged write must survive SIGKILL.
    let mut tasks = Vec::new();
    for w in 0..8 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..50 {
                let key = format!("w{w}/k{i:03}");
                let r = c.put(&key, &json!({"w": w, "i": i})).await.unwrap();
                acked.push((key, r.revision));
            }
            acked
        }));
    }
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    let revisions: std::collections::HashSet<u64> = acked.iter().map(|(_, r)| *r).collect();
    assert_eq!(
        revisions.len(),
        acked.len(),
        "every put gets its own revision"
    );

    node.kill();
    node.restart();
    node.wait_ready().await;
    assert_every_write_served(&c, &acked, "after SIGKILL").await;
    let status = c.status().await.unwrap();
    assert_eq!(status.revision, acked.len() as u64);

    // And after a graceful stop, started again without --bootstrap: it resumes as itself.
    node.stop();
    node.args.retain(|a| a != "--bootstrap");
    node.restart();
    node.wait_ready().await;
    assert_eq!(
        c.list("w3/", None, None, Consistency::Linearizable)
            .await
            .unwrap()
            .kvs
            .len(),
        50
    );
    assert!(node.log_text().contains("SIGTERM received"));
}

/// With a snapshot every 50 entries the log is purged again and again; after a SIGKILL the
/// node starts from the snapshot and what is left of the log (its first segment still holds
/// the purged entries) and keeps every acknowledged write.
#[tokio::test(flavor = "multi_thread")]
async fn restart_after_purges_keeps_every_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = NodeProc::start("n1", dir.path(), &["--bootstrap", "--snapshot-entries=50"]);
    node.wait_ready().await;
    let c = node.client();
    let mut acked = Vec::new();
    // Writes until four snapshots were built (at least 400 writes): openraft starts no new
    // snapshot while one is being taken, so how many writes that takes depends on how long
    // each build takes on this machine; a fixed count made the test fail on a slow build.
    let snapshots = |node: &NodeProc| node.log_text().matches("snapshot built").count();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut i = 0;
    while i < 400 || snapshots(&node) < 4 {
        assert!(
            std::time::Instant::now() < deadline,
            "fewer than four snapshots after {i} writes in 60 s:\n{}",
            node.log_text()
        );
        for _ in 0..50 {
            let key = format!("p/{i:05}");
            acked.push((key.clone(), c.put(&key, &json!(i)).await.unwrap().revision));
            i += 1;
        }
    }
    for round in 0..2 {
        node.kill();
        node.restart();
        node.wait_ready().await;
        assert_every_write_served(&c, &acked, &format!("after SIGKILL {round}")).await;
        // Writes go on after the restart, appended after the purged part.
        let key = format!("after/{round}");
        acked.push((
            key.clone(),
            c.put(&key, &json!(round)).await.unwrap().revision,
        ));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn revisions_reads_and_lists_behave_as_documented() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProc::start("n1", dir.path(), &["--bootstrap"]);
    node.wait_ready().await;
    let c = node.client();

    let r1 = c.put("agents/a1/state", &json!({"step": 1})).await.unwrap();
    assert!(r1.prev_kv.is_none());
    let r2 = c.put("agents/a1/state", &json!({"step": 2})).await.unwrap();
    assert_eq!(r2.revision, r1.revision + 1);
    assert_eq!(r2.prev_kv.as_ref().unwrap().value, json!({"step": 1}));
    let got = c.get("agents/a1/state").await.unwrap().unwrap();
    assert_eq!(got.kv.value, json!({"step": 2}));
    assert_eq!(
        (got.kv.create_revision, got.kv.mod_revision, got.kv.version),
        (r1.revision, r2.revision, 2)
    );
    let ser = c
        .get_with("agents/a1/state", Consistency::Serializable)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ser.kv, got.kv);

    // Deleting bumps the revision once; deleting nothing does not.
    let d = c.delete("agents/a1/state").await.unwrap();
    assert_eq!((d.deleted, d.revision), (1, r2.revision + 1));
    let d2 = c.delete("agents/a1/state").await.unwrap();
    assert_eq!((d2.deleted, d2.revision), (0, d.revision));
    assert!(c.get("agents/a1/state").await.unwrap().is_none());
    let again = c.put("agents/a1/state", &json!(3)).await.unwrap();
    let kv = c.get("agents/a1/state").await.unwrap().unwrap().kv;
    assert_eq!(
        (kv.create_revision, kv.version),
        (again.revision, 1),
        "recreated key starts over"
    );

    // Prefix list with limit and continuation, in key order, prefix respected.
    for i in 0..25 {
        c.put(&format!("list/{i:02}"), &json!(i)).await.unwrap();
    }
    c.put("listx", &json!("outside")).await.unwrap();
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = c
            .list(
                "list/",
                after.as_deref(),
                Some(10),
                Consistency::Linearizable,
            )
            .await
            .unwrap();
        seen.extend(page.kvs.iter().map(|kv| kv.key.clone()));
        if !page.more {
            break;
        }
        after = page.next;
    }
    let expected: Vec<String> = (0..25).map(|i| format!("list/{i:02}")).collect();
    assert_eq!(seen, expected);

    // Keys with spaces and non-ASCII survive the URL.
    c.put("odd key/ü?#", &json!(true)).await.unwrap();
    assert_eq!(
        c.get("odd key/ü?#").await.unwrap().unwrap().kv.key,
        "odd key/ü?#"
    );

    // Idempotent retries apply once.
    let body = PutRequest {
        value: json!("once"),
        lease: None,
    };
    let a = c.put_with("idem", &body, Some("retry-1")).await.unwrap();
    let b = c.put_with("idem", &body, Some("retry-1")).await.unwrap();
    assert_eq!(a.revision, b.revision);
    assert_eq!(c.get("idem").await.unwrap().unwrap().kv.version, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn corrupted_records_are_reported_not_served() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = NodeProc::start("n1", dir.path(), &["--bootstrap"]);
    node.wait_ready().await;
    let c = node.client();
    c.put("good", &json!("fine")).await.unwrap();
    c.put("victim", &json!("original")).await.unwrap();
    node.stop();

    // Flip one byte inside the stored record of `victim`.
    {
        let store = concordance::store::Store::open(&node.data_dir).unwrap();
        let cf = store.cf(concordance::store::CF_KV);
        let mut bytes = store.db().get_cf(cf, b"victim").unwrap().unwrap();
        let last = bytes.len() - 3;
        bytes[last] ^= 0x20;
        store.db().put_cf(cf, b"victim", bytes).unwrap();
        store.db().flush_wal(true).unwrap();
    }
    node.restart();
    node.wait_ready().await;
    let err = c.get("victim").await.unwrap_err();
    assert_eq!(err.code(), Some("storage_error"), "{err}");
    assert!(err.to_string().contains("checksum"), "{err}");
    assert_eq!(
        c.get("good").await.unwrap().unwrap().kv.value,
        json!("fine")
    );
    let list_err = c
        .list("", None, None, Consistency::Serializable)
        .await
        .unwrap_err();
    assert_eq!(list_err.code(), Some("storage_error"));
    node.stop();

    // A corrupted log entry (with entries after it) stops the node at start with a clear
    // error: the bytes flipped are in the middle of what the log's segment holds.
    {
        let log_dir = node.data_dir.join("log");
        let seg = std::fs::read_dir(&log_dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|x| x == "seg"))
            .expect("a log segment");
        let mut bytes = std::fs::read(&seg).unwrap();
        let used = bytes.iter().rposition(|b| *b != 0).unwrap();
        bytes[used / 2] ^= 0x01;
        std::fs::write(&seg, bytes).unwrap();
    }
    node.restart();
    let status = node.wait_exit(Duration::from_secs(20));
    assert!(!status.success());
    let log = node.log_text();
    assert!(
        log.contains("Raft log") && log.contains("corrupt"),
        "log:\n{log}"
    );
}

#[test]
fn refused_starts_name_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let d = format!("--data-dir={}", dir.path().join("x").display());
    let out = run_bin(&["--node-id=n1", "--listen=0.0.0.0:0", &d], &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("without keys") && err.contains("--insecure-no-auth"),
        "{err}"
    );

    let out = run_bin(&["--node-id=n1", "--api-key=", &d], &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("CONCORDANCE_API_KEY"));

    let out = run_bin(&["--node-id=n1", &d], &[("CONCORDANCE_AGENT_API_KEY", "")]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("CONCORDANCE_AGENT_API_KEY"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_data_dir_keeps_its_identity_and_inspect_shows_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = NodeProc::start("n1", dir.path(), &["--bootstrap"]);
    node.wait_ready().await;
    node.client().put("k", &json!(1)).await.unwrap();
    let status = node.client().status().await.unwrap();
    let uuid = status
        .cluster_id
        .clone()
        .expect("a bootstrapped node has a cluster id");
    assert_eq!(status.role, "leader");
    assert_eq!(status.members.len(), 1);
    node.stop();

    let d = format!("--data-dir={}", node.data_dir.display());
    let out = run_bin(&["inspect", &d, "--json"], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["nodeId"], "n1");
    assert_eq!(v["clusterUuid"], uuid.as_str());
    assert_eq!(v["revision"], 1);
    assert!(v["lastLog"]["index"].as_u64().unwrap() >= 2);

    // The same data dir under another name is refused: it would be another member's disk.
    let out = run_bin(&["--node-id=other", &d], &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("belongs to node \"n1\""));

    // Restarted with --bootstrap again, it resumes the same cluster, not a new one.
    node.restart();
    node.wait_ready().await;
    assert_eq!(
        node.client().status().await.unwrap().cluster_id.unwrap(),
        uuid
    );
    assert_eq!(
        node.client().get("k").await.unwrap().unwrap().kv.value,
        json!(1)
    );

    let out = run_bin(
        &[
            "inspect",
            &format!("--data-dir={}", dir.path().join("nothing").display()),
        ],
        &[],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no Concordance data"));
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_expose_raft_and_http_figures() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProc::start("n1", dir.path(), &["--bootstrap"]);
    node.wait_ready().await;
    node.client().put("m", &json!(1)).await.unwrap();
    let text = reqwest::get(node.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "concordance_raft_role{role=\"leader\"} 1",
        "concordance_raft_term",
        "concordance_raft_applied_index",
        "concordance_proposal_duration_seconds",
        "concordance_apply_duration_seconds",
        "concordance_log_sync_duration_seconds",
        "concordance_storage_size_bytes",
        "route=\"/api/v1/kv/{*key}\"",
    ] {
        assert!(text.contains(name), "metrics lack {name}:\n{text}");
    }
    assert!(
        !text.contains("route=\"/api/v1/kv/m\""),
        "raw keys must not become labels"
    );
}

/// A rollback below a command set the cluster has enabled is refused at start, with the
/// reason and a termination message, instead of stopping (or applying differently) at the
/// first entry of that set.
#[tokio::test(flavor = "multi_thread")]
async fn a_data_dir_whose_cluster_enabled_a_newer_command_set_is_refused_at_start() {
    use concordance::store::CF_APPLIED;
    use concordance::store::KEY_APPLIED;
    use concordance::store::codec::RecordKind;
    use concordance::store::records::COMMAND_VERSION;

    let dir = tempfile::tempdir().unwrap();
    let mut node = NodeProc::start("n1", dir.path(), &["--bootstrap"]);
    node.wait_ready().await;
    node.client().put("k", &json!(1)).await.unwrap();
    node.stop();

    // As if a newer build had enabled the next command set.
    let store = concordance::store::Store::open(&node.data_dir).unwrap();
    let mut applied = store.applied_state().unwrap();
    applied.command_version = Some(COMMAND_VERSION + 1);
    store
        .put_record_synced(CF_APPLIED, KEY_APPLIED, RecordKind::AppliedState, &applied)
        .unwrap();
    store.close().unwrap();
    drop(store);

    let note = dir.path().join("termination");
    let out = run_bin(
        &[
            "--node-id=n1",
            &format!("--data-dir={}", node.data_dir.display()),
            &format!("--listen=127.0.0.1:{}", free_port()),
            &format!("--termination-log={}", note.display()),
        ],
        &[],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    let enabled = format!(
        "has enabled command set {}, and this binary applies sets up to {COMMAND_VERSION}",
        COMMAND_VERSION + 1
    );
    assert!(stderr.contains(&enabled), "{stderr}");
    let note = std::fs::read_to_string(note).unwrap();
    assert!(note.contains("\"command_set_unsupported\""), "{note}");
}
