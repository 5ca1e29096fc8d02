//! Who this instance is, told to the operator, and what it does about who it is to be. Each
//! tick the agent asks PostgreSQL for its replication facts (`pg_is_in_recovery()`, received
//! and replayed LSN, lag) and applies its own entry of the Cluster's `status.instancesStatus`,
//! only while PostgreSQL answers: a silent entry (an old `reportedAt`) is what the operator's
//! failover counts as unhealthy. Then it reads `status.targetPrimary`: a standby named there
//! promotes itself; a primary not named there is fenced read-only, and once the target
//! reports itself primary it stops and starts again as its standby (`rejoin`: `pg_rewind`,
//! else a fresh clone). A standby follows the primary the status names (`follow`).

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use pgwarden_core::failover::FRESH_SECONDS;
use pgwarden_crds::{ClusterStatus, InstanceStatus};
use pgwarden_sdk::types::parse_lsn;

use super::facts::{self, REPLICATION_QUERY, Replication};
pub use super::fencing::Next;
use super::fencing::{fence, unfence};
use super::isolation::Looked;
use super::options::RunOptions;
use super::postgres::Postgres;
use super::report::Reporter;

/// What a tick saw: what to do next, and whether a change of primary is under way or may
/// come at any moment ([`pending`]: the agent then looks again within a second).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tick {
    pub next: Next,
    pub pending: bool,
    /// What the look learnt of the Cluster (the isolation guard's input).
    pub looked: Looked,
}

/// Gathers this instance's replication facts, reports them when `report` (the steady
/// interval; a quick look while [`pending`] only reads), then acts on `targetPrimary`; a
/// failure is logged, not fatal (the silence is the report).
pub async fn tick(opts: &RunOptions, pg: &Postgres, reporter: &Reporter, report: bool) -> Tick {
    match look(opts, pg, reporter, report).await {
        Ok(tick) => tick,
        Err(e) => {
            eprintln!("pgwarden-agent: cannot report the instance's replication facts: {e:#}");
            Tick {
                next: Next::Continue,
                pending: false,
                looked: Looked::Failed,
            }
        }
    }
}

async fn look(opts: &RunOptions, pg: &Postgres, reporter: &Reporter, report: bool) -> Result<Tick> {
    let unwatched = Tick {
        next: Next::Continue,
        pending: false,
        looked: Looked::Unwatched,
    };
    let (Some(cluster), Some(pod)) = (&opts.cluster, &opts.pod_name) else {
        return Ok(unwatched);
    };
    let replication = tokio::task::block_in_place(|| replication_facts(pg))?;
    if report {
        apply(cluster, pod, &replication, reporter).await?;
    }
    let Some(status) = reporter.cluster_status(cluster).await? else {
        return Ok(unwatched);
    };
    let stale = opts.report_interval.mul_f32(1.5);
    let pending = pending(pod, cluster, &status, chrono::Utc::now(), stale);
    let primary = pgwarden_core::failover::primary_of(cluster, Some(&status));
    let names_me = primary == *pod && status.target_primary.as_ref().is_none_or(|t| t == pod);
    let looked = Looked::Read {
        reported: report,
        names_me,
    };
    // The report went through even if acting fails: the isolation guard counts on it.
    let next = match act_on(opts, pg, reporter, &replication, &status).await {
        Ok(next) => next,
        Err(e) => {
            eprintln!("pgwarden-agent: cannot act on the Cluster's status: {e:#}");
            Next::Continue
        }
    };
    Ok(Tick {
        next,
        pending,
        looked,
    })
}

/// PostgreSQL's replication facts ([`REPLICATION_QUERY`]).
fn replication_facts(pg: &Postgres) -> Result<Replication> {
    let row = pg.query(REPLICATION_QUERY)?;
    serde_json::from_str(&row)
        .with_context(|| format!("PostgreSQL's replication facts are not JSON: {row}"))
}

/// Applies pod `pod`'s entry of `status.instancesStatus` (its own field manager).
async fn apply(cluster: &str, pod: &str, r: &Replication, reporter: &Reporter) -> Result<()> {
    let status = facts::instance_status(pod, r, &super::archive::now());
    let patch = facts::instance_status_patch(cluster, &status);
    let manager = facts::instance_field_manager(pod);
    reporter
        .apply_status_as(&manager, "Cluster", "clusters", cluster, &patch)
        .await
}

/// Whether pod `pod` should look at the Cluster again within a second rather than at its next
/// report: `targetPrimary` names another instance than the acting primary (a promotion not
/// done yet: the target promotes, the old primary hands over, the other standbys follow), or
/// the acting primary is another pod whose agent has not reported for longer than `stale` or
/// reported itself not ready (the operator's failover may set `targetPrimary` soon). Without
/// this, each of those steps waited for the next report interval of the agent concerned.
pub fn pending(
    pod: &str,
    cluster: &str,
    status: &ClusterStatus,
    now: chrono::DateTime<chrono::Utc>,
    stale: Duration,
) -> bool {
    let primary = pgwarden_core::failover::primary_of(cluster, Some(status));
    if status
        .target_primary
        .as_ref()
        .is_some_and(|t| *t != primary)
    {
        return true;
    }
    if primary == pod {
        return false;
    }
    let entry = status.instances_status.iter().find(|s| s.name == primary);
    let seen = entry.and_then(|e| pgwarden_sdk::convert::parse_time(e.reported_at.as_deref()));
    let stale = chrono::Duration::from_std(stale).unwrap_or(chrono::Duration::MAX);
    seen.is_none_or(|t| now - t > stale) || entry.is_some_and(|e| e.ready == Some(false))
}

/// Acts on the Cluster's status: follow the primary (a standby), fence and leave (a former
/// primary), hand over (a switchover), promote (the target); a promotion is reported at once
/// (the operator moves `-rw` and the other standbys follow on it).
async fn act_on(
    opts: &RunOptions,
    pg: &Postgres,
    reporter: &Reporter,
    replication: &Replication,
    status: &ClusterStatus,
) -> Result<Next> {
    let (Some(cluster), Some(pod)) = (&opts.cluster, &opts.pod_name) else {
        return Ok(Next::Continue);
    };
    let primary = pgwarden_core::failover::primary_of(cluster, Some(status));
    if replication.in_recovery && follow(opts, pg, pod, &primary).await {
        return Ok(Next::Rejoin);
    }
    let Some(target) = status.target_primary.clone() else {
        return Ok(Next::Continue);
    };
    if !replication.in_recovery && target != *pod && primary != *pod {
        // The target reports itself primary: this one leaves, fenced until it stops.
        tokio::task::block_in_place(|| fence(pg))?;
        eprintln!("pgwarden-agent: {pod} is a former primary: {primary} has promoted");
        return Ok(Next::Rejoin);
    }
    if !replication.in_recovery && primary == *pod {
        prune(opts, reporter, &status.instances_status, pod).await;
    }
    if !replication.in_recovery && target != *pod {
        // A switchover: hand over by a clean shutdown first (a fence alone can be lifted).
        return super::switchover::hand_over(opts, pg, reporter, &target).await;
    }
    let act = act(pod, replication, Some(&target));
    if act == Act::Promote {
        let now = chrono::Utc::now();
        if let Err(wait) = may_promote(pod, replication, &status.instances_status, now) {
            eprintln!("pgwarden-agent: {pod} is targetPrimary but does not promote yet: {wait}");
            return Ok(Next::Continue);
        }
        upload_held_segments(opts, pg, replication).await;
    }
    tokio::task::block_in_place(|| perform(pg, pod, &target, act))?;
    if act != Act::Nothing {
        let now = tokio::task::block_in_place(|| replication_facts(pg))?;
        apply(cluster, pod, &now, reporter).await?;
    }
    Ok(Next::Continue)
}

/// Before promoting: the old timeline's complete segments this standby holds and the store
/// lacks go up first (see `held_wal`). A failure is logged, never a reason not to promote.
async fn upload_held_segments(opts: &RunOptions, pg: &Postgres, replication: &Replication) {
    let held = |l: &Option<String>| l.as_deref().and_then(parse_lsn);
    let upto = held(&replication.received_lsn).max(held(&replication.replayed_lsn));
    let timeline =
        tokio::task::block_in_place(|| pg.query("SELECT timeline_id FROM pg_control_checkpoint()"));
    let (Some(upto), Ok(Ok(timeline))) = (upto, timeline.map(|t| t.trim().parse::<u32>())) else {
        return;
    };
    match super::held_wal::archive_held(&pg.pgdata, &opts.settings_dir, timeline, upto).await {
        Ok(0) => {}
        Ok(n) => eprintln!(
            "pgwarden-agent: uploaded {n} segment(s) of timeline {timeline} the store lacked before promoting"
        ),
        Err(e) => {
            eprintln!("pgwarden-agent: cannot upload the segments held before promoting: {e:#}")
        }
    }
}

/// The primary's agent forgets the entries of pods that are gone (a scale-down): a silent
/// entry whose pod does not exist is removed, applied empty under that pod's own field
/// manager. A pod that exists keeps its entry, silent or not (the failover counts it).
async fn prune(opts: &RunOptions, reporter: &Reporter, entries: &[InstanceStatus], me: &str) {
    let (Some(cluster), Some(namespace)) = (&opts.cluster, &opts.namespace) else {
        return;
    };
    let now = chrono::Utc::now();
    let silent = entries.iter().filter(|e| e.name != me).filter(|e| {
        let reported = pgwarden_sdk::convert::parse_time(e.reported_at.as_deref());
        reported.is_none_or(|t| (now - t).num_seconds() > FRESH_SECONDS)
    });
    let Ok(client) = kube::Client::try_default().await else {
        return;
    };
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> = kube::Api::namespaced(client, namespace);
    for entry in silent {
        if !matches!(pods.get_opt(&entry.name).await, Ok(None)) {
            continue;
        }
        let manager = facts::instance_field_manager(&entry.name);
        let patch = facts::instance_status_forget_patch(cluster);
        match reporter
            .apply_status_as(&manager, "Cluster", "clusters", cluster, &patch)
            .await
        {
            Ok(()) => eprintln!(
                "pgwarden-agent: forgot the status of {}: its pod is gone",
                entry.name
            ),
            Err(e) => eprintln!(
                "pgwarden-agent: cannot forget the status of {}: {e:#}",
                entry.name
            ),
        }
    }
}

/// Keeps a streaming standby pointed at the primary the status names: a failover moved it,
/// or its pod came back at another address. Nothing to do where the `-rw` Service resolves
/// (it follows the primary's label), nor for a restore in recovery (no standby.signal).
/// `true`: this standby received WAL past the new primary's fork and cannot follow it; it
/// is to be rewound (asked for in `rejoin.json`, done at the next start).
async fn follow(opts: &RunOptions, pg: &Postgres, pod: &str, primary: &str) -> bool {
    if primary == pod || !pg.pgdata.join("standby.signal").exists() {
        return false;
    }
    let layout = super::layout::Layout::new(&pg.pgdata);
    if tokio::task::block_in_place(|| diverged(pg)) {
        eprintln!(
            "pgwarden-agent: {pod} replayed past the fork of {primary}'s timeline: rewinding"
        );
        return match super::rejoin::request(&layout) {
            Ok(()) => true,
            Err(e) => {
                eprintln!("pgwarden-agent: cannot ask for the rewind of {pod}: {e:#}");
                false
            }
        };
    }
    if super::standby::service_host(opts).is_some() {
        return false;
    }
    let Ok(Some(host)) = super::standby::primary_address(opts, primary).await else {
        return false;
    };
    let current = tokio::task::block_in_place(|| super::standby::streaming_from(pg));
    if current.ok().flatten().as_deref() == Some(host.as_str()) {
        return false;
    }
    match tokio::task::block_in_place(|| super::standby::repoint(pg, &layout, &host, pod)) {
        Ok(()) => eprintln!("pgwarden-agent: {pod} now streams from {primary} ({host})"),
        Err(e) => eprintln!("pgwarden-agent: cannot point {pod} at {primary} ({host}): {e:#}"),
    }
    false
}

/// A standby that does not stream and has replayed past the switch point of the newest
/// timeline its WAL receiver fetched (`pg_wal/<tli>.history`), while on an older timeline:
/// it holds WAL the new primary never had, and PostgreSQL waits forever ("new timeline
/// forked off current database system timeline before current recovery point").
fn diverged(pg: &Postgres) -> bool {
    let Some((tli, switch)) = newest_history(&pg.pgdata.join("pg_wal")) else {
        return false;
    };
    let Ok(row) = pg.query(
        "SELECT (SELECT timeline_id FROM pg_control_checkpoint()) || ' ' ||          pg_last_wal_replay_lsn() || ' ' ||          EXISTS (SELECT 1 FROM pg_stat_wal_receiver WHERE status = 'streaming')",
    ) else {
        return false;
    };
    let fields: Vec<&str> = row.split_whitespace().collect();
    let [on, replayed, streaming] = fields[..] else {
        return false;
    };
    let on: u32 = on.parse().unwrap_or(u32::MAX);
    streaming != "true" && on < tli && parse_lsn(replayed).is_some_and(|r| r > switch)
}

/// The newest `<tli>.history` in `pg_wal` and the switch point its last line records.
pub fn newest_history(pg_wal: &std::path::Path) -> Option<(u32, u64)> {
    let (tli, path) = std::fs::read_dir(pg_wal)
        .ok()?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let tli = u32::from_str_radix(name.strip_suffix(".history")?, 16).ok()?;
            Some((tli, e.path()))
        })
        .max_by_key(|(tli, _)| *tli)?;
    let text = std::fs::read_to_string(path).ok()?;
    let last = text
        .lines()
        .rfind(|l| !l.trim().is_empty() && !l.starts_with('#'))?;
    let switch = parse_lsn(last.split_whitespace().nth(1)?)?;
    Some((tli, switch))
}

/// Whether pod `pod` (a standby, `me`) may promote now, given the other instances' reports:
/// not while another primary reported recently and still accepts writes (two writable
/// primaries), nor before it received all the WAL a fenced primary reported (a switchover
/// loses no committed transaction). A primary gone silent (a failover) holds nothing up:
/// what it had not sent is lost, as asynchronous replication loses it.
pub fn may_promote(
    pod: &str,
    me: &Replication,
    others: &[InstanceStatus],
    now: chrono::DateTime<chrono::Utc>,
) -> Result<(), String> {
    // What it holds: a standby restarted since it lost its primary counts received WAL
    // afresh from its replay position's segment, behind what it replayed.
    let lsn = |l: &Option<String>| l.as_deref().and_then(parse_lsn);
    let mine = lsn(&me.received_lsn).max(lsn(&me.replayed_lsn));
    for other in others.iter().filter(|o| o.name != pod) {
        let reported = pgwarden_sdk::convert::parse_time(other.reported_at.as_deref());
        let fresh = reported.is_some_and(|t| (now - t).num_seconds() <= FRESH_SECONDS);
        if !fresh || other.role.as_deref() != Some("primary") {
            continue;
        }
        if other.read_only != Some(true) {
            return Err(format!(
                "{} is a primary that still accepts writes",
                other.name
            ));
        }
        let theirs = other.received_lsn.as_deref().and_then(parse_lsn);
        if theirs > mine {
            return Err(format!(
                "{} (fenced) is at {}, this standby has received {}",
                other.name,
                other.received_lsn.as_deref().unwrap_or_default(),
                me.received_lsn.as_deref().unwrap_or("nothing"),
            ));
        }
    }
    Ok(())
}

/// Before PostgreSQL starts as a primary: when the Cluster's `targetPrimary` names another
/// pod (a failover or switchover happened while this one was away), it starts fenced (and
/// says so: `true`; it then writes nothing, not even the replication user), so a
/// former primary never takes a write between its start and its first tick. An existing
/// PGDATA only (a new one has nothing to protect); without an answer from the API server it
/// starts as before, and the first tick fences it.
pub async fn fence_before_start(opts: &RunOptions, pg: &Postgres) -> bool {
    let (Some(cluster), Some(pod)) = (&opts.cluster, &opts.pod_name) else {
        return false;
    };
    let auto = pg.pgdata.join("postgresql.auto.conf");
    if !auto.is_file() {
        return false;
    }
    let reporter = Reporter::connect(opts.namespace.clone()).await;
    let target = match reporter.cluster_status(cluster).await {
        Ok(status) => status.and_then(|s| s.target_primary),
        Err(e) => {
            eprintln!("pgwarden-agent: cannot read targetPrimary before the start: {e:#}");
            None
        }
    };
    let Some(target) = target.filter(|t| t != pod) else {
        return false;
    };
    if let Err(e) = append_fence(&auto) {
        eprintln!("pgwarden-agent: cannot fence {pod} before its start: {e:#}");
        return false;
    }
    eprintln!("pgwarden-agent: {pod} starts fenced read-only: targetPrimary is {target}");
    true
}

/// `default_transaction_read_only = 'on'` in `postgresql.auto.conf`, as `ALTER SYSTEM`
/// writes it (the last setting wins; `ALTER SYSTEM RESET` removes it).
fn append_fence(auto: &std::path::Path) -> Result<()> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new().append(true).open(auto)?;
    writeln!(file, "default_transaction_read_only = 'on'")?;
    file.sync_all()?;
    Ok(())
}

/// What this instance does about `status.targetPrimary`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Act {
    /// A standby named target: `pg_ctl promote`, then wait until out of recovery.
    Promote,
    /// A primary that is not the target: refuse writes (`default_transaction_read_only`,
    /// kept in `postgresql.auto.conf` so a restart comes back fenced) and end the sessions.
    Fence,
    /// The target fenced before and promoted since: writes again.
    Unfence,
    Nothing,
}

/// The act of pod `pod` given its replication facts and the Cluster's `targetPrimary` (none:
/// nobody asked anything yet, so nothing changes).
pub fn act(pod: &str, facts: &Replication, target: Option<&str>) -> Act {
    let Some(target) = target else {
        return Act::Nothing;
    };
    match (facts.in_recovery, target == pod, facts.read_only) {
        (true, true, _) => Act::Promote,
        (false, false, false) => Act::Fence,
        (false, true, true) => Act::Unfence,
        _ => Act::Nothing,
    }
}

/// How long a promotion may take before the agent says so (it keeps waiting next tick).
const PROMOTE_WAIT: Duration = Duration::from_secs(60);

/// `pg_ctl promote`, then polls `pg_is_in_recovery()` (`pg_ctl -w` may return before the
/// promotion is done, DESIGN §8); lifts a fence the instance carried as a former primary.
pub fn promote(pg: &Postgres) -> Result<()> {
    let mut cmd = Command::new(pg.bin.join("pg_ctl"));
    cmd.arg("promote").arg("-D").arg(&pg.pgdata);
    let out = pg
        .run_as
        .apply(&mut cmd)
        .output()
        .context("cannot run pg_ctl promote")?;
    if !out.status.success() {
        bail!(
            "pg_ctl promote failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let start = Instant::now();
    while pg.query("SELECT pg_is_in_recovery()")? != "f" {
        if start.elapsed() > PROMOTE_WAIT {
            bail!(
                "still in recovery {}s after pg_ctl promote",
                PROMOTE_WAIT.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // The new timeline in the control file at once, not at the next checkpoint: `pg_rewind`
    // of the former primary reads it there (else "same timeline, no rewind required").
    pg.query("CHECKPOINT")?;
    unfence(pg)
}

/// Does `act`, saying so in the log.
fn perform(pg: &Postgres, pod: &str, target: &str, act: Act) -> Result<()> {
    let done = match act {
        Act::Promote => promote(pg).map(|()| "promoted: it is the primary"),
        Act::Fence => fence(pg).map(|()| "fenced read-only: it is not the target primary"),
        Act::Unfence => unfence(pg).map(|()| "writable again: it is the target primary"),
        Act::Nothing => return Ok(()),
    }?;
    eprintln!("pgwarden-agent: {pod} {done} (targetPrimary {target})");
    Ok(())
}

#[cfg(test)]
#[path = "role_tests.rs"]
mod tests;
