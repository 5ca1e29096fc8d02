//! The policy engine: reconcile decisions made by sandboxed WebAssembly components.
//!
//! ```text
//!   Engine::load(bytes, limits) ── compile once per sha256 (wasmtime disk cache) ──► Policy
//!   Policy::instance_pod(&cluster, 0) ─► fresh Store + instance from the pre-instantiated
//!        component, epoch deadline, memory cap, every import a trap (nothing granted)
//!        ─► typed output, validated ─► Ok(decision) | Err(PolicyError)
//!   Policy::run(|p| ...).await: the same, off the async executor, under a semaphore
//! ```
//!
//! The ABI is `sdk/wit/policy.wit`; the decision logic lives in the policy modules only.

mod bindings;
pub mod cli;
mod decisions;
mod engine;
mod errors;
pub mod fetch;

pub use decisions::{MAX_MESSAGE_BYTES, MAX_POD_TEMPLATE_BYTES};
pub use engine::{EPOCH_TICK, Engine, EngineConfig, Limits, Policy, WASMTIME_VERSION, digest};
pub use errors::{PolicyError, Result};
