//! `pgwarden instance wal-restore --source FILE %f %p`: PostgreSQL's restore_command.
//!
//! PostgreSQL reads a restore_command exit status of 1–125 as "this file is not in the
//! archive": at that point of a recovery without target it ends recovery and promotes. A
//! status above 125 (or death by a signal) makes it stop recovery instead (FATAL), and the
//! agent starts it again. So only barman's own "not in the store" answer may exit 1:
//!
//! ```text
//!   read FILE (the source store's settings) ─► barman-cloud-wal-restore --no-partial
//!     exit 0                                       ─► 0    (PostgreSQL replays the file)
//!     exit 1 + "WAL file <f> for server <s> does not exist" ─► 1 (not in the store)
//!     anything else (unreachable, 5xx, refused key, no bucket, unreadable FILE, unknown)
//!       ─► retry after 1, 2, 4, 8, 15, 15 ... s while within the budget (60 s,
//!          $PGWARDEN_WAL_RESTORE_RETRY_SECONDS)
//!       ─► write the scrubbed failure to wal-restore-failure.json, exit 200 (> 125)
//!   --standby (a standby's restore_command): a store error ─► recorded, exit 1 at once
//! ```
//!
//! A standby never ends recovery on "not here" (standby.signal): it streams from the primary
//! and asks the store again later, so a store outage must neither stop it nor stall it in
//! retries while the primary could send the WAL.
//!
//! barman-cloud-wal-restore 3.19.1 exits 1 (`OperationErrorExit`) only after logging that
//! message; network errors, refused credentials, a missing bucket and any other exception
//! exit 4 (`GeneralErrorExit`), a bad WAL name 3, its own spool errors 2. With the `native`
//! archiver the agent's restorer answers instead (`native::restorer`, prefetching the next
//! segments): "absent" only from a fresh listing of the store, anything else an error. `--no-partial`: a
//! segment that is in the store only as `.partial` (a promoted standby's last, unfinished
//! one) is "not there", so PostgreSQL follows the next timeline instead of replaying a torn
//! segment. A missing `<timeline>.history` is a real "not there": PostgreSQL asks for the
//! next timeline's history to learn there is none.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::barman::{self, Barman, BarmanError};
use super::layout::{self, Layout};
use super::native;
use pgwarden_crds::settings::{ArchiveSettings, Archiver};

/// The exit status that makes PostgreSQL stop recovery rather than end it (> 125).
pub const ABORT_RECOVERY: i32 = 200;
const _: () = assert!(ABORT_RECOVERY > 125 && ABORT_RECOVERY < 256);
/// Env: seconds the command retries store errors before it gives up (default 60).
pub const ENV_RETRY_SECONDS: &str = "PGWARDEN_WAL_RESTORE_RETRY_SECONDS";
const DEFAULT_RETRY: Duration = Duration::from_secs(60);
const COMMAND: &str = "barman-cloud-wal-restore";

/// What one barman-cloud-wal-restore run said about the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fetch {
    /// Downloaded to `%p`.
    Found,
    /// The store answered, and the file is not in it.
    NotInStore,
    /// Anything else, in words (scrubbed of secrets).
    Failed(String),
}

impl Fetch {
    /// The exit status for PostgreSQL once no retry is left.
    pub fn exit_status(&self) -> i32 {
        match self {
            Fetch::Found => 0,
            Fetch::NotInStore => 1,
            Fetch::Failed(_) => ABORT_RECOVERY,
        }
    }
}

/// The last restore_command failure, as written for the agent to report.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct WalRestoreFailure {
    pub wal: String,
    pub time: String,
    pub attempts: u32,
    pub message: String,
}

/// Reads one barman-cloud-wal-restore outcome: its exit code (`None`: killed by a signal)
/// and its error output, already scrubbed.
pub fn classify(exit_code: Option<i32>, stderr: &str, wal: &str, server: &str) -> Fetch {
    let absent = format!("WAL file {wal} for server {server} does not exist");
    match exit_code {
        Some(0) => Fetch::Found,
        Some(1) if stderr.contains(&absent) => Fetch::NotInStore,
        _ => Fetch::Failed(BarmanError::new(COMMAND, exit_code, stderr).to_string()),
    }
}

/// The pauses between attempts: 1 s doubling to 15 s, as many as fit in `budget`.
pub fn pauses(budget: Duration) -> Vec<Duration> {
    let mut out = Vec::new();
    let (mut next, mut total) = (Duration::from_secs(1), Duration::ZERO);
    while total + next <= budget {
        out.push(next);
        total += next;
        next = (next * 2).min(Duration::from_secs(15));
    }
    out
}

/// Fetches `wal` into `dest` from the store in `source`; returns the exit status for
/// PostgreSQL. Never fails otherwise: every error becomes [`ABORT_RECOVERY`], or for a
/// `standby` "not here" (1) without retries.
pub fn wal_restore(layout: &Layout, source: &Path, wal: &str, dest: &Path, standby: bool) -> i32 {
    let started = Instant::now();
    let mut attempts = 0;
    let budget = if standby {
        Duration::ZERO
    } else {
        retry_budget()
    };
    let mut pauses = pauses(budget).into_iter();
    loop {
        attempts += 1;
        let fetch = attempt(layout, source, wal, dest);
        let Fetch::Failed(message) = &fetch else {
            if fetch == Fetch::Found {
                let _ = std::fs::remove_file(layout.wal_restore_failure());
            }
            return fetch.exit_status();
        };
        let Some(pause) = pauses.next() else {
            if standby {
                eprintln!(
                    "pgwarden: cannot fetch {wal} from the store, so the standby streams it: {message}"
                );
                record(layout, wal, attempts, message);
                return 1;
            }
            eprintln!(
                "pgwarden: cannot fetch {wal} after {attempts} attempts in {}s; stopping \
                 recovery (exit {ABORT_RECOVERY}) rather than ending it: {message}",
                started.elapsed().as_secs()
            );
            record(layout, wal, attempts, message);
            return ABORT_RECOVERY;
        };
        eprintln!(
            "pgwarden: cannot fetch {wal} (attempt {attempts}), again in {}s: {message}",
            pause.as_secs()
        );
        std::thread::sleep(pause);
    }
}

/// One run of barman-cloud-wal-restore (or of the native restorer, when the source's
/// settings name it) with the settings read afresh.
fn attempt(layout: &Layout, source: &Path, wal: &str, dest: &Path) -> Fetch {
    let settings: ArchiveSettings = match layout::read_json(source) {
        Ok(s) => s,
        Err(e) => return Fetch::Failed(barman::scrub(&format!("{e:#}"))),
    };
    if settings.archiver == Archiver::Native {
        // Same rules: only the store's own "no such file" is NotInStore.
        return match native::client::fetch(layout, source, wal, dest) {
            Ok(true) => Fetch::Found,
            Ok(false) => Fetch::NotInStore,
            Err(e) => Fetch::Failed(barman::scrub(&format!("{e:#}"))),
        };
    }
    let b = Barman::from_env();
    let spool = layout.state.join("wal-restore-spool");
    let args = barman::wal_restore_args(&settings, &spool, wal, dest);
    let mut cmd: Command = b.command(COMMAND, &settings, &args);
    let out = match cmd.stdout(Stdio::null()).stderr(Stdio::piped()).output() {
        Ok(out) => out,
        Err(e) => return Fetch::Failed(format!("cannot start {COMMAND}: {e}")),
    };
    let stderr = barman::scrub(&String::from_utf8_lossy(&out.stderr));
    classify(out.status.code(), &stderr, wal, &settings.server_name)
}

fn retry_budget() -> Duration {
    std::env::var(ENV_RETRY_SECONDS)
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map_or(DEFAULT_RETRY, Duration::from_secs)
}

fn record(layout: &Layout, wal: &str, attempts: u32, message: &str) {
    let failure = WalRestoreFailure {
        wal: wal.to_string(),
        time: super::archive::now(),
        attempts,
        message: barman::scrub(message),
    };
    if let Err(e) = layout::write_json(&layout.wal_restore_failure(), &failure) {
        eprintln!("pgwarden: cannot record the failure: {e:#}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAL: &str = "000000010000000000000007";

    #[test]
    fn only_barmans_not_in_the_store_answer_ends_recovery() {
        let absent = "2026-11-30 10:00:00,000 [123] ERROR: WAL file 000000010000000000000007 \
                      for server pg-1 does not exist";
        assert_eq!(classify(Some(1), absent, WAL, "pg-1"), Fetch::NotInStore);
        assert_eq!(classify(Some(1), absent, WAL, "pg-1").exit_status(), 1);
        assert_eq!(classify(Some(0), "", WAL, "pg-1"), Fetch::Found);
        // Another file's or server's answer, exit 1 without it, or barman killed: errors.
        assert!(matches!(
            classify(Some(1), absent, "000000010000000000000008", "pg-1"),
            Fetch::Failed(_)
        ));
        assert!(matches!(
            classify(Some(1), absent, WAL, "pg-2"),
            Fetch::Failed(_)
        ));
        assert!(matches!(
            classify(Some(1), "", WAL, "pg-1"),
            Fetch::Failed(_)
        ));
        assert!(matches!(
            classify(None, absent, WAL, "pg-1"),
            Fetch::Failed(_)
        ));
    }

    #[test]
    fn store_errors_stop_recovery_and_say_why() {
        let down = "ERROR: Barman cloud WAL restore exception: Could not connect to the \
                    endpoint URL: \"http://127.0.0.1:9/bucket?list-type=2\"";
        let f = classify(Some(4), down, WAL, "pg-1");
        assert_eq!(f.exit_status(), ABORT_RECOVERY);
        let Fetch::Failed(message) = f else {
            unreachable!()
        };
        assert!(
            message.contains("cannot reach the object store endpoint"),
            "{message}"
        );
        let history = "ERROR: Barman cloud WAL restore exception: An error occurred \
                       (NoSuchBucket) when calling the ListObjectsV2 operation";
        assert!(matches!(
            classify(Some(4), history, "00000002.history", "pg-1"),
            Fetch::Failed(_)
        ));
        // A missing history file is a real answer like any other.
        let absent = "ERROR: WAL file 00000002.history for server pg-1 does not exist";
        assert_eq!(
            classify(Some(1), absent, "00000002.history", "pg-1"),
            Fetch::NotInStore
        );
    }

    #[test]
    fn pauses_grow_to_fifteen_seconds_within_the_budget() {
        let secs = |b| -> Vec<u64> {
            pauses(Duration::from_secs(b))
                .iter()
                .map(Duration::as_secs)
                .collect()
        };
        assert_eq!(secs(60), [1, 2, 4, 8, 15, 15, 15]);
        assert_eq!(secs(5), [1, 2]);
        assert!(secs(0).is_empty());
    }
}
