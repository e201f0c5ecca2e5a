//! Failover: SIGKILL the leader of a local cluster, time until a surviving member accepts a
//! write, restart the killed member, repeat.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use anyhow::bail;
use serde::Serialize;
use tokio::task::JoinSet;

use crate::cluster::LocalCluster;
use crate::driver::Driver;
use crate::driver::Op;
use crate::driver::Payload;
use crate::driver::System;

#[derive(Debug, Clone)]
pub struct FailoverSpec {
    pub system: System,
    pub bin: PathBuf,
    pub members: usize,
    /// Each Concordance member's `--http-threads` (`None`: its default).
    pub http_threads: Option<u16>,
    pub kills: usize,
    /// A new write attempt starts this often (attempts overlap, so a hung one does not delay
    /// the measurement).
    pub probe_interval: Duration,
    pub work_dir: PathBuf,
}

#[derive(Debug, Clone, Serialize)]
pub struct FailoverResult {
    pub system: String,
    pub kills: usize,
    /// Milliseconds from SIGKILL to the first accepted write, in kill order.
    pub times_ms: Vec<f64>,
    pub min_ms: f64,
    pub median_ms: f64,
    pub p90_ms: f64,
    pub max_ms: f64,
}

/// At most this many write attempts are in flight at once: enough for 10 s of attempts, as a
/// write sent during the election may hang until the server's own timeout (7 s for etcd).
const MAX_PROBES: usize = 2000;

pub async fn run(spec: FailoverSpec) -> anyhow::Result<FailoverResult> {
    let mut cluster = match spec.system {
        System::Concordance => {
            let member_args = crate::cluster::http_threads_args(spec.http_threads);
            LocalCluster::concordance(&spec.bin, spec.members, &spec.work_dir, &member_args).await?
        }
        System::Etcd => LocalCluster::etcd(&spec.bin, spec.members, &spec.work_dir).await?,
    };
    let payload = Payload {
        key_bytes: 8,
        value_bytes: 256,
        key_space: 1,
    };
    let mut times = Vec::new();
    for round in 0..spec.kills {
        let leader = cluster.leader().await?;
        let survivor = (0..cluster.members.len())
            .find(|&i| i != leader && cluster.members[i].is_running())
            .expect("a surviving member");
        let driver = Arc::new(Driver::new(
            spec.system,
            &[cluster.members[survivor].client_addr.clone()],
            None,
            payload,
            64,
        )?);
        // The survivor has a working path to the leader before the kill.
        let warm = Instant::now();
        while driver.call(0, Op::Put, 0).await.is_err() {
            if warm.elapsed() > Duration::from_secs(60) {
                bail!("no write accepted before kill {}", round + 1);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        cluster.members[leader].kill();
        let killed_at = Instant::now();
        let took = first_accepted_write(&driver, killed_at, spec.probe_interval).await?;
        let ms = took.as_secs_f64() * 1000.0;
        eprintln!(
            "kill {}/{}: {} leader {}, first write after {ms:.0} ms",
            round + 1,
            spec.kills,
            spec.system.name(),
            cluster.members[leader].name
        );
        times.push(ms);
        cluster.members[leader].restart()?;
        cluster.wait_all_ready().await?;
    }
    cluster.stop();
    Ok(summarize(spec.system, times))
}

async fn first_accepted_write(
    driver: &Arc<Driver>,
    killed_at: Instant,
    interval: Duration,
) -> anyhow::Result<Duration> {
    let mut probes = JoinSet::new();
    let mut tick = tokio::time::interval(interval);
    loop {
        tokio::select! {
            Some(done) = probes.join_next(), if !probes.is_empty() => {
                if let Ok(Some(at)) = done {
                    return Ok(at - killed_at);
                }
            }
            _ = tick.tick() => {
                if killed_at.elapsed() > Duration::from_secs(60) {
                    bail!("no write accepted within 60 s of the kill");
                }
                if probes.len() < MAX_PROBES {
                    let d = driver.clone();
                    probes.spawn(async move {
                        d.call(0, Op::Put, 0).await.ok().map(|()| Instant::now())
                    });
                }
            }
        }
    }
}

fn summarize(system: System, times: Vec<f64>) -> FailoverResult {
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let at = |q: f64| sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)];
    FailoverResult {
        system: system.name().into(),
        kills: times.len(),
        min_ms: sorted[0],
        median_ms: at(0.5),
        p90_ms: at(0.9),
        max_ms: sorted[sorted.len() - 1],
        times_ms: times,
    }
}
