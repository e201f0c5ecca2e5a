//! The side-by-side comparison: a local 3-member Concordance cluster, then a 3-member etcd
//! cluster, the same workloads through the same generator, etcd's own gRPC tool against etcd,
//! and a table of ratios.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::cluster::LocalCluster;
use crate::cpu::CpuClock;
use crate::driver::Driver;
use crate::driver::Payload;
use crate::driver::System;
use crate::etcd_tool;
use crate::etcd_tool::ToolResult;
use crate::load;
use crate::load::LoadSpec;
use crate::load::RunResult;
use crate::load::Workload;

#[derive(Debug, Clone)]
pub struct CompareSpec {
    pub concordance_bin: PathBuf,
    pub etcd_bin: PathBuf,
    /// etcd's gRPC `benchmark` tool; skipped when `None`.
    pub etcd_tool: Option<PathBuf>,
    pub members: usize,
    pub clients: Vec<usize>,
    pub workloads: Vec<Workload>,
    pub warmup: Duration,
    pub duration: Duration,
    pub mixed_write_percent: u32,
    pub payload: Payload,
    pub work_dir: PathBuf,
    pub progress: bool,
}

/// etcd's tool against etcd, with the CPU etcd spent serving it.
#[derive(Debug, Clone, Serialize)]
pub struct NativeRun {
    pub tool: ToolResult,
    pub server_cpu_us_per_op: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub members: usize,
    pub payload: Payload,
    pub mixed_write_percent: u32,
    pub seconds_per_run: f64,
    pub runs: Vec<RunResult>,
    pub etcd_native_put: Vec<NativeRun>,
}

async fn measure(
    cluster: &LocalCluster,
    spec: &CompareSpec,
    runs: &mut Vec<RunResult>,
) -> anyhow::Result<()> {
    let max_clients = spec.clients.iter().copied().max().unwrap_or(1);
    let driver = Arc::new(Driver::new(
        cluster.system,
        &cluster.endpoints(),
        None,
        spec.payload,
        max_clients,
    )?);
    if spec.progress {
        eprintln!(
            "{}: preloading {} keys",
            cluster.system.name(),
            spec.payload.key_space
        );
    }
    driver.preload(64).await?;
    let cpu = CpuClock::of(cluster.pids());
    for &workload in &spec.workloads {
        for &clients in &spec.clients {
            let r = load::run(
                driver.clone(),
                LoadSpec {
                    workload,
                    clients,
                    warmup: spec.warmup,
                    duration: spec.duration,
                    mixed_write_percent: spec.mixed_write_percent,
                },
                &cpu,
                spec.progress,
            )
            .await?;
            if spec.progress {
                eprintln!("{}", crate::report::run_line(&r));
            }
            runs.push(r);
        }
    }
    Ok(())
}

pub async fn run(spec: CompareSpec) -> anyhow::Result<Comparison> {
    let mut runs = Vec::new();
    let mut native = Vec::new();

    eprintln!("starting {} Concordance members", spec.members);
    let mut c =
        LocalCluster::concordance(&spec.concordance_bin, spec.members, &spec.work_dir, &[]).await?;
    measure(&c, &spec, &mut runs).await?;
    c.stop();
    drop(c);

    eprintln!("starting {} etcd members", spec.members);
    let mut e = LocalCluster::etcd(&spec.etcd_bin, spec.members, &spec.work_dir).await?;
    measure(&e, &spec, &mut runs).await?;
    if let Some(tool) = &spec.etcd_tool {
        let cpu = CpuClock::of(e.pids());
        for &clients in &spec.clients {
            // Size each run to last about as long as the others, from the gateway's rate.
            let gateway_rate = runs
                .iter()
                .find(|r| {
                    r.system == System::Etcd.name()
                        && r.workload == Workload::Put
                        && r.clients == clients
                })
                .map_or(1000.0, |r| r.ops_per_sec);
            let total = ((gateway_rate * 1.5 * spec.duration.as_secs_f64()) as u64).max(1000);
            let conns = clients.div_ceil(16);
            if spec.progress {
                eprintln!("  etcd benchmark put c={clients} conns={conns} total={total}");
            }
            let before = cpu.sample()?;
            let tool = etcd_tool::put(
                tool,
                &e.endpoints(),
                clients,
                conns,
                total,
                spec.payload.key_bytes,
                spec.payload.value_bytes,
                spec.payload.key_space,
            )
            .await?;
            let used = cpu.sample()? - before;
            let n = NativeRun {
                server_cpu_us_per_op: used * 1e6 / tool.total as f64,
                tool,
            };
            if spec.progress {
                eprintln!("{}", crate::report::native_line(&n));
            }
            native.push(n);
        }
    }
    e.stop();

    Ok(Comparison {
        members: spec.members,
        payload: spec.payload,
        mixed_write_percent: spec.mixed_write_percent,
        seconds_per_run: spec.duration.as_secs_f64(),
        runs,
        etcd_native_put: native,
    })
}
