//! The agent's side of retention: when the operator hands this pod the deletion of a Backup's
//! backup (`status.deletion.podName` is this pod, for an attempt not reported yet), run
//! `barman-cloud-backup-delete -b ID` against the store the backup went to and report the
//! outcome in `status.deletion.agent`. A backup already absent from the store counts as
//! deleted, so a repeated attempt (an agent restart, a retry) is harmless.
//!
//! WAL: barman 3.19.1 (`cloud_backup_delete._remove_wals_for_backup`) deletes WAL with a
//! backup only when no older completed backup (`DONE`, `WAITING_FOR_WALS`) is left in the
//! store, and then only the segments before the next such backup's `begin_wal` (on the same
//! timeline). Deleting a backup that is not the oldest removes no WAL. So the WAL of every
//! backup that stays, from its `begin_wal` to the newest segment, stays; the operator never
//! asks for the backup that starts the recovery window (see `plan::retention::floor`).
//! Two deletions run at once can only leave WAL behind, never remove WAL a kept backup needs:
//! each removes segments before a backup that is still in the store when it lists it.

use pgwarden_crds::settings::ArchiveSettings;
use pgwarden_crds::{Backup, BackupAgentState, BackupDeletionAgent};
use serde_json::{Value, json};

use super::barman::{self, Barman, Deletion, scrub};
use pgwarden_crds::{GROUP, VERSION};

/// A deletion this pod must run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assigned {
    pub attempt: u32,
    pub backup_id: String,
    /// The store the backup is in, when the Backup's status names it.
    pub destination_path: Option<String>,
    pub server_name: Option<String>,
}

/// The deletion `backup` asks of `pod`, unless its agent already reported this attempt.
pub fn assigned(backup: &Backup, pod: &str) -> Option<Assigned> {
    let status = backup.status.as_ref()?;
    let deletion = status.deletion.as_ref()?;
    let attempt = deletion.attempt.unwrap_or(1);
    if deletion.pod_name.as_deref() != Some(pod) {
        return None;
    }
    let reported = deletion.agent.as_ref().is_some_and(|a| {
        a.attempt == Some(attempt) && a.state.is_some_and(|s| s != BackupAgentState::Running)
    });
    (!reported)
        .then(|| Assigned {
            attempt,
            backup_id: status.backup_id.clone().unwrap_or_default(),
            destination_path: status.destination_path.clone(),
            server_name: status.server_name.clone(),
        })
        .filter(|a| !a.backup_id.is_empty())
}

/// The archive settings pointed at the store the backup is in.
pub fn store_of(archive: &ArchiveSettings, a: &Assigned) -> ArchiveSettings {
    let mut store = archive.clone();
    if let Some(path) = &a.destination_path {
        store.destination_path = path.clone();
    }
    if let Some(server) = &a.server_name {
        store.server_name = server.clone();
    }
    store
}

/// Deletes the backup (blocking); `Ok` also when it is not in the store any more.
pub fn delete(store: &ArchiveSettings, backup_id: &str) -> Result<(), String> {
    let b = Barman::from_env();
    match super::backup::show(&b, store, backup_id) {
        Ok(None) => return Ok(()),
        Ok(Some(_)) => {}
        Err(e) => return Err(scrub(&format!("{e:#}"))),
    }
    let args = barman::backup_delete_args(store, &Deletion::BackupId(backup_id.into()));
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
    use pgwarden_crds::{BackupDeletion, BackupStatus};

    fn backup(pod: &str, attempt: u32, reported: Option<(u32, BackupAgentState)>) -> Backup {
        let mut b = Backup::new("b", Default::default());
        b.status = Some(BackupStatus {
            backup_id: Some("20261101T000000".into()),
            destination_path: Some("s3://old/path".into()),
            deletion: Some(BackupDeletion {
                reason: Some("Retention".into()),
                pod_name: Some(pod.into()),
                attempt: Some(attempt),
                agent: reported.map(|(attempt, state)| BackupDeletionAgent {
                    attempt: Some(attempt),
                    state: Some(state),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        b
    }

    #[test]
    fn runs_each_attempt_handed_to_this_pod_once() {
        let a = assigned(&backup("pg-1", 1, None), "pg-1").unwrap();
        assert_eq!((a.attempt, a.backup_id.as_str()), (1, "20261101T000000"));
        assert_eq!(assigned(&backup("pg-2", 1, None), "pg-1"), None);
        let done = backup("pg-1", 1, Some((1, BackupAgentState::Failed)));
        assert_eq!(assigned(&done, "pg-1"), None);
        let retry = backup("pg-1", 2, Some((1, BackupAgentState::Failed)));
        assert_eq!(assigned(&retry, "pg-1").map(|a| a.attempt), Some(2));
        let mut no_id = backup("pg-1", 1, None);
        no_id.status.as_mut().unwrap().backup_id = None;
        assert_eq!(assigned(&no_id, "pg-1"), None);
    }

    #[test]
    fn deletes_from_the_store_the_backup_went_to() {
        let archive = ArchiveSettings {
            destination_path: "s3://new/path".into(),
            endpoint_url: None,
            endpoint_ca_file: None,
            server_name: "pg".into(),
            compression: None,
            encryption: None,
            max_parallel: 1,
            archive_timeout_seconds: 300,
        };
        let a = assigned(&backup("pg-1", 1, None), "pg-1").unwrap();
        let store = store_of(&archive, &a);
        assert_eq!(
            (store.destination_path.as_str(), store.server_name.as_str()),
            ("s3://old/path", "pg")
        );
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
