//! `pgwarden`: the operator, the in-pod instance agent and the policy tooling in one binary.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "pgwarden",
    version,
    about = "PostgreSQL continuous backup operator with WebAssembly reconcile policies"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the CustomResourceDefinitions as YAML (or write one file per CRD into --out).
    Crd {
        /// Folder to write `<plural>.<group>.yaml` files into, instead of printing.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Evaluate a policy module on objects (dry run) or run its fixture tests.
    Policy(pgwarden::policy::cli::PolicyArgs),
    /// The in-pod instance agent (run by the instance pods).
    Instance(pgwarden::instance::cli::InstanceArgs),
    /// Run the operator: reconcile Clusters, Backups, ScheduledBackups and ReconcilePolicies.
    Operator(pgwarden::operator::OperatorArgs),
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Crd { out } => crd(out),
        Command::Policy(args) => pgwarden::policy::cli::run(args),
        Command::Instance(args) => pgwarden::instance::cli::run(args),
        Command::Operator(args) => pgwarden::operator::run(args),
    }
}

fn crd(out: Option<PathBuf>) -> Result<()> {
    let crds = pgwarden_crds::crds();
    match out {
        None => {
            let docs: Vec<String> = crds.iter().map(pgwarden_crds::crd_yaml).collect();
            print!("{}", docs.join("---\n"));
        }
        Some(dir) => {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            for crd in &crds {
                let path = dir.join(pgwarden_crds::crd_file_name(crd));
                std::fs::write(&path, pgwarden_crds::crd_yaml(crd))
                    .with_context(|| format!("cannot write {}", path.display()))?;
                eprintln!("wrote {}", path.display());
            }
        }
    }
    Ok(())
}
