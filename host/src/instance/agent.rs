//! `pgwarden instance run`: bootstrap (initdb or restore), configure, start and supervise
//! PostgreSQL, forward signals, and report archive facts until PostgreSQL stops.
//!
//! ```text
//!   restore.json + PGDATA + --restore-backup? (recovery, restore: a restart-proof state)
//!     ├─ initdb ─────────────────────┐
//!     ├─ existing cluster ───────────┤
//!     └─ download? ─► replay ────────┤  postgres in recovery until promoted (no timeout;
//!                                    ▼  started again when it stops recovery)
//!   postgresql.pgwarden.conf ─► postgres (child), answering queries
//!        ▼
//!   loop: SIGTERM/SIGINT ─► fast shutdown │ postgres exited ─► exit │ tick ─► report facts
//!         │ beat ─► <state>/alive (liveness) │ a report or not ─► isolation guard (its task)
//! ```

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{Context, Result, bail};
use tokio::signal::unix::{SignalKind, signal};

use super::archive::{self, ArchiveFailure};
use super::barman;
use super::facts::{self, ArchiveFacts, ArchiverStats};
use super::layout::ArchiveCheck;
use super::layout::{self, Layout};
pub use super::options::{RestoreOptions, RunOptions};
use super::postgres::{self, PgConfig, Postgres, RunAs};
use super::recovery::{self, Boot};
use super::rejoin::StartAs;
use super::report::Reporter;

/// Runs the agent until PostgreSQL stops; returns PostgreSQL's exit status.
pub async fn run(opts: RunOptions) -> Result<()> {
    let run_as = RunAs::detect()?;
    let layout = Layout::new(&opts.pgdata);
    prepare_state(&layout, run_as)?;
    let pg = Postgres {
        bin: opts.pg_bin.clone(),
        pgdata: opts.pgdata.clone(),
        port: opts.port,
        socket_dir: opts.socket_dir.clone(),
        run_as,
    };
    let archive = layout::read_archive_settings(&opts.settings_dir).ok();
    let mut conf = PgConfig {
        listen_addresses: opts.listen_addresses.clone(),
        port: opts.port,
        socket_dir: opts.socket_dir.clone(),
        archive_command: archive
            .as_ref()
            .map(|_| postgres::archive_command(&current_exe())),
        archive_timeout_seconds: archive.as_ref().map_or(0, |a| a.archive_timeout_seconds),
        parameters: super::parameters::live::at_start(&opts, &layout, &pg),
        recovery: Vec::new(),
    };
    // The primary the Cluster's status names, not the pod's index (a failover moves it).
    let start = super::rejoin::start_as(&opts, &layout).await?;
    // One archiver: a standby never uploads WAL (PostgreSQL does not archive in recovery;
    // the native archiver's follower must not either). A promoted one starts it then.
    let archiver = Archiving {
        layout: layout.clone(),
        settings_dir: opts.settings_dir.clone(),
        run_as,
    };
    start_native_restorer(&layout, run_as);
    let mut archiving = start == StartAs::Primary && archiver.start();
    let password = super::standby::password()?;
    // A fenced former primary writes nothing, not even the replication user's password.
    let fenced = start == StartAs::Primary && super::role::fence_before_start(&opts, &pg).await;
    // Blocking on purpose: a clone, a download or a replay takes as long as it takes.
    let child = tokio::task::block_in_place(|| match &start {
        StartAs::Primary if fenced => bootstrap(&opts, &layout, &pg, &mut conf),
        StartAs::Primary => start_primary(&opts, &layout, &pg, &mut conf, password.as_deref()),
        other => start_standby(&opts, &layout, &pg, &mut conf, other, password.as_deref()),
    })?;
    eprintln!("pgwarden-agent: PostgreSQL ready on port {}", opts.port);
    supervise(&opts, &layout, &pg, child, (&archiver, &mut archiving)).await
}

/// What starts the native archiver (once, on a primary: at start, or on promotion).
struct Archiving {
    layout: Layout,
    settings_dir: PathBuf,
    run_as: RunAs,
}

impl Archiving {
    /// Starts the native archiver's follower and socket; `true` (it is started).
    fn start(&self) -> bool {
        start_native_archiver(&self.layout, &self.settings_dir, self.run_as);
        true
    }
}

/// The primary: bootstrapped (initdb, existing, restore), then the replication user made or
/// updated from the Cluster's Secret.
fn start_primary(
    opts: &RunOptions,
    layout: &Layout,
    pg: &Postgres,
    conf: &mut PgConfig,
    password: Option<&str>,
) -> Result<std::process::Child> {
    let mut child = bootstrap(opts, layout, pg, conf)?;
    match password {
        Some(p) => {
            if let Err(e) = super::standby::ensure_replication_user(pg, p) {
                stop(&mut child)?;
                return Err(e);
            }
        }
        None => eprintln!("pgwarden-agent: no replication Secret mounted: standbys cannot connect"),
    }
    Ok(child)
}

/// A standby: cloned from the primary unless it is one already, then started streaming.
/// A restore is the primary's: the standby clones the restored primary.
fn start_standby(
    opts: &RunOptions,
    layout: &Layout,
    pg: &Postgres,
    conf: &mut PgConfig,
    start: &StartAs,
    password: Option<&str>,
) -> Result<std::process::Child> {
    let host = start.upstream().unwrap_or_default();
    let password = password.with_context(|| {
        format!(
            "a standby needs the replication password at {}/{} (the Cluster's {} Secret)",
            std::env::var(super::standby::ENV_REPLICATION_DIR)
                .unwrap_or_else(|_| pgwarden_sdk::names::REPLICATION_MOUNT_PATH.into()),
            pgwarden_sdk::names::REPLICATION_PASSWORD_KEY,
            pgwarden_sdk::names::replication_secret(opts.cluster.as_deref().unwrap_or_default()),
        )
    })?;
    let application = opts.pod_name.clone().unwrap_or_default();
    if let StartAs::Rejoin { .. } = start {
        super::standby::write_passfile(layout, pg.run_as, password)?;
        // pg_rewind reads the former primary's WAL back to the last common checkpoint;
        // what its checkpoints recycled since comes from the store (`--restore-target-wal`).
        let archive = opts
            .settings_dir
            .join(pgwarden_crds::settings::ARCHIVE_SETTINGS_KEY);
        let restore = archive.is_file().then(|| PgConfig {
            recovery: vec![(
                "restore_command".into(),
                postgres::restore_command(&current_exe(), &archive),
            )],
            ..conf.clone()
        });
        if let Some(restore) = &restore {
            pg.write_config(&restore.render())?;
        }
        super::rejoin::rejoin(pg, layout, host, &application, restore.is_some())?;
    }
    let from = super::clone_store::CloneFrom::read(&opts.settings_dir, &current_exe())?;
    conf.recovery = super::standby::prepare(pg, layout, host, password, &application, &from)?;
    eprintln!("pgwarden-agent: starting as a standby of {host}");
    pg.start(conf)
}

async fn supervise(
    opts: &RunOptions,
    layout: &Layout,
    pg: &Postgres,
    mut child: std::process::Child,
    (archiver, archiving): (&Archiving, &mut bool),
) -> Result<()> {
    let reporter = std::sync::Arc::new(Reporter::connect(opts.namespace.clone()).await);
    watch_backups(opts, layout, &reporter).await;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut tick = tokio::time::interval(opts.report_interval);
    // While a change of primary is under way (`role::pending`), the Cluster is read each
    // second: a promotion starts within a second of `targetPrimary`, not a report interval.
    let mut quick = tokio::time::interval(QUICK_LOOK);
    quick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut pending = false;
    // The liveness probe reads this loop's beat (`alive`): written here, not by a task of
    // its own, so that a stuck loop stops it.
    let mut beat = tokio::time::interval(super::alive::BEAT);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let pod = opts.pod_name.clone().unwrap_or_default();
    // An isolated primary fences itself (`isolation`): a task of its own, lifted from here.
    let guard = super::isolation::Guard::start(layout, pg.clone(), pod.clone());
    loop {
        // With when the role look began: a report that went through counts from then.
        let (began, role) = tokio::select! {
            _ = term.recv() => return stop(&mut child),
            _ = int.recv() => return stop(&mut child),
            _ = beat.tick() => {
                super::alive::beat(layout);
                continue;
            }
            _ = quick.tick(), if pending => {
                let began = std::time::Instant::now();
                (began, super::role::tick(opts, pg, &reporter, false).await)
            }
            _ = tick.tick() => {
                if let Some(status) = child.try_wait()? {
                    bail!("postgres exited on its own ({status})");
                }
                // The archive's facts are the primary's: a standby archives nothing. Asked
                // each tick: a promoted standby archives from then on.
                if in_recovery(pg) {
                } else {
                    // Promoted since the start: the new timeline is this instance's to archive.
                    *archiving = *archiving || archiver.start();
                    if let Err(e) = report_archive(opts, layout, pg, &reporter).await {
                        eprintln!("pgwarden-agent: cannot report archive facts: {}", barman::scrub(&format!("{e:#}")));
                    }
                }
                let began = std::time::Instant::now();
                let role = super::role::tick(opts, pg, &reporter, true).await;
                if role.next == super::role::Next::Continue {
                    // May restart the postmaster (a new `child`): an error means it is not back.
                    super::parameters::live::tick(opts, layout, pg, &mut child, &reporter).await?;
                }
                (began, role)
            }
        };
        pending = role.pending;
        guard.looked(role.looked, began, pg, &pod);
        if role.next == super::role::Next::Rejoin {
            // Stopped (a former primary: never writable again), then started
            // afresh: the start rewinds it into a standby of the new primary.
            stop(&mut child)?;
            bail!(
                "{}: restarting to rejoin the new primary as a standby",
                opts.pod_name.as_deref().unwrap_or_default()
            );
        }
    }
}

/// How often the agent reads its Cluster while a change of primary is under way.
const QUICK_LOOK: std::time::Duration = std::time::Duration::from_secs(1);

/// PostgreSQL says it is in recovery (a standby, or a restore not yet promoted); `false` when
/// it does not answer (the report then says why).
fn in_recovery(pg: &Postgres) -> bool {
    tokio::task::block_in_place(|| pg.query("SELECT pg_is_in_recovery()")).is_ok_and(|r| r == "t")
}

/// Takes the Backups the operator assigns to this pod, when it runs in a cluster.
async fn watch_backups(opts: &RunOptions, layout: &Layout, reporter: &std::sync::Arc<Reporter>) {
    let (Some(namespace), Some(pod)) = (opts.namespace.clone(), opts.pod_name.clone()) else {
        return;
    };
    let Ok(client) = kube::Client::try_default().await else {
        return;
    };
    let pg = barman::PgConn {
        host: opts.socket_dir.display().to_string(),
        port: opts.port,
        user: "postgres".into(),
    };
    let here = super::backups::Here {
        namespace,
        cluster: opts.cluster.clone().unwrap_or_default(),
        pod,
        layout: layout.clone(),
        settings_dir: opts.settings_dir.clone(),
        pg: std::sync::Arc::new(pg),
    };
    // Deletions only for a known Cluster: the agent refuses any request not for its own.
    if here.cluster.is_empty() {
        eprintln!(
            "pgwarden-agent: no Cluster name ({}): no backup deletion is run",
            pgwarden_crds::settings::pod::ENV_CLUSTER
        );
    } else {
        tokio::spawn(super::backups::deletions(
            client.clone(),
            here.clone(),
            reporter.clone(),
        ));
    }
    tokio::spawn(super::backups::watch(client, here, reporter.clone()));
}

/// The native archiver's follower and socket; idle while the settings name barman-cloud.
fn start_native_archiver(layout: &Layout, settings_dir: &Path, run_as: RunAs) {
    let archiver = super::native::Archiver::new(layout.clone(), settings_dir.to_path_buf());
    tokio::spawn(async move {
        if let Err(e) = archiver.run(|sock| run_as.own(sock, false)).await {
            eprintln!("pgwarden-agent: the native archiver stopped: {e:#}");
        }
    });
}

/// The native restorer's socket (any instance may restore WAL).
fn start_native_restorer(layout: &Layout, run_as: RunAs) {
    let restorer = super::native::Restorer::new(layout.clone(), run_as);
    tokio::spawn(async move {
        if let Err(e) = restorer.run().await {
            eprintln!("pgwarden-agent: the native restorer stopped: {e:#}");
        }
    });
}

/// Fast shutdown: SIGINT to the postmaster, then wait for it.
fn stop(child: &mut std::process::Child) -> Result<()> {
    eprintln!("pgwarden-agent: stopping PostgreSQL (fast shutdown)");
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
    let status = child.wait()?;
    eprintln!("pgwarden-agent: PostgreSQL stopped ({status})");
    Ok(())
}

/// Creates the state folder for the PostgreSQL user; forgets WAL archived ahead by an earlier
/// run (archiving a file twice is harmless, trusting a stale marker is not).
fn prepare_state(layout: &Layout, run_as: RunAs) -> Result<()> {
    let _ = std::fs::remove_dir_all(layout.spool());
    super::alive::forget(layout);
    for dir in [layout.state.clone(), layout.spool(), layout.backups()] {
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        run_as.own(&dir, false)?;
    }
    Ok(())
}

/// Brings PostgreSQL up from whatever the volume holds: a new cluster (initdb), an existing
/// one, or a restore to begin or resume (see `recovery`); returns the running postmaster,
/// promoted when it was restored.
fn bootstrap(
    opts: &RunOptions,
    layout: &Layout,
    pg: &Postgres,
    conf: &mut PgConfig,
) -> Result<std::process::Child> {
    let restore = opts.restore.as_ref();
    match recovery::prepare(pg, layout, restore, &opts.settings_dir, &current_exe())? {
        Boot::Initdb => {
            eprintln!("pgwarden-agent: initdb {}", opts.pgdata.display());
            pg.initdb()?;
            pg.start(conf)
        }
        Boot::Existing => pg.start(conf),
        Boot::Recover(settings) => recovery::replay(pg, layout, conf, settings),
    }
}

/// Gathers the archive facts, writes them to the state folder and patches the Cluster.
async fn report_archive(
    opts: &RunOptions,
    layout: &Layout,
    pg: &Postgres,
    reporter: &Reporter,
) -> Result<()> {
    let f = tokio::task::block_in_place(|| gather(opts, layout, pg));
    let status = facts::archive_status(&f);
    layout::write_json(&layout.archive_facts(), &status)?;
    if let Some(cluster) = &opts.cluster {
        let patch = facts::cluster_status_patch(cluster, &status);
        reporter
            .apply_status("Cluster", "clusters", cluster, &patch)
            .await?;
    }
    Ok(())
}

fn gather(opts: &RunOptions, layout: &Layout, pg: &Postgres) -> ArchiveFacts {
    let archiver = pg
        .query("SELECT row_to_json(a) FROM pg_stat_archiver a")
        .ok()
        .and_then(|row| serde_json::from_str::<ArchiverStats>(&row).ok());
    let ready = layout::ready_files(&layout.archive_status()).unwrap_or_default();
    let oldest = ready.iter().map(|(_, t)| *t).min();
    ArchiveFacts {
        pod_name: opts.pod_name.clone(),
        archiver,
        failure: layout::read_json::<ArchiveFailure>(&layout.archive_failure()).ok(),
        check: layout::read_json::<ArchiveCheck>(&layout.archive_check()).ok(),
        settings: layout::read_archive_settings(&opts.settings_dir).ok(),
        ready_segments: ready.len() as i64,
        oldest_ready_age_seconds: oldest.map(|t| age_seconds(t, SystemTime::now())),
        now: archive::now(),
    }
}

fn age_seconds(then: SystemTime, now: SystemTime) -> i64 {
    now.duration_since(then)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn current_exe() -> PathBuf {
    std::env::current_exe().unwrap_or_else(|_| Path::new("pgwarden").to_path_buf())
}
