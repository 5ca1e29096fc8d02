//! pgwarden's default policy: the seed's behaviour, exactly the SDK's defaults.
//!
//! - WAL: `pgwarden instance wal-archive %p` → barman-cloud-wal-archive with the Cluster's
//!   destination, endpoint, compression and encryption; no `spec.backup`, no archiving.
//! - Backups: barman-cloud-backup on the primary, phases pending → running → completed | failed.
//! - Schedules: cron in UTC; retention: the recovery window of `spec.backup.retentionPolicy`
//!   (`7d`, `4w`, `6m` in calendar months), keeping the backup that ended before the window
//!   (it restores to the window's first moment) and every newer one.

use pgwarden_sdk::Policy;

/// The default policy: every decision is the SDK's default.
pub struct DefaultPolicy;

impl Policy for DefaultPolicy {}

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
