//! A backup taken on a standby (issue 13 item 4), end to end through the local node: the real
//! operator, agents, PostgreSQL, barman and MinIO.
//!
//! `instances: 3`, rows written on the primary, then a Backup with `target: prefer-standby`:
//! - it runs on a streaming standby (`status.instanceID.podName` and the agent's own report
//!   name `pg-2` or `pg-3`, pods whose PostgreSQL is in recovery);
//! - a Cluster restored from it holds every row committed before the Backup was created.
//!
//! A backup on a standby ends with `pg_backup_stop()`, which on a standby does not wait for the
//! backup's last WAL file to be archived (only the primary archives). On a quiet primary that
//! file reaches the store after `archive_timeout` (5 minutes) at best, so a restore from the
//! backup waits that long or fails. Before the fix the restored pod was not ready within 200 s
//! (see the report of this change); the Backup now completes only once its end WAL is in
//! the store, and the primary's agent switches WAL files for it.
//!
//! Slow (minutes). Needs `cargo xtask setup` (see `cargo xtask test`).

use std::time::Duration;

use pgwarden_tests::datapath::wait_for;
use pgwarden_tests::operator::{apply_yaml, get};
use pgwarden_tests::world::{StoreWorld, store_cluster_yaml, store_world};
use serde_json::Value;

const BUCKET: &str = "pgwarden-stbybkp";
const READY: Duration = Duration::from_secs(300);
/// Under `archive_timeout` (300 s): a restore that needs the primary's timer to fire fails.
const RESTORED_READY: Duration = Duration::from_secs(200);

fn psql(w: &StoreWorld<'_>, pod: &str, sql: &str) -> String {
    w.pod_psql(pod, sql)
        .unwrap_or_else(|| panic!("psql {sql:?} failed on {pod}"))
}

#[test]
fn a_backup_taken_on_a_standby_restores_every_row_committed_before_it() {
    let subnet = 120 + (std::process::id() % 20) as u8;
    let w = store_world("stbybackup", "sbk", subnet, BUCKET);
    apply_yaml(&w.ns, &store_cluster_yaml(&w, BUCKET, "pg", 3, ""));
    for pod in ["pg-1", "pg-2", "pg-3"] {
        if w.ready_pod(pod, READY).is_none() {
            panic!(
                "{pod} not ready within {READY:?}:\n{}",
                w.pod_log_tail(pod, 40)
            );
        }
    }
    psql(
        &w,
        "pg-1",
        "CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 1000) g",
    );
    psql(
        &w,
        "pg-1",
        "INSERT INTO t SELECT g FROM generate_series(1001, 1500) g",
    );
    assert_eq!(
        psql(&w, "pg-1", "SELECT count(*) || ',' || max(id) FROM t"),
        "1500,1500"
    );
    // The standbys have the rows (the backup on one of them must see them).
    for standby in ["pg-2", "pg-3"] {
        let seen = wait_for(Duration::from_secs(60), Duration::from_millis(500), || {
            (w.pod_psql(standby, "SELECT count(*) FROM t")? == "1500").then_some(())
        });
        assert!(seen.is_some(), "{standby} never had the rows");
    }

    apply_yaml(
        &w.ns,
        "apiVersion: postgresql.k8s.2ndq.io/v1alpha1\nkind: Backup\nmetadata:\n  name: on-standby\nspec:\n  cluster:\n    name: pg\n  target: prefer-standby\n",
    );
    let mut last = Value::Null;
    let done = wait_for(Duration::from_secs(300), Duration::from_secs(1), || {
        last = get(&w.ns, "backup", "on-standby")?["status"].clone();
        let phase = last["phase"].as_str()?;
        matches!(phase, "completed" | "failed").then(|| last.clone())
    });
    let status = done.unwrap_or_else(|| panic!("Backup on-standby never ended: {last}"));
    assert_eq!(status["phase"], "completed", "{status}");
    let on = status["instanceID"]["podName"].as_str().unwrap_or_default();
    assert!(
        ["pg-2", "pg-3"].contains(&on),
        "the backup ran on {on:?}: {status}"
    );
    assert_eq!(
        status["agent"]["podName"], on,
        "the agent that took it: {status}"
    );
    assert_eq!(
        psql(&w, on, "SELECT pg_is_in_recovery()"),
        "t",
        "{on} is a standby"
    );
    let pod = get(&w.ns, "pod", on).expect("the standby's pod");
    assert_eq!(
        pod["metadata"]["labels"]["postgresql.k8s.2ndq.io/role"],
        "replica"
    );
    let placed = (status["conditions"].as_array().into_iter().flatten())
        .find(|c| c["type"] == "OnStandby")
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        (&placed["status"], &placed["reason"]),
        (&"True".into(), &"StreamingStandby".into()),
        "{status}"
    );

    // A Cluster restored from it has every row committed before the Backup.
    let recovery = "  bootstrap:\n    recovery:\n      backup:\n        name: on-standby\n";
    apply_yaml(
        &w.ns,
        &store_cluster_yaml(&w, BUCKET, "restored", 1, recovery),
    );
    if w.ready_pod("restored-1", RESTORED_READY).is_none() {
        panic!(
            "restored-1 not ready within {RESTORED_READY:?} (Backup {status}):\n{}",
            w.pod_log_tail("restored-1", 40)
        );
    }
    let rows = psql(
        &w,
        "restored-1",
        "SELECT count(*) || ',' || count(DISTINCT id) || ',' || max(id) FROM t WHERE id <= 1500",
    );
    assert_eq!(
        rows, "1500,1500,1500",
        "rows committed before the backup, restored"
    );
}
