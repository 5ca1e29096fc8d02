//! Facts the host observes on instance pods and their claims, as the policy's wire types:
//! what a Backup's transition, the choice of its instance and an instance's storage are
//! decided from. Pure: the caller brings the pods and claims (the operator from its caches,
//! `pgwarden policy eval` from files).

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use pgwarden_crds::Cluster;
use pgwarden_crds::settings::pod as conventions;
use pgwarden_sdk::names;
use pgwarden_sdk::types::{ClaimFacts, Instance, PodFacts, Role};
use serde_json::Value;

use super::actions::ObjectRef;

/// What the host observes about a pod, for backup transitions.
pub fn pod_facts(pod: &Pod) -> PodFacts {
    let status = pod.status.clone().unwrap_or_default();
    let ready = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    let container = status
        .container_statuses
        .iter()
        .flatten()
        .find(|c| c.name == conventions::CONTAINER)
        .cloned();
    let started = container.as_ref().and_then(|c| {
        c.state
            .as_ref()?
            .running
            .as_ref()?
            .started_at
            .as_ref()
            .map(|t| t.0)
    });
    PodFacts {
        name: pod.metadata.name.clone().unwrap_or_default(),
        phase: status.phase.unwrap_or_else(|| "Unknown".into()),
        ready,
        restart_count: container.map_or(0, |c| c.restart_count.max(0) as u32),
        container_started_at: started.map(pgwarden_sdk::convert::from_jiff),
    }
}

/// An instance pod as the policy sees it: primary when labelled so, else a replica.
pub fn instance(pod: &Pod) -> Instance {
    let role = pod
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(conventions::LABEL_ROLE));
    let facts = pod_facts(pod);
    Instance {
        name: facts.name,
        role: if role.map(String::as_str) == Some("primary") {
            Role::Primary
        } else {
            Role::Replica
        },
        ready: facts.ready,
    }
}

/// An instance's claim as the policy sees it: its name, the storage it asks for
/// (`spec.resources.requests.storage`, as the API server stores it) and its class.
pub fn claim_facts(claim: &PersistentVolumeClaim) -> ClaimFacts {
    let spec = claim.spec.clone().unwrap_or_default();
    let size = spec
        .resources
        .and_then(|r| r.requests)
        .and_then(|mut r| r.remove("storage"))
        .map(|q| q.0)
        .unwrap_or_default();
    ClaimFacts {
        name: claim.metadata.name.clone().unwrap_or_default(),
        size,
        storage_class: spec.storage_class_name,
    }
}

/// The planned instances' claims as observed: `[i]` is instance `i`'s, `None` when `live` (the
/// live object a target names, as JSON: the operator's caches, a dry run's files) has none.
pub fn instance_claims(
    cluster: &Cluster,
    live: impl Fn(&ObjectRef) -> Option<Value>,
) -> Vec<Option<ClaimFacts>> {
    let name = cluster.metadata.name.as_deref().unwrap_or_default();
    (0..super::planned_instances(cluster))
        .map(|i| {
            let target = ObjectRef {
                api_version: "v1".into(),
                kind: "PersistentVolumeClaim".into(),
                namespace: cluster.metadata.namespace.clone(),
                name: names::instance(name, i),
            };
            let claim = serde_json::from_value(live(&target)?).ok()?;
            Some(claim_facts(&claim))
        })
        .collect()
}
