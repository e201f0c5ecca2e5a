use clap::{Parser, Subcommand};

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
    /// Watch ConcordanceClusters: observe, decide the next step and report it in the status
    /// (this build does not execute the steps yet).
    Run,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Crd => print!("{}", concordance_operator::crd::crd_yaml()),
        Command::Run => {
            tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .init();
            let client = kube::Client::try_default().await?;
            concordance_operator::controller::run(client).await;
        }
    }
    Ok(())
}
