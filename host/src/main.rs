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
    /// How log lines are written: `text` (coloured only on a terminal, and not when NO_COLOR is
    /// set) or `json` (one object per line, for log collectors).
    #[arg(long, global = true, env = "PGWARDEN_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
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
    let cli = Cli::parse();
    init_logs(cli.log_format);
    let result = match cli.command {
        Command::Crd { out } => crd(out),
        Command::Policy(args) => pgwarden::policy::cli::run(args),
        Command::Instance(args) => pgwarden::instance::cli::run(args),
        Command::Operator(args) => pgwarden::operator::run(args),
    };
    // A collector reading JSON lines gets the last word as one too, not as `Error: ...` text.
    if let (Err(e), LogFormat::Json) = (&result, cli.log_format) {
        tracing::error!(error = format!("{e:#}"), "pgwarden stopped");
        std::process::exit(1);
    }
    result
}

/// Logs to stderr, filtered by RUST_LOG (default `info`). Colour codes only on a terminal: in
/// a file or a pipe they are noise (`[2m...[0m`) that collectors and `grep` have to strip.
fn init_logs(format: LogFormat) {
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs.with_ansi(colour()).init(),
        LogFormat::Json => logs.json().with_ansi(false).init(),
    }
}

/// Whether stderr is a terminal and NO_COLOR (<https://no-color.org>) is unset or empty.
fn colour() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
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
