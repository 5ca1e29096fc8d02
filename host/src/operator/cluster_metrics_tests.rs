use super::*;
use kube::runtime::reflector::store::Writer;
use kube::runtime::watcher::Event;
use serde_json::json;

use crate::operator::metrics::Metrics;

fn cluster(name: &str) -> Cluster {
    serde_json::from_value(json!({
        "apiVersion": "postgresql.k8s.2ndq.io/v1alpha1", "kind": "Cluster",
        "metadata": {"name": name, "namespace": "ns"},
        "spec": {"instances": 2},
        "status": {
            "firstRecoverabilityPoint": "2026-12-01T00:00:10Z",
            "archive": {"archivedCount": 7, "failedCount": 2, "readySegments": 3,
                "oldestReadyAgeSeconds": 40, "lastArchivedTime": "2026-12-01T00:01:00Z",
                "lastFailedTime": "2026-12-01T00:00:30.5Z"},
            "instancesStatus": [
                {"name": format!("{name}-1"), "inRecovery": false, "lagBytes": 0},
                {"name": format!("{name}-2"), "inRecovery": true, "lagBytes": 128, "lagSeconds": 2}
            ]
        }
    }))
    .unwrap()
}

fn backup(name: &str, started: &str, stopped: &str, phase: &str) -> Backup {
    serde_json::from_value(json!({
        "apiVersion": "postgresql.k8s.2ndq.io/v1alpha1", "kind": "Backup",
        "metadata": {"name": name, "namespace": "ns"},
        "spec": {"cluster": {"name": "pg"}},
        "status": {"phase": phase, "startedAt": started, "stoppedAt": stopped, "sizeBytes": 4096}
    }))
    .unwrap()
}

fn store<K>(objects: Vec<K>) -> (Writer<K>, Store<K>)
where
    K: kube::Resource<DynamicType = ()> + Clone + 'static,
{
    let mut writer = Writer::default();
    for o in objects {
        writer.apply_watcher_event(&Event::Apply(o));
    }
    let reader = writer.as_reader();
    (writer, reader)
}

#[test]
fn series_come_from_the_status_and_leave_with_the_cluster() {
    let m = Metrics::default();
    assert!(
        !m.render().contains("cluster=\""),
        "a standby serves no Cluster series"
    );
    let (mut clusters, reader) = store(vec![cluster("pg")]);
    let backups = vec![
        backup(
            "b1",
            "2026-12-01T00:00:00Z",
            "2026-12-01T00:00:05Z",
            "completed",
        ),
        backup(
            "b2",
            "2026-12-01T00:02:00Z",
            "2026-12-01T00:02:30Z",
            "completed",
        ),
        backup(
            "b3",
            "2026-12-01T00:03:00Z",
            "2026-12-01T00:04:00Z",
            "failed",
        ),
    ];
    let (_backups, backup_reader) = store(backups);
    m.watch_clusters(reader, backup_reader);
    let text = m.render();
    let l = "{namespace=\"ns\",cluster=\"pg\"}";
    for line in [
        format!("pgwarden_cluster_instances{l} 2.0\n"),
        format!("pgwarden_cluster_wal_archived_total{l} 7\n"),
        format!("pgwarden_cluster_wal_archive_failures_total{l} 2\n"),
        format!("pgwarden_cluster_wal_ready_segments{l} 3.0\n"),
        format!("pgwarden_cluster_wal_oldest_ready_age_seconds{l} 40.0\n"),
        format!("pgwarden_cluster_wal_last_archived_timestamp_seconds{l} 1796083260.0\n"),
        format!("pgwarden_cluster_wal_last_failed_timestamp_seconds{l} 1796083230.5\n"),
        // The newest completed Backup (b2), not the failed b3.
        format!("pgwarden_cluster_last_backup_timestamp_seconds{l} 1796083350.0\n"),
        format!("pgwarden_cluster_last_backup_duration_seconds{l} 30.0\n"),
        format!("pgwarden_cluster_last_backup_size_bytes{l} 4096.0\n"),
        format!("pgwarden_cluster_first_recoverability_point_timestamp_seconds{l} 1796083210.0\n"),
        "pgwarden_cluster_replication_lag_bytes{namespace=\"ns\",cluster=\"pg\",instance=\"pg-2\"} 128\n".into(),
        "pgwarden_cluster_replication_lag_seconds{namespace=\"ns\",cluster=\"pg\",instance=\"pg-2\"} 2\n".into(),
    ] {
        assert!(text.contains(&line), "{line} missing from:\n{text}");
    }
    assert!(
        !text.contains("instance=\"pg-1\""),
        "the primary has no lag:\n{text}"
    );
    assert!(
        text.contains("# TYPE pgwarden_cluster_wal_archived counter\n"),
        "{text}"
    );
    assert!(text.ends_with("# EOF\n"), "{text}");

    clusters.apply_watcher_event(&Event::Delete(cluster("pg")));
    let text = m.render();
    assert!(!text.contains("cluster=\"pg\""), "stale series:\n{text}");
}
