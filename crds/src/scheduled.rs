//! `ScheduledBackup`: Backups created on a cron schedule.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_with::skip_serializing_none;

use crate::common::LocalObjectReference;

/// Creates a Backup of a Cluster on a schedule.
///
/// The schedule is a cron expression of 5 fields (`minute hour day-of-month month
/// day-of-week`, as in a Kubernetes CronJob) or 6 fields with seconds first (`second minute
/// hour day-of-month month day-of-week`), evaluated in UTC. `@hourly`, `@daily`,
/// `@weekly`, `@monthly` and `@yearly` are accepted too.
#[skip_serializing_none]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "postgresql.k8s.2ndq.io",
    version = "v1alpha1",
    doc = "Backups of a Cluster created on a cron schedule.",
    kind = "ScheduledBackup",
    namespaced,
    status = "ScheduledBackupStatus",
    shortname = "pgsb",
    category = "pgwarden",
    printcolumn = r#"{"name":"Cluster","type":"string","jsonPath":".spec.cluster.name"}"#,
    printcolumn = r#"{"name":"Schedule","type":"string","jsonPath":".spec.schedule"}"#,
    printcolumn = r#"{"name":"Suspend","type":"boolean","jsonPath":".spec.suspend"}"#,
    printcolumn = r#"{"name":"Last Backup","type":"date","jsonPath":".status.lastScheduleTime"}"#,
    printcolumn = r#"{"name":"Next Backup","type":"string","jsonPath":".status.nextScheduleTime"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.cluster == oldSelf.cluster",
     "message": "spec.cluster is immutable: create a new ScheduledBackup for another Cluster"}
]))]
pub struct ScheduledBackupSpec {
    /// When to take backups: a cron expression of 5 fields (`minute hour day-of-month month
    /// day-of-week`) or 6 fields with seconds first, in UTC; or @hourly, @daily, @weekly,
    /// @monthly, @yearly. Example: `0 0 2 * * *` (02:00:00 every day).
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "self.matches('^@(yearly|annually|monthly|weekly|daily|midnight|hourly)$') || self.matches('^\\\\s*[0-9*?/,LW#A-Za-z-]+(\\\\s+[0-9*?/,LW#A-Za-z-]+){4,5}\\\\s*$')",
         "message": "schedule must be a cron expression of 5 fields (minute hour day-of-month month day-of-week) or 6 fields with seconds first, or one of @hourly, @daily, @weekly, @monthly, @yearly"},
        {"rule": "!self.matches('^\\\\s*\\\\S+(\\\\s+\\\\S+){5}\\\\s*$') || self.matches('^\\\\s*[0-5]?[0-9]\\\\s')",
         "message": "schedule fires more than once a minute: the seconds field (the first of 6) must be one number from 0 to 59, as in `0 */5 * * * *`; a Backup at most once a minute"}
    ]))]
    pub schedule: String,
    /// The Cluster to back up, in the same namespace. Cannot change.
    pub cluster: LocalObjectReference,
    /// Take a first backup as soon as the ScheduledBackup is created. Default: false.
    pub immediate: Option<bool>,
    /// Stop creating Backups until set back to false. Default: false.
    pub suspend: Option<bool>,
    /// Which object owns the Backups created: `none` (they outlive the ScheduledBackup),
    /// `self` (deleted with the ScheduledBackup) or `cluster` (deleted with the Cluster).
    /// Default: none.
    pub backup_owner_reference: Option<BackupOwnerReference>,
}

/// The shortest time between two Backups a schedule may ask for: admission refuses a
/// 6-field schedule whose seconds field is not one number (the only way a cron fires twice in
/// a minute), and the operator checks the fire times of a schedule stored before that rule.
pub const MIN_INTERVAL_SECONDS: i64 = 60;

/// The longest ScheduledBackup name: it is the value of the label
/// `postgresql.k8s.2ndq.io/scheduled-backup` on each Backup it creates (63 characters at
/// most), and those Backups are named `<name>-<yyyymmddhhmmss>`.
pub const MAX_NAME_LENGTH: usize = 63;

/// The root-level CEL rule of the ScheduledBackup CRD, on `metadata.name`.
pub fn name_rules() -> serde_json::Value {
    serde_json::json!([
        {"rule": format!("size(self.metadata.name) <= {MAX_NAME_LENGTH}"),
         "message": format!("metadata.name must be at most {MAX_NAME_LENGTH} characters: it is the value of the label postgresql.k8s.2ndq.io/scheduled-backup on each Backup it creates, and label values are limited to 63 characters")}
    ])
}

/// Which object owns the Backups a ScheduledBackup creates.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum BackupOwnerReference {
    #[default]
    None,
    #[serde(rename = "self")]
    OwnedBySelf,
    Cluster,
}

/// The observed state of a ScheduledBackup.
#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScheduledBackupStatus {
    /// When the last Backup was created.
    pub last_schedule_time: Option<String>,
    /// When the next Backup will be created.
    pub next_schedule_time: Option<String>,
    /// When the operator last evaluated the schedule.
    pub last_check_time: Option<String>,
    /// Conditions, e.g. a schedule the operator could not parse.
    // A list map keyed by type (the Kubernetes convention): each condition has one owner.
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}
