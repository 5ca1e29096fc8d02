//! `pgwarden instance run|wal-archive`.

use anyhow::Result;

/// The in-pod instance agent.
#[derive(clap::Args, Debug)]
pub struct InstanceArgs {}

pub fn run(_args: InstanceArgs) -> Result<()> {
    anyhow::bail!("`pgwarden instance` is not implemented yet")
}
