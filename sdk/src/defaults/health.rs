//! The Cluster's phase and `Ready` condition from what the host observed: what counts as
//! healthy, set up or degraded.

use pgwarden_crds::MAX_INSTANCES;

use crate::policy::Decided;
use crate::types::{ClusterFacts, ClusterHealth, ConditionDecision, Denial};

/// The reason of a reconcile failure because one of the Cluster's names is taken by an
/// object it does not control: it makes the Cluster not Ready.
pub const NAME_IN_USE: &str = "NameInUse";

/// Phases the default reports.
pub mod phase {
    pub const POLICY_NOT_APPLIED: &str = "Policy not applied";
    pub const WAITING_FOR_RECOVERY: &str = "Waiting for the backup to recover from";
    pub const HEALTHY: &str = "Cluster in healthy state";
    pub const SETTING_UP: &str = "Setting up instances";
}

/// The seed's health: a failed reconcile is "Policy not applied", a recovery that cannot
/// start yet says so, else healthy once `spec.instances` pods are ready. `Ready` is False
/// with the recovery's or the name clash's reason, else counts the ready pods. Missing
/// Secrets do not make a Cluster unready (`ContinuousArchiving` reports them).
pub fn cluster_status(facts: &ClusterFacts) -> Decided<ClusterHealth> {
    let wanted = facts.cluster.spec.instances;
    let ready_pods = facts.instances.iter().filter(|i| i.ready).count() as i32;
    let phase = match (&facts.failure, &facts.waiting) {
        (Some(_), _) => phase::POLICY_NOT_APPLIED,
        (None, Some(_)) => phase::WAITING_FOR_RECOVERY,
        (None, None) if ready_pods >= wanted => phase::HEALTHY,
        (None, None) => phase::SETTING_UP,
    };
    let blocked = facts
        .failure
        .as_ref()
        .filter(|f| f.reason == NAME_IN_USE)
        .or(facts.waiting.as_ref().filter(|_| facts.failure.is_none()));
    let ready = match blocked {
        Some(Denial { reason, message }) => ConditionDecision {
            status: false,
            reason: reason.clone(),
            message: message.clone(),
        },
        None => readiness(wanted, ready_pods),
    };
    Ok(ClusterHealth {
        phase: phase.into(),
        ready,
    })
}

/// `Ready` from the instance pods: `ready` of `wanted` (`spec.instances`).
pub fn readiness(wanted: i32, ready: i32) -> ConditionDecision {
    if wanted > MAX_INSTANCES {
        // A spec stored before admission refused it: say why fewer instances run.
        return ConditionDecision {
            status: false,
            reason: "TooManyInstances".into(),
            message: format!(
                "spec.instances is {wanted} but at most {MAX_INSTANCES} instances run ({ready} ready)"
            ),
        };
    }
    ConditionDecision {
        status: ready >= wanted,
        reason: if ready >= wanted {
            "InstancesReady"
        } else {
            "InstancesNotReady"
        }
        .into(),
        message: format!("{ready} of {wanted} instances ready"),
    }
}
