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
use kube::runtime::reflector::ObjectRef;
use pgwarden_crds::condition_types::RETENTION_APPLIED as RETENTION;
use pgwarden_crds::settings::pod::LABEL_ROLE;
use pgwarden_crds::{Backup, Cluster};
use pgwarden_sdk::names;
use serde_json::json;
use tracing::instrument;

use super::apply;
use super::context::Context;
use super::errors::{Error, Result};
use super::failure::{self, Decision, Step};
use super::snapshot::Observe;
use pgwarden_core::plan::GuardrailError;
use pgwarden_core::plan::retention::requests;
use pgwarden_core::plan::{self, RetentionInput, guardrails, retention};

/// How often a Cluster with a retention policy is looked at when nothing happens (Backups age
/// without any event).
pub const RECHECK: Duration = Duration::from_secs(3600);

/// The Cluster's Backups, as observed.
fn backups_of(ctx: &Context, cluster: &Cluster) -> Vec<Backup> {
    (ctx.stores.backups_of(cluster).iter())
        .map(|b| (**b).clone())
        .collect()
}

/// Every Cluster's `spec.bootstrap.recovery.backup`, as observed (all namespaces: the floor
/// keeps only those of the retained Cluster's namespace).
fn restores(ctx: &Context) -> Vec<retention::floor::Restore> {
    (ctx.stores.clusters().iter())
        .filter_map(|c| retention::floor::Restore::of(c))
        .collect()
}

/// The pod whose agent deletes backups: the Cluster's primary, if it has one.
fn primary(ctx: &Context, cluster: &Cluster) -> Option<String> {
    (ctx.stores.cluster_pods(cluster).iter())
        .find(|p| p.labels().get(LABEL_ROLE).map(String::as_str) == Some("primary"))
        .map(|p| p.name_any())
}

/// The Cluster's settings ConfigMap, where its deletion requests are kept; `None` until the
/// Cluster's reconcile made it. One the Cluster does not own (someone else's object under that
/// name) is refused: the operator never writes into it.
fn settings_of(ctx: &Context, cluster: &Cluster) -> Result<Option<Arc<ConfigMap>>> {
    let name = names::settings_config_map(&cluster.name_any());
    let reference = ObjectRef::new(&name).within(&cluster.namespace().unwrap_or_default());
    let Some(cm) = ctx.stores.config_maps.get(&reference) else {
        return Ok(None);
    };
    let owned = cm
        .owner_references()
        .iter()
        .any(|o| Some(&o.uid) == cluster.metadata.uid.as_ref());
    if !owned {
        let detail = format!(
            "it is not owned by Cluster {}: no deletion is asked through it",
            cluster.name_any()
        );
        return Err(invalid(&cm, detail));
    }
    Ok(Some(cm))
}

fn request_text(cm: &ConfigMap) -> Option<&str> {
    cm.data.as_ref()?.get(requests::KEY).map(String::as_str)
}

fn invalid(cm: &ConfigMap, detail: String) -> Error {
    let object = format!(
        "ConfigMap {}/{}",
        cm.namespace().unwrap_or_default(),
        cm.name_any()
    );
    Error::Guardrail(GuardrailError::Invalid { object, detail })
}

/// Writes the requests into the ConfigMap under the retention's own field manager (the
/// cluster planner's apply then leaves the key alone), only when they changed; the uid makes
/// the apply fail rather than create a ConfigMap that was deleted meanwhile.
async fn write_requests(ctx: &Context, cm: &ConfigMap, next: &[retention::Request]) -> Result<()> {
    let text = requests::render(next);
    if request_text(cm).unwrap_or("[]") == text {
        return Ok(());
    }
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
    tracing::info!(configmap = %cm.name_any(), requests = next.len(), "deletion requests written");
    ctx.metrics.wrote("apply");
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
    let settings = settings_of(&ctx, &cluster)?;
    let asked = match &settings {
        Some(cm) => requests::parse(request_text(cm)).map_err(|detail| invalid(cm, detail))?,
        None => Vec::new(),
    };
    let live = retention::candidates_with(&cluster, &backups, &asked);
    let finished = live.iter().any(|b| {
        b.status
            .as_ref()
            .and_then(|s| s.phase)
            .is_some_and(|p| p.is_final())
    });
    if !finished && !retention::in_flight_with(&cluster, &backups, &asked) {
        return Ok(Requeue::await_change());
    }
    let now = Utc::now();
    let expired = if finished {
        let chosen = ctx.policies.for_cluster(&cluster)?;
        step.policy = Some(chosen.name.clone());
        let (c, b) = ((*cluster).clone(), live.clone());
        let started = Instant::now();
        let expired = chosen.policy.run(move |p| p.retention(&c, &b, now)).await?;
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
    let planned = retention::plan_requested(&input, &restores(&ctx), &asked);
    let actions = planned.actions;
    log_floor(&actions);
    for action in &actions {
        let subject = plan::retention_subject(&cluster, &backups, action);
        guardrails::check_one(&subject, action).map_err(Error::from)?;
    }
    // The requests first: the status copies and Events follow what was asked.
    if let Some(cm) = &settings {
        write_requests(&ctx, cm, &planned.requests).await?;
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
