//! Small types shared by the kinds.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A reference to a key of a Secret in the object's own namespace.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct SecretKeySelector {
    /// Name of the Secret, in the same namespace as the Cluster.
    #[schemars(length(min = 1))]
    pub name: String,
    /// Key inside the Secret whose value is used.
    #[schemars(length(min = 1))]
    pub key: String,
}

/// A reference to another object of the same namespace, by name.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct LocalObjectReference {
    /// Name of the referenced object.
    #[schemars(length(min = 1))]
    pub name: String,
}

/// The condition types pgwarden sets on its objects' `status.conditions`.
pub mod condition_types {
    /// The Cluster's instances run and accept connections.
    pub const READY: &str = "Ready";
    /// WAL is being archived to the object store without failures.
    pub const CONTINUOUS_ARCHIVING: &str = "ContinuousArchiving";
    /// The most recent Backup of the Cluster completed.
    pub const LAST_BACKUP_SUCCEEDED: &str = "LastBackupSucceeded";
    /// The reconcile policy answered and its decisions were applied.
    pub const POLICY_APPLIED: &str = "PolicyApplied";
    /// Every instance pod runs the current pod template (False while a changed template is
    /// rolled out one pod at a time, or waits for a running Backup).
    pub const PODS_UP_TO_DATE: &str = "PodsUpToDate";
    /// The retention policy's last decision on the Cluster's Backups was applied (set False,
    /// with the policy and the reason, when it denied or failed; True again once it answers).
    pub const RETENTION_APPLIED: &str = "RetentionApplied";
    /// The policy the Cluster asks for (`spec.policy`, or the operator's default) is the one
    /// deciding (False, reason `NamespaceBound`, when the platform bound its namespace to
    /// another with the operator's `--namespace-policy`).
    pub const POLICY_AS_REQUESTED: &str = "PolicyAsRequested";
    /// Who is to be the primary (`status.targetPrimary`): True with reason `Elected`,
    /// `PrimaryUnhealthy` (no standby promoted yet), `SwitchoverRequested` or the policy's
    /// failover reason; False when a promotion, the policy's or a switchover request's, is
    /// refused (reason `PromotionRefused`, naming the instance and why) or the policy's
    /// `failover` failed.
    pub const PRIMARY_ELECTED: &str = "PrimaryElected";
}
