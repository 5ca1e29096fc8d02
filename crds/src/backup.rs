//! `Backup`: an on-demand base backup of a Cluster, taken with barman-cloud-backup.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_with::skip_serializing_none;

use crate::common::LocalObjectReference;

/// A request for one base backup of a Cluster. The spec cannot change once created.
#[skip_serializing_none]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "postgresql.k8s.2ndq.io",
    version = "v1alpha1",
    doc = "An on-demand base backup of a Cluster, taken with barman-cloud-backup.",
    kind = "Backup",
    namespaced,
    status = "BackupStatus",
    shortname = "pgbackup",
    category = "pgwarden",
    printcolumn = r#"{"name":"Cluster","type":"string","jsonPath":".spec.cluster.name","description":"Cluster backed up"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase","description":"pending, running, completed or failed"}"#,
    printcolumn = r#"{"name":"Started","type":"date","jsonPath":".status.startedAt","description":"When the backup started"}"#,
    printcolumn = r#"{"name":"Backup ID","type":"string","jsonPath":".status.backupId","priority":1}"#,
    printcolumn = r#"{"name":"Error","type":"string","jsonPath":".status.error","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self == oldSelf", "message": "Backup spec is immutable: delete this Backup and create a new one"}
]))]
pub struct BackupSpec {
    /// The Cluster to back up, in the same namespace.
    pub cluster: LocalObjectReference,
    /// Which instance takes the backup. Default: decided by the policy (the primary).
    pub target: Option<BackupTarget>,
}

/// Which instance of the Cluster takes a backup.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum BackupTarget {
    Primary,
    PreferStandby,
}

/// The phase of a Backup, as the seed's `kubectl describe backup` shows it.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum BackupPhase {
    Pending,
    Running,
    Completed,
    Failed,
}

impl BackupPhase {
    /// Completed and failed backups never change phase again.
    pub fn is_final(self) -> bool {
        matches!(self, BackupPhase::Completed | BackupPhase::Failed)
    }
}

/// The observed state of a Backup.
///
/// `phase`, `startedAt`, `stoppedAt`, `instanceID`, `destinationPath`, `serverName` and the
/// conditions are the operator's (decided by the policy); `agent` and the barman facts
/// (`backupId`, WAL and LSN bounds, `error`) are written by the instance agent that ran
/// barman-cloud-backup.
#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupStatus {
    /// pending, running, completed or failed.
    pub phase: Option<BackupPhase>,
    /// When the backup started.
    pub started_at: Option<String>,
    /// When the backup completed or failed.
    pub stopped_at: Option<String>,
    /// Why the backup is in its phase, in one CamelCase word.
    pub reason: Option<String>,
    /// What the phase means for the user.
    pub message: Option<String>,
    /// The barman backup id (e.g. `20261125T101500`).
    pub backup_id: Option<String>,
    /// First WAL file the backup needs.
    pub begin_wal: Option<String>,
    /// Last WAL file the backup needs.
    pub end_wal: Option<String>,
    /// WAL location where the backup started.
    #[serde(rename = "beginLSN")]
    pub begin_lsn: Option<String>,
    /// WAL location where the backup ended.
    #[serde(rename = "endLSN")]
    pub end_lsn: Option<String>,
    /// Size of the backup in bytes, as barman reported it: the bytes stored when barman says
    /// (`size`), else the PostgreSQL cluster's size when the backup started, before
    /// compression (`cluster_size`, what barman-cloud-backup reports).
    pub size_bytes: Option<i64>,
    /// The object store folder holding the backup.
    pub destination_path: Option<String>,
    /// The server folder name inside destinationPath.
    pub server_name: Option<String>,
    /// The instance that takes the backup.
    #[serde(rename = "instanceID")]
    pub instance_id: Option<InstanceId>,
    /// Why the backup failed, as barman reported it.
    pub error: Option<String>,
    /// How the backup is taken, as the policy decided (read by the agent that runs it).
    pub settings: Option<crate::settings::BackupSettings>,
    /// What the instance agent running the backup reported.
    pub agent: Option<BackupAgentStatus>,
    /// The deletion of the backup from the object store, once the policy's retention chose
    /// it: asked by the operator, carried out by an instance agent.
    pub deletion: Option<BackupDeletion>,
    /// Conditions of the backup: PolicyApplied (False, naming the policy and the decision,
    /// when the policy denied or failed a decision about this Backup).
    // A list map keyed by type (the Kubernetes convention): each condition has one owner.
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// A request to delete a backup from the object store (`barman-cloud-backup-delete`).
/// `reason`, `requestedAt`, `podName` and `attempt` are the operator's; `agent` is what the
/// instance agent of `podName` reported.
#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupDeletion {
    /// Why, in one CamelCase word (`Retention`).
    pub reason: Option<String>,
    /// When the operator asked for the current attempt.
    pub requested_at: Option<String>,
    /// The instance pod whose agent deletes the backup.
    pub pod_name: Option<String>,
    /// The attempt the operator asks for (from 1); each attempt runs once.
    pub attempt: Option<u32>,
    /// What becomes of this Backup object once the backup is deleted, as the policy said.
    pub object: Option<ExpiredObject>,
    /// What the agent reported.
    pub agent: Option<BackupDeletionAgent>,
}

/// What becomes of the object of a Backup whose backup the retention policy deletes.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ExpiredObject {
    /// The Backup object is deleted with its backup.
    #[default]
    Remove,
    /// The Backup object stays, with the condition `Deleted` (reason `DeletedByRetention`).
    Keep,
}

/// What the instance agent reports about a deletion it ran.
#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupDeletionAgent {
    /// The attempt this report is about.
    pub attempt: Option<u32>,
    /// running, succeeded or failed.
    pub state: Option<BackupAgentState>,
    /// Pod of the agent.
    pub pod_name: Option<String>,
    /// When barman-cloud-backup-delete ended.
    pub finished_at: Option<String>,
    /// Why it failed, as barman said it (secrets scrubbed).
    pub error: Option<String>,
}

/// The instance that takes a backup.
#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InstanceId {
    /// Name of the instance pod.
    pub pod_name: Option<String>,
}

/// What the instance agent reports about a backup it runs.
#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupAgentStatus {
    /// The agent's view of the backup process.
    pub state: Option<BackupAgentState>,
    /// Pod of the agent.
    pub pod_name: Option<String>,
    /// When the agent started barman-cloud-backup.
    pub started_at: Option<String>,
    /// When barman-cloud-backup ended.
    pub finished_at: Option<String>,
    /// Exit code of barman-cloud-backup.
    pub exit_code: Option<i32>,
}

/// The agent's view of the backup process.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum BackupAgentState {
    Running,
    Succeeded,
    Failed,
}
