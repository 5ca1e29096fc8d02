//! Status conditions as data: set one, keep the transition time when nothing changed.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

/// A condition as the reconcile wants it set: type, status, reason and message (its
/// transition time is kept when nothing changed, see [`set`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredCondition {
    pub type_: &'static str,
    pub ok: bool,
    pub reason: String,
    pub message: String,
}

impl DesiredCondition {
    pub fn ok(type_: &'static str, reason: impl Into<String>, message: impl Into<String>) -> Self {
        DesiredCondition {
            type_,
            ok: true,
            reason: reason.into(),
            message: message.into(),
        }
    }

    pub fn failed(
        type_: &'static str,
        reason: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        DesiredCondition {
            type_,
            ok: false,
            reason: reason.into(),
            message: message.into(),
        }
    }
}

/// `conditions` with `wanted` set: a condition whose status did not change keeps its
/// `lastTransitionTime`, so a steady state yields the same list (and no write).
pub fn set(
    conditions: &[Condition],
    wanted: &DesiredCondition,
    generation: Option<i64>,
    now: Timestamp,
) -> Vec<Condition> {
    let status = if wanted.ok { "True" } else { "False" };
    let previous = conditions.iter().find(|c| c.type_ == wanted.type_);
    let transition = match previous {
        Some(c) if c.status == status => c.last_transition_time.clone(),
        _ => Time(now),
    };
    let updated = Condition {
        type_: wanted.type_.to_string(),
        status: status.to_string(),
        reason: wanted.reason.clone(),
        message: wanted.message.clone(),
        observed_generation: generation,
        last_transition_time: transition,
    };
    let mut out: Vec<Condition> = conditions
        .iter()
        .filter(|c| c.type_ != wanted.type_)
        .cloned()
        .collect();
    out.push(updated);
    out.sort_by(|a, b| a.type_.cmp(&b.type_));
    out
}

/// `conditions` without those of type `type_`: what a writer applies when another writer
/// owns that condition (an entry of the list map `status.conditions` keyed by type), so that
/// each condition has one owner and a stale copy never fights the owner's value.
pub fn without(conditions: &[Condition], type_: &str) -> Vec<Condition> {
    (conditions.iter())
        .filter(|c| c.type_ != type_)
        .cloned()
        .collect()
}

/// Sets every wanted condition in turn.
pub fn set_all(
    conditions: &[Condition],
    wanted: &[DesiredCondition],
    generation: Option<i64>,
    now: Timestamp,
) -> Vec<Condition> {
    wanted
        .iter()
        .fold(conditions.to_vec(), |acc, w| set(&acc, w, generation, now))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(seconds).unwrap()
    }

    #[test]
    fn unchanged_status_keeps_transition_time() {
        let first = set(
            &[],
            &DesiredCondition::ok("Ready", "Running", "1 of 1 ready"),
            Some(1),
            at(100),
        );
        let again = set(
            &first,
            &DesiredCondition::ok("Ready", "Running", "1 of 1 ready"),
            Some(1),
            at(200),
        );
        assert_eq!(first, again);
    }

    #[test]
    fn changed_status_moves_transition_time() {
        let first = set(
            &[],
            &DesiredCondition::ok("Ready", "Running", "ok"),
            None,
            at(100),
        );
        let down = set(
            &first,
            &DesiredCondition::failed("Ready", "PodFailed", "pod gone"),
            None,
            at(200),
        );
        assert_eq!(down[0].last_transition_time, Time(at(200)));
        assert_eq!(down[0].status, "False");
        assert_eq!(down[0].reason, "PodFailed");
    }

    #[test]
    fn without_leaves_out_one_type_only() {
        let wanted = [
            DesiredCondition::ok("Ready", "R", ""),
            DesiredCondition::ok("RetentionApplied", "A", ""),
        ];
        let all = set_all(&[], &wanted, None, at(1));
        let types: Vec<_> = (without(&all, "RetentionApplied").into_iter())
            .map(|c| c.type_)
            .collect();
        assert_eq!(types, ["Ready"]);
    }

    #[test]
    fn other_conditions_are_kept_sorted() {
        let wanted = [
            DesiredCondition::ok("Ready", "R", ""),
            DesiredCondition::failed("ContinuousArchiving", "Failing", "x"),
        ];
        let all = set_all(&[], &wanted, None, at(1));
        let types: Vec<_> = all.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(types, ["ContinuousArchiving", "Ready"]);
        let status: Vec<_> = all.iter().map(|c| c.status.as_str()).collect();
        assert_eq!(status, ["False", "True"]);
    }
}
