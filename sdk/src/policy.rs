//! The [`Policy`] trait: one method per decision, each defaulting to pgwarden's default
//! behaviour ([`crate::defaults`]). A custom policy overrides only what it changes.

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use pgwarden_crds::settings::{ArchiveSettings, BackupSettings};
use pgwarden_crds::{Backup, Cluster, ScheduledBackup};

use crate::defaults;
use crate::types::{
    BackupFacts, ClaimFacts, ClusterFacts, ClusterHealth, Denial, Expiry, FailoverFacts, Instance,
    Promotion, ScheduleDecision, Settings, Storage, Transition,
};

/// A decision, or a denial: a reason and a message that tells the user what to change.
pub type Decided<T> = Result<T, Denial>;

/// A reconcile policy. Every method is a pure function of its inputs: no clock (the host
/// passes `now`), no randomness, no I/O. Each gets the policy's [`Settings`] first
/// (`ReconcilePolicy.spec.settings`), which [`Policy::validate_settings`] accepted at load.
pub trait Policy {
    /// Whether the policy accepts `settings`; asked once, when the policy is loaded (default:
    /// only no settings, `{}`).
    fn validate_settings(settings: &Settings) -> Decided<()> {
        defaults::validate_settings(settings)
    }

    /// Whether the policy accepts `cluster` at all, asked before its other decisions: one
    /// place for checks that would otherwise repeat in each (default: nothing to refuse).
    fn validate(_settings: &Settings, cluster: &Cluster) -> Decided<()> {
        defaults::validate(cluster)
    }

    /// The pod template of instance number `instance` (0 = the first, the primary), knowing
    /// the instance pods observed (`instances`: who is primary, what is ready).
    fn instance_pod(
        _settings: &Settings,
        cluster: &Cluster,
        instance: u32,
        _instances: &[Instance],
    ) -> Decided<PodTemplateSpec> {
        defaults::instance_pod(cluster, instance).map(|pod| pod.build())
    }

    /// The storage of instance `instance`'s data volume claim (`current`: the claim as
    /// observed, none before it exists). Default: `spec.storage`; it grows nothing by itself.
    fn storage(
        _settings: &Settings,
        cluster: &Cluster,
        _instance: u32,
        current: Option<&ClaimFacts>,
    ) -> Decided<Storage> {
        defaults::storage(cluster, current)
    }

    /// How WAL is archived; `None` turns archiving off.
    fn archive_settings(
        _settings: &Settings,
        cluster: &Cluster,
    ) -> Decided<Option<ArchiveSettings>> {
        defaults::archive_settings(cluster)
    }

    /// How a Backup is taken, and on which instance.
    fn backup_settings(
        _settings: &Settings,
        backup: &Backup,
        cluster: &Cluster,
        instances: &[Instance],
    ) -> Decided<BackupSettings> {
        defaults::backup_settings(backup, cluster, instances)
    }

    /// The next phase of a Backup, from the facts.
    fn backup_transition(_settings: &Settings, facts: &BackupFacts) -> Decided<Transition> {
        defaults::backup_transition(facts)
    }

    /// Whether a ScheduledBackup creates a Backup now, and when it runs next.
    fn schedule(
        _settings: &Settings,
        scheduled: &ScheduledBackup,
        now: DateTime<Utc>,
    ) -> Decided<ScheduleDecision> {
        defaults::schedule(scheduled, now)
    }

    /// The Backups of `cluster` whose backups to delete from the store, and whether their
    /// objects go too (default: the seed's retention, objects removed).
    fn retention(
        _settings: &Settings,
        cluster: &Cluster,
        backups: &[Backup],
        now: DateTime<Utc>,
    ) -> Decided<Vec<Expiry>> {
        Ok(defaults::retention(cluster, backups, now)?
            .into_iter()
            .map(Expiry::remove)
            .collect())
    }

    /// The Cluster's phase and `Ready` condition from what the host observed: what counts
    /// as healthy or degraded (default: [`defaults::cluster_status`]).
    fn cluster_status(_settings: &Settings, facts: &ClusterFacts) -> Decided<ClusterHealth> {
        defaults::cluster_status(facts)
    }

    /// Whether a standby is promoted now, from the instances' replication facts and how long
    /// the primary has been unhealthy (default: [`defaults::failover`] after
    /// [`defaults::FAILOVER_DELAY_SECONDS`]). The host refuses a promotion of an unknown
    /// instance, of the current primary, or of a standby that is not streaming.
    fn failover(_settings: &Settings, facts: &FailoverFacts) -> Decided<Option<Promotion>> {
        defaults::failover(facts, defaults::FAILOVER_DELAY_SECONDS)
    }
}
