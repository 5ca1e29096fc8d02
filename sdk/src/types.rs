//! The wire types of decisions, shared by the host and the guests (the Kubewarden way: the
//! SDK owns the protocol). They mirror the WIT records with serde, so fixtures, `pgwarden
//! policy eval` and the host's API speak the same JSON.

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use pgwarden_crds::settings::{ArchiveSettings, BackupSettings};
use pgwarden_crds::{Backup, BackupPhase, Cluster, ExpiredObject, ScheduledBackup};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::policy::Decided;

pub use pgwarden_crds::settings::{Archiver, CloneSource};

/// The ABI version of this SDK: the version of the `pgwarden:policy` WIT package.
pub const ABI_VERSION: &str = "0.4.0";

/// The role of an instance.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Primary,
    Replica,
}

/// An instance pod as the host observes it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Instance {
    pub name: String,
    pub role: Role,
    pub ready: bool,
}

/// A refusal: `reason` (one CamelCase word) becomes the condition's reason, `message` is for
/// the user and says what to change.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Denial {
    pub reason: String,
    pub message: String,
}

impl Denial {
    /// The reason of a denial given as a bare message.
    pub const DEFAULT_REASON: &'static str = "PolicyDenied";

    pub fn new(reason: impl Into<String>, message: impl Into<String>) -> Self {
        Denial {
            reason: reason.into(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Denial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// `Err(format!(..))` keeps compiling: a bare message is a `PolicyDenied` denial.
impl From<String> for Denial {
    fn from(message: String) -> Self {
        Denial::new(Denial::DEFAULT_REASON, message)
    }
}

impl From<&str> for Denial {
    fn from(message: &str) -> Self {
        Denial::from(message.to_string())
    }
}

/// The policy's free-form settings: `ReconcilePolicy.spec.settings` as JSON (`{}` when
/// absent). A policy reads them with [`Settings::parse`] into its own type.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(transparent)]
pub struct Settings(serde_json::Value);

impl Default for Settings {
    fn default() -> Self {
        Settings::empty()
    }
}

impl From<serde_json::Value> for Settings {
    fn from(value: serde_json::Value) -> Self {
        Settings(value)
    }
}

impl Settings {
    /// No settings: `{}`.
    pub fn empty() -> Settings {
        Settings(serde_json::Value::Object(Default::default()))
    }

    /// The settings as the host passes them (JSON text; empty text is `{}`).
    pub fn from_json(text: &str) -> Decided<Settings> {
        if text.trim().is_empty() {
            return Ok(Settings::empty());
        }
        serde_json::from_str(text)
            .map(Settings)
            .map_err(|e| Denial::new(INVALID_SETTINGS, format!("the settings are not JSON: {e}")))
    }

    /// The settings as JSON text (what crosses the boundary).
    pub fn to_json(&self) -> String {
        self.0.to_string()
    }

    pub fn value(&self) -> &serde_json::Value {
        &self.0
    }

    /// Whether there are no settings (`{}` or `null`).
    pub fn is_empty(&self) -> bool {
        match &self.0 {
            serde_json::Value::Null => true,
            serde_json::Value::Object(map) => map.is_empty(),
            _ => false,
        }
    }

    /// The settings as the policy's type `T`. A failure is an `InvalidSettings` denial whose
    /// message names the field at fault (`settings.cpu: invalid type...`).
    pub fn parse<T: DeserializeOwned>(&self) -> Decided<T> {
        let value = match &self.0 {
            serde_json::Value::Null => serde_json::Value::Object(Default::default()),
            other => other.clone(),
        };
        // Pretty text puts each top-level field on its own line, so the line of a parse
        // error tells which field is at fault (serde_json's errors carry no path).
        let text = serde_json::to_string_pretty(&value).unwrap_or_default();
        serde_json::from_str(&text).map_err(|e| {
            let detail = e.to_string();
            let detail = detail
                .rsplit_once(" at line ")
                .map_or(detail.as_str(), |(d, _)| d);
            let named = detail.contains("field `") || detail.contains("variant `");
            let message = match top_level_field(&text, e.line()) {
                Some(field) if !named || !detail.starts_with("missing") => {
                    format!("settings.{field}: {detail}")
                }
                _ => format!("settings: {detail}"),
            };
            Denial::new(INVALID_SETTINGS, message)
        })
    }
}

/// The reason of a denial of the settings.
pub const INVALID_SETTINGS: &str = "InvalidSettings";

/// The top-level field whose value spans line `line` (1-based) of pretty-printed JSON.
fn top_level_field(text: &str, line: usize) -> Option<String> {
    text.lines()
        .take(line)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .find_map(|l| {
            let key = l.strip_prefix("  \"")?;
            key.split_once("\":").map(|(k, _)| k.to_string())
        })
}

/// The storage of one instance's data volume claim.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Storage {
    /// Size, as a Kubernetes quantity (`1Gi`).
    pub size: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class: Option<String>,
}

/// An instance's data volume claim as observed.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ClaimFacts {
    pub name: String,
    /// The requested size, as a Kubernetes quantity.
    pub size: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class: Option<String>,
}

/// What the host observed of a Cluster, for its phase and `Ready` condition.
#[derive(Serialize, Deserialize, Clone, Debug)]
#[serde(rename_all = "camelCase")]
pub struct ClusterFacts {
    /// The Cluster, with its stored status (archive facts, conditions).
    pub cluster: Cluster,
    /// The instance pods observed.
    #[serde(default)]
    pub instances: Vec<Instance>,
    /// One message per Secret or key `spec.backup` names and the namespace lacks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing_secrets: Vec<String>,
    /// The reconcile's failure this round (`NameInUse`, a denial...), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<Denial>,
    /// A recovery that cannot start yet, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<Denial>,
    pub now: DateTime<Utc>,
}

/// One condition as the policy decides it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ConditionDecision {
    pub status: bool,
    /// Why, in one CamelCase word.
    pub reason: String,
    pub message: String,
}

/// The Cluster's phase and `Ready` condition (the policy decides what counts as degraded).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ClusterHealth {
    pub phase: String,
    pub ready: ConditionDecision,
}

/// One instance's replication facts, as its agent last reported them (for a failover).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct InstanceFacts {
    /// The pod name.
    pub name: String,
    pub role: Role,
    /// PostgreSQL answers, and its agent reported recently.
    pub ready: bool,
    /// The standby has received WAL by streaming replication since PostgreSQL started (its
    /// WAL receiver may have lost a dead primary since).
    #[serde(default)]
    pub streaming: bool,
    /// WAL received (a standby) or written (the primary), in bytes from LSN 0/0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received_lsn: Option<u64>,
    /// WAL replayed (a standby), in bytes from LSN 0/0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replayed_lsn: Option<u64>,
    /// Bytes received but not replayed yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_bytes: Option<u64>,
    /// Seconds behind the primary's last commit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_seconds: Option<u64>,
}

/// What the host observes of a Cluster's instances, for a failover.
#[derive(Serialize, Deserialize, Clone, Debug)]
#[serde(rename_all = "camelCase")]
pub struct FailoverFacts {
    /// The Cluster, with its stored status.
    pub cluster: Cluster,
    #[serde(default)]
    pub instances: Vec<InstanceFacts>,
    /// `status.currentPrimary`, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_primary: Option<String>,
    /// `status.targetPrimary`, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_primary: Option<String>,
    /// Seconds since the current primary was last seen healthy (0: healthy now; none: never
    /// seen).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_unhealthy_seconds: Option<u64>,
    pub now: DateTime<Utc>,
}

/// The standby to promote, and why (`failover`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Promotion {
    /// The pod name of the standby.
    pub instance: String,
    /// Why, in one CamelCase word.
    pub reason: String,
    pub message: String,
}

/// An LSN as PostgreSQL prints it (`16/B374D848`) in bytes from 0/0; none if malformed.
pub fn parse_lsn(text: &str) -> Option<u64> {
    let (high, low) = text.trim().split_once('/')?;
    let high = u64::from_str_radix(high, 16).ok()?;
    let low = u64::from_str_radix(low, 16).ok()?;
    (high <= u32::MAX as u64 && low <= u32::MAX as u64).then_some((high << 32) | low)
}

/// What the host observes about the pod a backup runs on.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PodFacts {
    pub name: String,
    /// `status.phase` of the pod: Pending, Running, Succeeded, Failed or Unknown.
    pub phase: String,
    pub ready: bool,
    /// Restarts of the postgres container.
    #[serde(default)]
    pub restart_count: u32,
    /// When the postgres container's current run started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_started_at: Option<DateTime<Utc>>,
}

/// Everything a Backup's phase transition depends on.
#[derive(Serialize, Deserialize, Clone, Debug)]
#[serde(rename_all = "camelCase")]
pub struct BackupFacts {
    /// The Backup; `status.agent` holds what the instance agent reported.
    pub backup: Backup,
    /// Its Cluster, if it exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<Cluster>,
    /// The pod the backup targets (`status.instanceID.podName`), if it exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodFacts>,
    pub now: DateTime<Utc>,
}

/// The next state of a Backup.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Transition {
    pub phase: BackupPhase,
    /// Why, in one CamelCase word.
    pub reason: String,
    /// What it means, for the user.
    pub message: String,
    /// Ask again after this many seconds (none: only when something changes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requeue_after_seconds: Option<u32>,
}

/// A Backup a ScheduledBackup creates.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ScheduledRun {
    /// Name of the Backup object.
    pub name: String,
    /// The scheduled time this run stands for.
    pub scheduled_at: DateTime<Utc>,
}

/// What a ScheduledBackup does now.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleDecision {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create: Option<ScheduledRun>,
    /// The next run after now (none: suspended).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_run: Option<DateTime<Utc>>,
}

/// One decision to make, with its inputs: what a fixture case or `pgwarden policy eval`
/// asks a policy.
#[derive(Serialize, Deserialize, Clone, Debug)]
#[serde(tag = "decision", rename_all = "kebab-case")]
pub enum Request {
    /// `validate-settings`: whether the policy accepts the case's settings.
    ValidateSettings {},
    /// `validate`: whether the policy accepts the Cluster.
    Validate { cluster: Box<Cluster> },
    /// `instance-pod`: the pod template of one instance.
    #[serde(rename_all = "camelCase")]
    InstancePod {
        cluster: Box<Cluster>,
        #[serde(default)]
        instance: u32,
        /// The instance pods observed.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        instances: Vec<Instance>,
    },
    /// `storage`: the storage of one instance's claim.
    Storage {
        cluster: Box<Cluster>,
        #[serde(default)]
        instance: u32,
        /// The claim as observed (none: not created yet).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        current: Option<ClaimFacts>,
    },
    /// `archive-settings`: how WAL is archived.
    ArchiveSettings { cluster: Box<Cluster> },
    /// `backup-settings`: how a Backup is taken, and where.
    BackupSettings {
        backup: Box<Backup>,
        cluster: Box<Cluster>,
        instances: Vec<Instance>,
    },
    /// `backup-transition`: the next phase of a Backup.
    BackupTransition(Box<BackupFacts>),
    /// `schedule`: whether a ScheduledBackup creates a Backup now.
    #[serde(rename_all = "camelCase")]
    Schedule {
        scheduled_backup: Box<ScheduledBackup>,
        now: DateTime<Utc>,
    },
    /// `retention`: which Backups to delete.
    Retention {
        cluster: Box<Cluster>,
        backups: Vec<Backup>,
        now: DateTime<Utc>,
    },
    /// `cluster-status`: the Cluster's phase and `Ready` condition.
    ClusterStatus(Box<ClusterFacts>),
    /// `failover`: whether a standby is promoted now.
    Failover(Box<FailoverFacts>),
}

impl Request {
    /// The decision's name, as in the WIT export (`archive-settings`...).
    pub fn decision(&self) -> &'static str {
        match self {
            Request::ValidateSettings {} => "validate-settings",
            Request::Validate { .. } => "validate",
            Request::InstancePod { .. } => "instance-pod",
            Request::Storage { .. } => "storage",
            Request::ArchiveSettings { .. } => "archive-settings",
            Request::BackupSettings { .. } => "backup-settings",
            Request::BackupTransition(_) => "backup-transition",
            Request::Schedule { .. } => "schedule",
            Request::Retention { .. } => "retention",
            Request::ClusterStatus(_) => "cluster-status",
            Request::Failover(_) => "failover",
        }
    }
}

/// The names of every decision, in WIT export order.
pub const DECISIONS: [&str; 11] = [
    "validate-settings",
    "validate",
    "instance-pod",
    "storage",
    "archive-settings",
    "backup-settings",
    "backup-transition",
    "schedule",
    "retention",
    "cluster-status",
    "failover",
];

/// A decision's answer, typed.
#[derive(Serialize, Clone, Debug, PartialEq)]
#[serde(untagged)]
pub enum Decision {
    /// `validate-settings` and `validate` accept with `true`.
    Valid(bool),
    InstancePod(Box<PodTemplateSpec>),
    Storage(Storage),
    ArchiveSettings(Option<ArchiveSettings>),
    BackupSettings(BackupSettings),
    BackupTransition(Transition),
    Schedule(ScheduleDecision),
    Retention(Vec<Expiry>),
    ClusterStatus(ClusterHealth),
    /// `failover`: `null` when no standby is promoted now.
    Failover(Option<Promotion>),
}

/// A Backup past the retention policy (`retention`): its backup is deleted from the store,
/// and its object removed or kept marked deleted.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Expiry {
    /// Name of the Backup.
    pub name: String,
    /// What becomes of the Backup object.
    pub object: ExpiredObject,
}

impl Expiry {
    /// The backup and its object go.
    pub fn remove(name: impl Into<String>) -> Self {
        Expiry {
            name: name.into(),
            object: ExpiredObject::Remove,
        }
    }

    /// The backup goes; its object stays, marked deleted.
    pub fn keep(name: impl Into<String>) -> Self {
        Expiry {
            name: name.into(),
            object: ExpiredObject::Keep,
        }
    }
}

impl Decision {
    /// The decision as JSON (what fixtures compare).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

/// What a policy answered: a decision, or a denial with a message for the user.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub enum Outcome {
    Allowed(serde_json::Value),
    Denied(String),
}
