//! Who this instance starts as, from the Cluster's status rather than the pod's index, and
//! how a former primary comes back as a standby of the new one.
//!
//! ```text
//!   status (currentPrimary as the agents report it, targetPrimary) + PGDATA
//!     this pod is the primary ─────────────────────────► primary (fenced first when it is
//!                                                          not the target: `role`)
//!     empty PGDATA, or a standby's (standby.signal) ───► standby (cloned if empty)
//!     a primary's PGDATA, targetPrimary another pod, or a standby that received WAL the
//!     new primary never had (rejoin.json {pending}, see `role`) ───► rejoin:
//!         rejoin.json {rewinding} ─► pg_rewind from the new primary (WAL it recycled since
//!         the fork from the store: --restore-target-wal) ─► {rewound}
//!         ─► standby.signal ─► forget rejoin.json ─► standby
//!         pg_rewind failed, or rejoin.json {rewinding} found at start (killed mid-rewind:
//!         the data directory may be half rewritten) ─► PGDATA moved aside once to
//!         `<pgdata>.before-rejoin` ─► fresh clone (`standby`)
//! ```
//!
//! A former primary never starts writable on the way: it is stopped when it leaves (the
//! agent exits once the new primary reports, see `role`) and starts again in recovery.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use super::layout::{self, Layout};
use super::options::RunOptions;
use super::postgres::Postgres;
use super::report::Reporter;
use super::standby;

/// How this instance starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartAs {
    Primary,
    /// A standby of the primary at `host`: started as it is, or cloned when PGDATA is empty.
    Standby {
        host: String,
    },
    /// A former primary that becomes a standby of the primary at `host`.
    Rejoin {
        host: String,
    },
}

impl StartAs {
    pub fn upstream(&self) -> Option<&str> {
        match self {
            StartAs::Primary => None,
            StartAs::Standby { host } | StartAs::Rejoin { host } => Some(host),
        }
    }
}

/// What PGDATA holds, for [`decide`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Data {
    /// Nothing usable yet (empty, or a clone under way).
    Empty,
    Standby,
    Primary,
}

impl Data {
    pub fn of(layout: &Layout) -> Data {
        let cloning = standby::clone_marker(layout).exists();
        match (layout.pgdata.join("PG_VERSION").exists(), cloning) {
            (false, _) | (true, true) => Data::Empty,
            _ if layout.pgdata.join("standby.signal").exists() => Data::Standby,
            _ => Data::Primary,
        }
    }
}

/// The part of pod `pod` given the primary the status names, `targetPrimary`, its data
/// and whether a rejoin was under way: `None` for a primary, else `Some(rejoin)`.
pub fn decide(
    pod: &str,
    primary: &str,
    target: Option<&str>,
    data: Data,
    rejoining: bool,
) -> Option<bool> {
    if primary == pod && !rejoining {
        return None;
    }
    let demoted = target.is_some_and(|t| t != pod);
    Some(rejoining || (data == Data::Primary && demoted))
}

/// Asks the API server who the primary is and decides ([`decide`]); without a Cluster (an
/// agent run by hand) it is a primary. Without an answer, the pod's index decides, as
/// before any failover.
pub async fn start_as(opts: &RunOptions, layout: &Layout) -> Result<StartAs> {
    let (Some(cluster), Some(pod)) = (&opts.cluster, &opts.pod_name) else {
        return Ok(StartAs::Primary);
    };
    let reporter = Reporter::connect(opts.namespace.clone()).await;
    let status = match reporter.cluster_status(cluster).await {
        Ok(status) => status,
        Err(e) => {
            eprintln!("pgwarden-agent: cannot read the Cluster's primary before the start: {e:#}");
            None
        }
    };
    let primary = pgwarden_core::failover::primary_of(cluster, status.as_ref());
    let target = status.as_ref().and_then(|s| s.target_primary.as_deref());
    let rejoining = marker(layout).exists();
    let Some(rejoin) = decide(pod, &primary, target, Data::of(layout), rejoining) else {
        return Ok(StartAs::Primary);
    };
    let host = standby::primary_host(opts, &primary).await?;
    eprintln!("pgwarden-agent: {pod} starts as a standby of {primary} ({host})");
    Ok(match rejoin {
        true => StartAs::Rejoin { host },
        false => StartAs::Standby { host },
    })
}

/// The rejoin's progress, in the state folder: restart-proof.
#[derive(Serialize, Deserialize, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
enum Stage {
    /// A rewind is needed, not begun: a standby that received WAL the new primary never had.
    Pending,
    Rewinding,
    Rewound,
}

/// Asks for a rewind at the next start (a standby that diverged from the new primary).
pub fn request(layout: &Layout) -> Result<()> {
    layout::write_json_durable(&marker(layout), &Stage::Pending)
}

fn marker(layout: &Layout) -> PathBuf {
    layout.state.join("rejoin.json")
}

/// Where a PGDATA that could not be rewound is kept, once.
pub fn aside(layout: &Layout) -> PathBuf {
    let mut name = layout.pgdata.file_name().unwrap_or_default().to_owned();
    name.push(".before-rejoin");
    layout.pgdata.with_file_name(name)
}

/// Makes a former primary's PGDATA a standby of the primary at `host`: `pg_rewind`, else a
/// fresh clone (by [`standby::prepare`], the PGDATA moved aside first). Blocking.
/// `from_store`: the configuration has a `restore_command` for `pg_rewind` to fetch the WAL
/// the former primary no longer has.
pub fn rejoin(
    pg: &Postgres,
    layout: &Layout,
    host: &str,
    application: &str,
    from_store: bool,
) -> Result<()> {
    let stage = layout::read_json::<Stage>(&marker(layout)).ok();
    if stage == Some(Stage::Rewinding) {
        eprintln!(
            "pgwarden-agent: a rewind was interrupted: {} may be half rewritten, cloning afresh",
            layout.pgdata.display()
        );
        return set_aside(layout);
    }
    if matches!(stage, None | Some(Stage::Pending)) {
        if !layout.pgdata.join("PG_VERSION").exists() {
            return Ok(()); // moved aside already: `standby::prepare` clones
        }
        layout::write_json_durable(&marker(layout), &Stage::Rewinding)?;
        if let Err(e) = rewind(pg, layout, host, application, from_store) {
            eprintln!("pgwarden-agent: pg_rewind from {host} failed, cloning afresh: {e:#}");
            return set_aside(layout);
        }
        layout::write_json_durable(&marker(layout), &Stage::Rewound)?;
    }
    let signal = layout.pgdata.join("standby.signal");
    layout::write_durable(&signal, b"")?;
    pg.run_as.own(&signal, false)?;
    // The fence came from the former primary's own `ALTER SYSTEM`; a standby needs none.
    standby::forget_auto_setting(
        &layout.pgdata.join("postgresql.auto.conf"),
        "default_transaction_read_only",
    )?;
    forget(layout)?;
    eprintln!("pgwarden-agent: rewound from the primary at {host}: starts as its standby");
    Ok(())
}

/// Moves PGDATA aside (once: a second failure discards it, the first copy stays), so that
/// the standby is cloned afresh; then the rejoin is over (the clone has its own marker).
fn set_aside(layout: &Layout) -> Result<()> {
    let aside = aside(layout);
    if layout.pgdata.exists() {
        if aside.exists() {
            std::fs::remove_dir_all(&layout.pgdata)
                .with_context(|| format!("cannot remove {}", layout.pgdata.display()))?;
        } else {
            std::fs::rename(&layout.pgdata, &aside).with_context(|| {
                format!(
                    "cannot move {} to {}",
                    layout.pgdata.display(),
                    aside.display()
                )
            })?;
            eprintln!(
                "pgwarden-agent: the former primary's data is kept at {} (delete it once the standby streams)",
                aside.display()
            );
        }
    }
    forget(layout)
}

fn forget(layout: &Layout) -> Result<()> {
    match std::fs::remove_file(marker(layout)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
        _ => Ok(()),
    }
}

/// `pg_rewind` of PGDATA (stopped; crash recovery first if it was not shut down cleanly,
/// which pg_rewind runs itself) from the primary at `host`, as the replication user.
fn rewind(
    pg: &Postgres,
    layout: &Layout,
    host: &str,
    application: &str,
    from_store: bool,
) -> Result<()> {
    let source = format!(
        "{} dbname=postgres",
        standby::primary_conninfo(host, pg.port, &standby::passfile(layout), application)
    );
    let mut cmd = Command::new(pg.bin.join("pg_rewind"));
    pg.run_as.apply(&mut cmd);
    let out = cmd
        .arg("-D")
        .arg(&pg.pgdata)
        .arg("--source-server")
        .arg(&source)
        .args(from_store.then_some("--restore-target-wal"))
        .env("PGCONNECT_TIMEOUT", "10")
        .stdin(Stdio::null())
        .output()
        .context("cannot run pg_rewind")?;
    let said = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("pg_rewind failed: {}", said.trim());
    }
    eprintln!("pgwarden-agent: pg_rewind: {}", said.trim());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn the_part_follows_the_reported_primary_not_the_index() {
        // Before any failover: pg-1 is the primary, the others standbys.
        assert_eq!(decide("pg-1", "pg-1", None, Data::Empty, false), None);
        assert_eq!(
            decide("pg-2", "pg-1", None, Data::Empty, false),
            Some(false)
        );
        // pg-2 promoted: it stays the primary when it restarts.
        assert_eq!(
            decide("pg-2", "pg-2", Some("pg-2"), Data::Primary, false),
            None
        );
        // pg-1 comes back: its primary's data rejoins as a standby of pg-2.
        assert_eq!(
            decide("pg-1", "pg-2", Some("pg-2"), Data::Primary, false),
            Some(true)
        );
        // A standby stays one; an interrupted rejoin finishes even if pg-1 is named again.
        assert_eq!(
            decide("pg-3", "pg-2", Some("pg-2"), Data::Standby, false),
            Some(false)
        );
        assert_eq!(
            decide("pg-1", "pg-1", None, Data::Primary, true),
            Some(true)
        );
    }

    fn layout(dir: &Path) -> (Layout, Postgres) {
        let layout = Layout {
            pgdata: dir.join("pgdata"),
            state: dir.join("state"),
        };
        std::fs::create_dir_all(&layout.state).unwrap();
        std::fs::create_dir_all(&layout.pgdata).unwrap();
        std::fs::write(layout.pgdata.join("PG_VERSION"), "15").unwrap();
        let pg = Postgres {
            bin: "/nonexistent".into(),
            pgdata: layout.pgdata.clone(),
            port: 5432,
            socket_dir: dir.into(),
            run_as: super::super::postgres::RunAs::current(),
        };
        (layout, pg)
    }

    #[test]
    fn a_failed_or_interrupted_rewind_keeps_the_data_aside_once_and_clones() {
        let dir = tempfile::tempdir().unwrap();
        let (layout, pg) = layout(dir.path());
        // pg_rewind cannot run here (no binary): the data goes aside, the marker away.
        rejoin(&pg, &layout, "10.0.0.2", "pg-1", false).unwrap();
        assert!(!layout.pgdata.exists());
        assert!(aside(&layout).join("PG_VERSION").exists());
        assert!(!marker(&layout).exists());
        // Killed mid-rewind on a second rejoin: the first copy stays, this one goes.
        std::fs::create_dir_all(&layout.pgdata).unwrap();
        std::fs::write(layout.pgdata.join("PG_VERSION"), "15").unwrap();
        std::fs::write(layout.pgdata.join("half"), "").unwrap();
        layout::write_json_durable(&marker(&layout), &Stage::Rewinding).unwrap();
        rejoin(&pg, &layout, "10.0.0.2", "pg-1", false).unwrap();
        assert!(!layout.pgdata.exists());
        assert!(
            !aside(&layout).join("half").exists(),
            "the first copy was kept"
        );
        assert!(!marker(&layout).exists());
    }

    #[test]
    fn a_rewind_done_before_a_restart_is_finished_not_redone() {
        let dir = tempfile::tempdir().unwrap();
        let (layout, pg) = layout(dir.path());
        std::fs::write(
            layout.pgdata.join("postgresql.auto.conf"),
            "default_transaction_read_only = 'on'\nwork_mem = '8MB'\n",
        )
        .unwrap();
        layout::write_json_durable(&marker(&layout), &Stage::Rewound).unwrap();
        rejoin(&pg, &layout, "10.0.0.2", "pg-1", false).unwrap();
        assert!(layout.pgdata.join("standby.signal").exists());
        assert!(!marker(&layout).exists());
        let auto = std::fs::read_to_string(layout.pgdata.join("postgresql.auto.conf")).unwrap();
        assert_eq!(auto, "work_mem = '8MB'\n");
    }
}
