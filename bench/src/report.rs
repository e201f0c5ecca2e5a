//! Text output: one line per run, and the comparison as Markdown tables.

use std::fmt::Write;

use crate::compare::Comparison;
use crate::compare::NativeRun;
use crate::load::RunResult;
use crate::load::cpu_text;

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}×", a / b)
    } else {
        "-".into()
    }
}

/// Markdown: per workload and client count (and round, when repeated), both systems side by
/// side with ratios (Concordance / etcd): throughput (higher is better), p99 and CPU per op
/// (lower is better). Repeated rounds also get a table of per-round ratios and their medians.
pub fn comparison_table(c: &Comparison) -> String {
    let repeated = c.rounds > 1;
    let round_col = |round: usize| {
        if repeated {
            format!(" {round} |")
        } else {
            String::new()
        }
    };
    let mut out = String::new();
    table_head(
        &mut out,
        &["workload", "clients"],
        repeated,
        &[
            "Concordance ops/s",
            "etcd ops/s",
            "ratio",
            "Concordance p50 / p99 / p99.9 ms",
            "etcd p50 / p99 / p99.9 ms",
            "p99 ratio",
            "Concordance CPU µs/op",
            "etcd CPU µs/op",
            "CPU ratio",
        ],
    );
    for (r, e) in pairs(c) {
        let lat = |x: &RunResult| {
            format!(
                "{:.2} / {:.2} / {:.2}",
                x.latency.p50_ms, x.latency.p99_ms, x.latency.p999_ms
            )
        };
        let _ = writeln!(
            out,
            "| {} | {} |{} {:.0} | {:.0} | {} | {} | {} | {} | {} | {} | {} |",
            r.workload.name(),
            r.clients,
            round_col(r.round),
            r.ops_per_sec,
            e.ops_per_sec,
            ratio(r.ops_per_sec, e.ops_per_sec),
            lat(r),
            lat(e),
            ratio(r.latency.p99_ms, e.latency.p99_ms),
            cpu_text(r.server_cpu_us_per_op),
            cpu_text(e.server_cpu_us_per_op),
            cpu_ratio_text(r, e.server_cpu_us_per_op),
        );
    }
    if !c.etcd_native_put.is_empty() {
        let _ = writeln!(
            out,
            "\nPuts: Concordance over HTTP against etcd's own gRPC `benchmark put` (same sizes, key space and client counts):\n"
        );
        table_head(
            &mut out,
            &["clients"],
            repeated,
            &[
                "Concordance ops/s",
                "etcd gRPC ops/s",
                "ratio",
                "Concordance p99 ms",
                "etcd gRPC p99 ms",
                "Concordance CPU µs/op",
                "etcd gRPC CPU µs/op",
                "CPU ratio",
            ],
        );
        for (n, r) in native_pairs(c) {
            let _ = writeln!(
                out,
                "| {} |{} {:.0} | {:.0} | {} | {:.2} | {:.2} | {} | {:.0} | {} |",
                n.tool.clients,
                round_col(n.round),
                r.ops_per_sec,
                n.tool.ops_per_sec,
                ratio(r.ops_per_sec, n.tool.ops_per_sec),
                r.latency.p99_ms,
                n.tool.latency.p99_ms,
                cpu_text(r.server_cpu_us_per_op),
                n.server_cpu_us_per_op,
                cpu_ratio_text(r, Some(n.server_cpu_us_per_op)),
            );
        }
    }
    if repeated {
        out.push_str(&rounds_summary(c));
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

/// Each Concordance run with the etcd gateway run of the same point and round.
fn pairs(c: &Comparison) -> impl Iterator<Item = (&RunResult, &RunResult)> {
    c.runs
        .iter()
        .filter(|r| r.system == "concordance")
        .filter_map(|r| {
            let e = c.runs.iter().find(|o| {
                o.system == "etcd"
                    && o.workload == r.workload
                    && o.clients == r.clients
                    && o.round == r.round
            })?;
            Some((r, e))
        })
}

/// Each run of etcd's gRPC tool with Concordance's put run of the same point and round.
fn native_pairs(c: &Comparison) -> impl Iterator<Item = (&NativeRun, &RunResult)> {
    c.etcd_native_put.iter().filter_map(|n| {
        let r = c.runs.iter().find(|r| {
            r.system == "concordance"
                && r.workload == crate::load::Workload::Put
                && r.clients == n.tool.clients
                && r.round == n.round
        })?;
        Some((n, r))
    })
}

/// A Markdown table's header and rule: the `leading` columns, a "round" column when rounds
/// repeat, then the `rest`.
fn table_head(out: &mut String, leading: &[&str], repeated: bool, rest: &[&str]) {
    let mut columns = leading.to_vec();
    if repeated {
        columns.push("round");
    }
    columns.extend_from_slice(rest);
    let _ = writeln!(out, "| {} |", columns.join(" | "));
    let _ = writeln!(out, "|{}", "---|".repeat(columns.len()));
}

fn cpu_ratio_text(r: &RunResult, other_us: Option<f64>) -> String {
    match (r.server_cpu_us_per_op, other_us) {
        (Some(a), Some(b)) => ratio(a, b),
        _ => "-".into(),
    }
}

fn cpu_ratio(r: &RunResult, other_us: Option<f64>) -> Option<f64> {
    match (r.server_cpu_us_per_op, other_us) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len().is_multiple_of(2) {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    })
}

/// Per point: the ratio of every round, in order, and the median of each kind of ratio.
fn rounds_summary(c: &Comparison) -> String {
    struct Point {
        label: String,
        throughput: Vec<f64>,
        p99: Vec<f64>,
        cpu: Vec<f64>,
    }
    let mut points: Vec<Point> = Vec::new();
    let mut add = |label: String, throughput: f64, p99: f64, cpu: Option<f64>| {
        let i = match points.iter().position(|p| p.label == label) {
            Some(i) => i,
            None => {
                points.push(Point {
                    label,
                    throughput: Vec::new(),
                    p99: Vec::new(),
                    cpu: Vec::new(),
                });
                points.len() - 1
            }
        };
        let p = &mut points[i];
        p.throughput.push(throughput);
        p.p99.push(p99);
        p.cpu.extend(cpu);
    };
    for (r, e) in pairs(c) {
        add(
            format!("{} | {}", r.workload.name(), r.clients),
            r.ops_per_sec / e.ops_per_sec,
            r.latency.p99_ms / e.latency.p99_ms,
            cpu_ratio(r, e.server_cpu_us_per_op),
        );
    }
    for (n, r) in native_pairs(c) {
        add(
            format!("put, against etcd's gRPC tool | {}", n.tool.clients),
            r.ops_per_sec / n.tool.ops_per_sec,
            r.latency.p99_ms / n.tool.latency.p99_ms,
            cpu_ratio(r, Some(n.server_cpu_us_per_op)),
        );
    }
    let list = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.2}"))
            .collect::<Vec<_>>()
            .join(" / ")
    };
    let med = |v: &[f64]| median(v.to_vec()).map_or_else(|| "-".into(), |m| format!("**{m:.2}×**"));
    let mut out = format!(
        "\nRatios (Concordance / etcd) in each of the {} rounds, and their medians:\n\n",
        c.rounds
    );
    table_head(
        &mut out,
        &["workload", "clients"],
        false,
        &[
            "throughput ratio per round",
            "median",
            "p99 ratio per round",
            "median",
            "CPU ratio per round",
            "median",
        ],
    );
    for p in &points {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} |",
            p.label,
            list(&p.throughput),
            med(&p.throughput),
            list(&p.p99),
            med(&p.p99),
            list(&p.cpu),
            med(&p.cpu),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::Payload;
    use crate::load::Latency;
    use crate::load::Workload;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }

    fn result(system: &str, round: usize, ops_per_sec: f64, p99_ms: f64, cpu_us: f64) -> RunResult {
        RunResult {
            system: system.into(),
            round,
            workload: Workload::Put,
            clients: 1,
            seconds: 8.0,
            ops: (ops_per_sec * 8.0) as u64,
            writes: (ops_per_sec * 8.0) as u64,
            reads: 0,
            errors: 0,
            ops_per_sec,
            latency: Latency {
                p50_ms: p99_ms / 2.0,
                p99_ms,
                p999_ms: p99_ms * 2.0,
                max_ms: p99_ms * 3.0,
                mean_ms: p99_ms / 2.0,
            },
            server_cpu_seconds: None,
            server_cpu_us_per_op: Some(cpu_us),
            generator_cpu_seconds: 0.0,
            first_error: None,
        }
    }

    fn comparison(rounds: usize, runs: Vec<RunResult>) -> Comparison {
        Comparison {
            members: 3,
            http_threads: Some(1),
            rounds,
            payload: Payload {
                key_bytes: 8,
                value_bytes: 256,
                key_space: 10,
            },
            mixed_write_percent: 20,
            seconds_per_run: 8.0,
            tls: false,
            runs,
            etcd_native_put: Vec::new(),
        }
    }

    #[test]
    fn repeated_rounds_pair_each_round_and_report_median_ratios() {
        // Rounds out of order on purpose: each Concordance run must meet etcd's run of its
        // own round, not the first one found.
        let runs = vec![
            result("concordance", 1, 600.0, 3.0, 1200.0),
            result("etcd", 2, 500.0, 4.0, 2000.0),
            result("concordance", 2, 500.0, 4.0, 1000.0),
            result("etcd", 1, 400.0, 6.0, 2400.0),
            result("concordance", 3, 900.0, 2.0, 1100.0),
            result("etcd", 3, 450.0, 4.0, 2200.0),
        ];
        let c = comparison(3, runs);
        let table = comparison_table(&c);
        assert!(
            table.contains("| put | 1 | 1 | 600 | 400 | 1.50× |"),
            "{table}"
        );
        assert!(
            table.contains("| put | 1 | 2 | 500 | 500 | 1.00× |"),
            "{table}"
        );
        assert!(
            table.contains("| put | 1 | 3 | 900 | 450 | 2.00× |"),
            "{table}"
        );
        // Throughput 1.50 / 1.00 / 2.00, p99 0.50 / 1.00 / 0.50, CPU 0.50 / 0.50 / 0.50.
        assert!(
            table.contains("| put | 1 | 1.50 / 1.00 / 2.00 | **1.50×** | 0.50 / 1.00 / 0.50 | **0.50×** | 0.50 / 0.50 / 0.50 | **0.50×** |"),
            "{table}"
        );
    }

    #[test]
    fn a_single_round_keeps_the_plain_table() {
        let c = comparison(
            1,
            vec![
                result("concordance", 1, 600.0, 3.0, 1200.0),
                result("etcd", 1, 400.0, 6.0, 2400.0),
            ],
        );
        let table = comparison_table(&c);
        assert!(table.contains("| put | 1 | 600 | 400 | 1.50× |"), "{table}");
        assert!(!table.contains("round"), "{table}");
    }
}
