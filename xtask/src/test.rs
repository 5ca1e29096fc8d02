//! `cargo xtask test` and `cargo xtask setup`: installs what the tests need, then runs them.
//!
//! ```text
//!   setup: control plane (Go build)  ┐ at once: apt and pip mostly wait on downloads
//!          PostgreSQL, barman venv     ┘
//!          ─► S3 server (Go build) ─► policy modules (wasm32-wasip2) ─► pgwarden binary
//!   test:  setup, then `cargo test --workspace` with the paths in the environment
//! ```
//!
//! Each phase that has work to do says what it builds, for how long, and how long it took
//! here last time (`progress`); cached ones are silent.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};

use crate::deps::DataPathDeps;
use crate::paths;
use crate::progress::{Phase, human, say};

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
    let started = Instant::now();
    let mut env = Vec::new();
    let deps = data_path_beside_control_plane()?;
    env.extend(deps.env());
    let policies = Phase {
        key: "policies",
        what: "building the policy modules (policies/*, wasm32-wasip2)",
        usually: (60, 4 * 60),
        tool_shows_progress: true,
    }
    .run(|_| crate::policies::build())?;
    env.push(("PGWARDEN_POLICY_DIR", policies));
    let built = paths::root().join("target/debug/pgwarden");
    let given = std::env::var_os("PGWARDEN_BIN")
        .map(PathBuf::from)
        .filter(|b| b.is_file());
    let bin = match (binary, given) {
        (Binary::Build, Some(given)) => {
            say(&format!(
                "==> pgwarden binary: {} ($PGWARDEN_BIN)",
                given.display()
            ));
            given
        }
        (Binary::Build, None) => {
            build_pgwarden()?;
            built
        }
        (Binary::WithTheTests, _) => built,
    };
    env.push(("PGWARDEN_BIN", bin));
    say(&format!("==> set-up done in {}", human(started.elapsed())));
    Ok(Prepared { env })
}

/// The control plane's Go build, with PostgreSQL and barman installed beside it (downloads
/// and unpacking, little CPU), then MinIO's Go build. The two Go builds do not overlap: on
/// two cores they would only share them, and each one's Go caches (~3 GB) are removed before
/// the next starts, so the disk never holds both.
fn data_path_beside_control_plane() -> Result<DataPathDeps> {
    let (control_plane, downloads) = std::thread::scope(|s| {
        let downloads = s.spawn(crate::deps::ensure_postgres_and_barman);
        let control_plane = crate::controlplane::ensure_built()
            .and_then(|_| crate::controlplane::clean_go_caches());
        (control_plane, downloads.join())
    });
    control_plane.context("set-up: the control plane")?;
    let (pg_bin, barman_bin) = downloads
        .map_err(|_| anyhow!("set-up: the PostgreSQL and barman installer panicked"))?
        .context("set-up: PostgreSQL and barman")?;
    let s3_server = crate::deps::ensure_s3_server().context("set-up: the S3 server")?;
    crate::controlplane::clean_go_caches()?;
    let deps = DataPathDeps {
        pg_bin,
        barman_bin,
        s3_server,
    };
    deps.show();
    Ok(deps)
}

/// The `pgwarden` binary, built with the features `cargo test --workspace --all-targets`
/// resolves: the whole workspace plus a test target, so that dev-dependencies take part.
/// `cargo build -p pgwarden` alone resolves fewer features (kube-client, regex-automata,
/// ahash … differ), and the tests after a demo rebuilt the binary and half its dependencies.
/// The demo test is the smallest test target.
pub fn build_pgwarden() -> Result<()> {
    Phase {
        key: "pgwarden",
        what: "building the pgwarden binary (debug, as the tests build it)",
        usually: (60, 6 * 60),
        tool_shows_progress: true,
    }
    .run(|_| {
        cargo(
            &[
                "build",
                "--locked",
                "--workspace",
                "--bin",
                "pgwarden",
                // `cargo test --all-targets` builds bins as test harnesses only; the plugin's
                // test (tests/tests/plugin.rs) runs the real binary.
                "--bin",
                "kubectl-pgwarden",
                "--test",
                "demo",
            ],
            &[],
        )
    })
}

/// Set-up, then every test in the workspace.
pub fn run() -> Result<()> {
    let mut prepared = setup(Binary::WithTheTests)?;
    // The images pack the binary the tests build (same features: the tests do not rebuild
    // it); tests/tests/image.rs runs them with runc.
    build_pgwarden()?;
    let images = step("images", || crate::image::for_tests(&prepared.env))?;
    prepared.env.extend(images.env());
    // tests/tests/plugin.rs runs the kubectl plugin, which `--all-targets` builds here.
    let plugin = paths::root().join("target/debug/kubectl-pgwarden");
    prepared.env.push(("PGWARDEN_PLUGIN_BIN", plugin));
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
    let out = f().with_context(|| format!("step failed: {name}"))?;
    eprintln!("==> {name}: done in {}", human(started.elapsed()));
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
