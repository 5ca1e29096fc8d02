//! pgwarden's default decisions (the seed's behaviour), as functions and builders that a
//! custom policy starts from and adjusts.

mod backup;
mod failover;
mod health;
mod pod;
mod retention;
mod schedule;
mod storage;
#[cfg(test)]
mod tests;
mod transition;

pub use backup::{
    ARCHIVE_TIMEOUT_SECONDS, DEFAULT_JOBS, archive_settings, backup_settings, target_pod,
};
pub use failover::{FAILOVER_DELAY_SECONDS, failover, most_advanced_standby};
pub use health::{NAME_IN_USE, cluster_status, phase, readiness};
pub use pod::{DEFAULT_IMAGE, PodBuilder, instance_pod, secret_env};
pub use retention::{
    RetentionWindow, backup_ended_at, newest_completed, retention, retention_window,
    window_start_backup,
};
pub use schedule::{parse_schedule, schedule};
pub use storage::{DEFAULT_STORAGE_SIZE, storage};
pub use transition::{AGENT_START_TIMEOUT_SECONDS, backup_transition};

use crate::policy::Decided;
use pgwarden_crds::{Cluster, ObjectStore};

use crate::types::{Denial, INVALID_SETTINGS, Settings};

/// The Cluster's name (empty if the object has none).
pub fn cluster_name(cluster: &Cluster) -> &str {
    cluster.metadata.name.as_deref().unwrap_or_default()
}

/// The Cluster's `spec.backup`, or a denial naming the Cluster and the missing field.
pub fn require_backup(cluster: &Cluster) -> Decided<&ObjectStore> {
    cluster.spec.backup.as_ref().ok_or_else(|| {
        format!(
            "Cluster {} has no spec.backup: set spec.backup.destinationPath and spec.backup.s3Credentials to back it up",
            cluster_name(cluster)
        )
        .into()
    })
}

/// The default policy takes no settings: anything but `{}` is refused, naming what was given.
pub fn validate_settings(settings: &Settings) -> Decided<()> {
    if settings.is_empty() {
        return Ok(());
    }
    let fields: Vec<String> = match settings.value() {
        serde_json::Value::Object(map) => map.keys().map(|k| format!("settings.{k}")).collect(),
        other => vec![format!("settings {other}")],
    };
    Err(Denial::new(
        INVALID_SETTINGS,
        format!(
            "this policy takes no settings; remove {} from the ReconcilePolicy's spec.settings",
            fields.join(", ")
        ),
    ))
}

/// The default accepts every Cluster: what a decision needs (`spec.backup` for a Backup) it
/// checks itself, so that a Cluster without a backup still runs.
pub fn validate(_cluster: &Cluster) -> Decided<()> {
    Ok(())
}
