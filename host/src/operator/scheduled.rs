//! The ScheduledBackup controller: observe → [`plans::scheduled`] (the policy parses the
//! schedule and says whether a Backup is due; its name derives from the scheduled time, so a
//! restarted operator never duplicates one) → apply: the Backup first, then the whole status.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Timelike, Utc};
use kube::ResourceExt;
use kube::runtime::controller::Action as Requeue;
use pgwarden_crds::{MIN_SCHEDULE_INTERVAL_SECONDS, ScheduledBackup};
use pgwarden_sdk::defaults;
use tracing::instrument;

use super::apply;
use super::conditions::Wanted;
use super::context::Context;
use super::errors::Result;
use super::plans;
use super::snapshot::Observe;
use super::status;

/// The condition that tells whether the schedule runs.
pub const SCHEDULED: &str = "Scheduled";

#[instrument(skip(scheduled, ctx), fields(scheduled_backup = %scheduled.name_any()))]
pub async fn reconcile(scheduled: Arc<ScheduledBackup>, ctx: Arc<Context>) -> Result<Requeue> {
    ctx.metrics.reconciled("ScheduledBackup");
    let ns = scheduled.namespace().unwrap_or_default();
    let name = &scheduled.spec.cluster.name;
    let cluster = ctx.stores.cluster(&ns, name);
    let chosen = ctx
        .policies
        .for_cluster_of("ScheduledBackup", &ns, name, cluster.as_deref());
    let plan = match chosen {
        Ok(chosen) => {
            let (input, c, policy) = (scheduled.clone(), cluster.clone(), chosen.clone());
            chosen
                .policy
                .run(move |_| {
                    Ok(plans::scheduled(
                        Ok(policy),
                        &input,
                        c.as_deref(),
                        Utc::now(),
                    ))
                })
                .await?
        }
        Err(e) => plans::scheduled(Err(e), &scheduled, cluster.as_deref(), Utc::now()),
    };
    // The Backup a run creates first, then the status that records the run.
    apply::apply(&ctx, &plan.actions).await?;
    if let Some(status) = &plan.status {
        status::apply_status(&ctx, &*scheduled, status).await?;
    }
    apply::apply(&ctx, &plan.events).await?;
    if let Some(error) = plan.error {
        return Err(error);
    }
    Ok(match plan.requeue {
        Some(seconds) => Requeue::requeue(Duration::from_secs(seconds)),
        None => Requeue::await_change(),
    })
}

/// `Scheduled` False when two consecutive runs of `schedule` are less than
/// [`MIN_SCHEDULE_INTERVAL_SECONDS`] apart, else `None` (a schedule that does not parse is the
/// policy's to name). Exact: a cron fires twice within a minute only through its seconds
/// field, so the first two runs from the start of a minute it fires in tell.
pub fn too_frequent(schedule: &str, now: DateTime<Utc>) -> Option<Wanted> {
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
