//! etcd's own gRPC `benchmark` tool (from its Go module), run against etcd so the comparison
//! includes etcd at its best, not only through its JSON gateway.

use std::path::Path;
use std::process::Stdio;

use anyhow::Context;
use anyhow::bail;

use crate::load::Latency;

/// What `benchmark put` printed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ToolResult {
    pub clients: usize,
    pub conns: usize,
    pub total: u64,
    pub seconds: f64,
    pub ops_per_sec: f64,
    pub latency: Latency,
}

/// Runs `benchmark put` with `total` puts of `key_bytes`/`value_bytes` over a key space.
#[allow(clippy::too_many_arguments)]
pub async fn put(
    tool: &Path,
    endpoints: &[String],
    clients: usize,
    conns: usize,
    total: u64,
    key_bytes: usize,
    value_bytes: usize,
    key_space: u64,
) -> anyhow::Result<ToolResult> {
    let out = tokio::process::Command::new(tool)
        .arg(format!("--endpoints={}", endpoints.join(",")))
        .arg(format!("--clients={clients}"))
        .arg(format!("--conns={conns}"))
        .arg("put")
        .arg(format!("--key-size={key_bytes}"))
        .arg(format!("--val-size={value_bytes}"))
        .arg(format!("--key-space-size={key_space}"))
        .arg(format!("--total={total}"))
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("running {}", tool.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "{} failed ({}): {}{}",
            tool.display(),
            out.status,
            text,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    parse(&text, clients, conns, total)
        .with_context(|| format!("unexpected output of etcd's benchmark:\n{text}"))
}

fn secs_after(text: &str, label: &str) -> Option<f64> {
    let line = text.lines().find(|l| l.trim_start().starts_with(label))?;
    line.trim_start()[label.len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn parse(text: &str, clients: usize, conns: usize, total: u64) -> Option<ToolResult> {
    let ms = |label: &str| secs_after(text, label).map(|s| s * 1000.0);
    Some(ToolResult {
        clients,
        conns,
        total,
        seconds: secs_after(text, "Total:")?,
        ops_per_sec: secs_after(text, "Requests/sec:")?,
        latency: Latency {
            p50_ms: ms("50% in")?,
            p99_ms: ms("99% in")?,
            p999_ms: ms("99.9% in")?,
            max_ms: ms("Slowest:")?,
            mean_ms: ms("Average:")?,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_summary_and_the_latency_distribution() {
        let out = "
Summary:
  Total:\t2.5000 secs.
  Slowest:\t0.0400 secs.
  Fastest:\t0.0010 secs.
  Average:\t0.0050 secs.
  Stddev:\t0.0020 secs.
  Requests/sec:\t4000.0000

Latency distribution:
  10% in 0.0020 secs.
  50% in 0.0045 secs.
  90% in 0.0080 secs.
  99% in 0.0150 secs.
  99.9% in 0.0300 secs.
";
        let r = parse(out, 16, 4, 10000).unwrap();
        assert_eq!(r.ops_per_sec, 4000.0);
        assert_eq!(r.seconds, 2.5);
        assert!((r.latency.p50_ms - 4.5).abs() < 1e-9);
        assert!((r.latency.p99_ms - 15.0).abs() < 1e-9);
        assert!((r.latency.p999_ms - 30.0).abs() < 1e-9);
    }
}
