//! Facts → status patches, as pure data. The agent reports facts only (what PostgreSQL and
//! barman said); phases and conditions are the operator's, decided by the policy.
//!
//! ```text
//!   pg_stat_archiver + .ready files + archive-failure.json + archive-check.json
//!        └──► ArchiveFacts ──► ArchiveStatus ──► Cluster status patch (server-side apply)
//!   barman-cloud-backup exit + barman-cloud-backup-show
//!        └──► BackupFacts ──► Backup status patch (server-side apply)
//! ```

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::archive::ArchiveFailure;
use super::layout::ArchiveCheck;
use pgwarden_crds::settings::ArchiveSettings;
use pgwarden_crds::{
    ArchiveStatus, BackupAgentState, BackupAgentStatus, GROUP, InstanceStatus, VERSION,
};

/// The server-side-apply field manager of everything the agent writes.
pub const FIELD_MANAGER: &str = "pgwarden-agent";

/// One row of `pg_stat_archiver`, as `row_to_json` prints it.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct ArchiverStats {
    pub archived_count: i64,
    pub last_archived_wal: Option<String>,
    pub last_archived_time: Option<String>,
    pub failed_count: i64,
    pub last_failed_wal: Option<String>,
    pub last_failed_time: Option<String>,
}

/// Everything the agent knows about WAL archiving at one moment.
#[derive(Clone, Debug, Default)]
pub struct ArchiveFacts {
    pub pod_name: Option<String>,
    pub archiver: Option<ArchiverStats>,
    pub failure: Option<ArchiveFailure>,
    pub check: Option<ArchiveCheck>,
    pub settings: Option<ArchiveSettings>,
    /// Number of `.ready` files.
    pub ready_segments: i64,
    /// Age of the oldest `.ready` file, in seconds.
    pub oldest_ready_age_seconds: Option<i64>,
    /// When the facts were gathered (RFC 3339).
    pub now: String,
}

/// The `status.archive` block the facts make.
pub fn archive_status(f: &ArchiveFacts) -> ArchiveStatus {
    let a = f.archiver.clone().unwrap_or_default();
    let check_applies = |c: &&ArchiveCheck| {
        f.settings.as_ref().is_none_or(|s| {
            s.destination_path == c.destination_path && s.server_name == c.server_name
        })
    };
    ArchiveStatus {
        pod_name: f.pod_name.clone(),
        archived_count: f.archiver.as_ref().map(|_| a.archived_count),
        last_archived_wal: a.last_archived_wal.clone(),
        last_archived_time: a.last_archived_time.as_deref().map(rfc3339),
        failed_count: f.archiver.as_ref().map(|_| a.failed_count),
        last_failed_wal: a
            .last_failed_wal
            .clone()
            .or_else(|| f.failure.as_ref().map(|x| x.wal.clone())),
        last_failed_time: a
            .last_failed_time
            .as_deref()
            .map(rfc3339)
            .or_else(|| f.failure.as_ref().map(|x| x.time.clone())),
        last_failure: f.failure.as_ref().map(|x| x.message.clone()),
        ready_segments: Some(f.ready_segments),
        oldest_ready_age_seconds: f.oldest_ready_age_seconds,
        destination_checked: f.check.as_ref().filter(check_applies).map(|c| c.ok),
        reported_at: Some(f.now.clone()),
    }
}

/// The server-side-apply body that sets a Cluster's `status.archive`.
pub fn cluster_status_patch(cluster: &str, status: &ArchiveStatus) -> Value {
    json!({
        "apiVersion": format!("{GROUP}/{VERSION}"),
        "kind": "Cluster",
        "metadata": { "name": cluster },
        "status": { "archive": status },
    })
}

/// What PostgreSQL says of its replication, as [`REPLICATION_QUERY`] prints it.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Replication {
    pub in_recovery: bool,
    /// A WAL receiver streams from the primary now.
    pub streaming: bool,
    pub received_lsn: Option<String>,
    pub replayed_lsn: Option<String>,
    pub lag_bytes: Option<i64>,
    pub lag_seconds: Option<i64>,
    /// `default_transaction_read_only` is on: a primary fenced by its agent.
    #[serde(default)]
    pub read_only: bool,
}

/// One JSON row of replication facts. A primary reports its current WAL position as both
/// LSNs; a standby what it received and replayed (received stays after its receiver lost
/// the primary, which is what a failover compares). `CASE` keeps `pg_current_wal_lsn()`,
/// an error during recovery, from running on a standby.
pub const REPLICATION_QUERY: &str = "SELECT json_build_object(\
 'inRecovery', pg_is_in_recovery(),\
 'readOnly', current_setting('default_transaction_read_only')::bool,\
 'streaming', EXISTS (SELECT 1 FROM pg_stat_wal_receiver WHERE status = 'streaming'),\
 'receivedLsn', CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn()::text ELSE pg_current_wal_lsn()::text END,\
 'replayedLsn', CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()::text ELSE pg_current_wal_lsn()::text END,\
 'lagBytes', CASE WHEN pg_is_in_recovery() THEN pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())::bigint ELSE 0 END,\
 'lagSeconds', CASE WHEN NOT pg_is_in_recovery() OR pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0 \
   ELSE extract(epoch FROM now() - pg_last_xact_replay_timestamp())::bigint END)";

/// The Cluster's `status.instancesStatus` entry of pod `pod` from its replication facts:
/// ready, since PostgreSQL answered the query.
pub fn instance_status(pod: &str, r: &Replication, now: &str) -> InstanceStatus {
    InstanceStatus {
        name: pod.to_string(),
        role: Some(if r.in_recovery { "replica" } else { "primary" }.into()),
        ready: Some(true),
        in_recovery: Some(r.in_recovery),
        streaming: Some(r.streaming),
        read_only: Some(r.read_only),
        received_lsn: r.received_lsn.clone(),
        replayed_lsn: r.replayed_lsn.clone(),
        lag_bytes: r.lag_bytes.map(|b| b.max(0)),
        lag_seconds: r.lag_seconds.map(|s| s.max(0)),
        reported_at: Some(now.to_string()),
    }
}

/// The server-side-apply body of the agent's own entry of `status.instancesStatus` (a list
/// keyed by name: applied under [`instance_field_manager`], it leaves the other pods' entries
/// and the agent's other status fields alone).
pub fn instance_status_patch(cluster: &str, status: &InstanceStatus) -> Value {
    json!({
        "apiVersion": format!("{GROUP}/{VERSION}"),
        "kind": "Cluster",
        "metadata": { "name": cluster },
        "status": { "instancesStatus": [status] },
    })
}

/// What a pod's field manager applies to forget its instance entry: nothing (server-side
/// apply removes the fields a manager no longer sends and nobody else owns).
pub fn instance_status_forget_patch(cluster: &str) -> Value {
    json!({
        "apiVersion": format!("{GROUP}/{VERSION}"),
        "kind": "Cluster",
        "metadata": { "name": cluster },
        "status": {},
    })
}

/// The field manager of pod `pod`'s instance entry: one per pod, as each agent applies the
/// whole of what its manager owns (one manager for all would drop the others' entries).
pub fn instance_field_manager(pod: &str) -> String {
    format!("{FIELD_MANAGER}-{pod}")
}

/// What the agent knows about one backup it ran (also its memory across restarts).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BackupFacts {
    /// The barman backup name: the Backup object it was taken for.
    pub name: String,
    pub pod_name: Option<String>,
    pub state: Option<BackupAgentState>,
    /// Process id of barman-cloud-backup while it runs.
    pub pid: Option<u32>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub exit_code: Option<i32>,
    pub backup_id: Option<String>,
    pub begin_wal: Option<String>,
    pub end_wal: Option<String>,
    pub begin_lsn: Option<String>,
    pub end_lsn: Option<String>,
    pub begin_time: Option<String>,
    pub end_time: Option<String>,
    /// Barman's `size` (bytes stored), else its `cluster_size` (see `BackupStatus`).
    pub size_bytes: Option<i64>,
    pub error: Option<String>,
}

/// The server-side-apply body that sets a Backup's agent facts.
pub fn backup_status_patch(backup: &str, f: &BackupFacts) -> Value {
    let agent = BackupAgentStatus {
        state: f.state,
        pod_name: f.pod_name.clone(),
        started_at: f.started_at.clone(),
        finished_at: f.finished_at.clone(),
        exit_code: f.exit_code,
    };
    let mut status = json!({ "agent": agent });
    let facts = [
        ("backupId", &f.backup_id),
        ("beginWal", &f.begin_wal),
        ("endWal", &f.end_wal),
        ("beginLSN", &f.begin_lsn),
        ("endLSN", &f.end_lsn),
        ("error", &f.error),
    ];
    for (key, value) in facts {
        if let Some(v) = value {
            status[key] = json!(v);
        }
    }
    if let Some(size) = f.size_bytes {
        status["sizeBytes"] = json!(size);
    }
    json!({
        "apiVersion": format!("{GROUP}/{VERSION}"),
        "kind": "Backup",
        "metadata": { "name": backup },
        "status": status,
    })
}

/// A PostgreSQL timestamp (`2026-11-25T10:00:00.123456+00:00`) as RFC 3339 UTC seconds.
fn rfc3339(ts: &str) -> String {
    chrono::DateTime::parse_from_rfc3339(ts)
        .or_else(|_| chrono::DateTime::parse_from_str(ts, "%Y-%m-%d %H:%M:%S%.f%#z"))
        .map(|t| {
            t.with_timezone(&chrono::Utc)
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        })
        .unwrap_or_else(|_| ts.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> ArchiveFacts {
        ArchiveFacts {
            pod_name: Some("pg-1".into()),
            archiver: Some(ArchiverStats {
                archived_count: 12,
                last_archived_wal: Some("00000001000000000000000C".into()),
                last_archived_time: Some("2026-11-25T10:00:01.5+00:00".into()),
                failed_count: 3,
                last_failed_wal: Some("00000001000000000000000D".into()),
                last_failed_time: Some("2026-11-25T10:00:09.1+00:00".into()),
            }),
            failure: Some(ArchiveFailure {
                wal: "00000001000000000000000D".into(),
                time: "2026-11-25T10:00:09Z".into(),
                message: "barman-cloud-wal-archive failed: cannot reach the object store endpoint"
                    .into(),
            }),
            check: None,
            settings: None,
            ready_segments: 2,
            oldest_ready_age_seconds: Some(40),
            now: "2026-11-25T10:00:10Z".into(),
        }
    }

    #[test]
    fn archive_facts_become_the_status_archive_block() {
        let s = archive_status(&facts());
        assert_eq!(s.archived_count, Some(12));
        assert_eq!(
            s.last_archived_time.as_deref(),
            Some("2026-11-25T10:00:01Z")
        );
        assert_eq!(s.failed_count, Some(3));
        assert_eq!(s.last_failed_time.as_deref(), Some("2026-11-25T10:00:09Z"));
        assert!(s.last_failure.unwrap().contains("cannot reach"));
        assert_eq!(
            (s.ready_segments, s.oldest_ready_age_seconds),
            (Some(2), Some(40))
        );
    }

    #[test]
    fn the_cluster_patch_sets_only_status_archive() {
        let p = cluster_status_patch("pg", &archive_status(&facts()));
        assert_eq!(p["apiVersion"], "postgresql.k8s.2ndq.io/v1alpha1");
        assert_eq!(p["metadata"]["name"], "pg");
        assert_eq!(
            p["status"].as_object().unwrap().keys().collect::<Vec<_>>(),
            ["archive"]
        );
        assert_eq!(p["status"]["archive"]["readySegments"], 2);
    }

    #[test]
    fn a_check_for_another_destination_is_not_reported() {
        let mut f = facts();
        f.settings = Some(ArchiveSettings {
            destination_path: "s3://b/new".into(),
            endpoint_url: None,
            endpoint_ca_file: None,
            server_name: "pg".into(),
            compression: None,
            encryption: None,
            sse_kms_key_id: None,
            max_parallel: 1,
            archive_timeout_seconds: 0,
            archiver: Default::default(),
            standby_clone: Default::default(),
        });
        f.check = Some(ArchiveCheck {
            destination_path: "s3://b/old".into(),
            server_name: "pg".into(),
            ok: true,
            time: "t".into(),
            message: None,
        });
        assert_eq!(archive_status(&f).destination_checked, None);
    }

    #[test]
    fn replication_facts_become_the_pods_own_instance_entry() {
        let row = r#"{"inRecovery": true, "streaming": false, "receivedLsn": "0/3000100",
            "replayedLsn": "0/3000000", "lagBytes": 256, "lagSeconds": 3}"#;
        let r: Replication = serde_json::from_str(row).unwrap();
        let s = instance_status("pg-2", &r, "2026-11-30T20:00:00Z");
        assert_eq!(s.role.as_deref(), Some("replica"));
        assert_eq!(
            (s.streaming, s.lag_bytes, s.lag_seconds),
            (Some(false), Some(256), Some(3))
        );
        let p = instance_status_patch("pg", &s);
        let entries = p["status"]["instancesStatus"].as_array().unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0]["name"], "pg-2");
        assert_eq!(entries[0]["receivedLsn"], "0/3000100");
        assert_eq!(
            p["status"].as_object().unwrap().len(),
            1,
            "only the pod's entry"
        );
        assert_eq!(instance_field_manager("pg-2"), "pgwarden-agent-pg-2");
        let primary = Replication {
            in_recovery: false,
            ..r
        };
        assert_eq!(
            instance_status("pg-1", &primary, "t").role.as_deref(),
            Some("primary")
        );
    }

    #[test]
    fn backup_facts_become_agent_and_fact_fields() {
        let f = BackupFacts {
            name: "uid".into(),
            pod_name: Some("pg-1".into()),
            state: Some(BackupAgentState::Succeeded),
            exit_code: Some(0),
            backup_id: Some("20261125T100000".into()),
            begin_lsn: Some("0/2000028".into()),
            ..Default::default()
        };
        let p = backup_status_patch("backup-example", &f);
        assert_eq!(p["kind"], "Backup");
        assert_eq!(p["status"]["agent"]["state"], "succeeded");
        assert_eq!(p["status"]["backupId"], "20261125T100000");
        assert_eq!(p["status"]["beginLSN"], "0/2000028");
        assert!(p["status"].get("error").is_none());
    }
}
