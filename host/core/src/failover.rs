//! Who is to be the primary: the failover facts from what the agents reported, and the
//! host's check of a promotion (the policy's `failover` answer, or a switchover request)
//! before `status.targetPrimary` changes.
//!
//! ```text
//!   status.instancesStatus (agents) + currentPrimary/targetPrimary ─► facts ─► policy `failover`
//!   annotation pgwarden.io/switchover-to ─────────────────────────────┐            │
//!                                                                    └─► elect ◄──┘
//!                                  Election { targetPrimary, PrimaryElected, requeue }
//! ```
//!
//! A promotion of an instance no agent reported, of the current primary, of one whose agent
//! has gone silent (a removed pod's entry stays), or of a standby that never streamed is
//! refused: `PrimaryElected` False (reason `PromotionRefused`, naming the
//! instance and why), and `targetPrimary` stays as it was. CloudNativePG's rule carries over:
//! only a standby that received WAL from the primary may take its place, the most advanced
//! first (the default policy's choice).

use chrono::{DateTime, Utc};
use pgwarden_crds::{Cluster, InstanceStatus, condition_types as types};
use pgwarden_sdk::convert::parse_time;
use pgwarden_sdk::types::{Denial, FailoverFacts, InstanceFacts, Promotion, Role, parse_lsn};

use crate::conditions::DesiredCondition;

/// An agent reports every 10 s; one that has not for this long counts as gone silent.
pub const FRESH_SECONDS: i64 = 25;

/// The index of the first primary (`<cluster>-1`), until a failover or switchover moves it.
pub const PRIMARY_INDEX: u32 = 0;

/// The annotation that asks for a switchover to the pod it names.
pub const SWITCHOVER_ANNOTATION: &str = "pgwarden.io/switchover-to";

/// The reason of a refused promotion.
pub const PROMOTION_REFUSED: &str = "PromotionRefused";

/// While the primary is unhealthy the Cluster is looked at again this often, so that the
/// policy's delay is measured in seconds, not in the steady requeue's minutes (a failover is
/// decided at most this long after the delay; 5 s before the agents acted within a second).
pub const UNHEALTHY_REQUEUE_SECONDS: u64 = 2;

/// What the host decides of the primary: `targetPrimary`, `PrimaryElected`, and when to look
/// again (none: the steady interval).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Election {
    pub target_primary: Option<String>,
    pub condition: DesiredCondition,
    pub requeue_seconds: Option<u64>,
}

/// An agent's report as the failover facts of its instance: ready only while it reports.
fn instance_facts(s: &InstanceStatus, now: DateTime<Utc>) -> InstanceFacts {
    let fresh = age_seconds(s, now).is_some_and(|age| age <= FRESH_SECONDS);
    let role = match s.role.as_deref() {
        Some("primary") => Role::Primary,
        _ => Role::Replica,
    };
    let received = s.received_lsn.as_deref().and_then(parse_lsn);
    let replayed = s.replayed_lsn.as_deref().and_then(parse_lsn);
    InstanceFacts {
        name: s.name.clone(),
        role,
        ready: fresh && s.ready == Some(true),
        // A standby whose receiver lost a dead primary still received from it: the LSN
        // stays, and it is what a promotion needs.
        streaming: role == Role::Replica && (s.streaming == Some(true) || received.is_some()),
        // The WAL it holds, which a promotion replays: what it replayed is on its disk too.
        // PostgreSQL restarted without its primary counts received WAL afresh from its replay
        // position's segment start (0/3000000 for WAL replayed up to 0/3C542B0): ranked on
        // that, it lost to a standby holding less.
        received_lsn: received.max(replayed),
        replayed_lsn: replayed,
        lag_bytes: s.lag_bytes.and_then(|b| u64::try_from(b).ok()),
        lag_seconds: s.lag_seconds.and_then(|b| u64::try_from(b).ok()),
    }
}

fn age_seconds(s: &InstanceStatus, now: DateTime<Utc>) -> Option<i64> {
    parse_time(s.reported_at.as_deref()).map(|t| (now - t).num_seconds().max(0))
}

/// The primary as the agents tell it: the target when it reports itself primary, else the
/// instance that reported itself primary last, else the stored `currentPrimary`.
pub fn acting_primary(cluster: &Cluster) -> Option<String> {
    primary_in(cluster.status.as_ref()?)
}

/// [`acting_primary`] from a stored status alone (what an agent reads).
pub fn primary_in(status: &pgwarden_crds::ClusterStatus) -> Option<String> {
    let primaries: Vec<&InstanceStatus> = (status.instances_status.iter())
        .filter(|s| s.role.as_deref() == Some("primary"))
        .collect();
    let target = status.target_primary.as_deref();
    (primaries.iter().find(|s| Some(s.name.as_str()) == target))
        .or_else(|| primaries.iter().max_by_key(|s| s.reported_at.clone()))
        .map(|s| s.name.clone())
        .or_else(|| status.current_primary.clone())
}

/// The pod the `-rw` Service selects and that is labelled `primary`: the acting primary
/// ([`acting_primary`]), else instance 0 (no agent reported yet, no failover happened).
/// A target that has not promoted yet is not it: `-rw` keeps the (fenced) former primary
/// until the new one takes writes, so it never selects two writable instances.
pub fn primary_pod(cluster: &Cluster) -> String {
    let name = cluster.metadata.name.as_deref().unwrap_or_default();
    primary_of(name, cluster.status.as_ref())
}

/// [`primary_pod`] of the Cluster named `name` from its stored status (what an agent reads).
pub fn primary_of(name: &str, status: Option<&pgwarden_crds::ClusterStatus>) -> String {
    (status.and_then(primary_in))
        .unwrap_or_else(|| pgwarden_sdk::names::instance(name, PRIMARY_INDEX))
}

/// The failover facts of `cluster` at `now`, from its stored status.
pub fn facts(cluster: &Cluster, now: DateTime<Utc>) -> FailoverFacts {
    let status = cluster.status.clone().unwrap_or_default();
    let current = acting_primary(cluster);
    let entry = (status.instances_status.iter()).find(|s| Some(&s.name) == current.as_ref());
    let unhealthy = entry.and_then(|e| {
        let age = age_seconds(e, now)?;
        let healthy = age <= FRESH_SECONDS && e.ready == Some(true);
        Some(if healthy { 0 } else { age as u64 })
    });
    FailoverFacts {
        cluster: cluster.clone(),
        instances: (status.instances_status.iter())
            .map(|s| instance_facts(s, now))
            .collect(),
        current_primary: current,
        target_primary: status.target_primary,
        primary_unhealthy_seconds: unhealthy,
        now,
    }
}

/// Why `instance` may not become the primary, if it may not.
pub fn check(facts: &FailoverFacts, instance: &str) -> Result<(), String> {
    let known: Vec<&str> = facts.instances.iter().map(|i| i.name.as_str()).collect();
    let Some(found) = facts.instances.iter().find(|i| i.name == instance) else {
        return Err(format!(
            "{instance} is no instance of the Cluster (its agents reported: {})",
            if known.is_empty() {
                "none".into()
            } else {
                known.join(", ")
            }
        ));
    };
    if facts.current_primary.as_deref() == Some(instance) {
        return Err(format!("{instance} is the current primary already"));
    }
    if !found.ready {
        return Err(format!(
            "{instance} is not ready: its agent has not reported PostgreSQL answering in the last {FRESH_SECONDS}s"
        ));
    }
    if !found.streaming {
        return Err(format!(
            "{instance} is not a streaming standby: it has received no WAL from the primary, so it may miss committed transactions"
        ));
    }
    Ok(())
}

/// The target the Cluster keeps when nothing is promoted: the stored one, else the primary.
fn kept(facts: &FailoverFacts) -> Option<String> {
    (facts.target_primary.clone()).or_else(|| facts.current_primary.clone())
}

/// `targetPrimary` and `PrimaryElected` from the facts, a switchover request (the
/// annotation's value) and the policy's `failover` answer (`decided`, asked only without a
/// pending switchover). A refused promotion changes nothing but the condition.
pub fn elect(
    facts: &FailoverFacts,
    switchover: Option<&str>,
    decided: Result<Option<Promotion>, Denial>,
) -> Election {
    let unhealthy = facts.primary_unhealthy_seconds.unwrap_or(0) > 0;
    let requeue_seconds = unhealthy.then_some(UNHEALTHY_REQUEUE_SECONDS);
    let keep = |condition| Election {
        target_primary: kept(facts),
        condition,
        requeue_seconds,
    };
    let refused = |source: &str, instance: &str, why: String| {
        keep(DesiredCondition::failed(
            types::PRIMARY_ELECTED,
            PROMOTION_REFUSED,
            format!("{source} promotion of {instance} refused: {why}; the primary stays as it was"),
        ))
    };
    let (source, promotion) = match (switchover, decided) {
        (Some(to), _) if kept(facts).as_deref() == Some(to) => return keep(steady(facts)),
        (Some(to), _) => ("the switchover's", requested(to)),
        (None, Ok(None)) => return keep(steady(facts)),
        (None, Ok(Some(p))) => ("the policy's failover", p),
        (None, Err(d)) => {
            return keep(DesiredCondition::failed(
                types::PRIMARY_ELECTED,
                d.reason,
                d.message,
            ));
        }
    };
    if let Err(why) = check(facts, &promotion.instance) {
        return refused(source, &promotion.instance, why);
    }
    Election {
        target_primary: Some(promotion.instance.clone()),
        condition: DesiredCondition::ok(
            types::PRIMARY_ELECTED,
            promotion.reason,
            format!(
                "{} is to be the primary: {}",
                promotion.instance, promotion.message
            ),
        ),
        requeue_seconds: Some(UNHEALTHY_REQUEUE_SECONDS),
    }
}

/// A switchover request as a promotion.
fn requested(to: &str) -> Promotion {
    Promotion {
        instance: to.into(),
        reason: "SwitchoverRequested".into(),
        message: format!("annotation {SWITCHOVER_ANNOTATION} asks for {to}"),
    }
}

/// `PrimaryElected` when nothing is promoted now.
fn steady(facts: &FailoverFacts) -> DesiredCondition {
    let current = facts.current_primary.as_deref();
    match (kept(facts), facts.primary_unhealthy_seconds) {
        (Some(target), _) if current.is_some_and(|c| c != target) => DesiredCondition::ok(
            types::PRIMARY_ELECTED,
            "Promoting",
            format!(
                "{target} is to be the primary in place of {}: waiting for its agent to promote it",
                current.unwrap_or_default()
            ),
        ),
        (Some(target), Some(s)) if s > 0 => DesiredCondition::ok(
            types::PRIMARY_ELECTED,
            "PrimaryUnhealthy",
            format!(
                "{target} is the primary; it has not been seen healthy for {s}s and no standby is promoted yet"
            ),
        ),
        (Some(target), _) => DesiredCondition::ok(
            types::PRIMARY_ELECTED,
            "Elected",
            format!("{target} is the primary"),
        ),
        (None, _) => DesiredCondition::ok(
            types::PRIMARY_ELECTED,
            "NotElectedYet",
            "no instance has reported as primary yet",
        ),
    }
}

/// A primary's agent that has not reported to the API server for longer than this fences
/// PostgreSQL read-only ([`isolation`]). The operator counts a primary unhealthy only after
/// [`FRESH_SECONDS`] without a report, and no policy can promote before that, whatever its
/// delay (which the agent cannot know: the policy holds it); 5 s less leaves room for the
/// agent's own check, so an isolated primary refuses writes before any standby is named.
pub const ISOLATION_FENCE_SECONDS: u64 = FRESH_SECONDS as u64 - 5;

/// What an agent does about its own isolation from the API server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isolation {
    Keep,
    /// A primary silent too long: refuse writes until it reads that it is still the primary.
    Fence,
    /// It fenced itself for isolation, and has just reported and read a Cluster that names it
    /// the primary (acting primary, `targetPrimary` none or itself): writes again.
    Unfence,
}

/// The isolation rule (CloudNativePG's: an isolated primary stops taking writes). `primary`:
/// PostgreSQL is out of recovery; `unreported_seconds`: since the agent's last report went
/// through; `fenced`: it fenced itself for isolation and has not lifted it; `confirmed`: this
/// very look reported and read a Cluster naming it the primary. A fence for another reason
/// (another `targetPrimary`) is not this rule's to lift.
pub fn isolation(
    primary: bool,
    unreported_seconds: u64,
    fenced: bool,
    confirmed: bool,
) -> Isolation {
    match (fenced, confirmed) {
        (true, true) => Isolation::Unfence,
        (true, false) => Isolation::Keep,
        (false, _) if primary && unreported_seconds > ISOLATION_FENCE_SECONDS => Isolation::Fence,
        (false, _) => Isolation::Keep,
    }
}

#[cfg(test)]
#[path = "failover_tests.rs"]
mod tests;
