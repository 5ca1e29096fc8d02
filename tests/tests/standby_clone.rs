//! Where a new standby is cloned from is the policy's decision (issue 13 item 1), end to end
//! through the local node: the real operator, agents, PostgreSQL, barman and MinIO.
//!
//! The production policy answers `standbyClone: object-store` once the Cluster has a completed
//! backup. A Cluster of one instance under it is backed up, takes more rows, then grows to two:
//! - pg-2 is cloned from the store (its agent says so), and the primary never served a base
//!   backup: with `log_replication_commands` its log shows the standby's `START_REPLICATION`
//!   and no `BASE_BACKUP` (what `pg_basebackup` sends, and what a clone from the primary shows);
//! - pg-2 replays the WAL written after the backup, then streams: rows written later appear.
//!
//! Slow (minutes). Needs `cargo xtask setup` (see `cargo xtask test`).

use std::time::Duration;

use pgwarden_tests::datapath::wait_for;
use pgwarden_tests::operator::{PolicyGuard, apply_yaml, file_policy_yaml, get, policy};
use pgwarden_tests::world::{StoreWorld, store_cluster_yaml, store_world};

const BUCKET: &str = "pgwarden-clonestore";
const READY: Duration = Duration::from_secs(300);

fn psql(w: &StoreWorld<'_>, pod: &str, sql: &str) -> String {
    w.pod_psql(pod, sql)
        .unwrap_or_else(|| panic!("psql {sql:?} failed on {pod}"))
}

fn ready(w: &StoreWorld<'_>, pod: &str) {
    if w.ready_pod(pod, READY).is_none() {
        panic!(
            "{pod} not ready within {READY:?}:\n{}",
            w.pod_log_tail(pod, 60)
        );
    }
}

/// Waits until `pod` holds `count` rows in `t`.
fn rows_on(w: &StoreWorld<'_>, pod: &str, count: u32) {
    let seen = wait_for(Duration::from_secs(120), Duration::from_millis(500), || {
        (w.pod_psql(pod, "SELECT count(*) FROM t")? == count.to_string()).then_some(())
    });
    assert!(
        seen.is_some(),
        "{pod} never had {count} rows:\n{}",
        w.pod_log_tail(pod, 40)
    );
}

#[test]
fn a_standby_is_cloned_from_the_store_when_the_policy_says_so_then_streams() {
    let subnet = 10 + (std::process::id() % 20) as u8;
    let w = store_world("clonestore", "cln", subnet, BUCKET);
    let name = format!("production-{}", w.ns.name);
    let _guard = PolicyGuard(&w.ns, name.clone());
    let module = policy("production").display().to_string();
    apply_yaml(&w.ns, &file_policy_yaml(&name, &module, None));
    let extra = format!(
        "  policy: {name}\n  postgresql:\n    parameters:\n      log_replication_commands: \"on\"\n"
    );
    // The production policy wants encrypted WAL; gzip rather than its zstd default.
    let wal = "    wal:\n      encryption: AES256\n      compression: gzip\n";
    let cluster = store_cluster_yaml(&w, BUCKET, "pg", 1, &extra) + wal;
    apply_yaml(&w.ns, &cluster);
    ready(&w, "pg-1");
    psql(
        &w,
        "pg-1",
        "CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 1000) g",
    );

    apply_yaml(
        &w.ns,
        "apiVersion: postgresql.k8s.2ndq.io/v1alpha1\nkind: Backup\nmetadata:\n  name: base\nspec:\n  cluster:\n    name: pg\n",
    );
    let mut last = serde_json::Value::Null;
    let done = wait_for(Duration::from_secs(300), Duration::from_secs(1), || {
        last = get(&w.ns, "backup", "base")?["status"].clone();
        matches!(last["phase"].as_str()?, "completed" | "failed").then(|| last.clone())
    });
    let status = done.unwrap_or_else(|| panic!("Backup base never ended: {last}"));
    assert_eq!(status["phase"], "completed", "{status}");
    // Rows after the backup: the standby replays them from the archive or the primary.
    psql(
        &w,
        "pg-1",
        "INSERT INTO t SELECT g FROM generate_series(1001, 1500) g",
    );
    psql(&w, "pg-1", "SELECT pg_switch_wal()");

    // The decision reaches the agents once the Cluster knows its completed backup.
    let decided = wait_for(Duration::from_secs(60), Duration::from_secs(1), || {
        let config = get(&w.ns, "configmap", "pg-settings")?;
        let archive: serde_json::Value =
            serde_json::from_str(config["data"]["archive.json"].as_str()?).ok()?;
        (archive["standbyClone"] == "object-store").then_some(())
    });
    assert!(
        decided.is_some(),
        "the settings never said object-store: {}",
        get(&w.ns, "cluster", "pg").unwrap_or_default()["status"]
    );

    let grow = w.ns.kubectl(&[
        "patch",
        "cluster",
        "pg",
        "--type=merge",
        "-p",
        r#"{"spec":{"instances":2}}"#,
    ]);
    assert!(grow.success, "{}", grow.stderr);
    ready(&w, "pg-2");
    assert_eq!(psql(&w, "pg-2", "SELECT pg_is_in_recovery()"), "t");
    rows_on(&w, "pg-2", 1500);
    let streaming = wait_for(Duration::from_secs(60), Duration::from_secs(1), || {
        let state = w.pod_psql(
            "pg-1",
            "SELECT state FROM pg_stat_replication WHERE application_name = 'pg-2'",
        )?;
        (state == "streaming").then_some(())
    });
    assert!(streaming.is_some(), "pg-2 does not stream from pg-1");
    let primary_log = w.pod_log_tail("pg-1", 100_000);
    assert!(
        primary_log.contains("START_REPLICATION"),
        "log_replication_commands shows no streaming: is it on?"
    );
    let base_backups: Vec<&str> = (primary_log.lines())
        .filter(|l| l.contains("BASE_BACKUP"))
        .collect();
    assert!(
        base_backups.is_empty(),
        "the primary served a base backup:\n{}",
        base_backups.join("\n")
    );
    let standby_log = w.pod_log_tail("pg-2", 100_000);
    let cloned =
        (standby_log.lines()).find(|l| l.contains("pgwarden-agent: cloned from the object store"));
    let Some(cloned) = cloned else {
        panic!(
            "pg-2 was not cloned from the store:\n{}",
            w.pod_log_tail("pg-2", 60)
        );
    };
    eprintln!("{cloned}");

    // Streams: rows written now appear on the standby.
    psql(
        &w,
        "pg-1",
        "INSERT INTO t SELECT g FROM generate_series(1501, 2000) g",
    );
    rows_on(&w, "pg-2", 2000);
}
