//! Status written once, by server-side apply: against a real kube-apiserver, the Cluster's
//! status fields are owned by the `pgwarden-operator` field manager through an Apply (no
//! merge patch owns them), the agent's `status.archive` stays the agent's through the
//! operator's writes, and a field the operator stops setting (`policy` once no policy is in
//! force) is removed.
//!
//! Needs `cargo xtask setup`, `cargo build -p pgwarden` and `cargo xtask build-policies`.

use pgwarden_tests::controlplane::{Namespace, with_crds};
use pgwarden_tests::operator::*;
use serde_json::{Value, json};

const CLUSTER: &str = "postgresql-bkp";
const POD: &str = "postgresql-bkp-1";

/// The managedFields entries of `object` that own `status.<field>`: (manager, operation).
fn owners(object: &Value, field: &str) -> Vec<(String, String)> {
    let key = format!("f:{field}");
    let entries = object["metadata"]["managedFields"].as_array();
    entries
        .into_iter()
        .flatten()
        .filter(|e| e["fieldsV1"]["f:status"].get(&key).is_some())
        .map(|e| {
            let text = |k: &str| e[k].as_str().unwrap_or_default().to_string();
            (text("manager"), text("operation"))
        })
        .collect()
}

/// The Cluster with its managedFields (`kubectl get` leaves them out unless asked).
fn with_managed_fields(ns: &Namespace<'_>) -> Value {
    let out = ns.kubectl(&[
        "get",
        "cluster",
        CLUSTER,
        "-o",
        "json",
        "--show-managed-fields",
    ]);
    assert!(out.success, "{}", out.stderr);
    serde_json::from_str(&out.stdout).unwrap()
}

fn poke(ns: &Namespace<'_>, n: u32) {
    let out = ns.kubectl(&[
        "annotate",
        "--overwrite",
        "cluster",
        CLUSTER,
        &format!("pgwarden.test/poke={n}"),
    ]);
    assert!(out.success, "{}", out.stderr);
}

fn mark_pod(ns: &Namespace<'_>, ready: bool) {
    let now = now_rfc3339();
    let status = json!({"status": {
        "phase": "Running",
        "podIP": "10.0.0.10",
        "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }, "lastTransitionTime": now}],
        "containerStatuses": [{"name": "postgres", "ready": ready, "restartCount": 0, "image": "pgwarden", "imageID": "",
            "started": true, "state": {"running": {"startedAt": now}}}],
    }});
    let out = ns.kubectl(&[
        "patch",
        "pod",
        POD,
        "--subresource=status",
        "--type=merge",
        "-p",
        &status.to_string(),
    ]);
    assert!(out.success, "cannot mark pod {POD}: {}", out.stderr);
}

#[test]
fn the_cluster_status_is_applied_by_the_operator_and_keeps_the_agents_fields() {
    let cp = with_crds();
    let ns = cp.namespace("status-apply");
    let _op = Operator::start(cp, &ns.name);
    apply_file(&ns, &seed("secret.yaml"));
    apply_file(&ns, &seed("cluster-wal.yaml"));
    wait_condition(&ns, "cluster", CLUSTER, "PolicyApplied", "True");

    // The agent's report, as `pgwarden instance` writes it (server-side apply, its manager).
    let archive = json!({
        "apiVersion": "postgresql.k8s.2ndq.io/v1alpha1", "kind": "Cluster",
        "metadata": {"name": CLUSTER},
        "status": {"archive": {"podName": POD, "archivedCount": 1,
            "lastArchivedWal": "000000010000000000000001",
            "lastArchivedTime": "2026-11-30T10:00:00Z"}},
    });
    server_side_apply_status(&ns, &archive, "pgwarden-agent");
    wait_get(&ns, "pod", POD);
    mark_pod(&ns, true);
    poke(&ns, 1);
    wait_json(&ns, "cluster", CLUSTER, "ready with a primary", |c| {
        c["status"]["currentPrimary"] == POD
            && condition(c, "ContinuousArchiving").is_some_and(|(s, _, _)| s == "True")
    });
    let cluster = with_managed_fields(&ns);

    let operator = ("pgwarden-operator".to_string(), "Apply".to_string());
    for field in [
        "phase",
        "conditions",
        "readyInstances",
        "currentPrimary",
        "policy",
    ] {
        assert_eq!(
            owners(&cluster, field),
            [operator.clone()],
            "status.{field} is not owned by the operator's apply alone: {:#}",
            cluster["metadata"]["managedFields"]
        );
    }
    let agent = ("pgwarden-agent".to_string(), "Apply".to_string());
    assert_eq!(owners(&cluster, "archive"), [agent.clone()]);
    assert_eq!(
        cluster["status"]["archive"]["lastArchivedWal"], "000000010000000000000001",
        "{}",
        cluster["status"]
    );

    // No policy to decide: the operator's next apply leaves `policy` out, and the server
    // removes it; the agent's archive stays.
    let out = ns.kubectl(&[
        "patch",
        "cluster",
        CLUSTER,
        "--type=merge",
        "-p",
        r#"{"spec":{"policy":"no-such-policy"}}"#,
    ]);
    assert!(out.success, "{}", out.stderr);
    wait_json(&ns, "cluster", CLUSTER, "no policy in force", |c| {
        c["status"].get("policy").is_none() && c["status"]["phase"] == "Policy not applied"
    });
    let cluster = with_managed_fields(&ns);
    assert_eq!(owners(&cluster, "policy"), []);
    assert_eq!(owners(&cluster, "archive"), [agent]);
    assert_eq!(
        cluster["status"]["archive"]["archivedCount"], 1,
        "{}",
        cluster["status"]
    );
}
