//! Where a new standby's data comes from, as the policy decided (`standbyClone` in the
//! archive settings), and the clone from the object store.
//!
//! ```text
//!   archive.json: absent, or standbyClone: primary ─► pg_basebackup from the primary (standby)
//!                 standbyClone: object-store ─► clone.json {objectStore} ─► empty PGDATA
//!     ─► barman-cloud-restore <store> latest ─► syncfs ─► standby.signal (no recovery.signal)
//!     ─► forget clone.json ─► start with restore_command (the native restorer) and
//!        primary_conninfo: replays the archive's WAL, then streams from the primary
//!   archive.json unreadable (an unknown standbyClone...) ─► refused, naming the file
//! ```
//!
//! The primary serves such a standby only the WAL it has not archived yet: no base backup over
//! its replication connection. The standby keeps its `restore_command` after the clone, so a
//! standby that falls behind the primary's WAL catches up from the store too.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use pgwarden_crds::settings::{ARCHIVE_SETTINGS_KEY, ArchiveSettings, CloneSource};

use super::barman::{self, Barman};
use super::layout::{self, Layout};
use super::postgres::{self, Postgres};

/// The backup a standby is cloned from: the newest in the store.
pub const BACKUP: &str = "latest";

/// Where this standby's data comes from when it has none yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CloneFrom {
    /// `pg_basebackup` from the primary.
    Primary,
    /// The store of the Cluster's archive settings.
    ObjectStore(Store),
}

/// The store a standby is cloned from and catches up from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Store {
    /// The mounted archive settings, read again by every `restore_command` call.
    pub file: PathBuf,
    pub settings: ArchiveSettings,
    /// This program, for `restore_command`.
    pub exe: PathBuf,
}

impl CloneFrom {
    /// The policy's decision in the mounted settings: no archive settings (archiving off) is
    /// the primary; settings the agent cannot read (an unknown `standbyClone`, say) are an
    /// error naming the file and the value, never a guess.
    pub fn read(settings_dir: &Path, exe: &Path) -> Result<Self> {
        let file = settings_dir.join(ARCHIVE_SETTINGS_KEY);
        if !file.is_file() {
            return Ok(CloneFrom::Primary);
        }
        let settings: ArchiveSettings =
            layout::read_json(&file).context("cannot tell where to clone this standby from")?;
        Ok(match settings.standby_clone {
            CloneSource::Primary => CloneFrom::Primary,
            CloneSource::ObjectStore => CloneFrom::ObjectStore(Store {
                file,
                settings,
                exe: exe.to_path_buf(),
            }),
        })
    }

    /// The recovery settings besides `primary_conninfo`: a standby of a Cluster that clones
    /// from the store replays WAL from it when the primary cannot send it.
    pub fn recovery_settings(&self) -> Vec<(String, String)> {
        match self {
            CloneFrom::Primary => Vec::new(),
            CloneFrom::ObjectStore(store) => vec![(
                "restore_command".into(),
                postgres::standby_restore_command(&store.exe, &store.file),
            )],
        }
    }
}

/// Clones PGDATA from the store's newest base backup, from scratch, until it succeeds (the
/// store may be unreachable for a while); each failed attempt is logged with barman's reason.
/// The caller's marker (`clone.json`) makes an interrupted clone start again.
pub fn clone(pg: &Postgres, layout: &Layout, store: &Store) -> Result<()> {
    let marker = super::layout::clone_marker(layout);
    let from = format!(
        "{}/{}",
        store.settings.destination_path, store.settings.server_name
    );
    layout::write_json_durable(
        &marker,
        &serde_json::json!({"from": "object-store", "store": from, "backup": BACKUP}),
    )?;
    eprintln!(
        "pgwarden-agent: cloning this standby from the object store {from} (backup {BACKUP})"
    );
    let start = Instant::now();
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        super::postgres::wipe(&layout.pgdata, pg.run_as)?;
        match restore(pg, store) {
            Ok(()) => break,
            Err(e) => {
                eprintln!(
                    "pgwarden-agent: clone from the object store {from} failed (attempt {attempt}, {}s): {e:#}",
                    start.elapsed().as_secs()
                );
                std::thread::sleep(pause(attempt));
            }
        }
    }
    // A standby waits for WAL for ever; recovery.signal would make it end recovery instead.
    let _ = std::fs::remove_file(layout.pgdata.join("recovery.signal"));
    let signal = layout.pgdata.join("standby.signal");
    layout::write_durable(&signal, b"")?;
    pg.run_as.own(&signal, false)?;
    std::fs::remove_file(&marker).with_context(|| format!("cannot remove {}", marker.display()))?;
    eprintln!(
        "pgwarden-agent: cloned from the object store {from} ({}) in {}s; catching up from the archive, then streaming",
        backup_label(&layout.pgdata),
        start.elapsed().as_secs()
    );
    Ok(())
}

/// `barman-cloud-restore` of the newest backup into the (empty) PGDATA, made durable.
fn restore(pg: &Postgres, store: &Store) -> Result<()> {
    let barman = Barman::from_env();
    let args = barman::restore_args(&store.settings, BACKUP, &pg.pgdata);
    let mut cmd = barman.command("barman-cloud-restore", &store.settings, &args);
    pg.run_as.apply(&mut cmd);
    barman.run("barman-cloud-restore", &mut cmd)?;
    let dir = std::fs::File::open(&pg.pgdata)
        .with_context(|| format!("cannot open {}", pg.pgdata.display()))?;
    nix::unistd::syncfs(&dir).with_context(|| format!("cannot sync {}", pg.pgdata.display()))
}

/// The pause after failed attempt `attempt`: 5 s, doubling to a minute (a store outage must not
/// be hammered, and a fixed policy bug must not wait long).
fn pause(attempt: u32) -> Duration {
    Duration::from_secs((5u64 << attempt.saturating_sub(1).min(4)).min(60))
}

/// What the restored `backup_label` says of the backup (its label and start), for the log.
fn backup_label(pgdata: &Path) -> String {
    let text = std::fs::read_to_string(pgdata.join("backup_label")).unwrap_or_default();
    let said: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("LABEL:") || l.starts_with("START WAL LOCATION:"))
        .collect();
    match said.is_empty() {
        true => "no backup_label".into(),
        false => said.join(", "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings_dir(json: Option<&str>) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        if let Some(json) = json {
            std::fs::write(dir.path().join(ARCHIVE_SETTINGS_KEY), json).unwrap();
        }
        dir
    }

    const STORE: &str = r#"{"destinationPath": "s3://b/p", "serverName": "pg", "maxParallel": 1,
        "archiveTimeoutSeconds": 0"#;

    #[test]
    fn no_archive_or_the_primary_clones_from_the_primary() {
        let exe = Path::new("/bin/pgwarden");
        for json in [
            None,
            Some(format!("{STORE}}}")),
            Some(format!(r#"{STORE}, "standbyClone": "primary"}}"#)),
        ] {
            let dir = settings_dir(json.as_deref());
            let from = CloneFrom::read(dir.path(), exe).unwrap();
            assert_eq!(from, CloneFrom::Primary, "{json:?}");
            assert!(from.recovery_settings().is_empty());
        }
    }

    #[test]
    fn the_object_store_clones_and_catches_up_through_the_native_restorer() {
        let dir = settings_dir(Some(&format!(
            r#"{STORE}, "standbyClone": "object-store"}}"#
        )));
        let from = CloneFrom::read(dir.path(), Path::new("/bin/pgwarden")).unwrap();
        let CloneFrom::ObjectStore(store) = &from else {
            panic!("{from:?}")
        };
        assert_eq!(store.settings.destination_path, "s3://b/p");
        let file = dir.path().join(ARCHIVE_SETTINGS_KEY);
        assert_eq!(
            from.recovery_settings(),
            vec![(
                "restore_command".to_string(),
                format!(
                    "/bin/pgwarden instance wal-restore --standby --source {} %f %p",
                    file.display()
                )
            )]
        );
    }

    #[test]
    fn an_unknown_clone_source_is_refused_naming_the_file_and_the_value() {
        let dir = settings_dir(Some(&format!(r#"{STORE}, "standbyClone": "sibling"}}"#)));
        let err = CloneFrom::read(dir.path(), Path::new("/bin/pgwarden")).unwrap_err();
        let text = format!("{err:#}");
        assert!(
            text.contains("cannot tell where to clone this standby from")
                && text.contains(ARCHIVE_SETTINGS_KEY)
                && text.contains("unknown variant `sibling`, expected `primary` or `object-store`"),
            "{text}"
        );
    }

    #[test]
    fn failed_attempts_pause_longer_up_to_a_minute() {
        let pauses: Vec<u64> = (1..=7).map(|a| pause(a).as_secs()).collect();
        assert_eq!(pauses, [5, 10, 20, 40, 60, 60, 60]);
    }
}
