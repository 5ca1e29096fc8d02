//! The Cluster's status from what the controller observed, what its reconcile did and what
//! the policy decided of its health: the phase, every condition the operator owns, the
//! Warnings to tell and when to come back.
//!
//! ```text
//!   ObservedCluster (spec, status before, pods, Backups, Secrets)  ─┐
//!   Outcome (policy applied / failed, recovery wait, rollout)      ─┤
//!   Health (the policy's cluster-status: phase and Ready)          ─┼─► cluster_status ─► ClusterReport
//!   binding (PolicyAsRequested), now                               ─┘      { status, warnings, requeue }
//! ```
//!
//! The policy decides the phase and `Ready` (what counts as degraded) from [`health_facts`];
//! the host keeps the other conditions, which report facts rather than judge them:
//! `PolicyApplied` (whether the decisions were applied), `ContinuousArchiving` (the agent's
//! report), `LastBackupSucceeded` (the Backups' phases), `PolicyAsRequested` (the platform's
//! binding) and `PodsUpToDate` (the rollout). A policy whose `cluster-status` fails cannot
//! blank the status: the stored phase and `Ready` stay, and `PolicyApplied` says why.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::jiff::Timestamp;
use pgwarden_crds::{ArchiveStatus, BackupPhase, Cluster, PolicyInForce, condition_types as types};
use pgwarden_sdk::types::{ClusterFacts, ClusterHealth, Denial, Instance};
use serde::Serialize;

use crate::conditions::{self, DesiredCondition};

/// The Cluster's instance pods as observed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Instances {
    pub total: i32,
    pub ready: i32,
    /// The pod name of the primary, if one is ready.
    pub primary: Option<String>,
}

/// A Backup of the Cluster, as observed (only those in a final phase count).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedBackup {
    pub name: String,
    pub phase: Option<BackupPhase>,
    /// `status.stoppedAt` (RFC 3339, so that text order is time order).
    pub stopped_at: String,
    pub message: String,
}

/// What the Cluster controller observed, as plain data.
#[derive(Clone, Debug, Default)]
pub struct ObservedCluster {
    pub namespace: String,
    pub generation: Option<i64>,
    /// `spec.instances`.
    pub instances_wanted: i32,
    /// `spec.backup` is set.
    pub backup_configured: bool,
    /// `status.conditions` as stored.
    pub conditions: Vec<Condition>,
    /// `status.phase` as stored (kept when the policy cannot decide a new one).
    pub phase: Option<String>,
    /// `status.archive`, as the primary's agent reported it.
    pub archive: Option<ArchiveStatus>,
    pub instances: Instances,
    /// One message per credential `spec.backup` names and the namespace lacks.
    pub missing_secrets: Vec<String>,
    pub backups: Vec<ObservedBackup>,
}

/// What the reconcile did with the policy's decisions.
#[derive(Clone, Debug)]
pub enum Outcome {
    /// The decisions were applied, by this policy.
    Applied {
        policy: PolicyInForce,
        /// A recovery that cannot start yet: the condition reason and message.
        waiting: Option<(String, String)>,
        /// `PodsUpToDate`, from the rollout's decision.
        rollout: DesiredCondition,
    },
    /// Nothing was applied: the reason and message of the error (`NameInUse` when one of
    /// the Cluster's names is taken by an object it does not control; the policy's
    /// `cluster-status` sees it in [`ClusterFacts::failure`]).
    Failed { reason: String, message: String },
}

/// What the policy's `cluster-status` answered: the phase and `Ready`, or why it could not
/// (a denial, a crash, no policy to ask).
pub type Health = Result<ClusterHealth, Denial>;

/// The status fields the operator owns (server-side apply under its field manager): the
/// agent's `archive` and `parameters` are left out, so an apply never touches them.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterStatus {
    pub phase: String,
    pub instances: i32,
    pub ready_instances: i32,
    pub current_primary: Option<String>,
    /// Who is to be the primary ([`crate::failover::elect`]; set by [`ClusterReport::elect`]).
    pub target_primary: Option<String>,
    pub conditions: Vec<Condition>,
    pub policy: Option<PolicyInForce>,
    pub last_successful_backup: Option<String>,
    pub last_failed_backup: Option<String>,
    pub observed_generation: Option<i64>,
}

/// A Warning Event to tell about the Cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Warning {
    pub reason: String,
    pub message: String,
}

/// The status, the Warnings and when to reconcile again.
#[derive(Clone, Debug, PartialEq)]
pub struct ClusterReport {
    pub status: ClusterStatus,
    pub warnings: Vec<Warning>,
    pub requeue_seconds: u64,
}

impl ClusterReport {
    /// The report with the host's `election` of the primary: `targetPrimary`, the
    /// `PrimaryElected` condition (a Warning when it turns False or changes its refusal) and
    /// the earlier requeue while the primary is unhealthy.
    pub fn elect(&mut self, election: crate::failover::Election, now: Timestamp) {
        let before = self.status.conditions.clone();
        let wanted = [election.condition];
        self.status.target_primary = election.target_primary;
        let generation = self.status.observed_generation;
        self.status.conditions = conditions::set_all(&before, &wanted, generation, now);
        self.warnings.extend(warnings(&before, &wanted));
        if let Some(seconds) = election.requeue_seconds {
            self.requeue_seconds = self.requeue_seconds.min(seconds);
        }
    }
}

/// What the policy decides the phase and `Ready` from: the Cluster as observed (with its
/// stored status), its instance pods, the credentials it lacks and what the reconcile did.
pub fn health_facts(
    cluster: &Cluster,
    instances: Vec<Instance>,
    observed: &ObservedCluster,
    outcome: &Outcome,
    now: Timestamp,
) -> ClusterFacts {
    let denial = |(reason, message): (&String, &String)| Denial {
        reason: reason.clone(),
        message: message.clone(),
    };
    let (failure, waiting) = match outcome {
        Outcome::Failed {
            reason, message, ..
        } => (Some(denial((reason, message))), None),
        Outcome::Applied { waiting, .. } => (None, waiting.as_ref().map(|(r, m)| denial((r, m)))),
    };
    ClusterFacts {
        cluster: cluster.clone(),
        instances,
        missing_secrets: observed.missing_secrets.clone(),
        failure,
        waiting,
        now: pgwarden_sdk::convert::from_jiff(now),
    }
}

/// The Cluster's status from the observed facts, the outcome of the reconcile, the policy's
/// `health` and the `PolicyAsRequested` condition of the namespace's binding.
pub fn cluster_status(
    observed: &ObservedCluster,
    outcome: &Outcome,
    health: &Health,
    binding: DesiredCondition,
    now: Timestamp,
) -> ClusterReport {
    let (last_ok, last_failed, last_backup) = last_backups(&observed.backups);
    let mut wanted = vec![
        continuous_archiving(observed),
        policy_applied(outcome, health),
        binding,
    ];
    let (phase, ready) = phase_and_ready(observed, health);
    // No `Ready` (a failed cluster-status): the stored condition stays.
    wanted.splice(0..0, ready);
    wanted.extend(last_backup);
    if let Outcome::Applied { rollout, .. } = outcome {
        wanted.push(rollout.clone());
    }
    let generation = observed.generation;
    let status = ClusterStatus {
        phase,
        instances: observed.instances.total,
        ready_instances: observed.instances.ready,
        current_primary: observed.instances.primary.clone(),
        target_primary: None,
        conditions: conditions::set_all(&own_conditions(observed), &wanted, generation, now),
        policy: match outcome {
            Outcome::Applied { policy, .. } => Some(policy.clone()),
            Outcome::Failed { .. } => None,
        },
        last_successful_backup: last_ok,
        last_failed_backup: last_failed,
        observed_generation: generation,
    };
    ClusterReport {
        status,
        warnings: warnings(&observed.conditions, &wanted),
        requeue_seconds: requeue_seconds(observed, outcome, health),
    }
}

/// The stored conditions this status carries over: all but `RetentionApplied`, which the
/// retention sets by its own apply (field manager `pgwarden-retention`); carried here too, it
/// would have two owners and a stale copy would overwrite the retention's.
fn own_conditions(observed: &ObservedCluster) -> Vec<Condition> {
    conditions::without(&observed.conditions, types::RETENTION_APPLIED)
}

/// The phase the host writes when no instance pod is ready and neither the policy nor the
/// stored status said the Cluster is not ready.
pub const NO_INSTANCE_READY: &str = "No instance ready";

/// The phase and `Ready` (`None`: the stored condition stays): the policy's; after a failed
/// cluster-status, the stored ones (no phase stored yet: "Unknown"). Either way, with no
/// instance pod ready the Cluster is not shown ready: a "ready" answer or a stored one gives
/// way to the host's `NoInstanceReady`, with the phase [`NO_INSTANCE_READY`], so that the
/// phase, `Ready` and the Ready column (`readyInstances`) agree. What counts as degraded is
/// the policy's; that no database serves is a fact (docs/policy-boundary.md).
fn phase_and_ready(
    observed: &ObservedCluster,
    health: &Health,
) -> (String, Option<DesiredCondition>) {
    let (phase, ready) = match health {
        Ok(health) => (health.phase.clone(), Some(ready(health))),
        Err(_) => (
            observed.phase.clone().unwrap_or_else(|| "Unknown".into()),
            None,
        ),
    };
    let wanted = observed.instances_wanted;
    if observed.instances.ready > 0 || wanted <= 0 {
        return (phase, ready);
    }
    let said_not_ready = match &ready {
        Some(ready) => !ready.ok,
        None => {
            (observed.conditions.iter()).any(|c| c.type_ == types::READY && c.status == "False")
        }
    };
    if said_not_ready {
        return (phase, ready);
    }
    let none_ready = DesiredCondition::failed(
        types::READY,
        "NoInstanceReady",
        format!("0 of {wanted} instances ready"),
    );
    (NO_INSTANCE_READY.into(), Some(none_ready))
}

/// A failure (of the decisions or of the policy's `cluster-status`) is retried in 30 s;
/// credentials missing, a recovery waiting or a rollout under way are looked at again in
/// 10 s; a steady Cluster in 5 minutes.
fn requeue_seconds(observed: &ObservedCluster, outcome: &Outcome, health: &Health) -> u64 {
    match outcome {
        Outcome::Failed { .. } => 30,
        Outcome::Applied { .. } if health.is_err() => 30,
        Outcome::Applied {
            waiting, rollout, ..
        } if !observed.missing_secrets.is_empty() || waiting.is_some() || !rollout.ok => 10,
        Outcome::Applied { .. } => 300,
    }
}

/// `Ready` as the policy decided it.
fn ready(health: &ClusterHealth) -> DesiredCondition {
    let ready = &health.ready;
    DesiredCondition {
        type_: types::READY,
        ok: ready.status,
        reason: ready.reason.clone(),
        message: ready.message.clone(),
    }
}

/// `PolicyApplied` from the outcome of the decisions and of the policy's `cluster-status`.
fn policy_applied(outcome: &Outcome, health: &Health) -> DesiredCondition {
    match (outcome, health) {
        (Outcome::Applied { policy, .. }, Err(denial)) => DesiredCondition::failed(
            types::POLICY_APPLIED,
            denial.reason.clone(),
            format!(
                "decisions of policy {} applied, but its cluster-status failed, so the phase and Ready stay as stored (unless no instance is ready): {}",
                policy.name.as_deref().unwrap_or_default(),
                denial.message
            ),
        ),
        (Outcome::Applied { policy, .. }, Ok(_)) => DesiredCondition::ok(
            types::POLICY_APPLIED,
            "Applied",
            format!(
                "decisions of policy {} (sha256:{}) applied",
                policy.name.as_deref().unwrap_or_default(),
                policy.digest.as_deref().unwrap_or_default()
            ),
        ),
        (
            Outcome::Failed {
                reason, message, ..
            },
            _,
        ) => DesiredCondition::failed(types::POLICY_APPLIED, reason.clone(), message.clone()),
    }
}

/// `ContinuousArchiving` from the spec, the credentials and the agent's facts.
fn continuous_archiving(observed: &ObservedCluster) -> DesiredCondition {
    if !observed.backup_configured {
        return DesiredCondition::failed(
            types::CONTINUOUS_ARCHIVING,
            "NotConfigured",
            "spec.backup is not set: WAL is not archived",
        );
    }
    if !observed.missing_secrets.is_empty() {
        let message = observed.missing_secrets.join("; ");
        return DesiredCondition::failed(types::CONTINUOUS_ARCHIVING, "SecretNotFound", message);
    }
    archiving(observed.archive.as_ref())
}

/// `ContinuousArchiving` from the agent's facts.
pub fn archiving(archive: Option<&ArchiveStatus>) -> DesiredCondition {
    let Some(a) = archive else {
        return DesiredCondition::failed(
            types::CONTINUOUS_ARCHIVING,
            "WaitingForFirstReport",
            "the primary's agent has not reported WAL archiving yet",
        );
    };
    let failed_last = match (&a.last_failed_time, &a.last_archived_time) {
        (Some(failed), Some(archived)) => failed > archived,
        (Some(_), None) => true,
        _ => false,
    };
    if a.destination_checked == Some(false) || failed_last {
        let wal = a.last_failed_wal.as_deref().unwrap_or("a WAL file");
        let why = a.last_failure.as_deref().unwrap_or("no detail reported");
        let waiting = a.ready_segments.unwrap_or(0);
        return DesiredCondition::failed(
            types::CONTINUOUS_ARCHIVING,
            "ArchiveFailing",
            format!(
                "archiving {wal} failed: {why}; {waiting} WAL files wait, kept by PostgreSQL until archived"
            ),
        );
    }
    if a.last_archived_time.is_none() && a.last_archived_wal.is_none() {
        return DesiredCondition::failed(
            types::CONTINUOUS_ARCHIVING,
            "WaitingForFirstArchive",
            "no WAL file has been archived yet: PostgreSQL hands one over when a segment fills, \
             on a backup, or after archive_timeout",
        );
    }
    DesiredCondition::ok(
        types::CONTINUOUS_ARCHIVING,
        "Archiving",
        "WAL files are archived to the object store",
    )
}

/// The newest completed and failed Backups, and `LastBackupSucceeded` from the newest ended.
fn last_backups(
    backups: &[ObservedBackup],
) -> (Option<String>, Option<String>, Option<DesiredCondition>) {
    let mut ended: Vec<(&ObservedBackup, BackupPhase)> = backups
        .iter()
        .filter_map(|b| Some((b, b.phase.filter(|p| p.is_final())?)))
        .collect();
    ended.sort_by(|(a, _), (b, _)| (&a.stopped_at, &a.name).cmp(&(&b.stopped_at, &b.name)));
    let last_of = |phase: BackupPhase| {
        ended
            .iter()
            .rev()
            .find(|e| e.1 == phase)
            .map(|e| e.0.name.clone())
    };
    let condition = ended.last().map(|(backup, phase)| match phase {
        BackupPhase::Completed => DesiredCondition::ok(
            types::LAST_BACKUP_SUCCEEDED,
            "BackupCompleted",
            format!("Backup {} completed", backup.name),
        ),
        _ => DesiredCondition::failed(
            types::LAST_BACKUP_SUCCEEDED,
            "BackupFailed",
            format!("Backup {} failed: {}", backup.name, backup.message),
        ),
    });
    (
        last_of(BackupPhase::Completed),
        last_of(BackupPhase::Failed),
        condition,
    )
}

/// A Warning for each condition that turns False or changes its failure message.
fn warnings(before: &[Condition], wanted: &[DesiredCondition]) -> Vec<Warning> {
    // One Event for a failure two conditions report (NameInUse: Ready and PolicyApplied).
    let mut seen = std::collections::BTreeSet::new();
    wanted
        .iter()
        .filter(|w| !w.ok)
        .filter(|w| seen.insert((&w.reason, &w.message)))
        .filter(|w| {
            !before
                .iter()
                .any(|c| c.type_ == w.type_ && c.status == "False" && c.message == w.message)
        })
        .filter(|w| w.reason != "WaitingForFirstReport" && w.reason != "InstancesNotReady")
        // A rollout under way is no failure: its own Normal Event says which pod goes.
        .filter(|w| w.type_ != types::PODS_UP_TO_DATE)
        .map(|w| Warning {
            reason: w.reason.clone(),
            message: w.message.clone(),
        })
        .collect()
}

#[cfg(test)]
#[path = "cluster_tests.rs"]
mod tests;
