//! The retention controller: per Cluster, asks the policy which Backups are past the retention
//! policy, hands their deletion from the object store to the agent of the primary (through
//! `status.deletion` on each Backup, as backups themselves are handed over), and removes the
//! Backup objects once the agent reports the backup deleted. See [`crate::plan::retention`].
//!
//! The policy's answer never expires the Cluster's newest completed backup, the one that
//! starts its recovery window, nor a Backup another Cluster of the namespace restores from
//! (collected here from the Cluster store): the planner's floor ([`retention::floor`]) takes
//! them out, with a Warning Event and a log line.
//!
//! A Cluster with no finished Backup costs no policy call; one with nothing to delete costs
//! no write.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use kube::ResourceExt;
use kube::runtime::controller::Action as Requeue;
use pgwarden_crds::condition_types::RETENTION_APPLIED as RETENTION;
use pgwarden_crds::settings::pod::{LABEL_CLUSTER, LABEL_ROLE};
use pgwarden_crds::{Backup, Cluster};
use serde_json::json;
use tracing::instrument;

use super::apply;
use super::context::Context;
use super::errors::{Error, Result};
use super::failure::{self, Decision, Step};
use crate::plan::{self, RetentionInput, guardrails, retention};

/// How often a Cluster with a retention policy is looked at when nothing happens (Backups age
/// without any event).
pub const RECHECK: Duration = Duration::from_secs(3600);

/// The Cluster's Backups, as observed.
fn backups_of(ctx: &Context, cluster: &Cluster) -> Vec<Backup> {
    let (ns, name) = (cluster.namespace(), cluster.name_any());
    ctx.stores
        .backups
        .state()
        .into_iter()
        .filter(|b| b.namespace() == ns && b.spec.cluster.name == name)
        .map(|b| (*b).clone())
        .collect()
}

/// Every Cluster's `spec.bootstrap.recovery.backup`, from the Cluster store (all namespaces:
/// the floor keeps only those of the retained Cluster's namespace).
fn restores(ctx: &Context) -> Vec<retention::floor::Restore> {
    ctx.stores
        .clusters
        .state()
        .iter()
        .filter_map(|c| retention::floor::Restore::of(c))
        .collect()
}

/// The pod whose agent deletes backups: the Cluster's primary, if it has one.
fn primary(ctx: &Context, cluster: &Cluster) -> Option<String> {
    let (ns, name) = (cluster.namespace(), cluster.name_any());
    ctx.stores
        .pods
        .state()
        .into_iter()
        .filter(|p| p.namespace() == ns && p.labels().get(LABEL_CLUSTER) == Some(&name))
        .find(|p| p.labels().get(LABEL_ROLE).map(String::as_str) == Some("primary"))
        .map(|p| p.name_any())
}

/// Says in the log, as in the Event, each Backup the retention floor kept from the policy.
fn log_floor(actions: &[plan::Action]) {
    for action in actions {
        if let plan::Action::Event { reason, note, .. } = action
            && reason == retention::floor::REASON
        {
            tracing::warn!(reason = %reason, "{note}");
        }
    }
}

#[instrument(skip(cluster, ctx), fields(cluster = %cluster.name_any(), namespace = cluster.namespace().unwrap_or_default()))]
pub async fn reconcile(cluster: Arc<Cluster>, ctx: Arc<Context>) -> Result<Requeue> {
    ctx.metrics.reconciled("Retention");
    let mut step = Step::new(Decision::Retention);
    let outcome = decide_and_apply(cluster.clone(), ctx.clone(), &mut step).await;
    let conditions = cluster.status.clone().unwrap_or_default().conditions;
    let (target, generation) = (plan::reference(&*cluster), cluster.metadata.generation);
    match outcome {
        Ok(requeue) => {
            let message = format!(
                "retention decisions of policy {} applied",
                step.policy.unwrap_or_default()
            );
            let back = failure::recovered(target, &conditions, RETENTION, &message, generation);
            apply::apply(&ctx, &back).await?;
            Ok(requeue)
        }
        Err(error) => {
            // Told on the Cluster: the Backups the policy was asked about are many or none.
            let failure = step.failed(error);
            if let Some(wanted) = failure.wanted(RETENTION) {
                let report = failure::report(target, &conditions, &wanted, generation, json!({}));
                if let Err(e) = apply::apply(&ctx, &report).await {
                    tracing::warn!(error = %e, "cannot report the retention failure on the Cluster");
                }
            }
            Err(failure.error)
        }
    }
}

/// Asks the policy, plans, checks and applies; `step` names the policy once found.
async fn decide_and_apply(
    cluster: Arc<Cluster>,
    ctx: Arc<Context>,
    step: &mut Step,
) -> Result<Requeue> {
    let backups = backups_of(&ctx, &cluster);
    let live = retention::candidates(&cluster, &backups);
    let finished = live.iter().any(|b| {
        b.status
            .as_ref()
            .and_then(|s| s.phase)
            .is_some_and(|p| p.is_final())
    });
    if !finished && !retention::in_flight(&cluster, &backups) {
        return Ok(Requeue::await_change());
    }
    let now = Utc::now();
    let expired = if finished {
        let named = ctx.policies.for_cluster(&cluster)?;
        step.policy = Some(named.name.clone());
        let (c, b) = ((*cluster).clone(), live.clone());
        let started = Instant::now();
        let expired = named.policy.run(move |p| p.retention(&c, &b, now)).await?;
        ctx.metrics.policy_call("retention", started.elapsed());
        expired
    } else {
        Vec::new()
    };
    let pod = primary(&ctx, &cluster);
    let input = RetentionInput {
        cluster: &cluster,
        backups: &backups,
        expired: &expired,
        agent_pod: pod.as_deref(),
        now,
    };
    let actions = retention::plan_retention_with(&input, &restores(&ctx));
    log_floor(&actions);
    for action in &actions {
        let subject = plan::retention_subject(&cluster, &backups, action);
        guardrails::check_one(&subject, action).map_err(Error::from)?;
    }
    apply::apply(&ctx, &actions).await?;
    let has_policy = cluster
        .spec
        .backup
        .as_ref()
        .is_some_and(|b| b.retention_policy.is_some());
    Ok(match apply::requeue(&actions) {
        Some(seconds) => Requeue::requeue(Duration::from_secs(seconds)),
        None if has_policy => Requeue::requeue(RECHECK),
        None => Requeue::await_change(),
    })
}
