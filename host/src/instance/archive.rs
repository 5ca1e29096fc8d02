//! `pgwarden instance wal-archive %p`: PostgreSQL's archive_command.
//!
//! ```text
//!   PostgreSQL ── %p ──► read archive.json (every call: a new decision needs no restart)
//!                        │ spool/<wal> exists? ── yes ──► remove it, exit 0 (archived ahead)
//!                        │ first archive to this destination? ──► barman-cloud-check-wal-archive
//!                        ▼
//!         barman-cloud-wal-archive %p  ∥  up to maxParallel−1 further `.ready` WAL files
//!                        │ each further success ──► spool/<wal>
//!                        ▼
//!         exit 0 only when %p itself is in the store; otherwise exit 1 and PostgreSQL
//!         keeps the file and calls again.
//! ```
//!
//! With the `native` archiver the agent uploads `.ready` files itself (`native::archiver`)
//! and this command only asks it over a unix socket whether `%p` is in the store.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use super::barman::{self, Barman, BarmanError};
use super::layout::{self, ArchiveCheck, Layout, ready_files};
use super::native;
use pgwarden_crds::settings::{ArchiveSettings, Archiver};

/// The last archive failure, as written for the agent to report.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ArchiveFailure {
    pub wal: String,
    pub time: String,
    pub message: String,
}

/// What a call did with the WAL file PostgreSQL asked for.
#[derive(Debug, PartialEq, Eq)]
pub enum Archived {
    /// An earlier call had already archived it in parallel.
    AlreadyInStore,
    /// Archived now, together with these further `.ready` files.
    Now { ahead: Vec<String> },
}

/// Archives `wal` (PostgreSQL's `%p`), reading the settings from `settings_dir`.
pub fn wal_archive(layout: &Layout, settings_dir: &Path, wal: &Path) -> Result<Archived> {
    let name = wal
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("not a WAL file path: {}", wal.display()))?
        .to_string();
    let result = archive_one(layout, settings_dir, wal, &name);
    if let Err(e) = &result {
        let failure = ArchiveFailure {
            wal: name,
            time: now(),
            message: barman::scrub(&format!("{e:#}")),
        };
        let _ = layout::write_json(&layout.archive_failure(), &failure);
    }
    result
}

fn archive_one(layout: &Layout, settings_dir: &Path, wal: &Path, name: &str) -> Result<Archived> {
    let settings = layout::read_archive_settings(settings_dir)?;
    let marker = layout.spool().join(name);
    if marker.exists() {
        std::fs::remove_file(&marker)
            .with_context(|| format!("cannot remove {}", marker.display()))?;
        return Ok(Archived::AlreadyInStore);
    }
    let barman = Barman::from_env();
    ensure_checked(layout, &barman, &settings, name)?;
    if settings.archiver == Archiver::Native {
        // The agent's archiver uploads ahead of this call; this only waits for `name`.
        native::client::archive(layout, &settings, name, wal)?;
        return Ok(Archived::Now { ahead: Vec::new() });
    }
    let ahead = ready_ahead(
        layout,
        name,
        settings.max_parallel.saturating_sub(1) as usize,
    )?;
    let mut jobs: Vec<(String, PathBuf)> = vec![(name.to_string(), wal.to_path_buf())];
    jobs.extend(
        ahead
            .iter()
            .map(|n| (n.clone(), layout.pgdata.join("pg_wal").join(n))),
    );
    let results = archive_parallel(&barman, &settings, &jobs);
    let mut done = Vec::new();
    let mut own = None;
    for ((n, _), r) in jobs.iter().zip(results) {
        if n == name {
            own = Some(r);
        } else if r.is_ok() {
            std::fs::create_dir_all(layout.spool())?;
            std::fs::write(layout.spool().join(n), b"")?;
            done.push(n.clone());
        }
    }
    match own {
        Some(Ok(())) => Ok(Archived::Now { ahead: done }),
        Some(Err(e)) => Err(e.into()),
        None => bail!("internal: {name} was not archived"),
    }
}

/// Runs barman-cloud-wal-archive for every job at once; results in the jobs' order.
fn archive_parallel(
    barman: &Barman,
    s: &ArchiveSettings,
    jobs: &[(String, PathBuf)],
) -> Vec<Result<(), BarmanError>> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = jobs
            .iter()
            .map(|(_, path)| {
                scope.spawn(move || {
                    let args = barman::wal_archive_args(s, path);
                    let mut cmd = barman.command("barman-cloud-wal-archive", s, &args);
                    barman.run("barman-cloud-wal-archive", &mut cmd).map(|_| ())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("archive thread panicked"))
            .collect()
    })
}

/// Further `.ready` WAL files to archive ahead of PostgreSQL, oldest first, at most `max`.
fn ready_ahead(layout: &Layout, current: &str, max: usize) -> Result<Vec<String>> {
    if max == 0 {
        return Ok(Vec::new());
    }
    let spool = layout.spool();
    let mut names: Vec<String> = ready_files(&layout.archive_status())?
        .into_iter()
        .map(|(n, _)| n)
        .filter(|n| n != current && !spool.join(n).exists() && !n.ends_with(".partial"))
        .collect();
    names.sort();
    names.truncate(max);
    Ok(names)
}

/// Checks the destination once (per destination and server name) before the first archive.
fn ensure_checked(layout: &Layout, barman: &Barman, s: &ArchiveSettings, wal: &str) -> Result<()> {
    if let Ok(check) = layout::read_json::<ArchiveCheck>(&layout.archive_check())
        && check.ok
        && check.destination_path == s.destination_path
        && check.server_name == s.server_name
    {
        return Ok(());
    }
    let result: Result<(), String> = if s.archiver == Archiver::Native {
        native::client::check(s, timeline_of(wal)).map_err(|e| native_failure(&format!("{e:#}")))
    } else {
        let args = barman::check_wal_archive_args(s, timeline_of(wal));
        let mut cmd = barman.command("barman-cloud-check-wal-archive", s, &args);
        let result = barman.run("barman-cloud-check-wal-archive", &mut cmd);
        result.map(|_| ()).map_err(|e| e.to_string())
    };
    let check = ArchiveCheck {
        destination_path: s.destination_path.clone(),
        server_name: s.server_name.clone(),
        ok: result.is_ok(),
        time: now(),
        message: result.as_ref().err().cloned(),
    };
    layout::write_json(&layout.archive_check(), &check)?;
    result.map_err(|e| anyhow::anyhow!("the destination is not usable: {e}"))
}

/// The native check's failure in the words barman's would have: the cause the store's answer
/// names (refused credentials, no bucket, unreachable), then the scrubbed detail.
fn native_failure(text: &str) -> String {
    let detail = barman::scrub(text);
    match barman::Cause::from_text(&detail) {
        barman::Cause::Other => detail,
        cause => format!("{}: {detail}", cause.phrase()),
    }
}

/// The timeline of a WAL file name (`000000020000000000000003` → 2); 1 when unknown.
pub fn timeline_of(wal: &str) -> u32 {
    wal.get(..8)
        .and_then(|t| u32::from_str_radix(t, 16).ok())
        .filter(|t| *t > 0)
        .unwrap_or(1)
}

/// Now, as RFC 3339 in UTC.
pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeline_comes_from_the_wal_name() {
        assert_eq!(timeline_of("000000020000000000000003"), 2);
        assert_eq!(timeline_of("0000000A.history"), 10);
        assert_eq!(timeline_of("x"), 1);
    }

    #[test]
    fn a_refused_key_from_the_native_client_reads_as_refused_credentials() {
        let text = "cannot list p/pg/wals/ in the store: Generic S3 error: 403 Forbidden: \
                    <Code>SignatureDoesNotMatch</Code>";
        let shown = native_failure(text);
        assert!(
            shown.starts_with("the object store refused the credentials"),
            "{shown}"
        );
        assert!(shown.contains("SignatureDoesNotMatch"), "{shown}");
        let other = native_failure("cannot list: the server closed the connection");
        assert_eq!(other, "cannot list: the server closed the connection");
    }

    #[test]
    fn ahead_skips_the_current_and_spooled_files_and_keeps_the_oldest() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout {
            pgdata: dir.path().join("pgdata"),
            state: dir.path().join("state"),
        };
        std::fs::create_dir_all(layout.archive_status()).unwrap();
        std::fs::create_dir_all(layout.spool()).unwrap();
        for n in 1..=6 {
            std::fs::write(
                layout
                    .archive_status()
                    .join(format!("00000001000000000000000{n}.ready")),
                "",
            )
            .unwrap();
        }
        std::fs::write(
            layout
                .archive_status()
                .join("000000010000000000000009.done"),
            "",
        )
        .unwrap();
        std::fs::write(layout.spool().join("000000010000000000000003"), "").unwrap();
        let ahead = ready_ahead(&layout, "000000010000000000000001", 3).unwrap();
        assert_eq!(
            ahead,
            [
                "000000010000000000000002",
                "000000010000000000000004",
                "000000010000000000000005"
            ]
        );
        assert!(
            ready_ahead(&layout, "000000010000000000000001", 0)
                .unwrap()
                .is_empty()
        );
    }
}
