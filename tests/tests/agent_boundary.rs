//! An agent acts for its own Cluster only (issue 11, item 3), end to end: the real operator,
//! kube-apiserver (RBAC), local node, agents, PostgreSQL, barman and S3 server.
//!
//! Two Clusters `a` and `b` in one namespace, each with a completed backup in the store. As
//! `system:serviceaccount:<ns>:a-agent` (what a database superuser of `a` could act as with
//! its agent's token), forging a deletion of `b`'s backup in `b`'s Backup status (the old
//! channel; agents report their backups there, so RBAC lets them write it) is refused by the
//! admission policy of `deploy/operator.yaml`; writing `b`'s settings ConfigMap (the new
//! channel) or `b`'s Cluster status is Forbidden. Forged by someone else who may write Backup
//! status, `b`'s agent deletes nothing, and the operator reports the forged request (Warning
//! Event `DeletionIgnored` on the Backup). And the token itself: the `postgres` OS user, as a
//! shell or as a database superuser (`pg_read_file`), cannot read it.
//!
//! Slow (minutes). Needs `cargo xtask setup` (see `cargo xtask test`).

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use pgwarden_tests::controlplane::{Namespace, with_crds};
use pgwarden_tests::datapath::{S3Server, deps, wait_for};
use pgwarden_tests::operator::{
    Operator, apply_when_admitted, apply_yaml, get, store_secret_yaml, wait_event,
};
use pgwarden_tests::world::node_for;
use serde_json::Value;

const BUCKET: &str = "pgwarden-boundary";
const READY: Duration = Duration::from_secs(180);

fn cluster_yaml(ns: &Namespace<'_>, s3: &S3Server, name: &str) -> String {
    format!(
        "apiVersion: postgresql.k8s.2ndq.io/v1alpha1\nkind: Cluster\nmetadata:\n  name: {name}\nspec:\n  instances: 1\n  backup:\n    destinationPath: s3://{BUCKET}/{ns}-{name}\n    endpointURL: {endpoint}\n    s3Credentials:\n      accessKeyId: {{name: aws-creds, key: ACCESS_KEY_ID}}\n      secretAccessKey: {{name: aws-creds, key: ACCESS_SECRET_KEY}}\n",
        ns = ns.name,
        endpoint = s3.endpoint(),
    )
}

fn wait_ready(ns: &Namespace<'_>, pod: &str) -> Value {
    let mut last = Value::Null;
    let ready = wait_for(READY, Duration::from_secs(1), || {
        let p = get(ns, "pod", pod)?;
        last = p["status"].clone();
        let conditions = p["status"]["conditions"].as_array().cloned();
        let ready = conditions
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True");
        ready.then_some(p)
    });
    ready.unwrap_or_else(|| panic!("pod {pod} not ready within {READY:?}; last status: {last}"))
}

/// Backup `name` of `cluster`, taken by its agent; its barman backup id.
fn completed_backup(ns: &Namespace<'_>, name: &str, cluster: &str) -> String {
    apply_yaml(
        ns,
        &format!(
            "apiVersion: postgresql.k8s.2ndq.io/v1alpha1\nkind: Backup\nmetadata:\n  name: {name}\nspec:\n  cluster:\n    name: {cluster}\n"
        ),
    );
    let mut last = Value::Null;
    let done = wait_for(READY, Duration::from_secs(1), || {
        let b = get(ns, "backup", name)?;
        last = b["status"].clone();
        (b["status"]["phase"] == "completed").then(|| b["status"]["backupId"].clone())
    });
    let id = done.unwrap_or_else(|| panic!("Backup {name} not completed: {last}"));
    id.as_str().expect("backupId").to_string()
}

/// The backup.info files of Cluster `cluster` in the store.
fn stored(s3: &S3Server, ns: &Namespace<'_>, cluster: &str) -> Vec<String> {
    s3.list(BUCKET, &format!("{}-{cluster}/", ns.name))
        .into_iter()
        .filter(|k| k.ends_with("backup.info"))
        .collect()
}

/// `kubectl` as the agent of Cluster `cluster`: (succeeded, stdout + stderr).
fn as_agent(ns: &Namespace<'_>, cluster: &str, args: &[&str]) -> (bool, String) {
    let user = format!("system:serviceaccount:{}:{cluster}-agent", ns.name);
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--as", &user]);
    let out = ns.kubectl(&all);
    (out.success, format!("{}{}", out.stdout, out.stderr))
}

fn forbidden(ns: &Namespace<'_>, what: &str, args: &[&str]) {
    let (ok, out) = as_agent(ns, "a", args);
    assert!(
        !ok && out.contains("Forbidden"),
        "{what}: not refused: {out}"
    );
}

#[test]
fn an_agent_cannot_make_another_clusters_agent_delete_its_backup_nor_the_database_read_its_token() {
    let cp = with_crds();
    let ns = cp.namespace("agent-boundary");
    let s3 = S3Server::start();
    s3.create_bucket(BUCKET);
    let subnet = 150 + (std::process::id() % 30) as u8;
    let n = node_for(cp, &ns, "bnd", subnet, &s3.credentials.region, &[]);
    apply_when_admitted(&ns, &store_secret_yaml(&s3.credentials));
    let _op = Operator::start(cp, &ns.name);
    for c in ["a", "b"] {
        apply_yaml(&ns, &cluster_yaml(&ns, &s3, c));
    }
    wait_ready(&ns, "a-1");
    let b1 = wait_ready(&ns, "b-1");
    completed_backup(&ns, "a-first", "a");
    let b_id = completed_backup(&ns, "b-first", "b");
    assert_eq!(stored(&s3, &ns, "b").len(), 1, "b's backup is in the store");

    // The old channel: as a's agent, b's Backup status asks b's agent to delete b's backup.
    // Admission refuses it (deploy/operator.yaml's policy; RBAC alone lets it through).
    let forged = r#"{"status":{"deletion":{"reason":"Retention","requestedAt":"2020-01-01T00:00:00Z","podName":"b-1","attempt":1,"object":"remove"}}}"#;
    let patch = [
        "patch",
        "backup",
        "b-first",
        "--subresource=status",
        "--type=merge",
        "-p",
        forged,
    ];
    let (ok, out) = as_agent(&ns, "a", &patch);
    assert!(
        !ok && out.contains("Backup b-first belongs to Cluster b, whose agent is b-agent"),
        "a's agent wrote b's Backup status: {out}"
    );
    // Written by someone else who may write Backup status (here the admin): b's agent still
    // acts on the operator's requests only.
    let out = ns.kubectl(&patch);
    assert!(out.success, "{}", out.stderr);
    // b's agent had time to act (it polls its requests every 3 s; the old one acted on the
    // watch event at once): the backup is still in the store, its Backup still there.
    std::thread::sleep(Duration::from_secs(20));
    assert_eq!(stored(&s3, &ns, "b").len(), 1, "b's backup was deleted");
    let b = get(&ns, "backup", "b-first").expect("b's Backup stays");
    assert!(
        b["status"]["deletion"]["agent"].is_null(),
        "{}",
        b["status"]
    );

    // The new channel, and b's Cluster status: not a's to write.
    let request = format!(
        r#"{{"data":{{"deletions.json":"[{{\"backup\":\"b-first\",\"uid\":\"x\",\"cluster\":\"b\",\"backupId\":\"{b_id}\",\"pod\":\"b-1\",\"attempt\":1,\"requestedAt\":\"2020-01-01T00:00:00Z\",\"object\":\"remove\"}}]"}}}}"#
    );
    forbidden(
        &ns,
        "b's settings ConfigMap",
        &[
            "patch",
            "configmap",
            "b-settings",
            "--type=merge",
            "-p",
            &request,
        ],
    );
    forbidden(
        &ns,
        "b's Cluster status",
        &[
            "patch",
            "cluster",
            "b",
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"phase":"forged"}}"#,
        ],
    );
    let (own, out) = as_agent(
        &ns,
        "a",
        &[
            "auth",
            "can-i",
            "patch",
            "clusters/a",
            "--subresource=status",
        ],
    );
    assert!(own, "a's agent may write its own Cluster's status: {out}");

    // Reported: the operator warns about a deletion it did not ask.
    wait_event(
        &ns,
        "b-first",
        "DeletionIgnored",
        &format!(
            "status.deletion of Backup b-first asks pod b-1 (attempt 1) to delete backup {b_id}, but the operator asked no such deletion: ignored (deletions are asked only through the Cluster's settings ConfigMap)"
        ),
    );
    token_kept_from_postgres(&n.state, &b1);
}

/// The pod's token file is root's alone: `postgres` reads it neither from a shell nor as a
/// database superuser.
fn token_kept_from_postgres(state: &std::path::Path, pod: &Value) {
    let uid = pod["metadata"]["uid"].as_str().expect("pod uid");
    let pod_dir = state.join("node/pods").join(uid);
    // The volume mounted where in-cluster configuration reads the token (admission's
    // `kube-api-access-*` when a pod does not mount one itself).
    let mounts = pod["spec"]["containers"][0]["volumeMounts"]
        .as_array()
        .cloned();
    let volume = mounts
        .into_iter()
        .flatten()
        .find(|m| m["mountPath"] == "/var/run/secrets/kubernetes.io/serviceaccount")
        .and_then(|m| m["name"].as_str().map(String::from))
        .expect("a token mount");
    let token: PathBuf = pod_dir.join("volumes").join(volume).join("token");
    let meta = std::fs::metadata(&token)
        .unwrap_or_else(|e| panic!("no token at {}: {e}", token.display()));
    // Root's alone: 0400 as the pod asks, or 0600 as a kubelet writes the token of a pod
    // whose containers all set one runAsUser (here 0) and gives it to that user.
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        (meta.uid(), meta.permissions().mode() & 0o077),
        (0, 0),
        "{} (mode {:o})",
        token.display(),
        meta.permissions().mode()
    );
    assert!(!std::fs::read_to_string(&token).unwrap().is_empty());

    let shell = Command::new("runuser")
        .args(["-u", "postgres", "--", "cat"])
        .arg(&token)
        .stdin(Stdio::null())
        .output()
        .expect("runuser");
    let err = String::from_utf8_lossy(&shell.stderr);
    assert!(
        !shell.status.success() && err.contains("Permission denied"),
        "postgres read the token: {err}"
    );

    // The token as PostgreSQL sees it: at its mount path in a container from the image.
    let seen = match pgwarden_tests::world::instance_pods_from_images() {
        true => PathBuf::from("/var/run/secrets/kubernetes.io/serviceaccount/token"),
        false => token.clone(),
    };
    let sql = format!("SELECT pg_read_file('{}')", seen.display());
    let psql = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(deps().pg_bin.join("psql"))
        .args(["-X", "-qAt", "-U", "postgres", "-d", "postgres", "-h"])
        .arg(pod_dir.join("run"))
        .args(["-c", &sql])
        .stdin(Stdio::null())
        .output()
        .expect("psql");
    let err = String::from_utf8_lossy(&psql.stderr);
    assert!(
        !psql.status.success() && err.contains("Permission denied"),
        "a database superuser read the token: {}{err}",
        String::from_utf8_lossy(&psql.stdout)
    );
}

/// A Role granting `resources/status` patch without resource names, bound to `subject` (a
/// ServiceAccount of the namespace): RBAC that lets through what admission must refuse.
fn grant_status_writes(ns: &Namespace<'_>, role: &str, subject: &str) {
    apply_yaml(
        ns,
        &format!(
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata:\n  name: {role}\nrules:\n  - apiGroups: [postgresql.k8s.2ndq.io]\n    resources: [backups/status, clusters/status]\n    verbs: [get, patch]\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata:\n  name: {role}\nroleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: {role}}}\nsubjects: [{{kind: ServiceAccount, name: {subject}, namespace: {}}}]\n",
            ns.name
        ),
    );
}

/// `kubectl patch <kind> <name> --subresource=status` of `status.message` as `user`.
fn patch_status(ns: &Namespace<'_>, user: &str, kind: &str, name: &str) -> (bool, String) {
    let user = format!("system:serviceaccount:{}:{user}", ns.name);
    let body = format!(r#"{{"status":{{"message":"written by {user}"}}}}"#);
    let out = ns.kubectl(&[
        "patch",
        kind,
        name,
        "--subresource=status",
        "--type=merge",
        "-p",
        &body,
        "--as",
        &user,
    ]);
    (out.success, format!("{}{}", out.stdout, out.stderr))
}

/// The ValidatingAdmissionPolicy of `deploy/operator.yaml` (installed with the CRDs): RBAC
/// lets every agent of a namespace patch every Backup's status there (Backup names are not
/// known in advance), admission lets `<x>-agent` write only those of Cluster `<x>`, and Cluster
/// status only of `<x>` even where RBAC grants more. Fast: no node, no store.
#[test]
fn admission_lets_an_agent_write_the_status_of_its_own_clusters_objects_only() {
    let cp = with_crds();
    let ns = cp.namespace("agent-admission");
    let _op = Operator::start(cp, &ns.name);
    for c in ["a", "b"] {
        let cluster = pgwarden_tests::operator::cluster_yaml(c, None, false);
        apply_yaml(&ns, &format!("{cluster}  instances: 1\n"));
        pgwarden_tests::operator::wait_get(&ns, "rolebinding", &format!("{c}-agent"));
        apply_yaml(
            &ns,
            &format!(
                "apiVersion: postgresql.k8s.2ndq.io/v1alpha1\nkind: Backup\nmetadata:\n  name: {c}-first\nspec:\n  cluster:\n    name: {c}\n"
            ),
        );
    }
    let refused = |kind: &str, name: &str, cluster: &str, what: &str| {
        let (ok, out) = patch_status(&ns, "a-agent", kind, name);
        let message = format!(
            "system:serviceaccount:{}:a-agent may write the status of its own Cluster and its Backups only: {what}, whose agent is {cluster}-agent",
            ns.name
        );
        assert!(
            !ok && out.contains("forbidden") && out.contains(&message),
            "a-agent's patch of {kind} {name} status: not refused with {message:?}: {out}"
        );
    };
    refused(
        "backup",
        "b-first",
        "b",
        "Backup b-first belongs to Cluster b",
    );
    let (ok, out) = patch_status(&ns, "a-agent", "backup", "a-first");
    assert!(ok, "a-agent may write its own Backup's status: {out}");

    // Where RBAC grants more than the operator's Role does, admission still holds.
    grant_status_writes(&ns, "wide-status", "a-agent");
    refused("cluster", "b", "b", "this is Cluster b");
    let (ok, out) = patch_status(&ns, "a-agent", "cluster", "a");
    assert!(ok, "a-agent may write its own Cluster's status: {out}");

    // Only agents are held to it: another ServiceAccount with those rights is not matched.
    let out = ns.kubectl(&["create", "serviceaccount", "reporter"]);
    assert!(out.success, "{}", out.stderr);
    grant_status_writes(&ns, "reporter-status", "reporter");
    let (ok, out) = patch_status(&ns, "reporter", "backup", "b-first");
    assert!(
        ok,
        "a ServiceAccount not named *-agent is not matched: {out}"
    );
}
