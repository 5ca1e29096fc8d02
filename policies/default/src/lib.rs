//! pgwarden's default policy: the SDK's defaults, with WAL through the native archiver.
//!
//! - WAL: `pgwarden instance wal-archive %p` → the agent's native archiver (`archiver:
//!   native`: resident, maxParallel uploads ahead of PostgreSQL, barman's store format) with
//!   the Cluster's destination, endpoint, compression and encryption; no `spec.backup`, no
//!   archiving. `barman-cloud-wal-archive` instead is one line away: `Archiver::BarmanCloud`
//!   below (the SDK's default).
//! - Backups: barman-cloud-backup on the primary, phases pending → running → completed | failed.
//! - Schedules: cron in UTC; retention: the recovery window of `spec.backup.retentionPolicy`
//!   (`7d`, `4w`, `6m` in calendar months), keeping the backup that ended before the window
//!   (it restores to the window's first moment) and every newer one.

use pgwarden_sdk::crds::settings::Archiver;
use pgwarden_sdk::prelude::*;

/// The default policy: every decision is the SDK's default but the archiver.
pub struct DefaultPolicy;

impl Policy for DefaultPolicy {
    fn archive_settings(_: &Settings, cluster: &Cluster) -> Decided<Option<ArchiveSettings>> {
        let settings = defaults::archive_settings(cluster)?;
        Ok(settings.map(|s| ArchiveSettings {
            archiver: Archiver::Native,
            ..s
        }))
    }
}

pgwarden_sdk::export_policy!(DefaultPolicy);

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::DefaultPolicy;

    #[test]
    fn fixtures() {
        pgwarden_sdk::testing::assert_fixtures::<DefaultPolicy>(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures"),
        );
    }
}
