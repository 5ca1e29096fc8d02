//! Retention on the real data path: the operator (default policy) against a real
//! kube-apiserver expires a Backup past the Cluster's `retentionPolicy`, the real agent of the
//! primary (`pgwarden instance run`, watching Backups with a kube client) deletes that backup
//! from the S3 server with barman-cloud-backup-delete, and the Backup object is removed; the
//! newer backup stays in the store and as an object.
//!
//! Needs `cargo xtask setup` (control plane, PostgreSQL, barman, S3 server), `cargo build -p
//! pgwarden` and `cargo xtask build-policies`.

use std::time::Duration;

use pgwarden_tests::controlplane::{Namespace, with_crds};
use pgwarden_tests::datapath::{Instance, InstanceOptions, S3Server, archive_settings};
use pgwarden_tests::operator::*;
use serde_json::json;

const BUCKET: &str = "retention-e2e";
const SERVER: &str = "pg";

fn at(days_ago: i64) -> String {
    (chrono::Utc::now() - chrono::Duration::days(days_ago))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// A Backup object for a backup the agent took `days_ago`, with the status the operator and
/// the agent would have left on it.
fn backup_object(ns: &Namespace<'_>, name: &str, backup_id: &str, days_ago: i64) {
    apply_yaml(
        ns,
        &format!(
            "apiVersion: postgresql.k8s.2ndq.io/v1alpha1\nkind: Backup\nmetadata:\n  name: {name}\nspec:\n  cluster:\n    name: {SERVER}\n"
        ),
    );
    wait_json(ns, "backup", name, "phase set", |b| {
        b["status"]["phase"].is_string()
    });
    let status = json!({
        "phase": "completed", "startedAt": at(days_ago), "stoppedAt": at(days_ago),
        "backupId": backup_id, "destinationPath": format!("s3://{BUCKET}/pg"),
        "serverName": SERVER, "instanceID": {"podName": "pg-1"},
    });
    server_side_apply_status(
        ns,
        &json!({"apiVersion": "postgresql.k8s.2ndq.io/v1alpha1", "kind": "Backup",
                "metadata": {"name": name}, "status": status}),
        "test-history",
    );
}

fn backup_infos(s3: &S3Server) -> Vec<String> {
    s3.list(BUCKET, &format!("pg/{SERVER}/base/"))
        .into_iter()
        .filter(|k| k.ends_with("backup.info"))
        .collect()
}

#[test]
fn the_agent_deletes_an_expired_backup_from_the_store_and_its_object_goes() {
    let cp = with_crds();
    let ns = cp.namespace("retention-e2e");
    let _op = Operator::start(cp, &ns.name);
    let s3 = S3Server::start();
    s3.create_bucket(BUCKET);
    let cluster = format!(
        "apiVersion: postgresql.k8s.2ndq.io/v1alpha1\nkind: Cluster\nmetadata:\n  name: {SERVER}\nspec:\n  backup:\n    destinationPath: s3://{BUCKET}/pg\n    endpointURL: {}\n    retentionPolicy: 30d\n    s3Credentials:\n      accessKeyId: {{name: aws-creds, key: ACCESS_KEY_ID}}\n      secretAccessKey: {{name: aws-creds, key: ACCESS_SECRET_KEY}}\n",
        s3.endpoint()
    );
    apply_yaml(&ns, &cluster);
    wait_get(&ns, "pod", "pg-1");

    // The primary's agent, run here as a local process, with a kube client on the namespace.
    let pg = Instance::start(InstanceOptions {
        settings: archive_settings(&s3, BUCKET, SERVER),
        credentials: s3.credentials.clone(),
        extra_args: vec![],
        env: vec![
            ("KUBECONFIG".into(), cp.kubeconfig.display().to_string()),
            ("POD_NAMESPACE".into(), ns.name.clone()),
        ],
    });
    let take = |name: &str| {
        let (ok, facts, stderr) = pg.backup(name);
        assert!(ok, "backup failed: {stderr}\n{facts}");
        facts["backupId"].as_str().unwrap().to_string()
    };
    let old_id = take("store-old");
    pg.psql("CREATE TABLE kept AS SELECT generate_series(1, 100) AS i");
    pg.switch_wal();
    let new_id = take("store-new");
    assert_eq!(backup_infos(&s3).len(), 2);

    backup_object(&ns, "old", &old_id, 60);
    backup_object(&ns, "new", &new_id, 1);

    // Expired, handed to pg-1, deleted by its agent, the object removed.
    eventually(
        "Backup old removed",
        Duration::from_secs(180),
        || match get(&ns, "backup", "old") {
            None => Ok(()),
            Some(b) => Err(b["status"].to_string()),
        },
    );
    wait_event(
        &ns,
        SERVER,
        "BackupDeleted",
        &format!(
            "deleted backup {old_id} of Backup old from s3://{BUCKET}/pg: past the retention policy 30d"
        ),
    );
    let left = backup_infos(&s3);
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(left[0].contains(&new_id), "{left:?}");
    let new = get(&ns, "backup", "new").expect("the newer Backup stays");
    assert!(new["status"]["deletion"].is_null(), "{}", new["status"]);
    let log = std::fs::read_to_string(pg.log()).unwrap_or_default();
    assert!(
        log.contains(&format!("deleting backup {old_id} of old (attempt 1)")),
        "{log}"
    );
    assert!(
        !log.contains(&s3.credentials.secret_access_key),
        "the agent's log shows the secret"
    );
}
