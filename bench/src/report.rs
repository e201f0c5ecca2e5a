//! Text output: one line per run, and the comparison as Markdown tables.

use std::fmt::Write;

use crate::compare::Comparison;
use crate::compare::NativeRun;
use crate::load::RunResult;

fn cpu(us: Option<f64>) -> String {
    us.map_or_else(|| "-".into(), |v| format!("{v:.0}"))
}

pub fn run_line(r: &RunResult) -> String {
    let mut s = format!(
        "{:<11} {:<16} c={:<3} {:>8.0} ops/s  p50 {:>7.2} ms  p99 {:>7.2} ms  p99.9 {:>7.2} ms  cpu/op {:>5} µs  errors {}",
        r.system,
        r.workload.name(),
        r.clients,
        r.ops_per_sec,
        r.latency.p50_ms,
        r.latency.p99_ms,
        r.latency.p999_ms,
        cpu(r.server_cpu_us_per_op),
        r.errors
    );
    if let Some(e) = &r.first_error {
        let _ = write!(s, " (first: {e})");
    }
    s
}

pub fn native_line(n: &NativeRun) -> String {
    format!(
        "etcd-grpc   put              c={:<3} {:>8.0} ops/s  p50 {:>7.2} ms  p99 {:>7.2} ms  p99.9 {:>7.2} ms  cpu/op {:>5.0} µs",
        n.tool.clients,
        n.tool.ops_per_sec,
        n.tool.latency.p50_ms,
        n.tool.latency.p99_ms,
        n.tool.latency.p999_ms,
        n.server_cpu_us_per_op
    )
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}×", a / b)
    } else {
        "-".into()
    }
}

/// Markdown: per workload and client count, both systems side by side with ratios
/// (Concordance / etcd): throughput (higher is better), p99 and CPU per op (lower is better).
pub fn comparison_table(c: &Comparison) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| workload | clients | Concordance ops/s | etcd ops/s | ratio | Concordance p50 / p99 / p99.9 ms | etcd p50 / p99 / p99.9 ms | p99 ratio | Concordance CPU µs/op | etcd CPU µs/op | CPU ratio |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|");
    let find = |system: &str, r: &RunResult| {
        c.runs
            .iter()
            .find(|o| o.system == system && o.workload == r.workload && o.clients == r.clients)
    };
    for r in c.runs.iter().filter(|r| r.system == "concordance") {
        let Some(e) = find("etcd", r) else { continue };
        let lat = |x: &RunResult| {
            format!(
                "{:.2} / {:.2} / {:.2}",
                x.latency.p50_ms, x.latency.p99_ms, x.latency.p999_ms
            )
        };
        let _ = writeln!(
            out,
            "| {} | {} | {:.0} | {:.0} | {} | {} | {} | {} | {} | {} | {} |",
            r.workload.name(),
            r.clients,
            r.ops_per_sec,
            e.ops_per_sec,
            ratio(r.ops_per_sec, e.ops_per_sec),
            lat(r),
            lat(e),
            ratio(r.latency.p99_ms, e.latency.p99_ms),
            cpu(r.server_cpu_us_per_op),
            cpu(e.server_cpu_us_per_op),
            match (r.server_cpu_us_per_op, e.server_cpu_us_per_op) {
                (Some(a), Some(b)) => ratio(a, b),
                _ => "-".into(),
            }
        );
    }
    if !c.etcd_native_put.is_empty() {
        let _ = writeln!(
            out,
            "\nPuts: Concordance over HTTP against etcd's own gRPC `benchmark put` (same sizes, key space and client counts):\n"
        );
        let _ = writeln!(
            out,
            "| clients | Concordance ops/s | etcd gRPC ops/s | ratio | Concordance p99 ms | etcd gRPC p99 ms | Concordance CPU µs/op | etcd gRPC CPU µs/op | CPU ratio |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|");
        for n in &c.etcd_native_put {
            let Some(r) = c.runs.iter().find(|r| {
                r.system == "concordance"
                    && r.workload == crate::load::Workload::Put
                    && r.clients == n.tool.clients
            }) else {
                continue;
            };
            let _ = writeln!(
                out,
                "| {} | {:.0} | {:.0} | {} | {:.2} | {:.2} | {} | {:.0} | {} |",
                n.tool.clients,
                r.ops_per_sec,
                n.tool.ops_per_sec,
                ratio(r.ops_per_sec, n.tool.ops_per_sec),
                r.latency.p99_ms,
                n.tool.latency.p99_ms,
                cpu(r.server_cpu_us_per_op),
                n.server_cpu_us_per_op,
                r.server_cpu_us_per_op
                    .map_or_else(|| "-".into(), |a| ratio(a, n.server_cpu_us_per_op)),
            );
        }
    }
    let errors: u64 = c.runs.iter().map(|r| r.errors).sum();
    if errors > 0 {
        let _ = writeln!(
            out,
            "\n{errors} requests failed in total (see the JSON output)."
        );
    }
    out
}
