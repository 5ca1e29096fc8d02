//! The ScheduledBackup controller: the policy parses the schedule and says whether a Backup is
//! due (its name derives from the scheduled time, so a restarted operator never duplicates
//! one); a schedule it cannot parse becomes a condition naming it.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Timelike, Utc};
use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action as Requeue;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use pgwarden_crds::{MIN_SCHEDULE_INTERVAL_SECONDS, ScheduledBackup, ScheduledBackupStatus};
use pgwarden_sdk::defaults;
use serde_json::json;
use tracing::{instrument, warn};

use super::apply;
use super::conditions::Wanted;
use super::context::Context;
use super::errors::{Error, Result};
use super::failure::{self, Decision, Step};
use super::status;
use crate::policy::PolicyError;
use pgwarden_core::plan::{self, Action, EventType, guardrails, reference};

const SCHEDULED: &str = "Scheduled";

#[instrument(skip(scheduled, ctx), fields(scheduled_backup = %scheduled.name_any()))]
pub async fn reconcile(scheduled: Arc<ScheduledBackup>, ctx: Arc<Context>) -> Result<Requeue> {
    ctx.metrics.reconciled("ScheduledBackup");
    if let Some(wanted) = too_frequent(&scheduled.spec.schedule, Utc::now()) {
        // Stored before admission refused such schedules: no Backup until the spec changes.
        let status = scheduled.status.clone().unwrap_or_default();
        let target = reference(&*scheduled);
        let generation = scheduled.meta().generation;
        let report = failure::report(target, &status.conditions, &wanted, generation, json!({}));
        write(&ctx, &scheduled, report, &wanted).await?;
        return Ok(Requeue::await_change());
    }
    let mut step = Step::new(Decision::Schedule);
    match decide_and_apply(scheduled.clone(), ctx.clone(), &mut step).await {
        Ok(requeue) => Ok(requeue),
        Err(error) => {
            let failure = step.failed(error);
            if let Some(wanted) = failure.wanted(SCHEDULED) {
                let status = scheduled.status.clone().unwrap_or_default();
                let (target, generation) = (reference(&*scheduled), scheduled.meta().generation);
                let actions =
                    failure::report(target, &status.conditions, &wanted, generation, json!({}));
                if let Err(e) = write(&ctx, &scheduled, actions, &wanted).await {
                    warn!(error = %e, "cannot report the failure on the ScheduledBackup");
                }
            }
            Err(failure.error)
        }
    }
}

/// `Scheduled` False when two consecutive runs of `schedule` are less than
/// [`MIN_SCHEDULE_INTERVAL_SECONDS`] apart, else `None` (a schedule that does not parse is the
/// policy's to name). Exact: a cron fires twice within a minute only through its seconds
/// field, so the first two runs from the start of a minute it fires in tell.
fn too_frequent(schedule: &str, now: DateTime<Utc>) -> Option<Wanted> {
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
        Wanted::failed(
            SCHEDULED,
            "ScheduleTooFrequent",
            format!(
                "spec.schedule {schedule:?} runs {gap} s apart ({first} and {second}): a Backup at most every {MIN_SCHEDULE_INTERVAL_SECONDS} s; give the seconds field one number, as in \"0 */5 * * * *\""
            ),
        )
    })
}

/// Asks the policy, plans, checks and applies; `step` follows the decision being asked.
async fn decide_and_apply(
    scheduled: Arc<ScheduledBackup>,
    ctx: Arc<Context>,
    step: &mut Step,
) -> Result<Requeue> {
    let ns = scheduled.namespace().unwrap_or_default();
    let cluster = ctx
        .stores
        .clusters
        .get(&ObjectRef::new(&scheduled.spec.cluster.name).within(&ns));
    let chosen = ctx.policies.for_cluster_of(
        "ScheduledBackup",
        &ns,
        &scheduled.spec.cluster.name,
        cluster.as_deref(),
    )?;
    step.policy = Some(chosen.name.clone());
    let input = (*scheduled).clone();
    let now = Utc::now();
    let status = scheduled.status.clone().unwrap_or_default();
    let decision = chosen.policy.run(move |p| p.schedule(&input, now)).await;
    let (actions, wanted) = match decision {
        Ok(decision) => {
            let actions = plan::plan_schedule(&scheduled, cluster.as_deref(), &decision, now);
            let next = decision
                .next_run
                .map(|t| t.to_rfc3339())
                .unwrap_or_else(|| "never (suspended)".into());
            (
                actions,
                Wanted::ok(SCHEDULED, "ScheduleValid", format!("next Backup at {next}")),
            )
        }
        Err(PolicyError::Denied(message)) => {
            let note = format!("spec.schedule {:?}: {message}", scheduled.spec.schedule);
            let event = Action::Event {
                regarding: reference(&*scheduled),
                event_type: EventType::Warning,
                reason: "InvalidSchedule".into(),
                note: note.clone(),
            };
            let already = status
                .conditions
                .iter()
                .any(|c| c.type_ == SCHEDULED && c.message == note);
            (
                if already { vec![] } else { vec![event] },
                Wanted::failed(SCHEDULED, "InvalidSchedule", note),
            )
        }
        Err(e) => return Err(Error::Policy(e)),
    };
    guardrails::check(&plan::scheduled_subject(&scheduled), &actions)?;
    let requeue = apply::requeue(&actions);
    write(&ctx, &scheduled, actions, &wanted).await?;
    Ok(match requeue {
        Some(seconds) => Requeue::requeue(Duration::from_secs(seconds)),
        None if wanted.ok => Requeue::requeue(Duration::from_secs(300)),
        None => Requeue::await_change(),
    })
}

/// Applies `actions` (the Backup a run creates first), then writes the ScheduledBackup's
/// whole status once (the core's, by server-side apply): the stored one with the times a
/// planned status carries and `wanted` set. The planned status writes nothing itself.
async fn write(
    ctx: &Context,
    scheduled: &ScheduledBackup,
    actions: Vec<Action>,
    wanted: &Wanted,
) -> Result<()> {
    let (planned, actions): (Vec<Action>, Vec<Action>) = actions
        .into_iter()
        .partition(|a| matches!(a, Action::PatchStatus { .. }));
    let checked = planned.into_iter().find_map(|a| match a {
        Action::PatchStatus { status, .. } => serde_json::from_value(status)
            .ok()
            .filter(|s: &ScheduledBackupStatus| s.last_check_time.is_some()),
        _ => None,
    });
    apply::apply(ctx, &actions).await?;
    let before = scheduled.status.clone().unwrap_or_default();
    let generation = scheduled.meta().generation;
    let now = Timestamp::now();
    let status =
        pgwarden_core::scheduled_status(&before, checked.as_ref(), wanted, generation, now);
    status::apply_status(ctx, scheduled, &status).await?;
    Ok(())
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
