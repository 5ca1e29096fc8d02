//! The Cluster's status from observed state and the policy's health decision alone.

use pgwarden_sdk::types::ConditionDecision;

use super::*;

fn at(seconds: i64) -> Timestamp {
    Timestamp::from_second(seconds).unwrap()
}

fn observed(ready: i32) -> ObservedCluster {
    ObservedCluster {
        namespace: "ns".into(),
        generation: Some(2),
        instances_wanted: 1,
        backup_configured: true,
        archive: Some(ArchiveStatus {
            last_archived_time: Some("2026-11-25T10:00:00Z".into()),
            ..Default::default()
        }),
        instances: Instances {
            total: 1,
            ready,
            primary: (ready > 0).then(|| "pg-1".to_string()),
        },
        ..Default::default()
    }
}

fn applied() -> Outcome {
    applied_with(
        None,
        DesiredCondition::ok(types::PODS_UP_TO_DATE, "UpToDate", "every pod current"),
    )
}

fn applied_with(waiting: Option<(String, String)>, rollout: DesiredCondition) -> Outcome {
    Outcome::Applied {
        policy: PolicyInForce {
            name: Some("default".into()),
            digest: Some("abc".into()),
        },
        waiting,
        rollout,
    }
}

/// The policy's answer: `phase`, and `Ready` True when `reason` is `InstancesReady`.
fn health(phase: &str, reason: &str, message: &str) -> Health {
    Ok(ClusterHealth {
        phase: phase.into(),
        ready: ConditionDecision {
            status: reason == "InstancesReady",
            reason: reason.into(),
            message: message.into(),
        },
    })
}

fn healthy() -> Health {
    health(
        "Cluster in healthy state",
        "InstancesReady",
        "1 of 1 instances ready",
    )
}

fn bound() -> DesiredCondition {
    DesiredCondition::ok(types::POLICY_AS_REQUESTED, "AsRequested", "as asked")
}

fn condition<'a>(status: &'a ClusterStatus, type_: &str) -> &'a Condition {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("no {type_} in {:?}", status.conditions))
}

#[test]
fn the_phase_and_ready_are_the_policys() {
    let report = cluster_status(&observed(1), &applied(), &healthy(), bound(), at(10));
    assert_eq!(report.status.phase, "Cluster in healthy state");
    assert_eq!(condition(&report.status, "Ready").status, "True");
    assert_eq!(report.status.current_primary.as_deref(), Some("pg-1"));
    assert_eq!(report.status.observed_generation, Some(2));
    assert_eq!(report.requeue_seconds, 300);
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    // What counts as degraded is the policy's: here a ready pod is not enough.
    let degraded = health("Degraded", "ReplicaLagging", "replica pg-2 is 40 s behind");
    let report = cluster_status(&observed(1), &applied(), &degraded, bound(), at(10));
    assert_eq!(report.status.phase, "Degraded");
    let ready = condition(&report.status, "Ready");
    assert_eq!(
        (
            ready.status.as_str(),
            ready.reason.as_str(),
            ready.message.as_str()
        ),
        ("False", "ReplicaLagging", "replica pg-2 is 40 s behind")
    );
    assert_eq!(report.warnings[0].reason, "ReplicaLagging");
    let starting = health("Setting up instances", "InstancesNotReady", "0 of 1 ready");
    let report = cluster_status(&observed(0), &applied(), &starting, bound(), at(10));
    assert!(report.warnings.is_empty(), "not ready yet is no failure");
}

#[test]
fn a_failed_cluster_status_keeps_the_stored_phase_and_ready() {
    let mut o = observed(1);
    let first = cluster_status(&o, &applied(), &healthy(), bound(), at(10));
    o.conditions = first.status.conditions.clone();
    o.phase = Some(first.status.phase.clone());
    let crashed = Err(Denial::new(
        "PolicyFailed",
        "the policy crashed in cluster-status: unreachable",
    ));
    let report = cluster_status(&o, &applied(), &crashed, bound(), at(20));
    assert_eq!(report.status.phase, "Cluster in healthy state");
    assert_eq!(
        condition(&report.status, "Ready"),
        condition(&first.status, "Ready"),
        "Ready as stored"
    );
    let c = condition(&report.status, "PolicyApplied");
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "PolicyFailed")
    );
    assert_eq!(
        c.message,
        "decisions of policy default applied, but its cluster-status failed, so the phase and Ready stay as stored (unless no instance is ready): the policy crashed in cluster-status: unreachable"
    );
    assert_eq!(report.warnings.len(), 1, "{:?}", report.warnings);
    assert_eq!(report.requeue_seconds, 30);
    // Nothing stored yet: no phase to keep.
    let report = cluster_status(&observed(1), &applied(), &crashed, bound(), at(20));
    assert_eq!(report.status.phase, "Unknown");
    assert!(
        report.status.conditions.iter().all(|c| c.type_ != "Ready"),
        "{:?}",
        report.status.conditions
    );
}

/// Phase, `Ready` and the Ready column (`readyInstances`) tell one story: with no instance
/// pod ready, neither a policy's "ready" answer nor a phase kept after a failed
/// cluster-status shows a Cluster in healthy state.
#[test]
fn a_cluster_with_no_ready_instance_is_never_shown_ready_or_healthy() {
    let agree = |report: &ClusterReport| {
        let ready = condition(&report.status, "Ready");
        assert_eq!(report.status.ready_instances, 0);
        assert_eq!(
            (
                report.status.phase.as_str(),
                ready.status.as_str(),
                ready.reason.as_str(),
                ready.message.as_str()
            ),
            (
                "No instance ready",
                "False",
                "NoInstanceReady",
                "0 of 1 instances ready"
            ),
            "{:#?}",
            report.status
        );
    };
    // A policy that answers "healthy" while the only pod is not ready.
    let report = cluster_status(&observed(0), &applied(), &healthy(), bound(), at(10));
    agree(&report);
    assert_eq!(report.warnings[0].reason, "NoInstanceReady");
    // A healthy Cluster whose pod stops being ready while its policy's cluster-status fails:
    // the stored phase and Ready no longer hold.
    let mut o = observed(1);
    let first = cluster_status(&o, &applied(), &healthy(), bound(), at(10));
    (o.conditions, o.phase) = (first.status.conditions.clone(), Some(first.status.phase));
    o.instances = observed(0).instances;
    let crashed = Err(Denial::new("PolicyFailed", "the policy crashed"));
    agree(&cluster_status(&o, &applied(), &crashed, bound(), at(20)));
    // A policy that already says not ready keeps its phase and reason.
    let starting = health("Setting up instances", "InstancesNotReady", "0 of 1 ready");
    let report = cluster_status(&observed(0), &applied(), &starting, bound(), at(10));
    assert_eq!(report.status.phase, "Setting up instances");
    assert_eq!(
        condition(&report.status, "Ready").reason,
        "InstancesNotReady"
    );
}

#[test]
fn the_facts_carry_the_pods_the_failure_and_the_wait() {
    let cluster = Cluster::new("pg", Default::default());
    let pod = Instance {
        name: "pg-1".into(),
        role: pgwarden_sdk::types::Role::Primary,
        ready: true,
    };
    let mut o = observed(1);
    o.missing_secrets = vec!["Secret s is missing".into()];
    let failed = Outcome::Failed {
        reason: "NameInUse".into(),
        message: "Service pg-rw is taken".into(),
    };
    let facts = health_facts(&cluster, vec![pod.clone()], &o, &failed, at(10));
    assert_eq!(facts.instances, vec![pod]);
    assert_eq!(facts.missing_secrets, o.missing_secrets);
    assert_eq!(
        facts.failure,
        Some(Denial::new("NameInUse", "Service pg-rw is taken"))
    );
    assert_eq!((facts.waiting, facts.now.timestamp()), (None, 10));
    let waiting = applied_with(
        Some(("BackupNotFound".into(), "Backup b does not exist".into())),
        DesiredCondition::ok(types::PODS_UP_TO_DATE, "UpToDate", "every pod current"),
    );
    let facts = health_facts(&cluster, vec![], &o, &waiting, at(10));
    assert_eq!(facts.failure, None);
    assert_eq!(
        facts.waiting,
        Some(Denial::new("BackupNotFound", "Backup b does not exist"))
    );
}

#[test]
fn a_name_in_use_fails_ready_and_policy_applied_with_one_warning() {
    let message = "objects under the Cluster's names exist: Service pg-rw";
    let outcome = Outcome::Failed {
        reason: "NameInUse".into(),
        message: message.into(),
    };
    let said = health("Policy not applied", "NameInUse", message);
    let report = cluster_status(&observed(1), &outcome, &said, bound(), at(10));
    assert_eq!(report.status.phase, "Policy not applied");
    assert_eq!(report.status.policy, None);
    assert_eq!(condition(&report.status, "Ready").reason, "NameInUse");
    assert_eq!(
        condition(&report.status, "PolicyApplied").reason,
        "NameInUse"
    );
    assert_eq!(report.warnings.len(), 1, "{:?}", report.warnings);
    assert_eq!(report.requeue_seconds, 30);
}

#[test]
fn a_denial_fails_policy_applied_with_its_reason() {
    let outcome = Outcome::Failed {
        reason: "PolicyDenied".into(),
        message: "policy default denied instance-pod: no".into(),
    };
    let report = cluster_status(&observed(1), &outcome, &healthy(), bound(), at(10));
    assert_eq!(condition(&report.status, "Ready").status, "True");
    let applied = condition(&report.status, "PolicyApplied");
    assert_eq!(
        (applied.status.as_str(), applied.reason.as_str()),
        ("False", "PolicyDenied")
    );
}

#[test]
fn policy_applied_names_the_policy_and_its_digest() {
    let report = cluster_status(&observed(1), &applied(), &healthy(), bound(), at(10));
    let c = condition(&report.status, "PolicyApplied");
    assert_eq!(
        c.message,
        "decisions of policy default (sha256:abc) applied"
    );
    assert_eq!(
        report.status.policy.unwrap().name.as_deref(),
        Some("default")
    );
}

#[test]
fn a_recovery_waiting_is_looked_at_again_soon() {
    let waiting = ("BackupNotFound".into(), "Backup b does not exist".into());
    let outcome = applied_with(
        Some(waiting),
        DesiredCondition::ok(types::PODS_UP_TO_DATE, "UpToDate", "every pod current"),
    );
    let said = health(
        "Waiting for the backup to recover from",
        "BackupNotFound",
        "Backup b does not exist",
    );
    let report = cluster_status(&observed(0), &outcome, &said, bound(), at(10));
    assert_eq!(
        report.status.phase,
        "Waiting for the backup to recover from"
    );
    assert_eq!(condition(&report.status, "Ready").reason, "BackupNotFound");
    assert_eq!(report.requeue_seconds, 10);
}

#[test]
fn archiving_follows_the_spec_the_secrets_and_the_facts() {
    let mut unconfigured = observed(1);
    unconfigured.backup_configured = false;
    let r = cluster_status(&unconfigured, &applied(), &healthy(), bound(), at(1));
    assert_eq!(
        condition(&r.status, "ContinuousArchiving").reason,
        "NotConfigured"
    );
    let mut missing = observed(1);
    missing.missing_secrets = vec!["Secret s has no key a".into(), "Secret t is missing".into()];
    let r = cluster_status(&missing, &applied(), &healthy(), bound(), at(1));
    let c = condition(&r.status, "ContinuousArchiving");
    assert_eq!(c.reason, "SecretNotFound");
    assert_eq!(c.message, "Secret s has no key a; Secret t is missing");
    assert_eq!(r.requeue_seconds, 10);

    assert_eq!(archiving(None).reason, "WaitingForFirstReport");
    let nothing_yet = ArchiveStatus {
        archived_count: Some(0),
        ..Default::default()
    };
    assert_eq!(
        archiving(Some(&nothing_yet)).reason,
        "WaitingForFirstArchive"
    );
    let failing = ArchiveStatus {
        last_archived_time: Some("2026-11-25T10:00:00Z".into()),
        last_failed_time: Some("2026-11-25T10:01:00Z".into()),
        last_failed_wal: Some("000000010000000000000007".into()),
        last_failure: Some("the object store is unreachable".into()),
        ready_segments: Some(3),
        ..Default::default()
    };
    let w = archiving(Some(&failing));
    assert_eq!(w.reason, "ArchiveFailing");
    assert!(
        w.message.contains("000000010000000000000007") && w.message.contains("3 WAL files wait"),
        "{}",
        w.message
    );
}

fn ended(name: &str, phase: BackupPhase, stopped_at: &str) -> ObservedBackup {
    ObservedBackup {
        name: name.into(),
        phase: Some(phase),
        stopped_at: stopped_at.into(),
        message: "barman-cloud-backup exited 1".into(),
    }
}

#[test]
fn the_newest_ended_backup_sets_last_backup_succeeded() {
    let mut o = observed(1);
    o.backups = vec![
        ended("b1", BackupPhase::Completed, "2026-11-25T10:00:00Z"),
        ended("b2", BackupPhase::Failed, "2026-11-25T11:00:00Z"),
        ObservedBackup {
            phase: Some(BackupPhase::Running),
            ..ended("b3", BackupPhase::Running, "")
        },
    ];
    let r = cluster_status(&o, &applied(), &healthy(), bound(), at(1));
    assert_eq!(r.status.last_successful_backup.as_deref(), Some("b1"));
    assert_eq!(r.status.last_failed_backup.as_deref(), Some("b2"));
    let c = condition(&r.status, "LastBackupSucceeded");
    assert_eq!(c.message, "Backup b2 failed: barman-cloud-backup exited 1");
    o.backups
        .push(ended("b4", BackupPhase::Completed, "2026-11-25T12:00:00Z"));
    let r = cluster_status(&o, &applied(), &healthy(), bound(), at(1));
    assert_eq!(condition(&r.status, "LastBackupSucceeded").status, "True");
}

#[test]
fn a_rollout_sets_pods_up_to_date_without_a_warning() {
    let rollout = DesiredCondition::failed(
        types::PODS_UP_TO_DATE,
        "RollingUpdate",
        "replacing pod pg-1",
    );
    let outcome = applied_with(None, rollout);
    let r = cluster_status(&observed(1), &outcome, &healthy(), bound(), at(1));
    assert_eq!(condition(&r.status, "PodsUpToDate").reason, "RollingUpdate");
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    assert_eq!(r.requeue_seconds, 10);
}

#[test]
fn a_steady_state_computes_the_same_status_and_no_warning() {
    let mut o = observed(1);
    o.archive = None;
    let first = cluster_status(&o, &applied(), &healthy(), bound(), at(1));
    o.conditions = first.status.conditions.clone();
    let again = cluster_status(&o, &applied(), &healthy(), bound(), at(99));
    assert_eq!(first.status, again.status, "transition times kept");
    assert!(again.warnings.is_empty(), "{:?}", again.warnings);
}

#[test]
fn a_failure_is_told_once_per_new_message() {
    let outcome = Outcome::Failed {
        reason: "PolicyDenied".into(),
        message: "denied: one".into(),
    };
    let mut o = observed(1);
    let first = cluster_status(&o, &outcome, &healthy(), bound(), at(1));
    assert_eq!(first.warnings.len(), 1);
    o.conditions = first.status.conditions;
    assert!(
        cluster_status(&o, &outcome, &healthy(), bound(), at(2))
            .warnings
            .is_empty()
    );
    let other = Outcome::Failed {
        reason: "PolicyDenied".into(),
        message: "denied: two".into(),
    };
    assert_eq!(
        cluster_status(&o, &other, &healthy(), bound(), at(3))
            .warnings
            .len(),
        1
    );
}

#[test]
fn the_status_leaves_out_the_fields_the_agent_owns() {
    let r = cluster_status(&observed(1), &applied(), &healthy(), bound(), at(1));
    let json = serde_json::to_value(&r.status).unwrap();
    for agent in ["archive", "parameters", "firstRecoverabilityPoint"] {
        assert!(json.get(agent).is_none(), "{agent} in {json}");
    }
    assert_eq!(json["readyInstances"], 1);
}

#[test]
fn the_status_leaves_out_the_retentions_condition() {
    // RetentionApplied is the retention's own apply: a stored one is not carried over (two
    // owners of one condition would fight), and the others are.
    let mut o = observed(1);
    let retention = DesiredCondition::failed(types::RETENTION_APPLIED, "RetentionFailed", "x");
    o.conditions = conditions::set(&[], &retention, Some(2), at(1));
    let r = cluster_status(&o, &applied(), &healthy(), bound(), at(2));
    let types: Vec<_> = (r.status.conditions.iter())
        .map(|c| c.type_.as_str())
        .collect();
    assert!(!types.contains(&types::RETENTION_APPLIED), "{types:?}");
    assert!(types.contains(&types::READY), "{types:?}");
}
