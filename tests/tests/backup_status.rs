//! A Backup's status is written by server-side apply, one owner per field: against a real
//! kube-apiserver, the operator's fields (phase, reason, message, start time, instance,
//! store, settings) are owned by the `pgwarden-operator` Apply alone (no merge patch), the
//! agent's report (`agent`, `backupId`) stays the agent's through the operator's applies;
//! and a running Backup whose Cluster is deleted fails, `ClusterDeleted`, naming the Cluster
//! (it can no longer finish), instead of waiting with no policy to decide.
//!
//! Needs `cargo xtask setup`, `cargo build -p pgwarden` and `cargo xtask build-policies`.

use pgwarden_tests::controlplane::{Namespace, with_crds};
use pgwarden_tests::operator::*;
use serde_json::json;

const BACKUP: &str = "backup-example";
const POD: &str = "postgresql-bkp-1";

fn poke(ns: &Namespace<'_>, n: u32) {
    let note = format!("pgwarden.test/poke={n}");
    let out = ns.kubectl(&["annotate", "--overwrite", "backup", BACKUP, &note]);
    assert!(out.success, "{}", out.stderr);
}

#[test]
fn the_backup_status_is_the_operators_apply_and_keeps_the_agents_report() {
    let cp = with_crds();
    let ns = cp.namespace("backup-status");
    let _op = Operator::start(cp, &ns.name);
    for seed_file in ["secret.yaml", "cluster-wal.yaml", "backup.yaml"] {
        apply_file(&ns, &seed(seed_file));
    }
    wait_get(&ns, "pod", POD);
    mark_pod(&ns, POD, true);
    wait_json(&ns, "backup", BACKUP, "running on its pod", |b| {
        b["status"]["phase"] == "running" && b["status"]["instanceID"]["podName"] == POD
    });
    let started = with_managed_fields(&ns, "backup", BACKUP);
    let applied = vec![("pgwarden-operator".to_string(), "Apply".to_string())];
    assert_eq!(
        owners(&started, "phase"),
        applied,
        "{:#}",
        started["metadata"]
    );
    // The agent's report, as `pgwarden instance` writes it (its own server-side apply).
    let report = json!({
        "apiVersion": "postgresql.k8s.2ndq.io/v1alpha1", "kind": "Backup",
        "metadata": {"name": BACKUP},
        "status": {"agent": {"state": "running", "podName": POD, "startedAt": now_rfc3339()},
                   "backupId": "20261130T100000"},
    });
    server_side_apply_status(&ns, &report, "pgwarden-agent");
    poke(&ns, 1);
    // The Cluster goes while the backup runs: the Backup fails, naming it; the agent's
    // report stays.
    let out = ns.kubectl(&["delete", "cluster", "postgresql-bkp", "--wait=false"]);
    assert!(out.success, "{}", out.stderr);
    wait_gone(&ns, "cluster", "postgresql-bkp");
    poke(&ns, 2);
    let failed = wait_json(&ns, "backup", BACKUP, "failed, its Cluster deleted", |b| {
        b["status"]["phase"] == "failed" && b["status"]["reason"] == "ClusterDeleted"
    });
    let message = failed["status"]["message"].as_str().unwrap_or_default();
    let cluster = format!("Cluster {}/postgresql-bkp", ns.name);
    assert!(message.contains(&cluster), "{message}");
    assert!(failed["status"]["stoppedAt"].is_string(), "{failed:#}");
    assert_eq!(failed["status"]["backupId"], "20261130T100000");
    assert_eq!(failed["status"]["agent"]["state"], "running");
    wait_event(&ns, BACKUP, "ClusterDeleted", &cluster);

    // After the operator's last apply: each field has its one owner.
    let backup = with_managed_fields(&ns, "backup", BACKUP);
    let operator = vec![("pgwarden-operator".to_string(), "Apply".to_string())];
    let fields = [
        "phase",
        "reason",
        "message",
        "startedAt",
        "stoppedAt",
        "instanceID",
    ];
    for field in fields
        .into_iter()
        .chain(["settings", "destinationPath", "serverName"])
    {
        assert_eq!(
            owners(&backup, field),
            operator,
            "status.{field} is not owned by the operator's apply alone: {:#}",
            backup["metadata"]["managedFields"]
        );
    }
    let agent = vec![("pgwarden-agent".to_string(), "Apply".to_string())];
    assert_eq!(owners(&backup, "agent"), agent);
    assert_eq!(owners(&backup, "backupId"), agent);
    assert_eq!(backup["status"]["settings"]["targetPod"], POD);
}
