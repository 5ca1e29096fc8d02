//! The policy engine: reconcile decisions made by sandboxed WebAssembly components.

pub mod cli;
