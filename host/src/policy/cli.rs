//! `pgwarden policy eval|test`.

use anyhow::Result;

/// Evaluate and test policy modules.
#[derive(clap::Args, Debug)]
pub struct PolicyArgs {}

pub fn run(_args: PolicyArgs) -> Result<()> {
    anyhow::bail!("`pgwarden policy` is not implemented yet")
}
