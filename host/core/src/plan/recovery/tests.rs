use super::*;
use crate::plan::{Action, Bootstrap, ClusterDecisions, plan_cluster, plan_cluster_restoring};
use pgwarden_crds::settings::env;
use pgwarden_sdk::defaults;
use serde_json::{Value, json};

fn creds(secret: &str) -> Value {
    json!({
        "accessKeyId": {"name": secret, "key": "ACCESS_KEY_ID"},
        "secretAccessKey": {"name": secret, "key": "ACCESS_SECRET_KEY"},
    })
}

fn cluster(name: &str, spec: Value) -> Cluster {
    serde_json::from_value(json!({
        "apiVersion": "postgresql.k8s.2ndq.io/v1alpha1",
        "kind": "Cluster",
        "metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}")},
        "spec": spec,
    }))
    .unwrap()
}

fn source_cluster() -> Cluster {
    cluster(
        "pg",
        json!({"backup": {
            "destinationPath": "s3://bucket/pg",
            "endpointURL": "http://127.0.0.1:9000",
            "s3Credentials": creds("aws-creds"),
        }}),
    )
}

fn restored(recovery: Value, own_secret: Option<&str>) -> Cluster {
    let mut spec = json!({"bootstrap": {"recovery": recovery}});
    if let Some(secret) = own_secret {
        spec["backup"] = json!({
            "destinationPath": "s3://bucket/restored",
            "endpointURL": "http://127.0.0.1:9000",
            "s3Credentials": creds(secret),
        });
    }
    cluster("restored", spec)
}

fn backup(phase: &str) -> Backup {
    serde_json::from_value(json!({
        "apiVersion": "postgresql.k8s.2ndq.io/v1alpha1",
        "kind": "Backup",
        "metadata": {"name": "backup-example", "namespace": "ns"},
        "spec": {"cluster": {"name": "pg"}},
        "status": {
            "phase": phase,
            "backupId": "20261125T063702",
            "destinationPath": "s3://bucket/pg",
            "serverName": "pg",
        },
    }))
    .unwrap()
}

fn from_backup_example() -> Value {
    json!({"backup": {"name": "backup-example"}})
}

#[test]
fn a_cluster_without_recovery_restores_nothing() {
    assert_eq!(recovery(&source_cluster(), None, None), Ok(None));
}

#[test]
fn a_completed_backup_gives_its_id_and_store() {
    let c = restored(from_backup_example(), Some("aws-creds"));
    let r = recovery(&c, Some(&backup("completed")), Some(&source_cluster()))
        .unwrap()
        .unwrap();
    assert_eq!(r.backup_id, "20261125T063702");
    assert_eq!(r.source.destination_path, "s3://bucket/pg");
    assert_eq!(r.source.server_name, "pg");
    assert_eq!(
        r.source.endpoint_url.as_deref(),
        Some("http://127.0.0.1:9000")
    );
    assert_eq!(r.credentials, None, "the Cluster's own credentials serve");
    assert_eq!(r.target, None);
}

#[test]
fn an_absent_or_unfinished_backup_is_waited_for_by_name() {
    let c = restored(from_backup_example(), Some("aws-creds"));
    let absent = recovery(&c, None, None).unwrap_err();
    assert_eq!(absent.reason, "BackupNotFound");
    assert!(
        absent
            .message
            .contains("Backup ns/backup-example does not exist"),
        "{}",
        absent.message
    );
    let running = recovery(&c, Some(&backup("running")), Some(&source_cluster())).unwrap_err();
    assert_eq!(running.reason, "BackupNotCompleted");
    assert!(
        running
            .message
            .contains("Backup ns/backup-example is running, not completed"),
        "{}",
        running.message
    );
}

#[test]
fn a_source_store_with_a_backup_id_and_a_target() {
    let c = restored(
        json!({
            "source": {
                "destinationPath": "s3://other/folder",
                "serverName": "old-pg",
                "s3Credentials": creds("other-creds"),
            },
            "backupID": "20261124T000000",
            "recoveryTarget": {"targetTime": "2026-11-25T10:00:00Z", "exclusive": true},
        }),
        None,
    );
    let r = recovery(&c, None, None).unwrap().unwrap();
    assert_eq!(r.backup_id, "20261124T000000");
    assert_eq!(r.source.server_name, "old-pg");
    assert_eq!(
        r.credentials
            .as_ref()
            .unwrap()
            .access_key_id
            .as_ref()
            .unwrap()
            .name,
        "other-creds"
    );
    assert_eq!(
        restore_args(&r, "/etc/pgwarden"),
        [
            "--restore-backup",
            "20261124T000000",
            "--restore-source",
            "/etc/pgwarden/restore-source.json",
            "--target-time",
            "2026-11-25T10:00:00Z",
            "--target-exclusive",
        ]
    );
    // Without a backupID: the latest.
    let latest = restored(json!({"source": {"destinationPath": "s3://other/x"}}), None);
    let r = recovery(&latest, None, None).unwrap().unwrap();
    assert_eq!(
        (r.backup_id.as_str(), r.source.server_name.as_str()),
        ("latest", "restored")
    );
}

#[test]
fn other_credentials_than_the_clusters_own_are_named() {
    let c = restored(
        json!({"source": {"destinationPath": "s3://other/x", "s3Credentials": creds("other-creds")}}),
        Some("aws-creds"),
    );
    let w = recovery(&c, None, None).unwrap_err();
    assert_eq!(w.reason, "RecoveryCredentialsDiffer");
}

fn decisions(cluster: &Cluster) -> ClusterDecisions {
    ClusterDecisions {
        archive: None,
        pods: vec![defaults::instance_pod(cluster, 0).unwrap().build()],
        storage: vec![defaults::storage(cluster, None).unwrap()],
    }
}

fn applied<'a>(actions: &'a [Action], kind: &str) -> Option<&'a Value> {
    actions.iter().find_map(|a| match a {
        Action::Apply { target, object } if target.kind == kind => Some(object),
        _ => None,
    })
}

#[test]
fn the_pod_restores_with_credentials_by_reference_only() {
    let c = restored(
        json!({
            "source": {"destinationPath": "s3://other/x", "s3Credentials": creds("other-creds")},
            "recoveryTarget": {"targetLSN": "0/3000060"},
        }),
        None,
    );
    let r = recovery(&c, None, None).unwrap().unwrap();
    let actions = plan_cluster_restoring(&c, &decisions(&c), Bootstrap::Restore(&r))
        .expect("the source's Secret is allowed for this pod");
    let pod = applied(&actions, "Pod").expect("a pod");
    let container = &pod["spec"]["containers"][0];
    assert_eq!(
        container["args"],
        json!([
            "--restore-backup",
            "latest",
            "--restore-source",
            "/etc/pgwarden/restore-source.json",
            "--target-lsn",
            "0/3000060"
        ])
    );
    let env = container["env"].as_array().unwrap();
    let key = env
        .iter()
        .find(|v| v["name"] == env::ACCESS_KEY_ID)
        .expect("the access key id");
    assert_eq!(
        key["valueFrom"]["secretKeyRef"]["name"], "other-creds",
        "{key}"
    );
    assert!(
        env.iter()
            .all(|v| v.get("value").is_none() || !v["name"].as_str().unwrap().starts_with("AWS_"))
    );
    let config = applied(&actions, "ConfigMap").unwrap();
    let source: ArchiveSettings =
        serde_json::from_str(config["data"][RESTORE_SOURCE_KEY].as_str().unwrap()).unwrap();
    assert_eq!(source.destination_path, "s3://other/x");
    // The plain plan (no restore) has neither.
    let plain = plan_cluster(&c, &decisions(&c)).unwrap();
    assert!(applied(&plain, "Pod").unwrap()["spec"]["containers"][0]["args"].is_null());
}

#[test]
fn a_waiting_recovery_plans_everything_but_the_pods() {
    let c = restored(from_backup_example(), Some("aws-creds"));
    let actions = plan_cluster_restoring(&c, &decisions(&c), Bootstrap::Waiting).unwrap();
    assert!(applied(&actions, "Pod").is_none());
    assert!(applied(&actions, "PersistentVolumeClaim").is_some());
    assert!(applied(&actions, "ConfigMap").is_some());
}
