//! `concordance-bench`: load generator and measurements for Concordance (and etcd).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use clap::Parser;
use clap::Subcommand;
use concordance_bench::catchup;
use concordance_bench::compare;
use concordance_bench::cpu::CpuClock;
use concordance_bench::driver::Driver;
use concordance_bench::driver::Payload;
use concordance_bench::driver::System;
use concordance_bench::failover;
use concordance_bench::load;
use concordance_bench::load::LoadSpec;
use concordance_bench::load::Workload;
use concordance_bench::report;

#[derive(Debug, Parser)]
#[command(
    name = "concordance-bench",
    version,
    about = "Load generator for Concordance and etcd (HTTP), comparison, failover and catch-up measurements."
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Output {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Drive running endpoints (Concordance or etcd's JSON gateway) with workloads.
    Run(RunArgs),
    /// Start local 3-member clusters of Concordance, then etcd; run every workload on both,
    /// plus etcd's gRPC benchmark tool; print a table of ratios.
    Compare(CompareArgs),
    /// Kill the leader of a local cluster repeatedly; time until a write is accepted again.
    Failover(FailoverArgs),
    /// Time a new Concordance member catching up on a large state by snapshot.
    Catchup(CatchupArgs),
}

#[derive(Debug, Args)]
struct LoadArgs {
    /// Workloads to run, in order.
    #[arg(long, value_delimiter = ',', default_values = ["put", "get-linearizable", "get-serializable", "mixed"])]
    workload: Vec<Workload>,
    /// Concurrent clients (each sends its next request when its last is answered).
    #[arg(long, value_delimiter = ',', default_values = ["1", "16", "64", "256"])]
    clients: Vec<usize>,
    /// Measured seconds per workload and client count.
    #[arg(long, default_value_t = 8.0)]
    duration: f64,
    /// Unmeasured seconds before each measurement.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    #[arg(long, default_value_t = 8)]
    key_bytes: usize,
    #[arg(long, default_value_t = 256)]
    value_bytes: usize,
    /// Distinct keys (all written once before the workloads, so gets find them).
    #[arg(long, default_value_t = 10_000)]
    key_space: u64,
    /// Share of puts in the mixed workload (the rest are linearizable gets).
    #[arg(long, default_value_t = 20)]
    mixed_write_percent: u32,
    /// Output format.
    #[arg(short = 'o', long, default_value = "text")]
    output: Output,
}

impl LoadArgs {
    fn payload(&self) -> Payload {
        Payload {
            key_bytes: self.key_bytes,
            value_bytes: self.value_bytes,
            key_space: self.key_space,
        }
    }
}

/// The thread layout of the local Concordance members that `compare` and `failover` start.
#[derive(Debug, Args)]
struct MemberThreads {
    /// Each Concordance member's `--http-threads`. The members share this machine's cores, the
    /// case the configuration reference gives one thread for; 0 leaves the node's default (one
    /// per core).
    #[arg(long, default_value_t = 1)]
    http_threads: u16,
}

impl MemberThreads {
    /// `None` for the node's default.
    fn http_threads(&self) -> Option<u16> {
        Some(self.http_threads).filter(|&n| n > 0)
    }
}

#[derive(Debug, Args)]
struct RunArgs {
    #[arg(long, default_value = "concordance")]
    system: System,
    /// Comma-separated `host:port` (or URLs); each client sends its requests to them in turn.
    #[arg(long, value_delimiter = ',', required = true)]
    endpoints: Vec<String>,
    /// Bearer key for Concordance (admin or agent).
    #[arg(long, env = "CONCORDANCE_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Server process ids whose CPU time is measured per operation (repeatable).
    #[arg(long = "pid", value_delimiter = ',')]
    pids: Vec<u32>,
    /// Skip writing every key before the workloads.
    #[arg(long)]
    no_preload: bool,
    #[command(flatten)]
    load: LoadArgs,
}

#[derive(Debug, Args)]
struct Bins {
    /// The `concordance` binary (default: next to this one).
    #[arg(long, env = "CONCORDANCE_BIN")]
    concordance_bin: Option<PathBuf>,
    /// Where local clusters keep their data (default: the system's temp dir).
    #[arg(long)]
    work_dir: Option<PathBuf>,
}

impl Bins {
    fn concordance(&self) -> anyhow::Result<PathBuf> {
        if let Some(p) = &self.concordance_bin {
            return Ok(p.clone());
        }
        let me = std::env::current_exe()?;
        Ok(me.with_file_name("concordance"))
    }

    fn work_dir(&self) -> PathBuf {
        self.work_dir.clone().unwrap_or_else(std::env::temp_dir)
    }
}

#[derive(Debug, Args)]
struct CompareArgs {
    #[command(flatten)]
    bins: Bins,
    /// The `etcd` binary.
    #[arg(long, env = "ETCD_BIN")]
    etcd_bin: PathBuf,
    /// etcd's gRPC `benchmark` tool (from go.etcd.io/etcd/v3/tools/benchmark); skipped if absent.
    #[arg(long, env = "ETCD_BENCHMARK_BIN")]
    etcd_benchmark: Option<PathBuf>,
    #[arg(long, default_value_t = 3)]
    members: usize,
    #[command(flatten)]
    threads: MemberThreads,
    /// Also write the JSON results to this file.
    #[arg(long)]
    json_out: Option<PathBuf>,
    /// Measure every point this many times, the two systems alternating, and report each
    /// round and the median of the per-round ratios (the machine's speed drifts between runs).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
    /// Both systems serve TLS (one CA and certificate made with `concordance certs`) and their
    /// members talk mutual TLS; etcd's gRPC tool is then not run.
    #[arg(long)]
    tls: bool,
    #[command(flatten)]
    load: LoadArgs,
}

#[derive(Debug, Args)]
struct FailoverArgs {
    #[arg(long, default_value = "concordance")]
    system: System,
    #[command(flatten)]
    bins: Bins,
    /// The `etcd` binary (for `--system etcd`).
    #[arg(long, env = "ETCD_BIN")]
    etcd_bin: Option<PathBuf>,
    #[arg(long, default_value_t = 3)]
    members: usize,
    #[command(flatten)]
    threads: MemberThreads,
    #[arg(long, default_value_t = 20)]
    kills: usize,
    /// A new write attempt starts every this many milliseconds after the kill.
    #[arg(long, default_value_t = 5)]
    probe_ms: u64,
    #[arg(short = 'o', long, default_value = "text")]
    output: Output,
}

#[derive(Debug, Args)]
struct CatchupArgs {
    #[command(flatten)]
    bins: Bins,
    /// MiB of live data (64 KiB values) the new member must receive.
    #[arg(long, default_value_t = 1024)]
    mib: u64,
    #[arg(long, default_value_t = 16)]
    writers: usize,
    #[arg(short = 'o', long, default_value = "text")]
    output: Output,
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}

fn print_json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let l = &args.load;
    let max_clients = l.clients.iter().copied().max().unwrap_or(1);
    let driver = Arc::new(Driver::new(
        args.system,
        &args.endpoints,
        args.api_key.clone(),
        l.payload(),
        max_clients,
    )?);
    if !args.no_preload && l.workload.iter().any(|w| w.reads()) {
        eprintln!("preloading {} keys", l.key_space);
        driver.preload(64).await.context("preloading keys")?;
    }
    let cpu = CpuClock::of(args.pids.clone());
    let mut results = Vec::new();
    for &workload in &l.workload {
        for &clients in &l.clients {
            let r = load::run(
                driver.clone(),
                LoadSpec {
                    workload,
                    clients,
                    warmup: secs(l.warmup),
                    duration: secs(l.duration),
                    mixed_write_percent: l.mixed_write_percent,
                },
                &cpu,
                true,
            )
            .await?;
            if l.output == Output::Text {
                println!("{r}");
            }
            results.push(r);
        }
    }
    if l.output == Output::Json {
        print_json(&results)?;
    }
    Ok(())
}

async fn compare(args: CompareArgs) -> anyhow::Result<()> {
    let l = &args.load;
    let spec = compare::CompareSpec {
        concordance_bin: args.bins.concordance()?,
        etcd_bin: args.etcd_bin.clone(),
        etcd_tool: args.etcd_benchmark.clone().filter(|p| p.is_file()),
        members: args.members,
        http_threads: args.threads.http_threads(),
        rounds: args.rounds as usize,
        clients: l.clients.clone(),
        workloads: l.workload.clone(),
        warmup: secs(l.warmup),
        duration: secs(l.duration),
        mixed_write_percent: l.mixed_write_percent,
        payload: l.payload(),
        work_dir: args.bins.work_dir(),
        progress: true,
        tls: args.tls,
    };
    let result = compare::run(spec).await?;
    if let Some(path) = &args.json_out {
        std::fs::write(path, serde_json::to_vec_pretty(&result)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    match l.output {
        Output::Json => print_json(&result)?,
        Output::Text => {
            for r in &result.runs {
                println!("{r}");
            }
            for n in &result.etcd_native_put {
                println!("{n}");
            }
            println!();
            let threads = result
                .http_threads
                .map_or("one per core".to_string(), |n| n.to_string());
            println!("Concordance members' HTTP threads: {threads}");
            print!("{}", report::comparison_table(&result));
        }
    }
    Ok(())
}

async fn failover(args: FailoverArgs) -> anyhow::Result<()> {
    let bin = match args.system {
        System::Concordance => args.bins.concordance()?,
        System::Etcd => args
            .etcd_bin
            .clone()
            .context("--etcd-bin (or ETCD_BIN) is needed for --system etcd")?,
    };
    let r = failover::run(failover::FailoverSpec {
        system: args.system,
        bin,
        members: args.members,
        http_threads: args.threads.http_threads(),
        kills: args.kills,
        probe_interval: Duration::from_millis(args.probe_ms.max(1)),
        work_dir: args.bins.work_dir(),
    })
    .await?;
    match args.output {
        Output::Json => print_json(&r)?,
        Output::Text => println!(
            "{} failover over {} leader kills: min {:.0} ms, median {:.0} ms, p90 {:.0} ms, max {:.0} ms",
            r.system, r.kills, r.min_ms, r.median_ms, r.p90_ms, r.max_ms
        ),
    }
    Ok(())
}

async fn catchup(args: CatchupArgs) -> anyhow::Result<()> {
    let r = catchup::run(catchup::CatchupSpec {
        bin: args.bins.concordance()?,
        mib: args.mib,
        writers: args.writers,
        work_dir: args.bins.work_dir(),
    })
    .await?;
    match args.output {
        Output::Json => print_json(&r)?,
        Output::Text => println!(
            "catch-up of {} MiB: written in {:.1} s ({} leader changes meanwhile); snapshot {:.1} MiB; join to ready {:.2} s ({:.0} MiB/s of snapshot, {:.0} MiB/s of data)",
            r.data_mib,
            r.write_seconds,
            r.leader_changes_during_writes,
            r.snapshot_mib,
            r.join_to_ready_seconds,
            r.snapshot_mib_per_sec,
            r.data_mib_per_sec
        ),
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Run(a) => run(a).await,
        Cmd::Compare(a) => compare(a).await,
        Cmd::Failover(a) => failover(a).await,
        Cmd::Catchup(a) => catchup(a).await,
    }
}
