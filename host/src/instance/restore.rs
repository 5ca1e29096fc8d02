//! The restore state machine: what a starting agent does with its volume (pure decisions).
//!
//! A restore keeps its progress in `restore.json` in the agent's state folder (beside PGDATA,
//! never inside it), written durably *before* each step starts, so that a restart at any
//! point resumes instead of guessing from what PGDATA happens to hold:
//!
//! ```text
//!   (none) ──restore asked, PGDATA empty──► downloading ──download + fsync──► replaying
//!                                               ▲   │                            │
//!                           restart: empty PGDATA's contents, download again     │
//!                                                              PostgreSQL promoted
//!                                                                                ▼
//!                  restart while replaying: start PostgreSQL in recovery    promoted
//! ```
//!
//! A start with `replaying` recorded and no `recovery.signal` in PGDATA means PostgreSQL has
//! already ended recovery (it removes the file, durably, only then): the agent records
//! `promoted` and starts normally rather than send a promoted cluster back into recovery.
//! PGDATA's contents are deleted only in the `downloading` state: the agent never deletes
//! files it cannot prove it wrote. A volume without `restore.json` (an agent of an earlier
//! version) starts normally, unless it is a restore still replaying (`recovery.signal`).

use serde::{Deserialize, Serialize};

/// How far a restore has come.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum Phase {
    /// `barman-cloud-restore` runs (or ran and was interrupted): PGDATA's contents are ours
    /// and incomplete.
    Downloading,
    /// The base backup is in PGDATA (durably) with `recovery.signal`: PostgreSQL replays WAL.
    Replaying,
    /// Recovery ended and the instance was promoted: from now on a normal instance.
    Promoted,
}

/// `restore.json`: the phase and what is being restored (no secret: the store's address).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RestoreState {
    pub phase: Phase,
    /// The backup id (or name, or `latest`) as asked.
    pub backup_id: String,
    /// The source store's `destinationPath` and server folder.
    pub destination_path: String,
    pub server_name: String,
    /// When this phase was entered (RFC 3339).
    pub since: String,
}

impl RestoreState {
    /// The same restore in `phase`, entered at `now`.
    pub fn enter(&self, phase: Phase, now: &str) -> Self {
        Self {
            phase,
            since: now.to_string(),
            ..self.clone()
        }
    }
}

/// What the agent sees in PGDATA before it starts anything.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PgdataFacts {
    /// `PG_VERSION` exists.
    pub has_pg_version: bool,
    /// PGDATA is absent or holds nothing.
    pub is_empty: bool,
    /// `recovery.signal` exists.
    pub has_recovery_signal: bool,
}

/// What to do at start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// An empty PGDATA and nothing to restore: a new cluster.
    Initdb,
    /// Start PostgreSQL as it is; `record_promoted`: first write `promoted` (recovery ended
    /// while nobody was watching).
    Normal { record_promoted: bool },
    /// (Re)start the download: empty PGDATA's contents first when `wipe`.
    Download { wipe: bool },
    /// Resume WAL replay: start PostgreSQL in recovery and wait for its promotion.
    Replay,
}

/// Why the agent refuses to start: each needs a person, and guessing could cost data.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "a restore of backup {backup_id} is unfinished ({phase:?}) but the agent was started \
         without --restore-backup: start it with the restore options it began with"
    )]
    UnfinishedWithoutRestore { backup_id: String, phase: Phase },
    #[error(
        "restore.json says {phase:?} but PGDATA has no PG_VERSION: the restored data is gone; \
         the agent will not restore over it on its own (remove restore.json to restore anew)"
    )]
    DataGone { phase: Phase },
    #[error(
        "PGDATA is not empty, holds no PG_VERSION and no restore state says the agent wrote it: \
         the agent will not delete it to restore into it; empty it by hand"
    )]
    NotOurs,
}

/// The start decision from the recorded state, PGDATA's facts and whether a restore is asked.
pub fn decide(
    state: Option<&RestoreState>,
    pgdata: PgdataFacts,
    restore_asked: bool,
) -> Result<Start, Refusal> {
    let Some(state) = state else {
        return fresh(pgdata, restore_asked);
    };
    let unfinished = || Refusal::UnfinishedWithoutRestore {
        backup_id: state.backup_id.clone(),
        phase: state.phase,
    };
    match state.phase {
        Phase::Downloading if restore_asked => Ok(Start::Download { wipe: true }),
        Phase::Downloading => Err(unfinished()),
        _ if !pgdata.has_pg_version => Err(Refusal::DataGone { phase: state.phase }),
        Phase::Replaying if !pgdata.has_recovery_signal => Ok(Start::Normal {
            record_promoted: true,
        }),
        Phase::Replaying if restore_asked => Ok(Start::Replay),
        Phase::Replaying => Err(unfinished()),
        Phase::Promoted => Ok(Start::Normal {
            record_promoted: false,
        }),
    }
}

/// No restore state: a volume of a new instance, or of an agent from before restore states.
/// Such an agent left `recovery.signal` in a restored PGDATA until PostgreSQL promoted it:
/// with a restore still asked, its replay is resumed (a normal start would fail on it).
fn fresh(pgdata: PgdataFacts, restore_asked: bool) -> Result<Start, Refusal> {
    match (pgdata.has_pg_version, restore_asked, pgdata.is_empty) {
        (true, true, _) if pgdata.has_recovery_signal => Ok(Start::Replay),
        (true, _, _) => Ok(Start::Normal {
            record_promoted: false,
        }),
        (false, false, _) => Ok(Start::Initdb),
        (false, true, true) => Ok(Start::Download { wipe: false }),
        (false, true, false) => Err(Refusal::NotOurs),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(phase: Phase) -> RestoreState {
        RestoreState {
            phase,
            backup_id: "20261125T080150".into(),
            destination_path: "s3://bucket/pg".into(),
            server_name: "source".into(),
            since: "2026-11-30T10:00:00Z".into(),
        }
    }

    const EMPTY: PgdataFacts = PgdataFacts {
        has_pg_version: false,
        is_empty: true,
        has_recovery_signal: false,
    };
    const PARTIAL: PgdataFacts = PgdataFacts {
        has_pg_version: false,
        is_empty: false,
        has_recovery_signal: false,
    };
    const RECOVERING: PgdataFacts = PgdataFacts {
        has_pg_version: true,
        is_empty: false,
        has_recovery_signal: true,
    };
    const RUNNABLE: PgdataFacts = PgdataFacts {
        has_pg_version: true,
        is_empty: false,
        has_recovery_signal: false,
    };

    #[test]
    fn a_new_volume_is_initialised_or_restored_into() {
        assert_eq!(decide(None, EMPTY, false), Ok(Start::Initdb));
        assert_eq!(
            decide(None, EMPTY, true),
            Ok(Start::Download { wipe: false })
        );
    }

    #[test]
    fn an_interrupted_download_starts_again_on_an_emptied_pgdata() {
        let s = state(Phase::Downloading);
        for facts in [EMPTY, PARTIAL, RECOVERING, RUNNABLE] {
            assert_eq!(
                decide(Some(&s), facts, true),
                Ok(Start::Download { wipe: true }),
                "{facts:?}"
            );
        }
        assert!(matches!(
            decide(Some(&s), PARTIAL, false),
            Err(Refusal::UnfinishedWithoutRestore { .. })
        ));
    }

    #[test]
    fn an_interrupted_replay_resumes_in_recovery() {
        let s = state(Phase::Replaying);
        assert_eq!(decide(Some(&s), RECOVERING, true), Ok(Start::Replay));
        assert!(matches!(
            decide(Some(&s), RECOVERING, false),
            Err(Refusal::UnfinishedWithoutRestore { .. })
        ));
    }

    #[test]
    fn a_replay_without_recovery_signal_had_already_promoted() {
        let s = state(Phase::Replaying);
        for asked in [true, false] {
            assert_eq!(
                decide(Some(&s), RUNNABLE, asked),
                Ok(Start::Normal {
                    record_promoted: true
                })
            );
        }
    }

    #[test]
    fn an_earlier_agents_interrupted_replay_resumes() {
        assert_eq!(decide(None, RECOVERING, true), Ok(Start::Replay));
        // Without a restore asked, recovery.signal is not the agent's: left to PostgreSQL.
        assert_eq!(
            decide(None, RECOVERING, false),
            Ok(Start::Normal {
                record_promoted: false
            })
        );
    }

    #[test]
    fn a_promoted_or_older_volume_starts_normally_and_is_never_wiped() {
        let s = state(Phase::Promoted);
        for asked in [true, false] {
            assert_eq!(
                decide(Some(&s), RUNNABLE, asked),
                Ok(Start::Normal {
                    record_promoted: false
                })
            );
            // A volume of an earlier agent version: PG_VERSION and no restore state.
            assert_eq!(
                decide(None, RUNNABLE, asked),
                Ok(Start::Normal {
                    record_promoted: false
                })
            );
        }
        // Files without PG_VERSION that no state claims: never deleted.
        assert_eq!(decide(None, PARTIAL, true), Err(Refusal::NotOurs));
        for phase in [Phase::Replaying, Phase::Promoted] {
            assert_eq!(
                decide(Some(&state(phase)), PARTIAL, true),
                Err(Refusal::DataGone { phase })
            );
        }
    }

    #[test]
    fn the_state_file_is_camel_case_json_without_secrets() {
        let s = state(Phase::Replaying);
        let text = serde_json::to_string(&s).unwrap();
        assert_eq!(
            text,
            r#"{"phase":"replaying","backupId":"20261125T080150","destinationPath":"s3://bucket/pg","serverName":"source","since":"2026-11-30T10:00:00Z"}"#
        );
        let next = s.enter(Phase::Promoted, "2026-11-30T11:00:00Z");
        assert_eq!(next.phase, Phase::Promoted);
        assert_eq!(next.backup_id, s.backup_id);
    }
}
