//! `bootstrap.recovery` against a real kube-apiserver and the operator: a recovery Cluster
//! whose Backup is absent, then not completed, says so (a `Ready` condition and a Warning
//! Event naming the Backup) and gets no pod; once the Backup is completed its pod restores
//! it (`pgwarden instance run --restore-backup ...`) from the Backup's store. The restore
//! itself, with PostgreSQL and barman, is the demo's last step (`tests/tests/demo.rs`).
//!
//! Needs `cargo xtask setup`, `cargo build -p pgwarden` and `cargo xtask build-policies`.

use std::time::Duration;

use pgwarden_crds::settings::ArchiveSettings;
use pgwarden_tests::controlplane::with_crds;
use pgwarden_tests::operator::*;
use serde_json::{Value, json};

const RESTORED: &str = "restored";
const BACKUP: &str = "source-backup";

fn restored_cluster() -> String {
    format!(
        "apiVersion: postgresql.k8s.2ndq.io/v1alpha1\nkind: Cluster\nmetadata:\n  name: {RESTORED}\nspec:\n  bootstrap:\n    recovery:\n      backup:\n        name: {BACKUP}\n      recoveryTarget:\n        targetName: before-the-mistake\n  backup:\n    destinationPath: s3://bucket/restored\n    endpointURL: http://127.0.0.1:9000\n    s3Credentials:\n      accessKeyId: {{name: aws-creds, key: ACCESS_KEY_ID}}\n      secretAccessKey: {{name: aws-creds, key: ACCESS_SECRET_KEY}}\n"
    )
}

fn ready_reason(ns: &pgwarden_tests::controlplane::Namespace<'_>, reason: &str) -> Value {
    wait_json(ns, "cluster", RESTORED, &format!("Ready {reason}"), |c| {
        condition(c, "Ready").is_some_and(|(status, r, _)| status == "False" && r == reason)
    })
}

#[test]
fn a_recovery_cluster_waits_for_its_backup_then_restores_it() {
    let cp = with_crds();
    let ns = cp.namespace("recovery");
    let _op = Operator::start(cp, &ns.name);
    apply_file(&ns, &seed("secret.yaml"));
    apply_yaml(&ns, &restored_cluster());

    // No Backup yet: named, waited for, no pod.
    let absent = format!(
        "spec.bootstrap.recovery.backup: Backup {}/{BACKUP} does not exist; the Cluster waits for it",
        ns.name
    );
    let cluster = ready_reason(&ns, "BackupNotFound");
    assert_eq!(condition(&cluster, "Ready").unwrap().2, absent);
    wait_event(&ns, RESTORED, "BackupNotFound", &absent);
    assert!(get(&ns, "pod", &format!("{RESTORED}-1")).is_none());
    // The claim, Services and settings are there already.
    wait_get(&ns, "pvc", &format!("{RESTORED}-1"));

    // A Backup that has not completed (its Cluster does not exist: it stays pending).
    apply_yaml(
        &ns,
        &format!(
            "apiVersion: postgresql.k8s.2ndq.io/v1alpha1\nkind: Backup\nmetadata:\n  name: {BACKUP}\nspec:\n  cluster:\n    name: gone\n"
        ),
    );
    let cluster = ready_reason(&ns, "BackupNotCompleted");
    let message = condition(&cluster, "Ready").unwrap().2;
    assert!(
        message.contains(&format!(
            "Backup {}/{BACKUP} is pending, not completed",
            ns.name
        )),
        "{message}"
    );
    assert!(get(&ns, "pod", &format!("{RESTORED}-1")).is_none());

    // Completed (as its agent and operator would report it): the pod restores it.
    let completed = json!({
        "apiVersion": "postgresql.k8s.2ndq.io/v1alpha1",
        "kind": "Backup",
        "metadata": {"name": BACKUP},
        "status": {
            "phase": "completed",
            "backupId": "20261125T100000",
            "destinationPath": "s3://bucket/gone",
            "serverName": "gone",
        },
    });
    let pod = eventually("the restoring pod", Duration::from_secs(90), || {
        let backup = get(&ns, "backup", BACKUP).unwrap_or_default();
        if backup["status"]["phase"] != "completed" {
            server_side_apply_status(&ns, &completed, "recovery-test");
        }
        get(&ns, "pod", &format!("{RESTORED}-1")).ok_or_else(|| backup["status"].to_string())
    });
    let container = &pod["spec"]["containers"][0];
    let args: Vec<&str> = container["args"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        args,
        [
            "--restore-backup",
            "20261125T100000",
            "--restore-source",
            "/etc/pgwarden/restore-source.json",
            "--target-name",
            "before-the-mistake",
        ]
    );
    // Credentials only by reference.
    for var in container["env"].as_array().unwrap() {
        if var["name"].as_str().is_some_and(|n| n.starts_with("AWS_")) {
            assert!(var.get("value").is_none(), "a credential by value: {var}");
            assert_eq!(var["valueFrom"]["secretKeyRef"]["name"], "aws-creds");
        }
    }
    let settings = wait_get(&ns, "configmap", &format!("{RESTORED}-settings"));
    let source: ArchiveSettings = serde_json::from_str(
        settings["data"]["restore-source.json"]
            .as_str()
            .unwrap_or_else(|| panic!("no restore-source.json: {settings}")),
    )
    .unwrap();
    assert_eq!(source.destination_path, "s3://bucket/gone");
    assert_eq!(source.server_name, "gone");
    // The endpoint of the Backup's store (its Cluster is gone: the restoring Cluster's own).
    assert_eq!(
        source.endpoint_url.as_deref(),
        Some("http://127.0.0.1:9000")
    );
}
