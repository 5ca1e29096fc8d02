//! The policy ABI `pgwarden:policy@0.4.0` end to end through wasmtime: a module built for the
//! previous ABI is refused naming both versions; a denial's reason and message reach the
//! host; the settings reach the guest (and the ones it refuses never load); the production
//! policy's settings change its answers without a recompile; the new decisions (storage,
//! cluster-status, validate) answer through the built modules.
//!
//! Modules come from `PGWARDEN_POLICY_DIR`, else `target/policies/` (`cargo xtask
//! build-policies`); the old-ABI module is a `.wat` fixture in `host/tests/data/`.

mod common;

use std::path::Path;

use common::{engine, module};
use pgwarden::policy::{Engine, EngineConfig, Limits, Policy, PolicyError};
use pgwarden_crds::Cluster;
use pgwarden_sdk::types::{ClaimFacts, ClusterFacts, Instance, Role};
use serde_json::json;

fn load(name: &str) -> Policy {
    engine().load(&module(name), Limits::default()).unwrap()
}

/// A Cluster `name` of one instance, backed up with encrypted WAL (production accepts it).
fn cluster(name: &str) -> Cluster {
    serde_json::from_value(json!({
        "apiVersion": "postgresql.k8s.2ndq.io/v1alpha1", "kind": "Cluster",
        "metadata": { "name": name, "namespace": "default", "uid": "00000000-0000-4000-8000-00000000000a" },
        "spec": {
            "instances": 1,
            "storage": { "size": "5Gi" },
            "backup": {
                "destinationPath": "s3://backups/pg",
                "s3Credentials": {
                    "accessKeyId": { "name": "creds", "key": "id" },
                    "secretAccessKey": { "name": "creds", "key": "secret" },
                },
                "wal": { "encryption": "AES256" },
            },
        },
    }))
    .unwrap()
}

/// The CPU and memory requests of the postgres container.
fn requests(policy: &Policy, cluster: &Cluster) -> (String, String) {
    let pod = policy.instance_pod(cluster, 0, &[]).unwrap();
    let requests = pod.spec.unwrap().containers[0]
        .resources
        .clone()
        .unwrap()
        .requests
        .unwrap();
    (requests["cpu"].0.clone(), requests["memory"].0.clone())
}

#[test]
fn a_module_built_for_abi_0_2_is_refused_naming_both_versions() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/abi-0.2.0.wat");
    let text = std::fs::read_to_string(path).unwrap();
    let err = Engine::new(EngineConfig::default())
        .unwrap()
        .load(text.as_bytes(), Limits::default())
        .err()
        .expect("an old module must be refused");
    assert!(matches!(err, PolicyError::AbiMismatch { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "the policy module does not match ABI pgwarden:policy@0.4.0: the module was built for \
         ABI 0.2.0: rebuild it with the pgwarden SDK of ABI 0.4.0 (since 0.3 every decision \
         takes the settings first and denials carry a reason; since 0.4 the archive settings \
         say where new standbys are cloned from)"
    );
}

#[test]
fn a_denial_carries_the_policys_reason_and_message_and_the_settings_reach_the_guest() {
    let policy = load("adversarial")
        .with_settings(Some(&json!({ "greeting": "hi" })))
        .unwrap();
    assert_eq!(policy.settings(), r#"{"greeting":"hi"}"#);
    // The adversarial policy denies `echo-settings` with reason Echo and its settings.
    let err = policy
        .instance_pod(&cluster("echo-settings"), 0, &[])
        .unwrap_err();
    assert_eq!(
        err,
        PolicyError::Denied {
            decision: "instance-pod".into(),
            reason: "Echo".into(),
            message: r#"{"greeting":"hi"}"#.into(),
        }
    );
    assert!(err.is_denial());
    assert_eq!(err.denial_reason(), Some("Echo"));
    assert_eq!(err.label(), "denied");
    // No settings: `{}`.
    let bare = load("adversarial")
        .instance_pod(&cluster("echo-settings"), 0, &[])
        .unwrap_err();
    assert_eq!(bare.to_string(), "{}");
}

#[test]
fn settings_the_policy_refuses_are_a_denial_of_validate_settings() {
    let err = load("adversarial")
        .with_settings(Some(&json!({ "refuse": true })))
        .err()
        .expect("refused settings");
    assert_eq!(
        err,
        PolicyError::Denied {
            decision: "validate-settings".into(),
            reason: "InvalidSettings".into(),
            message: "settings.refuse: the adversarial policy refuses it".into(),
        }
    );
    // The default policy takes none: each field given is named.
    let err = load("default")
        .with_settings(Some(&json!({ "cpu": "2" })))
        .err()
        .expect("the default takes no settings");
    assert_eq!(err.denial_reason(), Some("InvalidSettings"));
    assert!(err.to_string().contains("settings.cpu"), "{err}");
    load("default").with_settings(None).unwrap();
    load("default").with_settings(Some(&json!({}))).unwrap();
}

#[test]
fn production_settings_change_its_answers_without_a_recompile() {
    let production = load("production");
    let c = cluster("prod");
    assert_eq!(requests(&production, &c), ("500m".into(), "1Gi".into()));
    let tuned = production
        .with_settings(Some(&json!({ "cpu": "2", "memory": "8Gi" })))
        .unwrap();
    assert_eq!(tuned.digest(), production.digest());
    assert_eq!(requests(&tuned, &c), ("2".into(), "8Gi".into()));

    let err = production
        .with_settings(Some(&json!({ "cpus": "2" })))
        .err()
        .expect("a misspelt setting");
    assert_eq!(err.denial_reason(), Some("InvalidSettings"));
    assert!(
        err.to_string().starts_with("settings.cpus: unknown field"),
        "{err}"
    );
    let err = production
        .with_settings(Some(&json!({ "jobs": 100 })))
        .err()
        .expect("jobs out of range");
    assert_eq!(err.to_string(), "settings.jobs: 100 is not within 1..=64");
}

#[test]
fn the_cluster_decisions_validate_first_and_include_each_instances_storage() {
    let production = load("production");
    let claim = ClaimFacts {
        name: "prod-1".into(),
        size: "2Gi".into(),
        storage_class: None,
    };
    let decisions = production
        .cluster_decisions(&cluster("prod"), &[], &[Some(claim)])
        .unwrap();
    assert_eq!(decisions.pods.len(), 1);
    assert_eq!(decisions.storage.len(), 1);
    assert_eq!(decisions.storage[0].size, "5Gi");

    let mut unencrypted = cluster("plain");
    unencrypted.spec.backup.as_mut().unwrap().wal = None;
    let err = production
        .cluster_decisions(&unencrypted, &[], &[])
        .unwrap_err();
    let PolicyError::Denied { decision, .. } = &err else {
        panic!("{err:?}");
    };
    assert_eq!(decision, "validate", "{err}");
}

#[test]
fn the_default_cluster_status_through_wasm() {
    let policy = load("default");
    let facts = |ready| ClusterFacts {
        cluster: cluster("pg"),
        instances: vec![Instance {
            name: "pg-1".into(),
            role: Role::Primary,
            ready,
        }],
        missing_secrets: vec![],
        failure: None,
        waiting: None,
        now: "2026-11-25T10:00:00Z".parse().unwrap(),
    };
    let health = policy.cluster_health(&facts(true)).unwrap();
    assert_eq!(health.phase, "Cluster in healthy state");
    assert!(health.ready.status);
    let health = policy.cluster_health(&facts(false)).unwrap();
    assert_eq!(health.phase, "Setting up instances");
    assert_eq!(
        (health.ready.status, health.ready.reason.as_str()),
        (false, "InstancesNotReady")
    );
}

#[test]
fn a_denial_whose_reason_is_not_one_word_is_malformed() {
    let err = load("adversarial")
        .instance_pod(&cluster("bad-reason"), 0, &[])
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "the policy answered a malformed instance-pod: denial reason \"Not one word\" is not one CamelCase word"
    );
}

#[test]
fn a_storage_size_that_is_no_quantity_is_malformed() {
    let err = load("adversarial")
        .cluster_decisions(&cluster("bad-storage"), &[], &[])
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "the policy answered a malformed storage: size \"lots\" is not a positive Kubernetes quantity"
    );
}
