//! Before a standby promotes, it uploads the complete segments of the old timeline it holds
//! that the store lacks.
//!
//! ```text
//!   promote ─► pg_wal: segments of the standby's timeline before the one holding
//!              max(received, replayed) ─► each: HEAD, absent ─► conditional PUT (native)
//! ```
//!
//! Why: with `archive_mode=on` a standby marks the segments it streams as done and never
//! archives them, and the promoted primary archives only its new timeline (and the
//! `.partial`). Segments the dead primary had not uploaded yet would leave a hole in the
//! archive, and a restore to latest would stop before the failover (tests/tests/failover.rs:
//! the old primary froze with segment 7 not yet uploaded; the restore ended at 6, without
//! the rows written after the failover). Segments at or past the current one are left alone:
//! a standby's pg_wal holds recycled files under future names, whose bytes are old.
//! Only the native archiver is covered; with `barman-cloud` the hole remains (logged).

use std::path::Path;

use anyhow::{Context, Result};
use pgwarden_crds::settings::Archiver;

use super::layout;
use super::native::Store;

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

/// Uploads what [`complete_before`] names and the store lacks; returns how many were sent.
pub async fn archive_held(
    pgdata: &Path,
    settings_dir: &Path,
    timeline: u32,
    upto: u64,
) -> Result<usize> {
    let settings = layout::read_archive_settings(settings_dir)?;
    if settings.archiver != Archiver::Native {
        eprintln!(
            "pgwarden-agent: archiver barman-cloud: segments held from the old primary are not uploaded before promotion"
        );
        return Ok(0);
    }
    let wal = pgdata.join("pg_wal");
    let names: Vec<String> = std::fs::read_dir(&wal)
        .with_context(|| format!("cannot list {}", wal.display()))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    let store = Store::from_env(&settings)?;
    let mut sent = 0;
    for name in complete_before(&names, timeline, upto) {
        let stored = store.archive(&wal.join(&name)).await;
        match stored {
            Ok(super::native::Stored::Uploaded { .. }) => sent += 1,
            Ok(_) => {}
            Err(e) => eprintln!("pgwarden-agent: cannot upload held segment {name}: {e:#}"),
        }
    }
    Ok(sent)
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
}
