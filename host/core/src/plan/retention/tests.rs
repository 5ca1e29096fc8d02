use super::*;
use pgwarden_crds::{BackupDeletionAgent, BackupPhase, BackupStatus};

fn now() -> DateTime<Utc> {
    "2026-11-25T08:00:00Z".parse().unwrap()
}

fn cluster() -> Cluster {
    let mut c: Cluster = serde_json::from_value(json!({
        "apiVersion": "postgresql.k8s.2ndq.io/v1alpha1", "kind": "Cluster",
        "metadata": {"name": "pg", "namespace": "ns", "uid": "c-uid"},
        "spec": {"backup": {"destinationPath": "s3://b/p", "retentionPolicy": "30d",
            "s3Credentials": {"inheritFromIAMRole": true}}}
    }))
    .unwrap();
    c.status = None;
    c
}

fn backup(name: &str, id: Option<&str>, deletion: Option<BackupDeletion>) -> Backup {
    let mut b = Backup::new(
        name,
        pgwarden_crds::BackupSpec {
            cluster: pgwarden_crds::LocalObjectReference { name: "pg".into() },
            target: None,
        },
    );
    b.metadata.namespace = Some("ns".into());
    b.status = Some(BackupStatus {
        phase: Some(BackupPhase::Completed),
        backup_id: id.map(str::to_owned),
        destination_path: Some("s3://b/p".into()),
        deletion,
        ..Default::default()
    });
    b
}

fn asked(attempt: u32, at: &str, agent: Option<(BackupAgentState, &str)>) -> BackupDeletion {
    BackupDeletion {
        reason: Some(REASON.into()),
        requested_at: Some(at.into()),
        pod_name: Some("pg-1".into()),
        attempt: Some(attempt),
        object: None,
        agent: agent.map(|(state, error)| BackupDeletionAgent {
            attempt: Some(attempt),
            pod_name: Some("pg-1".into()),
            state: Some(state),
            error: Some(error.into()).filter(|e: &String| !e.is_empty()),
            ..Default::default()
        }),
    }
}

fn plan(backups: &[Backup], expired: &[&str], pod: Option<&str>) -> Vec<Action> {
    let c = cluster();
    let expired: Vec<Expiry> = expired.iter().map(|s| Expiry::remove(*s)).collect();
    plan_retention(&RetentionInput {
        cluster: &c,
        backups,
        expired: &expired,
        agent_pod: pod,
        now: now(),
    })
}

#[test]
fn an_expired_backup_is_handed_to_the_agent_of_the_primary() {
    let actions = plan(
        &[backup("old", Some("20260101T000000"), None)],
        &["old"],
        Some("pg-1"),
    );
    assert_eq!(
        actions[0],
        Action::PatchStatus {
            target: reference(&backup("old", None, None)),
            status: json!({"deletion": {"reason": "Retention", "requestedAt": "2026-11-25T08:00:00Z", "podName": "pg-1", "attempt": 1, "object": "remove"}}),
        }
    );
    let Action::Event { note, reason, .. } = &actions[1] else {
        panic!("{actions:?}")
    };
    assert_eq!(reason, "BackupExpired");
    assert_eq!(
        note,
        "backup 20260101T000000 is past the retention policy 30d: the agent of pod pg-1 deletes it from s3://b/p"
    );
    assert_eq!(actions[2], Action::Requeue { after_seconds: 30 });
}

#[test]
fn without_a_pod_the_request_waits_and_without_a_backup_id_the_object_goes_at_once() {
    let actions = plan(&[backup("old", Some("X"), None)], &["old"], None);
    assert_eq!(actions, vec![Action::Requeue { after_seconds: 30 }]);
    let actions = plan(&[backup("never", None, None)], &["never"], None);
    assert!(matches!(&actions[0], Action::Delete { cluster: Some(c), .. } if c == "pg"));
    assert!(
        matches!(&actions[1], Action::Event { note, .. } if note == "deleted Backup never: past the retention policy 30d, with no backup in the object store")
    );
}

#[test]
fn a_deleted_backup_loses_its_object_and_the_cluster_says_so() {
    let d = asked(
        1,
        "2026-11-25T07:59:00Z",
        Some((BackupAgentState::Succeeded, "")),
    );
    let actions = plan(&[backup("old", Some("X"), Some(d))], &[], Some("pg-1"));
    assert!(matches!(&actions[0], Action::Delete { target, .. } if target.name == "old"));
    let Action::Event {
        regarding, note, ..
    } = &actions[1]
    else {
        panic!("{actions:?}")
    };
    assert_eq!(regarding.kind, "Cluster");
    assert_eq!(
        note,
        "deleted backup X of Backup old from s3://b/p: past the retention policy 30d"
    );
}

#[test]
fn a_kept_backup_is_marked_deleted_once_and_then_left_alone() {
    let c = cluster();
    let expired = [Expiry::keep("old")];
    let fresh = backup("old", Some("X"), None);
    let actions = plan_retention(&RetentionInput {
        cluster: &c,
        backups: std::slice::from_ref(&fresh),
        expired: &expired,
        agent_pod: Some("pg-1"),
        now: now(),
    });
    assert!(
        matches!(&actions[0], Action::PatchStatus { status, .. } if status["deletion"]["object"] == "keep"),
        "{actions:?}"
    );

    let mut d = asked(
        1,
        "2026-11-25T07:59:00Z",
        Some((BackupAgentState::Succeeded, "")),
    );
    d.object = Some(ExpiredObject::Keep);
    let done = backup("old", Some("X"), Some(d));
    let actions = plan(std::slice::from_ref(&done), &[], Some("pg-1"));
    let Action::PatchStatus { status, .. } = &actions[0] else {
        panic!("{actions:?}")
    };
    let message = "backup X was deleted from s3://b/p: past the retention policy 30d";
    assert_eq!(status["reason"], DELETED);
    assert_eq!(status["conditions"][0]["type"], "Deleted");
    assert_eq!(status["conditions"][0]["message"], message);
    assert!(
        matches!(&actions[1], Action::Event { note, .. } if note == &format!("{message}; Backup old is kept, marked Deleted"))
    );
    assert!(!actions.iter().any(|a| matches!(a, Action::Delete { .. })));

    // Marked: nothing more, and no polling.
    let mut marked = done.clone();
    let conditions = serde_json::from_value(status["conditions"].clone()).unwrap();
    marked.status.as_mut().unwrap().conditions = conditions;
    assert_eq!(plan(&[marked], &[], Some("pg-1")), vec![]);
}

#[test]
fn a_failed_deletion_is_reported_once_and_asked_again_later() {
    let d = asked(
        1,
        "2026-11-25T07:59:00Z",
        Some((BackupAgentState::Failed, "boom")),
    );
    let b = backup("old", Some("X"), Some(d.clone()));
    let actions = plan(std::slice::from_ref(&b), &[], Some("pg-1"));
    let message = "deleting backup X from the object store failed on pod pg-1 (attempt 1): boom";
    assert_eq!(
        actions[0],
        Action::PatchStatus {
            target: reference(&b),
            status: json!({"reason": "DeleteFailed", "message": message}),
        }
    );
    assert!(
        matches!(&actions[1], Action::Event { event_type: EventType::Warning, reason, .. } if reason == "DeleteFailed")
    );
    assert_eq!(actions.len(), 3, "{actions:?}");

    // Reported already, and old enough: only the new attempt.
    let mut b = backup(
        "old",
        Some("X"),
        Some(asked(
            1,
            "2026-11-25T07:50:00Z",
            Some((BackupAgentState::Failed, "boom")),
        )),
    );
    b.status.as_mut().unwrap().message = Some(message.into());
    let actions = plan(&[b], &[], Some("pg-2"));
    assert!(
        matches!(&actions[0], Action::PatchStatus { status, .. } if status["deletion"]["attempt"] == 2 && status["deletion"]["podName"] == "pg-2"),
        "{actions:?}"
    );
}

#[test]
fn a_silent_agent_is_asked_again_after_ten_minutes() {
    let fresh = backup(
        "old",
        Some("X"),
        Some(asked(1, "2026-11-25T07:55:00Z", None)),
    );
    assert_eq!(
        plan(&[fresh], &[], Some("pg-1")),
        vec![Action::Requeue { after_seconds: 30 }]
    );
    let stale = backup(
        "old",
        Some("X"),
        Some(asked(1, "2026-11-25T07:40:00Z", None)),
    );
    let actions = plan(&[stale], &[], Some("pg-1"));
    assert!(
        matches!(&actions[0], Action::PatchStatus { status, .. } if status["deletion"]["attempt"] == 2)
    );
}

#[test]
fn every_action_passes_the_guardrails_of_its_backup() {
    let c = cluster();
    let done = asked(
        1,
        "2026-11-25T07:59:00Z",
        Some((BackupAgentState::Succeeded, "")),
    );
    let backups = [
        backup("old", Some("X"), None),
        backup("never", None, None),
        backup("done", Some("Y"), Some(done)),
    ];
    let actions = plan(&backups, &["old", "never"], Some("pg-1"));
    assert_eq!(actions.len(), 7, "{actions:?}");
    for action in &actions {
        let subject = retention_subject(&c, &backups, action);
        super::super::guardrails::check_one(&subject, action).unwrap();
    }
    // A Backup of another Cluster is checked against the Cluster: refused.
    let mut other = backup("other", Some("Z"), None);
    other.spec.cluster.name = "elsewhere".into();
    let foreign = remove(&other);
    let subject = retention_subject(&c, std::slice::from_ref(&other), &foreign);
    assert!(super::super::guardrails::check_one(&subject, &foreign).is_err());
}

fn requested(backups: &[Backup], expired: &[&str], asked: &[Request]) -> Planned {
    let c = cluster();
    let expired: Vec<Expiry> = expired.iter().map(|s| Expiry::remove(*s)).collect();
    let input = RetentionInput {
        cluster: &c,
        backups,
        expired: &expired,
        agent_pod: Some("pg-1"),
        now: now(),
    };
    plan_requested(&input, &[], asked)
}

#[test]
fn a_status_deletion_the_operator_did_not_ask_is_ignored_with_a_warning() {
    // Forged by someone who may write Backup status (any agent of the namespace): long
    // silent, so the old protocol would have asked attempt 2 of the forged deletion.
    let forged = backup("b", Some("X"), Some(asked(1, "2026-11-25T07:00:00Z", None)));
    let planned = requested(std::slice::from_ref(&forged), &[], &[]);
    assert_eq!(planned.requests, vec![]);
    let [
        Action::Event {
            event_type,
            reason,
            note,
            regarding,
        },
    ] = &planned.actions[..]
    else {
        panic!("{:?}", planned.actions)
    };
    assert_eq!(
        (event_type, reason.as_str(), regarding.name.as_str()),
        (&EventType::Warning, requests::IGNORED, "b")
    );
    assert_eq!(
        note,
        "status.deletion of Backup b asks pod pg-1 (attempt 1) to delete backup X, but the operator asked no such deletion: ignored (deletions are asked only through the Cluster's settings ConfigMap)"
    );
    // Not a candidate taken out of the policy's view either.
    assert_eq!(candidates_with(&cluster(), &[forged], &[]).len(), 1);
}

#[test]
fn an_expired_backup_becomes_a_request_kept_until_its_agent_reports() {
    let fresh = backup("old", Some("X"), None);
    let planned = requested(std::slice::from_ref(&fresh), &["old"], &[]);
    let r = &planned.requests[0];
    assert_eq!(
        (
            r.backup.as_str(),
            r.backup_id.as_str(),
            r.pod.as_str(),
            r.attempt,
            r.cluster.as_str()
        ),
        ("old", "X", "pg-1", 1, "pg")
    );
    assert_eq!(r.destination_path.as_deref(), Some("s3://b/p"));
    // Asked (the status copy is there), no report yet: the request stays as it was.
    let mut copied = fresh.clone();
    copied.status.as_mut().unwrap().deletion = Some(asked(1, "2026-11-25T08:00:00Z", None));
    let again = requested(std::slice::from_ref(&copied), &[], &planned.requests);
    assert_eq!(again.requests, planned.requests);
    // A report for another pod does not count.
    let mut d = asked(
        1,
        "2026-11-25T08:00:00Z",
        Some((BackupAgentState::Succeeded, "")),
    );
    d.agent.as_mut().unwrap().pod_name = Some("other-1".into());
    copied.status.as_mut().unwrap().deletion = Some(d);
    let other = requested(std::slice::from_ref(&copied), &[], &planned.requests);
    assert!(
        !other
            .actions
            .iter()
            .any(|a| matches!(a, Action::Delete { .. }))
    );
    // Its own report ends it: the Backup goes and the request with it.
    let d = asked(
        1,
        "2026-11-25T08:00:00Z",
        Some((BackupAgentState::Succeeded, "")),
    );
    copied.status.as_mut().unwrap().deletion = Some(d);
    let done = requested(&[copied], &[], &planned.requests);
    assert!(
        matches!(&done.actions[0], Action::Delete { .. }),
        "{:?}",
        done.actions
    );
    assert_eq!(done.requests, vec![]);
}

#[test]
fn backups_under_deletion_and_of_other_clusters_are_not_candidates() {
    let mut other = backup("other", Some("Y"), None);
    other.spec.cluster.name = "elsewhere".into();
    let busy = backup(
        "busy",
        Some("X"),
        Some(asked(1, "2026-11-25T07:55:00Z", None)),
    );
    let live = backup("live", Some("Z"), None);
    let names: Vec<String> = candidates(&cluster(), &[other, busy, live])
        .iter()
        .map(|b| name(b).to_string())
        .collect();
    assert_eq!(names, ["live"]);
}
