//! Backups: phase transitions as status patches and events, scheduled Backups (retention is
//! in [`super::retention`]).

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource;
use pgwarden_crds::settings::{BackupSettings, pod};
use pgwarden_crds::{
    Backup, BackupOwnerReference, BackupPhase, BackupSpec, Cluster, LocalObjectReference,
    ScheduledBackup,
};
use pgwarden_sdk::types::{ScheduleDecision, Transition};
use serde_json::json;

use super::actions::{Action, EventType};
use super::guardrails::Subject;
use super::meta::{reference, time};

fn phase_name(phase: BackupPhase) -> String {
    serde_json::to_value(phase)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// The subject of a Backup's reconcile.
pub fn backup_subject(backup: &Backup) -> Subject {
    Subject {
        object: reference(backup),
        uid: backup.metadata.uid.clone().unwrap_or_default(),
        cluster: backup.spec.cluster.name.clone(),
    }
}

/// The subject of a ScheduledBackup's reconcile.
pub fn scheduled_subject(scheduled: &ScheduledBackup) -> Subject {
    Subject {
        object: reference(scheduled),
        uid: scheduled.metadata.uid.clone().unwrap_or_default(),
        cluster: scheduled.spec.cluster.name.clone(),
    }
}

/// A transition as a status patch (with `startedAt` when it starts running, `stoppedAt` when
/// it ends, the target pod and store when it starts), an Event when the phase changes, and a
/// requeue if the policy asks for one. No change: no patch.
pub fn plan_backup(
    backup: &Backup,
    cluster: Option<&Cluster>,
    transition: &Transition,
    settings: Option<&BackupSettings>,
    now: DateTime<Utc>,
) -> Vec<Action> {
    let status = backup.status.clone().unwrap_or_default();
    let before = status.phase;
    let mut patch = json!({
        "phase": phase_name(transition.phase),
        "reason": transition.reason,
        "message": transition.message,
    });
    if transition.phase == BackupPhase::Running && status.started_at.is_none() {
        patch["startedAt"] = json!(time(now));
    }
    if transition.phase.is_final() && status.stopped_at.is_none() {
        patch["stoppedAt"] = json!(time(now));
    }
    if let (BackupPhase::Running, Some(settings)) = (transition.phase, settings) {
        patch["instanceID"] = json!({ "podName": settings.target_pod });
        if let Some(store) = cluster.and_then(|c| c.spec.backup.as_ref()) {
            patch["destinationPath"] = json!(store.destination_path);
            let server = store
                .server_name
                .clone()
                .or_else(|| cluster.and_then(|c| c.metadata.name.clone()));
            patch["serverName"] = json!(server);
        }
    }
    let unchanged = before == Some(transition.phase)
        && status.reason.as_deref() == Some(transition.reason.as_str())
        && status.message.as_deref() == Some(transition.message.as_str());
    let target = reference(backup);
    let mut actions = Vec::new();
    if !unchanged {
        actions.push(Action::PatchStatus {
            target: target.clone(),
            status: patch,
        });
    }
    if before.unwrap_or(BackupPhase::Pending) != transition.phase
        || before.is_none() && transition.phase == BackupPhase::Pending
    {
        let event_type = if transition.phase == BackupPhase::Failed {
            EventType::Warning
        } else {
            EventType::Normal
        };
        actions.push(Action::Event {
            regarding: target,
            event_type,
            reason: transition.reason.clone(),
            note: transition.message.clone(),
        });
    }
    if let Some(after) = transition.requeue_after_seconds {
        actions.push(Action::Requeue {
            after_seconds: after.into(),
        });
    }
    actions
}

/// A scheduled run as a new Backup (owned as `backupOwnerReference` says, labelled with its
/// Cluster), then the ScheduledBackup's status, and a requeue at the next run.
pub fn plan_schedule(
    scheduled: &ScheduledBackup,
    cluster: Option<&Cluster>,
    decision: &ScheduleDecision,
    now: DateTime<Utc>,
) -> Vec<Action> {
    let mut actions = Vec::new();
    let mut status =
        json!({ "lastCheckTime": time(now), "nextScheduleTime": decision.next_run.map(time) });
    if let Some(run) = &decision.create {
        let owner: Option<OwnerReference> =
            match scheduled.spec.backup_owner_reference.unwrap_or_default() {
                BackupOwnerReference::None => None,
                BackupOwnerReference::OwnedBySelf => scheduled.controller_owner_ref(&()),
                BackupOwnerReference::Cluster => cluster.and_then(|c| c.controller_owner_ref(&())),
            };
        let backup = Backup {
            metadata: ObjectMeta {
                name: Some(run.name.clone()),
                namespace: scheduled.metadata.namespace.clone(),
                labels: Some(
                    [
                        (
                            pod::LABEL_CLUSTER.to_string(),
                            scheduled.spec.cluster.name.clone(),
                        ),
                        (
                            "postgresql.k8s.2ndq.io/scheduled-backup".to_string(),
                            scheduled.metadata.name.clone().unwrap_or_default(),
                        ),
                    ]
                    .into(),
                ),
                owner_references: owner.map(|o| vec![o]),
                ..Default::default()
            },
            spec: BackupSpec {
                cluster: LocalObjectReference {
                    name: scheduled.spec.cluster.name.clone(),
                },
                target: None,
            },
            status: None,
        };
        actions.push(Action::Apply {
            target: reference(&backup),
            object: serde_json::to_value(&backup).unwrap_or_default(),
        });
        status["lastScheduleTime"] = json!(time(run.scheduled_at));
        actions.push(Action::Event {
            regarding: reference(scheduled),
            event_type: EventType::Normal,
            reason: "BackupCreated".into(),
            note: format!(
                "created Backup {} for the run of {}",
                run.name,
                time(run.scheduled_at)
            ),
        });
    }
    // The status that records the run comes after the Backup: an operator stopped between
    // the two (or a failed apply) leaves the run to the next reconcile, which creates the
    // same Backup (its name derives from the run), rather than a run marked done without one.
    actions.push(Action::PatchStatus {
        target: reference(scheduled),
        status,
    });
    if let Some(next) = decision.next_run {
        actions.push(Action::Requeue {
            after_seconds: (next - now).num_seconds().max(1) as u64,
        });
    }
    actions
}
