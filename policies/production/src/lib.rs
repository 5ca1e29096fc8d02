//! pgwarden's production policy: the defaults, made strict.
//!
//! - A Cluster must be backed up: no `spec.backup`, no pods and no archiving (denied).
//! - WAL must be encrypted (`spec.backup.wal.encryption`); base backups inherit the WAL's
//!   encryption when `spec.backup.data.encryption` is unset.
//! - Compression when none is set: zstd for WAL, gzip for base backups (barman-cloud-backup
//!   has no zstd).
//! - WAL archived 4 files in parallel unless the Cluster says otherwise; 4 backup jobs
//!   (setting `jobs`).
//! - Instance pods request at least 500m CPU and 1Gi of memory (settings `cpu`, `memory`).
//! - Backups run on a ready standby when there is one.
//! - New standbys are cloned from the store (its latest base backup, then archived WAL)
//!   once the Cluster has a completed backup, from the primary before that.
//! - Failover as the default's (the most advanced ready streaming standby), after 60 s of an
//!   unhealthy primary rather than 30 (setting `failoverDelaySeconds`).
//! - Retention as the default's, but the Backup objects of deleted backups stay, marked
//!   `Deleted`: an audit trail of what was taken and when it was deleted.
//!
//! Settings (`ReconcilePolicy.spec.settings`, every field optional):
//!
//! ```yaml
//! settings:
//!   cpu: "500m"      # CPU request of an instance pod whose Cluster sets none
//!   memory: "1Gi"    # memory request, likewise
//!   jobs: 4          # parallel upload jobs of a base backup whose Cluster sets none (1..=64)
//!   failoverDelaySeconds: 60  # the primary unhealthy this long before a standby is promoted (5..=3600)
//! ```

use pgwarden_sdk::crds::BackupTarget;
use pgwarden_sdk::prelude::*;
use serde::Deserialize;

/// The production policy.
pub struct ProductionPolicy;

/// The settings' defaults: what the policy did before it had settings.
pub const DEFAULT_CPU: &str = "500m";
pub const DEFAULT_MEMORY: &str = "1Gi";
pub const DEFAULT_JOBS: u32 = 4;
/// WAL files archived in parallel unless the Cluster says otherwise.
pub const WAL_MAX_PARALLEL: u32 = 4;
/// How long the primary must have been unhealthy before a failover: twice the default's, so
/// that a node's brief outage or a slow restart does not cost a promotion (and the
/// transactions a standby had not received yet).
pub const DEFAULT_FAILOVER_DELAY_SECONDS: u64 = 60;

/// The production policy's settings.
#[derive(Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ProductionSettings {
    /// CPU request of an instance pod whose Cluster sets none.
    #[serde(default = "default_cpu")]
    pub cpu: String,
    /// Memory request of an instance pod whose Cluster sets none.
    #[serde(default = "default_memory")]
    pub memory: String,
    /// Parallel upload jobs of a base backup whose Cluster sets none.
    #[serde(default = "default_jobs")]
    pub jobs: u32,
    /// Seconds the primary must have been unhealthy before a standby is promoted.
    #[serde(default = "default_failover_delay")]
    pub failover_delay_seconds: u64,
}

fn default_failover_delay() -> u64 {
    DEFAULT_FAILOVER_DELAY_SECONDS
}

fn default_cpu() -> String {
    DEFAULT_CPU.into()
}

fn default_memory() -> String {
    DEFAULT_MEMORY.into()
}

fn default_jobs() -> u32 {
    DEFAULT_JOBS
}

impl ProductionSettings {
    /// The settings, read and checked: a denial names the field at fault.
    pub fn read(settings: &Settings) -> Decided<Self> {
        let parsed: Self = settings.parse()?;
        let invalid = |field: &str, what: String| {
            Err(Denial::new(
                "InvalidSettings",
                format!("settings.{field}: {what}"),
            ))
        };
        for (field, value) in [("cpu", &parsed.cpu), ("memory", &parsed.memory)] {
            if !is_quantity(value) {
                return invalid(
                    field,
                    format!("{value:?} is not a Kubernetes quantity, like 500m, 2 or 1Gi"),
                );
            }
        }
        if !(1..=64).contains(&parsed.jobs) {
            return invalid("jobs", format!("{} is not within 1..=64", parsed.jobs));
        }
        if !(5..=3600).contains(&parsed.failover_delay_seconds) {
            return invalid(
                "failoverDelaySeconds",
                format!("{} is not within 5..=3600", parsed.failover_delay_seconds),
            );
        }
        Ok(parsed)
    }
}

/// A plain Kubernetes quantity: a positive decimal number with an optional SI or binary
/// suffix (`500m`, `2`, `1.5Gi`).
fn is_quantity(text: &str) -> bool {
    const SUFFIXES: [&str; 14] = [
        "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "m", "k", "M", "G", "T", "P", "E", "",
    ];
    let number = SUFFIXES
        .iter()
        .find_map(|s| text.strip_suffix(s).filter(|n| !n.is_empty()));
    number.is_some_and(|n| {
        n.bytes().all(|b| b.is_ascii_digit() || b == b'.')
            && n.bytes().filter(|&b| b == b'.').count() <= 1
            && n.bytes().any(|b| b != b'0' && b != b'.')
    })
}

/// New standbys come from the store once it holds a completed base backup of the Cluster
/// (`status.lastSuccessfulBackup`): a new standby then costs the primary only the WAL since
/// that backup, not a copy of every file (the host refuses `object-store` before then, and
/// standbys clone from the primary).
fn standby_clone(cluster: &Cluster) -> CloneSource {
    let backed_up = cluster
        .status
        .as_ref()
        .and_then(|s| s.last_successful_backup.as_deref())
        .is_some_and(|b| !b.is_empty());
    match backed_up {
        true => CloneSource::ObjectStore,
        false => CloneSource::Primary,
    }
}

/// The Cluster's `spec.backup` with WAL encryption, or a denial saying what to set.
fn require_encrypted_backup(cluster: &Cluster) -> Decided<Encryption> {
    let name = defaults::cluster_name(cluster);
    let store = cluster.spec.backup.as_ref().ok_or_else(|| {
        Denial::new("BackupRequired", format!("the production policy requires a backup: Cluster {name} has no spec.backup (set spec.backup.destinationPath, spec.backup.s3Credentials and spec.backup.wal.encryption)"))
    })?;
    store.wal.as_ref().and_then(|w| w.encryption).ok_or_else(|| {
        Denial::new("WalNotEncrypted", format!("the production policy requires encrypted WAL: set spec.backup.wal.encryption of Cluster {name} to AES256 or aws:kms"))
    })
}

impl Policy for ProductionPolicy {
    fn validate_settings(settings: &Settings) -> Decided<()> {
        ProductionSettings::read(settings).map(|_| ())
    }

    /// A Cluster must be backed up with encrypted WAL: checked once, before the decisions
    /// about its objects.
    fn validate(_settings: &Settings, cluster: &Cluster) -> Decided<()> {
        require_encrypted_backup(cluster).map(|_| ())
    }

    fn instance_pod(
        settings: &Settings,
        cluster: &Cluster,
        instance: u32,
        _instances: &[Instance],
    ) -> Decided<PodTemplateSpec> {
        let settings = ProductionSettings::read(settings)?;
        let requests = [("cpu", settings.cpu.as_str()), ("memory", &settings.memory)];
        Ok(defaults::instance_pod(cluster, instance)?
            .default_requests(&requests)
            .build())
    }

    fn archive_settings(
        _settings: &Settings,
        cluster: &Cluster,
    ) -> Decided<Option<ArchiveSettings>> {
        let mut settings = defaults::archive_settings(cluster)?;
        let wal = cluster.spec.backup.as_ref().and_then(|b| b.wal.as_ref());
        if let Some(s) = settings.as_mut() {
            s.compression.get_or_insert(WalCompression::Zstd);
            if wal.and_then(|w| w.max_parallel).is_none() {
                s.max_parallel = WAL_MAX_PARALLEL;
            }
            s.standby_clone = standby_clone(cluster);
        }
        Ok(settings)
    }

    fn backup_settings(
        settings: &Settings,
        backup: &Backup,
        cluster: &Cluster,
        instances: &[Instance],
    ) -> Decided<BackupSettings> {
        // A Backup is asked about on its own (no `validate` first): the check stays here,
        // and gives the encryption base backups inherit.
        let wal_encryption = require_encrypted_backup(cluster)?;
        let jobs = ProductionSettings::read(settings)?.jobs;
        let mut settings = defaults::backup_settings(backup, cluster, instances)?;
        let target = backup.spec.target.unwrap_or(BackupTarget::PreferStandby);
        settings.target_pod = defaults::target_pod(target, cluster, instances)?;
        settings.encryption.get_or_insert(wal_encryption);
        settings.compression.get_or_insert(DataCompression::Gzip);
        let data = cluster.spec.backup.as_ref().and_then(|b| b.data.as_ref());
        if data.and_then(|d| d.jobs).is_none() {
            settings.jobs = jobs;
        }
        Ok(settings)
    }

    fn retention(
        _settings: &Settings,
        cluster: &Cluster,
        backups: &[Backup],
        now: DateTime<Utc>,
    ) -> Decided<Vec<Expiry>> {
        Ok(defaults::retention(cluster, backups, now)?
            .into_iter()
            .map(Expiry::keep)
            .collect())
    }

    fn failover(settings: &Settings, facts: &FailoverFacts) -> Decided<Option<Promotion>> {
        let delay = ProductionSettings::read(settings)?.failover_delay_seconds;
        defaults::failover(facts, delay)
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
