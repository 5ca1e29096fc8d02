//! The Backup's status: the operator's fields of it (phase, reason, message, start and stop
//! times, the instance and store it runs on, the settings the policy decided when it started,
//! `PolicyApplied`), computed whole from the stored status and this reconcile's answer.
//! Written by server-side apply under the operator's manager: the agent's fields (`agent`,
//! `backupId`, the WAL and LSN bounds, `error`) and the retention's `deletion` are never in
//! it, so the apply neither owns nor removes them.

use chrono::{DateTime, SecondsFormat, Utc};
use k8s_openapi::jiff::Timestamp;
use pgwarden_crds::settings::BackupSettings;
use pgwarden_crds::{BackupPhase, BackupStatus, Cluster, InstanceId};
use pgwarden_sdk::types::{Instance, Role, Transition};

use crate::conditions::{self, DesiredCondition};

/// The condition a failed decision (or its recovery) sets on a Backup.
pub const POLICY_APPLIED: &str = pgwarden_crds::condition_types::POLICY_APPLIED;
/// The condition that says, for a `prefer-standby` Backup, whether it runs on a standby or
/// fell back to the primary (and why).
pub const ON_STANDBY: &str = "OnStandby";

/// What this reconcile says of the Backup.
#[derive(Clone, Debug)]
pub enum BackupAnswer<'a> {
    /// The policy's transition, with the settings it decided while the Backup had no
    /// instance yet, and the Backup's Cluster (its store) as observed.
    Decided {
        transition: &'a Transition,
        settings: Option<&'a BackupSettings>,
        cluster: Option<&'a Cluster>,
        /// The policy that decided, for `PolicyApplied` once a failure is over.
        policy: &'a str,
        /// Where a `prefer-standby` Backup went, set when it starts ([`placement`]).
        placement: Option<&'a DesiredCondition>,
    },
    /// No decision: the condition that says why (`PolicyApplied` False). A Backup without a
    /// phase gets `pending` with its reason and message.
    Failed(DesiredCondition),
    /// The Cluster of a Backup that ran was deleted: the backup cannot finish (its pod went
    /// with the Cluster), so the Backup fails, naming the Cluster.
    ClusterDeleted { cluster: &'a str },
}

/// Only the operator's fields of `before`: what its last apply set.
fn operator_fields(before: &BackupStatus) -> BackupStatus {
    BackupStatus {
        phase: before.phase,
        started_at: before.started_at.clone(),
        stopped_at: before.stopped_at.clone(),
        reason: before.reason.clone(),
        message: before.message.clone(),
        destination_path: before.destination_path.clone(),
        server_name: before.server_name.clone(),
        instance_id: before.instance_id.clone(),
        settings: before.settings.clone(),
        conditions: before.conditions.clone(),
        ..BackupStatus::default()
    }
}

/// The Backup's whole operator status after `answer`, at `now`.
pub fn backup_status(
    before: &BackupStatus,
    answer: &BackupAnswer<'_>,
    generation: Option<i64>,
    now: DateTime<Utc>,
) -> BackupStatus {
    let mut status = operator_fields(before);
    let stamp = Timestamp::from_second(now.timestamp()).unwrap_or_default();
    match answer {
        BackupAnswer::Decided {
            transition,
            settings,
            cluster,
            policy,
            placement,
        } => {
            decided(&mut status, transition, *settings, *cluster, now);
            if let Some(wanted) = placement {
                status.conditions = conditions::set(&status.conditions, wanted, generation, stamp);
            }
            // Back to True only after a failure had set it False: no condition otherwise.
            let failed = (before.conditions.iter())
                .any(|c| c.type_ == POLICY_APPLIED && c.status == "False");
            if failed {
                let message = format!("decisions of policy {policy} applied");
                let wanted = DesiredCondition::ok(POLICY_APPLIED, "Applied", message);
                status.conditions = conditions::set(&status.conditions, &wanted, generation, stamp);
            }
        }
        BackupAnswer::Failed(wanted) => {
            if before.phase.is_none() {
                status.phase = Some(BackupPhase::Pending);
                status.reason = Some(wanted.reason.clone());
                status.message = Some(wanted.message.clone());
            }
            status.conditions = conditions::set(&before.conditions, wanted, generation, stamp);
        }
        BackupAnswer::ClusterDeleted { cluster } => {
            status.phase = Some(BackupPhase::Failed);
            status.reason = Some("ClusterDeleted".into());
            status.message = Some(cluster_deleted(cluster));
            status.stopped_at = status.stopped_at.or_else(|| Some(time(now)));
        }
    }
    status
}

fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// The message of a Backup failed because its Cluster went away while it ran.
pub fn cluster_deleted(cluster: &str) -> String {
    format!(
        "Cluster {cluster} (spec.cluster.name) was deleted while the backup ran: its instance pods went with it, so the backup cannot finish; delete this Backup, and back up again once the Cluster exists"
    )
}

/// Sets the transition's phase, the times it starts or ends, and on start the instance, the
/// store and the settings the agent reads.
fn decided(
    status: &mut BackupStatus,
    transition: &Transition,
    settings: Option<&BackupSettings>,
    cluster: Option<&Cluster>,
    now: DateTime<Utc>,
) {
    status.phase = Some(transition.phase);
    status.reason = Some(transition.reason.clone());
    status.message = Some(transition.message.clone());
    if transition.phase == BackupPhase::Running && status.started_at.is_none() {
        status.started_at = Some(time(now));
    }
    if transition.phase.is_final() && status.stopped_at.is_none() {
        status.stopped_at = Some(time(now));
    }
    let (BackupPhase::Running, Some(settings)) = (transition.phase, settings) else {
        return;
    };
    status.instance_id = Some(InstanceId {
        pod_name: Some(settings.target_pod.clone()),
    });
    status.settings = Some(settings.clone());
    if let Some(store) = cluster.and_then(|c| c.spec.backup.as_ref()) {
        status.destination_path = Some(store.destination_path.clone());
        let server = store.server_name.clone();
        status.server_name = server.or_else(|| cluster.and_then(|c| c.metadata.name.clone()));
    }
}

/// The instances a Backup's policy chooses from: a replica counts as ready only while it is a
/// healthy streaming standby, as its agent reported it in the Cluster's `instancesStatus`
/// (in recovery, streaming, ready, reported in the last [`FRESH_SECONDS`]). A pod that is
/// Ready but whose WAL receiver lost the primary would take a backup of a database that no
/// longer follows the primary; the policy then falls back to the primary.
///
/// [`FRESH_SECONDS`]: crate::failover::FRESH_SECONDS
pub fn backup_instances(
    pods: Vec<Instance>,
    cluster: &Cluster,
    now: DateTime<Utc>,
) -> Vec<Instance> {
    let reports = cluster
        .status
        .as_ref()
        .map(|s| s.instances_status.as_slice());
    let healthy = |name: &str| {
        reports.into_iter().flatten().any(|r| {
            let reported = pgwarden_sdk::convert::parse_time(r.reported_at.as_deref());
            let fresh =
                reported.is_some_and(|t| (now - t).num_seconds() <= crate::failover::FRESH_SECONDS);
            r.name == name
                && fresh
                && r.in_recovery == Some(true)
                && r.streaming == Some(true)
                && r.ready != Some(false)
        })
    };
    pods.into_iter()
        .map(|mut i| {
            if i.role == Role::Replica && !healthy(&i.name) {
                i.ready = false;
            }
            i
        })
        .collect()
}

/// `OnStandby` for a Backup the policy placed on `chosen`: True when that is a healthy
/// standby of `instances` (from [`backup_instances`]); False naming the primary it fell back
/// to when the Backup asked `prefer-standby` (`asked_standby`) and got the primary; none
/// otherwise (a policy's own default target is not known to the host).
pub fn placement(
    asked_standby: bool,
    chosen: &str,
    instances: &[Instance],
) -> Option<DesiredCondition> {
    let on = instances.iter().find(|i| i.name == chosen);
    if on.is_some_and(|i| i.role == Role::Replica && i.ready) {
        let message = format!("the backup runs on {chosen}, a streaming standby");
        return Some(DesiredCondition::ok(
            ON_STANDBY,
            "StreamingStandby",
            message,
        ));
    }
    if !asked_standby {
        return None;
    }
    let standbys: Vec<&str> = (instances.iter())
        .filter(|i| i.role == Role::Replica)
        .map(|i| i.name.as_str())
        .collect();
    let why = if standbys.is_empty() {
        "the Cluster has no standby".to_string()
    } else {
        format!(
            "no standby is ready and streaming ({})",
            standbys.join(", ")
        )
    };
    let message = format!("target prefer-standby: {why}, so the backup runs on {chosen}");
    Some(DesiredCondition::failed(
        ON_STANDBY,
        "NoHealthyStandby",
        message,
    ))
}

#[cfg(test)]
#[path = "backup_tests.rs"]
mod tests;
