use super::*;
use pgwarden_crds::BackupAgentStatus;

fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap()
        .with_timezone(&Utc)
}

fn transition(phase: BackupPhase, reason: &str) -> Transition {
    Transition {
        phase,
        reason: reason.into(),
        message: format!("{reason} message"),
        requeue_after_seconds: None,
    }
}

fn settings() -> BackupSettings {
    BackupSettings {
        target_pod: "pg-1".into(),
        compression: None,
        encryption: None,
        jobs: 2,
        immediate_checkpoint: true,
    }
}

fn cluster() -> Cluster {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "postgresql.k8s.2ndq.io/v1alpha1", "kind": "Cluster",
        "metadata": {"name": "pg", "namespace": "ns"},
        "spec": {"backup": {"destinationPath": "s3://bucket/pg"}},
    }))
    .unwrap()
}

#[test]
fn a_start_records_the_instance_store_and_settings_once() {
    let (s, c) = (settings(), cluster());
    let answer = BackupAnswer::Decided {
        transition: &transition(BackupPhase::Running, "Started"),
        settings: Some(&s),
        cluster: Some(&c),
        policy: "default",
    };
    let status = backup_status(
        &BackupStatus::default(),
        &answer,
        Some(1),
        at("2026-11-30T10:00:00Z"),
    );
    assert_eq!(status.phase, Some(BackupPhase::Running));
    assert_eq!(status.started_at.as_deref(), Some("2026-11-30T10:00:00Z"));
    assert_eq!(status.settings.as_ref(), Some(&s));
    assert_eq!(
        status.instance_id.unwrap().pod_name.as_deref(),
        Some("pg-1")
    );
    assert_eq!(status.destination_path.as_deref(), Some("s3://bucket/pg"));
    assert_eq!(status.server_name.as_deref(), Some("pg"));
    assert!(
        status.conditions.is_empty(),
        "no condition without a failure"
    );
}

#[test]
fn the_agents_fields_are_never_in_the_operators_status() {
    let before = BackupStatus {
        phase: Some(BackupPhase::Running),
        started_at: Some("2026-11-30T10:00:00Z".into()),
        backup_id: Some("20261130T100000".into()),
        error: Some("x".into()),
        agent: Some(BackupAgentStatus::default()),
        ..BackupStatus::default()
    };
    let answer = BackupAnswer::Decided {
        transition: &transition(BackupPhase::Completed, "Completed"),
        settings: None,
        cluster: None,
        policy: "default",
    };
    let status = backup_status(&before, &answer, None, at("2026-11-30T10:05:00Z"));
    assert_eq!(
        (status.backup_id, status.error, status.agent),
        (None, None, None)
    );
    assert_eq!(status.started_at.as_deref(), Some("2026-11-30T10:00:00Z"));
    assert_eq!(status.stopped_at.as_deref(), Some("2026-11-30T10:05:00Z"));
}

#[test]
fn a_failure_makes_a_new_backup_pending_and_a_later_success_clears_it() {
    let wanted = DesiredCondition::failed(
        POLICY_APPLIED,
        "ClusterNotFound",
        "Cluster ns/pg does not exist",
    );
    let failed = backup_status(
        &BackupStatus::default(),
        &BackupAnswer::Failed(wanted),
        Some(1),
        at("2026-11-30T10:00:00Z"),
    );
    assert_eq!(failed.phase, Some(BackupPhase::Pending));
    assert_eq!(failed.reason.as_deref(), Some("ClusterNotFound"));
    assert_eq!(failed.conditions[0].status, "False");
    let answer = BackupAnswer::Decided {
        transition: &transition(BackupPhase::Pending, "Waiting"),
        settings: None,
        cluster: None,
        policy: "default",
    };
    let back = backup_status(&failed, &answer, Some(1), at("2026-11-30T10:01:00Z"));
    assert_eq!(back.conditions[0].status, "True");
    assert_eq!(
        back.conditions[0].message,
        "decisions of policy default applied"
    );
}

#[test]
fn a_running_backup_whose_cluster_is_deleted_fails_naming_it() {
    let before = BackupStatus {
        phase: Some(BackupPhase::Running),
        started_at: Some("2026-11-30T10:00:00Z".into()),
        ..BackupStatus::default()
    };
    let answer = BackupAnswer::ClusterDeleted { cluster: "ns/pg" };
    let status = backup_status(&before, &answer, None, at("2026-11-30T10:02:00Z"));
    assert_eq!(status.phase, Some(BackupPhase::Failed));
    assert_eq!(status.reason.as_deref(), Some("ClusterDeleted"));
    assert!(status.message.unwrap().contains("Cluster ns/pg"));
    assert_eq!(status.stopped_at.as_deref(), Some("2026-11-30T10:02:00Z"));
}
