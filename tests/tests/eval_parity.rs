//! `pgwarden policy eval` is the operator minus the writes. Against a real kube-apiserver the
//! operator reconciles every eval fixture (the seed's Cluster, Backup and ScheduledBackup, a
//! recovery Cluster waiting for its Backup, a Cluster without backups whose pod is not ready,
//! a Backup of a missing Cluster, a Cluster whose retention expires a Backup); once it has
//! settled, `policy eval --from-cluster` on the same namespace plans no change (every object
//! it would apply equals the live one on the fields the operator owns) and prints the status
//! the operator stored (timestamps aside). And a file of the same objects gives the plans
//! that reading them from the API server gives.
//!
//! Needs `cargo xtask setup`, `cargo build -p pgwarden` and `cargo xtask build-policies`.

use std::process::Command;
use std::time::Duration;

use pgwarden_tests::controlplane::{ControlPlane, Namespace, with_crds, workspace_root};
use pgwarden_tests::operator::*;
use serde_json::Value;

/// Every input the project has for eval: the seed, and the cases of `tests/fixtures/eval`.
const FIXTURES: [&str; 8] = [
    "examples/seed/secret.yaml",
    "examples/seed/cluster-wal.yaml",
    "examples/seed/backup.yaml",
    "examples/seed/scheduled-backup.yaml",
    "tests/fixtures/eval/recovery.yaml",
    "tests/fixtures/eval/cluster-without-backup.yaml",
    "tests/fixtures/eval/backup-without-cluster.yaml",
    "tests/fixtures/eval/cluster-retention.yaml",
];

/// How long the operator has to settle every fixture.
const SETTLE: Duration = Duration::from_secs(120);

const CLUSTER_LABEL: &str = "postgresql.k8s.2ndq.io/cluster";

fn apply_fixtures(ns: &Namespace<'_>) {
    for fixture in FIXTURES {
        apply_file(ns, &workspace_root().join(fixture));
    }
}

/// `pgwarden policy eval --module default.wasm <args>`, its JSON report.
fn eval(args: &[&str]) -> Value {
    let module = policy("default");
    let out = Command::new(binary())
        .args(["policy", "eval", "--module"])
        .arg(&module)
        .args(args)
        .output()
        .expect("cannot run pgwarden policy eval");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "policy eval {args:?} failed: {stderr}"
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stderr}"))
}

fn from_cluster(cp: &ControlPlane, ns: &Namespace<'_>, now: &str) -> Value {
    let kubeconfig = cp.layout().admin_kubeconfig().display().to_string();
    let args = [
        "--from-cluster",
        &kubeconfig,
        "--namespace",
        &ns.name,
        "--now",
        now,
    ];
    eval(&args)
}

/// `value` without `null`s and without times (`...Time`, `...At`): what eval and the stored
/// status share whatever the moment each was made at.
fn timeless(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(k, v)| !v.is_null() && !k.ends_with("Time") && !k.ends_with("At"))
                .map(|(k, v)| (k.clone(), timeless(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(timeless).collect()),
        other => other.clone(),
    }
}

/// What differs between eval's plans and the live objects: a planned change, or a status
/// other than the stored one.
fn differences(ns: &Namespace<'_>, report: &Value) -> Vec<String> {
    let mut found = Vec::new();
    for (key, plan) in report.as_object().expect("a map of plans") {
        for action in plan["actions"].as_array().into_iter().flatten() {
            if action["change"] != "nothing" {
                found.push(format!(
                    "{key}: a pending {} of {}",
                    action["change"], action["target"]
                ));
            }
        }
        if plan["status"].is_null() {
            continue;
        }
        let (kind, name) = key.split_once('/').expect("Kind/name");
        let live = get(ns, kind, name).unwrap_or_default();
        let (planned, stored) = (timeless(&plan["status"]), timeless(&live["status"]));
        if planned != stored {
            found.push(format!("{key}: eval's status {planned}\n  stored {stored}"));
        }
    }
    found
}

/// Applies the fixtures, plays the kubelet for their pods, and waits until eval on the
/// namespace plans no change and prints the stored statuses; returns that report.
fn settle(cp: &ControlPlane, ns: &Namespace<'_>) -> Value {
    apply_fixtures(ns);
    wait_get(ns, "pod", "postgresql-bkp-1");
    mark_pod(ns, "postgresql-bkp-1", true);
    wait_get(ns, "pod", "plain-1");
    mark_pod(ns, "plain-1", false);
    wait_get(ns, "pod", "kept-1");
    past_backup(ns, "kept-old", "kept", 60, Some("20261001T000000"));
    past_backup(ns, "kept-newer", "kept", 45, Some("20261016T000000"));
    eventually("eval plans no change on the settled state", SETTLE, || {
        let report = from_cluster(cp, ns, &now_rfc3339());
        match differences(ns, &report) {
            found if found.is_empty() => Ok(report),
            found => Err(found.join("\n")),
        }
    })
}

/// The fixtures reconciled by the operator: once settled, eval plans exactly what was applied.
#[test]
fn eval_on_the_settled_state_plans_what_the_operator_applied() {
    let cp = with_crds();
    let ns = cp.namespace("eval-parity");
    let _op = Operator::start(cp, &ns.name);
    let report = settle(cp, &ns);
    // Every fixture is covered, each kind with a status.
    for key in [
        "Cluster/postgresql-bkp",
        "Cluster/restored",
        "Cluster/plain",
        "Backup/backup-example",
        "Backup/orphan",
        "ScheduledBackup/backup-nightly",
    ] {
        assert!(
            report[key]["status"].is_object(),
            "no status for {key} in {report:#}"
        );
    }
    assert_eq!(
        report["Backup/orphan"]["status"]["reason"],
        "ClusterNotFound"
    );
    assert_eq!(
        report["Backup/backup-example"]["status"]["phase"],
        "running"
    );
    // The retention asked the deletion of the older Backup, and plans nothing more.
    assert!(report["Retention/kept"].is_object(), "{report:#}");
    let old = get(&ns, "backup", "kept-old").unwrap_or_default();
    assert_eq!(old["status"]["deletion"]["reason"], "Retention", "{old:#}");
    let waiting = &report["Cluster/restored"]["status"]["conditions"];
    assert!(
        waiting.to_string().contains("backup-example"),
        "{waiting:#}"
    );
}

/// The objects of the namespace as a file of `---` separated documents, as `kubectl get`
/// shows them (the Cluster's own objects by its label, as the operator watches them).
fn dump(ns: &Namespace<'_>) -> String {
    let kinds = [
        ("cluster,backup,scheduledbackup", None),
        ("secret", None),
        (
            "pod,pvc,service,configmap,serviceaccount,role,rolebinding",
            Some(CLUSTER_LABEL),
        ),
    ];
    let mut docs = Vec::new();
    for (kind, label) in kinds {
        let mut args = vec!["get", kind, "-o", "json"];
        args.extend(label.iter().flat_map(|l| ["-l", *l]));
        let out = ns.kubectl(&args);
        assert!(out.success, "kubectl get {kind}: {}", out.stderr);
        let list: Value = serde_json::from_str(&out.stdout).unwrap();
        docs.extend(
            list["items"]
                .as_array()
                .into_iter()
                .flatten()
                .map(Value::to_string),
        );
    }
    docs.join("\n---\n")
}

/// The same objects from a file and from the API server: the same plans.
#[test]
fn a_file_of_the_objects_gives_the_plans_the_api_server_gives() {
    let cp = with_crds();
    let ns = cp.namespace("eval-file");
    let op = Operator::start(cp, &ns.name);
    settle(cp, &ns);
    // Stopped, the operator changes nothing between the two reads.
    drop(op);
    let now = now_rfc3339();
    let input = std::env::temp_dir().join(format!("{}-objects.yaml", ns.name));
    std::fs::write(&input, dump(&ns)).unwrap();
    let writes = || {
        cp.audited_writes()
            .iter()
            .filter(|w| w.namespace == ns.name)
            .count()
    };
    let before = writes();
    let listed = from_cluster(cp, &ns, &now);
    // Read-only: no write in the namespace while eval read it (the operator is stopped).
    assert_eq!(writes(), before, "policy eval --from-cluster wrote");
    let read = eval(&["--input", &input.display().to_string(), "--now", &now]);
    assert_eq!(read, listed, "file {}", input.display());
    std::fs::remove_file(&input).ok();
    let pods = listed["Cluster/plain"]["actions"].to_string();
    assert!(pods.contains("plain-1"), "no plan of pod plain-1: {pods}");
}
