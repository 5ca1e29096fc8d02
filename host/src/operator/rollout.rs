//! The rollout of a changed pod template: which instance pod, if any, may be replaced now.
//!
//! A pod is immutable, so a new template means deleting the pod and creating it anew from
//! the same claim: the instance is down meanwhile. Hence, per reconcile, at most one pod is
//! deleted, and only when
//! - no instance pod is terminating or missing (a replacement is still under way),
//! - every *other* instance pod is Ready, unless the pod itself is not Ready: deleting a pod
//!   that serves nothing takes nothing down, and a fixed template must be able to replace
//!   crash-looping pods (with two of them broken, "the others are Ready" would never hold),
//! - no Backup is running on it (deleting it would fail the Backup): the change waits for
//!   the Backup to end.
//!
//! The choice is deterministic (not-ready pods first, then the highest ordinal, so
//! replicas before the primary): a reconcile that runs on a cache which has not yet seen
//! the last deletion picks the same pod again, never a second one.

use pgwarden_crds::condition_types as types;

use super::conditions::DesiredCondition;
use pgwarden_core::plan::{Action, EventType, ObjectRef};

/// An instance pod as the rollout sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstancePod {
    pub name: String,
    pub state: PodState,
    /// Whether it runs the current template (a missing pod will be made from it).
    pub current: bool,
}

/// Where an instance pod is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodState {
    /// Desired but not there: created by this reconcile.
    Missing,
    /// Being deleted.
    Terminating,
    Ready,
    NotReady,
}

/// A Backup not yet ended, and the pod it runs (or is about to run) on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunningBackup {
    pub name: String,
    pub pod: String,
    /// Its phase is `running`; else it is pending, its agent perhaps already started.
    pub started: bool,
}

/// What the rollout does now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Every existing pod runs the current template.
    UpToDate,
    /// Delete this pod (it is then created anew from the current template).
    Replace { pod: String, outdated: usize },
    /// A pod is outdated but may not be replaced now; `reason` is a condition reason.
    Wait {
        reason: &'static str,
        message: String,
    },
}

/// Why waiting, as the `PodsUpToDate` reason.
pub const ROLLING_UPDATE: &str = "RollingUpdate";
pub const WAITING_FOR_BACKUP: &str = "WaitingForBackup";

/// Decides the next step of the rollout (pure). `pods` in ordinal order.
pub fn next(pods: &[InstancePod], running: &[RunningBackup]) -> Decision {
    let outdated: Vec<(usize, &InstancePod)> = pods
        .iter()
        .enumerate()
        .filter(|(_, p)| !p.current && !matches!(p.state, PodState::Missing))
        .collect();
    if outdated.is_empty() {
        return Decision::UpToDate;
    }
    if let Some(in_flight) = in_flight(pods, &outdated) {
        return in_flight;
    }
    // A pending Backup holds a Ready pod only: on a pod that is not Ready it cannot start,
    // and waiting for it would keep the pod from the template that may fix it.
    let backup_on = |pod: &InstancePod| {
        running
            .iter()
            .find(|b| b.pod == pod.name && (b.started || pod.state == PodState::Ready))
    };
    let may_go = |pod: &InstancePod| {
        pod.state != PodState::Ready
            || pods
                .iter()
                .all(|p| p.name == pod.name || p.state == PodState::Ready)
    };
    let candidate = outdated
        .iter()
        .filter(|(_, p)| backup_on(p).is_none() && may_go(p))
        .max_by_key(|(i, p)| (p.state != PodState::Ready, *i));
    if let Some((_, pod)) = candidate {
        return Decision::Replace {
            pod: pod.name.clone(),
            outdated: outdated.len(),
        };
    }
    match outdated
        .iter()
        .find_map(|(_, p)| backup_on(p).map(|b| (p, b)))
    {
        Some((pod, backup)) => wait(
            WAITING_FOR_BACKUP,
            format!(
                "Backup {} is running on pod {}: its new template waits until the Backup ends",
                backup.name, pod.name
            ),
        ),
        None => wait(
            ROLLING_UPDATE,
            format!(
                "waiting for pod(s) {} to be Ready before replacing pod {}",
                names(pods.iter().filter(|p| p.state != PodState::Ready)),
                outdated[0].1.name
            ),
        ),
    }
}

/// A replacement still under way (a pod terminating, or missing until it is created):
/// nothing else is deleted meanwhile.
fn in_flight(pods: &[InstancePod], outdated: &[(usize, &InstancePod)]) -> Option<Decision> {
    let busy = pods
        .iter()
        .find(|p| matches!(p.state, PodState::Terminating | PodState::Missing))?;
    let doing = match busy.state {
        PodState::Missing => "is being created",
        _ => "is terminating",
    };
    Some(wait(
        ROLLING_UPDATE,
        format!(
            "pod {} {doing}; {} outdated pod(s) wait, replaced one at a time (next: {})",
            busy.name,
            outdated.len(),
            names(outdated.iter().map(|(_, p)| *p).take(1))
        ),
    ))
}

fn names<'a>(pods: impl Iterator<Item = &'a InstancePod>) -> String {
    pods.map(|p| p.name.as_str()).collect::<Vec<_>>().join(", ")
}

fn wait(reason: &'static str, message: String) -> Decision {
    Decision::Wait { reason, message }
}

impl Decision {
    /// The pod this decision lets the applier delete, if any.
    pub fn replaced(&self) -> Option<&str> {
        match self {
            Decision::Replace { pod, .. } => Some(pod),
            _ => None,
        }
    }

    /// The Cluster's `PodsUpToDate` condition.
    pub fn condition(&self) -> DesiredCondition {
        match self {
            Decision::UpToDate => DesiredCondition::ok(
                types::PODS_UP_TO_DATE,
                "UpToDate",
                "every instance pod runs the current template",
            ),
            Decision::Replace { pod, outdated } => DesiredCondition::failed(
                types::PODS_UP_TO_DATE,
                ROLLING_UPDATE,
                format!(
                    "replacing pod {pod} with the current template ({outdated} outdated pod(s), one at a time)"
                ),
            ),
            Decision::Wait { reason, message } => {
                DesiredCondition::failed(types::PODS_UP_TO_DATE, *reason, message.clone())
            }
        }
    }

    /// Whether the rollout still has work: the Cluster is reconciled again soon.
    pub fn pending(&self) -> bool {
        !matches!(self, Decision::UpToDate)
    }
}

/// The planned actions the decision allows: a pod Apply whose pod is outdated is dropped
/// unless it is the one being replaced (the applier would delete it). `outdated` names the
/// outdated pods.
pub fn gate(actions: Vec<Action>, decision: &Decision, outdated: &[String]) -> Vec<Action> {
    actions
        .into_iter()
        .filter(|a| match a {
            Action::Apply { target, .. } if target.kind == "Pod" => {
                !outdated.contains(&target.name) || decision.replaced() == Some(&target.name)
            }
            _ => true,
        })
        .collect()
}

/// A Normal Event about the Cluster when a pod is replaced.
pub fn event(decision: &Decision, cluster: ObjectRef) -> Option<Action> {
    let pod = decision.replaced()?;
    Some(Action::Event {
        regarding: cluster,
        event_type: EventType::Normal,
        reason: ROLLING_UPDATE.into(),
        note: format!("deleting pod {pod} to create it anew with the current template"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, state: PodState, current: bool) -> InstancePod {
        InstancePod {
            name: name.into(),
            state,
            current,
        }
    }

    fn running(name: &str, pod: &str) -> RunningBackup {
        RunningBackup {
            name: name.into(),
            pod: pod.into(),
            started: true,
        }
    }

    fn pending(name: &str, pod: &str) -> RunningBackup {
        RunningBackup {
            started: false,
            ..running(name, pod)
        }
    }

    #[test]
    fn a_pending_backup_holds_a_ready_pod_but_not_a_broken_one() {
        let ready = [pod("pg-1", Ready, false)];
        assert!(matches!(
            next(&ready, &[pending("b", "pg-1")]),
            Decision::Wait { .. }
        ));
        let broken = [pod("pg-1", NotReady, false)];
        assert!(matches!(
            next(&broken, &[pending("b", "pg-1")]),
            Decision::Replace { .. }
        ));
    }

    use PodState::*;

    #[test]
    fn current_pods_need_nothing() {
        let pods = [pod("pg-1", Ready, true), pod("pg-2", Missing, true)];
        assert_eq!(next(&pods, &[]), Decision::UpToDate);
        assert!(next(&pods, &[]).condition().ok);
        assert_eq!(next(&[], &[]), Decision::UpToDate);
    }

    #[test]
    fn a_template_change_of_every_pod_replaces_one_pod_at_a_time() {
        // A policy swap that changes every template: one pod, a replica first.
        let all = [
            pod("pg-1", Ready, false),
            pod("pg-2", Ready, false),
            pod("pg-3", Ready, false),
        ];
        let d = next(&all, &[]);
        assert_eq!(
            d,
            Decision::Replace {
                pod: "pg-3".into(),
                outdated: 3
            }
        );
        // It is terminating: nothing else is deleted.
        let terminating = [
            pod("pg-1", Ready, false),
            pod("pg-2", Ready, false),
            pod("pg-3", Terminating, false),
        ];
        assert!(matches!(
            next(&terminating, &[]),
            Decision::Wait { reason: ROLLING_UPDATE, ref message } if message.contains("pg-3 is terminating")
        ));
        // Gone, then created anew: still nothing else until it is Ready.
        let created = [
            pod("pg-1", Ready, false),
            pod("pg-2", Ready, false),
            pod("pg-3", Missing, true),
        ];
        assert!(matches!(next(&created, &[]), Decision::Wait { .. }));
        let starting = [
            pod("pg-1", Ready, false),
            pod("pg-2", Ready, false),
            pod("pg-3", NotReady, true),
        ];
        let d = next(&starting, &[]);
        assert!(
            matches!(&d, Decision::Wait { reason: ROLLING_UPDATE, message } if message.contains("pg-3") && message.contains("before replacing pod pg-1")),
            "{d:?}"
        );
        // Ready: the next one, and the primary last.
        let next_one = [
            pod("pg-1", Ready, false),
            pod("pg-2", Ready, false),
            pod("pg-3", Ready, true),
        ];
        assert_eq!(next(&next_one, &[]).replaced(), Some("pg-2"));
        let last = [
            pod("pg-1", Ready, false),
            pod("pg-2", Ready, true),
            pod("pg-3", Ready, true),
        ];
        assert_eq!(next(&last, &[]).replaced(), Some("pg-1"));
    }

    #[test]
    fn a_pod_running_a_backup_is_never_replaced() {
        let one = [pod("pg-1", Ready, false)];
        let d = next(&one, &[running("nightly-1", "pg-1")]);
        assert_eq!(
            d,
            Decision::Wait {
                reason: WAITING_FOR_BACKUP,
                message: "Backup nightly-1 is running on pod pg-1: its new template waits until the Backup ends".into()
            }
        );
        let c = d.condition();
        assert!(!c.ok);
        assert_eq!(
            (c.type_, c.reason.as_str()),
            ("PodsUpToDate", WAITING_FOR_BACKUP)
        );
        // Another outdated pod may go meanwhile; the backup's pod waits.
        let two = [pod("pg-1", Ready, false), pod("pg-2", Ready, false)];
        assert_eq!(next(&two, &[running("b", "pg-2")]).replaced(), Some("pg-1"));
        // A backup on another, current pod does not hold this one.
        let other = [pod("pg-1", Ready, false), pod("pg-2", Ready, true)];
        assert_eq!(
            next(&other, &[running("b", "pg-2")]).replaced(),
            Some("pg-1")
        );
    }

    #[test]
    fn an_outdated_pod_that_is_not_ready_goes_first_and_blocks_the_others() {
        // A crash-looping pod gets the fixed template (the others are Ready)...
        let pods = [pod("pg-1", Ready, false), pod("pg-2", NotReady, false)];
        assert_eq!(next(&pods, &[]).replaced(), Some("pg-2"));
        let pods = [pod("pg-1", NotReady, false), pod("pg-2", Ready, false)];
        assert_eq!(next(&pods, &[]).replaced(), Some("pg-1"));
        // ...also when several are broken, one at a time...
        let pods = [pod("pg-1", NotReady, false), pod("pg-2", NotReady, false)];
        assert_eq!(next(&pods, &[]).replaced(), Some("pg-2"));
        // ...but a Ready pod is never taken down while another is not Ready.
        let pods = [pod("pg-1", Ready, false), pod("pg-2", NotReady, true)];
        assert!(matches!(next(&pods, &[]), Decision::Wait { .. }));
        // Nor is a broken pod replaced while a Backup runs on it.
        let pods = [pod("pg-1", NotReady, false)];
        assert!(matches!(
            next(&pods, &[running("b", "pg-1")]),
            Decision::Wait {
                reason: WAITING_FOR_BACKUP,
                ..
            }
        ));
    }

    fn apply(kind: &str, name: &str) -> Action {
        Action::Apply {
            target: ObjectRef {
                api_version: "v1".into(),
                kind: kind.into(),
                namespace: Some("ns".into()),
                name: name.into(),
            },
            object: serde_json::json!({}),
        }
    }

    #[test]
    fn the_gate_keeps_only_the_replaced_pod_of_the_outdated_ones() {
        let actions = vec![
            apply("ConfigMap", "pg-settings"),
            apply("Pod", "pg-1"),
            apply("Pod", "pg-2"),
            apply("Pod", "pg-3"),
        ];
        let outdated = ["pg-1".to_string(), "pg-2".to_string()];
        let replace = Decision::Replace {
            pod: "pg-2".into(),
            outdated: 2,
        };
        let names = |actions: Vec<Action>| -> Vec<String> {
            actions
                .iter()
                .filter_map(|a| a.target().map(|t| t.name.clone()))
                .collect()
        };
        assert_eq!(
            names(gate(actions.clone(), &replace, &outdated)),
            ["pg-settings", "pg-2", "pg-3"]
        );
        let waiting = Decision::Wait {
            reason: ROLLING_UPDATE,
            message: String::new(),
        };
        assert_eq!(
            names(gate(actions, &waiting, &outdated)),
            ["pg-settings", "pg-3"]
        );
    }
}
