//! The policy engine: reconcile decisions made by sandboxed WebAssembly components.
//!
//! ```text
//!   Engine::load(bytes, limits) ── size cap, compile once per sha256 (LRU in memory,
//!        wasmtime disk cache) ──► Policy; load_bounded: the same under the semaphore, timed
//!   Policy::with_limits(limits): the same module, other limits (nothing compiles)
//!   Policy::with_settings(spec.settings): the same module, other settings, which the
//!        policy's validate-settings accepted (a refusal: PolicyError::Denied)
//!   Policy::instance_pod(&cluster, 0, &instances) ─► fresh Store + instance from the pre-instantiated
//!        component, epoch deadline, memory cap summed over every memory, counts of
//!        instances/memories/tables capped, every import a trap (nothing granted)
//!        ─► typed output, validated ─► Ok(decision) | Err(PolicyError); every call is
//!        given the settings; a denial carries the policy's reason and message
//!   Policy::run(|p| ...).await: the same, off the async executor, under a semaphore
//! ```
//!
//! The ABI is `sdk/wit/policy.wit` (`pgwarden:policy@0.4.0`; a module built for another
//! version is refused at load, naming it); the decision logic lives in the policy modules
//! only.

mod bindings;
pub mod cli;
mod decisions;
mod engine;
mod errors;
pub mod fetch;
mod sandbox;

pub use decisions::MAX_POD_TEMPLATE_BYTES;
pub use engine::MAX_MESSAGE_BYTES;
pub use engine::{
    CACHED_MODULES, COMPILE_TIMEOUT, DEFAULT_MAX_MODULE_BYTES, EPOCH_TICK, Engine, EngineConfig,
    Limits, Policy, WASMTIME_VERSION, digest,
};
pub use errors::{PolicyError, Result};
pub use sandbox::{MAX_INSTANCES, MAX_MEMORIES, MAX_TABLE_ELEMENTS, MAX_TABLES};
