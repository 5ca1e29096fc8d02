//! Deletion requests: what the operator asks the agent of a Cluster to delete from its store,
//! kept in the Cluster's own settings ConfigMap (key [`KEY`]), which only the operator writes
//! (its field manager [`MANAGER`]) and only that Cluster's pods mount.
//!
//! Why not the Backup's `status.deletion` (the old channel): every agent of a namespace may
//! patch the status of every Backup (it reports its own backups there), and its token was
//! readable by the database's OS user, so a database superuser of one Cluster could write a
//! deletion that another Cluster's agent then ran. The status keeps a copy of the request for
//! people (`kubectl describe backup`); neither the operator nor the agent acts on it, and the
//! operator warns (Event [`IGNORED`]) about one it did not write.
//!
//! ```text
//!   operator ─SSA (pgwarden-retention)─► ConfigMap <cluster>-settings / deletions.json
//!                                          │ mounted only in <cluster>'s pods
//!   agent of request.pod ◄─────────────────┘ checks cluster, store, backup name, then deletes;
//!                                            reports status.deletion.agent on the Backup
//! ```

use pgwarden_crds::{Backup, ExpiredObject};
use serde::{Deserialize, Serialize};

/// Key of the settings ConfigMap holding the deletion requests (a JSON list of [`Request`]).
pub const KEY: &str = "deletions.json";
/// Field manager of the requests: apart from the cluster planner's, whose apply of the
/// ConfigMap (its whole intent, forced) then leaves this key alone.
pub const MANAGER: &str = "pgwarden-retention";
/// Reason of the Warning Event about a `status.deletion` the operator did not write.
pub const IGNORED: &str = "DeletionIgnored";

/// One deletion the operator asks of the agent of `pod`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Request {
    /// The Backup object (its name and uid: the agent checks both).
    pub backup: String,
    pub uid: String,
    /// The Cluster the Backup is for (`spec.cluster.name`).
    pub cluster: String,
    /// The barman backup id to delete.
    pub backup_id: String,
    /// The store the Backup's status says the backup is in (the agent refuses another store
    /// than its own).
    pub destination_path: Option<String>,
    pub server_name: Option<String>,
    pub pod: String,
    pub attempt: u32,
    pub requested_at: String,
    /// What becomes of the Backup object once its backup is deleted.
    pub object: ExpiredObject,
}

impl Request {
    /// Whether this request is about `backup` (same name and uid: a Backup deleted and made
    /// again under the same name is another one).
    pub fn is_for(&self, backup: &Backup) -> bool {
        Some(self.backup.as_str()) == backup.metadata.name.as_deref()
            && self.uid == backup.metadata.uid.clone().unwrap_or_default()
    }

    /// The request a Backup's `status.deletion` copy describes. Only for a dry run (`pgwarden
    /// policy eval`, which has no ConfigMap): the operator never trusts the status.
    pub fn from_status(backup: &Backup) -> Option<Request> {
        let status = backup.status.as_ref()?;
        let d = status.deletion.as_ref()?;
        Some(Request {
            backup: backup.metadata.name.clone().unwrap_or_default(),
            uid: backup.metadata.uid.clone().unwrap_or_default(),
            cluster: backup.spec.cluster.name.clone(),
            backup_id: status.backup_id.clone().unwrap_or_default(),
            destination_path: status.destination_path.clone(),
            server_name: status.server_name.clone(),
            pod: d.pod_name.clone().unwrap_or_default(),
            attempt: d.attempt.unwrap_or(1),
            requested_at: d.requested_at.clone().unwrap_or_default(),
            object: d.object.unwrap_or_default(),
        })
    }
}

/// Reads the requests of a ConfigMap's [`KEY`] value (absent: none).
pub fn parse(value: Option<&str>) -> Result<Vec<Request>, String> {
    match value {
        None => Ok(Vec::new()),
        Some(text) => serde_json::from_str(text).map_err(|e| {
            format!(
                "cannot read the deletion requests ({KEY}): {e} at line {}",
                e.line()
            )
        }),
    }
}

/// The [`KEY`] value of `requests`, sorted by Backup name (a stable text: no write when
/// nothing changed).
pub fn render(requests: &[Request]) -> String {
    let mut sorted = requests.to_vec();
    sorted.sort_by(|a, b| a.backup.cmp(&b.backup));
    serde_json::to_string_pretty(&sorted).unwrap_or_else(|_| "[]".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(backup: &str) -> Request {
        Request {
            backup: backup.into(),
            uid: "u".into(),
            cluster: "pg".into(),
            backup_id: "20261101T000000".into(),
            destination_path: Some("s3://b/p".into()),
            server_name: Some("pg".into()),
            pod: "pg-1".into(),
            attempt: 1,
            requested_at: "2026-11-25T08:00:00Z".into(),
            object: ExpiredObject::Remove,
        }
    }

    #[test]
    fn requests_round_trip_sorted_and_a_bad_text_says_where() {
        let text = render(&[request("b"), request("a")]);
        let back = parse(Some(&text)).unwrap();
        assert_eq!(back, vec![request("a"), request("b")]);
        assert_eq!(parse(None).unwrap(), vec![]);
        let e = parse(Some("[\n{")).unwrap_err();
        assert!(
            e.starts_with("cannot read the deletion requests (deletions.json)"),
            "{e}"
        );
        assert!(e.contains("line 2"), "{e}");
    }
}
