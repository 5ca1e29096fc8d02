//! The Backup controller: the policy picks the instance and settings, then decides each phase
//! from the facts (the agent's report on the Backup, the target pod as observed). The agent
//! on the target pod runs barman-cloud-backup when the Backup is `running` with its pod in
//! `status.instanceID` and the decided `status.settings`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use kube::runtime::controller::Action as Requeue;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use pgwarden_crds::condition_types::POLICY_APPLIED;
use pgwarden_crds::settings::BackupSettings;
use pgwarden_crds::settings::pod::LABEL_CLUSTER;
use pgwarden_crds::{Backup, Cluster};
use pgwarden_sdk::types::{BackupFacts, Instance};
use serde_json::json;
use tracing::{instrument, warn};

use super::apply;
use super::context::Context;
use super::errors::{Error, Result};
use super::failure::{self, Decision, Failure, Step};
use pgwarden_core::plan::{self, Action, guardrails};

/// The Cluster's instances as the policy sees them.
fn instances(ctx: &Context, cluster: &Cluster) -> Vec<Instance> {
    let (ns, name) = (cluster.namespace(), cluster.name_any());
    ctx.stores
        .pods
        .state()
        .into_iter()
        .filter(|p| p.namespace() == ns && p.labels().get(LABEL_CLUSTER) == Some(&name))
        .map(|p| plan::instance(&p))
        .collect()
}

/// Adds the decided settings to the status patch that starts the backup.
fn with_settings(mut actions: Vec<Action>, settings: Option<&BackupSettings>) -> Vec<Action> {
    let Some(settings) = settings else {
        return actions;
    };
    for action in &mut actions {
        if let Action::PatchStatus { status, .. } = action
            && status.get("instanceID").is_some()
        {
            status["settings"] = serde_json::to_value(settings).unwrap_or_default();
        }
    }
    actions
}

#[instrument(skip(backup, ctx), fields(backup = %backup.name_any(), namespace = backup.namespace().unwrap_or_default()))]
pub async fn reconcile(backup: Arc<Backup>, ctx: Arc<Context>) -> Result<Requeue> {
    ctx.metrics.reconciled("Backup");
    let status = backup.status.clone().unwrap_or_default();
    if status.phase.is_some_and(|p| p.is_final()) {
        return Ok(Requeue::await_change());
    }
    let mut step = Step::new(Decision::BackupSettings);
    match decide_and_apply(backup.clone(), ctx.clone(), &mut step).await {
        Ok(requeue) => {
            let message = format!(
                "decisions of policy {} applied",
                step.policy.unwrap_or_default()
            );
            let generation = backup.meta().generation;
            let target = plan::reference(&*backup);
            let back = failure::recovered(
                target,
                &status.conditions,
                POLICY_APPLIED,
                &message,
                generation,
            );
            apply::apply(&ctx, &back).await?;
            Ok(requeue)
        }
        Err(error) => Err(report(&ctx, &backup, step.failed(error)).await),
    }
}

/// Tells a failed decision on the Backup: condition `PolicyApplied` False and a Warning Event
/// naming the policy and the decision, and a Backup that has no phase yet gets `pending` with
/// the same reason and message (instead of no status at all); then the error goes on to the
/// controller's backoff.
async fn report(ctx: &Context, backup: &Backup, failure: Failure) -> Error {
    let status = backup.status.clone().unwrap_or_default();
    if let Some(wanted) = failure.wanted(POLICY_APPLIED) {
        let extra = match status.phase {
            None => json!({"phase": "pending", "reason": wanted.reason, "message": wanted.message}),
            Some(_) => json!({}),
        };
        let target = plan::reference(backup);
        let generation = backup.meta().generation;
        let actions = failure::report(target, &status.conditions, &wanted, generation, extra);
        if let Err(e) = apply::apply(ctx, &actions).await {
            warn!(error = %e, "cannot report the failure on the Backup");
        }
    }
    failure.error
}

/// Asks the policy, plans, checks and applies; `step` follows the decision being asked.
async fn decide_and_apply(
    backup: Arc<Backup>,
    ctx: Arc<Context>,
    step: &mut Step,
) -> Result<Requeue> {
    let status = backup.status.clone().unwrap_or_default();
    let ns = backup.namespace().unwrap_or_default();
    let cluster = ctx
        .stores
        .clusters
        .get(&ObjectRef::new(&backup.spec.cluster.name).within(&ns));
    let chosen = ctx.policies.for_cluster_of(
        "Backup",
        &ns,
        &backup.spec.cluster.name,
        cluster.as_deref(),
    )?;
    step.policy = Some(chosen.name.clone());
    let started = Instant::now();
    let settings = match (&cluster, &status.instance_id) {
        (Some(c), None) => {
            let (b, c2, inst) = ((*backup).clone(), (**c).clone(), instances(&ctx, c));
            Some(
                chosen
                    .policy
                    .run(move |p| p.backup_settings(&b, &c2, &inst))
                    .await?,
            )
        }
        _ => None,
    };
    let target = status
        .instance_id
        .as_ref()
        .and_then(|i| i.pod_name.clone())
        .or_else(|| settings.as_ref().map(|s| s.target_pod.clone()));
    let pod = target
        .and_then(|name| ctx.stores.pods.get(&ObjectRef::new(&name).within(&ns)))
        .map(|p| plan::pod_facts(&p));
    let facts = BackupFacts {
        backup: (*backup).clone(),
        cluster: cluster.as_deref().cloned(),
        pod,
        now: Utc::now(),
    };
    step.decision = Decision::BackupTransition;
    let transition = chosen
        .policy
        .run(move |p| p.backup_transition(&facts))
        .await?;
    ctx.metrics.policy_call("backup", started.elapsed());
    let actions = plan::plan_backup(
        &backup,
        cluster.as_deref(),
        &transition,
        settings.as_ref(),
        Utc::now(),
    );
    let actions = with_settings(actions, settings.as_ref());
    guardrails::check(&plan::backup_subject(&backup), &actions).map_err(Error::from)?;
    apply::apply(&ctx, &actions).await?;
    Ok(match apply::requeue(&actions) {
        Some(seconds) => Requeue::requeue(Duration::from_secs(seconds)),
        None => Requeue::requeue(Duration::from_secs(60)),
    })
}
