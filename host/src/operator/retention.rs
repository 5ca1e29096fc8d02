//! The retention controller: per Cluster, asks the policy which Backups are past the retention
//! policy, hands their deletion from the object store to the agent of the primary (through
//! the requests in the Cluster's own settings ConfigMap, which agents cannot write; see
//! [`retention::requests`]), and removes the Backup objects once the agent reports the backup
//! deleted. See [`pgwarden_core::plan::retention`].
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
use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action as Requeue;
use pgwarden_crds::Cluster;
use pgwarden_crds::condition_types::RETENTION_APPLIED as RETENTION;
use serde_json::json;
use tracing::instrument;

use super::apply;
use super::context::Context;
use super::errors::Result;
use super::failure::{self, Decision, Step};
use super::plans::{self, retention::Retained};
use pgwarden_core::plan::retention::{self, requests};
use pgwarden_core::plan::{self};

/// Writes the requests into the ConfigMap under the retention's own field manager (the
/// cluster planner's apply then leaves the key alone), only when they changed; the uid makes
/// the apply fail rather than create a ConfigMap that was deleted meanwhile.
async fn write_requests(ctx: &Context, retained: &Retained) -> Result<()> {
    let Some((cm, text)) = retained.changed_requests() else {
        return Ok(());
    };
    let patch = serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": cm.name_any(), "namespace": cm.namespace(), "uid": cm.uid()},
        "data": {requests::KEY: text},
    });
    let api: Api<ConfigMap> =
        Api::namespaced(ctx.client.clone(), &cm.namespace().unwrap_or_default());
    api.patch(
        &cm.name_any(),
        &PatchParams::apply(requests::MANAGER),
        &Patch::Apply(&patch),
    )
    .await?;
    let count = retained.requests.len();
    tracing::info!(configmap = %cm.name_any(), requests = count, "deletion requests written");
    ctx.metrics.wrote("apply");
    Ok(())
}

/// Tells the retention's outcome on the Cluster: its `RetentionApplied` condition by
/// server-side apply under the retention's own field manager, that entry alone of the list map
/// `status.conditions` (the Cluster controller's apply owns the others and leaves this one
/// out: each condition has one owner), then the Warning Event. Forced: the retention takes
/// the condition over from a merge patch of an earlier version.
async fn tell(ctx: &Context, actions: &[plan::Action]) -> Result<()> {
    for action in actions {
        let plan::Action::PatchStatus { target, status } = action else {
            apply::apply(ctx, std::slice::from_ref(action)).await?;
            continue;
        };
        let body = plans::retention::condition_apply(target, status);
        let api: Api<Cluster> = Api::namespaced(
            ctx.client.clone(),
            target.namespace.as_deref().unwrap_or_default(),
        );
        let params = PatchParams::apply(requests::MANAGER).force();
        api.patch_status(&target.name, &params, &Patch::Apply(&body))
            .await?;
        tracing::debug!(cluster = %target.name, "retention condition applied");
        ctx.metrics.wrote("status");
    }
    Ok(())
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
            tell(&ctx, &back).await?;
            Ok(requeue)
        }
        Err(error) => {
            // Told on the Cluster: the Backups the policy was asked about are many or none.
            let failure = step.failed(error);
            if let Some(wanted) = failure.wanted(RETENTION) {
                let report = failure::report(target, &conditions, &wanted, generation, json!({}));
                if let Err(e) = tell(&ctx, &report).await {
                    tracing::warn!(error = %e, "cannot report the retention failure on the Cluster");
                }
            }
            Err(failure.error)
        }
    }
}

/// Asks the policy (off the executor), plans, checks and applies; `step` names the policy.
async fn decide_and_apply(
    cluster: Arc<Cluster>,
    ctx: Arc<Context>,
    step: &mut Step,
) -> Result<Requeue> {
    let chosen = ctx.policies.for_cluster(&cluster);
    step.policy = chosen.as_ref().ok().map(|c| c.name.clone());
    let now = Utc::now();
    let retained = match chosen {
        Ok(chosen) => {
            let (stores, input, policy) = (ctx.stores.clone(), cluster.clone(), chosen.clone());
            let started = Instant::now();
            let retained = (chosen.policy)
                .run(move |_| Ok(plans::retention(&stores, Ok(policy), &input, now)))
                .await?;
            ctx.metrics.policy_call("retention", started.elapsed());
            retained?
        }
        Err(e) => plans::retention(&ctx.stores, Err(e), &cluster, now)?,
    };
    let Some(retained) = retained else {
        return Ok(Requeue::await_change());
    };
    log_floor(&retained.plan.events);
    // The requests first: the status copies and Events follow what was asked.
    write_requests(&ctx, &retained).await?;
    apply::apply(&ctx, &retained.plan.actions).await?;
    apply::apply(&ctx, &retained.plan.events).await?;
    Ok(match retained.plan.requeue {
        Some(seconds) => Requeue::requeue(Duration::from_secs(seconds)),
        None => Requeue::await_change(),
    })
}
