//! Default archive settings, backup settings and retention.

use chrono::{DateTime, Duration, Utc};
use pgwarden_crds::settings::{ArchiveSettings, BackupSettings};
use pgwarden_crds::{Backup, BackupPhase, BackupTarget, Cluster};

use super::{cluster_name, require_backup};
use crate::names;
use crate::types::{Instance, Role};

/// PostgreSQL's `archive_timeout` when the policy sets no other: a WAL file at least every
/// five minutes, so a quiet database still has a recent recovery point.
pub const ARCHIVE_TIMEOUT_SECONDS: u32 = 300;
/// Parallel upload jobs of a base backup when the Cluster sets none.
pub const DEFAULT_JOBS: u32 = 2;

/// The seed's archiving: `pgwarden instance wal-archive %p` runs barman-cloud-wal-archive with
/// the Cluster's destination, endpoint, compression and encryption. No `spec.backup`: no
/// archiving.
pub fn archive_settings(cluster: &Cluster) -> Result<Option<ArchiveSettings>, String> {
    let Some(store) = cluster.spec.backup.as_ref() else {
        return Ok(None);
    };
    let wal = store.wal.clone().unwrap_or_default();
    Ok(Some(ArchiveSettings {
        destination_path: store.destination_path.clone(),
        endpoint_url: store.endpoint_url.clone(),
        endpoint_ca_file: store
            .endpoint_ca
            .as_ref()
            .map(|_| format!("{}/{}", names::CA_MOUNT_PATH, names::CA_FILE)),
        server_name: store
            .server_name
            .clone()
            .unwrap_or_else(|| cluster_name(cluster).to_string()),
        compression: wal.compression,
        encryption: wal.encryption,
        max_parallel: wal.max_parallel.unwrap_or(1).clamp(1, 32) as u32,
        archive_timeout_seconds: ARCHIVE_TIMEOUT_SECONDS,
    }))
}

/// The seed's base backup: barman-cloud-backup on the primary (or a ready replica when the
/// Backup asks `prefer-standby`), with the Cluster's data compression, encryption and jobs.
pub fn backup_settings(
    backup: &Backup,
    cluster: &Cluster,
    instances: &[Instance],
) -> Result<BackupSettings, String> {
    let store = require_backup(cluster)?;
    let target = target_pod(
        backup.spec.target.unwrap_or(BackupTarget::Primary),
        cluster,
        instances,
    )?;
    let data = store.data.clone().unwrap_or_default();
    Ok(BackupSettings {
        target_pod: target,
        compression: data.compression,
        encryption: data.encryption,
        jobs: data.jobs.map_or(DEFAULT_JOBS, |j| j.clamp(1, 64) as u32),
        immediate_checkpoint: data.immediate_checkpoint.unwrap_or(false),
    })
}

/// The pod that takes a backup: a ready replica if `prefer-standby` and one exists, else the
/// primary.
pub fn target_pod(
    target: BackupTarget,
    cluster: &Cluster,
    instances: &[Instance],
) -> Result<String, String> {
    let standby = instances
        .iter()
        .find(|i| i.role == Role::Replica && i.ready);
    if let (BackupTarget::PreferStandby, Some(standby)) = (target, standby) {
        return Ok(standby.name.clone());
    }
    match instances.iter().find(|i| i.role == Role::Primary) {
        Some(primary) => Ok(primary.name.clone()),
        None => Err(format!(
            "Cluster {} has no primary instance yet: the backup waits for one",
            cluster_name(cluster)
        )),
    }
}

/// The retention window of `spec.backup.retentionPolicy` (`30d`, `4w`, `6m`; a month is 30
/// days). `None`: keep backups forever.
pub fn retention_window(cluster: &Cluster) -> Result<Option<Duration>, String> {
    let Some(policy) = cluster
        .spec
        .backup
        .as_ref()
        .and_then(|b| b.retention_policy.as_deref())
    else {
        return Ok(None);
    };
    let bad = || {
        format!(
            "spec.backup.retentionPolicy of Cluster {} is {policy:?}: expected a positive number of days, weeks or months, like 30d, 4w or 6m",
            cluster_name(cluster)
        )
    };
    let (count, unit) = policy.split_at(policy.len().saturating_sub(1));
    let count: i64 = count.parse().ok().filter(|c| *c > 0).ok_or_else(bad)?;
    let days = match unit {
        "d" => count,
        "w" => count * 7,
        "m" => count * 30,
        _ => return Err(bad()),
    };
    Ok(Some(Duration::days(days)))
}

fn stamp(value: Option<&str>) -> Option<DateTime<Utc>> {
    value
        .and_then(|v| DateTime::parse_from_rfc3339(v).ok())
        .map(|t| t.with_timezone(&Utc))
}

/// When a backup ended (or was created, if it never ended).
fn ended_at(backup: &Backup) -> Option<DateTime<Utc>> {
    let status = backup.status.as_ref();
    stamp(status.and_then(|s| s.stopped_at.as_deref())).or_else(|| {
        backup
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| crate::convert::from_jiff(t.0))
    })
}

fn phase(backup: &Backup) -> Option<BackupPhase> {
    backup.status.as_ref().and_then(|s| s.phase)
}

/// Deletes the Cluster's completed and failed Backups that ended before the retention
/// window, but always keeps the newest completed one, so the Cluster stays recoverable.
pub fn retention(
    cluster: &Cluster,
    backups: &[Backup],
    now: DateTime<Utc>,
) -> Result<Vec<String>, String> {
    let Some(window) = retention_window(cluster)? else {
        return Ok(vec![]);
    };
    let name = cluster_name(cluster);
    let own: Vec<&Backup> = backups
        .iter()
        .filter(|b| b.spec.cluster.name == name)
        .collect();
    let newest_completed = own
        .iter()
        .filter(|b| phase(b) == Some(BackupPhase::Completed))
        .max_by_key(|b| ended_at(b))
        .and_then(|b| b.metadata.name.clone());
    let cutoff = now - window;
    let mut doomed: Vec<String> = own
        .iter()
        .filter(|b| phase(b).is_some_and(BackupPhase::is_final))
        .filter(|b| ended_at(b).is_some_and(|t| t < cutoff))
        .filter_map(|b| b.metadata.name.clone())
        .filter(|n| Some(n) != newest_completed.as_ref())
        .collect();
    doomed.sort();
    Ok(doomed)
}
