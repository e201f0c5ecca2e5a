use std::io::IsTerminal;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use concordance_operator::controller::{self, Context};
use concordance_operator::lease::LeaderLease;
use concordance_operator::metrics::{self, Metrics};

/// Runs Concordance clusters on Kubernetes.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the ConcordanceCluster CustomResourceDefinition as YAML.
    Crd,
    /// Watch ConcordanceClusters and run them.
    Run(RunArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "CONCORDANCE_OPERATOR_NAMESPACE")]
    namespace: Option<String>,
    /// Address of `/metrics`, `/healthz` and `/readyz`.
    #[arg(
        long,
        env = "CONCORDANCE_OPERATOR_HTTP",
        default_value = "0.0.0.0:8080"
    )]
    http: SocketAddr,
    /// Log filter, e.g. `info` or `concordance_operator=debug`.
    #[arg(long, env = "CONCORDANCE_OPERATOR_LOG", default_value = "info")]
    log: String,
    /// Namespace of the leader-election Lease (default: the pod's namespace, else `default`).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// Run without leader election (a single replica only).
    #[arg(long)]
    no_leader_election: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Crd => print!("{}", concordance_operator::crd::crd_yaml()),
        Command::Run(args) => run(args).await?,
    }
    Ok(())
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&args.log))
        // Colours only for a person at a terminal, not in pod logs.
        .with_ansi(std::io::stdout().is_terminal())
        .init();
    let metrics = Metrics::new();
    let http = tokio::spawn(metrics::serve(args.http, metrics.clone()));
    let client = kube::Client::try_default().await?;
    client.apiserver_version().await?;
    metrics.set_ready();
    let ctx = Arc::new(Context::new(client.clone(), metrics.clone()));

    if args.no_leader_election {
        metrics.leader.set(1);
        controller::run(ctx, args.namespace).await;
        return Ok(());
    }
    let holder = std::env::var("POD_NAME")
        .or_else(|_| gethostname::gethostname().into_string())
        .unwrap_or_else(|_| "concordance-operator".into());
    let lease = LeaderLease::new(
        client,
        &args.lease_namespace,
        "concordance-operator",
        &holder,
        Duration::from_secs(10),
    );
    tracing::info!(%holder, "waiting for the leader lease");
    let acquired = lease.acquire().await;
    tracing::info!(%holder, "leading");
    metrics.leader.set(1);
    tokio::select! {
        // Ends on SIGTERM (graceful shutdown): hand the lease over at once.
        _ = controller::run(ctx, args.namespace) => {
            lease.release().await;
        }
        _ = lease.hold(acquired) => {
            tracing::error!("lost the leader lease; stopping");
            std::process::exit(1);
        }
        r = http => {
            anyhow::bail!("the metrics endpoint stopped: {r:?}");
        }
    }
    Ok(())
}
