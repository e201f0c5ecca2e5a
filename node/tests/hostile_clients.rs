//! Clients that hold connections without using them cannot take a member down: a silent or
//! trickling connection is closed after the header timeout, and connections beyond the limits
//! (per client address, in all) are closed on accept while the cluster's own members still get
//! in through their reserve. Raw TCP from several loopback source addresses (127.0.0.2, ...),
//! so one machine plays several clients. A list of large values answers a page bounded by bytes,
//! and a watch far behind reads history in bounded steps. Writes beyond what a member holds are
//! shed with `Retry-After` (and never applied), and the client waits that long; one credential's
//! watches are bounded.

mod common;

use std::net::SocketAddr;
use std::time::Duration;
use std::time::Instant;

use common::*;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpSocket;
use tokio::net::TcpStream;

/// A connection to `node` from the loopback address `source`.
async fn connect_from(source: &str, node: &NodeProc) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(format!("{source}:0").parse::<SocketAddr>().unwrap())
        .unwrap();
    socket
        .connect(format!("127.0.0.1:{}", node.port).parse().unwrap())
        .await
        .unwrap()
}

/// Whether the node closed `tcp` (end of stream or reset) within `within`, reading and
/// discarding what it sent first. `None`: still open.
async fn closed_within(tcp: &mut TcpStream, within: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(within.saturating_sub(start.elapsed()), tcp.read(&mut buf)).await
        {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(start.elapsed()),
            Ok(Ok(_)) => continue,
        }
    }
}

/// A new connection from `source` is closed by the node within 3 s (refused on accept).
async fn assert_closed_at_once(source: &str, node: &NodeProc, what: &str) {
    let mut tcp = connect_from(source, node).await;
    assert!(
        closed_within(&mut tcp, Duration::from_secs(3))
            .await
            .is_some(),
        "{what}"
    );
}

/// One whole request on `tcp`; the answer's status line, or `None` if the node closed it.
async fn try_health(tcp: &mut TcpStream) -> Option<String> {
    tcp.write_all(b"GET /api/v1/health HTTP/1.1\r\nHost: node\r\n\r\n")
        .await
        .ok()?;
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&buf[..n]).to_string();
    text.lines().next().map(str::to_string)
}

/// A connection from `source` that the node admitted: it answered a request on it.
async fn admitted_from(source: &str, node: &NodeProc) -> TcpStream {
    let mut tcp = connect_from(source, node).await;
    let status = health_on(&mut tcp).await;
    assert!(status.contains("200"), "{source} was answered {status:?}");
    tcp
}

async fn health_on(tcp: &mut TcpStream) -> String {
    try_health(tcp)
        .await
        .expect("an answer on an admitted connection within 10 s")
}

/// The value of the metric sample `line` starts with (name and labels), 0 when absent.
fn sample(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn silent_and_trickling_connections_are_closed_after_the_header_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProc::start(
        "n1",
        dir.path(),
        &["--bootstrap", "--header-timeout-secs=2"],
    );
    node.wait_ready().await;

    // Says nothing at all.
    let mut silent = connect_from("127.0.0.2", &node).await;
    // Sends a request head one byte every 200 ms, never finishing it: each byte arrives well
    // inside any per-read timeout, so only a deadline on the whole head stops it.
    let mut trickle = connect_from("127.0.0.3", &node).await;
    let trickling = tokio::spawn(async move {
        let head = b"GET /api/v1/health HTTP/1.1\r\nHost: node\r\nX-Padding: ";
        let start = Instant::now();
        for byte in head.iter().chain(std::iter::repeat(&b'a')) {
            if trickle.write_all(&[*byte]).await.is_err() {
                return Some(start.elapsed()); // the node closed it
            }
            if start.elapsed() > Duration::from_secs(20) {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        unreachable!()
    });
    // A normal client meanwhile is served.
    let mut normal = connect_from("127.0.0.4", &node).await;
    assert!(health_on(&mut normal).await.contains("200"));

    let silent_closed = closed_within(&mut silent, Duration::from_secs(10))
        .await
        .expect("a silent connection is closed within 10 s (header timeout 2 s)");
    let trickle_closed = trickling
        .await
        .unwrap()
        .expect("a trickling request head is cut off within 20 s (header timeout 2 s)");
    assert!(
        silent_closed >= Duration::from_millis(1500),
        "closed after {silent_closed:?}: before the header timeout"
    );
    assert!(
        trickle_closed < Duration::from_secs(8),
        "the trickle went on for {trickle_closed:?}: the timeout must bound the whole head"
    );
    // An idle keep-alive connection is let go the same way once it has been served.
    let normal_closed = closed_within(&mut normal, Duration::from_secs(10)).await;
    assert!(
        normal_closed.is_some(),
        "an idle kept-alive connection stays open past the header timeout"
    );
    assert!(node.client().health().await.is_ok(), "the node serves on");
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_beyond_the_limits_are_refused_and_members_keep_their_reserve() {
    let dir = tempfile::tempdir().unwrap();
    // 6 connections: 5 for clients, 1 more only for members; 3 per client address.
    let node = NodeProc::start(
        "n1",
        dir.path(),
        &[
            "--bootstrap",
            "--max-connections=6",
            "--peer-connection-reserve=1",
            "--max-connections-per-address=3",
        ],
    );
    node.wait_ready().await;
    // The member's own address (127.0.0.1) is known as a peer once the membership was read.
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Several HTTP threads accept from one socket, so connections made one after another
    // may be admitted in another order: each held connection is served once (admitted) before
    // the one that must be refused is made.
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(admitted_from("127.0.0.2", &node).await);
    }
    assert_closed_at_once(
        "127.0.0.2",
        &node,
        "a fourth connection from one address is closed at once",
    )
    .await;
    for _ in 0..2 {
        held.push(admitted_from("127.0.0.3", &node).await);
    }
    assert_closed_at_once(
        "127.0.0.4",
        &node,
        "with 5 client connections open, another client's is closed at once",
    )
    .await;
    // The held connections were admitted: each is served.
    for tcp in &mut held {
        let status = health_on(tcp).await;
        assert!(
            status.contains("200"),
            "a held connection answered {status:?}"
        );
    }
    // A member's address takes the reserved place.
    let text = eventually(
        "/metrics from the member's own address, in the reserve",
        Duration::from_secs(15),
        || async {
            match reqwest::get(node.url("/metrics")).await {
                Ok(r) => r.text().await.ok(),
                Err(_) => None,
            }
        },
    )
    .await;
    let refused = |reason: &str| {
        sample(
            &text,
            &format!("concordance_http_connections_refused_total{{reason=\"{reason}\"}}"),
        )
    };
    assert_eq!(refused("address_full"), 1.0, "{text}");
    // At least the sixth client; more if /metrics was asked before the member's own address
    // was known as a peer's.
    assert!(refused("full") >= 1.0, "{text}");
    // Five held, and the one /metrics came on: the total binds, so never more.
    assert_eq!(sample(&text, "concordance_http_connections"), 6.0, "{text}");
    drop(held);
    // Places free up as connections close.
    let freed = eventually("a new client connection served", WAIT, || async {
        let mut tcp = connect_from("127.0.0.4", &node).await;
        try_health(&mut tcp).await.filter(|s| s.contains("200"))
    })
    .await;
    assert!(freed.contains("200"));
    assert!(
        node.log_text().contains("refusing connections"),
        "the refusal is logged"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_list_of_large_values_answers_a_page_bounded_by_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProc::start("n1", dir.path(), &["--bootstrap"]);
    node.wait_ready().await;
    let c = node.client();
    // 12 values of about 900 KiB (under the 1 MiB value limit): 10.5 MiB in all.
    let big = "x".repeat(900 * 1024);
    for i in 0..12 {
        c.put(&format!("big/{i:02}"), &serde_json::json!(big))
            .await
            .unwrap();
    }
    let page = c
        .list(
            "big/",
            None,
            Some(10_000),
            concordance_client::Consistency::Linearizable,
        )
        .await
        .unwrap();
    let bytes: usize = page.kvs.iter().map(|kv| kv.value.to_string().len()).sum();
    assert!(
        page.more && (1..12).contains(&page.kvs.len()),
        "a page of 10,000 asked: {} keys, more {}",
        page.kvs.len(),
        page.more
    );
    assert!(
        bytes <= 5 << 20,
        "the page holds {bytes} bytes of values: more than 4 MiB and one value"
    );
    assert_eq!(
        page.next.as_deref(),
        page.kvs.last().map(|kv| kv.key.as_str())
    );
    // Following `next` still gives every key once, in order.
    let all = c
        .list_all(
            "big/",
            10_000,
            concordance_client::Consistency::Linearizable,
        )
        .await
        .unwrap();
    let keys: Vec<String> = all.into_iter().map(|kv| kv.key).collect();
    let expected: Vec<String> = (0..12).map(|i| format!("big/{i:02}")).collect();
    assert_eq!(keys, expected);
}

/// A snapshot stream (the peer route) whose header claims 4 GiB is refused as soon as the
/// length is read, not buffered while the node waits for a header that never ends.
#[tokio::test]
async fn a_snapshot_stream_whose_header_claims_4_gib_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProc::start_env(
        "n1",
        dir.path(),
        &["--bootstrap"],
        &[("CONCORDANCE_API_KEY", ADMIN_KEY)],
    );
    node.wait_ready().await;
    // A small body, all sent before the node answers (it closes the connection once it has):
    // without the bound, the node would buffer it and fail later on a header that never ends.
    let mut body = u32::MAX.to_le_bytes().to_vec();
    body.extend(std::iter::repeat_n(b'x', 64 << 10));
    let answer = reqwest::Client::new()
        .post(node.url("/api/v1/raft/snapshot"))
        .bearer_auth(ADMIN_KEY)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = answer.status();
    let text = answer.text().await.unwrap();
    assert_eq!(status, 400, "{text}");
    assert!(
        text.contains("invalid_snapshot") && text.contains("claims 4294967295 bytes"),
        "{text}"
    );
}

/// A raw `PUT` with no retries: the status, the error code if any, and `Retry-After`.
async fn raw_put(
    http: &reqwest::Client,
    node: &NodeProc,
    key: &str,
) -> (u16, String, Option<String>) {
    let resp = http
        .put(node.url(&format!("/api/v1/kv/{key}")))
        .json(&serde_json::json!({ "value": key }))
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    let body: serde_json::Value = resp.json().await.unwrap_or_default();
    let code = body["error"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    (status, code, retry_after)
}

async fn metrics_text(node: &NodeProc) -> String {
    reqwest::get(node.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Every key in `shed` is absent and every key in `taken` holds its value, read linearizably.
async fn assert_only_taken_writes_applied(node: &NodeProc, taken: &[String], shed: &[String]) {
    let c = node.client();
    for k in taken {
        let got = c.get(k).await.unwrap().map(|g| g.kv.value);
        assert_eq!(got, Some(serde_json::json!(k)), "{k} was acknowledged");
    }
    for k in shed {
        assert_eq!(
            c.get(k).await.unwrap().map(|g| g.kv.value),
            None,
            "{k} was answered overloaded, yet it applied"
        );
    }
}

/// A write flood beyond what the leader holds (`--max-pending-writes`) is shed: 503
/// `overloaded` with `Retry-After`, and a shed write never applies.
#[tokio::test(flavor = "multi_thread")]
async fn writes_beyond_the_leaders_bound_are_shed_with_retry_after_and_never_applied() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProc::start("n1", dir.path(), &["--bootstrap", "--max-pending-writes=1"]);
    node.wait_ready().await;
    let http = reqwest::Client::new();
    let (mut taken, mut shed) = (Vec::new(), Vec::new());
    // 32 writes at once against room for one; a few rounds in case one round never overlaps.
    for round in 0..5 {
        let answers = futures::future::join_all((0..32).map(|i| {
            let (http, key) = (http.clone(), format!("flood/{round}-{i}"));
            let node = &node;
            async move { (raw_put(&http, node, &key).await, key) }
        }))
        .await;
        for ((status, code, retry_after), key) in answers {
            match status {
                200 => taken.push(key),
                503 => {
                    assert_eq!(code, "overloaded", "{key}: 503 {code}");
                    assert_eq!(retry_after.as_deref(), Some("1"), "{key}: Retry-After");
                    shed.push(key);
                }
                other => panic!("{key}: answered {other} {code}"),
            }
        }
        if !shed.is_empty() {
            break;
        }
    }
    assert!(
        !shed.is_empty(),
        "no write was shed in 5 rounds of 32 with room for 1"
    );
    assert!(!taken.is_empty(), "every write was shed");
    let text = metrics_text(&node).await;
    assert_eq!(
        sample(
            &text,
            "concordance_writes_shed_total{reason=\"pending_writes\"}"
        ),
        shed.len() as f64,
        "{text}"
    );
    assert_only_taken_writes_applied(&node, &taken, &shed).await;
}

/// A follower whose queue for the leader is full sheds new writes at once, and the client
/// waits out `Retry-After` before it asks again: with retries 10 ms apart it would have spent
/// them all while the queue was still full.
#[tokio::test(flavor = "multi_thread")]
async fn a_follower_with_a_full_forward_queue_sheds_and_the_client_waits_out_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let bound = "--max-pending-writes=1";
    let first = NodeProc::start("n1", dir.path(), &["--bootstrap", bound]);
    first.wait_ready().await;
    let join = format!("--join={}", first.addr());
    let mut nodes = vec![first];
    for name in ["n2", "n3"] {
        let n = NodeProc::start(name, dir.path(), &[&join, bound]);
        n.wait_ready().await;
        nodes.push(n);
    }
    let leader_name = eventually("a leader", WAIT, || async {
        nodes[0].client().status().await.ok()?.leader
    })
    .await;
    let leader = nodes.iter().find(|n| n.name == leader_name).unwrap();
    let follower = nodes.iter().find(|n| n.name != leader_name).unwrap();

    // With the leader frozen, the follower's forwarded batches hang (two in flight), one more
    // write waits in its queue, and the next is shed.
    leader.signal("STOP");
    let http = reqwest::Client::new();
    let mut hanging = Vec::new();
    let mut shed = None;
    for i in 0..10 {
        let key = format!("queued/{i}");
        let put = tokio::spawn({
            let (http, url) = (http.clone(), follower.url(&format!("/api/v1/kv/{key}")));
            async move {
                http.put(url)
                    .json(&serde_json::json!({ "value": key }))
                    .timeout(Duration::from_secs(60))
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
            }
        });
        tokio::time::sleep(Duration::from_millis(30)).await;
        if put.is_finished() {
            let status = put.await.unwrap().unwrap();
            assert_eq!(
                status, 503,
                "queued/{i} answered at once with the leader frozen"
            );
            shed = Some(format!("queued/{i}"));
            break;
        }
        hanging.push(put);
    }
    let shed = shed.expect("a write shed by the follower within 10 writes");

    // A client retrying 10 ms apart, twice: only honouring Retry-After (1 s) outlasts the freeze.
    let client = concordance_client::Client::builder()
        .endpoint(follower.addr())
        .retry(concordance_client::RetryPolicy {
            max_retries: 2,
            min_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(10),
            max_total_delay: Duration::from_secs(5),
        })
        .follow_leader(false)
        .build()
        .unwrap();
    let started = Instant::now();
    let write = tokio::spawn(async move {
        client
            .put("after/retry-after", &serde_json::json!("after/retry-after"))
            .await
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    leader.signal("CONT");
    let answered = write.await.unwrap();
    let took = started.elapsed();
    assert!(answered.is_ok(), "the retried write failed: {answered:?}");
    assert!(
        took >= Duration::from_secs(1),
        "answered after {took:?}: the retry did not wait out Retry-After"
    );
    for put in hanging {
        let _ = put.await;
    }
    let text = metrics_text(follower).await;
    assert!(
        sample(
            &text,
            "concordance_writes_shed_total{reason=\"forward_queue\"}"
        ) >= 2.0,
        "the raw write and the client's first attempt were shed: {text}"
    );
    assert_only_taken_writes_applied(follower, &["after/retry-after".to_string()], &[shed]).await;
}

const KEYS: &[(&str, &str)] = &[
    ("CONCORDANCE_API_KEY", ADMIN_KEY),
    ("CONCORDANCE_AGENT_API_KEY", AGENT_KEY),
];

/// Opens a watch of `prefix` with `key`; the answer's status and, while held, its stream.
async fn open_watch(node: &NodeProc, key: &str, query: &str) -> reqwest::Response {
    reqwest::Client::new()
        .get(node.url(&format!("/api/v1/watch?{query}")))
        .bearer_auth(key)
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .unwrap()
}

/// One credential's watches are bounded on a member; another credential still watches, and a
/// closed watch frees its place.
#[tokio::test(flavor = "multi_thread")]
async fn watches_beyond_a_credentials_bound_are_refused_and_a_closed_one_frees_its_place() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProc::start_env(
        "n1",
        dir.path(),
        &["--bootstrap", "--max-watches-per-credential=2"],
        KEYS,
    );
    node.wait_ready().await;
    // Progress every second: a watch whose client left is noticed at the next write.
    let query = "prefix=w/&progressMs=1000";
    let mut held = Vec::new();
    for _ in 0..2 {
        let w = open_watch(&node, AGENT_KEY, query).await;
        assert_eq!(w.status(), 200);
        held.push(w);
    }
    let refused = open_watch(&node, AGENT_KEY, query).await;
    assert_eq!(refused.status(), 429);
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_many_watches", "{body}");
    let admin = open_watch(&node, ADMIN_KEY, query).await;
    assert_eq!(admin.status(), 200, "another credential still watches");
    let text = admin_metrics(&node).await;
    assert_eq!(
        sample(&text, "concordance_watches{credential=\"agent\"}"),
        2.0,
        "{text}"
    );
    assert_eq!(
        sample(&text, "concordance_watches{credential=\"admin\"}"),
        1.0,
        "{text}"
    );

    drop(held.pop());
    let reopened = eventually("a watch in the place of a closed one", WAIT, || async {
        let w = open_watch(&node, AGENT_KEY, query).await;
        (w.status() == 200).then_some(w)
    })
    .await;
    assert_eq!(reopened.status(), 200);
    drop(admin);
}

/// The revision of each `change` event in the complete messages of an SSE text.
fn change_ids(sse: &str) -> Vec<u64> {
    let complete = &sse[..sse.rfind("\n\n").map_or(0, |i| i + 2)];
    complete
        .split("\n\n")
        .filter(|m| m.lines().any(|l| l == "event: change"))
        .filter_map(|m| m.lines().find_map(|l| l.strip_prefix("id: ")?.parse().ok()))
        .collect()
}

/// A watch far behind a history of large values reads it in bounded steps and still streams
/// every revision, once, in order.
#[tokio::test(flavor = "multi_thread")]
async fn a_watch_far_behind_large_values_streams_every_revision_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProc::start("n1", dir.path(), &["--bootstrap"]);
    node.wait_ready().await;
    let c = node.client();
    // 12 values of about 900 KiB: 10.5 MiB of history, over two 4 MiB steps.
    let big = "x".repeat(900 * 1024);
    let mut revisions = Vec::new();
    for i in 0..12 {
        let put = c
            .put(&format!("big/{i:02}"), &serde_json::json!(big))
            .await
            .unwrap();
        revisions.push(put.revision);
    }
    let mut watch = reqwest::Client::new()
        .get(node.url(&format!(
            "/api/v1/watch?prefix=big/&startRevision={}",
            revisions[0]
        )))
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .unwrap();
    assert_eq!(watch.status(), 200);
    let mut sse = String::new();
    let deadline = Instant::now() + WAIT;
    while change_ids(&sse).len() < revisions.len() {
        assert!(
            Instant::now() < deadline,
            "the watch stalled: {:?}",
            change_ids(&sse)
        );
        let chunk = tokio::time::timeout(Duration::from_secs(10), watch.chunk())
            .await
            .expect("a chunk within 10 s")
            .unwrap()
            .expect("the stream goes on");
        sse.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert_eq!(change_ids(&sse), revisions);
}

/// A client that closes its sending side once its request is sent (`printf ... | nc`, some
/// load balancers' health checks) still gets the whole answer: the node must not take the
/// end of its input for the client going away.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_closes_its_sending_side_after_the_request_gets_the_answer() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProc::start_env(
        "n1",
        dir.path(),
        &["--bootstrap"],
        &[
            ("CONCORDANCE_API_KEY", ADMIN_KEY),
            ("CONCORDANCE_AGENT_API_KEY", AGENT_KEY),
        ],
    );
    node.wait_ready().await;
    node.admin()
        .put("half-closed", &serde_json::json!("answered"))
        .await
        .unwrap();
    // A linearizable read waits for the read index: the node sees the end of the request's
    // input while the answer is still being made.
    let request =
        format!("GET /api/v1/kv/half-closed HTTP/1.0\r\nAuthorization: Bearer {AGENT_KEY}\r\n\r\n");
    let mut unanswered = Vec::new();
    for i in 0..100 {
        let mut tcp = connect_from("127.0.0.1", &node).await;
        tcp.write_all(request.as_bytes()).await.unwrap();
        tcp.shutdown().await.unwrap();
        let mut answer = Vec::new();
        let read =
            tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut answer)).await;
        let answer = String::from_utf8_lossy(&answer);
        if !matches!(read, Ok(Ok(_))) || !answer.contains(" 200 OK") || !answer.contains("answered")
        {
            unanswered.push(format!("{i}: {read:?} {answer:?}"));
        }
    }
    assert!(
        unanswered.is_empty(),
        "{} of 100 half-closed requests got no whole answer, e.g. {:?}",
        unanswered.len(),
        &unanswered[..unanswered.len().min(3)]
    );
}
