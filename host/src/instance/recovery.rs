//! Bootstrap by restore, the I/O edge of [`super::restore`]: reads the recorded restore state
//! and PGDATA's facts, downloads the base backup, runs PostgreSQL in recovery until it is
//! promoted (starting it again whenever it stops recovery, e.g. on a store error), and
//! records each phase durably before the step it names begins.
//!
//! ```text
//!   decide(restore.json, PGDATA, --restore-backup?)
//!     Initdb | Normal ──────────────────────────────────────────► the caller starts PostgreSQL
//!     Download: record downloading ─► empty PGDATA ─► barman-cloud-restore ─► syncfs
//!               ─► recovery.signal (fsynced) ─► record replaying ─┐
//!     Replay ─────────────────────────────────────────────────────┤
//!                                                                 ▼
//!     loop: config with restore_command ─► postgres ─► promoted? ─► record promoted, done
//!                                                   └► stopped in recovery ─► backoff, again
//! ```

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use pgwarden_crds::settings::{ARCHIVE_SETTINGS_KEY, ArchiveSettings};

use super::archive;
use super::barman::{self, Barman};
use super::layout::{self, Layout};
use super::options::RestoreOptions;
use super::postgres::{self, PgConfig, Postgres, RecoveryEnd};
use super::restore::{self, PgdataFacts, Phase, RestoreState, Start};
use super::walrestore::WalRestoreFailure;

/// How the agent brings PostgreSQL up.
#[derive(Debug)]
pub enum Boot {
    /// A new, empty cluster: initdb first.
    Initdb,
    /// PGDATA holds a cluster ready to start.
    Existing,
    /// A restored cluster in recovery: start it with these recovery settings.
    Recover(Vec<(String, String)>),
}

/// Decides how to start from the recorded restore state and PGDATA, and downloads the base
/// backup when that is the next step.
pub fn prepare(
    pg: &Postgres,
    layout: &Layout,
    restore: Option<&RestoreOptions>,
    settings_dir: &Path,
    exe: &Path,
) -> Result<Boot> {
    let state = read_state(layout)?;
    let facts = pgdata_facts(&layout.pgdata)?;
    let start = restore::decide(state.as_ref(), facts, restore.is_some())?;
    if state.is_some() || restore.is_some() {
        eprintln!(
            "pgwarden-agent: restore state {:?}, PGDATA {facts:?}: {start:?}",
            state.as_ref().map(|s| s.phase)
        );
    }
    match (start, restore) {
        (Start::Initdb, _) => Ok(Boot::Initdb),
        (Start::Normal { record_promoted }, _) => {
            if record_promoted && let Some(s) = &state {
                record(layout, &s.enter(Phase::Promoted, &archive::now()))?;
                eprintln!("pgwarden-agent: recovery had ended before this start");
            }
            Ok(Boot::Existing)
        }
        (Start::Download { wipe }, Some(r)) => {
            // A download begun before restarts from the store it began with.
            let source = match wipe {
                true => Source::kept(r, settings_dir, layout)?,
                false => Source::keep(r, settings_dir, layout)?,
            };
            download(pg, layout, r, &source, wipe)?;
            Ok(Boot::Recover(source.recovery_settings(r, exe)))
        }
        (Start::Replay, Some(r)) => {
            let source = Source::kept(r, settings_dir, layout)?;
            if state.is_none() {
                // An earlier agent's restore: from now on, its progress is recorded.
                record(layout, &source.state(r, Phase::Replaying))?;
            }
            eprintln!(
                "pgwarden-agent: resuming the replay of backup {}",
                r.backup_id
            );
            Ok(Boot::Recover(source.recovery_settings(r, exe)))
        }
        (Start::Download { .. } | Start::Replay, None) => {
            unreachable!("restore::decide asks for a restore only when one is asked")
        }
    }
}

/// The store a restore reads: its settings file (read again by every `wal-restore` call) and
/// the settings in it. The file is the agent's own copy in the state folder, made before the
/// download: the mounted source (a ConfigMap key) may go while the replay still needs it (its
/// Backup deleted, the Cluster's spec edited), and a restore must finish from the store it
/// started with.
struct Source {
    file: PathBuf,
    settings: ArchiveSettings,
}

impl Source {
    /// The store given to this run: `--restore-source`, else the Cluster's own archive.json.
    fn given(r: &RestoreOptions, settings_dir: &Path) -> Result<ArchiveSettings> {
        let file = r
            .source
            .clone()
            .unwrap_or_else(|| settings_dir.join(ARCHIVE_SETTINGS_KEY));
        layout::read_json(&file)
    }

    /// The given store, kept durably in the state folder (a new download starts from it).
    fn keep(r: &RestoreOptions, settings_dir: &Path, layout: &Layout) -> Result<Self> {
        let settings = Self::given(r, settings_dir)?;
        let file = layout.restore_source();
        layout::write_json_durable(&file, &settings)
            .context("cannot keep the restore's source store")?;
        Ok(Self { file, settings })
    }

    /// The store kept when the download began; a restore begun by an earlier agent version
    /// (no copy yet) keeps the given one now.
    fn kept(r: &RestoreOptions, settings_dir: &Path, layout: &Layout) -> Result<Self> {
        let file = layout.restore_source();
        if !file.exists() {
            return Self::keep(r, settings_dir, layout);
        }
        let settings = layout::read_json(&file)?;
        Ok(Self { file, settings })
    }

    /// The state of restoring `r` from this store, entered now.
    fn state(&self, r: &RestoreOptions, phase: Phase) -> RestoreState {
        RestoreState {
            phase,
            backup_id: r.backup_id.clone(),
            destination_path: self.settings.destination_path.clone(),
            server_name: self.settings.server_name.clone(),
            since: archive::now(),
        }
    }

    fn recovery_settings(&self, r: &RestoreOptions, exe: &Path) -> Vec<(String, String)> {
        let command = postgres::restore_command(exe, &self.file);
        postgres::recovery_settings(&command, r.target.as_ref())
    }
}

/// Runs PostgreSQL in recovery until it is promoted, then records `promoted` and drops the
/// recovery settings from the configuration. PostgreSQL stopping in recovery (a store error
/// the restore_command gave up on, a crash) starts it again after a growing pause: the replay
/// goes on from its last restartpoint, for as long as it takes; no timeout ends it.
pub fn replay(
    pg: &Postgres,
    layout: &Layout,
    conf: &mut PgConfig,
    settings: Vec<(String, String)>,
) -> Result<Child> {
    let mut pause = Pause::default();
    loop {
        conf.recovery = settings.clone();
        pg.write_config(&conf.render())?;
        let started = Instant::now();
        let mut child = pg.spawn()?;
        let end = pg.wait_promoted(&mut child)?;
        if end == RecoveryEnd::Promoted || !pg.pgdata.join("recovery.signal").exists() {
            // Promoted, or recovery ended and PostgreSQL stopped right after: either way the
            // recovery is over (PostgreSQL removes recovery.signal only then).
            promoted(layout)?;
            conf.recovery.clear();
            pg.write_config(&conf.render())?;
            eprintln!("pgwarden-agent: recovery ended, instance promoted");
            return match end {
                RecoveryEnd::Promoted => Ok(child),
                RecoveryEnd::Exited(_) => pg.start(conf),
            };
        }
        let RecoveryEnd::Exited(status) = end else {
            unreachable!("handled above")
        };
        let wait = pause.next(started.elapsed());
        eprintln!(
            "pgwarden-agent: PostgreSQL stopped during recovery ({status}){}; starting it again in {}s",
            last_failure(layout, started),
            wait.as_secs()
        );
        std::thread::sleep(wait);
    }
}

/// Growing pauses between starts of PostgreSQL in recovery: 1 s doubling to 60 s, back to 1 s
/// after a run that lasted 10 minutes (it made progress).
#[derive(Debug, Default)]
struct Pause {
    last: Option<Duration>,
}

impl Pause {
    const FIRST: Duration = Duration::from_secs(1);
    const MAX: Duration = Duration::from_secs(60);
    const PROGRESS: Duration = Duration::from_secs(600);

    fn next(&mut self, ran: Duration) -> Duration {
        let next = match self.last {
            Some(last) if ran < Self::PROGRESS => (last * 2).min(Self::MAX),
            _ => Self::FIRST,
        };
        self.last = Some(next);
        next
    }
}

/// The restore_command's last recorded failure, when written since `since`.
fn last_failure(layout: &Layout, since: Instant) -> String {
    let path = layout.wal_restore_failure();
    let fresh = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age <= since.elapsed());
    match layout::read_json::<WalRestoreFailure>(&path) {
        Ok(f) if fresh => format!(
            ": the restore_command gave up on {}: {}",
            f.wal,
            barman::scrub(&f.message)
        ),
        _ => String::new(),
    }
}

fn promoted(layout: &Layout) -> Result<()> {
    match read_state(layout)? {
        Some(s) => record(layout, &s.enter(Phase::Promoted, &archive::now())),
        None => Ok(()),
    }
}

/// Downloads the base backup into PGDATA and leaves it ready to replay, recording
/// `downloading` before PGDATA is touched and `replaying` once everything is durable.
fn download(
    pg: &Postgres,
    layout: &Layout,
    r: &RestoreOptions,
    source: &Source,
    wipe: bool,
) -> Result<()> {
    let state = source.state(r, Phase::Downloading);
    record(layout, &state)?;
    ready_pgdata(pg, wipe)?;
    eprintln!(
        "pgwarden-agent: restoring backup {} from {}",
        r.backup_id, source.settings.destination_path
    );
    let barman = Barman::from_env();
    let args = barman::restore_args(&source.settings, &r.backup_id, &pg.pgdata);
    let mut cmd = barman.command("barman-cloud-restore", &source.settings, &args);
    pg.run_as.apply(&mut cmd);
    barman.run("barman-cloud-restore", &mut cmd)?;
    sync_filesystem(&pg.pgdata)?;
    // PostgreSQL replays archived WAL while recovery.signal exists; a standby.signal from the
    // source would make it wait for a primary forever.
    let _ = std::fs::remove_file(pg.pgdata.join("standby.signal"));
    let signal = pg.pgdata.join("recovery.signal");
    layout::write_durable(&signal, b"")?;
    pg.run_as.own(&signal, false)?;
    record(layout, &state.enter(Phase::Replaying, &archive::now()))
}

/// Creates PGDATA (mode 0700, PostgreSQL's user); with `wipe`, deletes what it holds first.
fn ready_pgdata(pg: &Postgres, wipe: bool) -> Result<()> {
    let dir = &pg.pgdata;
    if wipe && dir.exists() {
        eprintln!(
            "pgwarden-agent: emptying {} (an interrupted download)",
            dir.display()
        );
        empty_dir(dir)?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    pg.run_as.own(dir, false)?;
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
    Ok(())
}

/// Deletes everything inside `dir`, keeping `dir` itself (it may be a mount point). Symbolic
/// links are removed, never followed.
fn empty_dir(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let path = entry?.path();
        let meta = std::fs::symlink_metadata(&path)?;
        let removed = if meta.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        removed.with_context(|| format!("cannot remove {}", path.display()))?;
    }
    Ok(())
}

/// Flushes the file system holding `path` to disk: the downloaded files are durable before
/// the state says the download is done.
fn sync_filesystem(path: &Path) -> Result<()> {
    let dir =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    nix::unistd::syncfs(&dir).with_context(|| format!("cannot sync {}", path.display()))
}

fn read_state(layout: &Layout) -> Result<Option<RestoreState>> {
    let path = layout.restore_state();
    if !path.exists() {
        return Ok(None);
    }
    // A state file that does not parse is not guessed around: a person looks at it.
    layout::read_json(&path).map(Some)
}

fn record(layout: &Layout, state: &RestoreState) -> Result<()> {
    layout::write_json_durable(&layout.restore_state(), state)
        .context("cannot record the restore's progress")
}

fn pgdata_facts(pgdata: &Path) -> Result<PgdataFacts> {
    let is_empty = match std::fs::read_dir(pgdata) {
        Ok(mut entries) => entries.next().is_none(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
        Err(e) => return Err(e).with_context(|| format!("cannot list {}", pgdata.display())),
    };
    Ok(PgdataFacts {
        has_pg_version: pgdata.join("PG_VERSION").exists(),
        is_empty,
        has_recovery_signal: pgdata.join("recovery.signal").exists(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_grow_to_a_minute_and_start_over_after_progress() {
        let mut p = Pause::default();
        let quick = Duration::from_secs(3);
        let secs: Vec<u64> = (0..8).map(|_| p.next(quick).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(p.next(Duration::from_secs(900)), Duration::from_secs(1));
    }

    #[test]
    fn emptying_keeps_the_folder_and_never_follows_links() {
        let dir = tempfile::tempdir().unwrap();
        let pgdata = dir.path().join("pgdata");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(pgdata.join("base/1")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("keep"), "x").unwrap();
        std::fs::write(pgdata.join("PG_VERSION"), "15").unwrap();
        std::os::unix::fs::symlink(&outside, pgdata.join("pg_wal")).unwrap();
        empty_dir(&pgdata).unwrap();
        assert!(pgdata.is_dir());
        assert_eq!(std::fs::read_dir(&pgdata).unwrap().count(), 0);
        assert!(outside.join("keep").exists());
    }

    #[test]
    fn facts_of_an_absent_pgdata_say_empty() {
        let dir = tempfile::tempdir().unwrap();
        let facts = pgdata_facts(&dir.path().join("absent")).unwrap();
        assert_eq!(
            facts,
            PgdataFacts {
                has_pg_version: false,
                is_empty: true,
                has_recovery_signal: false
            }
        );
    }
}
