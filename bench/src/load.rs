//! Closed-loop load: `clients` concurrent tasks, each sending its next request when the last
//! one is answered, for a warm-up then a measured window; latencies into HDR histograms.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use hdrhistogram::Histogram;
use rand::Rng;
use rand::SeedableRng;
use serde::Serialize;

use crate::cpu::CpuClock;
use crate::driver::Driver;
use crate::driver::Op;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// Puts of random keys.
    Put,
    /// Linearizable gets of random (preloaded) keys.
    GetLinearizable,
    /// Serializable gets (the local replica) of random keys.
    GetSerializable,
    /// `mixed_write_percent` % puts, the rest linearizable gets.
    Mixed,
}

impl Workload {
    pub const ALL: [Workload; 4] = [
        Workload::Put,
        Workload::GetLinearizable,
        Workload::GetSerializable,
        Workload::Mixed,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Workload::Put => "put",
            Workload::GetLinearizable => "get-linearizable",
            Workload::GetSerializable => "get-serializable",
            Workload::Mixed => "mixed",
        }
    }

    pub fn reads(self) -> bool {
        !matches!(self, Workload::Put)
    }
}

#[derive(Debug, Clone, Copy)]
pub struct LoadSpec {
    pub workload: Workload,
    pub clients: usize,
    pub warmup: Duration,
    pub duration: Duration,
    pub mixed_write_percent: u32,
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

impl Latency {
    pub fn from_histogram(h: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            p50_ms: ms(h.value_at_quantile(0.50)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
            mean_ms: h.mean() / 1000.0,
        }
    }
}

/// CPU per operation in µs as a table shows it: `-` where it was not measured.
pub fn cpu_text(us: Option<f64>) -> String {
    us.map_or_else(|| "-".into(), |v| format!("{v:.0}"))
}

/// One measured run.
#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    pub system: String,
    /// Which round of a repeated comparison (from 1; 1 for a single run).
    pub round: usize,
    pub workload: Workload,
    pub clients: usize,
    pub seconds: f64,
    pub ops: u64,
    pub writes: u64,
    pub reads: u64,
    pub errors: u64,
    pub ops_per_sec: f64,
    pub latency: Latency,
    /// CPU seconds (user + system) of the server processes over the measured window.
    pub server_cpu_seconds: Option<f64>,
    /// Server CPU per acknowledged operation, in microseconds.
    pub server_cpu_us_per_op: Option<f64>,
    /// The load generator's own CPU over the window, for context.
    pub generator_cpu_seconds: f64,
    pub first_error: Option<String>,
}

/// One line: the system, workload, clients, rate, latency percentiles, CPU and errors.
impl std::fmt::Display for RunResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:<11} {:<16} c={:<3} {:>8.0} ops/s  p50 {:>7.2} ms  p99 {:>7.2} ms  p99.9 {:>7.2} ms  cpu/op {:>5} µs  errors {}",
            self.system,
            self.workload.name(),
            self.clients,
            self.ops_per_sec,
            self.latency.p50_ms,
            self.latency.p99_ms,
            self.latency.p999_ms,
            cpu_text(self.server_cpu_us_per_op),
            self.errors
        )?;
        if let Some(e) = &self.first_error {
            write!(f, " (first: {e})")?;
        }
        Ok(())
    }
}

struct Shared {
    recording: AtomicBool,
    stop: AtomicBool,
    done: AtomicU64,
    errors: AtomicU64,
    first_error: std::sync::Mutex<Option<String>>,
}

struct ClientTally {
    hist: Histogram<u64>,
    writes: u64,
    reads: u64,
}

fn new_histogram() -> Histogram<u64> {
    // 1 µs to 60 s, 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// Runs one workload; `progress` prints a line to stderr every second.
pub async fn run(
    driver: Arc<Driver>,
    spec: LoadSpec,
    server_cpu: &CpuClock,
    progress: bool,
) -> anyhow::Result<RunResult> {
    let shared = Arc::new(Shared {
        recording: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        done: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        first_error: std::sync::Mutex::new(None),
    });
    let mut tasks = Vec::with_capacity(spec.clients);
    for c in 0..spec.clients {
        let driver = driver.clone();
        let shared = shared.clone();
        tasks.push(tokio::spawn(client_loop(driver, shared, spec, c)));
    }

    let label = format!(
        "{} {} c={}",
        driver.system.name(),
        spec.workload.name(),
        spec.clients
    );
    tokio::time::sleep(spec.warmup).await;
    let cpu_before = server_cpu.sample()?;
    let gen_before = CpuClock::own().sample()?;
    let started = Instant::now();
    shared.recording.store(true, Ordering::SeqCst);
    let mut last = 0;
    while started.elapsed() < spec.duration {
        let step = Duration::from_secs(1).min(spec.duration.saturating_sub(started.elapsed()));
        tokio::time::sleep(step).await;
        if progress {
            let done = shared.done.load(Ordering::Relaxed);
            eprintln!(
                "  {label}: {:>4.1}/{:.0} s  {done} ops  {:.0} ops/s  {} errors",
                started.elapsed().as_secs_f64(),
                spec.duration.as_secs_f64(),
                (done - last) as f64 / step.as_secs_f64().max(1e-3),
                shared.errors.load(Ordering::Relaxed)
            );
            last = done;
        }
    }
    shared.stop.store(true, Ordering::SeqCst);
    let seconds = started.elapsed().as_secs_f64();
    let cpu_after = server_cpu.sample()?;
    let gen_after = CpuClock::own().sample()?;

    let mut hist = new_histogram();
    let (mut writes, mut reads) = (0, 0);
    for t in tasks {
        let tally = t.await?;
        hist.add(&tally.hist)?;
        writes += tally.writes;
        reads += tally.reads;
    }
    let ops = writes + reads;
    let server_cpu_seconds = (!server_cpu.is_empty()).then_some(cpu_after - cpu_before);
    Ok(RunResult {
        system: driver.system.name().into(),
        round: 1,
        workload: spec.workload,
        clients: spec.clients,
        seconds,
        ops,
        writes,
        reads,
        errors: shared.errors.load(Ordering::Relaxed),
        ops_per_sec: ops as f64 / seconds,
        latency: Latency::from_histogram(&hist),
        server_cpu_seconds,
        server_cpu_us_per_op: server_cpu_seconds
            .filter(|_| ops > 0)
            .map(|s| s * 1e6 / ops as f64),
        generator_cpu_seconds: gen_after - gen_before,
        first_error: shared.first_error.lock().expect("not poisoned").clone(),
    })
}

async fn client_loop(
    driver: Arc<Driver>,
    shared: Arc<Shared>,
    spec: LoadSpec,
    client: usize,
) -> ClientTally {
    let mut rng = rand::rngs::SmallRng::seed_from_u64(0x5eed ^ client as u64);
    let mut tally = ClientTally {
        hist: new_histogram(),
        writes: 0,
        reads: 0,
    };
    let key_space = driver.key_space();
    // Each request goes to the next member in turn, so at every client count (one included)
    // two requests in three reach a follower of a 3-member cluster, whichever member leads.
    let mut endpoint = client;
    while !shared.stop.load(Ordering::Relaxed) {
        let op = match spec.workload {
            Workload::Put => Op::Put,
            Workload::GetLinearizable => Op::Get { linearizable: true },
            Workload::GetSerializable => Op::Get {
                linearizable: false,
            },
            Workload::Mixed => {
                if rng.random_range(0..100) < spec.mixed_write_percent {
                    Op::Put
                } else {
                    Op::Get { linearizable: true }
                }
            }
        };
        let key = rng.random_range(0..key_space);
        let recording = shared.recording.load(Ordering::Relaxed);
        let sent = Instant::now();
        let result = driver.call(endpoint, op, key).await;
        endpoint = endpoint.wrapping_add(1);
        let took = sent.elapsed();
        // Only requests sent and answered inside the window count.
        if !recording || shared.stop.load(Ordering::Relaxed) {
            continue;
        }
        match result {
            Ok(()) => {
                shared.done.fetch_add(1, Ordering::Relaxed);
                let _ = tally.hist.record((took.as_micros() as u64).max(1));
                match op {
                    Op::Put => tally.writes += 1,
                    Op::Get { .. } => tally.reads += 1,
                }
            }
            Err(e) => {
                shared.errors.fetch_add(1, Ordering::Relaxed);
                {
                    let mut first = shared.first_error.lock().expect("not poisoned");
                    if first.is_none() {
                        *first = Some(format!("{e:#}"));
                    }
                }
                // A failing cluster must not turn the generator into a busy loop.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    tally
}
