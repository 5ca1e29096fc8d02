//! Builds the policy crates under `policies/` into WebAssembly components.

use anyhow::Result;
use std::path::PathBuf;

/// Builds every policy module; returns the folder holding the `.wasm` files.
pub fn build() -> Result<PathBuf> {
    anyhow::bail!("policy build is not implemented yet (issue 4)")
}
