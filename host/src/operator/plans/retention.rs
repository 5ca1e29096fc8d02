//! A Cluster's retention plan: which finished Backups the policy expires, the deletions asked
//! of the agent of the primary through the requests kept in the Cluster's settings ConfigMap,
//! the Backup status copies and Events (see [`pgwarden_core::plan::retention`]). The policy is
//! asked only when a Backup has finished; nothing to do is `None`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;
use pgwarden_crds::condition_types::RETENTION_APPLIED;
use pgwarden_crds::settings::pod::LABEL_ROLE;
use pgwarden_crds::{Backup, Cluster};
use pgwarden_sdk::names;
use serde_json::{Value, json};

use super::Plan;
use crate::operator::errors::{Error, Result};
use crate::operator::registry::ChosenPolicy;
use crate::operator::snapshot::Observe;
use pgwarden_core::plan::retention::{self, Request, requests};
use pgwarden_core::plan::{self, Action, GuardrailError, ObjectRef, RetentionInput, guardrails};

/// How often a Cluster with a retention policy is looked at when nothing happens (Backups age
/// without any event).
pub const RECHECK: Duration = Duration::from_secs(3600);

/// What one retention reconcile writes: the requests (into `settings`, when they changed),
/// then the plan's Backup writes and Events.
pub struct Retained {
    pub plan: Plan,
    /// The Cluster's settings ConfigMap as observed (`None` until the Cluster made it).
    pub settings: Option<ConfigMap>,
    pub requests: Vec<Request>,
}

impl Retained {
    /// The requests as the text to write, when it differs from the one stored.
    pub fn changed_requests(&self) -> Option<(&ConfigMap, String)> {
        let cm = self.settings.as_ref()?;
        let text = requests::render(&self.requests);
        (request_text(cm).unwrap_or("[]") != text).then_some((cm, text))
    }

    /// The plan as a dry run prints it: the requests' write first.
    pub fn into_plan(self) -> Plan {
        let write = self.changed_requests().map(|(cm, text)| Action::Apply {
            target: ObjectRef {
                api_version: "v1".into(),
                kind: "ConfigMap".into(),
                namespace: cm.namespace(),
                name: cm.name_any(),
            },
            object: json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": cm.name_any(), "namespace": cm.namespace()},
                "data": {requests::KEY: text}}),
        });
        let mut plan = self.plan;
        plan.actions.splice(0..0, write);
        plan
    }
}

/// The server-side apply of the retention's condition on the Cluster `target`, taken from a
/// reported `status`: the `RetentionApplied` entry alone of the list map `status.conditions`
/// (keyed by type), so that the retention's field manager owns that condition only and the
/// Cluster controller's apply owns the others.
pub fn condition_apply(target: &ObjectRef, status: &Value) -> Value {
    let own: Vec<&Value> = (status["conditions"].as_array().into_iter().flatten())
        .filter(|c| c["type"] == RETENTION_APPLIED)
        .collect();
    json!({
        "apiVersion": target.api_version, "kind": target.kind,
        "metadata": {"name": target.name},
        "status": {"conditions": own},
    })
}

pub fn request_text(cm: &ConfigMap) -> Option<&str> {
    cm.data.as_ref()?.get(requests::KEY).map(String::as_str)
}

/// A refusal to use `cm`, naming it.
pub fn invalid(cm: &ConfigMap, detail: String) -> Error {
    let object = format!(
        "ConfigMap {}/{}",
        cm.namespace().unwrap_or_default(),
        cm.name_any()
    );
    Error::Guardrail(GuardrailError::Invalid { object, detail })
}

/// The Cluster's settings ConfigMap, where its deletion requests are kept. One the Cluster
/// does not own (someone else's object under that name) is refused: never written into.
fn settings_of(observed: &impl Observe, cluster: &Cluster) -> Result<Option<ConfigMap>> {
    let target = ObjectRef {
        api_version: "v1".into(),
        kind: "ConfigMap".into(),
        namespace: cluster.namespace(),
        name: names::settings_config_map(&cluster.name_any()),
    };
    let Some(cm) = observed.observed(&target) else {
        return Ok(None);
    };
    let cm: ConfigMap = serde_json::from_value(cm).unwrap_or_default();
    let owned =
        (cm.owner_references().iter()).any(|o| Some(&o.uid) == cluster.metadata.uid.as_ref());
    if !owned {
        let detail = format!(
            "it is not owned by Cluster {}: no deletion is asked through it",
            cluster.name_any()
        );
        return Err(invalid(&cm, detail));
    }
    Ok(Some(cm))
}

/// The pod whose agent deletes backups: the Cluster's primary, if it has one.
fn primary(observed: &impl Observe, cluster: &Cluster) -> Option<String> {
    (observed.cluster_pods(cluster).iter())
        .find(|p| p.labels().get(LABEL_ROLE).map(String::as_str) == Some("primary"))
        .map(|p| p.name_any())
}

/// The retention of `cluster` at `now`, decided by `chosen` (asked only when a Backup has
/// finished); `None`: nothing finished and no deletion under way.
pub fn retention(
    observed: &impl Observe,
    chosen: Result<ChosenPolicy>,
    cluster: &Cluster,
    now: DateTime<Utc>,
) -> Result<Option<Retained>> {
    let backups: Vec<Backup> = (observed.backups_of(cluster).iter())
        .map(|b| (**b).clone())
        .collect();
    let settings = settings_of(observed, cluster)?;
    let asked = match &settings {
        Some(cm) => requests::parse(request_text(cm)).map_err(|detail| invalid(cm, detail))?,
        None => Vec::new(),
    };
    let live = retention::candidates_with(cluster, &backups, &asked);
    let finished = (live.iter()).any(|b| {
        b.status
            .as_ref()
            .and_then(|s| s.phase)
            .is_some_and(|p| p.is_final())
    });
    if !finished && !retention::in_flight_with(cluster, &backups, &asked) {
        return Ok(None);
    }
    let expired = match finished {
        true => chosen?.policy.retention(cluster, &live, now)?,
        false => Vec::new(),
    };
    let pod = primary(observed, cluster);
    let input = RetentionInput {
        cluster,
        backups: &backups,
        expired: &expired,
        agent_pod: pod.as_deref(),
        now,
    };
    let restores: Vec<_> = (observed.clusters().iter())
        .filter_map(|c| retention::floor::Restore::of(c))
        .collect();
    let planned = retention::plan_requested(&input, &restores, &asked);
    for action in &planned.actions {
        let subject = plan::retention_subject(cluster, &backups, action);
        guardrails::check_one(&subject, action)?;
    }
    let mut plan = Plan::of(planned.actions);
    let has_policy = (cluster.spec.backup.as_ref()).is_some_and(|b| b.retention_policy.is_some());
    plan.requeue = plan.requeue.or(has_policy.then_some(RECHECK.as_secs()));
    Ok(Some(Retained {
        plan,
        settings,
        requests: planned.requests,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_condition_apply_holds_the_retentions_condition_alone() {
        let target = ObjectRef {
            api_version: "postgresql.k8s.2ndq.io/v1alpha1".into(),
            kind: "Cluster".into(),
            namespace: Some("ns".into()),
            name: "pg".into(),
        };
        let status = json!({"conditions": [
            {"type": "Ready", "status": "True"},
            {"type": "RetentionApplied", "status": "False", "reason": "RetentionFailed"},
        ]});
        let body = condition_apply(&target, &status);
        assert_eq!(
            body["status"],
            json!({"conditions": [
                {"type": "RetentionApplied", "status": "False", "reason": "RetentionFailed"}
            ]})
        );
        assert_eq!(body["metadata"], json!({"name": "pg"}));
        assert_eq!(body["kind"], "Cluster");
    }
}
