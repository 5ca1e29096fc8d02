//! The retention floor: Backups no policy may expire. Whatever the policy answers, the host
//! keeps a Cluster's newest completed backup (the Cluster stays recoverable) and the backup
//! that starts its recovery window (the newest completed one that ended before the window:
//! without it, the window's first moments are unrecoverable). A host invariant, like the
//! guardrails: a policy can keep more, never less.
//!
//! ```text
//!   policy's expired names ─► less the floor ─► plan_retention
//!                             └─ each kept one ─► Warning Event RetentionFloor on the Cluster
//! ```
//!
//! WAL needs no floor of its own: the agent deletes one backup at a time
//! (`barman-cloud-backup-delete -b ID`), and barman removes WAL with a backup only when no
//! older backup is left, and then only up to the next backup's `begin_wal`; every kept
//! backup's WAL, from its `begin_wal` on, stays.

use chrono::{DateTime, Utc};
use pgwarden_crds::{Backup, BackupPhase, Cluster};
use pgwarden_sdk::defaults;
use pgwarden_sdk::types::Expiry;

use super::{RetentionInput, candidates, name, policy_text};
use crate::plan::{Action, EventType, cluster::reference};

/// The reason of the Event that says the host kept a Backup the policy expired.
pub const REASON: &str = "RetentionFloor";

/// Why the host keeps a Backup.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Why {
    /// It starts the recovery window.
    WindowStart,
    /// It is the newest completed backup.
    Newest,
    /// The retention policy does not parse: every completed backup may be needed.
    UnknownWindow,
}

/// The Cluster's Backups the host keeps whatever the policy answers, with why (by name).
fn floor(cluster: &Cluster, backups: &[Backup], now: DateTime<Utc>) -> Vec<(String, Why)> {
    let live = candidates(cluster, backups);
    let mut kept = Vec::new();
    match defaults::retention_window(cluster) {
        Ok(window) => {
            let start = window.map(|w| w.start(now));
            if let Some(b) = start.and_then(|s| defaults::window_start_backup(&live, s)) {
                kept.push((name(b).to_string(), Why::WindowStart));
            }
        }
        Err(_) => kept.extend(
            live.iter()
                .filter(|b| b.status.as_ref().and_then(|s| s.phase) == Some(BackupPhase::Completed))
                .map(|b| (name(b).to_string(), Why::UnknownWindow)),
        ),
    }
    if let Some(b) = defaults::newest_completed(&live)
        && !kept.iter().any(|(n, _)| n == name(b))
    {
        kept.push((name(b).to_string(), Why::Newest));
    }
    kept
}

fn note(cluster: &Cluster, backup: &str, why: &Why) -> String {
    let cluster_name = cluster.metadata.name.as_deref().unwrap_or_default();
    let because = match why {
        Why::WindowStart => format!(
            "it is the newest completed backup that ended before the recovery window of {}, the one that restores to the window's first moment",
            policy_text(cluster)
        ),
        Why::Newest => format!("it is the newest completed backup of Cluster {cluster_name}"),
        Why::UnknownWindow => format!(
            "the {} does not parse, so every completed backup may be needed",
            policy_text(cluster)
        ),
    };
    format!("kept Backup {backup} that the policy expired: {because}")
}

/// The policy's answer less the floor, and a Warning Event on the Cluster for each Backup the
/// floor took out of it (one per Backup and reason: a repeat is the same Event).
pub fn enforce(input: &RetentionInput<'_>) -> (Vec<Expiry>, Vec<Action>) {
    let kept = floor(input.cluster, input.backups, input.now);
    let mut events = Vec::new();
    let mut allowed = Vec::new();
    for expiry in input.expired {
        match kept.iter().find(|(n, _)| *n == expiry.name) {
            Some((n, why)) => events.push(Action::Event {
                regarding: reference(input.cluster),
                event_type: EventType::Warning,
                reason: REASON.into(),
                note: note(input.cluster, n, why),
            }),
            None => allowed.push(expiry.clone()),
        }
    }
    (allowed, events)
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Utc};
    use pgwarden_crds::{Backup, BackupPhase, BackupStatus, Cluster};
    use pgwarden_sdk::types::Expiry;
    use serde_json::json;

    use super::super::{RetentionInput, plan_retention};
    use crate::plan::{Action, EventType};

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn cluster(policy: Option<&str>) -> Cluster {
        serde_json::from_value(json!({
            "apiVersion": "postgresql.k8s.2ndq.io/v1alpha1", "kind": "Cluster",
            "metadata": {"name": "pg", "namespace": "ns", "uid": "c-uid"},
            "spec": {"backup": {"destinationPath": "s3://b/p", "retentionPolicy": policy,
                "s3Credentials": {"inheritFromIAMRole": true}}}
        }))
        .unwrap()
    }

    fn backup(name: &str, phase: BackupPhase, ended: &str) -> Backup {
        let mut b = Backup::new(
            name,
            pgwarden_crds::BackupSpec {
                cluster: pgwarden_crds::LocalObjectReference { name: "pg".into() },
                target: None,
            },
        );
        b.metadata.namespace = Some("ns".into());
        b.status = Some(BackupStatus {
            phase: Some(phase),
            stopped_at: Some(ended.into()),
            backup_id: Some(format!("id-{name}")),
            destination_path: Some("s3://b/p".into()),
            ..Default::default()
        });
        b
    }

    /// Ten completed backups, one a day at 02:00, from 2026-11-16 to 2026-11-25.
    fn daily() -> Vec<Backup> {
        (16..=25)
            .map(|d| {
                let ended = format!("2026-11-{d}T02:00:00Z");
                backup(&format!("daily-{d}"), BackupPhase::Completed, &ended)
            })
            .collect()
    }

    /// The Backups whose deletion the actions ask, in order.
    fn asked(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::PatchStatus { target, status } if status["deletion"].is_object() => {
                    Some(target.name.clone())
                }
                _ => None,
            })
            .collect()
    }

    fn plan(cluster: &Cluster, backups: &[Backup], expired: &[Expiry], now: &str) -> Vec<Action> {
        plan_retention(&RetentionInput {
            cluster,
            backups,
            expired,
            agent_pod: Some("pg-1"),
            now: t(now),
        })
    }

    #[test]
    fn the_default_policy_and_the_planner_delete_only_backups_older_than_the_window_start() {
        let (c, backups) = (cluster(Some("7d")), daily());
        let now = "2026-11-25T10:00:00Z";
        let expired: Vec<Expiry> = pgwarden_sdk::defaults::retention(&c, &backups, t(now))
            .unwrap()
            .into_iter()
            .map(Expiry::remove)
            .collect();
        assert_eq!(
            asked(&plan(&c, &backups, &expired, now)),
            ["daily-16", "daily-17"]
        );
    }

    #[test]
    fn the_host_keeps_the_window_start_and_the_newest_backup_whatever_the_policy_answers() {
        let (c, backups) = (cluster(Some("7d")), daily());
        let everything: Vec<Expiry> = (16..=25)
            .map(|d| Expiry::remove(format!("daily-{d}")))
            .collect();
        let actions = plan(&c, &backups, &everything, "2026-11-25T10:00:00Z");
        // Backups inside the window may go (daily-18 and the WAL after it restore to any
        // point there); the window's first and the newest stay.
        let inside: Vec<String> = (19..=24).map(|d| format!("daily-{d}")).collect();
        assert_eq!(
            asked(&actions),
            [&["daily-16".into(), "daily-17".into()], &inside[..]].concat()
        );
        let floor: Vec<(&EventType, &str, &str)> = actions
            .iter()
            .filter_map(|a| match a {
                Action::Event {
                    regarding,
                    event_type,
                    reason,
                    note,
                } if reason == "RetentionFloor" => {
                    Some((event_type, regarding.kind.as_str(), note.as_str()))
                }
                _ => None,
            })
            .collect();
        assert_eq!(
            floor,
            [
                (
                    &EventType::Warning,
                    "Cluster",
                    "kept Backup daily-18 that the policy expired: it is the newest completed backup that ended before the recovery window of retention policy 7d, the one that restores to the window's first moment"
                ),
                (
                    &EventType::Warning,
                    "Cluster",
                    "kept Backup daily-25 that the policy expired: it is the newest completed backup of Cluster pg"
                ),
            ]
        );
    }

    #[test]
    fn without_a_retention_policy_the_host_still_keeps_the_newest_completed_backup() {
        let mut backups = daily();
        backups.push(backup(
            "failed-26",
            BackupPhase::Failed,
            "2026-11-26T02:00:00Z",
        ));
        let c = cluster(None);
        let expired = [Expiry::remove("daily-25"), Expiry::remove("failed-26")];
        let actions = plan(&c, &backups, &expired, "2026-11-27T10:00:00Z");
        assert_eq!(asked(&actions), ["failed-26"]);
    }

    #[test]
    fn a_retention_policy_the_host_cannot_read_keeps_every_completed_backup() {
        // Admission refuses such a value; an object stored before that rule still has it.
        let mut backups = daily();
        backups.push(backup(
            "failed-26",
            BackupPhase::Failed,
            "2026-11-26T02:00:00Z",
        ));
        let c = cluster(Some("3y"));
        let everything: Vec<Expiry> = backups
            .iter()
            .map(|b| Expiry::remove(b.metadata.name.clone().unwrap()))
            .collect();
        let actions = plan(&c, &backups, &everything, "2026-11-27T10:00:00Z");
        assert_eq!(asked(&actions), ["failed-26"]);
        assert!(actions.iter().any(|a| matches!(a, Action::Event { note, .. }
            if note == "kept Backup daily-16 that the policy expired: the retention policy 3y does not parse, so every completed backup may be needed")));
    }
}
