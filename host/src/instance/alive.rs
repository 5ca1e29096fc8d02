//! The liveness probe's answer: `pgwarden instance alive` exits 0 only while the agent's main
//! loop turns.
//!
//! ```text
//!   supervise loop ─ every BEAT ─► <state>/alive (its mtime)
//!   probe: alive ─► absent (starting) │ younger than STALE_AFTER ─► 0 ; older ─► 1
//! ```
//!
//! Why: an agent whose loop is stuck (a hung call, SIGSTOP) stops reporting, the operator
//! promotes a standby, and the PostgreSQL it supervises keeps running and accepting writes
//! from anyone connected to it directly; it also never sees that it is no longer the target
//! primary, so it never fences itself. The kubelet kills such a container after the probe's
//! `failureThreshold`; the agent starts again, reads `targetPrimary` and rejoins as a
//! standby. The beat is written by the loop itself (a branch of its `select!`), not by a
//! task of its own, which would keep beating while the loop is stuck. Before the loop starts
//! (initdb, a clone, a restore: as long as they take) there is no beat file and the probe
//! passes: [`forget`] removes an earlier run's at the agent's start.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Result, bail};

use super::layout::Layout;

/// How often the main loop writes its beat.
pub const BEAT: Duration = Duration::from_secs(5);

/// A beat older than this fails the probe. Longer than one turn of the loop may take on a
/// busy node (a report, a parameter restart of the postmaster, a promotion): a slow turn is
/// not a hung agent. With the default pod's probe (every 10 s, 3 failures) a hung agent is
/// killed 50 to 60 s after its last beat, after the default policy's failover (30 s).
pub const STALE_AFTER: Duration = Duration::from_secs(30);

fn beat_file(layout: &Layout) -> PathBuf {
    layout.state.join("alive")
}

/// The loop turned: the beat file's mtime is now. A failure is logged (the probe then fails
/// and the container restarts: better than a loop nobody can see).
pub fn beat(layout: &Layout) {
    let file = beat_file(layout);
    if let Err(e) = std::fs::write(&file, b"") {
        eprintln!("pgwarden-agent: cannot write {}: {e}", file.display());
    }
}

/// At the agent's start: no beat until the loop runs (the probe passes meanwhile).
pub fn forget(layout: &Layout) {
    let _ = std::fs::remove_file(beat_file(layout));
}

/// The probe's verdict on the last beat `last` at `now` (none: the loop has not started).
pub fn verdict(last: Option<SystemTime>, now: SystemTime, stale_after: Duration) -> Result<()> {
    let Some(last) = last else {
        return Ok(());
    };
    let age = now.duration_since(last).unwrap_or_default();
    if age > stale_after {
        bail!(
            "the agent's main loop last ran {}s ago (more than {}s): it is stuck",
            age.as_secs(),
            stale_after.as_secs()
        );
    }
    Ok(())
}

/// `pgwarden instance alive` for the instance whose PGDATA is `pgdata`.
pub fn check(pgdata: &Path) -> Result<()> {
    let layout = Layout::new(pgdata);
    let last = std::fs::metadata(beat_file(&layout))
        .and_then(|m| m.modified())
        .ok();
    verdict(last, SystemTime::now(), STALE_AFTER)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alive_while_the_loop_beats_or_before_it_starts() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let ago = |s| Some(now - Duration::from_secs(s));
        assert!(verdict(None, now, STALE_AFTER).is_ok(), "starting");
        assert!(verdict(ago(0), now, STALE_AFTER).is_ok());
        assert!(verdict(ago(30), now, STALE_AFTER).is_ok());
        let stuck = verdict(ago(31), now, STALE_AFTER).unwrap_err().to_string();
        assert!(
            stuck.contains("31s ago") && stuck.contains("stuck"),
            "{stuck}"
        );
        // A beat from the future (a clock step back) is not a stuck loop.
        assert!(verdict(Some(now + Duration::from_secs(5)), now, STALE_AFTER).is_ok());
    }

    #[test]
    fn the_beat_file_is_what_the_probe_reads() {
        let dir = std::env::temp_dir().join(format!("pgwarden-alive-{}", std::process::id()));
        let layout = Layout {
            pgdata: dir.join("pgdata"),
            state: dir.join("pgwarden"),
        };
        std::fs::create_dir_all(&layout.state).unwrap();
        forget(&layout);
        assert!(!beat_file(&layout).exists());
        beat(&layout);
        let age = std::fs::metadata(beat_file(&layout))
            .and_then(|m| m.modified())
            .map(|t| SystemTime::now().duration_since(t).unwrap_or_default())
            .unwrap();
        assert!(age < STALE_AFTER, "{age:?}");
        forget(&layout);
        assert!(!beat_file(&layout).exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
