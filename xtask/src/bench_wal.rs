//! `cargo xtask bench wal`: builds the agent, then runs the WAL archiving benchmark
//! (`tests/tests/datapath_bench.rs`) against the real S3 server, PostgreSQL and barman.

use anyhow::{Context, Result, bail};
use std::process::Command;

use crate::{deps, paths};

/// Installs the data path, builds `pgwarden`, runs the benchmark; figures go to stdout and
/// `target/bench/wal.json`.
pub fn run() -> Result<()> {
    let found = deps::ensure_all()?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let root = paths::root();
    let status = Command::new(&cargo)
        .args(["build", "--release", "-p", "pgwarden", "--bin", "pgwarden"])
        .current_dir(&root)
        .status()
        .context("cannot run cargo build")?;
    if !status.success() {
        bail!("cargo build -p pgwarden failed");
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(Into::into)
        .unwrap_or_else(|_| root.join("target"));
    let status = Command::new(&cargo)
        .args([
            "test",
            "--release",
            "-p",
            "pgwarden-tests",
            "--test",
            "datapath_bench",
            "--",
        ])
        .args(["--ignored", "--nocapture", "--test-threads=1"])
        .envs(found.env())
        .env("PGWARDEN_BIN", target.join("release/pgwarden"))
        .env("PGWARDEN_BENCH_OUT", root.join("target/bench/wal.json"))
        .current_dir(&root)
        .status()
        .context("cannot run the benchmark")?;
    if !status.success() {
        bail!("the WAL benchmark failed");
    }
    Ok(())
}
