//! The agent's side of retention: when the operator hands this pod the deletion of a Backup's
//! backup (a request in `deletions.json` of the Cluster's settings ConfigMap, mounted in the
//! settings folder, naming this pod, for an attempt not run yet), run
//! `barman-cloud-backup-delete -b ID` against its store and report the outcome in the Backup's
//! `status.deletion.agent`. A backup already absent from the store counts as deleted, so a
//! repeated attempt (an agent restart, a retry) is harmless.
//!
//! Only the operator writes that ConfigMap and only this Cluster's pods mount it; the agent
//! still refuses a request that is not for its Cluster, not in its own store, or whose backup
//! in the store is not that Backup's (barman names a backup after its Backup's uid), since a
//! Backup's status (where the backup id and store come from) may be written by any agent of
//! the namespace. `status.deletion` itself is never acted on (see
//! `plan::retention::requests`).
//!
//! WAL: barman 3.19.1 (`cloud_backup_delete._remove_wals_for_backup`) deletes WAL with a
//! backup only when no older completed backup (`DONE`, `WAITING_FOR_WALS`) is left in the
//! store, and then only the segments before the next such backup's `begin_wal` (on the same
//! timeline). Deleting a backup that is not the oldest removes no WAL. So the WAL of every
//! backup that stays, from its `begin_wal` to the newest segment, stays; the operator never
//! asks for the backup that starts the recovery window (see `plan::retention::floor`).
//! Two deletions run at once can only leave WAL behind, never remove WAL a kept backup needs:
//! each removes segments before a backup that is still in the store when it lists it.

use std::path::Path;

use pgwarden_crds::settings::ArchiveSettings;
use pgwarden_crds::{Backup, BackupAgentState, BackupDeletionAgent};
use serde_json::{Value, json};

use super::barman::{self, Barman, Deletion, scrub};
use pgwarden_core::plan::retention::requests::{self, Request};
use pgwarden_crds::{GROUP, VERSION};

/// Who this agent is: the deletions it may run are its Cluster's, on its pod.
#[derive(Clone, Debug)]
pub struct Me {
    pub cluster: String,
    pub pod: String,
}

/// The requests of the settings folder that name this pod (none when the file is absent).
pub fn assigned(settings_dir: &Path, me: &Me) -> Result<Vec<Request>, String> {
    let path = settings_dir.join(requests::KEY);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => Some(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let all = requests::parse(text.as_deref())?;
    Ok(all.into_iter().filter(|r| r.pod == me.pod).collect())
}

/// Refuses a request that is not for this Cluster, for another store than this Cluster's, or
/// whose Backup object (as the API server has it) is another Cluster's or another object.
pub fn check(
    r: &Request,
    me: &Me,
    archive: &ArchiveSettings,
    backup: &Backup,
) -> Result<(), String> {
    let refused = |why: String| {
        Err(format!(
            "refused the deletion of backup {} of Backup {} (attempt {}): {why}",
            r.backup_id, r.backup, r.attempt
        ))
    };
    if r.cluster != me.cluster || backup.spec.cluster.name != me.cluster {
        return refused(format!(
            "the Backup is for Cluster {}, this agent is Cluster {}'s",
            backup.spec.cluster.name, me.cluster
        ));
    }
    if backup.metadata.uid.as_deref() != Some(r.uid.as_str()) {
        return refused("the Backup of that name is another object (its uid differs)".into());
    }
    let path = r
        .destination_path
        .as_deref()
        .unwrap_or(&archive.destination_path);
    let server = r.server_name.as_deref().unwrap_or(&archive.server_name);
    if (path, server)
        != (
            archive.destination_path.as_str(),
            archive.server_name.as_str(),
        )
    {
        return refused(format!(
            "its store {path} (server {server}) is not this Cluster's store {} (server {})",
            archive.destination_path, archive.server_name
        ));
    }
    if r.backup_id.is_empty() {
        return refused("the request names no backup id".into());
    }
    Ok(())
}

/// Deletes the backup (blocking); `Ok` also when it is not in the store any more. A backup
/// whose barman name is neither the Backup's uid (how the agent names the backups it takes)
/// nor its name is another Backup's: refused.
pub fn delete(store: &ArchiveSettings, r: &Request) -> Result<(), String> {
    let b = Barman::from_env();
    let list_args = barman::backup_list_args(store);
    let mut cmd = b.command("barman-cloud-backup-list", store, &list_args);
    let out = b
        .run("barman-cloud-backup-list", &mut cmd)
        .map_err(|e| scrub(&e.to_string()))?;
    let list: Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("barman-cloud-backup-list answered no JSON: {e}"))?;
    let found = list["backups_list"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|b| b["backup_id"] == r.backup_id.as_str());
    let Some(found) = found else {
        return Ok(());
    };
    let named = found["backup_name"].as_str().unwrap_or_default();
    if named != r.uid && named != r.backup {
        return Err(format!(
            "refused the deletion of backup {} of Backup {}: the store names that backup {named:?}, not after this Backup (uid {})",
            r.backup_id, r.backup, r.uid
        ));
    }
    let args = barman::backup_delete_args(store, &Deletion::BackupId(r.backup_id.clone()));
    let mut cmd = b.command("barman-cloud-backup-delete", store, &args);
    b.run("barman-cloud-backup-delete", &mut cmd)
        .map(|_| ())
        .map_err(|e| scrub(&e.to_string()))
}

/// The server-side-apply body reporting a deletion attempt.
pub fn report_patch(
    backup: &str,
    pod: &str,
    attempt: u32,
    outcome: &Result<(), String>,
    finished_at: String,
) -> Value {
    let agent = BackupDeletionAgent {
        attempt: Some(attempt),
        state: Some(if outcome.is_ok() {
            BackupAgentState::Succeeded
        } else {
            BackupAgentState::Failed
        }),
        pod_name: Some(pod.into()),
        finished_at: Some(finished_at),
        error: outcome.clone().err(),
    };
    json!({
        "apiVersion": format!("{GROUP}/{VERSION}"),
        "kind": "Backup",
        "metadata": { "name": backup },
        "status": { "deletion": { "agent": agent } },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgwarden_crds::ExpiredObject;

    fn me() -> Me {
        Me {
            cluster: "pg".into(),
            pod: "pg-1".into(),
        }
    }

    fn archive() -> ArchiveSettings {
        ArchiveSettings {
            destination_path: "s3://b/pg".into(),
            endpoint_url: None,
            endpoint_ca_file: None,
            server_name: "pg".into(),
            compression: None,
            encryption: None,
            sse_kms_key_id: None,
            max_parallel: 1,
            archive_timeout_seconds: 300,
            archiver: Default::default(),
            standby_clone: Default::default(),
        }
    }

    fn request(pod: &str) -> Request {
        Request {
            backup: "old".into(),
            uid: "u-1".into(),
            cluster: "pg".into(),
            backup_id: "20261101T000000".into(),
            destination_path: Some("s3://b/pg".into()),
            server_name: Some("pg".into()),
            pod: pod.into(),
            attempt: 1,
            requested_at: "T".into(),
            object: ExpiredObject::Remove,
        }
    }

    fn backup(cluster: &str, uid: &str) -> Backup {
        let mut b = Backup::new(
            "old",
            pgwarden_crds::BackupSpec {
                cluster: pgwarden_crds::LocalObjectReference {
                    name: cluster.into(),
                },
                target: None,
            },
        );
        b.metadata.uid = Some(uid.into());
        b
    }

    #[test]
    fn reads_the_requests_of_this_pod_from_the_settings_folder() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(assigned(dir.path(), &me()).unwrap(), vec![]);
        let text = requests::render(&[request("pg-1"), request("pg-2")]);
        std::fs::write(dir.path().join(requests::KEY), text).unwrap();
        assert_eq!(assigned(dir.path(), &me()).unwrap(), vec![request("pg-1")]);
        std::fs::write(dir.path().join(requests::KEY), "{").unwrap();
        assert!(assigned(dir.path(), &me()).is_err());
    }

    #[test]
    fn refuses_another_clusters_backup_another_object_and_another_store() {
        let r = request("pg-1");
        assert_eq!(check(&r, &me(), &archive(), &backup("pg", "u-1")), Ok(()));
        let other = check(&r, &me(), &archive(), &backup("other", "u-1")).unwrap_err();
        assert!(
            other.contains("the Backup is for Cluster other, this agent is Cluster pg's"),
            "{other}"
        );
        let remade = check(&r, &me(), &archive(), &backup("pg", "u-2")).unwrap_err();
        assert!(remade.contains("uid differs"), "{remade}");
        let mut elsewhere = r.clone();
        elsewhere.server_name = Some("other".into());
        let e = check(&elsewhere, &me(), &archive(), &backup("pg", "u-1")).unwrap_err();
        assert_eq!(
            e,
            "refused the deletion of backup 20261101T000000 of Backup old (attempt 1): its store s3://b/pg (server other) is not this Cluster's store s3://b/pg (server pg)"
        );
        let mut foreign = r.clone();
        foreign.cluster = "other".into();
        assert!(check(&foreign, &me(), &archive(), &backup("pg", "u-1")).is_err());
    }

    #[test]
    fn reports_the_attempt_and_the_error() {
        let patch = report_patch("b", "pg-1", 2, &Err("no".into()), "T".into());
        assert_eq!(
            patch["status"]["deletion"]["agent"],
            json!({"attempt": 2, "state": "failed", "podName": "pg-1", "finishedAt": "T", "error": "no"})
        );
        let patch = report_patch("b", "pg-1", 1, &Ok(()), "T".into());
        assert_eq!(patch["status"]["deletion"]["agent"]["state"], "succeeded");
        assert!(patch["status"]["deletion"]["agent"]["error"].is_null());
    }
}
