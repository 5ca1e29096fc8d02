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
//! eval` prints them. Nor does it call the policy engine (the controllers and `policy eval`
//! bring the decisions), use a runtime or a kube client (only kube's `Resource` traits).
//!
//! ```text
//!   cluster    a Cluster's objects: pods, claims, Services, settings ConfigMap
//!   rbac       the instance agent's ServiceAccount, Role (its rules) and RoleBinding
//!   recovery   spec.bootstrap.recovery resolved to a restore added to the pods
//!   instances  how many instances; surplus pods deleted
//!   observed   pods as the policy sees them (facts, instances)
//!   backup     a Backup's and a ScheduledBackup's status, the Backups a schedule creates
//!   retention  expired backups deleted by the agent, then their objects
//!   meta       what every planned object shares: reference, owner, labels, status times
//! ```

mod actions;
mod backup;
mod cluster;
mod errors;
pub mod guardrails;
mod instances;
mod meta;
mod observed;
mod rbac;
mod recovery;
pub mod retention;

pub use actions::{Action, EventType, MANAGER, ObjectRef};
pub use backup::{backup_subject, plan_backup, plan_schedule, scheduled_subject};
pub use cluster::{
    Bootstrap, ClusterDecisions, GENERATE_ANNOTATION, claim, plan_cluster, plan_cluster_observed,
    plan_cluster_restoring, replication_secret, service, settings_config_map, subject,
};
pub use errors::GuardrailError;
pub use guardrails::Subject;
pub use instances::{
    MAX_INSTANCES, PRIMARY_INDEX, instance_index, planned_instances, surplus_pods,
};
pub use meta::{owner, reference};
pub use observed::{claim_facts, instance, instance_claims, pod_facts};
pub use rbac::{agent_role, agent_role_binding, agent_rules, service_account};
pub use recovery::{
    RESTORE_SOURCE_KEY, RecoveryWait, Restore, recovery, restore_args, with_restore,
};
pub use retention::{RetentionInput, plan_retention, retention_subject};

#[cfg(test)]
mod tests;
