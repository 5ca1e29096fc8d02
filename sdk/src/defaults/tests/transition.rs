use pgwarden_crds::BackupPhase;
use serde_json::{Value, json};

use super::{at, backed_up, backup, cluster};
use crate::defaults::{AGENT_START_TIMEOUT_SECONDS, backup_transition};
use crate::types::{BackupFacts, PodFacts, Transition};

const NOW: &str = "2026-11-25T10:01:00Z";

/// A running Backup on pod pg-1, started at 10:00:05, with this agent report.
fn running_status(agent: Value) -> Value {
    json!({
        "phase": "running", "startedAt": "2026-11-25T10:00:05Z",
        "instanceID": { "podName": "pg-1" }, "agent": agent,
    })
}

fn pod(phase: &str, ready: bool) -> Option<PodFacts> {
    Some(PodFacts {
        name: "pg-1".into(),
        phase: phase.into(),
        ready,
        restart_count: 0,
        container_started_at: Some(at("2026-11-25T09:00:00Z")),
    })
}

fn decide(status: Value, pod: Option<PodFacts>, now: &str) -> Transition {
    backup_transition(&BackupFacts {
        backup: backup(json!({}), status),
        cluster: Some(backed_up(json!({}))),
        pod,
        now: at(now),
    })
    .unwrap()
}

fn summary(t: &Transition) -> (BackupPhase, &str, Option<u32>) {
    (t.phase, t.reason.as_str(), t.requeue_after_seconds)
}

#[test]
fn a_final_phase_never_changes() {
    let done =
        json!({ "phase": "completed", "reason": "Completed", "message": "backup X completed" });
    let t = decide(done, None, NOW);
    assert_eq!(summary(&t), (BackupPhase::Completed, "Completed", None));
    assert_eq!(t.message, "backup X completed");
    let failed = decide(json!({ "phase": "failed" }), pod("Running", true), NOW);
    assert_eq!(summary(&failed), (BackupPhase::Failed, "Final", None));
}

#[test]
fn a_missing_cluster_keeps_a_pending_backup_waiting_and_fails_a_running_one() {
    let facts = |status| BackupFacts {
        backup: backup(json!({}), status),
        cluster: None,
        pod: None,
        now: at(NOW),
    };
    let waiting = backup_transition(&facts(json!({}))).unwrap();
    assert_eq!(
        summary(&waiting),
        (BackupPhase::Pending, "ClusterNotFound", Some(30))
    );
    assert!(
        waiting.message.contains("Cluster pg"),
        "{}",
        waiting.message
    );
    let gone = backup_transition(&facts(running_status(json!({})))).unwrap();
    assert_eq!(
        summary(&gone),
        (BackupPhase::Failed, "ClusterDeleted", None)
    );
}

#[test]
fn a_cluster_without_a_store_fails_the_backup_saying_what_to_set() {
    let t = backup_transition(&BackupFacts {
        backup: backup(json!({}), json!({})),
        cluster: Some(cluster(json!({ "instances": 1 }))),
        pod: pod("Running", true),
        now: at(NOW),
    })
    .unwrap();
    assert_eq!(
        summary(&t),
        (BackupPhase::Failed, "BackupNotConfigured", None)
    );
    assert!(
        t.message.contains("spec.backup.destinationPath"),
        "{}",
        t.message
    );
}

#[test]
fn a_pending_backup_starts_once_its_pod_runs_and_is_ready() {
    let started = decide(json!({}), pod("Running", true), NOW);
    assert_eq!(
        summary(&started),
        (BackupPhase::Running, "Started", Some(10))
    );
    let unready = decide(json!({ "phase": "pending" }), pod("Running", false), NOW);
    assert_eq!(
        summary(&unready),
        (BackupPhase::Pending, "WaitingForInstance", Some(10))
    );
    assert!(unready.message.contains("pod pg-1"), "{}", unready.message);
    let no_pod = decide(json!({}), None, NOW);
    assert_eq!(
        summary(&no_pod),
        (BackupPhase::Pending, "WaitingForInstance", Some(10))
    );
}

#[test]
fn the_agents_report_completes_or_fails_a_running_backup() {
    let done = json!({ "state": "succeeded", "startedAt": "2026-11-25T10:00:10Z" });
    let mut status = running_status(done);
    status["backupId"] = json!("20261125T100010");
    let t = decide(status, pod("Running", true), NOW);
    assert_eq!(summary(&t), (BackupPhase::Completed, "Completed", None));
    assert_eq!(t.message, "backup 20261125T100010 completed on pod pg-1");

    let mut status = running_status(json!({ "state": "failed", "exitCode": 4 }));
    status["error"] = json!("cannot connect");
    let t = decide(status, pod("Running", true), NOW);
    assert_eq!(summary(&t), (BackupPhase::Failed, "BarmanFailed", None));
    assert_eq!(
        t.message,
        "barman-cloud-backup exited with code 4: cannot connect"
    );
    let bare = decide(running_status(json!({ "state": "failed" })), None, NOW);
    assert_eq!(
        bare.message,
        "barman-cloud-backup exited with code unknown: no error output"
    );
}

#[test]
fn a_running_backup_fails_when_its_pod_is_gone_or_stopped() {
    let agent = json!({ "state": "running", "startedAt": "2026-11-25T10:00:10Z" });
    let gone = decide(running_status(agent.clone()), None, NOW);
    assert_eq!(summary(&gone), (BackupPhase::Failed, "PodGone", None));
    let stopped = decide(running_status(agent), pod("Failed", false), NOW);
    assert_eq!(
        summary(&stopped),
        (BackupPhase::Failed, "PodNotRunning", None)
    );
}

#[test]
fn a_container_restart_after_barman_started_fails_the_backup() {
    let agent = json!({ "state": "running", "startedAt": "2026-11-25T10:00:10Z" });
    let mut restarted = pod("Running", true);
    if let Some(p) = restarted.as_mut() {
        p.restart_count = 1;
        p.container_started_at = Some(at("2026-11-25T10:00:40Z"));
    }
    let t = decide(running_status(agent.clone()), restarted, NOW);
    assert_eq!(summary(&t), (BackupPhase::Failed, "AgentRestarted", None));
    assert!(t.message.contains("restart count 1"), "{}", t.message);
    let steady = decide(running_status(agent), pod("Running", true), NOW);
    assert_eq!(
        summary(&steady),
        (BackupPhase::Running, "Running", Some(10))
    );
}

#[test]
fn an_agent_silent_past_the_timeout_fails_the_backup() {
    assert_eq!(AGENT_START_TIMEOUT_SECONDS, 300);
    let silent = || running_status(Value::Null);
    // Started 10:00:05: 300 s later is still in time, one more second is not.
    let in_time = decide(silent(), pod("Running", true), "2026-11-25T10:05:05Z");
    assert_eq!(
        summary(&in_time),
        (BackupPhase::Running, "Running", Some(10))
    );
    let late = decide(silent(), pod("Running", true), "2026-11-25T10:05:06Z");
    assert_eq!(
        summary(&late),
        (BackupPhase::Failed, "AgentNotStarted", None)
    );
    assert!(late.message.contains("within 300s"), "{}", late.message);
}
