//! The ReconcilePolicy's status: what the load of its module gave, the module in force, and
//! the `Ready` condition. Always the whole status: it is written by server-side apply, which
//! removes what an apply leaves out (`lastError` once a module loads).

use k8s_openapi::jiff::Timestamp;
use pgwarden_crds::ReconcilePolicyStatus;

use crate::conditions::{self, DesiredCondition};

/// What loading the policy's module gave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Load {
    /// The module with this sha256 `digest`, exporting ABI `abi`, is in force.
    InForce { digest: String, abi: String },
    /// The module did not load: the error's `reason` (a condition reason) and its text.
    Failed { reason: String, error: String },
}

/// The status and the `Ready` condition it carries; the condition is also what the
/// controller tells in an Event when the status changes (Normal when ready, else Warning).
#[derive(Clone, Debug, PartialEq)]
pub struct PolicyReport {
    pub status: ReconcilePolicyStatus,
    pub ready: DesiredCondition,
}

/// `before` is the stored status. A failed load keeps the module in force (its digest, ABI
/// and load time) and says which stays; a load of the digest in force keeps its load time.
pub fn policy_status(
    before: &ReconcilePolicyStatus,
    load: &Load,
    generation: Option<i64>,
    now: Timestamp,
) -> PolicyReport {
    let (status, ready) = match load {
        Load::InForce { digest, abi } => in_force(before, digest, abi, now),
        Load::Failed { reason, error } => failed(before, reason, error),
    };
    let status = ReconcilePolicyStatus {
        observed_generation: generation,
        conditions: conditions::set(&before.conditions, &ready, generation, now),
        ..status
    };
    PolicyReport { status, ready }
}

fn in_force(
    before: &ReconcilePolicyStatus,
    digest: &str,
    abi: &str,
    now: Timestamp,
) -> (ReconcilePolicyStatus, DesiredCondition) {
    let loaded_at = if before.digest.as_deref() == Some(digest) {
        before.loaded_at.clone()
    } else {
        Some(now.to_string())
    };
    let message = format!("module sha256:{digest} (ABI {abi}) is in force");
    let status = ReconcilePolicyStatus {
        digest: Some(digest.to_string()),
        abi_version: Some(abi.to_string()),
        last_error: None,
        loaded_at,
        ..Default::default()
    };
    (
        status,
        DesiredCondition::ok("Ready", "ModuleLoaded", message),
    )
}

fn failed(
    before: &ReconcilePolicyStatus,
    reason: &str,
    error: &str,
) -> (ReconcilePolicyStatus, DesiredCondition) {
    let stays = before.digest.as_deref().unwrap_or("none");
    let message = format!("{error}; the module in force stays {stays}");
    let status = ReconcilePolicyStatus {
        last_error: Some(message.clone()),
        ..before.clone()
    };
    (status, DesiredCondition::failed("Ready", reason, message))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(seconds).unwrap()
    }

    fn loaded(digest: &str) -> Load {
        Load::InForce {
            digest: digest.into(),
            abi: "0.4.0".into(),
        }
    }

    fn broken() -> Load {
        Load::Failed {
            reason: "ModuleLoadFailed".into(),
            error: "cannot load policy module: not a component".into(),
        }
    }

    #[test]
    fn a_first_load_puts_the_module_in_force_and_says_so() {
        let r = policy_status(&Default::default(), &loaded("abc"), Some(2), at(10));
        assert_eq!(r.status.digest.as_deref(), Some("abc"));
        assert_eq!(r.status.abi_version.as_deref(), Some("0.4.0"));
        assert_eq!(r.status.loaded_at, Some(at(10).to_string()));
        assert_eq!(r.status.observed_generation, Some(2));
        assert_eq!(r.status.last_error, None);
        let ready = &r.status.conditions[0];
        assert_eq!(
            (ready.type_.as_str(), ready.status.as_str()),
            ("Ready", "True")
        );
        assert_eq!(ready.reason, "ModuleLoaded");
        assert_eq!(ready.message, "module sha256:abc (ABI 0.4.0) is in force");
        assert_eq!(r.ready.message, ready.message);
    }

    #[test]
    fn a_failed_load_keeps_the_module_in_force_and_says_which() {
        let before = policy_status(&Default::default(), &loaded("abc"), Some(1), at(10)).status;
        let r = policy_status(&before, &broken(), Some(2), at(20));
        let message = "cannot load policy module: not a component; the module in force stays abc";
        assert_eq!(r.status.last_error.as_deref(), Some(message));
        assert_eq!(
            (r.status.digest.as_deref(), r.status.abi_version.as_deref()),
            (Some("abc"), Some("0.4.0"))
        );
        assert_eq!(r.status.loaded_at, before.loaded_at);
        assert_eq!(r.status.observed_generation, Some(2));
        let ready = &r.status.conditions[0];
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "ModuleLoadFailed")
        );
        assert_eq!(ready.message, message);
        assert!(!r.ready.ok);
        // Nothing in force yet: it says so.
        let none = policy_status(&Default::default(), &broken(), None, at(20));
        assert!(none.status.last_error.unwrap().ends_with("stays none"));
        assert_eq!(none.status.digest, None);
    }

    #[test]
    fn a_good_load_after_a_failure_clears_the_error_and_keeps_the_load_time() {
        let first = policy_status(&Default::default(), &loaded("abc"), Some(1), at(10)).status;
        let failed = policy_status(&first, &broken(), Some(2), at(20)).status;
        let again = policy_status(&failed, &loaded("abc"), Some(3), at(30)).status;
        assert_eq!(again.last_error, None);
        assert_eq!(again.loaded_at, first.loaded_at);
        // Steady: the same status again (and so no write).
        assert_eq!(
            policy_status(&again, &loaded("abc"), Some(3), at(40)).status,
            again
        );
        // A new module: a new load time.
        let next = policy_status(&again, &loaded("def"), Some(4), at(50)).status;
        assert_eq!(next.loaded_at, Some(at(50).to_string()));
    }
}
