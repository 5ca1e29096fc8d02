//! The Cluster controller: asks the Cluster's policy for its pods, storage and archive
//! settings (given the pods and claims observed), plans the objects, checks them against the
//! guardrails, applies what differs; then asks the policy for the phase and `Ready`, and the
//! reconcile core computes the status (those, and `ContinuousArchiving`,
//! `LastBackupSucceeded`, `PolicyApplied`...) from what was observed and done, written by
//! [`status::apply_status`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::controller::Action as Requeue;
use pgwarden_core::{self as core, ObservedCluster, Outcome};
use pgwarden_crds::Cluster;
use pgwarden_sdk::types::Denial;
use tracing::{instrument, warn};

use super::apply;
use super::context::Context;
use super::errors::{Error, Result};
use super::plans::cluster as planning;
use super::registry::ChosenPolicy;
use super::rollout::Decision;
use super::status;
use pgwarden_core::plan::{Action, EventType, RecoveryWait, reference};

/// Asks the policy, plans, checks and applies; returns the policy that decided, for a
/// recovery that cannot start yet why, and what the rollout of changed pods did.
async fn decide_and_apply(
    cluster: &Cluster,
    ctx: &Context,
) -> Result<(ChosenPolicy, Option<RecoveryWait>, Decision)> {
    let chosen = ctx.policies.for_cluster(cluster)?;
    // The policy sees the pods running and the claims made (to keep or grow them).
    let claims = planning::claims(&ctx.stores, cluster);
    let instances = planning::instances(&ctx.stores, cluster);
    let (input, asked) = (cluster.clone(), claims.clone());
    let started = Instant::now();
    let decisions = chosen
        .policy
        .run(move |p| p.cluster_decisions(&input, &instances, &asked))
        .await;
    ctx.metrics.policy_call("cluster", started.elapsed());
    let planned = planning::planned(&ctx.stores, cluster, &decisions?, &claims)?;
    let (actions, waiting, rollout) = (planned.actions, planned.waiting, planned.rollout);
    name_in_use(cluster, ctx, &actions).await?;
    apply::apply(ctx, &actions).await?;
    Ok((chosen, waiting, rollout))
}

/// Refuses to apply anything while one of the Cluster's names is taken by an object it does
/// not control: applied, that object would be overwritten and then collected with the
/// Cluster; skipped alone, the pods would run with someone else's ServiceAccount, settings
/// or claim. The Cluster reports the objects by kind and name until they are renamed or
/// removed.
async fn name_in_use(cluster: &Cluster, ctx: &Context, actions: &[Action]) -> Result<()> {
    let uid = cluster.uid().unwrap_or_default();
    let taken = apply::not_controlled(ctx, actions, &uid).await?;
    if taken.is_empty() {
        return Ok(());
    }
    let objects: Vec<String> = taken
        .iter()
        .map(|t| format!("{} {}", t.kind, t.name))
        .collect();
    Err(Error::NameInUse(format!(
        "objects under the Cluster's names exist in namespace {} and are not controlled by Cluster {}: {}; they are left unchanged, and none of the Cluster's objects is applied until they are renamed or deleted",
        cluster.namespace().unwrap_or_default(),
        cluster.name_any(),
        objects.join(", "),
    )))
}

/// The policy's phase and `Ready` of the Cluster, decided from what was observed and done
/// ([`core::cluster::health_facts`]). No policy to ask (none loaded, or a bound one missing):
/// the SDK's default decides, as the default policy would. A failed call is the core's to
/// report (the stored phase and `Ready` stay).
async fn health(
    cluster: &Cluster,
    ctx: &Context,
    observed: &ObservedCluster,
    outcome: &Outcome,
    now: Timestamp,
) -> core::cluster::Health {
    let instances = planning::instances(&ctx.stores, cluster);
    let facts = core::cluster::health_facts(cluster, instances, observed, outcome, now);
    let Ok(chosen) = ctx.policies.for_cluster(cluster) else {
        return planning::health(None, &facts);
    };
    // The same call as a dry run's (`plans::cluster::health`), off the async executor.
    let (started, policy) = (Instant::now(), chosen.policy.clone());
    let name = chosen.name.clone();
    let health = policy
        .run(move |_| Ok(planning::health(Some(&chosen), &facts)))
        .await;
    ctx.metrics.policy_call("cluster-status", started.elapsed());
    health.unwrap_or_else(|e| Err(Denial::new("PolicyFailed", format!("policy {name}: {e}"))))
}

/// Who is to be the primary ([`planning::election`], as a dry run decides it), off the
/// async executor. A failed call keeps `targetPrimary` (the core reports why).
async fn election(cluster: &Cluster, ctx: &Context, now: Timestamp) -> core::failover::Election {
    let chosen = ctx.policies.for_cluster(cluster).ok();
    let (started, at) = (Instant::now(), pgwarden_sdk::convert::from_jiff(now));
    let Some(policy) = chosen.as_ref().map(|c| c.policy.clone()) else {
        return planning::election(None, cluster, at);
    };
    let input = cluster.clone();
    let elected = policy
        .run(move |_| Ok(planning::election(chosen.as_ref(), &input, at)))
        .await;
    ctx.metrics.policy_call("failover", started.elapsed());
    let facts = core::failover::facts(cluster, at);
    elected.unwrap_or_else(|e| {
        core::failover::elect(
            &facts,
            None,
            Err(Denial::new("PolicyFailed", e.to_string())),
        )
    })
}

/// Observe, decide and apply, then the status the core computes from what was observed and
/// done, written once (server-side apply), and its Warnings.
#[instrument(skip(cluster, ctx), fields(cluster = %cluster.name_any(), namespace = cluster.namespace().unwrap_or_default()))]
pub async fn reconcile(cluster: Arc<Cluster>, ctx: Arc<Context>) -> Result<Requeue> {
    ctx.metrics.reconciled("Cluster");
    let outcome = decide_and_apply(&cluster, &ctx).await;
    if let Err(Error::Kube(e)) = outcome {
        return Err(Error::Kube(e));
    }
    let missing = ctx.missing_secrets(&cluster).await?;
    let observed = planning::observed_cluster(&ctx.stores, &cluster, &missing);
    let binding = ctx.policies.as_requested(&cluster);
    let (done, now) = (planning::outcome_of(&outcome), Timestamp::now());
    let health = health(&cluster, &ctx, &observed, &done, now).await;
    let mut report = core::cluster_status(&observed, &done, &health, binding, now);
    report.elect(election(&cluster, &ctx, now).await, now);
    status::apply_status(&ctx, &*cluster, &report.status).await?;
    let target = reference(&*cluster);
    let warnings: Vec<Action> = report
        .warnings
        .into_iter()
        .map(|w| Action::Event {
            regarding: target.clone(),
            event_type: EventType::Warning,
            reason: w.reason,
            note: w.message,
        })
        .collect();
    apply::apply(&ctx, &warnings).await?;
    if let Err(e) = outcome {
        warn!(error = %e, "cluster not reconciled");
        ctx.metrics.failed("Cluster", e.metric_label());
    }
    Ok(Requeue::requeue(Duration::from_secs(
        report.requeue_seconds,
    )))
}
