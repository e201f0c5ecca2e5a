//! Test kubelet: registers Nodes with a real API server and runs the pods scheduled to them
//! as local processes, each pod in its own network namespace on a host bridge and each
//! container in a private mount namespace. Also the fault-injection commands for tests.

mod fault;
mod node;
mod pod;
mod probe;
mod provisioner;
mod runtime;
mod volumes;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};

#[derive(Parser)]
#[command(
    name = "test-kubelet",
    about = "Runs Kubernetes pods as local processes, for tests"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Register the nodes and run their pods until SIGTERM.
    Run(RunArgs),
    /// Inject a fault into a running environment.
    #[command(subcommand)]
    Fault(fault::Fault),
}

#[derive(clap::Args, Clone, Debug)]
pub struct RunArgs {
    /// The environment's state folder (kubeconfigs, pki, images file, pod folders).
    #[arg(long)]
    pub state_dir: PathBuf,
    /// Node names, comma separated; each uses `<state>/<name>.kubeconfig`.
    #[arg(long, value_delimiter = ',', default_value = "node-1,node-2,node-3")]
    pub nodes: Vec<String>,
    #[arg(long)]
    pub kubelet_version: String,
    #[arg(long)]
    pub bridge: String,
    /// The bridge's address: pods' default gateway and the nodes' InternalIP.
    #[arg(long)]
    pub gateway: String,
    #[arg(long)]
    pub cluster_dns: String,
    #[arg(long, default_value = "cluster.local")]
    pub cluster_domain: String,
    /// What pods get as KUBERNETES_SERVICE_HOST/PORT (the `kubernetes` Service).
    #[arg(long)]
    pub api_service_host: String,
    #[arg(long, default_value_t = 443)]
    pub api_service_port: u16,
    #[arg(long, default_value = "cc-")]
    pub netns_prefix: String,
    /// Storage class whose claims this kubelet provisions.
    #[arg(long, default_value = "concordance.test/local")]
    pub provisioner_name: String,
    /// First restart back-off in seconds (doubles per crash up to --max-backoff); shorter
    /// than a real kubelet's 10s so tests do not wait.
    #[arg(long, default_value_t = 1)]
    pub backoff: u64,
    #[arg(long, default_value_t = 20)]
    pub max_backoff: u64,
}

impl RunArgs {
    pub fn kubelet_dir(&self) -> PathBuf {
        self.state_dir.join("kubelet")
    }
}

pub async fn client_from(path: &Path) -> Result<Client> {
    let kc = Kubeconfig::read_from(path).with_context(|| format!("reading {}", path.display()))?;
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => run(args).await,
        Command::Fault(f) => fault::run(f).await,
    }
}

async fn run(args: RunArgs) -> Result<()> {
    let args = Arc::new(args);
    std::fs::create_dir_all(args.kubelet_dir().join("pods"))?;
    std::fs::create_dir_all(args.kubelet_dir().join("volumes"))?;
    std::fs::create_dir_all(args.kubelet_dir().join("faults"))?;
    let runtime = Arc::new(runtime::Runtime::new(args.clone()));

    let provisioner_client = client_from(&args.state_dir.join("provisioner.kubeconfig")).await?;
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(provisioner::run(provisioner_client, args.clone()));
    for name in &args.nodes {
        let client = client_from(&args.state_dir.join(format!("{name}.kubeconfig"))).await?;
        let node = node::NodeAgent::new(name.clone(), client, args.clone(), runtime.clone());
        tasks.spawn(node.run());
    }

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping every pod"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted: stopping every pod"),
        res = tasks.join_next() => {
            tracing::error!("a kubelet task ended: {res:?}");
        }
    }
    runtime.shutdown().await;
    Ok(())
}
