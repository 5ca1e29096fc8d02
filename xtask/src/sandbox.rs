//! `cargo xtask sandbox up|down|status`: the local control plane on 127.0.0.1.

use anyhow::Result;

#[derive(clap::Subcommand)]
pub enum Action {
    /// Start the control plane (harmless when already up).
    Up,
    /// Stop everything `up` started.
    Down,
    /// Show what is running.
    Status,
}

pub fn run(_action: Action) -> Result<()> {
    anyhow::bail!("the sandbox is not implemented yet (issue 3)")
}
