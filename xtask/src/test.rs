//! `cargo xtask test` and `cargo xtask setup`: installs what the tests need, then runs them.

use anyhow::{Context, Result, bail};
use std::process::Command;

use crate::paths;

/// Installs and builds every dependency the tests need.
pub fn setup() -> Result<()> {
    crate::controlplane::ensure_built()?;
    Ok(())
}

/// Set-up, then every test in the workspace.
pub fn run() -> Result<()> {
    setup()?;
    cargo(&["test", "--workspace", "--all-targets"])?;
    Ok(())
}

fn cargo(args: &[&str]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(&cargo)
        .args(args)
        .current_dir(paths::root())
        .status()
        .with_context(|| format!("cannot run {cargo}"))?;
    if !status.success() {
        bail!("`cargo {}` failed ({status})", args.join(" "));
    }
    Ok(())
}
