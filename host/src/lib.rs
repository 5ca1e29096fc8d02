//! The pgwarden host: the operator, the in-pod instance agent and the policy engine.
//!
//! ```text
//!   decide  policy/    wasmtime engine running the policy components
//!   plan    plan/      decisions → Actions (pure data) → guardrails
//!   apply   operator/  controllers, server-side apply, events, conditions
//!   report  instance/  the in-pod agent: PostgreSQL, barman cloud, facts
//! ```

#![forbid(unsafe_code)]

pub mod instance;
pub mod operator;
pub mod plan;
pub mod policy;
