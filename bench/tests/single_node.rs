//! The load generator against a real single-node cluster (the node runs in this process,
//! with real RocksDB storage and HTTP).

use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use concordance::config::Cli;
use concordance_bench::cpu::CpuClock;
use concordance_bench::driver::Driver;
use concordance_bench::driver::Payload;
use concordance_bench::driver::System;
use concordance_bench::load;
use concordance_bench::load::LoadSpec;
use concordance_bench::load::Workload;

fn free_port() -> u16 {
    concordance_client::dev::free_port().expect("a free loopback port")
}

async fn start_node(dir: &std::path::Path) -> String {
    let port = free_port();
    // Through the command line's own parser: every setting not named here keeps its default.
    let args = [
        "concordance".to_string(),
        "--node-id=bench1".into(),
        format!("--listen=127.0.0.1:{port}"),
        format!("--data-dir={}", dir.join("bench1").display()),
        "--bootstrap".into(),
        "--api-key=bench-admin".into(),
        "--snapshot-entries=10000".into(),
        "--http-threads=2".into(),
    ];
    let config = <Cli as clap::Parser>::try_parse_from(args)
        .unwrap()
        .serve
        .validate()
        .unwrap();
    tokio::spawn(async move { concordance::server::serve(config).await.unwrap() });
    let addr = format!("127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = http
            .get(format!("http://{addr}/api/v1/ready"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ready {
            return addr;
        }
        assert!(Instant::now() < deadline, "the node did not become ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn puts_and_gets_against_a_single_node_report_operations_and_latencies() {
    let dir = tempfile::tempdir().unwrap();
    let addr = start_node(dir.path()).await;
    let payload = Payload {
        key_bytes: 8,
        value_bytes: 256,
        key_space: 200,
    };
    let driver = Arc::new(
        Driver::new(
            System::Concordance,
            std::slice::from_ref(&addr),
            Some("bench-admin".into()),
            payload,
            4,
        )
        .unwrap(),
    );
    driver.preload(8).await.unwrap();

    // Every preloaded key holds a 256-byte JSON value under an 8-byte key.
    let kv: serde_json::Value = reqwest::Client::new()
        .get(format!("http://{addr}/api/v1/kv/000000c7"))
        .bearer_auth("bench-admin")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(serde_json::to_vec(&kv["kv"]["value"]).unwrap().len(), 256);

    let cpu = CpuClock::of(vec![std::process::id()]);
    for workload in [Workload::Put, Workload::GetLinearizable, Workload::Mixed] {
        let r = load::run(
            driver.clone(),
            LoadSpec {
                workload,
                clients: 4,
                warmup: Duration::from_millis(200),
                duration: Duration::from_secs(2),
                mixed_write_percent: 50,
            },
            &cpu,
            false,
        )
        .await
        .unwrap();
        assert_eq!(r.errors, 0, "{workload:?}: {:?}", r.first_error);
        assert!(
            r.ops > 0 && r.ops_per_sec > 0.0,
            "{workload:?}: no operations"
        );
        assert!(r.latency.p50_ms > 0.0 && r.latency.p50_ms <= r.latency.p99_ms);
        assert!(r.server_cpu_us_per_op.is_some_and(|c| c > 0.0));
        match workload {
            Workload::Put => assert_eq!(r.reads, 0),
            Workload::GetLinearizable => assert_eq!(r.writes, 0),
            _ => assert!(r.reads > 0 && r.writes > 0),
        }
    }

    // A wrong key is counted as errors, not as operations.
    let bad = Arc::new(
        Driver::new(
            System::Concordance,
            &[addr],
            Some("wrong".into()),
            payload,
            1,
        )
        .unwrap(),
    );
    let r = load::run(
        bad,
        LoadSpec {
            workload: Workload::Put,
            clients: 1,
            warmup: Duration::ZERO,
            duration: Duration::from_millis(500),
            mixed_write_percent: 0,
        },
        &cpu,
        false,
    )
    .await
    .unwrap();
    assert_eq!(r.ops, 0);
    assert!(r.errors > 0);
    assert!(r.first_error.unwrap().contains("401"));
}
