//! `pgwarden operator` against a real kube-apiserver: the seed's Cluster reconciled to its
//! owned objects and collected with it, a steady state that writes nothing, bad situations
//! reported as conditions and Events, Backup phases driven by agent facts, ScheduledBackups.
//!
//! Each test has its own namespace and its own operator process limited to it
//! (`--watch-namespace`). Needs `cargo xtask setup`, `cargo build -p pgwarden` and
//! `cargo xtask build-policies`.

use std::path::Path;
use std::time::Duration;

use pgwarden_crds::settings::ArchiveSettings;
use pgwarden_tests::controlplane::with_crds;
use pgwarden_tests::operator::*;
use serde_json::{Value, json};

const CLUSTER: &str = "postgresql-bkp";

#[test]
fn seed_cluster_reconciles_to_owned_objects_and_is_collected() {
    let cp = with_crds();
    let ns = cp.namespace("seed-cluster");
    let _op = Operator::start(cp, &ns.name);
    apply_file(&ns, &seed("secret.yaml"));
    apply_file(&ns, &seed("cluster-wal.yaml"));

    let cluster = wait_condition(&ns, "cluster", CLUSTER, "PolicyApplied", "True");
    let uid = cluster["metadata"]["uid"].as_str().unwrap().to_string();
    let message = condition(&cluster, "PolicyApplied").unwrap().2;
    assert!(
        message.starts_with("decisions of policy default (sha256:"),
        "{message}"
    );
    for type_ in ["Ready", "ContinuousArchiving", "PolicyApplied"] {
        assert!(
            condition(&cluster, type_).is_some(),
            "condition {type_} missing: {}",
            cluster["status"]
        );
    }
    assert_eq!(cluster["status"]["policy"]["name"], "default");

    // The instance pod: the agent, credentials only by reference.
    let pod = wait_get(&ns, "pod", "postgresql-bkp-1");
    let container = pod["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "postgres")
        .unwrap_or_else(|| panic!("no postgres container: {pod}"));
    let command: Vec<&str> = ["command", "args"]
        .iter()
        .flat_map(|k| container[k].as_array().into_iter().flatten())
        .filter_map(Value::as_str)
        .collect();
    assert!(
        command.join(" ").contains("instance run"),
        "the container does not run `pgwarden instance run`: {command:?}"
    );
    let env = container["env"].as_array().cloned().unwrap_or_default();
    for key in ["ACCESS_KEY_ID", "ACCESS_SECRET_KEY"] {
        let by_ref = env.iter().any(|e| {
            let r = &e["valueFrom"]["secretKeyRef"];
            r["name"] == "aws-creds" && r["key"] == key
        });
        assert!(by_ref, "no secretKeyRef env for aws-creds/{key}: {env:?}");
    }
    let text = pod.to_string();
    for literal in ["<access key here>", "<secret key here>"] {
        assert!(
            !text.contains(literal),
            "the pod carries a secret value {literal:?}"
        );
    }

    // Claim, Services, settings.
    let claim = wait_get(&ns, "pvc", "postgresql-bkp-1");
    let services: Vec<Value> = [
        "postgresql-bkp-rw",
        "postgresql-bkp-r",
        "postgresql-bkp-any",
    ]
    .iter()
    .map(|s| wait_get(&ns, "service", s))
    .collect();
    let settings = wait_get(&ns, "configmap", "postgresql-bkp-settings");
    let archive = settings["data"]["archive.json"]
        .as_str()
        .unwrap_or_else(|| panic!("no archive.json: {settings}"));
    let archive: ArchiveSettings = serde_json::from_str(archive).unwrap();
    let as_json = serde_json::to_value(&archive).unwrap();
    assert_eq!(
        as_json["destinationPath"],
        "s3://BUCKET_NAME/path/to/folder"
    );
    assert_eq!(as_json["compression"], "gzip");
    assert_eq!(as_json["encryption"], "AES256");
    let args = pgwarden::instance::barman::wal_archive_args(
        &archive,
        Path::new("pg_wal/000000010000000000000001"),
    );
    assert!(args.iter().any(|a| a == "--gzip"), "{args:?}");
    assert!(
        args.windows(2).any(|w| w[0] == "-e" && w[1] == "AES256"),
        "{args:?}"
    );
    assert!(
        args.iter().any(|a| a == "s3://BUCKET_NAME/path/to/folder"),
        "{args:?}"
    );

    // The agent's identity: its own ServiceAccount, with a Role limited to Backups and status.
    assert_eq!(pod["spec"]["serviceAccountName"], "postgresql-bkp-agent");
    let account = wait_get(&ns, "serviceaccount", "postgresql-bkp-agent");
    let role = wait_get(&ns, "role", "postgresql-bkp-agent");
    let binding = wait_get(&ns, "rolebinding", "postgresql-bkp-agent");
    let can = |verb: &str, resource: &str, subresource: &str| {
        let user = format!("system:serviceaccount:{}:postgresql-bkp-agent", ns.name);
        let mut args = vec!["auth", "can-i", verb, resource, "--as", &user];
        if !subresource.is_empty() {
            args.extend(["--subresource", subresource]);
        }
        ns.kubectl(&args).stdout.trim().to_string()
    };
    let (backups, clusters) = (
        "backups.postgresql.k8s.2ndq.io",
        "clusters.postgresql.k8s.2ndq.io",
    );
    assert_eq!(can("watch", backups, ""), "yes");
    assert_eq!(can("patch", backups, "status"), "yes");
    // Its own Cluster's status only (resourceNames): not another Cluster's, nor any unnamed.
    let own_cluster = format!("{clusters}/postgresql-bkp");
    assert_eq!(can("patch", &own_cluster, "status"), "yes");
    assert_eq!(can("patch", &format!("{clusters}/other"), "status"), "no");
    assert_eq!(can("patch", clusters, "status"), "no");
    assert_eq!(can("patch", &own_cluster, ""), "no");
    assert_eq!(can("delete", backups, ""), "no");
    assert_eq!(can("get", "secrets", ""), "no");

    let mut owned = vec![
        ("pod", pod),
        ("pvc", claim),
        ("configmap", settings),
        ("serviceaccount", account),
        ("role", role),
        ("rolebinding", binding),
    ];
    owned.extend(services.into_iter().map(|s| ("service", s)));
    for (kind, object) in &owned {
        assert_owned_by(kind, object, &uid);
    }

    // Deleting the Cluster: the garbage collector removes what it owns.
    let out = ns.kubectl(&["delete", "cluster", CLUSTER]);
    assert!(out.success, "{}", out.stderr);
    for (kind, object) in &owned {
        let name = object["metadata"]["name"].as_str().unwrap();
        wait_gone(&ns, kind, name);
    }
}

/// Counted by the API server itself: its audit log records every write of the operator's
/// user, so a write path the operator's own counter missed would still show. Lease renewals
/// (leader election) are writes by design and are left out.
#[test]
fn steady_state_reconciles_write_nothing() {
    let cp = with_crds();
    let ns = cp.namespace("steady");
    let op = Operator::start(cp, &ns.name);
    apply_file(&ns, &seed("secret.yaml"));
    apply_file(&ns, &seed("cluster-wal.yaml"));
    wait_converged(&ns, "cluster", CLUSTER);
    let writes = || -> Vec<String> {
        cp.audited_writes()
            .into_iter()
            .filter(|w| w.namespace == ns.name && w.resource != "leases")
            .map(|w| w.to_string())
            .collect()
    };
    let converging = writes();
    assert!(
        converging.iter().any(|w| w.starts_with("patch pods ")),
        "the audit log shows no write of the operator while it converged: {converging:#?}"
    );

    // One annotation to let whatever the convergence still had in flight settle.
    let mut reconciles = op.metric("pgwarden_reconciles_total", "kind=\"Cluster\"");
    annotate(&ns, CLUSTER, 0);
    reconciles = wait_metric_above(
        &op,
        "pgwarden_reconciles_total",
        "kind=\"Cluster\"",
        reconciles,
    );
    let before = writes();
    let counted = op.metric("pgwarden_api_writes_total", "");
    let generation = get(&ns, "cluster", CLUSTER).unwrap()["metadata"]["generation"].clone();

    for n in 1..=3 {
        annotate(&ns, CLUSTER, n);
        reconciles = wait_metric_above(
            &op,
            "pgwarden_reconciles_total",
            "kind=\"Cluster\"",
            reconciles,
        );
    }
    assert_eq!(
        get(&ns, "cluster", CLUSTER).unwrap()["metadata"]["generation"],
        generation,
        "annotations changed the generation"
    );
    let after = writes();
    assert_eq!(
        after[before.len()..],
        [] as [String; 0],
        "steady-state reconciles wrote to the API server (its audit log)"
    );
    assert_eq!(
        op.metric("pgwarden_api_writes_total", ""),
        counted,
        "the operator counted writes the audit log does not show:\n{}",
        op.metrics()
    );
}

/// Two replicas on one Lease: the second says on `/leader` it does not lead and reconciles
/// nothing while the first leads; SIGTERM to the first makes it release the Lease on its way
/// out, and the second takes over and reconciles.
#[test]
fn a_second_replica_waits_and_takes_over_when_the_leader_stops() {
    let cp = with_crds();
    let ns = cp.namespace("replicas");
    let lease = "pgwarden-replicas";
    let mut first = Operator::start_replica(cp, Some(&ns.name), Some(lease), true).unwrap();
    let mut second = Operator::start_replica(cp, Some(&ns.name), Some(lease), false).unwrap();
    let identity = |op: &Operator| format!("test-{}", op.metrics_addr.rsplit(':').next().unwrap());
    eventually("the second replica waiting", WAIT, || {
        let log = std::fs::read_to_string(&second.log).unwrap_or_default();
        if log.contains("another replica leads; waiting") {
            Ok(())
        } else {
            Err(second.log_tail(5))
        }
    });
    assert_eq!(second.get("/healthz").unwrap().0, 200);
    assert_eq!(
        second.get("/leader").unwrap().0,
        503,
        "a waiting replica does not lead"
    );
    let holder = |ns: &pgwarden_tests::controlplane::Namespace<'_>| {
        get(ns, "lease", lease).unwrap()["spec"]["holderIdentity"].clone()
    };
    assert_eq!(holder(&ns), identity(&first).as_str());

    apply_file(&ns, &seed("secret.yaml"));
    apply_file(&ns, &seed("cluster-wal.yaml"));
    wait_converged(&ns, "cluster", CLUSTER);
    assert_eq!(
        second.metric("pgwarden_reconciles_total", ""),
        0.0,
        "the waiting replica reconciled"
    );

    let status = first.terminate(Duration::from_secs(30)).unwrap();
    assert!(
        status.success(),
        "the leader exited with {status} on SIGTERM"
    );
    let log = std::fs::read_to_string(&first.log).unwrap();
    assert!(log.contains("lease released"), "{}", first.log_tail(20));

    second.wait_ready(LOAD_WAIT).unwrap();
    assert_eq!(holder(&ns), identity(&second).as_str());
    apply_yaml(&ns, &cluster_yaml("after-failover", None, true));
    wait_converged(&ns, "cluster", "after-failover");
    wait_get(&ns, "pod", "after-failover-1");
}

#[test]
fn missing_secret_then_missing_key_are_reported() {
    let cp = with_crds();
    let ns = cp.namespace("missing-secret");
    let _op = Operator::start(cp, &ns.name);
    apply_file(&ns, &seed("cluster-wal.yaml"));
    let not_found = format!(
        "Secret {}/aws-creds not found (referenced by spec.backup.s3Credentials.accessKeyId): create it, e.g. kubectl create secret generic aws-creds",
        ns.name
    );
    let cluster =
        wait_condition_message(&ns, "cluster", CLUSTER, "ContinuousArchiving", &not_found);
    assert_eq!(
        condition(&cluster, "ContinuousArchiving").unwrap().1,
        "SecretNotFound"
    );
    wait_event(&ns, CLUSTER, "SecretNotFound", &not_found);

    // The Secret, without one of its keys.
    let out = ns.kubectl(&[
        "create",
        "secret",
        "generic",
        "aws-creds",
        "--from-literal=ACCESS_KEY_ID=x",
    ]);
    assert!(out.success, "{}", out.stderr);
    let no_key = format!(
        "Secret {}/aws-creds has no key ACCESS_SECRET_KEY (referenced by spec.backup.s3Credentials.secretAccessKey)",
        ns.name
    );
    wait_condition_message(&ns, "cluster", CLUSTER, "ContinuousArchiving", &no_key);
    wait_event(&ns, CLUSTER, "SecretNotFound", &no_key);

    // Both keys: the condition moves on to waiting for the agent.
    let out = ns.kubectl(&["delete", "secret", "aws-creds"]);
    assert!(out.success, "{}", out.stderr);
    apply_file(&ns, &seed("secret.yaml"));
    wait_condition_message(
        &ns,
        "cluster",
        CLUSTER,
        "ContinuousArchiving",
        "the primary's agent has not reported WAL archiving yet",
    );
}

#[test]
fn backup_of_an_absent_cluster_waits_and_says_so() {
    let cp = with_crds();
    let ns = cp.namespace("absent-cluster");
    let _op = Operator::start(cp, &ns.name);
    apply_file(&ns, &seed("backup.yaml"));
    // No Cluster, so no policy to ask (not the default one in its place): the host says so.
    let message = format!(
        "Cluster {}/postgresql-bkp (spec.cluster.name) does not exist, so no policy decides for this Backup: create the Cluster, or delete the Backup",
        ns.name
    );
    let backup = wait_json(&ns, "backup", "backup-example", "status.message", |b| {
        b["status"]["message"] == message.as_str()
    });
    assert_eq!(backup["status"]["phase"], "pending");
    assert_eq!(backup["status"]["reason"], "ClusterNotFound");
    assert_eq!(
        condition(&backup, "PolicyApplied").unwrap(),
        ("False".into(), "ClusterNotFound".into(), message.clone())
    );
    wait_event(&ns, "backup-example", "ClusterNotFound", &message);
}

#[test]
fn an_unknown_policy_is_reported_and_others_keep_reconciling() {
    let cp = with_crds();
    let ns = cp.namespace("unknown-policy");
    let _op = Operator::start(cp, &ns.name);
    apply_file(&ns, &seed("secret.yaml"));
    apply_yaml(&ns, &cluster_yaml("orphan", Some("no-such-policy"), true));
    apply_yaml(&ns, &cluster_yaml("healthy", None, true));
    let message = "ReconcilePolicy no-such-policy (spec.policy) is not loaded: create it, or check `kubectl get reconcilepolicy no-such-policy` for its last error";
    let orphan = wait_condition_message(&ns, "cluster", "orphan", "PolicyApplied", message);
    assert_eq!(
        condition(&orphan, "PolicyApplied").unwrap(),
        ("False".into(), "PolicyNotFound".into(), message.into())
    );
    assert_eq!(orphan["status"]["phase"], "Policy not applied");
    wait_event(&ns, "orphan", "PolicyNotFound", message);
    assert!(
        get(&ns, "pod", "orphan-1").is_none(),
        "a pod was created without a policy"
    );
    wait_condition(&ns, "cluster", "healthy", "PolicyApplied", "True");
    wait_get(&ns, "pod", "healthy-1");
}

#[test]
fn backup_moves_through_its_phases_on_agent_facts() {
    let cp = with_crds();
    let ns = cp.namespace("backup-phases");
    let _op = Operator::start(cp, &ns.name);
    apply_file(&ns, &seed("secret.yaml"));
    apply_file(&ns, &seed("cluster-wal.yaml"));
    wait_get(&ns, "pod", "postgresql-bkp-1");
    apply_file(&ns, &seed("backup.yaml"));
    let pending = wait_json(&ns, "backup", "backup-example", "phase pending", |b| {
        b["status"]["phase"] == "pending"
    });
    assert_eq!(pending["status"]["reason"], "WaitingForInstance");

    // No kubelet here: the test says the pod runs and is ready, as a kubelet would.
    mark_pod(&ns, "postgresql-bkp-1", true);
    let running = wait_json(&ns, "backup", "backup-example", "phase running", |b| {
        b["status"]["phase"] == "running"
    });
    let status = &running["status"];
    assert_eq!(status["instanceID"]["podName"], "postgresql-bkp-1");
    assert!(status["startedAt"].is_string(), "{status}");
    assert!(status["stoppedAt"].is_null(), "{status}");
    assert_eq!(status["destinationPath"], "s3://BUCKET_NAME/path/to/folder");
    assert_eq!(status["serverName"], CLUSTER);
    assert!(
        status["settings"].is_object(),
        "no decided settings: {status}"
    );
    let describe = ns.kubectl(&["describe", "backup", "backup-example"]).stdout;
    assert_describe(
        &describe,
        &[
            ("Phase:", "running"),
            ("Started At:", status["startedAt"].as_str().unwrap()),
        ],
    );

    // The agent's report, as `pgwarden instance` writes it (server-side apply, its manager).
    let facts = pgwarden::instance::facts::BackupFacts {
        name: "backup-example".into(),
        pod_name: Some("postgresql-bkp-1".into()),
        state: Some(pgwarden_crds::BackupAgentState::Succeeded),
        started_at: status["startedAt"].as_str().map(str::to_owned),
        finished_at: Some("2026-11-25T10:00:30Z".into()),
        exit_code: Some(0),
        backup_id: Some("20261125T100000".into()),
        begin_wal: Some("000000010000000000000002".into()),
        end_wal: Some("000000010000000000000003".into()),
        begin_lsn: Some("0/2000028".into()),
        end_lsn: Some("0/3000100".into()),
        ..Default::default()
    };
    server_side_apply_status(
        &ns,
        &pgwarden::instance::facts::backup_status_patch("backup-example", &facts),
        "pgwarden-agent",
    );
    let done = wait_json(&ns, "backup", "backup-example", "phase completed", |b| {
        b["status"]["phase"] == "completed"
    });
    let status = &done["status"];
    assert_eq!(status["backupId"], "20261125T100000");
    assert_eq!(
        status["message"],
        "backup 20261125T100000 completed on pod postgresql-bkp-1"
    );
    let stopped = status["stoppedAt"]
        .as_str()
        .unwrap_or_else(|| panic!("no stoppedAt: {status}"));
    let describe = ns.kubectl(&["describe", "backup", "backup-example"]).stdout;
    assert_describe(
        &describe,
        &[
            ("Name:", "backup-example"),
            ("Phase:", "completed"),
            ("Started At:", status["startedAt"].as_str().unwrap()),
            ("Stopped At:", stopped),
        ],
    );
    assert!(
        describe.contains("Cluster:\n    Name:  postgresql-bkp"),
        "{describe}"
    );
    wait_event(
        &ns,
        "backup-example",
        "Completed",
        "backup 20261125T100000 completed on pod postgresql-bkp-1",
    );
    // The Cluster hears of it.
    let cluster = wait_condition(&ns, "cluster", CLUSTER, "LastBackupSucceeded", "True");
    assert_eq!(cluster["status"]["lastSuccessfulBackup"], "backup-example");
}

#[test]
fn scheduled_backup_creates_backups_and_a_bad_schedule_is_named() {
    let cp = with_crds();
    let ns = cp.namespace("scheduled");
    let _op = Operator::start(cp, &ns.name);
    apply_file(&ns, &seed("secret.yaml"));
    apply_file(&ns, &seed("cluster-wal.yaml"));
    apply_yaml(
        &ns,
        "apiVersion: postgresql.k8s.2ndq.io/v1alpha1\nkind: ScheduledBackup\nmetadata:\n  name: every-minute\nspec:\n  schedule: \"* * * * *\"\n  immediate: true\n  backupOwnerReference: self\n  cluster:\n    name: postgresql-bkp\n",
    );
    // The immediate one, then the next minute's (admission refuses more than one a minute).
    let names = eventually("two scheduled Backups", Duration::from_secs(100), || {
        let list = list(&ns, "backup");
        let names: Vec<String> = list
            .iter()
            .filter_map(|b| b["metadata"]["name"].as_str().map(str::to_owned))
            .collect();
        if names.len() >= 2 {
            Ok(names)
        } else {
            Err(format!("{names:?}"))
        }
    });
    for name in &names {
        // <scheduled>-<yyyymmddhhmmss>: derived from the scheduled time, so never duplicated.
        let stamp = name
            .strip_prefix("every-minute-")
            .unwrap_or_else(|| panic!("unexpected Backup name {name}"));
        assert!(
            stamp.len() == 14 && stamp.chars().all(|c| c.is_ascii_digit()),
            "Backup name {name} is not <scheduled>-<yyyymmddhhmmss>"
        );
        let backup = get(&ns, "backup", name).unwrap();
        assert_eq!(backup["spec"]["cluster"]["name"], CLUSTER);
        let owner = &backup["metadata"]["ownerReferences"][0];
        assert_eq!(owner["kind"], "ScheduledBackup", "{backup}");
    }
    let scheduled = wait_json(
        &ns,
        "scheduledbackup",
        "every-minute",
        "status times",
        |s| s["status"]["lastScheduleTime"].is_string(),
    );
    assert!(
        scheduled["status"]["nextScheduleTime"].is_string(),
        "{}",
        scheduled["status"]
    );
    let out = ns.kubectl(&[
        "patch",
        "scheduledbackup",
        "every-minute",
        "--type=merge",
        "-p",
        r#"{"spec":{"suspend":true}}"#,
    ]);
    assert!(out.success, "{}", out.stderr);
    // Suspended: the policy says so on the condition, and no Backup comes after.
    wait_json(&ns, "scheduledbackup", "every-minute", "suspended", |s| {
        condition(s, "Scheduled").is_some_and(|c| c.2.contains("never (suspended)"))
    });
    let suspended = list(&ns, "backup").len();
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(
        list(&ns, "backup").len(),
        suspended,
        "a suspended ScheduledBackup created Backups"
    );

    // A schedule the admission accepts (five fields) but no cron can mean.
    apply_yaml(
        &ns,
        "apiVersion: postgresql.k8s.2ndq.io/v1alpha1\nkind: ScheduledBackup\nmetadata:\n  name: nonsense\nspec:\n  schedule: \"99 99 99 99 99\"\n  cluster:\n    name: postgresql-bkp\n",
    );
    let bad = wait_json(
        &ns,
        "scheduledbackup",
        "nonsense",
        "Scheduled condition",
        |s| condition(s, "Scheduled").is_some(),
    );
    let (status, reason, message) = condition(&bad, "Scheduled").unwrap();
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "InvalidSchedule"),
        "{message}"
    );
    assert!(
        message.starts_with("spec.schedule \"99 99 99 99 99\": "),
        "{message}"
    );
    wait_event(&ns, "nonsense", "InvalidSchedule", &message);
    assert!(list(&ns, "backup").iter().all(|b| {
        !b["metadata"]["name"]
            .as_str()
            .unwrap()
            .starts_with("nonsense")
    }));
}

fn assert_owned_by(kind: &str, object: &Value, uid: &str) {
    let owners = object["metadata"]["ownerReferences"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let controller = owners.iter().find(|o| o["controller"] == true);
    let controller = controller.unwrap_or_else(|| {
        panic!(
            "{kind} {} has no controller owner: {owners:?}",
            object["metadata"]["name"]
        )
    });
    assert_eq!(controller["kind"], "Cluster", "{kind}");
    assert_eq!(
        controller["apiVersion"], "postgresql.k8s.2ndq.io/v1alpha1",
        "{kind}"
    );
    assert_eq!(controller["uid"], uid, "{kind}");
}

fn annotate(ns: &pgwarden_tests::controlplane::Namespace<'_>, cluster: &str, n: u32) {
    let out = ns.kubectl(&[
        "annotate",
        "--overwrite",
        "cluster",
        cluster,
        &format!("pgwarden.test/poke={n}"),
    ]);
    assert!(out.success, "{}", out.stderr);
}

#[test]
fn retention_hands_expired_backups_to_the_agent_and_removes_the_deleted_ones() {
    let cp = with_crds();
    let ns = cp.namespace("retention");
    let _op = Operator::start(cp, &ns.name);
    apply_file(&ns, &seed("secret.yaml"));
    let cluster = cluster_yaml("pg", None, true) + "    retentionPolicy: 30d\n";
    apply_yaml(&ns, &cluster);
    wait_get(&ns, "pod", "pg-1");
    past_backup(&ns, "old-a", "pg", 60, Some("20260926T000000"));
    past_backup(&ns, "old-b", "pg", 45, Some("20261011T000000"));
    past_backup(&ns, "never", "pg", 40, None);
    past_backup(&ns, "window-start", "pg", 35, Some("20261026T000000"));
    past_backup(&ns, "recent", "pg", 1, Some("20261124T000000"));

    // The policy (default: a 30-day recovery window, kept from the newest backup that ended
    // before it, as barman's RECOVERY WINDOW) expires three; the one with no backup in the
    // store goes at once, the others go to the primary's agent. window-start stays: it is
    // the one that restores to the window's first moment.
    wait_gone(&ns, "backup", "never");
    wait_event(
        &ns,
        "pg",
        "BackupExpired",
        "deleted Backup never: past the retention policy 30d, with no backup in the object store",
    );
    for (name, id) in [("old-a", "20260926T000000"), ("old-b", "20261011T000000")] {
        let b = wait_json(&ns, "backup", name, "deletion asked", |b| {
            b["status"]["deletion"].is_object()
        });
        let d = &b["status"]["deletion"];
        assert_eq!(
            (&d["reason"], &d["podName"], &d["attempt"]),
            (&json!("Retention"), &json!("pg-1"), &json!(1)),
            "{d}"
        );
        wait_event(
            &ns,
            name,
            "BackupExpired",
            &format!(
                "backup {id} is past the retention policy 30d: the agent of pod pg-1 deletes it from s3://BUCKET_NAME/path/to/folder"
            ),
        );
    }
    for kept in ["recent", "window-start"] {
        let b = get(&ns, "backup", kept).unwrap();
        assert!(b["status"]["deletion"].is_null(), "{kept}: {b}");
    }

    // The agent's reports, as `pgwarden instance` writes them: one deleted, one failed.
    let report = |name: &str, outcome: Result<(), String>| {
        let patch =
            pgwarden::instance::retention::report_patch(name, "pg-1", 1, &outcome, now_rfc3339());
        server_side_apply_status(&ns, &patch, "pgwarden-agent");
    };
    report("old-a", Ok(()));
    let error = "barman-cloud-backup-delete failed (exit 1): the store refused the credentials";
    report("old-b", Err(error.into()));

    wait_gone(&ns, "backup", "old-a");
    wait_event(
        &ns,
        "pg",
        "BackupDeleted",
        "deleted backup 20260926T000000 of Backup old-a from s3://BUCKET_NAME/path/to/folder: past the retention policy 30d",
    );
    let message = format!(
        "deleting backup 20261011T000000 from the object store failed on pod pg-1 (attempt 1): {error}"
    );
    let failed = wait_json(&ns, "backup", "old-b", "DeleteFailed", |b| {
        b["status"]["reason"] == "DeleteFailed"
    });
    assert_eq!(failed["status"]["message"], message.as_str());
    assert_eq!(failed["status"]["phase"], "completed");
    wait_event(
        &ns,
        "old-b",
        "DeleteFailed",
        &format!("{message}; asked again in 5 minutes"),
    );
    assert!(get(&ns, "backup", "recent").is_some());
}
