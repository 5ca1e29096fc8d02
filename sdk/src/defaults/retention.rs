//! The default retention: a recovery window as barman's `RECOVERY WINDOW OF n DAYS|WEEKS|MONTHS`
//! keeps one.
//!
//! ```text
//!   ── completed backups, oldest to newest ──────────────────────────────► now
//!      B1        B2        B3 │ window start   B4        B5
//!      expired   expired   kept: the newest that ended before the window,
//!                          the one that restores to the window's first moment
//! ```
//!
//! A point in the window is recoverable from the newest backup that ended before it plus the
//! WAL after that backup: so the window needs every completed backup from the one that ended
//! before its start (the window's *first backup*) on. Older completed backups, and failed
//! backups that ended before the window, are expired. The host keeps the window's first
//! backup and the newest completed backup whatever a policy answers (see the host's
//! `plan::retention`), with these same functions.

use crate::policy::Decided;
use chrono::{DateTime, Months, TimeDelta, Utc};
use pgwarden_crds::{Backup, BackupPhase, Cluster};

use super::cluster_name;
use crate::convert::parse_time;

/// How far back `spec.backup.retentionPolicy` reaches from now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetentionWindow {
    /// `7d`: days of 24 hours.
    Days(u32),
    /// `4w`: weeks of 7 days.
    Weeks(u32),
    /// `6m`: calendar months (the same day of the month, clamped to the month's last day).
    Months(u32),
}

impl RetentionWindow {
    /// `30d`, `4w`, `6m`, as the Cluster spells it; `None` for anything else (zero too).
    pub fn parse(text: &str) -> Option<Self> {
        let unit = text.chars().last()?;
        let count = &text[..text.len() - unit.len_utf8()];
        let digits = !count.is_empty() && count.bytes().all(|b| b.is_ascii_digit());
        if !digits || count.bytes().all(|b| b == b'0') {
            return None;
        }
        // More than u32::MAX units reaches past the calendar's start anyway: keep everything.
        let count = count.parse::<u32>().unwrap_or(u32::MAX);
        match unit {
            'd' => Some(Self::Days(count)),
            'w' => Some(Self::Weeks(count)),
            'm' => Some(Self::Months(count)),
            _ => None,
        }
    }

    /// The window's first moment at `now`. Months are calendar months, as chrono's
    /// [`Months`] counts them: 2026-03-31 less one month is 2026-02-28. A window reaching
    /// past the calendar's start begins at its start (nothing is before it).
    pub fn start(self, now: DateTime<Utc>) -> DateTime<Utc> {
        let back = match self {
            Self::Days(n) => {
                TimeDelta::try_days(i64::from(n)).and_then(|d| now.checked_sub_signed(d))
            }
            Self::Weeks(n) => {
                TimeDelta::try_weeks(i64::from(n)).and_then(|d| now.checked_sub_signed(d))
            }
            Self::Months(n) => now.checked_sub_months(Months::new(n)),
        };
        back.unwrap_or(DateTime::<Utc>::MIN_UTC)
    }
}

/// The recovery window of `spec.backup.retentionPolicy` (`30d`, `4w`, `6m`). `None`: no
/// retention policy, keep backups forever.
pub fn retention_window(cluster: &Cluster) -> Decided<Option<RetentionWindow>> {
    let Some(policy) = cluster
        .spec
        .backup
        .as_ref()
        .and_then(|b| b.retention_policy.as_deref())
    else {
        return Ok(None);
    };
    RetentionWindow::parse(policy).map(Some).ok_or_else(|| {
        format!(
            "spec.backup.retentionPolicy of Cluster {} is {policy:?}: expected a positive number of days, weeks or months, like 30d, 4w or 6m",
            cluster_name(cluster)
        )
        .into()
    })
}

/// When a backup ended (`status.stoppedAt`), or was created if it never ended.
pub fn backup_ended_at(backup: &Backup) -> Option<DateTime<Utc>> {
    let status = backup.status.as_ref();
    parse_time(status.and_then(|s| s.stopped_at.as_deref())).or_else(|| {
        backup
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| crate::convert::from_jiff(t.0))
    })
}

fn phase(backup: &Backup) -> Option<BackupPhase> {
    backup.status.as_ref().and_then(|s| s.phase)
}

/// Completed backups with a known end, oldest first (ties by name, so the order is stable).
fn completed(backups: &[Backup]) -> Vec<(DateTime<Utc>, &Backup)> {
    let mut done: Vec<_> = backups
        .iter()
        .filter(|b| phase(b) == Some(BackupPhase::Completed))
        .filter_map(|b| Some((backup_ended_at(b)?, b)))
        .collect();
    done.sort_by(|(ta, a), (tb, b)| (ta, &a.metadata.name).cmp(&(tb, &b.metadata.name)));
    done
}

/// The newest completed backup among `backups`: it stays whatever the retention.
pub fn newest_completed(backups: &[Backup]) -> Option<&Backup> {
    completed(backups).last().map(|(_, b)| *b)
}

/// The window's first backup: the newest completed one that ended strictly before `start`
/// (as barman's `end_time < point of recoverability`). It restores to the window's first
/// moment, so the window needs it; `None` while no backup is that old.
pub fn window_start_backup(backups: &[Backup], start: DateTime<Utc>) -> Option<&Backup> {
    completed(backups)
        .into_iter()
        .rfind(|(ended, _)| *ended < start)
        .map(|(_, b)| b)
}

/// The names of the Cluster's Backups past its recovery window: completed backups that ended
/// before the window's first backup ([`window_start_backup`]) did, and failed ones that ended
/// before the window. The window's first backup, every later one and the newest completed
/// one stay; without a retention policy nothing goes.
pub fn retention(
    cluster: &Cluster,
    backups: &[Backup],
    now: DateTime<Utc>,
) -> Decided<Vec<String>> {
    let Some(window) = retention_window(cluster)? else {
        return Ok(vec![]);
    };
    let name = cluster_name(cluster);
    let own: Vec<Backup> = backups
        .iter()
        .filter(|b| b.spec.cluster.name == name)
        .cloned()
        .collect();
    let start = window.start(now);
    let first = window_start_backup(&own, start).and_then(backup_ended_at);
    let older = |t: DateTime<Utc>| first.is_some_and(|first| t < first);
    let mut doomed: Vec<String> = own
        .iter()
        .filter(|b| match (phase(b), backup_ended_at(b)) {
            (Some(BackupPhase::Completed), Some(t)) => older(t),
            (Some(BackupPhase::Failed), Some(t)) => t < start,
            _ => false,
        })
        .filter_map(|b| b.metadata.name.clone())
        .collect();
    doomed.sort();
    Ok(doomed)
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Utc};
    use pgwarden_crds::{Backup, BackupPhase, BackupSpec, BackupStatus, Cluster};
    use serde_json::json;

    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn cluster(policy: &str) -> Cluster {
        serde_json::from_value(json!({
            "apiVersion": "postgresql.k8s.2ndq.io/v1alpha1", "kind": "Cluster",
            "metadata": {"name": "pg", "namespace": "ns"},
            "spec": {"backup": {"destinationPath": "s3://b/p", "retentionPolicy": policy,
                "s3Credentials": {"inheritFromIAMRole": true}}}
        }))
        .unwrap()
    }

    fn backup(name: &str, phase: BackupPhase, ended: &str) -> Backup {
        let mut b = Backup::new(
            name,
            BackupSpec {
                cluster: pgwarden_crds::LocalObjectReference { name: "pg".into() },
                target: None,
            },
        );
        b.status = Some(BackupStatus {
            phase: Some(phase),
            started_at: Some(ended.into()),
            stopped_at: Some(ended.into()),
            ..Default::default()
        });
        b
    }

    /// Ten completed backups, one a day at 02:00, from 2026-11-16 to 2026-11-25.
    fn daily() -> Vec<Backup> {
        (16..=25)
            .map(|day| {
                backup(
                    &format!("daily-{day}"),
                    BackupPhase::Completed,
                    &format!("2026-11-{day}T02:00:00Z"),
                )
            })
            .collect()
    }

    #[test]
    fn a_recovery_window_keeps_the_backup_that_ended_before_it_and_expires_only_older_ones() {
        // 7d at 2026-11-25T10:00: the window starts 2026-11-18T10:00. daily-18 (02:00 that
        // day) is the newest backup that ended before it: the one that restores to the
        // window's first moment. Only the two older ones go.
        let expired = retention(&cluster("7d"), &daily(), t("2026-11-25T10:00:00Z")).unwrap();
        assert_eq!(expired, ["daily-16", "daily-17"]);
    }

    #[test]
    fn a_backup_that_ends_exactly_at_the_window_start_is_inside_it() {
        // The window starts at 2026-11-18T02:00, the moment daily-18 ended: as in barman
        // (`end_time < point of recoverability`), daily-18 is not before the window, so
        // daily-17 starts it.
        let expired = retention(&cluster("7d"), &daily(), t("2026-11-25T02:00:00Z")).unwrap();
        assert_eq!(expired, ["daily-16"]);
    }

    #[test]
    fn months_are_calendar_months() {
        // 1m at 2026-03-31T12:00 reaches back to 2026-02-28T12:00 (chrono clamps 02-31), not
        // 30 days (2026-03-01T12:00): feb-28-early starts the window, mar-01 is inside it.
        let backups = [
            backup("feb-27", BackupPhase::Completed, "2026-02-27T12:00:00Z"),
            backup(
                "feb-28-early",
                BackupPhase::Completed,
                "2026-02-28T11:00:00Z",
            ),
            backup("mar-01", BackupPhase::Completed, "2026-03-01T11:00:00Z"),
            backup("mar-30", BackupPhase::Completed, "2026-03-30T12:00:00Z"),
        ];
        let expired = retention(&cluster("1m"), &backups, t("2026-03-31T12:00:00Z")).unwrap();
        assert_eq!(expired, ["feb-27"]);
    }

    #[test]
    fn weeks_are_seven_days() {
        // 2w at 2026-11-25T10:00: the window starts 2026-11-11T10:00.
        let backups = [
            backup("nov-10", BackupPhase::Completed, "2026-11-10T10:00:00Z"),
            backup(
                "nov-11-early",
                BackupPhase::Completed,
                "2026-11-11T09:59:59Z",
            ),
            backup(
                "nov-11-late",
                BackupPhase::Completed,
                "2026-11-11T10:00:01Z",
            ),
            backup("nov-24", BackupPhase::Completed, "2026-11-24T10:00:00Z"),
        ];
        let expired = retention(&cluster("2w"), &backups, t("2026-11-25T10:00:00Z")).unwrap();
        assert_eq!(expired, ["nov-10"]);
    }

    #[test]
    fn failed_backups_before_the_window_go_and_never_start_it() {
        // A failed backup restores nothing: it goes once it ended before the window, and the
        // completed one before it still starts the window.
        let mut backups = daily();
        backups.push(backup(
            "failed-18",
            BackupPhase::Failed,
            "2026-11-18T05:00:00Z",
        ));
        backups.push(backup(
            "failed-20",
            BackupPhase::Failed,
            "2026-11-20T05:00:00Z",
        ));
        let expired = retention(&cluster("7d"), &backups, t("2026-11-25T10:00:00Z")).unwrap();
        assert_eq!(expired, ["daily-16", "daily-17", "failed-18"]);
    }

    #[test]
    fn window_starts_count_days_weeks_and_calendar_months_back() {
        let now = t("2026-05-31T08:30:00Z");
        let start = |spec: &str| RetentionWindow::parse(spec).map(|w| w.start(now));
        assert_eq!(start("1d"), Some(t("2026-05-30T08:30:00Z")));
        assert_eq!(start("2w"), Some(t("2026-05-17T08:30:00Z")));
        // 02-31 does not exist: chrono clamps to the month's last day.
        assert_eq!(start("3m"), Some(t("2026-02-28T08:30:00Z")));
        assert_eq!(start("12m"), Some(t("2025-05-31T08:30:00Z")));
        for bad in ["", "d", "0d", "-1d", "+1d", "3y", "1.5m", "30", "5é", "é"] {
            assert_eq!(RetentionWindow::parse(bad), None, "{bad:?}");
        }
        // The CRD admits any count: one beyond u32 keeps everything.
        let huge = RetentionWindow::parse("99999999999d");
        assert_eq!(huge, Some(RetentionWindow::Days(u32::MAX)));
        let far = RetentionWindow::Days(u32::MAX).start(now);
        assert_eq!(far, DateTime::<Utc>::MIN_UTC);
    }
}
