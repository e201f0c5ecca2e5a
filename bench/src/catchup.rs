//! Catch-up: a new member receiving a large state by snapshot. Writes `mib` MiB of 64 KiB
//! values into a 3-member Concordance cluster that compacts its log often, takes a snapshot,
//! then times a fourth member from start to ready.

use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use serde::Serialize;

use crate::cluster::LocalCluster;
use crate::driver::Driver;
use crate::driver::Payload;
use crate::driver::System;

#[derive(Debug, Clone)]
pub struct CatchupSpec {
    pub bin: PathBuf,
    pub mib: u64,
    pub writers: usize,
    pub work_dir: PathBuf,
}

#[derive(Debug, Clone, Serialize)]
pub struct CatchupResult {
    pub data_mib: u64,
    pub write_seconds: f64,
    /// Raft term increase while the data was written: elections under sustained writes.
    pub leader_changes_during_writes: u64,
    pub snapshot_mib: f64,
    pub join_to_ready_seconds: f64,
    /// Snapshot bytes received per second of join-to-ready.
    pub snapshot_mib_per_sec: f64,
    /// Live data per second of join-to-ready.
    pub data_mib_per_sec: f64,
}

const VALUE_BYTES: usize = 64 * 1024;

fn dir_bytes(p: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(p) else {
        return 0;
    };
    rd.filter_map(Result::ok)
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// The Raft term as the member at `addr` sees it.
async fn term(http: &reqwest::Client, addr: &str) -> anyhow::Result<u64> {
    let status: serde_json::Value = http
        .get(format!("http://{addr}/api/v1/cluster/status"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    status["term"]
        .as_u64()
        .ok_or_else(|| anyhow::anyhow!("cluster status from {addr} has no term: {status}"))
}

pub async fn run(spec: CatchupSpec) -> anyhow::Result<CatchupResult> {
    let compact = vec!["--snapshot-entries=100".to_string()];
    let mut cluster = LocalCluster::concordance(&spec.bin, 3, &spec.work_dir, &compact).await?;
    let payload = Payload {
        key_bytes: 8,
        value_bytes: VALUE_BYTES,
        key_space: spec.mib * (1 << 20) / VALUE_BYTES as u64,
    };
    let leader = cluster.leader().await?;
    let driver = Arc::new(Driver::new(
        System::Concordance,
        &[cluster.members[leader].client_addr.clone()],
        None,
        payload,
        spec.writers,
    )?);
    eprintln!(
        "writing {} MiB ({} values of 64 KiB) with {} writers",
        spec.mib, payload.key_space, spec.writers
    );
    let http = reqwest::Client::new();
    let term_before = term(&http, &cluster.members[leader].client_addr).await?;
    let started = Instant::now();
    driver.preload(spec.writers).await?;
    let write_seconds = started.elapsed().as_secs_f64();
    let term_after = term(&http, &cluster.members[leader].client_addr).await?;
    let leader_changes_during_writes = term_after.saturating_sub(term_before);
    eprintln!(
        "wrote {} MiB in {write_seconds:.1} s; term {term_before} -> {term_after}",
        spec.mib
    );
    let resp = http
        .post(format!(
            "http://{}/api/v1/cluster/snapshot",
            cluster.members[leader].client_addr
        ))
        .send()
        .await?;
    anyhow::ensure!(
        resp.status().is_success(),
        "snapshot request failed: {}",
        resp.status()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;

    let join = format!("--join={}", cluster.members[leader].client_addr);
    let started = Instant::now();
    cluster.add_concordance_member("node4", &[join, "--snapshot-entries=1000".into()])?;
    let newbie = cluster.members.len() - 1;
    cluster.wait_ready(newbie).await?;
    let took = started.elapsed().as_secs_f64();
    let snapshot_mib =
        dir_bytes(&cluster.members[newbie].data_dir.join("snapshots")) as f64 / (1 << 20) as f64;
    cluster.stop();
    Ok(CatchupResult {
        data_mib: spec.mib,
        write_seconds,
        leader_changes_during_writes,
        snapshot_mib,
        join_to_ready_seconds: took,
        snapshot_mib_per_sec: snapshot_mib / took,
        data_mib_per_sec: spec.mib as f64 / took,
    })
}
