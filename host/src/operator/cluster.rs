//! The Cluster controller: asks the Cluster's policy for its pods and archive settings, plans
//! the objects, checks them against the guardrails, applies what differs; then the reconcile
//! core computes its status (`Ready`, `ContinuousArchiving`, `LastBackupSucceeded`,
//! `PolicyApplied`...) from what was observed and done, written by [`status::apply_status`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action as Requeue;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use pgwarden_core::{self as core, ObservedBackup, ObservedCluster, Outcome};
use pgwarden_crds::settings::pod::LABEL_CLUSTER;
use pgwarden_crds::{Cluster, PolicyInForce};
use pgwarden_sdk::names;
use tracing::{instrument, warn};

use super::apply;
use super::context::Context;
use super::errors::{Error, Result};
use super::observe::{self, MissingSecret};
use super::registry::ChosenPolicy;
use super::rollout::{self, Decision, InstancePod, PodState};
use super::status;
use pgwarden_core::plan::{
    self, Action, Bootstrap, EventType, RecoveryWait, Restore, guardrails, reference,
};

/// The restore of a recovery Cluster, from the Backup it names and that Backup's Cluster as
/// observed.
fn restore(cluster: &Cluster, ctx: &Context) -> std::result::Result<Option<Restore>, RecoveryWait> {
    let ns = cluster.namespace().unwrap_or_default();
    let recovery = cluster
        .spec
        .bootstrap
        .as_ref()
        .and_then(|b| b.recovery.as_ref());
    let backup = recovery
        .and_then(|r| r.backup.as_ref())
        .and_then(|b| ctx.stores.backups.get(&ObjectRef::new(&b.name).within(&ns)));
    let backup_cluster = backup.as_ref().and_then(|b| {
        ctx.stores
            .clusters
            .get(&ObjectRef::new(&b.spec.cluster.name).within(&ns))
    });
    plan::recovery(cluster, backup.as_deref(), backup_cluster.as_deref())
}

/// Whether the Cluster already has an instance pod: a recovery waits only before its first.
fn has_pods(cluster: &Cluster, ctx: &Context) -> bool {
    !cluster_pods(cluster, ctx).is_empty()
}

/// The live pods labelled with the Cluster's name, in its namespace (from the cache).
fn cluster_pods(cluster: &Cluster, ctx: &Context) -> Vec<Arc<Pod>> {
    let (ns, name) = (cluster.namespace(), cluster.name_any());
    ctx.stores
        .pods
        .state()
        .into_iter()
        .filter(|p| p.namespace() == ns && p.labels().get(LABEL_CLUSTER) == Some(&name))
        .collect()
}

/// The rollout of the planned instance pods (see [`rollout`]): what it does now, and the
/// names of the outdated pods (live pods whose template changed since they were made).
fn rollout_of(cluster: &Cluster, ctx: &Context, actions: &[Action]) -> (Decision, Vec<String>) {
    let pods: Vec<InstancePod> = actions
        .iter()
        .filter_map(|action| match action {
            Action::Apply { target, .. } if target.kind == "Pod" => {
                let observed = ctx.stores.observed(target);
                let live = ctx
                    .stores
                    .pods
                    .get(&ObjectRef::new(&target.name).within(target.namespace.as_deref()?));
                Some(InstancePod {
                    name: target.name.clone(),
                    state: live
                        .as_deref()
                        .map_or(PodState::Missing, observe::pod_state),
                    current: apply::step(action, observed.as_ref()) != apply::Step::Recreate,
                })
            }
            _ => None,
        })
        .collect();
    let running = observe::running_backups(&ctx.stores.backups.state(), cluster);
    let decision = rollout::next(&pods, &running);
    let outdated = pods
        .into_iter()
        .filter(|p| !p.current)
        .map(|p| p.name)
        .collect();
    (decision, outdated)
}

/// Asks the policy, plans, checks and applies; returns the policy that decided, for a
/// recovery that cannot start yet why, and what the rollout of changed pods did.
async fn decide_and_apply(
    cluster: &Cluster,
    ctx: &Context,
) -> Result<(ChosenPolicy, Option<RecoveryWait>, Decision)> {
    let chosen = ctx.policies.for_cluster(cluster)?;
    let input = cluster.clone();
    let started = Instant::now();
    let decisions = chosen
        .policy
        .run(move |p| p.cluster_decisions(&input))
        .await;
    ctx.metrics.policy_call("cluster", started.elapsed());
    let restore = restore(cluster, ctx);
    let (bootstrap, waiting) = match &restore {
        Ok(r) => (Bootstrap::from_restore(r.as_ref()), None),
        // Bootstrapped already (its Backup since deleted, say): the pods stay as they are, as
        // a restore happens once.
        Err(_) if has_pods(cluster, ctx) => (Bootstrap::Waiting, None),
        Err(w) => (Bootstrap::Waiting, Some(w.clone())),
    };
    let mut actions = plan::plan_cluster_restoring(cluster, &decisions?, bootstrap)?;
    actions.extend(plan::surplus_pods(cluster, &cluster_pods(cluster, ctx)));
    // Outdated pods are replaced one at a time, never under a running Backup.
    let (rollout, outdated) = rollout_of(cluster, ctx, &actions);
    let mut actions = rollout::gate(actions, &rollout, &outdated);
    actions.extend(rollout::event(&rollout, reference(cluster)));
    guardrails::check(&plan::subject(cluster), &actions)?;
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

/// What the Cluster controller observed, for the core: its spec and stored status, its pods,
/// its ended Backups and the credentials it lacks.
fn observed(cluster: &Cluster, ctx: &Context, missing: &[MissingSecret]) -> ObservedCluster {
    let (ns, name) = (cluster.namespace().unwrap_or_default(), cluster.name_any());
    let pods = cluster_pods(cluster, ctx);
    let instances = observe::instances(&pods, &names::instance(&name, 0));
    let status = cluster.status.clone().unwrap_or_default();
    let backups = ctx
        .stores
        .backups
        .state()
        .into_iter()
        .filter(|b| b.namespace().as_ref() == Some(&ns) && b.spec.cluster.name == name)
        .map(|b| {
            let status = b.status.clone().unwrap_or_default();
            ObservedBackup {
                name: b.name_any(),
                phase: status.phase,
                stopped_at: status.stopped_at.unwrap_or_default(),
                message: status.message.unwrap_or_default(),
            }
        })
        .collect();
    ObservedCluster {
        missing_secrets: missing.iter().map(|m| m.message(&ns)).collect(),
        namespace: ns,
        generation: cluster.meta().generation,
        instances_wanted: cluster.spec.instances,
        backup_configured: cluster.spec.backup.is_some(),
        conditions: status.conditions,
        archive: status.archive,
        instances: core::Instances {
            total: instances.total,
            ready: instances.ready,
            primary: instances.primary,
        },
        backups,
    }
}

/// The reconcile's outcome, for the core.
fn outcome_of(outcome: &Result<(ChosenPolicy, Option<RecoveryWait>, Decision)>) -> Outcome {
    match outcome {
        Ok((chosen, waiting, rollout)) => Outcome::Applied {
            policy: PolicyInForce {
                name: Some(chosen.name.clone()),
                digest: Some(chosen.policy.digest().to_string()),
            },
            waiting: waiting
                .as_ref()
                .map(|w| (w.reason.to_string(), w.message.clone())),
            rollout: rollout.condition(),
        },
        Err(e) => Outcome::Failed {
            reason: e.reason().to_string(),
            message: e.to_string(),
            name_in_use: matches!(e, Error::NameInUse(_)),
        },
    }
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
    let observed = observed(&cluster, &ctx, &missing);
    let binding = ctx.policies.as_requested(&cluster);
    let report = core::cluster_status(&observed, &outcome_of(&outcome), binding, Timestamp::now());
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
