//! The retention floor: Backups no policy may expire. Whatever the policy answers, the host
//! keeps a Cluster's newest completed backup (the Cluster stays recoverable), the backup that
//! starts its recovery window (the newest completed one that ended before the window: without
//! it, the window's first moments are unrecoverable), and every Backup another Cluster of the
//! namespace restores from (its `spec.bootstrap.recovery.backup`). A host invariant, like the
//! guardrails: a policy can keep more, never less.
//!
//! ```text
//!   policy's expired names ─► less the floor ─► plan_retention
//!                             └─ each kept one ─► Warning Event RetentionFloor on the Cluster
//! ```
//!
//! A restore needs its Backup and the WAL after it until the replay ends; deleting the
//! Backup (`barman-cloud-backup-delete -b ID`) removes WAL up to the next backup's
//! `begin_wal`, so PostgreSQL, told "does not exist", would promote without the rest of the
//! data. The host cannot tell from a Cluster's spec when its replay is over, so the Backup
//! stays as long as a Cluster naming it exists (simple and conservative: a restored Cluster
//! holds its Backup until it is deleted). Only Clusters known when the policy is asked count;
//! a deletion already asked is carried through.
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
use crate::plan::{Action, EventType, meta::reference};

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
    /// These Clusters of the namespace restore from it.
    Restoring(Vec<String>),
}

/// A Cluster restoring from a Backup (its `spec.bootstrap.recovery.backup`), as the operator
/// found it in its Cluster store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Restore {
    /// The namespace of the restoring Cluster, and so of the Backup it names.
    pub namespace: Option<String>,
    /// The restoring Cluster.
    pub cluster: String,
    /// The Backup it restores from.
    pub backup: String,
}

impl Restore {
    /// The Backup `cluster` restores from, if it restores from a Backup object.
    pub fn of(cluster: &Cluster) -> Option<Restore> {
        let recovery = cluster.spec.bootstrap.as_ref()?.recovery.as_ref()?;
        Some(Restore {
            namespace: cluster.metadata.namespace.clone(),
            cluster: cluster.metadata.name.clone().unwrap_or_default(),
            backup: recovery.backup.as_ref()?.name.clone(),
        })
    }
}

/// The Cluster's live Backups that Clusters of its namespace restore from, each with the
/// names of those Clusters (in the order given).
fn restored(cluster: &Cluster, live: &[Backup], restores: &[Restore]) -> Vec<(String, Why)> {
    let mut kept: Vec<(String, Vec<String>)> = Vec::new();
    let here = restores
        .iter()
        .filter(|r| r.namespace == cluster.metadata.namespace)
        .filter(|r| live.iter().any(|b| name(b) == r.backup));
    for r in here {
        match kept.iter_mut().find(|(n, _)| *n == r.backup) {
            Some((_, clusters)) => clusters.push(r.cluster.clone()),
            None => kept.push((r.backup.clone(), vec![r.cluster.clone()])),
        }
    }
    kept.into_iter()
        .map(|(n, clusters)| (n, Why::Restoring(clusters)))
        .collect()
}

/// The Cluster's Backups the host keeps whatever the policy answers, with why (by name; the
/// first reason found names a Backup kept for several).
fn floor(
    cluster: &Cluster,
    backups: &[Backup],
    restores: &[Restore],
    now: DateTime<Utc>,
) -> Vec<(String, Why)> {
    let live = candidates(cluster, backups);
    let mut kept = restored(cluster, &live, restores);
    match defaults::retention_window(cluster) {
        Ok(window) => {
            let start = window.map(|w| w.start(now));
            if let Some(b) = start.and_then(|s| defaults::window_start_backup(&live, s))
                && !kept.iter().any(|(n, _)| n == name(b))
            {
                kept.push((name(b).to_string(), Why::WindowStart));
            }
        }
        Err(_) => {
            let completed: Vec<(String, Why)> = live
                .iter()
                .filter(|b| b.status.as_ref().and_then(|s| s.phase) == Some(BackupPhase::Completed))
                .filter(|b| !kept.iter().any(|(n, _)| n == name(b)))
                .map(|b| (name(b).to_string(), Why::UnknownWindow))
                .collect();
            kept.extend(completed);
        }
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
        Why::Restoring(clusters) => match clusters.as_slice() {
            [one] => format!(
                "Cluster {one} restores from it (spec.bootstrap.recovery.backup), so it stays while it exists"
            ),
            many => format!(
                "Clusters {} restore from it (spec.bootstrap.recovery.backup), so it stays while they exist",
                many.join(", ")
            ),
        },
    };
    format!("kept Backup {backup} that the policy expired: {because}")
}

/// The policy's answer less the floor, and a Warning Event on the Cluster for each Backup the
/// floor took out of it (one per Backup and reason: a repeat is the same Event). `restores`
/// are every Cluster's (any namespace: only the Cluster's own namespace counts).
pub fn enforce(input: &RetentionInput<'_>, restores: &[Restore]) -> (Vec<Expiry>, Vec<Action>) {
    let kept = floor(input.cluster, input.backups, restores, input.now);
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

    use super::super::{RetentionInput, plan_retention, plan_retention_with};
    use super::Restore;
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

    /// A Cluster in `namespace` restoring from the Backup `backup`.
    fn restoring(namespace: &str, name: &str, backup: &str) -> Cluster {
        serde_json::from_value(json!({
            "apiVersion": "postgresql.k8s.2ndq.io/v1alpha1", "kind": "Cluster",
            "metadata": {"name": name, "namespace": namespace, "uid": format!("{name}-uid")},
            "spec": {"bootstrap": {"recovery": {"backup": {"name": backup}}}}
        }))
        .unwrap()
    }

    /// The notes of the RetentionFloor Events among the actions.
    fn floor_notes(actions: &[Action]) -> Vec<&str> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Event { reason, note, .. } if reason == "RetentionFloor" => {
                    Some(note.as_str())
                }
                _ => None,
            })
            .collect()
    }

    /// The plan with `clusters` in the operator's Cluster store (the retained one among them
    /// or not: only their `spec.bootstrap.recovery.backup` counts).
    fn plan_among(clusters: &[Cluster], expired: &[&str]) -> Vec<Action> {
        let (c, backups) = (cluster(Some("7d")), daily());
        let restores: Vec<Restore> = clusters.iter().filter_map(Restore::of).collect();
        let expired: Vec<Expiry> = expired.iter().map(|n| Expiry::remove(*n)).collect();
        let input = RetentionInput {
            cluster: &c,
            backups: &backups,
            expired: &expired,
            agent_pod: Some("pg-1"),
            now: t("2026-11-25T10:00:00Z"),
        };
        plan_retention_with(&input, &restores)
    }

    #[test]
    fn a_backup_a_cluster_restores_from_stays_whatever_the_policy_answers() {
        let clusters = [
            cluster(Some("7d")),
            restoring("ns", "pg-copy", "daily-16"),
            restoring("ns", "pg-audit", "daily-16"),
        ];
        let actions = plan_among(&clusters, &["daily-16", "daily-17"]);
        assert_eq!(asked(&actions), ["daily-17"]);
        assert_eq!(
            floor_notes(&actions),
            [
                "kept Backup daily-16 that the policy expired: Clusters pg-copy, pg-audit restore from it (spec.bootstrap.recovery.backup), so it stays while they exist"
            ]
        );
        let restoring_one = [restoring("ns", "pg-copy", "daily-17")];
        assert_eq!(
            floor_notes(&plan_among(&restoring_one, &["daily-16", "daily-17"])),
            [
                "kept Backup daily-17 that the policy expired: Cluster pg-copy restores from it (spec.bootstrap.recovery.backup), so it stays while it exists"
            ]
        );
    }

    #[test]
    fn a_backup_named_by_a_cluster_in_another_namespace_does_not_stay() {
        let clusters = [
            restoring("other", "pg-copy", "daily-16"),
            cluster(Some("7d")),
        ];
        let actions = plan_among(&clusters, &["daily-16", "daily-17"]);
        assert_eq!(asked(&actions), ["daily-16", "daily-17"]);
        assert!(floor_notes(&actions).is_empty(), "{actions:?}");
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
