//! Retention: the policy's `retention` decision (which Backups are past the Cluster's
//! retention policy) → the deletion of their backups from the object store → the Backup
//! objects removed.
//!
//! ```text
//!   live Backups ─► policy.retention ─► expired names
//!   less the floor (the newest completed backup, the one that starts the recovery window,
//!   those a Cluster restores from: a host invariant, see [`floor`])
//!                                     ──► Warning Event RetentionFloor for each kept one
//!   expired, no backup id ───────────────► delete the Backup (nothing in the store)
//!   expired ─────────────────────────────► a request {pod, attempt 1} in the Cluster's
//!                                          settings ConfigMap (see [`requests`]), copied to
//!                                          status.deletion for people
//!   the agent of that pod ───────────────► barman-cloud-backup-delete -b ID,
//!                                          reports status.deletion.agent {attempt, state}
//!   succeeded, object: remove ───────────► delete the Backup, Event on the Cluster
//!   succeeded, object: keep ─────────────► condition Deleted (DeletedByRetention), Event
//!   failed ──────────────────────────────► reason DeleteFailed + Warning, again after 5 min
//!   no answer for 10 min ────────────────► asked again (the pod may be gone)
//!   status.deletion with no request ─────► ignored, Warning Event DeletionIgnored
//! ```
//!
//! Once asked, a deletion is carried through whatever the policy answers next: Backups with a
//! request are not shown to the policy again. What was asked is the operator's own record,
//! the requests; a Backup's status (which agents may write) never starts or repeats one.

use chrono::{DateTime, Utc};
use pgwarden_crds::{Backup, BackupAgentState, BackupDeletion, Cluster, ExpiredObject};
use pgwarden_sdk::types::Expiry;
use serde_json::json;

use super::actions::{Action, EventType};
use super::backup::backup_subject;
use super::cluster::subject;
use super::guardrails::Subject;
use super::meta::{reference, time};

pub mod floor;
pub mod requests;

pub use requests::Request;

/// Why a deletion is asked, in `status.deletion.reason`.
pub const REASON: &str = "Retention";
/// A failed deletion is asked again after this long.
pub const RETRY_FAILED_SECONDS: i64 = 300;
/// A deletion no agent answered is asked again after this long.
pub const RETRY_SILENT_SECONDS: i64 = 600;
/// How often an in-flight deletion is looked at.
pub const POLL_SECONDS: u64 = 30;

/// What one retention reconcile of a Cluster sees.
pub struct RetentionInput<'a> {
    pub cluster: &'a Cluster,
    /// The Cluster's Backups (others are ignored).
    pub backups: &'a [Backup],
    /// The policy's answer: Backups among [`candidates`], with the fate of their objects.
    pub expired: &'a [Expiry],
    /// The instance pod whose agent runs the deletions (the primary), if there is one.
    pub agent_pod: Option<&'a str>,
    pub now: DateTime<Utc>,
}

fn name(backup: &Backup) -> &str {
    backup.metadata.name.as_deref().unwrap_or_default()
}

fn deletion(backup: &Backup) -> Option<&BackupDeletion> {
    backup.status.as_ref()?.deletion.as_ref()
}

fn belongs(backup: &Backup, cluster: &Cluster) -> bool {
    backup.spec.cluster.name == cluster.metadata.name.as_deref().unwrap_or_default()
        && backup.metadata.namespace == cluster.metadata.namespace
}

/// The requests `status.deletion` copies describe: what a dry run (`pgwarden policy eval`,
/// with no ConfigMap) takes as asked. The operator reads its ConfigMap instead.
pub fn requests_from_status(backups: &[Backup]) -> Vec<Request> {
    backups.iter().filter_map(Request::from_status).collect()
}

fn requested<'a>(backup: &Backup, requests: &'a [Request]) -> Option<&'a Request> {
    requests.iter().find(|r| r.is_for(backup))
}

/// The Backups the policy is asked about (dry run: as [`candidates_with`] with the requests
/// of [`requests_from_status`]).
pub fn candidates(cluster: &Cluster, backups: &[Backup]) -> Vec<Backup> {
    candidates_with(cluster, backups, &requests_from_status(backups))
}

/// The Backups the policy is asked about: the Cluster's, not already being deleted (asked in
/// `requests`, or deleted and kept).
pub fn candidates_with(cluster: &Cluster, backups: &[Backup], requests: &[Request]) -> Vec<Backup> {
    backups
        .iter()
        .filter(|b| belongs(b, cluster) && requested(b, requests).is_none() && !settled(b))
        .cloned()
        .collect()
}

/// Reason and condition of a Backup kept after its backup was deleted.
pub const DELETED: &str = "DeletedByRetention";

/// A kept Backup whose deletion is over: nothing more to do.
fn settled(backup: &Backup) -> bool {
    backup.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "Deleted" && c.status == "True")
    })
}

/// Whether any Backup of the Cluster has a deletion under way (dry run: the requests of
/// [`requests_from_status`]).
pub fn in_flight(cluster: &Cluster, backups: &[Backup]) -> bool {
    in_flight_with(cluster, backups, &requests_from_status(backups))
}

/// Whether any Backup of the Cluster has a deletion asked in `requests` and not over (the
/// reconcile polls then).
pub fn in_flight_with(cluster: &Cluster, backups: &[Backup], requests: &[Request]) -> bool {
    backups
        .iter()
        .any(|b| belongs(b, cluster) && requested(b, requests).is_some() && !settled(b))
}

fn policy_text(cluster: &Cluster) -> String {
    cluster
        .spec
        .backup
        .as_ref()
        .and_then(|b| b.retention_policy.clone())
        .map_or("the policy's retention".into(), |r| {
            format!("retention policy {r}")
        })
}

/// The subject an action of [`plan_retention`] is checked against: the Backup it touches
/// (which must be one of the Cluster's), else the Cluster.
pub fn retention_subject(cluster: &Cluster, backups: &[Backup], action: &Action) -> Subject {
    let touched = action
        .target()
        .filter(|t| t.kind == "Backup")
        .and_then(|t| backups.iter().find(|b| name(b) == t.name));
    match touched {
        Some(b) if belongs(b, cluster) => backup_subject(b),
        _ => subject(cluster),
    }
}

/// The actions of one retention reconcile, with no restoring Cluster known (as
/// [`plan_retention_with`] and no [`floor::Restore`]; `pgwarden policy eval` plans so).
pub fn plan_retention(input: &RetentionInput<'_>) -> Vec<Action> {
    plan_retention_with(input, &[])
}

/// The actions of a dry run: [`plan_requested`] with the requests the Backups' status copies
/// describe ([`requests_from_status`]).
pub fn plan_retention_with(input: &RetentionInput<'_>, restores: &[floor::Restore]) -> Vec<Action> {
    plan_requested(input, restores, &requests_from_status(input.backups)).actions
}

/// What one retention reconcile does: its actions, and the deletion requests the Cluster's
/// settings ConfigMap must hold afterwards ([`requests::KEY`]).
#[derive(Debug, PartialEq)]
pub struct Planned {
    pub actions: Vec<Action>,
    pub requests: Vec<Request>,
}

/// The actions of one retention reconcile, given the deletions already asked (`requests`,
/// the operator's own record). The policy's answer first loses the Backups of the retention
/// floor ([`floor`]: the newest completed backup, the one that starts the recovery window,
/// and those a Cluster of the namespace restores from, as `restores` name them), each with a
/// Warning Event.
pub fn plan_requested(
    input: &RetentionInput<'_>,
    restores: &[floor::Restore],
    requests: &[Request],
) -> Planned {
    let (expired, mut actions) = floor::enforce(input, restores);
    let mut next = Vec::new();
    for backup in input.backups.iter().filter(|b| belongs(b, input.cluster)) {
        let expiry = expired.iter().find(|e| e.name == name(backup));
        match (requested(backup, requests), expiry) {
            (Some(_), _) if settled(backup) => {}
            (Some(r), _) => follow(input, backup, r, &mut actions, &mut next),
            (None, _) if settled(backup) => {}
            (None, Some(e)) => expire(input, backup, e.object, &mut actions, &mut next),
            (None, None) => ignored(backup, &mut actions),
        }
    }
    if !next.is_empty() || !expired.is_empty() {
        actions.push(Action::Requeue {
            after_seconds: POLL_SECONDS,
        });
    }
    Planned {
        actions,
        requests: next,
    }
}

/// A `status.deletion` the operator has no request for: someone else wrote it (an agent may
/// write any Backup's status). Nothing acts on it; the Backup gets a Warning Event.
fn ignored(backup: &Backup, actions: &mut Vec<Action>) {
    let Some(d) = deletion(backup).filter(|d| d.pod_name.is_some()) else {
        return;
    };
    actions.push(Action::Event {
        regarding: reference(backup),
        event_type: EventType::Warning,
        reason: requests::IGNORED.into(),
        note: format!(
            "status.deletion of Backup {} asks pod {} (attempt {}) to delete backup {}, but the operator asked no such deletion: ignored (deletions are asked only through the Cluster's settings ConfigMap)",
            name(backup),
            d.pod_name.as_deref().unwrap_or_default(),
            d.attempt.unwrap_or(1),
            backup
                .status
                .as_ref()
                .and_then(|s| s.backup_id.as_deref())
                .unwrap_or("(none)"),
        ),
    });
}

fn remove(backup: &Backup) -> Action {
    Action::Delete {
        target: reference(backup),
        owner_uids: backup
            .metadata
            .owner_references
            .iter()
            .flatten()
            .map(|o| o.uid.clone())
            .collect(),
        cluster: Some(backup.spec.cluster.name.clone()),
    }
}

/// Asks `pod` for attempt `attempt` of the deletion of `backup`'s backup: the request, and
/// its copy in the Backup's status (for people; nothing acts on the copy).
fn ask(
    backup: &Backup,
    pod: &str,
    attempt: u32,
    object: ExpiredObject,
    now: DateTime<Utc>,
    (actions, requests): (&mut Vec<Action>, &mut Vec<Request>),
) {
    let status = backup.status.clone().unwrap_or_default();
    requests.push(Request {
        backup: name(backup).into(),
        uid: backup.metadata.uid.clone().unwrap_or_default(),
        cluster: backup.spec.cluster.name.clone(),
        backup_id: status.backup_id.unwrap_or_default(),
        destination_path: status.destination_path,
        server_name: status.server_name,
        pod: pod.into(),
        attempt,
        requested_at: time(now),
        object,
    });
    actions.push(Action::PatchStatus {
        target: reference(backup),
        status: json!({ "deletion": {
            "reason": REASON, "requestedAt": time(now), "podName": pod, "attempt": attempt,
            "object": object,
        }}),
    });
}

/// The Backup kept, marked deleted: condition `Deleted`, reason and message.
fn mark_deleted(backup: &Backup, message: &str, now: DateTime<Utc>) -> Action {
    let status = backup.status.clone().unwrap_or_default();
    let mut conditions: Vec<serde_json::Value> = status
        .conditions
        .iter()
        .filter(|c| c.type_ != "Deleted")
        .filter_map(|c| serde_json::to_value(c).ok())
        .collect();
    conditions.push(json!({
        "type": "Deleted", "status": "True", "reason": DELETED, "message": message,
        "lastTransitionTime": time(now),
    }));
    Action::PatchStatus {
        target: reference(backup),
        status: json!({ "reason": DELETED, "message": message, "conditions": conditions }),
    }
}

/// A Backup the policy just expired.
fn expire(
    input: &RetentionInput<'_>,
    backup: &Backup,
    object: ExpiredObject,
    actions: &mut Vec<Action>,
    next: &mut Vec<Request>,
) {
    let status = backup.status.clone().unwrap_or_default();
    let policy = policy_text(input.cluster);
    let Some(id) = status.backup_id else {
        if object == ExpiredObject::Keep {
            let message = format!("past the {policy}; it has no backup in the object store");
            actions.push(mark_deleted(backup, &message, input.now));
            return;
        }
        actions.push(remove(backup));
        actions.push(Action::Event {
            regarding: reference(input.cluster),
            event_type: EventType::Normal,
            reason: "BackupExpired".into(),
            note: format!(
                "deleted Backup {}: past the {policy}, with no backup in the object store",
                name(backup)
            ),
        });
        return;
    };
    let Some(pod) = input.agent_pod else {
        return;
    };
    ask(backup, pod, 1, object, input.now, (actions, next));
    actions.push(Action::Event {
        regarding: reference(backup),
        event_type: EventType::Normal,
        reason: "BackupExpired".into(),
        note: format!(
            "backup {id} is past the {policy}: the agent of pod {pod} deletes it from {}",
            status
                .destination_path
                .as_deref()
                .unwrap_or("the object store")
        ),
    });
}

fn age(since: Option<&str>, now: DateTime<Utc>) -> i64 {
    since
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map_or(i64::MAX, |t| (now - t.with_timezone(&Utc)).num_seconds())
}

/// A Backup whose deletion was asked.
/// The request is kept (pushed to `next`) until its deletion is over; the agent's report
/// counts only for the attempt and pod asked.
fn follow(
    input: &RetentionInput<'_>,
    backup: &Backup,
    r: &Request,
    actions: &mut Vec<Action>,
    next: &mut Vec<Request>,
) {
    let report = deletion(backup)
        .and_then(|d| d.agent.as_ref())
        .filter(|a| a.attempt == Some(r.attempt) && a.pod_name.as_deref() == Some(r.pod.as_str()));
    let state = report.and_then(|a| a.state);
    let asked = age(Some(&r.requested_at), input.now);
    match state {
        Some(BackupAgentState::Succeeded) => deleted(input, backup, r, actions),
        Some(BackupAgentState::Failed) => {
            let error = report.and_then(|a| a.error.clone()).unwrap_or_default();
            delete_failed(backup, r, &error, actions);
            let due = asked >= RETRY_FAILED_SECONDS;
            retry(input, backup, r, due, (actions, next));
        }
        _ => {
            let due = asked >= RETRY_SILENT_SECONDS && state.is_none();
            retry(input, backup, r, due, (actions, next));
        }
    }
}

/// The agent deleted the backup: the Backup object removed, or kept and marked deleted, as
/// the policy asked; a Normal Event on the Cluster either way.
fn deleted(input: &RetentionInput<'_>, backup: &Backup, r: &Request, actions: &mut Vec<Action>) {
    let status = backup.status.clone().unwrap_or_default();
    let store = status
        .destination_path
        .as_deref()
        .unwrap_or("the object store");
    let (id, policy) = (&r.backup_id, policy_text(input.cluster));
    let note = if r.object == ExpiredObject::Keep {
        let message = format!("backup {id} was deleted from {store}: past the {policy}");
        actions.push(mark_deleted(backup, &message, input.now));
        format!("{message}; Backup {} is kept, marked Deleted", name(backup))
    } else {
        actions.push(remove(backup));
        format!(
            "deleted backup {id} of Backup {} from {store}: past the {policy}",
            name(backup)
        )
    };
    actions.push(Action::Event {
        regarding: reference(input.cluster),
        event_type: EventType::Normal,
        reason: "BackupDeleted".into(),
        note,
    });
}

/// The agent's deletion failed: reason `DeleteFailed` and a Warning Event, once per message.
fn delete_failed(backup: &Backup, r: &Request, error: &str, actions: &mut Vec<Action>) {
    let status = backup.status.clone().unwrap_or_default();
    let (id, pod, attempt) = (&r.backup_id, &r.pod, r.attempt);
    let message = format!(
        "deleting backup {id} from the object store failed on pod {pod} (attempt {attempt}): {error}"
    );
    if status.message.as_deref() == Some(message.as_str()) {
        return;
    }
    actions.push(Action::PatchStatus {
        target: reference(backup),
        status: json!({ "reason": "DeleteFailed", "message": message }),
    });
    actions.push(Action::Event {
        regarding: reference(backup),
        event_type: EventType::Warning,
        reason: "DeleteFailed".into(),
        note: format!(
            "{message}; asked again in {} minutes",
            RETRY_FAILED_SECONDS / 60
        ),
    });
}

/// Asks the next attempt when `due` and there is a pod to ask, else keeps the request.
fn retry(
    input: &RetentionInput<'_>,
    backup: &Backup,
    r: &Request,
    due: bool,
    (actions, requests): (&mut Vec<Action>, &mut Vec<Request>),
) {
    match input.agent_pod.filter(|_| due) {
        Some(pod) => ask(
            backup,
            pod,
            r.attempt + 1,
            r.object,
            input.now,
            (actions, requests),
        ),
        None => requests.push(r.clone()),
    }
}

#[cfg(test)]
mod tests;
