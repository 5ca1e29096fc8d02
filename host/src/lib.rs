//! The pgwarden host: the operator, the in-pod instance agent and the policy engine.
//!
//! ```text
//!   decide  policy/    wasmtime engine running the policy components
//!   plan    core/      decisions → Actions (pure data) → guardrails (crate pgwarden-core)
//!   apply   operator/  controllers, server-side apply, events, conditions
//!   report  instance/  the in-pod agent: PostgreSQL, barman cloud, facts
//! ```

// No unsafe code but one audited `pre_exec` (instance/postgres.rs: the postmaster dies with
// the agent).
#![deny(unsafe_code)]

pub mod instance;
pub mod operator;
pub mod policy;
