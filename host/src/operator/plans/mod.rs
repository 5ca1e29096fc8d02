//! Per kind, one function from what is observed to what the operator writes: observe (an
//! [`Observe`]: the operator's caches or a dry run's snapshot) → decide (the policy) → core
//! (planner, guardrails, status) → [`Plan`]. The controllers apply the plan; `pgwarden policy
//! eval` prints it. Nothing here writes or reads the API server.
//!
//! ```text
//!   Observe ─► backup / scheduled / cluster / retention ─► Plan { actions, status, events, requeue }
//!                        │                          ├─► controller: apply, apply_status
//!                     Policy                        └─► policy eval: print
//! ```

pub mod backup;
pub mod cluster;
pub mod retention;

pub mod scheduled;

use serde_json::Value;

use super::apply;
use super::errors::Error;
use super::generated;
use super::snapshot::Observe;
use pgwarden_core::plan::Action;

pub use backup::backup;
pub use cluster::{ClusterInput, cluster};
pub use retention::retention;

pub use scheduled::scheduled;

/// The write `action` needs against what is observed, as the applier would decide it: a
/// generated Secret is only ever created (see `operator::generated`), anything else as
/// [`apply::step`] says.
fn change(action: &Action, observed: &impl Observe) -> String {
    if let Action::Apply { target, object } = action
        && generated::generated_key(target, object).is_some()
    {
        let ns = target.namespace.as_deref().unwrap_or_default();
        return match observed.secret_exists(ns, &target.name) {
            Some(true) => "nothing".into(),
            _ => "create".into(),
        };
    }
    let live = action.target().and_then(|t| observed.observed(t));
    format!("{:?}", apply::step(action, live.as_ref())).to_lowercase()
}

/// What one reconcile of one object writes, and when it comes back.
#[derive(Debug, Default)]
pub struct Plan {
    /// The object writes, in order: applies, deletions, status patches of other objects.
    pub actions: Vec<Action>,
    /// The object's own whole status, applied under the operator's manager (`None`: the
    /// reconcile leaves it as it is).
    pub status: Option<Value>,
    /// Events, told after the writes.
    pub events: Vec<Action>,
    /// Come back after this many seconds (`None`: only when something changes).
    pub requeue: Option<u64>,
    /// The failure told in the status and events, handed to the controller's backoff.
    pub error: Option<Error>,
}

impl Plan {
    /// Splits planned actions into writes, events and the requeue they ask for.
    pub fn of(actions: Vec<Action>) -> Plan {
        let requeue = apply::requeue(&actions);
        let (events, actions): (Vec<_>, Vec<_>) = actions
            .into_iter()
            .filter(|a| !matches!(a, Action::Requeue { .. }))
            .partition(|a| matches!(a, Action::Event { .. }));
        Plan {
            actions,
            events,
            requeue,
            ..Plan::default()
        }
    }

    /// The plan as `policy eval` prints it: each action with the write it needs against
    /// `observed` (`none` on a settled object).
    pub fn to_json(&self, observed: &impl Observe) -> Value {
        let actions: Vec<Value> = (self.actions.iter())
            .map(|a| {
                let mut v = serde_json::to_value(a).unwrap_or_default();
                v["change"] = change(a, observed).into();
                v
            })
            .collect();
        let mut out = serde_json::json!({
            "actions": actions,
            "status": self.status,
            "events": self.events,
            "requeueSeconds": self.requeue,
        });
        if let Some(e) = &self.error {
            out["error"] = serde_json::json!({"reason": e.reason(), "message": e.to_string()});
        }
        out
    }
}
