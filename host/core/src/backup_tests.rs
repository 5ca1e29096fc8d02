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
        sse_kms_key_id: None,
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
        placement: None,
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
        placement: None,
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
        placement: None,
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

fn reported(name: &str, streaming: bool, age: i64, now: DateTime<Utc>) -> serde_json::Value {
    serde_json::json!({
        "name": name, "role": "replica", "ready": true, "inRecovery": true,
        "streaming": streaming, "reportedAt": (now - chrono::Duration::seconds(age)).to_rfc3339(),
    })
}

fn instance(name: &str, role: Role) -> Instance {
    Instance {
        name: name.into(),
        role,
        ready: true,
    }
}

/// Only a standby its agent reports streaming, recently, is offered ready to the policy.
#[test]
fn only_a_fresh_streaming_standby_is_offered_ready() {
    let now = at("2026-11-30T10:00:00Z");
    let mut c = cluster();
    c.status = serde_json::from_value(serde_json::json!({"instancesStatus": [
        reported("pg-2", false, 1, now), reported("pg-3", true, 60, now), reported("pg-4", true, 2, now),
    ]}))
    .unwrap();
    let pods = ["pg-1", "pg-2", "pg-3", "pg-4", "pg-5"]
        .iter()
        .map(|n| {
            instance(
                n,
                if *n == "pg-1" {
                    Role::Primary
                } else {
                    Role::Replica
                },
            )
        })
        .collect();
    let ready: Vec<(String, bool)> = (backup_instances(pods, &c, now).into_iter())
        .map(|i| (i.name, i.ready))
        .collect();
    let want = [
        ("pg-1", true),
        ("pg-2", false),
        ("pg-3", false),
        ("pg-4", true),
        ("pg-5", false),
    ];
    let want: Vec<(String, bool)> = want.iter().map(|(n, r)| (n.to_string(), *r)).collect();
    assert_eq!(
        ready, want,
        "not streaming, silent, healthy, never reported"
    );
}

/// `OnStandby` says where the backup went, and why a prefer-standby one went to the primary.
#[test]
fn the_placement_names_the_standby_or_why_it_fell_back_to_the_primary() {
    let mut unready = instance("pg-2", Role::Replica);
    unready.ready = false;
    let instances = [
        instance("pg-1", Role::Primary),
        unready,
        instance("pg-3", Role::Replica),
    ];
    let on = placement(true, "pg-3", &instances).unwrap();
    assert!(on.ok);
    assert_eq!(
        (on.reason.as_str(), on.message.as_str()),
        (
            "StreamingStandby",
            "the backup runs on pg-3, a streaming standby"
        )
    );
    let fell = placement(true, "pg-1", &instances[..2]).unwrap();
    assert!(!fell.ok);
    assert_eq!(fell.reason, "NoHealthyStandby");
    assert_eq!(
        fell.message,
        "target prefer-standby: no standby is ready and streaming (pg-2), so the backup runs on pg-1"
    );
    let alone = placement(true, "pg-1", &instances[..1]).unwrap();
    assert!(
        alone.message.contains("the Cluster has no standby"),
        "{}",
        alone.message
    );
    assert!(
        placement(false, "pg-1", &instances).is_none(),
        "a primary backup says nothing"
    );
}
