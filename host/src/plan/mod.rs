//! The planner: the policy's decisions → [`Action`]s (plain data) → [`guardrails`].
//!
//! ```text
//!   ClusterDecisions ─ plan_cluster ─┐
//!   Transition ─────── plan_backup ──┼─► Vec<Action> ─► guardrails::check(subject) ─► applier
//!   ScheduleDecision ─ plan_schedule ┤    (apply, delete, patch status, event, requeue)
//!   retention names ── plan_retention┘    (retention: the store deletion by the agent, then
//!                                           the Backup objects; see [`retention`])
//! ```
//!
//! Nothing here talks to the API server: tests assert on the actions, `pgwarden policy
//! eval` prints them.

mod actions;
mod backup;
mod cluster;
mod errors;
pub mod guardrails;
mod instances;
pub mod retention;

pub use actions::{Action, EventType, ObjectRef};
pub use backup::{backup_subject, plan_backup, plan_schedule, scheduled_subject};
pub use cluster::{
    Bootstrap, ClusterDecisions, RESTORE_SOURCE_KEY, RecoveryWait, Restore, agent_role,
    agent_role_binding, agent_rules, claim, owner, plan_cluster, plan_cluster_restoring, recovery,
    reference, restore_args, service, service_account, settings_config_map, subject, with_restore,
};
pub use errors::GuardrailError;
pub use guardrails::Subject;
pub use instances::{MAX_INSTANCES, planned_instances, surplus_pods};
pub use retention::{RetentionInput, plan_retention, retention_subject};

#[cfg(test)]
mod tests;
