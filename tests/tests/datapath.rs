//! End to end on the data path: real PostgreSQL run by `pgwarden instance run`, WAL archived
//! by `pgwarden instance wal-archive` through barman-cloud into a real S3 server (MinIO),
//! backups taken and restored, faults injected. Needs `cargo xtask setup`.

use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use pgwarden_crds::Encryption;
use pgwarden_crds::settings::BackupSettings;
use pgwarden_tests::datapath::{
    Credentials, Instance, InstanceOptions, S3Server, alive, archive_settings, log_tail, wait_for,
};

const MIN: Duration = Duration::from_secs(60);

fn primary(s3: &S3Server, bucket: &str, server: &str) -> Instance {
    s3.create_bucket(bucket);
    Instance::start(InstanceOptions {
        settings: archive_settings(s3, bucket, server),
        credentials: s3.credentials.clone(),
        extra_args: vec![],
        env: vec![],
    })
}

/// A fresh instance restored from `backup_id` of `from`, archiving to its own server folder.
fn restored(
    s3: &S3Server,
    from: &Instance,
    backup_id: &str,
    server: &str,
    target: &[&str],
) -> Instance {
    let source = from.dir.path().join(format!("source-{server}.json"));
    std::fs::write(&source, serde_json::to_vec(&from.opts.settings).unwrap()).unwrap();
    let mut settings = from.opts.settings.clone();
    settings.server_name = server.into();
    let mut extra_args = vec![
        "--restore-backup".to_string(),
        backup_id.into(),
        "--restore-source".into(),
        source.display().to_string(),
    ];
    extra_args.extend(target.iter().map(|s| s.to_string()));
    Instance::start(InstanceOptions {
        settings,
        credentials: s3.credentials.clone(),
        extra_args,
        env: vec![],
    })
}

fn take_backup(pg: &Instance, name: &str) -> serde_json::Value {
    let (ok, facts, stderr) = pg.backup(name);
    assert!(ok, "backup failed: {stderr}\n{facts}");
    assert_eq!(facts["state"], "succeeded", "{facts}");
    facts
}

#[test]
fn wal_lands_in_the_store_in_barman_layout_under_pgbench_load() {
    let s3 = S3Server::start();
    let pg = primary(&s3, "wal", "pg-load");
    pg.pgbench_init(5);
    let bench = pg.pgbench_spawn(4, 20).wait_with_output().unwrap();
    assert!(
        bench.status.success(),
        "pgbench: {}",
        String::from_utf8_lossy(&bench.stderr)
    );
    let last = pg.switch_wal();
    assert!(
        pg.wait_archived(&last, 3 * MIN),
        "{last} not archived: {}",
        log_tail(&pg.log(), 30)
    );

    let keys = s3.list("wal", "pg/pg-load/wals/");
    let wal_keys: Vec<&String> = keys.iter().filter(|k| !k.ends_with(".history")).collect();
    assert!(
        wal_keys.len() >= 5,
        "too few WAL files in the store: {keys:?}"
    );
    for k in &wal_keys {
        // barman's layout: <server>/wals/<timeline+log id>/<wal file>.<compression suffix>
        let parts: Vec<&str> = k.split('/').collect();
        assert_eq!(parts.len(), 5, "{k}");
        assert!(
            parts[4].starts_with(parts[3]) && parts[3].len() == 16,
            "{k}"
        );
        assert!(k.ends_with(".gz"), "not gzip-compressed: {k}");
    }
    let failed = pg.psql("SELECT failed_count FROM pg_stat_archiver");
    assert_eq!(failed, "0", "archive failures: {}", log_tail(&pg.log(), 30));
    let facts = wait_for(MIN, Duration::from_millis(500), || {
        pg.archive_facts().filter(|f| f.archived_count >= Some(5))
    })
    .expect("archive facts reported");
    assert_eq!(facts.failed_count, Some(0));
    assert_eq!(facts.destination_checked, Some(true));
    assert!(facts.last_archived_wal.is_some() && facts.last_archived_time.is_some());
}

#[test]
fn backup_then_restore_to_a_point_in_time_and_to_the_latest() {
    let s3 = S3Server::start();
    let pg = primary(&s3, "pitr", "pg-pitr");
    pg.psql("CREATE TABLE t (id serial PRIMARY KEY, v text)");
    let facts = take_backup(&pg, "backup-uid-1");
    let backup_id = facts["backupId"].as_str().expect("backup id").to_string();
    for key in [
        "beginWal",
        "endWal",
        "beginLsn",
        "endLsn",
        "startedAt",
        "finishedAt",
    ] {
        assert!(facts[key].is_string(), "{key} missing: {facts}");
    }
    // The same Backup again: reported from memory, never taken twice.
    let again = take_backup(&pg, "backup-uid-1");
    assert_eq!(again["backupId"], facts["backupId"]);
    let backups = s3.list("pitr", "pg/pg-pitr/base/");
    let infos = backups
        .iter()
        .filter(|k| k.ends_with("backup.info"))
        .count();
    assert_eq!(infos, 1, "{backups:?}");

    pg.psql("INSERT INTO t (v) VALUES ('first')");
    std::thread::sleep(Duration::from_millis(1500));
    let target =
        pg.psql("SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')");
    std::thread::sleep(Duration::from_millis(1500));
    pg.psql("INSERT INTO t (v) VALUES ('second')");
    pg.psql("INSERT INTO t (v) SELECT 'bulk' FROM generate_series(1, 1000)");
    let last = pg.switch_wal();
    assert!(pg.wait_archived(&last, 2 * MIN), "{last} not archived");
    let want = pg.psql("SELECT count(*) FROM t");

    let pit = restored(&s3, &pg, &backup_id, "pg-pit", &["--target-time", &target]);
    assert_eq!(
        pit.psql("SELECT string_agg(v, ',' ORDER BY id) FROM t"),
        "first"
    );
    assert_eq!(pit.psql("SELECT pg_is_in_recovery()"), "f");
    drop(pit);

    let latest = restored(&s3, &pg, &backup_id, "pg-latest", &[]);
    assert_eq!(latest.psql("SELECT count(*) FROM t"), want);
    assert_eq!(
        latest.psql("SELECT count(*) FROM t WHERE v IN ('first', 'second')"),
        "2"
    );
}

/// The other recovery targets, each restored and read back: a named restore point, a
/// transaction id (inclusive), an LSN, and `immediate` (the end of the base backup).
#[test]
fn restores_stop_at_a_restore_point_a_transaction_an_lsn_or_the_backup() {
    let s3 = S3Server::start();
    let pg = primary(&s3, "targets", "pg-targets");
    pg.psql("CREATE TABLE t (id serial PRIMARY KEY, v text)");
    pg.psql("INSERT INTO t (v) VALUES ('base')");
    let backup_id = take_backup(&pg, "backup-targets")["backupId"]
        .as_str()
        .expect("backup id")
        .to_string();
    pg.psql("INSERT INTO t (v) VALUES ('a')");
    pg.psql("SELECT pg_create_restore_point('after-a')");
    let xid_b =
        pg.psql("WITH b AS (INSERT INTO t (v) VALUES ('b') RETURNING id) SELECT txid_current()");
    pg.psql("INSERT INTO t (v) VALUES ('c')");
    let lsn_c = pg.psql("SELECT pg_current_wal_insert_lsn()");
    pg.psql("INSERT INTO t (v) VALUES ('d')");
    let last = pg.switch_wal();
    assert!(pg.wait_archived(&last, 2 * MIN), "{last} not archived");

    let rows = |name: &str, target: &[&str]| {
        let restored = restored(&s3, &pg, &backup_id, name, target);
        assert_eq!(restored.psql("SELECT pg_is_in_recovery()"), "f", "{name}");
        restored.psql("SELECT string_agg(v, ',' ORDER BY id) FROM t")
    };
    assert_eq!(rows("pg-name", &["--target-name", "after-a"]), "base,a");
    assert_eq!(rows("pg-xid", &["--target-xid", &xid_b]), "base,a,b");
    assert_eq!(rows("pg-lsn", &["--target-lsn", &lsn_c]), "base,a,b,c");
    assert_eq!(rows("pg-immediate", &["--target-immediate"]), "base");
}

#[test]
fn a_store_outage_keeps_wal_then_everything_catches_up() {
    let mut s3 = S3Server::start();
    let pg = primary(&s3, "outage", "pg-outage");
    pg.psql("CREATE TABLE c (id bigserial PRIMARY KEY, at timestamptz DEFAULT now())");
    pg.pgbench_init(1);
    let backup = take_backup(&pg, "backup-outage");
    let backup_id = backup["backupId"].as_str().unwrap().to_string();

    // Down for a minute under pgbench load (rate-limited, so the WAL it leaves behind is
    // archived again within the test's bounds) and marked inserts.
    s3.stop();
    let down = std::time::Instant::now();
    let mut load = pg.pgbench_spawn_with(2, 60, &["-R", "200"]);
    let mut switched = Vec::new();
    while down.elapsed() < MIN {
        pg.psql("INSERT INTO c (at) SELECT now() FROM generate_series(1, 500)");
        switched.push(pg.switch_wal());
        std::thread::sleep(Duration::from_secs(5));
    }
    let status = load.wait().expect("pgbench");
    assert!(status.success(), "pgbench failed while the store was down");
    let facts = pg.archive_facts().expect("facts");
    assert!(facts.failed_count.unwrap_or(0) > 0, "{facts:?}");
    assert!(facts.ready_segments.unwrap_or(0) > 0, "{facts:?}");
    assert!(
        facts.oldest_ready_age_seconds.unwrap_or(0) > 10,
        "{facts:?}"
    );
    let failure = facts.last_failure.clone().unwrap_or_default();
    assert!(
        failure.contains("cannot reach the object store endpoint"),
        "{failure}"
    );
    let ready = std::fs::read_dir(pg.pgdata().join("pg_wal/archive_status"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".ready")
        })
        .count();
    assert!(ready > 0, "PostgreSQL must keep the unarchived WAL");

    s3.restart();
    let last = switched.last().unwrap().clone();
    assert!(
        pg.wait_archived(&last, 3 * MIN),
        "no catch-up: {}",
        log_tail(&pg.log(), 30)
    );
    let caught_up = wait_for(MIN, Duration::from_millis(500), || {
        pg.archive_facts().filter(|f| f.ready_segments == Some(0))
    });
    assert!(caught_up.is_some(), "{:?}", pg.archive_facts());
    let last = pg.switch_wal();
    assert!(pg.wait_archived(&last, MIN));
    let want = pg.psql("SELECT count(*) FROM c");
    let transactions = pg.psql("SELECT count(*) FROM pgbench_history");
    assert_ne!(transactions, "0", "pgbench committed nothing");

    let latest = restored(&s3, &pg, &backup_id, "pg-outage-latest", &[]);
    assert_eq!(latest.psql("SELECT count(*) FROM c"), want);
    assert_eq!(
        latest.psql("SELECT count(*) FROM pgbench_history"),
        transactions,
        "a pgbench transaction committed during the outage is missing after the restore"
    );
}

#[test]
fn store_errors_name_their_cause_and_never_the_secret() {
    let s3 = S3Server::start();
    s3.create_bucket("errors");

    let wrong = Credentials {
        secret_access_key: "0123456789abcdef0123456789abcdef".into(),
        ..s3.credentials.clone()
    };
    let bad_creds = Instance::start(InstanceOptions {
        settings: archive_settings(&s3, "errors", "pg-bad-creds"),
        credentials: wrong.clone(),
        extra_args: vec![],
        env: vec![],
    });
    let mut unknown = archive_settings(&s3, "no-such-bucket", "pg-errors");
    let other_credentials = s3.scoped_credentials();
    let other = Instance::start(InstanceOptions {
        settings: unknown.clone(),
        credentials: other_credentials.clone(),
        extra_args: vec![],
        env: vec![],
    });

    let failure_of = |pg: &Instance| {
        pg.psql("SELECT txid_current()");
        pg.switch_wal();
        wait_for(MIN, Duration::from_millis(500), || {
            pg.archive_facts().and_then(|f| f.last_failure)
        })
        .unwrap_or_else(|| panic!("no failure reported: {}", log_tail(&pg.log(), 20)))
    };
    let creds = failure_of(&bad_creds);
    assert!(creds.contains("refused the credentials"), "{creds}");
    assert!(!creds.contains(&wrong.secret_access_key));

    let bucket = failure_of(&other);
    assert!(
        bucket.contains("bucket of destinationPath does not exist"),
        "{bucket}"
    );

    unknown.endpoint_url = Some(format!(
        "http://127.0.0.1:{}",
        pgwarden_tests::datapath::free_port()
    ));
    other.write_settings(&unknown);
    let before = other.archive_facts().and_then(|f| f.last_failed_time);
    let unreachable = wait_for(2 * MIN, Duration::from_secs(2), || {
        other.psql("SELECT txid_current()");
        other.switch_wal();
        other
            .archive_facts()
            .filter(|f| f.last_failed_time != before)
            .and_then(|f| f.last_failure)
            .filter(|m| !m.contains("does not exist"))
    })
    .expect("unreachable endpoint reported");
    assert!(
        unreachable.contains("cannot reach the object store endpoint"),
        "{unreachable}"
    );

    // Neither key nor key ID in what the agent logs or reports (S3 servers echo the key ID).
    let scoped = other_credentials;
    let credentials = [
        &s3.credentials.secret_access_key,
        &s3.credentials.access_key_id,
        &wrong.secret_access_key,
        &scoped.secret_access_key,
        &scoped.access_key_id,
    ];
    for pg in [&bad_creds, &other] {
        let mut reported = std::fs::read_to_string(pg.log()).unwrap();
        for file in [
            "archive-failure.json",
            "archive-check.json",
            "archive-facts.json",
        ] {
            reported += &std::fs::read_to_string(pg.state_dir().join(file)).unwrap_or_default();
        }
        for credential in credentials {
            assert!(
                !reported.contains(credential.as_str()),
                "a credential leaked into {}'s logs or reports",
                pg.state_dir().display()
            );
        }
    }
    let facts = other.archive_facts().unwrap();
    assert_eq!(facts.destination_checked, Some(false));
}

#[test]
fn retention_keeps_backups_inside_the_window_and_deletion_removes_one() {
    let s3 = S3Server::start();
    let pg = primary(&s3, "retention", "pg-ret");
    let first = take_backup(&pg, "backup-ret-1");
    pg.psql("CREATE TABLE r AS SELECT generate_series(1, 1000) AS i");
    pg.switch_wal();
    let second = take_backup(&pg, "backup-ret-2");
    let infos = || {
        s3.list("retention", "pg/pg-ret/base/")
            .into_iter()
            .filter(|k| k.ends_with("backup.info"))
            .collect::<Vec<_>>()
    };
    assert_eq!(infos().len(), 2);

    let kept = pg.pgwarden(&["delete-backups", "--retention", "30d"]);
    assert!(
        kept.status.success(),
        "{}",
        String::from_utf8_lossy(&kept.stderr)
    );
    assert_eq!(infos().len(), 2, "both backups are inside a 30 day window");

    let id = first["backupId"].as_str().unwrap();
    let deleted = pg.pgwarden(&["delete-backups", "--backup-id", id]);
    assert!(
        deleted.status.success(),
        "{}",
        String::from_utf8_lossy(&deleted.stderr)
    );
    let left = infos();
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(
        left[0].contains(second["backupId"].as_str().unwrap()),
        "{left:?}"
    );
}

/// Server-side encryption as decided: WAL and base-backup objects are stored with `AES256`
/// (SSE-S3) or `aws:kms` (SSE-KMS with the store's key), as the store itself reports them, and a
/// restore reads them back.
#[test]
fn server_side_encryption_is_what_the_store_applies_and_restores() {
    let s3 = S3Server::start();
    s3.create_bucket("sse");
    let mut settings = archive_settings(&s3, "sse", "pg-sse");
    let pg = Instance::start(InstanceOptions {
        settings: settings.clone(),
        credentials: s3.credentials.clone(),
        extra_args: vec![],
        env: vec![],
    });
    let archived = |wal: &str| {
        assert!(
            pg.wait_archived(wal, 2 * MIN),
            "{wal} not archived: {}",
            log_tail(&pg.log(), 30)
        );
        let keys = s3.list("sse", "pg/pg-sse/wals/");
        keys.into_iter()
            .find(|k| k.contains(wal))
            .unwrap_or_else(|| panic!("{wal} is not in the store"))
    };
    let plain = archived(&pg.switch_wal());
    assert_eq!(s3.encryption_of("sse", &plain), None, "{plain}");

    // The agent reads the settings on every call: each segment goes as they say then.
    settings.encryption = Some(Encryption::Aes256);
    pg.write_settings(&settings);
    pg.psql("CREATE TABLE s(v int); INSERT INTO s VALUES (1)");
    let aes = archived(&pg.switch_wal());
    assert_eq!(
        s3.encryption_of("sse", &aes).as_deref(),
        Some("AES256"),
        "{aes}"
    );

    settings.encryption = Some(Encryption::AwsKms);
    pg.write_settings(&settings);
    pg.psql("INSERT INTO s VALUES (2)");
    let kms = archived(&pg.switch_wal());
    assert_eq!(
        s3.encryption_of("sse", &kms).as_deref(),
        Some("aws:kms"),
        "{kms}"
    );

    let backup = BackupSettings {
        target_pod: "pg-sse-1".into(),
        compression: None,
        encryption: Some(Encryption::AwsKms),
        sse_kms_key_id: None,
        jobs: 2,
        immediate_checkpoint: true,
    };
    let file = pg.dir.path().join("backup-sse.json");
    std::fs::write(&file, serde_json::to_vec(&backup).unwrap()).unwrap();
    let out = pg.pgwarden(&[
        "backup",
        "--name",
        "backup-sse",
        "--settings",
        &file.display().to_string(),
    ]);
    let facts: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert!(
        out.status.success() && facts["state"] == "succeeded",
        "backup failed: {}\n{facts}",
        String::from_utf8_lossy(&out.stderr)
    );
    let backup_id = facts["backupId"].as_str().expect("backup id").to_string();
    let objects = s3.list("sse", &format!("pg/pg-sse/base/{backup_id}/"));
    assert!(!objects.is_empty(), "no objects for backup {backup_id}");
    for key in &objects {
        assert_eq!(
            s3.encryption_of("sse", key).as_deref(),
            Some("aws:kms"),
            "{key}"
        );
    }

    pg.psql("INSERT INTO s VALUES (3)");
    archived(&pg.switch_wal());
    let restored = restored(&s3, &pg, &backup_id, "pg-sse-restored", &[]);
    assert_eq!(restored.psql("SELECT count(*) FROM s"), "3");
}

/// The agent killed with SIGKILL takes PostgreSQL with it: nothing is left holding PGDATA, and
/// a new agent starts on the same data with every committed row.
#[test]
fn a_killed_agent_leaves_no_postgres_behind() {
    let s3 = S3Server::start();
    let mut pg = primary(&s3, "killed", "pg-killed");
    pg.psql("CREATE TABLE k(v int); INSERT INTO k SELECT generate_series(1, 100)");
    let postmaster = pg.live_postmaster().expect("a running postmaster");

    let status = pg.kill_agent();
    assert_eq!(status.signal(), Some(9), "{status}");
    let gone = wait_for(Duration::from_secs(30), Duration::from_millis(200), || {
        (!alive(postmaster)).then_some(())
    });
    assert!(gone.is_some(), "postgres {postmaster} outlived its agent");

    pg.restart_agent();
    assert_eq!(pg.psql("SELECT count(*) FROM k"), "100");
}
