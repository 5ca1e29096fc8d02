//! A Cluster's plan: the policy's pods, storage and archive settings (given the pods and
//! claims observed) planned as objects, with the restore of a recovery, the surplus pods and
//! the rollout gate; then the status from what was observed and done, with the policy's
//! phase and `Ready`. The controller calls the steps around its writes ([`planned`] before
//! applying, [`report`] after); a dry run calls [`cluster`], which chains them.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::{Resource, ResourceExt};
use pgwarden_core::cluster::{Health, health_facts};
use pgwarden_core::failover::{self, Election, SWITCHOVER_ANNOTATION};
use pgwarden_core::{
    self as core, ClusterReport, DesiredCondition, ObservedBackup, ObservedCluster, Outcome,
};
use pgwarden_crds::{Cluster, PolicyInForce};
use pgwarden_sdk::defaults;
use pgwarden_sdk::types::{ClaimFacts, Denial, Instance};

use super::Plan;
use crate::operator::apply;
use crate::operator::errors::Result;
use crate::operator::observe::{self, MissingSecret};
use crate::operator::registry::ChosenPolicy;
use crate::operator::rollout::{self, Decision, InstancePod, PodState};
use crate::operator::snapshot::Observe;
use pgwarden_core::plan::{
    self, Action, Bootstrap, ClusterDecisions, EventType, RecoveryWait, Restore, guardrails,
    reference,
};

/// The Cluster's instance pods as the policy sees them, by name.
pub fn instances(observed: &impl Observe, cluster: &Cluster) -> Vec<Instance> {
    let mut instances: Vec<Instance> = (observed.cluster_pods(cluster).iter())
        .map(|p| plan::instance(p))
        .collect();
    instances.sort_by(|a, b| a.name.cmp(&b.name));
    instances
}

/// The claims of the planned instances, as observed (to keep or grow them).
pub fn claims(observed: &impl Observe, cluster: &Cluster) -> Vec<Option<ClaimFacts>> {
    plan::instance_claims(cluster, |target| observed.observed(target))
}

/// The restore of a recovery Cluster, from the Backup it names and that Backup's Cluster.
fn restore(observed: &impl Observe, cluster: &Cluster) -> Result<Option<Restore>, RecoveryWait> {
    let ns = cluster.namespace().unwrap_or_default();
    let recovery = (cluster.spec.bootstrap.as_ref()).and_then(|b| b.recovery.as_ref());
    let backup =
        (recovery.and_then(|r| r.backup.as_ref())).and_then(|b| observed.backup(&ns, &b.name));
    let source = (backup.as_ref()).and_then(|b| observed.cluster(&ns, &b.spec.cluster.name));
    plan::recovery(cluster, backup.as_deref(), source.as_deref())
}

/// What the Cluster's reconcile applies (in order, the rollout gate passed), why a recovery
/// waits, and what the rollout does.
pub struct Planned {
    pub actions: Vec<Action>,
    pub waiting: Option<RecoveryWait>,
    pub rollout: Decision,
}

/// The objects `decisions` plan, checked by the guardrails.
pub fn planned(
    observed: &impl Observe,
    cluster: &Cluster,
    decisions: &ClusterDecisions,
    claims: &[Option<ClaimFacts>],
) -> Result<Planned> {
    let pods = observed.cluster_pods(cluster);
    let restore = restore(observed, cluster);
    let (bootstrap, waiting) = match &restore {
        Ok(r) => (Bootstrap::from_restore(r.as_ref()), None),
        // Bootstrapped already (its Backup since deleted, say): the pods stay as they are, as
        // a restore happens once.
        Err(_) if !pods.is_empty() => (Bootstrap::Waiting, None),
        Err(w) => (Bootstrap::Waiting, Some(w.clone())),
    };
    let mut actions = plan::plan_cluster_observed(cluster, decisions, bootstrap, claims)?;
    actions.extend(plan::surplus_pods(cluster, &pods));
    // Outdated pods are replaced one at a time, never under a running Backup.
    let (rollout, outdated) = rollout_of(observed, cluster, &actions);
    let mut actions = rollout::gate(actions, &rollout, &outdated);
    actions.extend(rollout::event(&rollout, reference(cluster)));
    guardrails::check(&plan::subject(cluster), &actions)?;
    Ok(Planned {
        actions,
        waiting,
        rollout,
    })
}

/// The rollout of the planned instance pods (see [`rollout`]): what it does now, and the
/// names of the outdated pods (live pods whose template changed since they were made).
fn rollout_of(
    observed: &impl Observe,
    cluster: &Cluster,
    actions: &[Action],
) -> (Decision, Vec<String>) {
    let pods: Vec<InstancePod> = actions
        .iter()
        .filter_map(|action| match action {
            Action::Apply { target, .. } if target.kind == "Pod" => {
                let live = observed.pod(target.namespace.as_deref()?, &target.name);
                let json = observed.observed(target);
                Some(InstancePod {
                    name: target.name.clone(),
                    state: live
                        .as_deref()
                        .map_or(PodState::Missing, observe::pod_state),
                    current: apply::step(action, json.as_ref()) != apply::Step::Recreate,
                })
            }
            _ => None,
        })
        .collect();
    let running = observe::running_backups(&observed.backups(), cluster);
    let decision = rollout::next(&pods, &running);
    let outdated = (pods.into_iter().filter(|p| !p.current))
        .map(|p| p.name)
        .collect();
    (decision, outdated)
}

/// What was observed of the Cluster, for the core: its spec and stored status, its pods,
/// its Backups and the credentials it lacks.
pub fn observed_cluster(
    observed: &impl Observe,
    cluster: &Cluster,
    missing: &[MissingSecret],
) -> ObservedCluster {
    let ns = cluster.namespace().unwrap_or_default();
    let pods: Vec<Arc<Pod>> = observed.cluster_pods(cluster);
    // The primary the agents report (instance 0 before any failover), not the pod's index.
    let instances = observe::instances(&pods, &failover::primary_pod(cluster));
    let status = cluster.status.clone().unwrap_or_default();
    let backups = (observed.backups_of(cluster).iter())
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
        phase: status.phase,
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
pub fn outcome_of(outcome: &Result<(ChosenPolicy, Option<RecoveryWait>, Decision)>) -> Outcome {
    match outcome {
        Ok((chosen, waiting, rollout)) => Outcome::Applied {
            policy: PolicyInForce {
                name: Some(chosen.name.clone()),
                digest: Some(chosen.policy.digest().to_string()),
            },
            waiting: (waiting.as_ref()).map(|w| (w.reason.to_string(), w.message.clone())),
            rollout: rollout.condition(),
        },
        Err(e) => Outcome::Failed {
            reason: e.reason().to_string(),
            message: e.to_string(),
        },
    }
}

/// The policy's phase and `Ready` of the Cluster (no policy to ask: the SDK's default
/// decides, as the default policy would; a failed call is the core's to report).
pub fn health(chosen: Option<&ChosenPolicy>, facts: &pgwarden_sdk::types::ClusterFacts) -> Health {
    let Some(chosen) = chosen else {
        return pgwarden_sdk::defaults::cluster_status(facts);
    };
    chosen.policy.cluster_health(facts).map_err(|e| {
        let reason = e.denial_reason().unwrap_or("PolicyFailed");
        Denial::new(reason, format!("policy {}: {e}", chosen.name))
    })
}

/// The Cluster's status and Warnings from what was observed and done.
pub fn report(
    observed: &impl Observe,
    chosen: Option<&ChosenPolicy>,
    cluster: &Cluster,
    input: (&Outcome, &[MissingSecret], DesiredCondition),
    now: Timestamp,
) -> ClusterReport {
    let (outcome, missing, binding) = input;
    let seen = observed_cluster(observed, cluster, missing);
    let facts = health_facts(cluster, instances(observed, cluster), &seen, outcome, now);
    let health = health(chosen, &facts);
    let mut report = core::cluster_status(&seen, outcome, &health, binding, now);
    let at = pgwarden_sdk::convert::from_jiff(now);
    report.elect(election(chosen, cluster, at), now);
    report
}

/// Who is to be the primary: the failover facts from the agents' reports, a switchover
/// request (annotation [`SWITCHOVER_ANNOTATION`], which the policy is not asked past), else
/// the policy's `failover` (no policy to ask: the SDK's default), checked by the core.
pub fn election(chosen: Option<&ChosenPolicy>, cluster: &Cluster, now: DateTime<Utc>) -> Election {
    let facts = failover::facts(cluster, now);
    let switchover = cluster.annotations().get(SWITCHOVER_ANNOTATION);
    let decided = match (switchover, chosen) {
        (Some(_), _) => Ok(None),
        (None, None) => defaults::failover(&facts, defaults::FAILOVER_DELAY_SECONDS),
        (None, Some(chosen)) => chosen.policy.failover(&facts).map_err(|e| {
            let reason = e.denial_reason().unwrap_or("PolicyFailed");
            Denial::new(reason, format!("policy {}: {e}", chosen.name))
        }),
    };
    failover::elect(&facts, switchover.map(String::as_str), decided)
}

/// The Warnings of a report, as Events on the Cluster.
pub fn warnings(cluster: &Cluster, report: &ClusterReport) -> Vec<Action> {
    (report.warnings.iter())
        .map(|w| Action::Event {
            regarding: reference(cluster),
            event_type: EventType::Warning,
            reason: w.reason.clone(),
            note: w.message.clone(),
        })
        .collect()
}

/// What a dry run needs besides the observed objects: the policy (or why none), the
/// credentials the Cluster lacks, its `PolicyAsRequested`, the time.
pub struct ClusterInput<'a> {
    pub chosen: Result<ChosenPolicy>,
    pub missing: &'a [MissingSecret],
    pub binding: DesiredCondition,
    pub now: DateTime<Utc>,
}

/// The whole plan of a Cluster, as its controller makes it, minus the check of names taken
/// by objects the Cluster does not control (which reads the API server).
pub fn cluster(observed: &impl Observe, cluster: &Cluster, input: ClusterInput<'_>) -> Plan {
    // The policy asked for the health even when its decisions failed, as the controller does.
    let asked = input.chosen.as_ref().ok().cloned();
    let decided = input.chosen.and_then(|chosen| {
        let (instances, claims) = (instances(observed, cluster), claims(observed, cluster));
        let decisions = chosen
            .policy
            .cluster_decisions(cluster, &instances, &claims)?;
        let planned = planned(observed, cluster, &decisions, &claims)?;
        Ok((chosen, planned))
    });
    let (mut plan, outcome) = match decided {
        Ok((chosen, p)) => (Plan::of(p.actions), Ok((chosen, p.waiting, p.rollout))),
        Err(e) => (Plan::default(), Err(e)),
    };
    let stamp = Timestamp::from_second(input.now.timestamp()).unwrap_or_default();
    let done = (&outcome_of(&outcome), input.missing, input.binding);
    let report = report(observed, asked.as_ref(), cluster, done, stamp);
    plan.events.extend(warnings(cluster, &report));
    plan.status = Some(serde_json::to_value(&report.status).unwrap_or_default());
    plan.requeue = Some(report.requeue_seconds);
    plan.error = outcome.err();
    plan
}
