//! The Cluster controller: asks the Cluster's policy for its pods and archive settings, plans
//! the objects, checks them against the guardrails, applies what differs, and reports
//! `Ready`, `ContinuousArchiving`, `LastBackupSucceeded` and `PolicyApplied`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action as Requeue;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use pgwarden_crds::settings::pod::LABEL_CLUSTER;
use pgwarden_crds::{ArchiveStatus, BackupPhase, Cluster, condition_types as types};
use pgwarden_sdk::names;
use serde_json::json;
use tracing::{instrument, warn};

use super::apply;
use super::conditions::{self, Wanted};
use super::context::Context;
use super::errors::{Error, Result};
use super::observe::{self, Instances, MissingSecret};
use super::registry::Named;
use super::rollout::{self, Decision, InstancePod, PodState};
use crate::plan::{
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
) -> Result<(Named, Option<RecoveryWait>, Decision)> {
    let named = ctx.policies.for_cluster(cluster)?;
    let input = cluster.clone();
    let started = Instant::now();
    let decisions = named.policy.run(move |p| p.cluster_decisions(&input)).await;
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
    Ok((named, waiting, rollout))
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

/// `ContinuousArchiving` from the agent's facts.
pub fn archiving(archive: Option<&ArchiveStatus>) -> Wanted {
    let Some(a) = archive else {
        return Wanted::failed(
            types::CONTINUOUS_ARCHIVING,
            "WaitingForFirstReport",
            "the primary's agent has not reported WAL archiving yet",
        );
    };
    let failed_last = match (&a.last_failed_time, &a.last_archived_time) {
        (Some(failed), Some(archived)) => failed > archived,
        (Some(_), None) => true,
        _ => false,
    };
    if a.destination_checked == Some(false) || failed_last {
        let wal = a.last_failed_wal.as_deref().unwrap_or("a WAL file");
        let why = a.last_failure.as_deref().unwrap_or("no detail reported");
        let waiting = a.ready_segments.unwrap_or(0);
        return Wanted::failed(
            types::CONTINUOUS_ARCHIVING,
            "ArchiveFailing",
            format!(
                "archiving {wal} failed: {why}; {waiting} WAL files wait, kept by PostgreSQL until archived"
            ),
        );
    }
    if a.last_archived_time.is_none() && a.last_archived_wal.is_none() {
        return Wanted::failed(
            types::CONTINUOUS_ARCHIVING,
            "WaitingForFirstArchive",
            "no WAL file has been archived yet: PostgreSQL hands one over when a segment fills, \
             on a backup, or after archive_timeout",
        );
    }
    Wanted::ok(
        types::CONTINUOUS_ARCHIVING,
        "Archiving",
        "WAL files are archived to the object store",
    )
}

/// `ContinuousArchiving` when credentials are missing.
fn secrets_missing(missing: &[MissingSecret], namespace: &str) -> Wanted {
    let message = missing
        .iter()
        .map(|m| m.message(namespace))
        .collect::<Vec<_>>()
        .join("; ");
    Wanted::failed(types::CONTINUOUS_ARCHIVING, "SecretNotFound", message)
}

/// `Ready` from the instance pods.
pub fn readiness(wanted: i32, instances: &Instances) -> Wanted {
    if wanted > plan::MAX_INSTANCES {
        // A spec stored before admission refused it: say why only one instance runs.
        return Wanted::failed(
            types::READY,
            "TooManyInstances",
            format!(
                "spec.instances is {wanted} but at most {} instance runs until streaming standbys exist: more would be unrelated databases archiving into one destination ({} ready)",
                plan::MAX_INSTANCES,
                instances.ready
            ),
        );
    }
    let message = format!("{} of {wanted} instances ready", instances.ready);
    if instances.ready >= wanted {
        Wanted::ok(types::READY, "InstancesReady", message)
    } else {
        Wanted::failed(types::READY, "InstancesNotReady", message)
    }
}

/// `PolicyApplied` from the outcome of the decisions.
fn applied(outcome: &Result<(Named, Option<RecoveryWait>, Decision)>) -> Wanted {
    match outcome {
        Ok((named, _, _)) => Wanted::ok(
            types::POLICY_APPLIED,
            "Applied",
            format!(
                "decisions of policy {} (sha256:{}) applied",
                named.name,
                named.policy.digest()
            ),
        ),
        Err(e) => Wanted::failed(types::POLICY_APPLIED, e.reason(), e.to_string()),
    }
}

/// The newest completed and failed Backups of the Cluster.
fn last_backups(
    ctx: &Context,
    cluster: &Cluster,
) -> (Option<String>, Option<String>, Option<Wanted>) {
    let (ns, name) = (cluster.namespace(), cluster.name_any());
    let mut ended: Vec<_> = ctx
        .stores
        .backups
        .state()
        .into_iter()
        .filter(|b| b.namespace() == ns && b.spec.cluster.name == name)
        .filter_map(|b| {
            let status = b.status.clone()?;
            let phase = status.phase.filter(|p| p.is_final())?;
            Some((
                status.stopped_at.unwrap_or_default(),
                b.name_any(),
                phase,
                status.message.unwrap_or_default(),
            ))
        })
        .collect();
    ended.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    let last_of = |phase: BackupPhase| {
        ended
            .iter()
            .rev()
            .find(|e| e.2 == phase)
            .map(|e| e.1.clone())
    };
    let condition = ended.last().map(|(_, backup, phase, message)| match phase {
        BackupPhase::Completed => Wanted::ok(
            types::LAST_BACKUP_SUCCEEDED,
            "BackupCompleted",
            format!("Backup {backup} completed"),
        ),
        _ => Wanted::failed(
            types::LAST_BACKUP_SUCCEEDED,
            "BackupFailed",
            format!("Backup {backup} failed: {message}"),
        ),
    });
    (
        last_of(BackupPhase::Completed),
        last_of(BackupPhase::Failed),
        condition,
    )
}

#[instrument(skip(cluster, ctx), fields(cluster = %cluster.name_any(), namespace = cluster.namespace().unwrap_or_default()))]
pub async fn reconcile(cluster: Arc<Cluster>, ctx: Arc<Context>) -> Result<Requeue> {
    ctx.metrics.reconciled("Cluster");
    let (ns, name) = (cluster.namespace().unwrap_or_default(), cluster.name_any());
    let now = Timestamp::now();
    let outcome = decide_and_apply(&cluster, &ctx).await;
    if let Err(Error::Kube(e)) = outcome {
        return Err(Error::Kube(e));
    }
    let missing = ctx.missing_secrets(&cluster).await?;
    let pods = cluster_pods(&cluster, &ctx);
    let instances = observe::instances(&pods, &names::instance(&name, 0));
    let status = cluster.status.clone().unwrap_or_default();
    let archiving = match (&cluster.spec.backup, missing.is_empty()) {
        (None, _) => Wanted::failed(
            types::CONTINUOUS_ARCHIVING,
            "NotConfigured",
            "spec.backup is not set: WAL is not archived",
        ),
        (Some(_), false) => secrets_missing(&missing, &ns),
        (Some(_), true) => archiving(status.archive.as_ref()),
    };
    let (last_ok, last_failed, last_backup) = last_backups(&ctx, &cluster);
    let waiting = outcome.as_ref().ok().and_then(|(_, w, _)| w.clone());
    let rollout = outcome.as_ref().ok().map(|(_, _, r)| r.clone());
    let ready = match (&waiting, &outcome) {
        (Some(w), _) => Wanted::failed(types::READY, w.reason, w.message.clone()),
        (_, Err(e @ Error::NameInUse(_))) => {
            Wanted::failed(types::READY, e.reason(), e.to_string())
        }
        _ => readiness(cluster.spec.instances, &instances),
    };
    let bound = ctx.policies.as_requested(&cluster);
    let mut wanted = vec![ready, archiving, applied(&outcome), bound];
    wanted.extend(last_backup);
    wanted.extend(rollout.as_ref().map(Decision::condition));
    let generation = cluster.meta().generation;
    let conditions = conditions::set_all(&status.conditions, &wanted, generation, now);
    let phase = match (&outcome, instances.ready >= cluster.spec.instances) {
        (Err(_), _) => "Policy not applied",
        (Ok((_, Some(_), _)), _) => "Waiting for the backup to recover from",
        (Ok(_), true) => "Cluster in healthy state",
        (Ok(_), false) => "Setting up instances",
    };
    let policy = outcome
        .as_ref()
        .ok()
        .map(|(n, _, _)| json!({"name": n.name, "digest": n.policy.digest()}));
    let patch = json!({
        "phase": phase,
        "instances": instances.total,
        "readyInstances": instances.ready,
        "currentPrimary": instances.primary,
        "conditions": conditions,
        "policy": policy,
        "lastSuccessfulBackup": last_ok,
        "lastFailedBackup": last_failed,
        "observedGeneration": generation,
    });
    let mut actions = vec![Action::PatchStatus {
        target: reference(&*cluster),
        status: patch,
    }];
    actions.extend(events(&status.conditions, &wanted, &cluster));
    apply::apply(&ctx, &actions).await?;
    match outcome {
        Err(e) => {
            warn!(error = %e, "cluster not reconciled");
            ctx.metrics.failed("Cluster", e.metric_label());
            Ok(Requeue::requeue(Duration::from_secs(30)))
        }
        Ok(_)
            if !missing.is_empty()
                || waiting.is_some()
                || rollout.as_ref().is_some_and(Decision::pending) =>
        {
            Ok(Requeue::requeue(Duration::from_secs(10)))
        }
        Ok(_) => Ok(Requeue::requeue(Duration::from_secs(300))),
    }
}

/// A Warning Event for each condition that turns False or changes its failure message.
fn events(
    before: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    wanted: &[Wanted],
    cluster: &Cluster,
) -> Vec<Action> {
    // One Event for a failure two conditions report (NameInUse: Ready and PolicyApplied).
    let mut seen = std::collections::BTreeSet::new();
    wanted
        .iter()
        .filter(|w| !w.ok)
        .filter(|w| seen.insert((&w.reason, &w.message)))
        .filter(|w| {
            !before
                .iter()
                .any(|c| c.type_ == w.type_ && c.status == "False" && c.message == w.message)
        })
        .filter(|w| w.reason != "WaitingForFirstReport" && w.reason != "InstancesNotReady")
        // A rollout under way is no failure: its own Normal Event says which pod goes.
        .filter(|w| w.type_ != types::PODS_UP_TO_DATE)
        .map(|w| Action::Event {
            regarding: reference(cluster),
            event_type: EventType::Warning,
            reason: w.reason.clone(),
            note: w.message.clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archiving_condition_follows_the_facts() {
        assert!(!archiving(None).ok);
        let nothing_yet = ArchiveStatus {
            archived_count: Some(0),
            failed_count: Some(0),
            ..Default::default()
        };
        let w = archiving(Some(&nothing_yet));
        assert!(!w.ok);
        assert_eq!(w.reason, "WaitingForFirstArchive");
        let healthy = ArchiveStatus {
            last_archived_time: Some("2026-11-25T10:00:00Z".into()),
            ..Default::default()
        };
        assert!(archiving(Some(&healthy)).ok);
        let failing = ArchiveStatus {
            last_archived_time: Some("2026-11-25T10:00:00Z".into()),
            last_failed_time: Some("2026-11-25T10:01:00Z".into()),
            last_failed_wal: Some("000000010000000000000007".into()),
            last_failure: Some("the object store is unreachable".into()),
            ready_segments: Some(3),
            ..Default::default()
        };
        let w = archiving(Some(&failing));
        assert!(!w.ok);
        assert_eq!(w.reason, "ArchiveFailing");
        assert!(
            w.message.contains("000000010000000000000007")
                && w.message.contains("unreachable")
                && w.message.contains("3 WAL files wait"),
            "{}",
            w.message
        );
    }

    #[test]
    fn readiness_counts_ready_instances() {
        let none = Instances {
            total: 1,
            ready: 0,
            primary: None,
        };
        let one = Instances {
            total: 1,
            ready: 1,
            primary: None,
        };
        assert_eq!(readiness(1, &none).message, "0 of 1 instances ready");
        assert!(!readiness(1, &none).ok);
        assert!(readiness(1, &one).ok);
    }

    #[test]
    fn a_stored_spec_above_the_instance_limit_is_never_ready() {
        let one = Instances {
            total: 1,
            ready: 1,
            primary: None,
        };
        let wanted = readiness(3, &one);
        assert!(!wanted.ok);
        assert_eq!(wanted.reason, "TooManyInstances");
        assert!(
            wanted.message.contains("spec.instances is 3"),
            "{}",
            wanted.message
        );
    }
}
