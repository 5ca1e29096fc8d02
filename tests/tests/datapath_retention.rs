//! Retention on the real data path: the operator (default policy) against a real
//! kube-apiserver expires a Backup past the Cluster's `retentionPolicy`, the real agent of the
//! primary (`pgwarden instance run`, watching Backups with a kube client) deletes that backup
//! from the S3 server with barman-cloud-backup-delete, and the Backup object is removed; the
//! newer backup stays in the store and as an object. A recovery window keeps the backup that
//! starts it, and barman keeps every WAL file from that backup on: a restore from it replays
//! to the last commit.
//!
//! Needs `cargo xtask setup` (control plane, PostgreSQL, barman, S3 server), `cargo build -p
//! pgwarden` and `cargo xtask build-policies`.

use std::process::Command;
use std::time::Duration;

use pgwarden_tests::controlplane::{ControlPlane, Namespace, with_crds};
use pgwarden_tests::datapath::{Instance, InstanceOptions, S3Server, archive_settings, deps};
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

/// The Cluster `pg` archiving to BUCKET on `s3`, with `retention` (`30d`, `7d`).
fn cluster_yaml(s3: &S3Server, retention: &str) -> String {
    format!(
        "apiVersion: postgresql.k8s.2ndq.io/v1alpha1\nkind: Cluster\nmetadata:\n  name: {SERVER}\nspec:\n  backup:\n    destinationPath: s3://{BUCKET}/pg\n    endpointURL: {}\n    retentionPolicy: {retention}\n    s3Credentials:\n      accessKeyId: {{name: aws-creds, key: ACCESS_KEY_ID}}\n      secretAccessKey: {{name: aws-creds, key: ACCESS_SECRET_KEY}}\n",
        s3.endpoint()
    )
}

/// The primary's agent, run here as a local process, with a kube client on the namespace.
fn primary_agent(s3: &S3Server, cp: &ControlPlane, ns: &Namespace<'_>) -> Instance {
    Instance::start(InstanceOptions {
        settings: archive_settings(s3, BUCKET, SERVER),
        credentials: s3.credentials.clone(),
        extra_args: vec![],
        env: vec![
            ("KUBECONFIG".into(), cp.kubeconfig.display().to_string()),
            ("POD_NAMESPACE".into(), ns.name.clone()),
            ("PGWARDEN_CLUSTER".into(), SERVER.into()),
        ],
    })
}

/// Copies the operator's deletion requests from the Cluster's settings ConfigMap into the
/// agent's settings folder, as a kubelet updates a mounted ConfigMap.
fn sync_requests(ns: &Namespace<'_>, pg: &Instance) {
    let cm = get(ns, "configmap", &format!("{SERVER}-settings"));
    if let Some(text) = cm
        .as_ref()
        .and_then(|c| c["data"]["deletions.json"].as_str())
    {
        let path = pg.settings_dir().join("deletions.json");
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).expect("deletions.json");
        std::fs::rename(&tmp, &path).expect("deletions.json");
    }
}

#[test]
fn the_agent_deletes_an_expired_backup_from_the_store_and_its_object_goes() {
    let cp = with_crds();
    let ns = cp.namespace("retention-e2e");
    let _op = Operator::start(cp, &ns.name);
    let s3 = S3Server::start();
    s3.create_bucket(BUCKET);
    apply_yaml(&ns, &cluster_yaml(&s3, "30d"));
    wait_get(&ns, "pod", "pg-1");
    let pg = primary_agent(&s3, cp, &ns);
    let take = |name: &str| {
        let (ok, facts, stderr) = pg.backup(name);
        assert!(ok, "backup failed: {stderr}\n{facts}");
        facts["backupId"].as_str().unwrap().to_string()
    };
    // Named as their Backups: the agent deletes only a backup named after its Backup.
    let old_id = take("old");
    pg.psql("CREATE TABLE kept AS SELECT generate_series(1, 100) AS i");
    pg.switch_wal();
    let new_id = take("new");
    assert_eq!(backup_infos(&s3).len(), 2);

    // 60 and 40 days ago: "new" ended before the 30d window, so it starts it and "old" is
    // past it (with "new" inside the window, "old" would start it and stay).
    backup_object(&ns, "old", &old_id, 60);
    backup_object(&ns, "new", &new_id, 40);

    // Expired, handed to pg-1, deleted by its agent, the object removed.
    eventually("Backup old removed", Duration::from_secs(180), || {
        sync_requests(&ns, &pg);
        match get(&ns, "backup", "old") {
            None => Ok(()),
            Some(b) => Err(b["status"].to_string()),
        }
    });
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

/// A backup in the store, as `barman-cloud-backup-list --format json` reports it.
#[derive(Debug)]
struct Stored {
    id: String,
    begin_wal: String,
}

/// The backups in the store, oldest first.
fn barman_backup_list(s3: &S3Server) -> Vec<Stored> {
    let out = Command::new(deps().barman_bin.join("barman-cloud-backup-list"))
        .args(["--endpoint-url", &s3.endpoint(), "--format", "json"])
        .arg(format!("s3://{BUCKET}/pg"))
        .arg(SERVER)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .envs(s3.credentials.env())
        .output()
        .expect("barman-cloud-backup-list");
    assert!(
        out.status.success(),
        "barman-cloud-backup-list: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let mut stored: Vec<Stored> = list["backups_list"]
        .as_array()
        .expect("backups_list")
        .iter()
        .map(|b| Stored {
            id: b["backup_id"].as_str().unwrap().to_string(),
            begin_wal: b["begin_wal"].as_str().unwrap().to_string(),
        })
        .collect();
    stored.sort_by(|a, b| a.id.cmp(&b.id));
    stored
}

/// The WAL segments in the store (names without the compression suffix; no `.backup` or
/// `.history` files), sorted.
fn stored_segments(s3: &S3Server) -> Vec<String> {
    let mut names: Vec<String> = s3
        .list(BUCKET, &format!("pg/{SERVER}/wals/"))
        .iter()
        .filter_map(|k| k.rsplit('/').next())
        .map(|f| f.split('.').next().unwrap_or_default().to_string())
        .filter(|f| f.len() == 24 && f.bytes().all(|b| b.is_ascii_hexdigit()))
        .collect();
    // a segment and its `.backup` file share the 24 characters: keep one.
    names.sort();
    names.dedup();
    names
}

/// The segments from `first` to `last` on their timeline (16 MiB segments: 256 per log).
fn segments_between(first: &str, last: &str) -> Vec<String> {
    let number = |s: &str| {
        let log = u64::from_str_radix(&s[8..16], 16).unwrap();
        let seg = u64::from_str_radix(&s[16..24], 16).unwrap();
        log * 256 + seg
    };
    (number(first)..=number(last))
        .map(|n| format!("{}{:08X}{:08X}", &first[..8], n / 256, n % 256))
        .collect()
}

#[test]
fn a_recovery_window_keeps_the_backup_that_starts_it_and_every_wal_from_it_on() {
    let cp = with_crds();
    let ns = cp.namespace("retention-window");
    let _op = Operator::start(cp, &ns.name);
    let s3 = S3Server::start();
    s3.create_bucket(BUCKET);
    apply_yaml(&ns, &cluster_yaml(&s3, "7d"));
    wait_get(&ns, "pod", "pg-1");
    let pg = primary_agent(&s3, cp, &ns);

    // Three real backups, with rows and a WAL switch between them.
    pg.psql("CREATE TABLE marks (id serial PRIMARY KEY, label text)");
    let mut ids = Vec::new();
    for name in ["past", "window-start", "recent"] {
        pg.psql(&format!(
            "INSERT INTO marks (label) VALUES ('before-{name}')"
        ));
        let (ok, facts, stderr) = pg.backup(name);
        assert!(ok, "backup {name} failed: {stderr}\n{facts}");
        ids.push(facts["backupId"].as_str().unwrap().to_string());
        pg.switch_wal();
    }
    pg.psql("INSERT INTO marks (label) VALUES ('last')");
    let last = pg.switch_wal();
    assert!(
        pg.wait_archived(&last, Duration::from_secs(120)),
        "{last} not archived"
    );
    let before = barman_backup_list(&s3);
    assert_eq!(
        before.iter().map(|b| &b.id).collect::<Vec<_>>(),
        ids.iter().collect::<Vec<_>>()
    );

    // Their Backups, ended 20, 10 and 1 days ago, newest first: with 7d the window starts 7
    // days ago, and "window-start" is the newest backup that ended before it. (Not "first":
    // barman-cloud-backup refuses the names first, last, latest, oldest as reserved words.)
    backup_object(&ns, "recent", &ids[2], 1);
    backup_object(&ns, "window-start", &ids[1], 10);
    backup_object(&ns, "past", &ids[0], 20);
    eventually("Backup past removed", Duration::from_secs(180), || {
        sync_requests(&ns, &pg);
        match get(&ns, "backup", "past") {
            None => Ok(()),
            Some(b) => Err(b["status"].to_string()),
        }
    });
    // The policy answers for all three at once: a deletion of "window-start" would have been
    // asked with that of "past".
    for kept in ["window-start", "recent"] {
        let b = get(&ns, "backup", kept).unwrap_or_else(|| panic!("Backup {kept} is gone"));
        assert!(b["status"]["deletion"].is_null(), "{kept}: {}", b["status"]);
    }
    let after = barman_backup_list(&s3);
    assert_eq!(
        after.iter().map(|b| &b.id).collect::<Vec<_>>(),
        [&ids[1], &ids[2]],
        "the store keeps the window's first backup and the newer one"
    );

    // Every WAL segment from the window's first backup to the last one archived is there;
    // barman removed only the segments before it (those only "past" needed).
    let segments = stored_segments(&s3);
    eprintln!(
        "begin_wal of the three backups {:?}, last archived {last}, WAL segments left {segments:?}",
        before.iter().map(|b| &b.begin_wal).collect::<Vec<_>>()
    );
    let needed = segments_between(&before[1].begin_wal, &last);
    let missing: Vec<&String> = needed.iter().filter(|w| !segments.contains(w)).collect();
    assert!(
        missing.is_empty(),
        "missing WAL {missing:?}; stored {segments:?}"
    );
    assert!(
        segments.iter().all(|w| *w >= before[1].begin_wal),
        "WAL before {} stayed: {segments:?}",
        before[1].begin_wal
    );

    // A restore from it replays to the last commit.
    let source = pg.dir.path().join("source.json");
    std::fs::write(&source, serde_json::to_vec(&pg.opts.settings).unwrap()).unwrap();
    let mut settings = pg.opts.settings.clone();
    settings.server_name = "pg-restored".into();
    let restored = Instance::start(InstanceOptions {
        settings,
        credentials: s3.credentials.clone(),
        extra_args: vec![
            "--restore-backup".into(),
            ids[1].clone(),
            "--restore-source".into(),
            source.display().to_string(),
        ],
        env: vec![],
    });
    assert_eq!(restored.psql("SELECT pg_is_in_recovery()"), "f");
    assert_eq!(
        restored.psql("SELECT string_agg(label, ',' ORDER BY id) FROM marks"),
        "before-past,before-window-start,before-recent,last"
    );
}
