//! Readiness, liveness and startup probes: httpGet and tcpSocket, from the host to the pod IP
//! (as a real kubelet probes from the node's network namespace).

use std::time::Duration;

use anyhow::{Result, bail};
use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

fn port(container: &Container, port: &IntOrString) -> Result<i32> {
    match port {
        IntOrString::Int(p) => Ok(*p),
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name))
            .map(|p| p.container_port)
            .ok_or_else(|| anyhow::anyhow!("no container port named {name}")),
    }
}

/// One probe attempt: Ok(()) on success.
pub async fn check(
    http: &reqwest::Client,
    container: &Container,
    probe: &Probe,
    pod_ip: &str,
) -> Result<()> {
    let timeout = Duration::from_secs(probe.timeout_seconds.unwrap_or(1).max(1) as u64);
    if let Some(h) = &probe.http_get {
        let scheme = h.scheme.as_deref().unwrap_or("HTTP").to_ascii_lowercase();
        let host = h.host.as_deref().unwrap_or(pod_ip);
        let path = h.path.as_deref().unwrap_or("/");
        let url = format!("{scheme}://{host}:{}{path}", port(container, &h.port)?);
        let mut req = http.get(&url).timeout(timeout);
        for header in h.http_headers.iter().flatten() {
            req = req.header(&header.name, &header.value);
        }
        let status = req.send().await?.status().as_u16();
        // As in Kubernetes: 200 <= code < 400 is a success.
        if !(200..400).contains(&status) {
            bail!("HTTP probe of {url} answered {status}");
        }
        return Ok(());
    }
    if let Some(t) = &probe.tcp_socket {
        let addr = format!(
            "{}:{}",
            t.host.as_deref().unwrap_or(pod_ip),
            port(container, &t.port)?
        );
        tokio::time::timeout(timeout, tokio::net::TcpStream::connect(&addr)).await??;
        return Ok(());
    }
    bail!("unsupported probe handler (httpGet and tcpSocket are supported)")
}
