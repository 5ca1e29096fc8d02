//! `kubectl-pgwarden`: the kubectl plugin of pgwarden. Installed on the PATH, it answers
//! `kubectl pgwarden …`: a Cluster's status at a glance, an on-demand Backup followed to its
//! end, the manifest of a restore, and psql or the logs of its instance pods.
//!
//! It reads and writes the API objects with the kube client (the kubeconfig, its context and
//! namespace as kubectl finds them); `psql` and `logs` hand over to `kubectl exec` and
//! `kubectl logs`, which already speak the API server's streaming protocols.

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

mod backup;
mod pods;
mod restore;
mod status;

#[derive(Parser, Debug)]
#[command(
    name = "kubectl-pgwarden",
    bin_name = "kubectl pgwarden",
    version,
    about = "Look after pgwarden's PostgreSQL Clusters: status, backups, restores, psql, logs."
)]
struct Cli {
    /// The kubeconfig to use. Default: $KUBECONFIG, else ~/.kube/config.
    #[arg(long, global = true)]
    kubeconfig: Option<std::path::PathBuf>,
    /// The kubeconfig context to use. Default: its current context.
    #[arg(long, global = true)]
    context: Option<String>,
    /// The namespace of the Cluster. Default: the context's namespace, else `default`.
    #[arg(short, long, global = true)]
    namespace: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The Cluster's primary, instances, WAL archiving, recoverability, backups and
    /// conditions.
    Status { cluster: String },
    /// Create a Backup of the Cluster (and, with --wait, follow it until it ends).
    Backup(backup::Args),
    /// Print the manifest of a new Cluster restored from a Backup or, at a point in time,
    /// from another Cluster's object store (checked by the API server with a dry-run).
    Restore(restore::Args),
    /// Run psql in the primary's pod (`kubectl exec`); arguments after `--` go to psql.
    Psql(pods::PsqlArgs),
    /// The logs of the Cluster's instance pods (`kubectl logs`).
    Logs(pods::LogsArgs),
}

/// Where the plugin talks to: the client, the namespace, and what kubectl needs to reach the
/// same place.
pub struct Target {
    pub client: kube::Client,
    pub namespace: String,
    /// `--kubeconfig`/`--context` to pass on to kubectl.
    pub kubectl_args: Vec<String>,
}

impl Cli {
    async fn target(&self) -> Result<Target> {
        let options = kube::config::KubeConfigOptions {
            context: self.context.clone(),
            ..Default::default()
        };
        let config = match &self.kubeconfig {
            Some(path) => {
                let kc = kube::config::Kubeconfig::read_from(path)
                    .with_context(|| format!("cannot read the kubeconfig {}", path.display()))?;
                kube::Config::from_custom_kubeconfig(kc, &options).await?
            }
            None => kube::Config::from_kubeconfig(&options)
                .await
                .context("cannot load the kubeconfig (set KUBECONFIG or --kubeconfig)")?,
        };
        let namespace = self
            .namespace
            .clone()
            .unwrap_or_else(|| config.default_namespace.clone());
        let mut kubectl_args = Vec::new();
        if let Some(path) = &self.kubeconfig {
            kubectl_args.extend(["--kubeconfig".into(), path.display().to_string()]);
        }
        if let Some(context) = &self.context {
            kubectl_args.extend(["--context".into(), context.clone()]);
        }
        Ok(Target {
            client: kube::Client::try_from(config)?,
            namespace,
            kubectl_args,
        })
    }
}

/// Colours only on a terminal and when NO_COLOR (<https://no-color.org>) is unset or empty,
/// as the operator decides for its logs.
pub fn colour() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

async fn run(cli: Cli) -> Result<ExitCode> {
    let target = cli.target().await?;
    match cli.command {
        Command::Status { cluster } => status::run(&target, &cluster).await,
        Command::Backup(args) => backup::run(&target, &args).await,
        Command::Restore(args) => restore::run(&target, &args).await,
        Command::Psql(args) => pods::psql(&target, &args).await,
        Command::Logs(args) => pods::logs(&target, &args).await,
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The Cluster `name`, or an error saying it does not exist in the namespace.
pub async fn get_cluster(target: &Target, name: &str) -> Result<pgwarden_crds::Cluster> {
    let api: kube::Api<pgwarden_crds::Cluster> =
        kube::Api::namespaced(target.client.clone(), &target.namespace);
    api.get_opt(name)
        .await
        .with_context(|| format!("cannot read Cluster {}/{name}", target.namespace))?
        .with_context(|| {
            format!(
                "Cluster {name} not found in namespace {} (kubectl get clusters.postgresql.k8s.2ndq.io -n {} lists them)",
                target.namespace, target.namespace
            )
        })
}
