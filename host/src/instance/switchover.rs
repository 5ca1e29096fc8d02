//! The old primary's side of a switchover (or of a failover it lived through): it hands over
//! by a clean shutdown, so no committed transaction is lost.
//!
//! Fencing with `default_transaction_read_only` alone leaves a hole: it is only a default, so
//! a client that asks (`BEGIN READ WRITE`, `SET default_transaction_read_only = off`) still
//! commits on the old primary, after the fenced report the target waited for, and that commit
//! is lost once the target promotes. A stopped PostgreSQL commits nothing. So:
//!
//! ```text
//!   old primary (targetPrimary names another)       the target standby (role.rs)
//!   fence: read-only default, sessions ended
//!   the target streams from it? (else it stays up
//!     fenced, for the target to catch up: as before)
//!   pg_ctl stop -m fast: the shutdown checkpoint;
//!     the WAL senders send all WAL to the standbys
//!   report {primary, readOnly, LSN of the shutdown
//!     checkpoint} each second while it waits   ──► promotes once it has received past it
//!   the target reports itself primary ──► Rejoin (the agent restarts and rejoins as its standby)
//! ```
//!
//! Bounded: after [`HAND_OVER_WAIT`] without a new primary (the target lost, the switchover
//! withdrawn) it returns `Rejoin` all the same, and the agent's start decides from the
//! Cluster's status (a fenced primary again, or a standby).

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::facts::{self, Replication};
use super::fencing::{Next, fence};
use super::options::RunOptions;
use super::postgres::Postgres;
use super::report::Reporter;

/// How long the stopped old primary waits for the target to report itself primary.
pub const HAND_OVER_WAIT: Duration = Duration::from_secs(120);
const REPORT_EVERY: Duration = Duration::from_secs(1);

/// Fences, stops PostgreSQL cleanly, then reports its last WAL position until `target` is the
/// primary (see the module's doc). PostgreSQL stays stopped: the caller restarts the agent.
pub async fn hand_over(
    opts: &RunOptions,
    pg: &Postgres,
    reporter: &Reporter,
    target: &str,
) -> Result<Next> {
    let (Some(cluster), Some(pod)) = (&opts.cluster, &opts.pod_name) else {
        return Ok(Next::Continue);
    };
    let streaming = tokio::task::block_in_place(|| {
        fence(pg)?;
        target_streams(pg, target)
    })?;
    if !streaming {
        // A clean shutdown sends WAL only to connected standbys: stay up, fenced, so the
        // target catches up from here (it promotes once it has this primary's last report).
        eprintln!(
            "pgwarden-agent: {pod} stays up fenced: {target} does not stream from it (yet), and a stopped primary could not send it the rest"
        );
        return Ok(Next::Continue);
    }
    let lsn = tokio::task::block_in_place(|| stop_cleanly(pg))?;
    eprintln!(
        "pgwarden-agent: {pod} stopped cleanly at {lsn} to hand over to {target} (targetPrimary)"
    );
    let last = Replication {
        in_recovery: false,
        read_only: true,
        received_lsn: Some(lsn.clone()),
        replayed_lsn: Some(lsn),
        ..Default::default()
    };
    let start = Instant::now();
    let layout = super::layout::Layout::new(&pg.pgdata);
    while start.elapsed() < HAND_OVER_WAIT {
        // This wait is the agent's loop for now: it beats, or the liveness probe would kill
        // the container before the bounded wait ends.
        super::alive::beat(&layout);
        let mut entry = facts::instance_status(pod, &last, &super::archive::now());
        entry.ready = Some(false);
        let patch = facts::instance_status_patch(cluster, &entry);
        let manager = facts::instance_field_manager(pod);
        if let Err(e) =
            (reporter.apply_status_as(&manager, "Cluster", "clusters", cluster, &patch)).await
        {
            eprintln!("pgwarden-agent: cannot report the hand-over's last WAL position: {e:#}");
        }
        let status = reporter.cluster_status(cluster).await.ok().flatten();
        let primary = pgwarden_core::failover::primary_of(cluster, status.as_ref());
        if primary != *pod {
            eprintln!("pgwarden-agent: {primary} is the primary: {pod} rejoins as its standby");
            return Ok(Next::Rejoin);
        }
        tokio::time::sleep(REPORT_EVERY).await;
    }
    eprintln!(
        "pgwarden-agent: no new primary {}s after {pod} stopped for {target}: restarting to follow the Cluster's status",
        HAND_OVER_WAIT.as_secs()
    );
    Ok(Next::Rejoin)
}

/// How long the old primary waits for the target's WAL sender to be streaming.
const STREAM_WAIT: Duration = Duration::from_secs(10);

/// Whether `target` streams from this primary (a `pg_stat_replication` row under its
/// application name, the pod's name), waiting up to [`STREAM_WAIT`].
fn target_streams(pg: &Postgres, target: &str) -> Result<bool> {
    let sql = format!(
        "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming' AND application_name = '{}'",
        target.replace('\'', "''")
    );
    let start = Instant::now();
    loop {
        if pg.query(&sql)? != "0" {
            return Ok(true);
        }
        if start.elapsed() > STREAM_WAIT {
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// `pg_ctl stop -m fast` (sessions rolled back, a shutdown checkpoint; the WAL senders send
/// everything to connected standbys before the postmaster exits), then the shutdown
/// checkpoint's location from `pg_controldata`: a standby that received past it has every
/// committed transaction.
pub fn stop_cleanly(pg: &Postgres) -> Result<String> {
    let mut stop = Command::new(pg.bin.join("pg_ctl"));
    stop.args(["stop", "-m", "fast", "-w", "-t", "120", "-D"])
        .arg(&pg.pgdata);
    let out = pg
        .run_as
        .apply(&mut stop)
        .output()
        .context("cannot run pg_ctl stop")?;
    if !out.status.success() {
        bail!(
            "pg_ctl stop -m fast failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let mut control = Command::new(pg.bin.join("pg_controldata"));
    control.arg("-D").arg(&pg.pgdata).env("LC_ALL", "C");
    let out = (pg.run_as.apply(&mut control).output()).context("cannot run pg_controldata")?;
    shutdown_checkpoint(&String::from_utf8_lossy(&out.stdout)).with_context(|| {
        format!(
            "pg_controldata of {} after the clean shutdown: {}",
            pg.pgdata.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )
    })
}

/// The latest checkpoint's location from `pg_controldata`'s text, when the cluster state says
/// it was shut down cleanly.
fn shutdown_checkpoint(text: &str) -> Result<String> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim_start_matches(':').trim().to_string())
    };
    let state = field("Database cluster state").unwrap_or_default();
    if state != "shut down" {
        bail!("the cluster state is {state:?}, not \"shut down\"");
    }
    field("Latest checkpoint location").context("no \"Latest checkpoint location\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shutdown_checkpoint_is_read_only_after_a_clean_shutdown() {
        let text = "pg_control version number:            1300\nDatabase cluster state:               shut down\nLatest checkpoint location:           0/3000028\nLatest checkpoint's REDO location:    0/3000028\n";
        assert_eq!(shutdown_checkpoint(text).unwrap(), "0/3000028");
        let crashed = text.replace("shut down", "in production");
        let err = shutdown_checkpoint(&crashed).unwrap_err().to_string();
        assert_eq!(
            err,
            "the cluster state is \"in production\", not \"shut down\""
        );
    }
}
