//! A ScheduledBackup's plan: the policy parses the schedule and says whether a Backup is due
//! (its name derives from the scheduled time, so a restarted operator never duplicates one);
//! a schedule it cannot parse, or one admission would now refuse, becomes the `Scheduled`
//! condition naming it. The core keeps the whole status.

use chrono::{DateTime, Timelike, Utc};
use k8s_openapi::jiff::Timestamp;
use pgwarden_core::{DesiredCondition, scheduled_status};
use pgwarden_crds::{MIN_SCHEDULE_INTERVAL_SECONDS, ScheduledBackup, ScheduledBackupStatus};
use pgwarden_sdk::defaults;

use super::Plan;
use crate::operator::errors::{Error, Result};
use crate::operator::failure::{Decision, Step};
use crate::operator::registry::ChosenPolicy;
use crate::policy::PolicyError;
use pgwarden_core::plan::{self, Action, EventType, guardrails, reference};

/// The condition that tells whether the schedule runs.
pub const SCHEDULED: &str = "Scheduled";

/// How long a valid schedule with no next run waits before it is looked at again.
pub const RECHECK_SECONDS: u64 = 300;

/// The plan of `scheduled`, decided by `chosen` (its Cluster's policy, or why there is none);
/// `cluster` as observed owns the Backups when `backupOwnerReference` says so.
pub fn scheduled(
    chosen: Result<ChosenPolicy>,
    scheduled: &ScheduledBackup,
    cluster: Option<&pgwarden_crds::Cluster>,
    now: DateTime<Utc>,
) -> Plan {
    if let Some(wanted) = too_frequent(&scheduled.spec.schedule, now) {
        // Stored before admission refused such schedules: no Backup until the spec changes.
        return with_status(scheduled, Plan::default(), None, &wanted, now);
    }
    let mut step = Step::new(Decision::Schedule);
    let decision = chosen.map(|chosen| {
        step.policy = Some(chosen.name.clone());
        chosen.policy.schedule(scheduled, now)
    });
    let (actions, wanted) = match decision {
        Ok(Ok(decision)) => {
            let next = (decision.next_run.map(|t| t.to_rfc3339()))
                .unwrap_or_else(|| "never (suspended)".into());
            let wanted =
                DesiredCondition::ok(SCHEDULED, "ScheduleValid", format!("next Backup at {next}"));
            (
                plan::plan_schedule(scheduled, cluster, &decision, now),
                wanted,
            )
        }
        Ok(Err(PolicyError::Denied { message, .. })) => denied(scheduled, &message),
        Ok(Err(e)) => return failed(scheduled, step, Error::Policy(e), now),
        Err(e) => return failed(scheduled, step, e, now),
    };
    if let Err(e) = guardrails::check(&plan::scheduled_subject(scheduled), &actions) {
        return failed(scheduled, step, Error::Guardrail(e), now);
    }
    // The times a check planned, for the core's status (the planned patch writes nothing).
    let checked = actions.iter().find_map(|a| match a {
        Action::PatchStatus { status, .. } => serde_json::from_value(status.clone())
            .ok()
            .filter(|s: &ScheduledBackupStatus| s.last_check_time.is_some()),
        _ => None,
    });
    let actions = actions
        .into_iter()
        .filter(|a| !matches!(a, Action::PatchStatus { .. }));
    let mut plan = Plan::of(actions.collect());
    if plan.requeue.is_none() && wanted.ok {
        plan.requeue = Some(RECHECK_SECONDS);
    }
    with_status(scheduled, plan, checked.as_ref(), &wanted, now)
}

/// A schedule the policy refused: `Scheduled` False and a Warning Event, once per message.
fn denied(scheduled: &ScheduledBackup, message: &str) -> (Vec<Action>, DesiredCondition) {
    let note = format!("spec.schedule {:?}: {message}", scheduled.spec.schedule);
    let status = scheduled.status.clone().unwrap_or_default();
    let already = (status.conditions.iter()).any(|c| c.type_ == SCHEDULED && c.message == note);
    let event = Action::Event {
        regarding: reference(scheduled),
        event_type: EventType::Warning,
        reason: "InvalidSchedule".into(),
        note: note.clone(),
    };
    let events = if already { vec![] } else { vec![event] };
    (
        events,
        DesiredCondition::failed(SCHEDULED, "InvalidSchedule", note),
    )
}

/// A failed decision: `Scheduled` False naming the policy and the decision and a Warning
/// Event when new, the error to the backoff (an API error: told nowhere).
fn failed(scheduled: &ScheduledBackup, step: Step, error: Error, now: DateTime<Utc>) -> Plan {
    let failure = step.failed(error);
    let Some(wanted) = failure.wanted(SCHEDULED) else {
        return Plan {
            error: Some(failure.error),
            ..Plan::default()
        };
    };
    let plan = Plan {
        error: Some(failure.error),
        ..Plan::default()
    };
    with_status(scheduled, plan, None, &wanted, now)
}

/// `plan` with the ScheduledBackup's whole status (`checked`: the times a check planned) and,
/// for a new failed condition, its Warning Event.
fn with_status(
    scheduled: &ScheduledBackup,
    mut plan: Plan,
    checked: Option<&ScheduledBackupStatus>,
    wanted: &DesiredCondition,
    now: DateTime<Utc>,
) -> Plan {
    let before = scheduled.status.clone().unwrap_or_default();
    let stamp = Timestamp::from_second(now.timestamp()).unwrap_or_default();
    let generation = scheduled.metadata.generation;
    let status = scheduled_status(&before, checked, wanted, generation, stamp);
    let already = before.conditions.iter().any(|c| {
        c.type_ == wanted.type_ && c.reason == wanted.reason && c.message == wanted.message
    });
    let told = plan
        .events
        .iter()
        .any(|e| matches!(e, Action::Event { .. }));
    if !wanted.ok && !already && !told {
        plan.events.push(Action::Event {
            regarding: reference(scheduled),
            event_type: EventType::Warning,
            reason: wanted.reason.clone(),
            note: wanted.message.clone(),
        });
    }
    plan.status = Some(serde_json::to_value(status).unwrap_or_default());
    plan
}

/// `Scheduled` False when two consecutive runs of `schedule` are less than
/// [`MIN_SCHEDULE_INTERVAL_SECONDS`] apart, else `None` (a schedule that does not parse is the
/// policy's to name). Exact: a cron fires twice within a minute only through its seconds
/// field, so the first two runs from the start of a minute it fires in tell.
pub fn too_frequent(schedule: &str, now: DateTime<Utc>) -> Option<DesiredCondition> {
    let cron = defaults::parse_schedule(schedule).ok()?;
    let minute = cron
        .find_next_occurrence(&now, false)
        .ok()?
        .with_second(0)?
        .with_nanosecond(0)?;
    let first = cron.find_next_occurrence(&minute, true).ok()?;
    let second = cron.find_next_occurrence(&first, false).ok()?;
    let gap = (second - first).num_seconds();
    (gap < MIN_SCHEDULE_INTERVAL_SECONDS).then(|| {
        DesiredCondition::failed(
            SCHEDULED,
            "ScheduleTooFrequent",
            format!(
                "spec.schedule {schedule:?} runs {gap} s apart ({first} and {second}): a Backup at most every {MIN_SCHEDULE_INTERVAL_SECONDS} s; give the seconds field one number, as in \"0 */5 * * * *\""
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    /// What admission refuses now, stored before it did: refused here too, from any moment
    /// (mid-minute as well, where the next two runs may fall in different minutes).
    #[test]
    fn a_schedule_more_often_than_once_a_minute_is_refused() {
        for now in ["2026-11-30T10:00:00Z", "2026-11-30T10:00:45Z"] {
            for schedule in ["* * * * * *", "0,30 */5 * * * *", "*/10 0 2 * * *"] {
                let wanted = too_frequent(schedule, at(now))
                    .unwrap_or_else(|| panic!("{schedule} at {now} accepted"));
                assert_eq!(wanted.reason, "ScheduleTooFrequent");
                assert!(!wanted.ok);
                assert!(wanted.message.contains(schedule), "{}", wanted.message);
            }
        }
        let every_second = too_frequent("* * * * * *", at("2026-11-30T10:00:00Z")).unwrap();
        assert!(
            every_second.message.contains("runs 1 s apart"),
            "{}",
            every_second.message
        );
    }

    #[test]
    fn once_a_minute_or_less_passes() {
        for schedule in [
            "* * * * *",
            "0 * * * * *",
            "59 */5 * * * *",
            "@hourly",
            "0 0 2 * * *",
        ] {
            assert_eq!(
                too_frequent(schedule, at("2026-11-30T10:00:30Z")),
                None,
                "{schedule}"
            );
        }
        assert_eq!(
            too_frequent("99 99 99 99 99", Utc::now()),
            None,
            "the policy's to name"
        );
    }
}
