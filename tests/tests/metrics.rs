//! Metrics per Cluster (issue 15 item 5), end to end through the local node: the real
//! operator, agent, PostgreSQL, barman and MinIO. The operator's `/metrics` is scraped while
//! the Cluster runs:
//! - `pgwarden_cluster_wal_archived_total{namespace,cluster}` rises after `pg_switch_wal()`;
//! - `pgwarden_cluster_last_backup_timestamp_seconds` is the Backup's `status.stoppedAt`, and
//!   its size and duration are there;
//! - once the Cluster is deleted, none of its series is left.
//!
//! Slow (minutes). Needs `cargo xtask setup` (see `cargo xtask test`).

use std::time::Duration;

use pgwarden_tests::datapath::wait_for;
use pgwarden_tests::operator::{apply_yaml, eventually, get, metric_sum, wait_gone};
use pgwarden_tests::world::{StoreWorld, store_cluster_yaml, store_world};

const BUCKET: &str = "pgwarden-metrics";
const READY: Duration = Duration::from_secs(300);
const REPORTED: Duration = Duration::from_secs(120);

fn labels(w: &StoreWorld<'_>) -> String {
    format!("namespace=\"{}\",cluster=\"pg\"", w.ns.name)
}

/// The value of `name` for the Cluster, if the scrape has the series.
fn sample(w: &StoreWorld<'_>, name: &str) -> Option<f64> {
    let text = w.op.metrics();
    let series = format!("{name}{{{}}} ", labels(w));
    text.contains(&series)
        .then(|| metric_sum(&text, name, &labels(w)))
}

fn psql(w: &StoreWorld<'_>, sql: &str) -> String {
    w.pod_psql("pg-1", sql)
        .unwrap_or_else(|| panic!("psql {sql:?} failed on pg-1"))
}

/// Seconds since the epoch of an RFC 3339 UTC time (`date -d`, as the harness's clock).
fn epoch(time: &str) -> f64 {
    let out = std::process::Command::new("date")
        .args(["-u", "-d", time, "+%s"])
        .output()
        .expect("date");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("not a time: {time}"))
}

#[test]
fn cluster_metrics_move_with_archiving_and_backups_and_leave_with_the_cluster() {
    let subnet = 140 + (std::process::id() % 20) as u8;
    let w = store_world("metrics", "met", subnet, BUCKET);
    apply_yaml(&w.ns, &store_cluster_yaml(&w, BUCKET, "pg", 1, ""));
    if w.ready_pod("pg-1", READY).is_none() {
        panic!(
            "pg-1 not ready within {READY:?}:\n{}",
            w.pod_log_tail("pg-1", 40)
        );
    }

    // The archived count, as the agent reports it, rises after a switch.
    let archived = "pgwarden_cluster_wal_archived_total";
    let before = eventually("the archived count is served", REPORTED, || {
        sample(&w, archived).ok_or_else(|| w.op.metrics())
    });
    psql(
        &w,
        "CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g",
    );
    psql(&w, "SELECT pg_switch_wal()");
    let after = eventually("the archived count rises", REPORTED, || {
        let v = sample(&w, archived).unwrap_or_default();
        if v > before {
            Ok(v)
        } else {
            Err(format!("{v} (before: {before})"))
        }
    });
    eprintln!("{archived}: {before} -> {after}");
    for name in [
        "pgwarden_cluster_wal_last_archived_timestamp_seconds",
        "pgwarden_cluster_wal_ready_segments",
        "pgwarden_cluster_wal_archive_failures_total",
    ] {
        assert!(
            sample(&w, name).is_some(),
            "{name} missing:\n{}",
            w.op.metrics()
        );
    }

    // The last backup's time is the Backup's stop time.
    apply_yaml(
        &w.ns,
        "apiVersion: postgresql.k8s.2ndq.io/v1alpha1\nkind: Backup\nmetadata:\n  name: first\nspec:\n  cluster:\n    name: pg\n",
    );
    let status = wait_for(Duration::from_secs(300), Duration::from_secs(1), || {
        let status = get(&w.ns, "backup", "first")?["status"].clone();
        matches!(status["phase"].as_str()?, "completed" | "failed").then_some(status)
    })
    .expect("Backup first never ended");
    assert_eq!(status["phase"], "completed", "{status}");
    let stopped = epoch(status["stoppedAt"].as_str().expect("stoppedAt"));
    let last = "pgwarden_cluster_last_backup_timestamp_seconds";
    eventually(
        "the last backup time is the Backup's stoppedAt",
        REPORTED,
        || match sample(&w, last) {
            Some(v) if v == stopped => Ok(()),
            v => Err(format!("{v:?}, stoppedAt {stopped}")),
        },
    );
    let size = eventually("the last backup's size is served", REPORTED, || {
        sample(&w, "pgwarden_cluster_last_backup_size_bytes")
            .filter(|v| *v > 0.0)
            .ok_or_else(|| format!("{:#}", get(&w.ns, "backup", "first").unwrap_or_default()))
    });
    let took = sample(&w, "pgwarden_cluster_last_backup_duration_seconds");
    assert!(took.is_some_and(|t| t >= 0.0), "duration {took:?}");
    eprintln!("last backup: stopped {stopped}, {size} bytes, {took:?} s");

    // Deleted: its series go at once (read from the caches at each scrape).
    let out = w.ns.kubectl(&["delete", "cluster", "pg", "--wait=false"]);
    assert!(out.success, "{}", out.stderr);
    wait_gone(&w.ns, "cluster", "pg");
    let cluster = labels(&w);
    eventually(
        "no series of the deleted Cluster",
        Duration::from_secs(30),
        || {
            let text = w.op.metrics();
            match text.lines().find(|l| l.contains(&cluster)) {
                None => Ok(()),
                Some(line) => Err(line.to_string()),
            }
        },
    );
}
