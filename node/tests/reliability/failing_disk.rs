//! A disk that fails under a running node: an `LD_PRELOAD` shim (`fail_io/fail_io.c`) makes
//! writes or fsyncs of the Raft log's segments or of RocksDB's files fail with ENOSPC or EIO
//! after a number of bytes. The node must never acknowledge the write that failed, never
//! answer a read with something other than what was acknowledged, and stop (exit status 4)
//! rather than stay up with its Raft stopped. Restarted on a sound disk (without the shim),
//! it has every acknowledged write.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;

use crate::common::NodeProc;

/// Builds the shim once per test run; returns the shared object's path.
fn shim() -> PathBuf {
    static SHIM: OnceLock<PathBuf> = OnceLock::new();
    SHIM.get_or_init(|| crate::durability::build_shim("fail_io"))
        .clone()
}

const VALUE_BYTES: usize = 64 << 10;
/// The shim lets this many bytes through to the watched files first.
const FAIL_AFTER_BYTES: u64 = 4 << 20;
const MAX_WRITES: usize = 3000;

struct Case {
    name: &'static str,
    /// Files whose path holds this fail.
    path: &'static str,
    call: &'static str,
    errno: &'static str,
}

const CASES: [Case; 4] = [
    Case {
        name: "a Raft log segment's write meets ENOSPC",
        path: "/log/",
        call: "write",
        errno: "ENOSPC",
    },
    Case {
        name: "a Raft log segment's fsync meets EIO",
        path: "/log/",
        call: "fsync",
        errno: "EIO",
    },
    Case {
        name: "a RocksDB write meets ENOSPC",
        path: "/db/",
        call: "write",
        errno: "ENOSPC",
    },
    Case {
        name: "a RocksDB fsync meets EIO",
        path: "/db/",
        call: "fsync",
        errno: "EIO",
    },
];

fn value(i: usize) -> Value {
    crate::common::incompressible(i, VALUE_BYTES)
}

async fn fail_and_recover(case: &Case) {
    let dir = tempfile::tempdir().unwrap();
    let so = shim().display().to_string();
    let after = FAIL_AFTER_BYTES.to_string();
    let mut node = NodeProc::start_env(
        "node1",
        dir.path(),
        &["--bootstrap"],
        &[
            ("LD_PRELOAD", &so),
            ("FAIL_IO_AFTER_BYTES", &after),
            ("FAIL_IO_PATH", case.path),
            ("FAIL_IO_CALL", case.call),
            ("FAIL_IO_ERRNO", case.errno),
        ],
    );
    node.wait_ready().await;
    let c = node.client();
    let mut acknowledged = Vec::new();
    let mut failed = None;
    for i in 0..MAX_WRITES {
        match c.put(&format!("k/{i:05}"), &value(i)).await {
            Ok(_) => acknowledged.push(i),
            Err(e) => {
                failed = Some((i, e.to_string()));
                break;
            }
        }
        // RocksDB fsyncs when it writes a table: a snapshot flushes the memtables into one.
        if case.path == "/db/" && i % 16 == 15 {
            let _ = reqwest::Client::new()
                .post(node.url("/api/v1/cluster/snapshot"))
                .timeout(Duration::from_secs(10))
                .send()
                .await;
        }
        if node.has_exited() {
            break;
        }
    }
    assert!(
        acknowledged.len() >= 10,
        "{}: only {} writes acknowledged before the failure",
        case.name,
        acknowledged.len()
    );
    eprintln!(
        "{}: {} writes acknowledged, then {:?}",
        case.name,
        acknowledged.len(),
        failed
    );
    // Until it stops, whatever it answers is what was acknowledged.
    for i in acknowledged.iter().rev().take(20) {
        match c.get(&format!("k/{i:05}")).await {
            Ok(Some(got)) => assert!(
                got.kv.value == value(*i),
                "{}: write {i} changed",
                case.name
            ),
            Ok(None) => panic!("{}: acknowledged write {i} answered as missing", case.name),
            Err(_) => break, // stopping
        }
    }
    let status = node.wait_exit(Duration::from_secs(30));
    assert_eq!(
        status.code(),
        Some(4),
        "{}: the member stops on a storage error; log:\n{}",
        case.name,
        node.log_text()
    );
    assert!(
        node.log_text().contains("raft stopped on a storage error"),
        "{}: {}",
        case.name,
        node.log_text()
    );

    // The disk made whole: every acknowledged write is there.
    node.env
        .retain(|(k, _)| !k.starts_with("FAIL_IO") && k != "LD_PRELOAD");
    node.restart();
    node.wait_ready().await;
    for i in &acknowledged {
        let got = c
            .get(&format!("k/{i:05}"))
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{}: acknowledged write {i} is lost", case.name));
        assert!(
            got.kv.value == value(*i),
            "{}: write {i} changed",
            case.name
        );
    }
    c.put("after", &Value::from(1)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_disk_stops_the_member_without_acknowledging_and_a_restart_loses_nothing() {
    for case in &CASES {
        fail_and_recover(case).await;
    }
}
