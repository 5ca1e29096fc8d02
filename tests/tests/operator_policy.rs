//! ReconcilePolicies against a real kube-apiserver: a Cluster switched from the default to the
//! production policy changes live (no operator restart), a broken module keeps the last good
//! one and says why, and the production policy's denial reaches the Cluster.
//!
//! A test binary of its own: ReconcilePolicies are cluster-scoped, so every operator loads
//! them, and the steady-state test of `operator.rs` must not see their status writes.

use pgwarden_tests::controlplane::{Namespace, with_crds};
use pgwarden_tests::operator::*;
use serde_json::Value;

/// A ConfigMap holding `module` under `policy.wasm`, and a ReconcilePolicy loading it.
fn create_policy(ns: &Namespace<'_>, name: &str, config_map: &str, module: &std::path::Path) {
    let from = format!("--from-file=policy.wasm={}", module.display());
    let out = ns.kubectl(&["create", "configmap", config_map, &from]);
    assert!(out.success, "{}", out.stderr);
    apply_yaml(ns, &policy_yaml(name, &ns.name, config_map));
}

fn policy_yaml(name: &str, namespace: &str, config_map: &str) -> String {
    format!(
        "apiVersion: postgresql.k8s.2ndq.io/v1alpha1\nkind: ReconcilePolicy\nmetadata:\n  name: {name}\nspec:\n  module:\n    configMap:\n      namespace: {namespace}\n      name: {config_map}\n      key: policy.wasm\n"
    )
}

/// Waits for the module to be in force: compiling it may take long on a cold cache.
fn wait_policy_ready(ns: &Namespace<'_>, name: &str) -> Value {
    eventually(
        &format!("ReconcilePolicy {name} Ready"),
        LOAD_WAIT,
        || match get(ns, "reconcilepolicy", name) {
            Some(p) if condition(&p, "Ready").is_some_and(|c| c.0 == "True") => Ok(p),
            other => Err(format!("{other:?}")),
        },
    )
}

fn archive_settings(ns: &Namespace<'_>, cluster: &str) -> Value {
    let cm = wait_get(ns, "configmap", &format!("{cluster}-settings"));
    serde_json::from_str(cm["data"]["archive.json"].as_str().unwrap_or("null")).unwrap()
}

#[test]
fn switching_to_the_production_policy_changes_pods_live_and_a_broken_module_keeps_the_last_good() {
    let cp = with_crds();
    let ns = cp.namespace("policy-swap");
    let op = Operator::start(cp, &ns.name);
    let name = format!("production-{}", ns.name);
    let _guard = PolicyGuard(&ns, name.clone());
    apply_file(&ns, &seed("secret.yaml"));
    apply_yaml(&ns, &cluster_yaml("swap", None, true));
    let before = wait_converged(&ns, "cluster", "swap");
    assert_eq!(before["status"]["policy"]["name"], "default");
    let pod_before = wait_get(&ns, "pod", "swap-1");
    assert!(
        pod_before["spec"]["containers"][0]["resources"]["requests"].is_null(),
        "{}",
        pod_before["spec"]
    );
    assert!(archive_settings(&ns, "swap")["compression"].is_null());

    create_policy(&ns, &name, "production-policy", &policy("production"));
    let loaded = wait_policy_ready(&ns, &name);
    let digest = loaded["status"]["digest"].as_str().unwrap().to_string();
    assert_eq!(
        condition(&loaded, "Ready").unwrap().2,
        format!(
            "module sha256:{digest} (ABI {}) is in force",
            loaded["status"]["abiVersion"].as_str().unwrap()
        )
    );
    wait_event_in(
        cp,
        "default",
        &name,
        "ModuleLoaded",
        &format!("module sha256:{digest}"),
    );

    // The switch: the same operator process, the production decisions.
    let out = ns.kubectl(&[
        "patch",
        "cluster",
        "swap",
        "--type=merge",
        "-p",
        &format!(r#"{{"spec":{{"policy":"{name}"}}}}"#),
    ]);
    assert!(out.success, "{}", out.stderr);
    let after = wait_json(&ns, "cluster", "swap", "policy switched", |c| {
        c["status"]["policy"]["name"] == name.as_str() && c["status"]["observedGeneration"] == 2
    });
    assert_eq!(after["status"]["policy"]["digest"], digest.as_str());
    assert_eq!(
        condition(&after, "PolicyApplied").unwrap().2,
        format!("decisions of policy {name} (sha256:{digest}) applied")
    );
    let pod = wait_json(&ns, "pod", "swap-1", "production's requests", |p| {
        !p["spec"]["containers"][0]["resources"]["requests"].is_null()
    });
    assert_ne!(
        pod["metadata"]["uid"], pod_before["metadata"]["uid"],
        "the pod was not recreated"
    );
    let requests = &pod["spec"]["containers"][0]["resources"]["requests"];
    assert_eq!(
        (requests["cpu"].as_str(), requests["memory"].as_str()),
        (Some("500m"), Some("1Gi")),
        "{requests}"
    );
    let settings = eventually("production's archive settings", WAIT, || {
        let s = archive_settings(&ns, "swap");
        if s["compression"] == "zstd" {
            Ok(s)
        } else {
            Err(s.to_string())
        }
    });
    assert_eq!(settings["maxParallel"], 4, "{settings}");
    assert_eq!(settings["encryption"], "AES256", "{settings}");
    let pid = op.pid();

    // A broken module: the last good one stays in force, the policy says why.
    let garbage =
        std::env::temp_dir().join(format!("pgwarden-garbage-{}.wasm", std::process::id()));
    std::fs::write(
        &garbage,
        [0u8, 0x61, 0x73, 0x6d, 0xff, 0xfe, 0x00, 0x13, 0x37],
    )
    .unwrap();
    let out = ns.kubectl(&[
        "create",
        "configmap",
        "broken-policy",
        &format!("--from-file=policy.wasm={}", garbage.display()),
    ]);
    let _ = std::fs::remove_file(&garbage);
    assert!(out.success, "{}", out.stderr);
    apply_yaml(&ns, &policy_yaml(&name, &ns.name, "broken-policy"));
    let broken = wait_json(&ns, "reconcilepolicy", &name, "lastError", |p| {
        p["status"]["lastError"].is_string()
    });
    let last_error = broken["status"]["lastError"].as_str().unwrap();
    assert!(
        last_error.starts_with("cannot load policy module: "),
        "{last_error}"
    );
    assert!(
        last_error.ends_with(&format!("; the module in force stays {digest}")),
        "{last_error}"
    );
    assert_eq!(broken["status"]["digest"], digest.as_str());
    let (status, reason, message) = condition(&broken, "Ready").unwrap();
    assert_eq!(
        (status.as_str(), reason.as_str(), message.as_str()),
        ("False", "ModuleLoadFailed", last_error)
    );
    wait_event_in(cp, "default", &name, "ModuleLoadFailed", last_error);

    // The Cluster on that policy keeps reconciling with the good module.
    let reconciles = op.metric("pgwarden_reconciles_total", "kind=\"Cluster\"");
    let out = ns.kubectl(&[
        "annotate",
        "--overwrite",
        "cluster",
        "swap",
        "pgwarden.test/after-broken=1",
    ]);
    assert!(out.success, "{}", out.stderr);
    wait_metric_above(
        &op,
        "pgwarden_reconciles_total",
        "kind=\"Cluster\"",
        reconciles,
    );
    let cluster = wait_condition(&ns, "cluster", "swap", "PolicyApplied", "True");
    assert_eq!(cluster["status"]["policy"]["digest"], digest.as_str());
    assert_eq!(
        get(&ns, "pod", "swap-1").unwrap()["metadata"]["uid"],
        pod["metadata"]["uid"],
        "the pod changed"
    );
    assert_eq!(op.pid(), pid);
    assert!(op.get("/healthz").is_ok_and(|(code, _)| code == 200));
}

#[test]
fn the_production_policy_denies_a_cluster_without_backup() {
    let cp = with_crds();
    let ns = cp.namespace("policy-deny");
    let _op = Operator::start(cp, &ns.name);
    let name = format!("production-{}", ns.name);
    let _guard = PolicyGuard(&ns, name.clone());
    create_policy(&ns, &name, "production-policy", &policy("production"));
    wait_policy_ready(&ns, &name);
    apply_file(&ns, &seed("secret.yaml"));
    apply_yaml(&ns, &cluster_yaml("unprotected", Some(&name), false));
    apply_yaml(&ns, &cluster_yaml("protected", Some(&name), true));

    let denial = "the production policy requires a backup: Cluster unprotected has no spec.backup (set spec.backup.destinationPath, spec.backup.s3Credentials and spec.backup.wal.encryption)";
    let cluster = wait_condition_message(&ns, "cluster", "unprotected", "PolicyApplied", denial);
    let (status, reason, _) = condition(&cluster, "PolicyApplied").unwrap();
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "BackupRequired"),
        "the condition carries the policy's own reason"
    );
    assert_eq!(cluster["status"]["phase"], "Policy not applied");
    wait_event(&ns, "unprotected", "BackupRequired", denial);
    assert!(
        get(&ns, "pod", "unprotected-1").is_none(),
        "a denied Cluster got a pod"
    );

    // The other Cluster on the same policy is reconciled.
    let ok = wait_condition(&ns, "cluster", "protected", "PolicyApplied", "True");
    assert_eq!(ok["status"]["policy"]["name"], name.as_str());
    wait_get(&ns, "pod", "protected-1");
}

/// A module loaded from a file (`spec.module.file`) that loops or panics on some Clusters:
/// each such Cluster gets `PolicyApplied=False` with reason `PolicyFailed`, a Warning Event
/// that says what the sandbox stopped, and no pod; the operator keeps serving the other
/// Clusters on the same module.
#[test]
fn a_failing_policy_is_reported_on_its_cluster_and_the_others_reconcile() {
    let cp = with_crds();
    let ns = cp.namespace("policy-fails");
    let op = Operator::start(cp, &ns.name);
    let name = format!("adversarial-{}", ns.name);
    let _guard = PolicyGuard(&ns, name.clone());
    let module = policy("adversarial");
    apply_yaml(
        &ns,
        &format!(
            "apiVersion: postgresql.k8s.2ndq.io/v1alpha1\nkind: ReconcilePolicy\nmetadata:\n  name: {name}\nspec:\n  module:\n    file: {}\n  limits:\n    timeoutMillis: 50\n",
            module.display()
        ),
    );
    let loaded = wait_policy_ready(&ns, &name);
    assert_eq!(loaded["status"]["digest"], sha256_of(&module));
    apply_file(&ns, &seed("secret.yaml"));
    for cluster in ["loop", "panic", "fine"] {
        apply_yaml(&ns, &cluster_yaml(cluster, Some(&name), true));
    }

    for (cluster, says) in [
        ("loop", "the policy ran past its 50ms limit in"),
        ("panic", "the policy crashed in"),
    ] {
        let failed = wait_condition_message(&ns, "cluster", cluster, "PolicyApplied", says);
        let (status, reason, message) = condition(&failed, "PolicyApplied").unwrap();
        assert_eq!(
            (status.as_str(), reason.as_str()),
            ("False", "PolicyFailed"),
            "{message}"
        );
        wait_event(&ns, cluster, "PolicyFailed", says);
        assert!(
            get(&ns, "pod", &format!("{cluster}-1")).is_none(),
            "Cluster {cluster} got a pod from a failed decision"
        );
    }
    let fine = wait_converged(&ns, "cluster", "fine");
    assert_eq!(fine["status"]["policy"]["name"], name.as_str());
    wait_get(&ns, "pod", "fine-1");
    let (code, _) = op.get("/healthz").unwrap();
    assert_eq!(code, 200, "the operator is unhealthy after policy failures");
    assert!(
        op.metric("pgwarden_reconcile_errors_total", "error=\"deadline\"") >= 1.0,
        "{}",
        op.metrics()
    );
}

fn sha256_of(path: &std::path::Path) -> String {
    pgwarden::policy::digest(&std::fs::read(path).unwrap())
}

/// `kubectl replace` of the ConfigMap with `module` under `policy.wasm` (apply would keep a
/// last-applied annotation larger than the limit).
fn replace_config_map(ns: &Namespace<'_>, name: &str, module: &std::path::Path) {
    let from = format!("--from-file=policy.wasm={}", module.display());
    let out = ns.kubectl(&[
        "create",
        "configmap",
        name,
        &from,
        "--dry-run=client",
        "-o",
        "yaml",
    ]);
    assert!(out.success, "{}", out.stderr);
    let out = ns.kubectl_with_input(&["replace", "-f", "-"], Some(&out.stdout));
    assert!(out.success, "{}", out.stderr);
}

fn wait_digest(ns: &Namespace<'_>, policy: &str, digest: &str, within: std::time::Duration) {
    eventually(
        &format!("ReconcilePolicy {policy} at {digest}"),
        within,
        || match get(ns, "reconcilepolicy", policy) {
            Some(p) if p["status"]["digest"] == digest => Ok(()),
            other => Err(format!("{:?}", other.map(|p| p["status"].clone()))),
        },
    )
}

#[test]
fn new_module_bytes_in_the_config_map_are_in_force_within_seconds() {
    let cp = with_crds();
    let ns = cp.namespace("policy-edit");
    let _op = Operator::start(cp, &ns.name);
    let (name, warm) = (format!("live-{}", ns.name), format!("warm-{}", ns.name));
    let _guards = (
        PolicyGuard(&ns, name.clone()),
        PolicyGuard(&ns, warm.clone()),
    );
    // Both modules compiled first, so what is timed below is noticing the edit, not compiling.
    create_policy(&ns, &warm, "warm-policy", &policy("production"));
    wait_policy_ready(&ns, &warm);
    create_policy(&ns, &name, "live-policy", &policy("default"));
    wait_policy_ready(&ns, &name);
    wait_digest(&ns, &name, &sha256_of(&policy("default")), WAIT);

    // The edit: no change of the ReconcilePolicy, far sooner than its 300 s requeue.
    let started = std::time::Instant::now();
    replace_config_map(&ns, "live-policy", &policy("production"));
    let production = sha256_of(&policy("production"));
    wait_digest(&ns, &name, &production, std::time::Duration::from_secs(30));
    let took = started.elapsed();
    let loaded = wait_policy_ready(&ns, &name);
    assert!(loaded["status"]["lastError"].is_null(), "{loaded}");
    wait_event_in(
        cp,
        "default",
        &name,
        "ModuleLoaded",
        &format!("module sha256:{production}"),
    );
    eprintln!("the edited ConfigMap's module was in force after {took:?}");

    // Broken bytes in the same key: the last good module stays, the status says why.
    let garbage =
        std::env::temp_dir().join(format!("pgwarden-edit-garbage-{}.wasm", std::process::id()));
    std::fs::write(&garbage, b"\0asm not a component").unwrap();
    replace_config_map(&ns, "live-policy", &garbage);
    let _ = std::fs::remove_file(&garbage);
    let broken = eventually("lastError after the edit", WAIT, || {
        match get(&ns, "reconcilepolicy", &name) {
            Some(p) if p["status"]["lastError"].is_string() => Ok(p),
            other => Err(format!("{other:?}")),
        }
    });
    let last_error = broken["status"]["lastError"].as_str().unwrap();
    assert!(
        last_error.starts_with("cannot load policy module: ")
            && last_error.ends_with(&format!("; the module in force stays {production}")),
        "{last_error}"
    );
    assert_eq!(broken["status"]["digest"], production.as_str());
    assert_eq!(condition(&broken, "Ready").unwrap().1, "ModuleLoadFailed");
}

fn url_policy_yaml(name: &str, url: &str, sha256: Option<&str>) -> String {
    let mut yaml = format!(
        "apiVersion: postgresql.k8s.2ndq.io/v1alpha1\nkind: ReconcilePolicy\nmetadata:\n  name: {name}\nspec:\n  module:\n    url: {url}\n"
    );
    if let Some(sha256) = sha256 {
        yaml.push_str(&format!("    sha256: \"{sha256}\"\n"));
    }
    yaml
}

fn wait_last_error(ns: &Namespace<'_>, policy: &str, starts_with: &str) -> Value {
    eventually(&format!("{policy}: {starts_with}"), WAIT, || {
        match get(ns, "reconcilepolicy", policy) {
            Some(p)
                if p["status"]["lastError"]
                    .as_str()
                    .is_some_and(|e| e.starts_with(starts_with)) =>
            {
                Ok(p)
            }
            other => Err(format!("{:?}", other.map(|p| p["status"].clone()))),
        }
    })
}

#[test]
fn a_module_from_a_url_is_pinned_by_its_sha256() {
    let cp = with_crds();
    let ns = cp.namespace("policy-url");
    // The module server listens on plain http at 127.0.0.1: both refused by default.
    let allow = ["--policy-allow-http", "--policy-allow-private-addresses"];
    let _op = Operator::start_with_args(cp, &ns.name, &allow);
    let name = format!("url-{}", ns.name);
    let _guard = PolicyGuard(&ns, name.clone());
    let module = std::fs::read(policy("production")).unwrap();
    let actual = pgwarden::policy::digest(&module);
    let server = ModuleServer::start(vec![
        ("/production.wasm", Served::Bytes(module)),
        ("/huge.wasm", Served::Declared(64 << 20)),
    ]);
    let url = server.url("/production.wasm");

    // No sha256: admission refuses it with the rule's message.
    let out = ns.kubectl_with_input(
        &["apply", "-f", "-"],
        Some(&url_policy_yaml(&name, &url, None)),
    );
    assert!(!out.success);
    assert!(
        out.stderr.contains(
            "spec.module.url needs spec.module.sha256: a module fetched from a URL must be pinned by its digest"
        ),
        "{}",
        out.stderr
    );

    // The wrong digest: refused before anything compiles it, both digests named.
    let wrong = "0".repeat(64);
    apply_yaml(&ns, &url_policy_yaml(&name, &url, Some(&wrong)));
    let p = wait_last_error(&ns, &name, "cannot load policy module: spec.module.sha256");
    assert_eq!(
        p["status"]["lastError"],
        format!(
            "cannot load policy module: spec.module.sha256 mismatch: expected {wrong}, the module at spec.module.url {url} has {actual}; the module in force stays none"
        )
    );
    assert_eq!(condition(&p, "Ready").unwrap().1, "ModuleLoadFailed");
    assert!(p["status"]["digest"].is_null());

    // The right digest: in force.
    apply_yaml(&ns, &url_policy_yaml(&name, &url, Some(&actual)));
    let p = wait_policy_ready(&ns, &name);
    assert_eq!(p["status"]["digest"], actual.as_str());
    assert!(p["status"]["lastError"].is_null(), "{p}");
    assert!(server.hits() >= 2);

    // Unreachable, and too large: the module in force stays. Pins of no cached module.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let gone = format!("http://{closed}/policy.wasm");
    let pin = pgwarden::policy::digest(format!("unreachable {}", ns.name).as_bytes());
    apply_yaml(&ns, &url_policy_yaml(&name, &gone, Some(&pin)));
    let p = wait_last_error(
        &ns,
        &name,
        &format!("cannot load policy module: spec.module.url {gone} is unreachable: "),
    );
    let last_error = p["status"]["lastError"].as_str().unwrap();
    assert!(
        last_error.ends_with(&format!("; the module in force stays {actual}")),
        "{last_error}"
    );
    assert_eq!(p["status"]["digest"], actual.as_str());

    let huge = server.url("/huge.wasm");
    let pin = pgwarden::policy::digest(format!("huge {}", ns.name).as_bytes());
    apply_yaml(&ns, &url_policy_yaml(&name, &huge, Some(&pin)));
    let p = wait_last_error(&ns, &name, "cannot load policy module: spec.module.url");
    let limit = pgwarden::policy::fetch::DEFAULT_MAX_MODULE_BYTES;
    let expected = format!(
        "cannot load policy module: spec.module.url {huge} serves more than {limit} bytes (the operator's module size limit, --policy-max-module-bytes); the module in force stays {actual}"
    );
    let p = if p["status"]["lastError"] == expected.as_str() {
        p
    } else {
        wait_last_error(&ns, &name, &expected)
    };
    assert_eq!(p["status"]["lastError"], expected.as_str());
    assert_eq!(p["status"]["digest"], actual.as_str());
}

#[test]
fn the_production_policy_keeps_the_objects_of_deleted_backups_marked_deleted() {
    let cp = with_crds();
    let ns = cp.namespace("policy-retention");
    let _op = Operator::start(cp, &ns.name);
    let name = format!("production-{}", ns.name);
    let _guard = PolicyGuard(&ns, name.clone());
    create_policy(&ns, &name, "production-policy", &policy("production"));
    wait_policy_ready(&ns, &name);
    apply_file(&ns, &seed("secret.yaml"));
    apply_yaml(
        &ns,
        &(cluster_yaml("pg", Some(&name), true) + "    retentionPolicy: 30d\n"),
    );
    wait_get(&ns, "pod", "pg-1");
    past_backup(&ns, "old", "pg", 60, Some("20260926T000000"));
    // Ended before the 30-day window: it restores to the window's first moment, so it stays.
    past_backup(&ns, "window-start", "pg", 35, Some("20261026T000000"));
    past_backup(&ns, "recent", "pg", 1, Some("20261124T000000"));

    let asked = wait_json(&ns, "backup", "old", "deletion asked", |b| {
        b["status"]["deletion"].is_object()
    });
    assert_eq!(asked["status"]["deletion"]["object"], "keep");
    let patch =
        pgwarden::instance::retention::report_patch("old", "pg-1", 1, &Ok(()), now_rfc3339());
    server_side_apply_status(&ns, &patch, "pgwarden-agent");

    let message = "backup 20260926T000000 was deleted from s3://BUCKET_NAME/path/to/folder: past the retention policy 30d";
    let kept = wait_condition(&ns, "backup", "old", "Deleted", "True");
    assert_eq!(
        condition(&kept, "Deleted").unwrap(),
        ("True".into(), "DeletedByRetention".into(), message.into())
    );
    assert_eq!(kept["status"]["phase"], "completed");
    assert_eq!(kept["status"]["reason"], "DeletedByRetention");
    wait_event(
        &ns,
        "pg",
        "BackupDeleted",
        &format!("{message}; Backup old is kept, marked Deleted"),
    );
    let describe = ns.kubectl(&["describe", "backup", "old"]).stdout;
    assert!(describe.contains("DeletedByRetention"), "{describe}");
    for kept in ["recent", "window-start"] {
        let b = get(&ns, "backup", kept).unwrap();
        assert!(b["status"]["deletion"].is_null(), "{kept}: {b}");
    }
}

#[test]
fn a_deleted_reconcile_policy_is_out_of_force_and_its_clusters_say_so() {
    let cp = with_crds();
    let ns = cp.namespace("policy-delete");
    let _op = Operator::start(cp, &ns.name);
    let name = format!("doomed-{}", ns.name);
    let _guard = PolicyGuard(&ns, name.clone());
    create_policy(&ns, &name, "doomed-policy", &policy("default"));
    wait_policy_ready(&ns, &name);
    apply_file(&ns, &seed("secret.yaml"));
    apply_yaml(&ns, &cluster_yaml("pg", Some(&name), true));
    let applied = wait_condition(&ns, "cluster", "pg", "PolicyApplied", "True");
    assert_eq!(applied["status"]["policy"]["name"], name.as_str());

    let out = ns.cp.kubectl(&["delete", "reconcilepolicy", &name]);
    assert!(out.is_ok(), "{out:?}");
    let message = format!(
        "ReconcilePolicy {name} (spec.policy) is not loaded: create it, or check `kubectl get reconcilepolicy {name}` for its last error"
    );
    let cluster = wait_condition_message(&ns, "cluster", "pg", "PolicyApplied", &message);
    assert_eq!(
        condition(&cluster, "PolicyApplied").unwrap().1,
        "PolicyNotFound"
    );
}

/// Issue 11 item 7: an endless `spec.module.file` is refused as too large (the operator stays
/// up), and new `limits` take effect on the module in force, without a new module.
#[test]
fn an_endless_module_file_is_too_large_and_new_limits_need_no_new_module() {
    let cp = with_crds();
    let ns = cp.namespace("policy-limits");
    let op = Operator::start(cp, &ns.name);
    let name = format!("limits-{}", ns.name);
    let _guard = PolicyGuard(&ns, name.clone());
    apply_yaml(&ns, &file_policy_yaml(&name, "/dev/zero", None));
    let limit = pgwarden::policy::DEFAULT_MAX_MODULE_BYTES;
    let p = wait_last_error(&ns, &name, "cannot load policy module: /dev/zero");
    assert_eq!(
        p["status"]["lastError"],
        format!(
            "cannot load policy module: /dev/zero (spec.module.file) is too large: more than {limit} bytes (the operator's module size limit, --policy-max-module-bytes); the module in force stays none"
        )
    );
    assert_eq!(op.get("/healthz").unwrap().0, 200);

    let module = policy("adversarial");
    let file = module.display().to_string();
    apply_yaml(&ns, &file_policy_yaml(&name, &file, Some(3000)));
    wait_policy_ready(&ns, &name);
    apply_file(&ns, &seed("secret.yaml"));
    apply_yaml(&ns, &cluster_yaml("loop", Some(&name), true));
    let says = |ms: u32| format!("the policy ran past its {ms}ms limit in");
    wait_condition_message(&ns, "cluster", "loop", "PolicyApplied", &says(3000));
    let loaded_at = get(&ns, "reconcilepolicy", &name).unwrap()["status"]["loadedAt"].clone();

    // The same module, a shorter deadline: in force at once, nothing loaded again.
    apply_yaml(&ns, &file_policy_yaml(&name, &file, Some(50)));
    wait_condition_message(&ns, "cluster", "loop", "PolicyApplied", &says(50));
    let p = get(&ns, "reconcilepolicy", &name).unwrap();
    assert_eq!(p["status"]["digest"], sha256_of(&module));
    assert_eq!(
        p["status"]["loadedAt"], loaded_at,
        "the module was not loaded again"
    );
}

/// Issue 11 item 8: a namespace the platform bound to a policy (`--namespace-policy`) is
/// decided by it whatever its Clusters name, and a Cluster naming another says so.
#[test]
fn a_cluster_in_a_bound_namespace_gets_the_bound_policy_and_says_so() {
    let cp = with_crds();
    let ns = cp.namespace("policy-bound");
    let (bound, other) = (format!("bound-{}", ns.name), format!("other-{}", ns.name));
    let _guards = (
        PolicyGuard(&ns, bound.clone()),
        PolicyGuard(&ns, other.clone()),
    );
    let binding = format!("{}={bound}", ns.name);
    let _op = Operator::start_with_args(cp, &ns.name, &["--namespace-policy", &binding]);
    let (production, default) = (policy("production"), policy("default"));
    apply_yaml(
        &ns,
        &file_policy_yaml(&bound, &production.display().to_string(), None),
    );
    apply_yaml(
        &ns,
        &file_policy_yaml(&other, &default.display().to_string(), None),
    );
    wait_policy_ready(&ns, &bound);
    wait_policy_ready(&ns, &other);
    apply_file(&ns, &seed("secret.yaml"));
    apply_yaml(&ns, &cluster_yaml("escapes", Some(&other), true));
    apply_yaml(&ns, &cluster_yaml("unnamed", None, true));

    let expected = format!(
        "spec.policy names ReconcilePolicy {other}, but namespace {} is bound to ReconcilePolicy {bound} by the platform (the operator's --namespace-policy): {bound} decides",
        ns.name
    );
    let escapes = wait_condition_message(&ns, "cluster", "escapes", "PolicyAsRequested", &expected);
    let (status, reason, _) = condition(&escapes, "PolicyAsRequested").unwrap();
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "NamespaceBound")
    );
    wait_event(&ns, "escapes", "NamespaceBound", &expected);
    for cluster in ["escapes", "unnamed"] {
        let decided = wait_json(
            &ns,
            "cluster",
            cluster,
            "decided by the bound policy",
            |c| c["status"]["policy"]["name"] == bound.as_str(),
        );
        assert_eq!(
            decided["status"]["policy"]["digest"],
            sha256_of(&production),
            "{cluster}"
        );
    }
    let unnamed = get(&ns, "cluster", "unnamed").unwrap();
    let (status, _, message) = condition(&unnamed, "PolicyAsRequested").unwrap();
    assert_eq!(status, "False");
    assert!(message.starts_with("spec.policy is not set"), "{message}");
}
