//! Default Backup phases: pending → running → completed | failed, from the facts the host
//! observes and the instance agent reports. A backup never stays `running` when its agent
//! can no longer finish it.

use crate::policy::Decided;
use chrono::{DateTime, Utc};
use pgwarden_crds::{BackupAgentState, BackupAgentStatus, BackupPhase, BackupStatus};

use super::cluster_name;
use crate::convert::parse_time;
use crate::types::{BackupFacts, PodFacts, Transition};

/// How long a running backup may go without any report from the agent before it fails.
pub const AGENT_START_TIMEOUT_SECONDS: i64 = 300;
const POLL_SECONDS: u32 = 10;

fn to(phase: BackupPhase, reason: &str, message: String, requeue: Option<u32>) -> Transition {
    Transition {
        phase,
        reason: reason.into(),
        message,
        requeue_after_seconds: requeue,
    }
}

/// The seed's phases. A final phase never changes; a pending backup starts once its target
/// pod runs and is ready; a running one completes or fails as the agent reports, and fails
/// when its pod vanished, stopped or restarted, or the agent never reported.
pub fn backup_transition(facts: &BackupFacts) -> Decided<Transition> {
    let status = facts.backup.status.clone().unwrap_or_default();
    let phase = status.phase.unwrap_or(BackupPhase::Pending);
    let cluster_ref = &facts.backup.spec.cluster.name;
    if phase.is_final() {
        let reason = status.reason.clone().unwrap_or_else(|| "Final".into());
        return Ok(to(
            phase,
            &reason,
            status.message.clone().unwrap_or_default(),
            None,
        ));
    }
    let Some(cluster) = facts.cluster.as_ref() else {
        return Ok(match phase {
            BackupPhase::Pending => to(
                phase,
                "ClusterNotFound",
                format!("waiting for Cluster {cluster_ref}, which does not exist"),
                Some(30),
            ),
            _ => to(
                BackupPhase::Failed,
                "ClusterDeleted",
                format!("Cluster {cluster_ref} was deleted during the backup"),
                None,
            ),
        });
    };
    if cluster.spec.backup.is_none() {
        return Ok(to(
            BackupPhase::Failed,
            "BackupNotConfigured",
            format!(
                "Cluster {} has no spec.backup: set spec.backup.destinationPath and spec.backup.s3Credentials, then create a new Backup",
                cluster_name(cluster)
            ),
            None,
        ));
    }
    Ok(match phase {
        BackupPhase::Pending => pending(facts.pod.as_ref()),
        _ => running(&status, facts.pod.as_ref(), facts.now),
    })
}

fn pending(pod: Option<&PodFacts>) -> Transition {
    match pod {
        Some(p) if p.phase == "Running" && p.ready => to(
            BackupPhase::Running,
            "Started",
            format!("barman-cloud-backup runs on pod {}", p.name),
            Some(POLL_SECONDS),
        ),
        Some(p) => to(
            BackupPhase::Pending,
            "WaitingForInstance",
            format!(
                "waiting for pod {} to be running and ready (phase {})",
                p.name, p.phase
            ),
            Some(POLL_SECONDS),
        ),
        None => to(
            BackupPhase::Pending,
            "WaitingForInstance",
            "waiting for the target instance pod".into(),
            Some(POLL_SECONDS),
        ),
    }
}

fn running(status: &BackupStatus, pod: Option<&PodFacts>, now: DateTime<Utc>) -> Transition {
    let agent = status.agent.clone().unwrap_or_default();
    let pod_name = status
        .instance_id
        .as_ref()
        .and_then(|i| i.pod_name.clone())
        .unwrap_or_else(|| "(unknown)".into());
    if let Some(ended) = agent_ended(status, &agent, &pod_name) {
        return ended;
    }
    let Some(pod) = pod else {
        return to(
            BackupPhase::Failed,
            "PodGone",
            format!("pod {pod_name} vanished while the backup was running"),
            None,
        );
    };
    if let Some(interrupted) = interrupted(status, &agent, pod, now) {
        return interrupted;
    }
    to(
        BackupPhase::Running,
        "Running",
        format!("barman-cloud-backup runs on pod {}", pod.name),
        Some(POLL_SECONDS),
    )
}

/// The end the agent reported, if it did: completed or failed with barman's exit code.
fn agent_ended(
    status: &BackupStatus,
    agent: &BackupAgentStatus,
    pod_name: &str,
) -> Option<Transition> {
    match agent.state {
        Some(BackupAgentState::Succeeded) => {
            let id = status.backup_id.as_deref().unwrap_or("(no id reported)");
            Some(to(
                BackupPhase::Completed,
                "Completed",
                format!("backup {id} completed on pod {pod_name}"),
                None,
            ))
        }
        Some(BackupAgentState::Failed) => {
            let code = agent
                .exit_code
                .map_or("unknown".to_string(), |c| c.to_string());
            let why = status.error.as_deref().unwrap_or("no error output");
            Some(to(
                BackupPhase::Failed,
                "BarmanFailed",
                format!("barman-cloud-backup exited with code {code}: {why}"),
                None,
            ))
        }
        _ => None,
    }
}

/// Why a backup still reported running can no longer finish: its pod stopped, its container
/// restarted under it, or the agent never started it.
fn interrupted(
    status: &BackupStatus,
    agent: &BackupAgentStatus,
    pod: &PodFacts,
    now: DateTime<Utc>,
) -> Option<Transition> {
    if pod.phase != "Running" {
        return Some(to(
            BackupPhase::Failed,
            "PodNotRunning",
            format!(
                "pod {} is {} while the backup was running",
                pod.name, pod.phase
            ),
            None,
        ));
    }
    let agent_started = parse_time(agent.started_at.as_deref());
    if let (Some(BackupAgentState::Running), Some(started), Some(container)) =
        (agent.state, agent_started, pod.container_started_at)
        && container > started
    {
        return Some(to(
            BackupPhase::Failed,
            "AgentRestarted",
            format!(
                "the postgres container of pod {} restarted (restart count {}) while barman-cloud-backup was running: the backup was interrupted",
                pod.name, pod.restart_count
            ),
            None,
        ));
    }
    let since = parse_time(status.started_at.as_deref()).unwrap_or(now);
    (agent.state.is_none() && (now - since).num_seconds() > AGENT_START_TIMEOUT_SECONDS).then(
        || {
            to(
                BackupPhase::Failed,
                "AgentNotStarted",
                format!(
                    "the agent of pod {} did not start barman-cloud-backup within {AGENT_START_TIMEOUT_SECONDS}s",
                    pod.name
                ),
                None,
            )
        },
    )
}
