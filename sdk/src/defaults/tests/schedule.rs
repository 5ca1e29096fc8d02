use pgwarden_crds::ScheduledBackup;
use serde_json::{Value, json};

use super::at;
use crate::defaults::{parse_schedule, schedule};
use crate::types::{ScheduleDecision, ScheduledRun};

/// ScheduledBackup `nightly`, created 2026-11-20T08:00:00Z, with this spec and status.
fn scheduled(spec: Value, status: Value) -> ScheduledBackup {
    let mut full = json!({ "cluster": { "name": "pg" } });
    if let (Some(s), Value::Object(extra)) = (full.as_object_mut(), spec) {
        s.extend(extra);
    }
    serde_json::from_value(json!({
        "apiVersion": "postgresql.k8s.2ndq.io/v1alpha1", "kind": "ScheduledBackup",
        "metadata": { "name": "nightly", "namespace": "ns", "creationTimestamp": "2026-11-20T08:00:00Z" },
        "spec": full,
        "status": status,
    }))
    .unwrap()
}

fn run(name: &str, time: &str) -> Option<ScheduledRun> {
    Some(ScheduledRun {
        name: name.into(),
        scheduled_at: at(time),
    })
}

#[test]
fn five_or_six_fields_or_a_nickname_parse_and_other_counts_are_named() {
    for ok in ["0 2 * * *", "30 0 2 * * *", "@daily", "@hourly"] {
        assert!(parse_schedule(ok).is_ok(), "{ok}");
    }
    let four = parse_schedule("0 2 * *").unwrap_err();
    assert!(four.contains("has 4 fields: expected 5"), "{four}");
    let bad = parse_schedule("61 * * * *").unwrap_err();
    assert!(
        bad.contains("\"61 * * * *\" is not a valid cron expression"),
        "{bad}"
    );
}

#[test]
fn a_bad_schedule_is_a_denial_even_when_suspended() {
    let s = scheduled(
        json!({ "schedule": "every night", "suspend": true }),
        json!({}),
    );
    let denied = schedule(&s, at("2026-11-25T10:00:00Z"))
        .unwrap_err()
        .message;
    assert!(denied.contains("spec.schedule \"every night\""), "{denied}");
}

#[test]
fn suspended_creates_nothing_and_plans_nothing() {
    let s = scheduled(json!({ "schedule": "@hourly", "suspend": true }), json!({}));
    let decision = schedule(&s, at("2026-11-25T10:20:00Z")).unwrap();
    assert_eq!(decision, ScheduleDecision::default());
}

#[test]
fn not_due_yet_only_says_when() {
    let s = scheduled(
        json!({ "schedule": "0 2 * * *" }),
        json!({ "lastScheduleTime": "2026-11-25T02:00:00Z" }),
    );
    let decision = schedule(&s, at("2026-11-25T10:00:00Z")).unwrap();
    assert_eq!(decision.create, None);
    assert_eq!(decision.next_run, Some(at("2026-11-26T02:00:00Z")));
}

#[test]
fn missed_runs_make_one_backup_named_after_the_latest() {
    let s = scheduled(
        json!({ "schedule": "@hourly" }),
        json!({ "lastScheduleTime": "2026-11-25T07:00:00Z" }),
    );
    let decision = schedule(&s, at("2026-11-25T10:20:00Z")).unwrap();
    assert_eq!(
        decision.create,
        run("nightly-20261125100000", "2026-11-25T10:00:00Z")
    );
    assert_eq!(decision.next_run, Some(at("2026-11-25T11:00:00Z")));
}

#[test]
fn a_never_run_schedule_counts_from_its_creation() {
    let s = scheduled(json!({ "schedule": "0 2 * * *" }), json!({}));
    // Created 2026-11-20T08:00: the first run is due on the 21st at 02:00.
    let before = schedule(&s, at("2026-11-21T01:59:00Z")).unwrap();
    assert_eq!(before.create, None);
    assert_eq!(before.next_run, Some(at("2026-11-21T02:00:00Z")));
    let after = schedule(&s, at("2026-11-21T02:00:30Z")).unwrap();
    assert_eq!(
        after.create,
        run("nightly-20261121020000", "2026-11-21T02:00:00Z")
    );
}

#[test]
fn immediate_runs_once_at_once_under_a_name_that_does_not_change_with_now() {
    let s = scheduled(
        json!({ "schedule": "0 2 * * *", "immediate": true }),
        json!({}),
    );
    let first = schedule(&s, at("2026-11-25T10:20:00Z")).unwrap();
    let retried = schedule(&s, at("2026-11-25T10:25:00Z")).unwrap();
    assert_eq!(
        first.create,
        run("nightly-20261120080000", "2026-11-25T10:20:00Z")
    );
    assert_eq!(
        retried.create.map(|r| r.name),
        Some("nightly-20261120080000".to_string()),
        "a retry finds the same Backup"
    );
    assert_eq!(first.next_run, Some(at("2026-11-26T02:00:00Z")));
    // Once a run is recorded, immediate no longer applies.
    let ran = scheduled(
        json!({ "schedule": "0 2 * * *", "immediate": true }),
        json!({ "lastScheduleTime": "2026-11-25T10:20:00Z" }),
    );
    assert_eq!(
        schedule(&ran, at("2026-11-25T10:30:00Z")).unwrap().create,
        None
    );
}
