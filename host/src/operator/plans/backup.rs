//! A Backup's plan: the policy picks the instance and settings while the Backup has none,
//! then decides the phase from the facts (the agent's report on the Backup, the target pod
//! as observed); the core computes the whole operator status from that answer.

use chrono::{DateTime, Utc};
use kube::ResourceExt;
use pgwarden_core::backup::{backup_instances, placement};
use pgwarden_core::conditions::DesiredCondition;
use pgwarden_core::{BackupAnswer, backup_status};
use pgwarden_crds::condition_types::POLICY_APPLIED;
use pgwarden_crds::settings::BackupSettings;
use pgwarden_crds::{Backup, BackupStatus, BackupTarget, Cluster};
use pgwarden_sdk::types::{BackupFacts, Transition};

use super::Plan;
use crate::operator::errors::{Error, Result};
use crate::operator::failure::{Decision, Failure, Step};
use crate::operator::registry::ChosenPolicy;
use crate::operator::snapshot::Observe;
use crate::policy::Policy;
use pgwarden_core::plan::{self, Action, EventType, guardrails};

/// How long a Backup the policy asked no requeue for waits before it is looked at again.
pub const RECHECK_SECONDS: u64 = 60;

/// The plan of `backup`, decided by `chosen` (the Cluster's policy, or why there is none).
pub fn backup(
    observed: &impl Observe,
    chosen: Result<ChosenPolicy>,
    backup: &Backup,
    now: DateTime<Utc>,
) -> Plan {
    let before = backup.status.clone().unwrap_or_default();
    if before.phase.is_some_and(|p| p.is_final()) {
        return Plan::default();
    }
    let ns = backup.namespace().unwrap_or_default();
    let cluster = observed.cluster(&ns, &backup.spec.cluster.name);
    let started = before.instance_id.is_some();
    if cluster.is_none() && started {
        return cluster_deleted(
            backup,
            &before,
            &format!("{ns}/{}", backup.spec.cluster.name),
            now,
        );
    }
    let mut step = Step::new(Decision::BackupSettings);
    let decided = chosen.and_then(|chosen| {
        step.policy = Some(chosen.name.clone());
        let cluster = cluster.as_deref();
        decide(observed, &chosen.policy, backup, cluster, &mut step, now)
    });
    let (transition, settings, placed) = match decided {
        Ok(decided) => decided,
        Err(error) => return failed(backup, &before, step.failed(error), now),
    };
    let actions = plan::plan_backup(
        backup,
        cluster.as_deref(),
        &transition,
        settings.as_ref(),
        now,
    );
    // The planner's status patch gives way to the core's whole status.
    let actions = actions
        .into_iter()
        .filter(|a| !matches!(a, Action::PatchStatus { .. }));
    let mut plan = Plan::of(actions.collect());
    let answer = BackupAnswer::Decided {
        transition: &transition,
        settings: settings.as_ref(),
        cluster: cluster.as_deref(),
        policy: step.policy.as_deref().unwrap_or_default(),
        placement: placed.as_ref(),
    };
    let status = backup_status(&before, &answer, backup.metadata.generation, now);
    if let Err(e) = guardrails::check(&plan::backup_subject(backup), &plan.events) {
        return failed(backup, &before, step.failed(Error::Guardrail(e)), now);
    }
    plan.status = Some(serde_json::to_value(status).unwrap_or_default());
    plan.requeue = plan.requeue.or(Some(RECHECK_SECONDS));
    plan
}

/// The policy's settings (asked while the Backup has no instance, with where they put it:
/// `OnStandby`) and transition.
fn decide(
    observed: &impl Observe,
    policy: &Policy,
    backup: &Backup,
    cluster: Option<&Cluster>,
    step: &mut Step,
    now: DateTime<Utc>,
) -> Result<(Transition, Option<BackupSettings>, Option<DesiredCondition>)> {
    let status = backup.status.clone().unwrap_or_default();
    let ns = backup.namespace().unwrap_or_default();
    let mut placed = None;
    let settings = match (cluster, &status.instance_id) {
        (Some(c), None) => {
            let pods = (observed.cluster_pods(c).iter())
                .map(|p| plan::instance(p))
                .collect();
            // A replica is offered ready only while it streams (see backup_instances).
            let instances = backup_instances(pods, c, now);
            let settings = policy.backup_settings(backup, c, &instances)?;
            let asked = backup.spec.target == Some(BackupTarget::PreferStandby);
            placed = placement(asked, &settings.target_pod, &instances);
            Some(settings)
        }
        _ => None,
    };
    let target = (status.instance_id.as_ref())
        .and_then(|i| i.pod_name.clone())
        .or_else(|| settings.as_ref().map(|s| s.target_pod.clone()));
    let pod = target.and_then(|name| observed.pod(&ns, &name));
    let facts = BackupFacts {
        backup: backup.clone(),
        cluster: cluster.cloned(),
        pod: pod.map(|p| plan::pod_facts(&p)),
        now,
    };
    step.decision = Decision::BackupTransition;
    Ok((policy.backup_transition(&facts)?, settings, placed))
}

/// A failed decision on the Backup: `PolicyApplied` False naming the policy and the decision
/// (and `pending` with the same reason on a Backup without a phase), a Warning Event when
/// that is new; the error goes on to the controller's backoff. An error of the API server is
/// not told on the Backup.
fn failed(backup: &Backup, before: &BackupStatus, failure: Failure, now: DateTime<Utc>) -> Plan {
    let Some(wanted) = failure.wanted(POLICY_APPLIED) else {
        return Plan {
            error: Some(failure.error),
            ..Plan::default()
        };
    };
    let already = before
        .conditions
        .iter()
        .any(|c| c.type_ == wanted.type_ && c.status == "False" && c.message == wanted.message);
    let generation = backup.metadata.generation;
    let status = backup_status(
        before,
        &BackupAnswer::Failed(wanted.clone()),
        generation,
        now,
    );
    let events = (!already)
        .then(|| warning(backup, &wanted.reason, &wanted.message))
        .into_iter()
        .collect();
    Plan {
        status: Some(serde_json::to_value(status).unwrap_or_default()),
        events,
        error: Some(failure.error),
        ..Plan::default()
    }
}

/// A Backup that ran and whose Cluster is gone: failed, `ClusterDeleted`, once.
fn cluster_deleted(
    backup: &Backup,
    before: &BackupStatus,
    cluster: &str,
    now: DateTime<Utc>,
) -> Plan {
    let answer = BackupAnswer::ClusterDeleted { cluster };
    let status = backup_status(before, &answer, backup.metadata.generation, now);
    let note = status.message.clone().unwrap_or_default();
    Plan {
        status: Some(serde_json::to_value(status).unwrap_or_default()),
        events: vec![warning(backup, "ClusterDeleted", &note)],
        ..Plan::default()
    }
}

fn warning(backup: &Backup, reason: &str, note: &str) -> Action {
    Action::Event {
        regarding: plan::reference(backup),
        event_type: EventType::Warning,
        reason: reason.into(),
        note: note.into(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::operator::snapshot::Snapshot;

    fn backup(status: serde_json::Value) -> Backup {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "postgresql.k8s.2ndq.io/v1alpha1", "kind": "Backup",
            "metadata": {"name": "b", "namespace": "ns", "generation": 1},
            "spec": {"cluster": {"name": "pg"}},
            "status": status,
        }))
        .unwrap()
    }

    fn not_found() -> Result<ChosenPolicy> {
        Err(Error::ClusterNotFound(
            "Cluster ns/pg does not exist".into(),
        ))
    }

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-30T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    /// No Cluster in the snapshot: a new Backup waits (pending, told once), one that ran fails.
    #[test]
    fn without_its_cluster_a_new_backup_waits_and_a_started_one_fails() {
        let snap = Snapshot::default();
        let new = backup(serde_json::json!(null));
        let plan = backup_plan(&snap, &new);
        assert_eq!(plan.status.as_ref().unwrap()["phase"], "pending");
        assert_eq!(plan.status.as_ref().unwrap()["reason"], "ClusterNotFound");
        assert_eq!(plan.events.len(), 1);
        assert!(matches!(plan.error, Some(Error::ClusterNotFound(_))));
        // Told already: the same status, no second Event.
        let told = backup(plan.status.clone().unwrap());
        let again = backup_plan(&snap, &told);
        assert_eq!(again.status, plan.status);
        assert!(again.events.is_empty());

        let running = backup(serde_json::json!({
            "phase": "running", "instanceID": {"podName": "pg-1"},
            "startedAt": "2026-11-30T09:00:00Z", "backupId": "x",
        }));
        let plan = backup_plan(&snap, &running);
        let status = plan.status.unwrap();
        assert_eq!(status["phase"], "failed");
        assert_eq!(status["reason"], "ClusterDeleted");
        assert_eq!(status["stoppedAt"], "2026-11-30T10:00:00Z");
        assert!(
            status.get("backupId").is_none(),
            "the agent's field: {status}"
        );
        assert!(plan.error.is_none());
        assert_eq!(plan.events.len(), 1);
    }

    fn backup_plan(snap: &Snapshot, b: &Backup) -> Plan {
        super::backup(snap, not_found(), b, now())
    }

    /// A Backup in a final phase plans nothing, whatever is observed.
    #[test]
    fn a_finished_backup_plans_nothing() {
        let snap = Snapshot {
            backups: vec![Arc::new(backup(serde_json::json!({"phase": "completed"})))],
            ..Snapshot::default()
        };
        let plan = backup_plan(&snap, &snap.backups[0]);
        assert!(plan.status.is_none() && plan.actions.is_empty() && plan.events.is_empty());
        assert_eq!(plan.requeue, None);
    }
}
