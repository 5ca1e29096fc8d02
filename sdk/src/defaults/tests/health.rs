//! The default health (phase and `Ready`), the default storage, validation and settings.

use serde::Deserialize;
use serde_json::json;

use super::{at, backed_up, cluster};
use crate::defaults::{cluster_status, phase, storage, validate, validate_settings};
use crate::types::{
    ClaimFacts, ClusterFacts, ConditionDecision, Denial, INVALID_SETTINGS, Instance, Role, Settings,
};

fn pod(name: &str, role: Role, ready: bool) -> Instance {
    Instance {
        name: name.into(),
        role,
        ready,
    }
}

/// A one-instance Cluster whose pod `pg-1` is `ready`.
fn facts(ready: bool) -> ClusterFacts {
    ClusterFacts {
        cluster: cluster(json!({ "instances": 1 })),
        instances: vec![pod("pg-1", Role::Primary, ready)],
        missing_secrets: vec![],
        failure: None,
        waiting: None,
        now: at("2026-11-25T10:00:00Z"),
    }
}

fn ready(status: bool, reason: &str, message: &str) -> ConditionDecision {
    ConditionDecision {
        status,
        reason: reason.into(),
        message: message.into(),
    }
}

#[test]
fn every_instance_ready_is_healthy() {
    let health = cluster_status(&facts(true)).unwrap();
    assert_eq!(health.phase, phase::HEALTHY);
    assert_eq!(
        health.ready,
        ready(true, "InstancesReady", "1 of 1 instances ready")
    );
}

#[test]
fn a_pod_not_ready_is_setting_up() {
    let health = cluster_status(&facts(false)).unwrap();
    assert_eq!(health.phase, phase::SETTING_UP);
    assert_eq!(
        health.ready,
        ready(false, "InstancesNotReady", "0 of 1 instances ready")
    );
}

#[test]
fn a_missing_secret_leaves_phase_and_ready_to_the_pods() {
    // ContinuousArchiving reports the Secret; a Cluster whose pods run stays Ready.
    let mut f = facts(true);
    f.missing_secrets = vec!["Secret creds has no key id".into()];
    let health = cluster_status(&f).unwrap();
    assert_eq!(health.phase, phase::HEALTHY);
    assert!(health.ready.status);
}

#[test]
fn a_failure_is_policy_not_applied_and_only_a_name_clash_makes_it_unready() {
    let mut f = facts(true);
    f.failure = Some(Denial::new("PolicyDenied", "no"));
    let health = cluster_status(&f).unwrap();
    assert_eq!(health.phase, phase::POLICY_NOT_APPLIED);
    assert_eq!(health.ready.reason, "InstancesReady");

    f.failure = Some(Denial::new("NameInUse", "Service pg-rw belongs to another"));
    let health = cluster_status(&f).unwrap();
    assert_eq!(health.phase, phase::POLICY_NOT_APPLIED);
    assert_eq!(
        health.ready,
        ready(false, "NameInUse", "Service pg-rw belongs to another")
    );
}

#[test]
fn a_waiting_recovery_says_why_it_is_not_ready() {
    let mut f = facts(false);
    f.waiting = Some(Denial::new("RecoverySourceNotReady", "Backup b is running"));
    let health = cluster_status(&f).unwrap();
    assert_eq!(health.phase, phase::WAITING_FOR_RECOVERY);
    assert_eq!(
        health.ready,
        ready(false, "RecoverySourceNotReady", "Backup b is running")
    );
}

#[test]
fn more_instances_than_allowed_are_never_ready() {
    let mut f = facts(true);
    f.cluster.spec.instances = 10;
    let health = cluster_status(&f).unwrap();
    assert_eq!(health.ready.reason, "TooManyInstances");
    assert!(!health.ready.status);
    assert_eq!(health.phase, phase::SETTING_UP);
}

#[test]
fn storage_is_the_spec_and_an_existing_claim_is_not_grown() {
    let c = cluster(json!({ "storage": { "size": "5Gi", "storageClass": "fast" } }));
    let current = ClaimFacts {
        name: "pg-1".into(),
        size: "2Gi".into(),
        storage_class: Some("fast".into()),
    };
    for claim in [None, Some(&current)] {
        let s = storage(&c, claim).unwrap();
        assert_eq!(
            (s.size.as_str(), s.storage_class.as_deref()),
            ("5Gi", Some("fast"))
        );
    }
    let s = storage(&cluster(json!({})), None).unwrap();
    assert_eq!((s.size.as_str(), s.storage_class), ("1Gi", None));
}

#[test]
fn the_default_validates_every_cluster_and_takes_no_settings() {
    assert_eq!(validate(&cluster(json!({}))), Ok(()));
    assert_eq!(validate(&backed_up(json!({}))), Ok(()));
    assert_eq!(validate_settings(&Settings::empty()), Ok(()));
    assert_eq!(validate_settings(&Settings::from(json!(null))), Ok(()));
    let denied = validate_settings(&Settings::from(json!({ "cpu": "1" }))).unwrap_err();
    assert_eq!(denied.reason, INVALID_SETTINGS);
    assert!(denied.message.contains("settings.cpu"), "{denied}");
    assert!(denied.message.contains("takes no settings"), "{denied}");
}

#[derive(Deserialize, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
struct Knobs {
    #[serde(default)]
    cpu: Option<String>,
    #[serde(default)]
    jobs: Option<u32>,
    #[serde(default)]
    nested: Option<Nested>,
}

#[derive(Deserialize, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
struct Nested {
    depth: u32,
}

#[test]
fn a_settings_parse_error_names_the_field() {
    let parse = |v| Settings::from(v).parse::<Knobs>();
    let ok = parse(json!({ "cpu": "2", "jobs": 3 })).unwrap();
    assert_eq!((ok.cpu.as_deref(), ok.jobs), (Some("2"), Some(3)));
    assert_eq!(parse(json!(null)).unwrap().jobs, None);
    for (value, field) in [
        (json!({ "cpu": "2", "jobs": "many" }), "settings.jobs"),
        (json!({ "jobs": -1 }), "settings.jobs"),
        (json!({ "cpus": "2" }), "cpus"),
        (
            json!({ "cpu": "1", "nested": { "depth": "deep" } }),
            "settings.nested",
        ),
        (json!([1, 2]), "settings"),
    ] {
        let denied = parse(value.clone()).unwrap_err();
        assert_eq!(denied.reason, INVALID_SETTINGS, "{value}");
        assert!(denied.message.contains(field), "{value}: {denied}");
    }
}

#[test]
fn settings_cross_the_boundary_as_json_text() {
    assert_eq!(Settings::from_json("").unwrap(), Settings::empty());
    let s = Settings::from_json(r#"{"cpu":"2"}"#).unwrap();
    assert_eq!(s.to_json(), r#"{"cpu":"2"}"#);
    assert_eq!(
        Settings::from_json("{").unwrap_err().reason,
        INVALID_SETTINGS
    );
}

#[test]
fn a_bare_message_is_a_policy_denied() {
    let d: Denial = format!("Cluster {} has no spec.backup", "pg").into();
    assert_eq!(
        d,
        Denial::new("PolicyDenied", "Cluster pg has no spec.backup")
    );
    assert_eq!(Denial::from("no").to_string(), "no");
}
