//! Default archive settings and backup settings (retention: [`super::retention`]).

use crate::policy::Decided;
use pgwarden_crds::settings::{ArchiveSettings, Archiver, BackupSettings, CloneSource};
use pgwarden_crds::{Backup, BackupTarget, Cluster};

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
pub fn archive_settings(cluster: &Cluster) -> Decided<Option<ArchiveSettings>> {
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
        sse_kms_key_id: wal.sse_kms_key_id,
        max_parallel: wal.max_parallel.unwrap_or(1).clamp(1, 32) as u32,
        archive_timeout_seconds: ARCHIVE_TIMEOUT_SECONDS,
        archiver: Archiver::BarmanCloud,
        standby_clone: CloneSource::Primary,
    }))
}

/// The seed's base backup: barman-cloud-backup on the primary (or a ready replica when the
/// Backup asks `prefer-standby`), with the Cluster's data compression, encryption and jobs.
pub fn backup_settings(
    backup: &Backup,
    cluster: &Cluster,
    instances: &[Instance],
) -> Decided<BackupSettings> {
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
        sse_kms_key_id: data.sse_kms_key_id,
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
) -> Decided<String> {
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
        )
        .into()),
    }
}
