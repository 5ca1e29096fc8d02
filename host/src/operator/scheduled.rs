//! The ScheduledBackup controller: the policy parses the schedule and says whether a Backup is
//! due (its name derives from the scheduled time, so a restarted operator never duplicates
//! one); a schedule it cannot parse becomes a condition naming it.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action as Requeue;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use pgwarden_crds::{Cluster, ScheduledBackup};
use serde_json::json;
use tracing::instrument;

use super::apply;
use super::conditions::{self, Wanted};
use super::context::Context;
use super::errors::{Error, Result};
use crate::plan::{self, Action, EventType, guardrails, reference};
use crate::policy::PolicyError;

const SCHEDULED: &str = "Scheduled";

#[instrument(skip(scheduled, ctx), fields(scheduled_backup = %scheduled.name_any()))]
pub async fn reconcile(scheduled: Arc<ScheduledBackup>, ctx: Arc<Context>) -> Result<Requeue> {
    ctx.metrics.reconciled("ScheduledBackup");
    let ns = scheduled.namespace().unwrap_or_default();
    let cluster = ctx
        .stores
        .clusters
        .get(&ObjectRef::new(&scheduled.spec.cluster.name).within(&ns));
    let named = match &cluster {
        Some(c) => ctx.policies.for_cluster(c)?,
        // No Cluster (yet): the namespace's binding still holds.
        None => ctx.policies.for_namespace(&ns, None)?,
    };
    let input = (*scheduled).clone();
    let now = Utc::now();
    let status = scheduled.status.clone().unwrap_or_default();
    let generation = scheduled.meta().generation;
    let decision = named.policy.run(move |p| p.schedule(&input, now)).await;
    let (mut actions, wanted) = match decision {
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
    let conditions = conditions::set(&status.conditions, &wanted, generation, Timestamp::now());
    for action in &mut actions {
        if let Action::PatchStatus { status, .. } = action {
            status["conditions"] = json!(conditions);
        }
    }
    if !actions
        .iter()
        .any(|a| matches!(a, Action::PatchStatus { .. }))
    {
        actions.insert(
            0,
            Action::PatchStatus {
                target: reference(&*scheduled),
                status: json!({ "conditions": conditions }),
            },
        );
    }
    guardrails::check(&plan::scheduled_subject(&scheduled), &actions)?;
    apply::apply(&ctx, &actions).await?;
    Ok(match apply::requeue(&actions) {
        Some(seconds) => Requeue::requeue(Duration::from_secs(seconds)),
        None if wanted.ok => Requeue::requeue(Duration::from_secs(300)),
        None => Requeue::await_change(),
    })
}
