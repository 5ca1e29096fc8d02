//! `cargo xtask`: everything needed to build, set up and test pgwarden on a fresh machine.
//!
//! Each sub-command is idempotent: heavy artefacts (control-plane binaries, the S3 server,
//! the barman venv, policy modules) are cached under `.cache/` keyed by version, sandbox
//! state lives under `.state/`; both are gitignored.

mod bench;
mod bench_failover;
mod bench_wal;
mod controlplane;
mod demo;
mod deps;
mod image;
mod paths;
mod policies;
mod progress;
mod sandbox;
mod test;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "pgwarden's task runner")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install everything the tests need, then run every test layer.
    Test,
    /// The local sandbox running the seed scenario.
    Demo {
        /// Tear the sandbox down at the end and exit 0 only if every step succeeded.
        #[arg(long)]
        once: bool,
    },
    /// Install and build every dependency (idempotent; cached under `.cache/`).
    Setup,
    /// Build the policy modules (`policies/*`) to `.wasm` components.
    BuildPolicies,
    /// Build the OCI images (instance, operator) under `.cache/images`: OCI layouts and
    /// docker-archives tagged with the version (cached; see xtask/src/image.rs).
    Image {
        /// Pack the release `pgwarden` binary instead of the debug one.
        #[arg(long)]
        release: bool,
    },
    /// Benchmarks that print their figures and write them under target/bench/.
    Bench {
        #[command(subcommand)]
        which: Bench,
    },
    /// Start, stop or inspect the local control plane.
    Sandbox {
        #[command(subcommand)]
        action: sandbox::Action,
    },
}

#[derive(Subcommand)]
enum Bench {
    /// WAL archiving under pgbench: the parallel wrapper vs plain barman-cloud-wal-archive.
    Wal,
    /// Failover and switchover under pgbench: time to a writable new primary (detection and
    /// promotion apart) and acknowledged transactions lost.
    Failover,
    /// N Clusters against a real control plane: time to steady state, API writes per
    /// reconcile, operator peak RSS.
    Reconcile {
        /// How many Clusters to create.
        #[arg(long, default_value_t = 100)]
        clusters: usize,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Test => test::run(),
        Command::Demo { once } => demo::run(once),
        Command::Setup => test::setup(test::Binary::Build).map(|_| ()),
        Command::BuildPolicies => policies::build().map(|_| ()),
        Command::Image { release } => image::run(release),
        Command::Sandbox { action } => sandbox::run(action),
        Command::Bench { which: Bench::Wal } => bench_wal::run(),
        Command::Bench {
            which: Bench::Failover,
        } => bench_failover::run(),
        Command::Bench {
            which: Bench::Reconcile { clusters },
        } => bench::reconcile(clusters),
    }
}
