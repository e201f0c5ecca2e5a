//! The side-by-side comparison: a local 3-member Concordance cluster and a 3-member etcd
//! cluster, each point (workload, clients) measured on one right after the other through the
//! same generator, etcd's own gRPC tool against etcd, and a table of ratios.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::cluster::LocalCluster;
use crate::cpu::CpuClock;
use crate::driver::Driver;
use crate::driver::Payload;
use crate::etcd_tool;
use crate::etcd_tool::ToolResult;
use crate::load;
use crate::load::LoadSpec;
use crate::load::RunResult;
use crate::load::Workload;
use crate::tls::TlsFiles;

#[derive(Debug, Clone)]
pub struct CompareSpec {
    pub concordance_bin: PathBuf,
    pub etcd_bin: PathBuf,
    /// etcd's gRPC `benchmark` tool; skipped when `None`.
    pub etcd_tool: Option<PathBuf>,
    pub members: usize,
    /// HTTP threads of each Concordance member (its `--http-threads`); `None`: its default.
    pub http_threads: Option<u16>,
    /// Times every point is measured (the systems alternating each time).
    pub rounds: usize,
    pub clients: Vec<usize>,
    pub workloads: Vec<Workload>,
    pub warmup: Duration,
    pub duration: Duration,
    pub mixed_write_percent: u32,
    pub payload: Payload,
    pub work_dir: PathBuf,
    pub progress: bool,
    /// Both systems serve TLS to clients and talk mutual TLS between members.
    pub tls: bool,
}

/// etcd's tool against etcd, with the CPU etcd spent serving it.
#[derive(Debug, Clone, Serialize)]
pub struct NativeRun {
    /// Which round of its point (from 1).
    pub round: usize,
    pub tool: ToolResult,
    pub server_cpu_us_per_op: f64,
}

/// One line, in the columns of a [`RunResult`]'s.
impl std::fmt::Display for NativeRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "etcd-grpc   put              c={:<3} {:>8.0} ops/s  p50 {:>7.2} ms  p99 {:>7.2} ms  p99.9 {:>7.2} ms  cpu/op {:>5.0} µs",
            self.tool.clients,
            self.tool.ops_per_sec,
            self.tool.latency.p50_ms,
            self.tool.latency.p99_ms,
            self.tool.latency.p999_ms,
            self.server_cpu_us_per_op
        )
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub members: usize,
    /// Each Concordance member's `--http-threads` (`None`: its default, one per core).
    pub http_threads: Option<u16>,
    pub rounds: usize,
    pub payload: Payload,
    pub mixed_write_percent: u32,
    pub seconds_per_run: f64,
    /// Both systems served TLS, and their members talked mutual TLS.
    pub tls: bool,
    pub runs: Vec<RunResult>,
    pub etcd_native_put: Vec<NativeRun>,
}

/// A cluster under test with its load driver, preloaded.
struct Target {
    cluster: LocalCluster,
    driver: Arc<Driver>,
    cpu: CpuClock,
}

async fn prepare(cluster: LocalCluster, spec: &CompareSpec) -> anyhow::Result<Target> {
    let max_clients = spec.clients.iter().copied().max().unwrap_or(1);
    let driver = Arc::new(Driver::with_ca(
        cluster.system,
        &cluster.endpoints(),
        None,
        spec.payload,
        max_clients,
        cluster.tls().map(|t| t.ca_certificate()).transpose()?,
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
    Ok(Target {
        cluster,
        driver,
        cpu,
    })
}

async fn measure(
    target: &Target,
    spec: &CompareSpec,
    workload: Workload,
    clients: usize,
    round: usize,
) -> anyhow::Result<RunResult> {
    let mut r = load::run(
        target.driver.clone(),
        LoadSpec {
            workload,
            clients,
            warmup: spec.warmup,
            duration: spec.duration,
            mixed_write_percent: spec.mixed_write_percent,
        },
        &target.cpu,
        spec.progress,
    )
    .await?;
    r.round = round;
    if spec.progress {
        eprintln!("{r}");
    }
    Ok(r)
}

/// etcd's own gRPC tool against etcd, sized to last about as long as a gateway run.
async fn measure_native(
    tool: &std::path::Path,
    etcd: &Target,
    spec: &CompareSpec,
    clients: usize,
    round: usize,
    gateway_rate: f64,
) -> anyhow::Result<NativeRun> {
    let total = ((gateway_rate * 1.5 * spec.duration.as_secs_f64()) as u64).max(1000);
    let conns = clients.div_ceil(16);
    if spec.progress {
        eprintln!("  etcd benchmark put c={clients} conns={conns} total={total}");
    }
    let before = etcd.cpu.sample()?;
    let tool = etcd_tool::put(
        tool,
        &etcd.cluster.endpoints(),
        clients,
        conns,
        total,
        spec.payload.key_bytes,
        spec.payload.value_bytes,
        spec.payload.key_space,
    )
    .await?;
    let used = etcd.cpu.sample()? - before;
    let n = NativeRun {
        round,
        server_cpu_us_per_op: used * 1e6 / tool.total as f64,
        tool,
    };
    if spec.progress {
        eprintln!("{n}");
    }
    Ok(n)
}

/// Both clusters run side by side (the idle one only heartbeats), and every point is measured
/// on one system right after the other, so a change in the machine's speed over the minutes
/// of a run (another process, disk writeback) falls on both sides of a ratio alike.
pub async fn run(spec: CompareSpec) -> anyhow::Result<Comparison> {
    let mut runs = Vec::new();
    let mut native = Vec::new();

    let member_args = crate::cluster::http_threads_args(spec.http_threads);
    eprintln!(
        "starting {} Concordance members {}",
        spec.members,
        member_args.join(" ")
    );
    let tls = if spec.tls {
        eprintln!("both systems serve TLS, and their members talk mutual TLS");
        Some(TlsFiles::make(&spec.concordance_bin, &spec.work_dir)?)
    } else {
        None
    };
    let c = LocalCluster::concordance_with(
        &spec.concordance_bin,
        spec.members,
        &spec.work_dir,
        &member_args,
        tls.as_ref(),
    )
    .await?;
    eprintln!("starting {} etcd members", spec.members);
    let e =
        LocalCluster::etcd_with(&spec.etcd_bin, spec.members, &spec.work_dir, tls.as_ref()).await?;
    let mut concordance = prepare(c, &spec).await?;
    let mut etcd = prepare(e, &spec).await?;

    for &workload in &spec.workloads {
        for &clients in &spec.clients {
            for round in 1..=spec.rounds.max(1) {
                runs.push(measure(&concordance, &spec, workload, clients, round).await?);
                let gateway = measure(&etcd, &spec, workload, clients, round).await?;
                let gateway_rate = gateway.ops_per_sec;
                runs.push(gateway);
                // etcd's gRPC tool is run in plaintext only.
                if let (Workload::Put, Some(tool), false) = (workload, &spec.etcd_tool, spec.tls) {
                    native.push(
                        measure_native(tool, &etcd, &spec, clients, round, gateway_rate).await?,
                    );
                }
            }
        }
    }
    concordance.cluster.stop();
    etcd.cluster.stop();

    Ok(Comparison {
        members: spec.members,
        http_threads: spec.http_threads,
        rounds: spec.rounds.max(1),
        payload: spec.payload,
        mixed_write_percent: spec.mixed_write_percent,
        seconds_per_run: spec.duration.as_secs_f64(),
        tls: spec.tls,
        runs,
        etcd_native_put: native,
    })
}
