//! One failure path: a policy that denies or fails, a guardrail that refuses what it decided,
//! or a policy that is not loaded, on a Backup, a ScheduledBackup or in a Cluster's retention,
//! becomes a False condition and a Warning Event on the object it was about (the Cluster for
//! retention), both naming the policy and the decision, before the controller's backoff
//! retries. An error of the API server itself is not reported there: the write would likely
//! fail too, and the retry is the remedy.
//!
//! ```text
//!   decision ─Err─► Failure { decision, policy, error } ─► DesiredCondition (False, <Decision>Denied…)
//!                                  └─► PatchStatus(conditions) + Event, once per new message
//! ```

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};

use super::conditions::{self, DesiredCondition};
use super::errors::Error;
use pgwarden_core::plan::{Action, EventType, ObjectRef};
use pgwarden_sdk::types::Denial;

/// The policy decision that failed, as the host calls it (`backup-settings`...).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    BackupSettings,
    BackupTransition,
    Schedule,
    Retention,
}

impl Decision {
    /// The decision's name in the policy ABI, as the sandbox's own errors say it.
    pub fn name(self) -> &'static str {
        match self {
            Decision::BackupSettings => "backup-settings",
            Decision::BackupTransition => "backup-transition",
            Decision::Schedule => "schedule",
            Decision::Retention => "retention",
        }
    }

    /// The decision as the first word of a condition reason.
    fn camel(self) -> &'static str {
        match self {
            Decision::BackupSettings => "BackupSettings",
            Decision::BackupTransition => "BackupTransition",
            Decision::Schedule => "Schedule",
            Decision::Retention => "Retention",
        }
    }
}

/// A failed decision: which one, by which policy (none when no policy was found), and why.
#[derive(Debug)]
pub struct Failure {
    pub decision: Decision,
    pub policy: Option<String>,
    pub error: Error,
}

/// Where a reconcile is: the decision it asks next, and of which policy once found. A
/// reconcile moves it along, so that its error can be told with both.
#[derive(Debug)]
pub struct Step {
    pub decision: Decision,
    pub policy: Option<String>,
}

impl Step {
    pub fn new(decision: Decision) -> Self {
        Step {
            decision,
            policy: None,
        }
    }

    /// The error of this step as a failure to report.
    pub fn failed(self, error: Error) -> Failure {
        Failure {
            decision: self.decision,
            policy: self.policy,
            error,
        }
    }
}

impl Failure {
    /// The condition that says why, or `None` for an error of the API server.
    pub fn wanted(&self, type_: &'static str) -> Option<DesiredCondition> {
        let (d, name) = (self.decision.camel(), self.decision.name());
        let policy = self.policy.as_deref().unwrap_or("(none)");
        let (reason, message) = match &self.error {
            Error::Kube(_) => return None,
            // The policy's own reason when it gave one; a bare message is `<Decision>Denied`.
            Error::Policy(e) if e.is_denial() => (
                match e.denial_reason() {
                    Some(reason) if reason != Denial::DEFAULT_REASON => reason.to_string(),
                    _ => format!("{d}Denied"),
                },
                format!("policy {policy} denied {name}: {e}"),
            ),
            Error::Policy(e) => (
                format!("{d}Failed"),
                format!("policy {policy} failed in {name}: {e}"),
            ),
            Error::Guardrail(e) => (
                format!("{d}GuardrailRefused"),
                format!("the guardrails refused what policy {policy} decided in {name}: {e}"),
            ),
            Error::ClusterNotFound(message) => (self.error.reason().to_string(), message.clone()),
            e => (
                e.reason().to_string(),
                format!("no policy answered {name}: {e}"),
            ),
        };
        Some(DesiredCondition::failed(type_, reason, message))
    }
}

/// The writes that report `wanted` on `target`: its conditions (with `extra` status fields)
/// and a Warning Event, only when the condition is new or says something new (a failure that
/// repeats on every retry writes nothing more).
pub fn report(
    target: ObjectRef,
    before: &[Condition],
    wanted: &DesiredCondition,
    generation: Option<i64>,
    extra: Value,
) -> Vec<Action> {
    let already = before.iter().any(|c| {
        c.type_ == wanted.type_
            && c.status == if wanted.ok { "True" } else { "False" }
            && c.reason == wanted.reason
            && c.message == wanted.message
    });
    if already {
        return Vec::new();
    }
    let mut status = json!({
        "conditions": conditions::set(before, wanted, generation, Timestamp::now())
    });
    if let (Some(status), Some(extra)) = (status.as_object_mut(), extra.as_object()) {
        status.extend(extra.clone());
    }
    let mut actions = vec![Action::PatchStatus {
        target: target.clone(),
        status,
    }];
    if !wanted.ok {
        actions.push(Action::Event {
            regarding: target,
            event_type: EventType::Warning,
            reason: wanted.reason.clone(),
            note: wanted.message.clone(),
        });
    }
    actions
}

/// After a success: the condition of type `type_` back to True if a failure had set it False
/// (no write when it was never False).
pub fn recovered(
    target: ObjectRef,
    before: &[Condition],
    type_: &'static str,
    message: &str,
    generation: Option<i64>,
) -> Vec<Action> {
    let failed = before
        .iter()
        .any(|c| c.type_ == type_ && c.status == "False");
    if !failed {
        return Vec::new();
    }
    let wanted = DesiredCondition::ok(type_, "Applied", message);
    report(target, before, &wanted, generation, json!({}))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::PolicyError;

    fn target() -> ObjectRef {
        ObjectRef {
            api_version: "postgresql.k8s.2ndq.io/v1alpha1".into(),
            kind: "Backup".into(),
            namespace: Some("ns".into()),
            name: "b".into(),
        }
    }

    fn denied() -> Failure {
        let e = Error::Policy(PolicyError::Denied {
            decision: "backup-settings".into(),
            reason: Denial::DEFAULT_REASON.into(),
            message: "Cluster pg has no spec.backup".into(),
        });
        let mut step = Step::new(Decision::BackupSettings);
        step.policy = Some("default".into());
        step.failed(e)
    }

    #[test]
    fn a_denial_with_its_own_reason_shows_it() {
        let e = Error::Policy(PolicyError::Denied {
            decision: "backup-settings".into(),
            reason: "WalNotEncrypted".into(),
            message: "set spec.backup.wal.encryption".into(),
        });
        let mut step = Step::new(Decision::BackupSettings);
        step.policy = Some("strict".into());
        let w = step.failed(e).wanted("PolicyApplied").unwrap();
        assert_eq!(w.reason, "WalNotEncrypted");
        assert_eq!(
            w.message,
            "policy strict denied backup-settings: set spec.backup.wal.encryption"
        );
    }

    #[test]
    fn a_denial_names_the_policy_and_the_decision() {
        let w = denied().wanted("PolicyApplied").unwrap();
        assert!(!w.ok);
        assert_eq!(w.reason, "BackupSettingsDenied");
        assert_eq!(
            w.message,
            "policy default denied backup-settings: Cluster pg has no spec.backup"
        );
        let crash = Step::new(Decision::Retention)
            .failed(Error::Policy(PolicyError::Engine("gone".into())));
        let w = crash.wanted("RetentionApplied").unwrap();
        assert_eq!(w.reason, "RetentionFailed");
        assert!(
            w.message.starts_with("policy (none) failed in retention: "),
            "{}",
            w.message
        );
    }

    #[test]
    fn a_missing_cluster_is_told_as_such_on_the_backup() {
        let message = "Cluster ns/pg (spec.cluster.name) does not exist, so no policy decides for this Backup: create the Cluster, or delete the Backup";
        let missing =
            Step::new(Decision::BackupSettings).failed(Error::ClusterNotFound(message.into()));
        let w = missing.wanted("PolicyApplied").unwrap();
        assert_eq!((w.ok, w.reason.as_str()), (false, "ClusterNotFound"));
        assert_eq!(w.message, message);
        let actions = report(target(), &[], &w, Some(1), json!({"phase": "pending"}));
        assert!(
            matches!(&actions[1], Action::Event { event_type: EventType::Warning, reason, note, .. } if reason == "ClusterNotFound" && note == message),
            "{actions:?}"
        );
    }

    #[test]
    fn a_failure_is_written_and_told_once() {
        let w = denied().wanted("PolicyApplied").unwrap();
        let first = report(target(), &[], &w, Some(1), json!({"phase": "pending"}));
        assert_eq!(first.len(), 2, "{first:?}");
        let Action::PatchStatus { status, .. } = &first[0] else {
            panic!("{first:?}")
        };
        assert_eq!(status["phase"], "pending");
        assert_eq!(status["conditions"][0]["reason"], "BackupSettingsDenied");
        assert!(
            matches!(&first[1], Action::Event { event_type: EventType::Warning, reason, .. } if reason == "BackupSettingsDenied")
        );
        let stored: Vec<Condition> = serde_json::from_value(status["conditions"].clone()).unwrap();
        assert!(report(target(), &stored, &w, Some(1), json!({})).is_empty());
        let back = recovered(target(), &stored, "PolicyApplied", "ok", Some(1));
        assert_eq!(back.len(), 1, "a recovery is written, without a Warning");
        assert!(recovered(target(), &[], "PolicyApplied", "ok", Some(1)).is_empty());
    }
}
