//! Facts the host observes on instance pods, as the policy's wire types: what a Backup's
//! transition and the choice of its instance are decided from. Pure: the caller brings the
//! pods (the operator from its caches, `pgwarden policy eval` from files).

use k8s_openapi::api::core::v1::Pod;
use pgwarden_crds::settings::pod as conventions;
use pgwarden_sdk::types::{Instance, PodFacts, Role};

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
