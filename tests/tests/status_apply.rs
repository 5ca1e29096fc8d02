//! Status written once, by server-side apply: against a real kube-apiserver, the Cluster's
//! status fields are owned by the `pgwarden-operator` field manager through an Apply (no
//! merge patch owns them), the agent's `status.archive` stays the agent's through the
//! operator's writes, and a field the operator stops setting (`policy` once no policy is in
//! force) is removed. A ReconcilePolicy's status is likewise the operator's apply alone, whole:
//! a failed load keeps the module in force, the next good one removes `lastError`.
//!
//! Needs `cargo xtask setup`, `cargo build -p pgwarden` and `cargo xtask build-policies`.

use pgwarden_tests::controlplane::{Namespace, with_crds};
use pgwarden_tests::operator::*;
use serde_json::{Value, json};

const CLUSTER: &str = "postgresql-bkp";
const POD: &str = "postgresql-bkp-1";

/// One owner: `manager`, through a server-side apply.
fn applied_by(manager: &str) -> Vec<(String, String)> {
    vec![(manager.to_string(), "Apply".to_string())]
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
    mark_pod(&ns, POD, true);
    poke(&ns, 1);
    wait_json(&ns, "cluster", CLUSTER, "ready with a primary", |c| {
        c["status"]["currentPrimary"] == POD
            && condition(c, "ContinuousArchiving").is_some_and(|(s, _, _)| s == "True")
    });
    let cluster = with_managed_fields(&ns, "cluster", CLUSTER);

    for field in [
        "phase",
        "conditions",
        "readyInstances",
        "currentPrimary",
        "policy",
    ] {
        assert_eq!(
            owners(&cluster, field),
            applied_by("pgwarden-operator"),
            "status.{field} is not owned by the operator's apply alone: {:#}",
            cluster["metadata"]["managedFields"]
        );
    }
    assert_eq!(owners(&cluster, "archive"), applied_by("pgwarden-agent"));
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
    let cluster = with_managed_fields(&ns, "cluster", CLUSTER);
    assert_eq!(owners(&cluster, "policy"), []);
    assert_eq!(owners(&cluster, "archive"), applied_by("pgwarden-agent"));
    assert_eq!(
        cluster["status"]["archive"]["archivedCount"], 1,
        "{}",
        cluster["status"]
    );
}

/// The retention's condition is its own: `RetentionApplied`, an entry of the list map
/// `status.conditions`, is owned by the retention's apply alone (`pgwarden-retention`, no
/// merge patch, not the Cluster controller's apply), and a Cluster reconcile that applies the
/// other conditions leaves it as the retention set it.
#[test]
fn the_retention_condition_is_the_retentions_apply_and_survives_a_cluster_reconcile() {
    let cp = with_crds();
    let ns = cp.namespace("status-apply-retention");
    let _op = Operator::start(cp, &ns.name);
    apply_file(&ns, &seed("secret.yaml"));
    apply_file(&ns, &seed("cluster-wal.yaml"));
    wait_condition(&ns, "cluster", CLUSTER, "PolicyApplied", "True");
    // Deletion requests the retention cannot read: it refuses the ConfigMap, on the Cluster.
    let settings = format!("{CLUSTER}-settings");
    wait_get(&ns, "configmap", &settings);
    let patch = json!({"data": {"deletions.json": "not json"}}).to_string();
    let out = ns.kubectl(&[
        "patch",
        "configmap",
        &settings,
        "--type=merge",
        "-p",
        &patch,
    ]);
    assert!(out.success, "{}", out.stderr);
    poke(&ns, 1);
    let refused = wait_condition(&ns, "cluster", CLUSTER, "RetentionApplied", "False");
    let retention = condition(&refused, "RetentionApplied");
    let only_retention = |cluster: &Value| {
        assert_eq!(
            condition_owners(cluster, "RetentionApplied"),
            applied_by("pgwarden-retention"),
            "RetentionApplied is not owned by the retention's apply alone: {:#}",
            cluster["metadata"]["managedFields"]
        );
    };
    only_retention(&with_managed_fields(&ns, "cluster", CLUSTER));

    // The Cluster controller applies a changed status (a ready primary): the condition stays.
    wait_get(&ns, "pod", POD);
    mark_pod(&ns, POD, true);
    poke(&ns, 2);
    wait_json(&ns, "cluster", CLUSTER, "ready with a primary", |c| {
        c["status"]["currentPrimary"] == POD
    });
    let cluster = with_managed_fields(&ns, "cluster", CLUSTER);
    assert_eq!(condition(&cluster, "RetentionApplied"), retention);
    only_retention(&cluster);
    // Every other condition is the Cluster controller's apply alone.
    let types = (cluster["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten())
    .filter_map(|c| c["type"].as_str())
    .filter(|t| *t != "RetentionApplied");
    for type_ in types {
        assert_eq!(
            condition_owners(&cluster, type_),
            applied_by("pgwarden-operator"),
            "{type_}: {:#}",
            cluster["metadata"]["managedFields"]
        );
    }

    // Readable requests again: the retention's next apply sets it True, still its own.
    let patch = json!({"data": {"deletions.json": "[]"}}).to_string();
    let out = ns.kubectl(&[
        "patch",
        "configmap",
        &settings,
        "--type=merge",
        "-p",
        &patch,
    ]);
    assert!(out.success, "{}", out.stderr);
    poke(&ns, 3);
    wait_condition(&ns, "cluster", CLUSTER, "RetentionApplied", "True");
    only_retention(&with_managed_fields(&ns, "cluster", CLUSTER));
}

/// A ScheduledBackup's status is whole in every apply: a later check keeps the time of the
/// last run (which only a run sets), and only the operator's apply owns the fields.
#[test]
fn the_scheduled_backup_status_is_applied_whole_by_the_operator() {
    let cp = with_crds();
    let ns = cp.namespace("status-apply-scheduled");
    let _op = Operator::start(cp, &ns.name);
    apply_file(&ns, &seed("secret.yaml"));
    apply_file(&ns, &seed("cluster-wal.yaml"));
    apply_yaml(
        &ns,
        "apiVersion: postgresql.k8s.2ndq.io/v1alpha1\nkind: ScheduledBackup\nmetadata:\n  name: nightly\nspec:\n  schedule: \"0 0 2 * * *\"\n  immediate: true\n  cluster:\n    name: postgresql-bkp\n",
    );
    let ran = wait_json(&ns, "scheduledbackup", "nightly", "ran once", |s| {
        s["status"]["lastScheduleTime"].is_string()
            && condition(s, "Scheduled").is_some_and(|(s, _, _)| s == "True")
    });
    let last_run = ran["status"]["lastScheduleTime"].clone();
    let checked = ran["status"]["lastCheckTime"].clone();
    // A check without a run (the annotation wakes the controller), a second later at least:
    // the check's time has seconds only.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let out = ns.kubectl(&[
        "annotate",
        "scheduledbackup",
        "nightly",
        "pgwarden.test/poke=1",
    ]);
    assert!(out.success, "{}", out.stderr);
    wait_json(&ns, "scheduledbackup", "nightly", "checked again", |s| {
        s["status"]["lastCheckTime"].is_string() && s["status"]["lastCheckTime"] != checked
    });
    let scheduled = with_managed_fields(&ns, "scheduledbackup", "nightly");
    assert_eq!(
        scheduled["status"]["lastScheduleTime"], last_run,
        "{}",
        scheduled["status"]
    );
    for field in [
        "lastScheduleTime",
        "lastCheckTime",
        "nextScheduleTime",
        "conditions",
    ] {
        assert_eq!(
            owners(&scheduled, field),
            applied_by("pgwarden-operator"),
            "status.{field} is not owned by the operator's apply alone: {:#}",
            scheduled["metadata"]["managedFields"]
        );
    }
}

fn file_policy(ns: &Namespace<'_>, name: &str, file: &str) {
    apply_yaml(ns, &file_policy_yaml(name, file, None));
}

fn wait_policy(ns: &Namespace<'_>, name: &str, what: &str, ready: bool) -> Value {
    eventually(
        &format!("ReconcilePolicy {name} {what}"),
        LOAD_WAIT,
        || match get(ns, "reconcilepolicy", name) {
            Some(p)
                if condition(&p, "Ready").is_some_and(|c| (c.0 == "True") == ready)
                    && p["status"]["observedGeneration"] == p["metadata"]["generation"] =>
            {
                Ok(p)
            }
            other => Err(format!("{:?}", other.map(|p| p["status"].clone()))),
        },
    )
}

/// A ReconcilePolicy's status is the operator's apply alone and whole each time: a module
/// that fails to load keeps the one in force (digest, ABI, load time) and says why; the next
/// good load removes `lastError`.
#[test]
fn the_reconcile_policy_status_is_applied_whole_by_the_operator() {
    let cp = with_crds();
    let ns = cp.namespace("status-apply-policy");
    let _op = Operator::start(cp, &ns.name);
    let name = format!("applied-{}", ns.name);
    let _guard = PolicyGuard(&ns, name.clone());
    let module = policy("default").display().to_string();
    file_policy(&ns, &name, &module);
    let loaded = wait_policy(&ns, &name, "loaded", true);

    file_policy(&ns, &name, "/nonexistent/policy.wasm");
    let failed = wait_policy(&ns, &name, "failed", false);
    // Each test's operator loads every (cluster-scoped) ReconcilePolicy, so the first
    // `loadedAt` may be another's, a moment later: from the failure on, it is kept.
    for field in ["digest", "abiVersion"] {
        assert_eq!(failed["status"][field], loaded["status"][field], "{field}");
    }
    assert!(
        failed["status"]["loadedAt"].is_string(),
        "{}",
        failed["status"]
    );
    let last_error = failed["status"]["lastError"].as_str().unwrap_or_default();
    let stays = format!(
        "; the module in force stays {}",
        loaded["status"]["digest"].as_str().unwrap()
    );
    assert!(last_error.ends_with(&stays), "{}", failed["status"]);
    let failed = with_managed_fields(&ns, "reconcilepolicy", &name);
    for field in [
        "digest",
        "abiVersion",
        "loadedAt",
        "lastError",
        "observedGeneration",
        "conditions",
    ] {
        assert_eq!(
            owners(&failed, field),
            applied_by("pgwarden-operator"),
            "status.{field} is not owned by the operator's apply alone: {:#}",
            failed["metadata"]["managedFields"]
        );
    }

    file_policy(&ns, &name, &module);
    wait_policy(&ns, &name, "loaded again", true);
    let again = with_managed_fields(&ns, "reconcilepolicy", &name);
    assert!(
        again["status"].get("lastError").is_none(),
        "{}",
        again["status"]
    );
    assert_eq!(owners(&again, "lastError"), []);
    assert_eq!(again["status"]["loadedAt"], failed["status"]["loadedAt"]);
    assert_eq!(owners(&again, "digest"), applied_by("pgwarden-operator"));
}
