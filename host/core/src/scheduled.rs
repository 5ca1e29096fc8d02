//! The ScheduledBackup's status: the stored one, with the times this reconcile's check of the
//! schedule found (when it checked) and the `Scheduled` condition set. Always the whole
//! status: it is written by server-side apply, which removes what an apply leaves out.

use k8s_openapi::jiff::Timestamp;
use pgwarden_crds::ScheduledBackupStatus;

use crate::conditions::{self, DesiredCondition};

/// `before` is the stored status; `checked`, the times a check of the schedule planned
/// (`lastCheckTime`, `nextScheduleTime`, and `lastScheduleTime` when a Backup was created),
/// `None` when nothing was checked (a failure, a refused schedule).
pub fn scheduled_status(
    before: &ScheduledBackupStatus,
    checked: Option<&ScheduledBackupStatus>,
    scheduled: &DesiredCondition,
    generation: Option<i64>,
    now: Timestamp,
) -> ScheduledBackupStatus {
    let times = checked.unwrap_or(before);
    ScheduledBackupStatus {
        // Only a run sets it: a check without one keeps the last.
        last_schedule_time: times
            .last_schedule_time
            .clone()
            .or_else(|| before.last_schedule_time.clone()),
        // No next run (suspended) is no next run: not the one stored.
        next_schedule_time: times.next_schedule_time.clone(),
        last_check_time: times.last_check_time.clone(),
        conditions: conditions::set(&before.conditions, scheduled, generation, now),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(seconds).unwrap()
    }

    fn stored() -> ScheduledBackupStatus {
        ScheduledBackupStatus {
            last_schedule_time: Some("2026-11-30T09:00:00Z".into()),
            next_schedule_time: Some("2026-11-30T10:00:00Z".into()),
            last_check_time: Some("2026-11-30T09:30:00Z".into()),
            conditions: vec![],
        }
    }

    fn valid() -> DesiredCondition {
        DesiredCondition::ok("Scheduled", "ScheduleValid", "next Backup at 10:00")
    }

    #[test]
    fn a_check_without_a_run_keeps_the_last_schedule_time() {
        let checked = ScheduledBackupStatus {
            last_check_time: Some("2026-11-30T09:45:00Z".into()),
            next_schedule_time: Some("2026-11-30T10:00:00Z".into()),
            ..Default::default()
        };
        let s = scheduled_status(&stored(), Some(&checked), &valid(), Some(1), at(1));
        assert_eq!(
            s.last_schedule_time.as_deref(),
            Some("2026-11-30T09:00:00Z")
        );
        assert_eq!(s.last_check_time.as_deref(), Some("2026-11-30T09:45:00Z"));
        assert_eq!(s.conditions[0].reason, "ScheduleValid");
        assert_eq!(s.conditions[0].observed_generation, Some(1));
    }

    #[test]
    fn a_run_records_its_time_and_a_suspension_clears_the_next() {
        let ran = ScheduledBackupStatus {
            last_schedule_time: Some("2026-11-30T10:00:00Z".into()),
            last_check_time: Some("2026-11-30T10:00:01Z".into()),
            next_schedule_time: None,
            conditions: vec![],
        };
        let s = scheduled_status(&stored(), Some(&ran), &valid(), None, at(1));
        assert_eq!(
            s.last_schedule_time.as_deref(),
            Some("2026-11-30T10:00:00Z")
        );
        assert_eq!(s.next_schedule_time, None);
    }

    #[test]
    fn a_failure_keeps_the_times_and_sets_the_condition() {
        let refused =
            DesiredCondition::failed("Scheduled", "ScheduleTooFrequent", "runs 1 s apart");
        let s = scheduled_status(&stored(), None, &refused, Some(3), at(5));
        assert_eq!(
            (s.last_schedule_time.clone(), s.next_schedule_time.clone()),
            (stored().last_schedule_time, stored().next_schedule_time)
        );
        assert_eq!(s.conditions[0].status, "False");
        assert_eq!(s.conditions[0].reason, "ScheduleTooFrequent");
        // Again: the same status (and so no write).
        let before = ScheduledBackupStatus {
            conditions: s.conditions.clone(),
            ..stored()
        };
        assert_eq!(scheduled_status(&before, None, &refused, Some(3), at(9)), s);
    }
}
