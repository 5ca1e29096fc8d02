//! The wire types of decisions, shared by the host and the guests (the Kubewarden way: the
//! SDK owns the protocol). They mirror the WIT records with serde, so fixtures, `pgwarden
//! policy eval` and the host's API speak the same JSON.

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use pgwarden_crds::settings::{ArchiveSettings, BackupSettings};
use pgwarden_crds::{Backup, BackupPhase, Cluster, ExpiredObject, ScheduledBackup};
use serde::{Deserialize, Serialize};

/// The ABI version of this SDK: the version of the `pgwarden:policy` WIT package.
pub const ABI_VERSION: &str = "0.2.0";

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
    /// `instance-pod`: the pod template of one instance.
    #[serde(rename_all = "camelCase")]
    InstancePod {
        cluster: Box<Cluster>,
        #[serde(default)]
        instance: u32,
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
}

impl Request {
    /// The decision's name, as in the WIT export (`archive-settings`...).
    pub fn decision(&self) -> &'static str {
        match self {
            Request::InstancePod { .. } => "instance-pod",
            Request::ArchiveSettings { .. } => "archive-settings",
            Request::BackupSettings { .. } => "backup-settings",
            Request::BackupTransition(_) => "backup-transition",
            Request::Schedule { .. } => "schedule",
            Request::Retention { .. } => "retention",
        }
    }
}

/// The names of every decision, in WIT export order.
pub const DECISIONS: [&str; 6] = [
    "instance-pod",
    "archive-settings",
    "backup-settings",
    "backup-transition",
    "schedule",
    "retention",
];

/// A decision's answer, typed.
#[derive(Serialize, Clone, Debug, PartialEq)]
#[serde(untagged)]
pub enum Decision {
    InstancePod(Box<PodTemplateSpec>),
    ArchiveSettings(Option<ArchiveSettings>),
    BackupSettings(BackupSettings),
    BackupTransition(Transition),
    Schedule(ScheduleDecision),
    Retention(Vec<Expiry>),
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
