//! Default schedules: cron expressions parsed in the policy (croner), evaluated in UTC.

use crate::policy::Decided;
use chrono::{DateTime, Utc};
use croner::Cron;
use croner::parser::{CronParser, Seconds};
use pgwarden_crds::ScheduledBackup;

use crate::convert::parse_time;
use crate::types::{ScheduleDecision, ScheduledRun};

/// Parses a schedule as `spec.schedule` documents it: 5 fields, 6 with seconds first, or
/// `@hourly`, `@daily`, `@weekly`, `@monthly`, `@yearly`. A bad one is a denial naming it.
pub fn parse_schedule(schedule: &str) -> Result<Cron, String> {
    let fields = schedule.split_whitespace().count();
    let nickname = schedule.trim_start().starts_with('@');
    if !nickname && !(5..=6).contains(&fields) {
        return Err(format!(
            "spec.schedule {schedule:?} has {fields} fields: expected 5 (minute hour day-of-month month day-of-week) or 6 with seconds first"
        ));
    }
    CronParser::builder()
        .seconds(Seconds::Optional)
        .build()
        .parse(schedule)
        .map_err(|e| format!("spec.schedule {schedule:?} is not a valid cron expression: {e}"))
}

fn created_at(scheduled: &ScheduledBackup) -> Option<DateTime<Utc>> {
    scheduled
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| crate::convert::from_jiff(t.0))
}

/// The Backup name of a run: `<scheduledbackup>-<yyyymmddhhmmss>`.
pub fn run_name(scheduled: &ScheduledBackup, at: DateTime<Utc>) -> String {
    let name = scheduled.metadata.name.as_deref().unwrap_or("scheduled");
    format!("{name}-{}", at.format("%Y%m%d%H%M%S"))
}

/// Creates one Backup when a scheduled time has passed since the last one (missed runs are
/// not replayed), or at once when `immediate` and none was ever created. Suspended: nothing.
pub fn schedule(scheduled: &ScheduledBackup, now: DateTime<Utc>) -> Decided<ScheduleDecision> {
    let cron = parse_schedule(&scheduled.spec.schedule)?;
    if scheduled.spec.suspend.unwrap_or(false) {
        return Ok(ScheduleDecision::default());
    }
    let next_after = |t: DateTime<Utc>| {
        cron.find_next_occurrence(&t, false).map_err(|e| {
            format!(
                "spec.schedule {:?} has no next run after {t}: {e}",
                scheduled.spec.schedule
            )
        })
    };
    let last = parse_time(
        scheduled
            .status
            .as_ref()
            .and_then(|s| s.last_schedule_time.as_deref()),
    );
    let next_run = Some(next_after(now)?);
    if last.is_none() && scheduled.spec.immediate.unwrap_or(false) {
        // Named after the ScheduledBackup's creation, not `now`: an operator that dies after
        // creating the Backup but before recording the run asks again, and the same name
        // finds the Backup already there instead of starting a second one.
        let created = created_at(scheduled).unwrap_or(now);
        let create = Some(ScheduledRun {
            name: run_name(scheduled, created),
            scheduled_at: now,
        });
        return Ok(ScheduleDecision { create, next_run });
    }
    let since = last.or_else(|| created_at(scheduled)).unwrap_or(now);
    let due = next_after(since)?;
    if due > now {
        return Ok(ScheduleDecision {
            create: None,
            next_run: Some(due),
        });
    }
    // The latest scheduled time not after now: the run that stands for the missed ones.
    let latest = cron
        .find_previous_occurrence(&now, true)
        .unwrap_or(due)
        .max(due);
    Ok(ScheduleDecision {
        create: Some(ScheduledRun {
            name: run_name(scheduled, latest),
            scheduled_at: latest,
        }),
        next_run,
    })
}
