//! `cargo xtask test` and `cargo xtask setup`: installs what the tests need, then runs them.
//!
//! ```text
//!   setup: control plane (Go build, cached) · PostgreSQL, barman venv, S3 server (cached)
//!          · policy modules (wasm32-wasip2) · the pgwarden binary the demo starts
//!   test:  setup, then `cargo test --workspace` with the paths in the environment
//! ```

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::paths;

/// What the set-up produced, as the environment the tests read.
pub struct Prepared {
    pub env: Vec<(&'static str, PathBuf)>,
}

/// How the set-up gets the `pgwarden` binary the tests and the demo run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Binary {
    /// `cargo build -p pgwarden` (the demo and `cargo xtask setup`), unless `$PGWARDEN_BIN`
    /// names a binary already: the demo run by the test suite uses the suite's build.
    Build,
    /// `cargo test --workspace` builds it with the tests (one build, one set of features).
    WithTheTests,
}

/// Installs and builds every dependency the tests need (idempotent; fast when done).
pub fn setup(binary: Binary) -> Result<Prepared> {
    let mut env = Vec::new();
    // Each Go build's caches go as soon as its binaries are cached: the disk never holds
    // the control plane's and MinIO's at once.
    step("control plane", || {
        crate::controlplane::ensure_built()?;
        crate::controlplane::clean_go_caches()
    })?;
    let deps = step("PostgreSQL, barman cloud, S3 server", || {
        let deps = crate::deps::ensure_all()?;
        crate::controlplane::clean_go_caches()?;
        Ok(deps)
    })?;
    env.extend(deps.env());
    let policies = step("policy modules", crate::policies::build)?;
    env.push(("PGWARDEN_POLICY_DIR", policies));
    let built = paths::root().join("target/debug/pgwarden");
    let given = std::env::var_os("PGWARDEN_BIN")
        .map(PathBuf::from)
        .filter(|b| b.is_file());
    let bin = match (binary, given) {
        (Binary::Build, Some(given)) => {
            eprintln!("==> pgwarden binary: {} ($PGWARDEN_BIN)", given.display());
            given
        }
        (Binary::Build, None) => {
            step("pgwarden binary", || {
                cargo(&["build", "--locked", "-p", "pgwarden"], &[])
            })?;
            built
        }
        (Binary::WithTheTests, _) => built,
    };
    env.push(("PGWARDEN_BIN", bin));
    Ok(Prepared { env })
}

/// Set-up, then every test in the workspace.
pub fn run() -> Result<()> {
    let prepared = setup(Binary::WithTheTests)?;
    step("tests", || {
        cargo(
            // Every test binary runs, so one failure does not hide the others.
            &[
                "test",
                "--locked",
                "--workspace",
                "--all-targets",
                "--no-fail-fast",
            ],
            &prepared.env,
        )
    })
}

/// Runs one named step, printing its progress and duration.
fn step<T>(name: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    eprintln!("==> {name}");
    let started = Instant::now();
    let out = f().with_context(|| format!("set-up step failed: {name}"))?;
    eprintln!("==> {name}: done in {:.1?}", started.elapsed());
    Ok(out)
}

fn cargo(args: &[&str], env: &[(&str, PathBuf)]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(&cargo)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        // Incremental caches double the target folder and buy nothing on a one-shot run.
        .env("CARGO_INCREMENTAL", "0")
        .current_dir(paths::root())
        .status()
        .with_context(|| format!("cannot run {cargo}"))?;
    if !status.success() {
        bail!("`cargo {}` failed ({status})", args.join(" "));
    }
    Ok(())
}
