//! The [`Policy`] trait: one method per decision, each defaulting to pgwarden's default
//! behaviour ([`crate::defaults`]). A custom policy overrides only what it changes.

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use pgwarden_crds::settings::{ArchiveSettings, BackupSettings};
use pgwarden_crds::{Backup, Cluster, ScheduledBackup};

use crate::defaults;
use crate::types::{BackupFacts, Denial, Expiry, Instance, ScheduleDecision, Transition};

/// A decision, or a denial: a reason and a message that tells the user what to change.
pub type Decided<T> = Result<T, Denial>;

/// A reconcile policy. Every method is a pure function of its inputs: no clock (the host
/// passes `now`), no randomness, no I/O.
pub trait Policy {
    /// The pod template of instance number `instance` (0 = the first, the primary).
    fn instance_pod(cluster: &Cluster, instance: u32) -> Decided<PodTemplateSpec> {
        defaults::instance_pod(cluster, instance).map(|pod| pod.build())
    }

    /// How WAL is archived; `None` turns archiving off.
    fn archive_settings(cluster: &Cluster) -> Decided<Option<ArchiveSettings>> {
        defaults::archive_settings(cluster)
    }

    /// How a Backup is taken, and on which instance.
    fn backup_settings(
        backup: &Backup,
        cluster: &Cluster,
        instances: &[Instance],
    ) -> Decided<BackupSettings> {
        defaults::backup_settings(backup, cluster, instances)
    }

    /// The next phase of a Backup, from the facts.
    fn backup_transition(facts: &BackupFacts) -> Decided<Transition> {
        defaults::backup_transition(facts)
    }

    /// Whether a ScheduledBackup creates a Backup now, and when it runs next.
    fn schedule(scheduled: &ScheduledBackup, now: DateTime<Utc>) -> Decided<ScheduleDecision> {
        defaults::schedule(scheduled, now)
    }

    /// The Backups of `cluster` whose backups to delete from the store, and whether their
    /// objects go too (default: the seed's retention, objects removed).
    fn retention(
        cluster: &Cluster,
        backups: &[Backup],
        now: DateTime<Utc>,
    ) -> Decided<Vec<Expiry>> {
        Ok(defaults::retention(cluster, backups, now)?
            .into_iter()
            .map(Expiry::remove)
            .collect())
    }
}
