//! pgwarden's production policy: the defaults, made strict.
//!
//! - A Cluster must be backed up: no `spec.backup`, no pods and no archiving (denied).
//! - WAL must be encrypted (`spec.backup.wal.encryption`); base backups inherit the WAL's
//!   encryption when `spec.backup.data.encryption` is unset.
//! - Compression when none is set: zstd for WAL, gzip for base backups (barman-cloud-backup
//!   has no zstd).
//! - WAL archived 4 files in parallel unless the Cluster says otherwise; 4 backup jobs.
//! - Instance pods request at least 500m CPU and 1Gi of memory.
//! - Backups run on a ready standby when there is one.
//! - Retention as the default's, but the Backup objects of deleted backups stay, marked
//!   `Deleted`: an audit trail of what was taken and when it was deleted.

use pgwarden_sdk::crds::BackupTarget;
use pgwarden_sdk::prelude::*;

/// The production policy.
pub struct ProductionPolicy;

/// Requests every instance pod gets unless the Cluster sets them.
pub const DEFAULT_REQUESTS: [(&str, &str); 2] = [("cpu", "500m"), ("memory", "1Gi")];

/// The Cluster's `spec.backup` with WAL encryption, or a denial saying what to set.
fn require_encrypted_backup(cluster: &Cluster) -> Decided<Encryption> {
    let name = defaults::cluster_name(cluster);
    let store = cluster.spec.backup.as_ref().ok_or_else(|| {
        format!("the production policy requires a backup: Cluster {name} has no spec.backup (set spec.backup.destinationPath, spec.backup.s3Credentials and spec.backup.wal.encryption)")
    })?;
    store.wal.as_ref().and_then(|w| w.encryption).ok_or_else(|| {
        format!("the production policy requires encrypted WAL: set spec.backup.wal.encryption of Cluster {name} to AES256 or aws:kms").into()
    })
}

impl Policy for ProductionPolicy {
    fn instance_pod(cluster: &Cluster, instance: u32) -> Decided<PodTemplateSpec> {
        require_encrypted_backup(cluster)?;
        Ok(defaults::instance_pod(cluster, instance)?
            .default_requests(&DEFAULT_REQUESTS)
            .build())
    }

    fn archive_settings(cluster: &Cluster) -> Decided<Option<ArchiveSettings>> {
        require_encrypted_backup(cluster)?;
        let mut settings = defaults::archive_settings(cluster)?;
        let wal = cluster.spec.backup.as_ref().and_then(|b| b.wal.as_ref());
        if let Some(s) = settings.as_mut() {
            s.compression.get_or_insert(WalCompression::Zstd);
            if wal.and_then(|w| w.max_parallel).is_none() {
                s.max_parallel = 4;
            }
        }
        Ok(settings)
    }

    fn backup_settings(
        backup: &Backup,
        cluster: &Cluster,
        instances: &[Instance],
    ) -> Decided<BackupSettings> {
        let wal_encryption = require_encrypted_backup(cluster)?;
        let mut settings = defaults::backup_settings(backup, cluster, instances)?;
        let target = backup.spec.target.unwrap_or(BackupTarget::PreferStandby);
        settings.target_pod = defaults::target_pod(target, cluster, instances)?;
        settings.encryption.get_or_insert(wal_encryption);
        settings.compression.get_or_insert(DataCompression::Gzip);
        let data = cluster.spec.backup.as_ref().and_then(|b| b.data.as_ref());
        if data.and_then(|d| d.jobs).is_none() {
            settings.jobs = 4;
        }
        Ok(settings)
    }

    fn retention(
        cluster: &Cluster,
        backups: &[Backup],
        now: DateTime<Utc>,
    ) -> Decided<Vec<Expiry>> {
        Ok(defaults::retention(cluster, backups, now)?
            .into_iter()
            .map(Expiry::keep)
            .collect())
    }
}

pgwarden_sdk::export_policy!(ProductionPolicy);

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::ProductionPolicy;

    #[test]
    fn fixtures() {
        pgwarden_sdk::testing::assert_fixtures::<ProductionPolicy>(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures"),
        );
    }
}
