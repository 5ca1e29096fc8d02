//! Before a standby promotes, it uploads the complete segments of the old timeline it holds
//! that the store lacks.
//!
//! ```text
//!   promote ─► pg_wal: segments of the standby's timeline before the one holding
//!              max(received, replayed) ─► each, by the archiver the settings name:
//!                native        HEAD, absent ─► conditional PUT
//!                barman-cloud  not in the store (any compression) ─► barman-cloud-wal-archive
//! ```
//!
//! Why: with `archive_mode=on` a standby marks the segments it streams as done and never
//! archives them, and the promoted primary archives only its new timeline (and the
//! `.partial`). Segments the dead primary had not uploaded yet would leave a hole in the
//! archive, and a restore to latest would stop before the failover (tests/tests/failover.rs:
//! the old primary froze with segment 7 not yet uploaded; the restore ended at 6, without
//! the rows written after the failover). Segments at or past the current one are left alone:
//! a standby's pg_wal holds recycled files under future names, whose bytes are old.
//! With `barman-cloud`, barman-cloud-wal-archive gets what the archive_command gets: the same
//! arguments (`barman::wal_archive_args`) and this process's environment, which PostgreSQL
//! (and so the archive_command) inherits; the credentials are in it, never on the command
//! line. barman does not look before it writes, so the store is asked first.

use std::path::Path;

use anyhow::{Context, Result};
use pgwarden_crds::settings::{ArchiveSettings, Archiver};

use super::barman::{self, Barman};
use super::layout;
use super::native::{Store, Stored};

/// PostgreSQL's default WAL segment size, the one the Cluster's instances run with.
const SEGMENT_BYTES: u64 = 16 * 1024 * 1024;

/// The names among `names` of complete segments of `timeline` before the segment holding
/// `upto`, oldest first.
pub fn complete_before(names: &[String], timeline: u32, upto: u64) -> Vec<String> {
    let per_id = 0x1_0000_0000 / SEGMENT_BYTES;
    let current = upto / SEGMENT_BYTES;
    let number = |n: &str| -> Option<u64> {
        let id = u64::from_str_radix(n.get(8..16)?, 16).ok()?;
        let seg = u64::from_str_radix(n.get(16..24)?, 16).ok()?;
        Some(id * per_id + seg)
    };
    let mut out: Vec<String> = names
        .iter()
        .filter(|n| n.len() == 24 && n.chars().all(|c| c.is_ascii_hexdigit()))
        .filter(|n| u32::from_str_radix(&n[..8], 16).ok() == Some(timeline))
        .filter(|n| number(n).is_some_and(|s| s < current))
        .cloned()
        .collect();
    out.sort();
    out
}

/// The command that uploads one held segment at `path` when the settings name barman-cloud
/// (none: the native archiver's client uploads it): the archive_command's own arguments.
pub fn barman_upload(
    settings: &ArchiveSettings,
    path: &Path,
) -> Option<(&'static str, Vec<String>)> {
    (settings.archiver == Archiver::BarmanCloud).then(|| {
        (
            "barman-cloud-wal-archive",
            barman::wal_archive_args(settings, path),
        )
    })
}

/// Uploads what [`complete_before`] names and the store lacks; returns how many were sent.
pub async fn archive_held(
    pgdata: &Path,
    settings_dir: &Path,
    timeline: u32,
    upto: u64,
) -> Result<usize> {
    let settings = layout::read_archive_settings(settings_dir)?;
    let wal = pgdata.join("pg_wal");
    let names: Vec<String> = std::fs::read_dir(&wal)
        .with_context(|| format!("cannot list {}", wal.display()))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    let store = Store::from_env(&settings)?;
    let mut sent = 0;
    for name in complete_before(&names, timeline, upto) {
        let path = wal.join(&name);
        let uploaded = match barman_upload(&settings, &path) {
            None => (store.archive(&path).await).map(|s| matches!(s, Stored::Uploaded { .. })),
            Some((command, args)) => run_barman(&store, &settings, &name, command, &args).await,
        };
        match uploaded {
            Ok(true) => sent += 1,
            Ok(false) => {}
            Err(e) => eprintln!(
                "pgwarden-agent: cannot upload held segment {name}: {}",
                barman::scrub(&format!("{e:#}"))
            ),
        }
    }
    Ok(sent)
}

/// barman-cloud-wal-archive of segment `name` unless the store holds it already; `true`:
/// uploaded now.
async fn run_barman(
    store: &Store,
    settings: &ArchiveSettings,
    name: &str,
    command: &str,
    args: &[String],
) -> Result<bool> {
    if store.holds(name).await? {
        return Ok(false);
    }
    let barman = Barman::from_env();
    let mut cmd = barman.command(command, settings, args);
    tokio::task::block_in_place(|| barman.run(command, &mut cmd))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_complete_segments_of_the_timeline_before_the_current_one() {
        let names: Vec<String> = [
            "000000010000000000000006",
            "000000010000000000000007",
            "000000010000000000000008", // holds the LSN: not complete
            "000000010000000000000009", // a recycled file under a future name
            "000000020000000000000006", // another timeline
            "00000002.history",
            "000000010000000000000007.partial",
        ]
        .map(String::from)
        .to_vec();
        let upto = 0x085F_A338; // 0/85FA338
        assert_eq!(
            complete_before(&names, 1, upto),
            vec!["000000010000000000000006", "000000010000000000000007"]
        );
        // Log id 1: segment 0x100 of a 16 MiB WAL is 000000010000000100000000.
        let high = ["0000000100000000000000FF", "000000010000000100000000"].map(String::from);
        assert_eq!(
            complete_before(&high, 1, 0x1_0000_0000 + 5),
            vec!["0000000100000000000000FF"]
        );
    }

    #[test]
    fn with_barman_cloud_a_held_segment_goes_up_as_the_archive_command_sends_it() {
        let mut settings: ArchiveSettings = serde_json::from_value(serde_json::json!({
            "destinationPath": "s3://bucket/ns",
            "endpointUrl": "http://127.0.0.1:9000",
            "serverName": "pg",
            "compression": "gzip",
            "maxParallel": 1,
            "archiveTimeoutSeconds": 300,
            "archiver": "barman-cloud",
        }))
        .unwrap();
        let path = Path::new("/data/pgdata/pg_wal/000000010000000000000007");
        let (command, args) = barman_upload(&settings, path).expect("barman-cloud");
        assert_eq!(command, "barman-cloud-wal-archive");
        assert_eq!(args, barman::wal_archive_args(&settings, path));
        assert_eq!(args.last().map(String::as_str), path.to_str());
        assert!(args.contains(&"--gzip".to_string()), "{args:?}");
        // No credential on the command line: barman reads them from the environment.
        assert!(
            !args
                .iter()
                .any(|a| a.contains("AWS_") || a.contains("SECRET")),
            "{args:?}"
        );
        settings.archiver = Archiver::Native;
        assert_eq!(
            barman_upload(&settings, path),
            None,
            "the native client uploads it"
        );
    }
}
