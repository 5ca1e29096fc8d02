//! An isolated primary fences itself: a primary whose agent cannot report to the API server
//! (a partition, a stalled API server) stops accepting writes before the operator may
//! promote a standby in its place, and writes again once a report goes through and the
//! Cluster still names it the primary. The rule is `pgwarden_core::failover::isolation`.
//!
//! ```text
//!   role tick ─► Looked::Read { reported, names_me } ─► the last report's time; confirmed?
//!   every second while the last look failed ─► primary && silent > 20 s ─► fence + marker
//!   a report that names it the primary, marker there ─► unfence, marker removed
//! ```
//!
//! The marker (`<state>/isolation-fence`) survives a restart: a primary restarted while
//! fenced keeps its fence (`ALTER SYSTEM` wrote it into `postgresql.auto.conf`) until a
//! report confirms it, even without any `targetPrimary` to lift it (`role::act` lifts a
//! fence only for the target).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use pgwarden_core::failover::{Isolation, isolation};

use super::fencing::{fence, unfence};
use super::layout::Layout;
use super::postgres::Postgres;

/// What a role tick learnt of the Cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Looked {
    /// No Cluster to watch (no name, no API client): the rule does not apply.
    Unwatched,
    /// The look failed (the API server, or PostgreSQL, did not answer).
    Failed,
    /// The Cluster was read; `reported`: this look applied the instance's report first;
    /// `names_me`: the Cluster names this pod the primary (acting, and target none or it).
    Read { reported: bool, names_me: bool },
}

/// How often the guard looks at the time since the last report while looks fail.
pub const CHECK: Duration = Duration::from_secs(1);

/// The isolation guard of one agent.
pub struct Guard {
    marker: PathBuf,
    /// When the last look that reported began (the agent's start until then).
    reported: Instant,
    watched: bool,
    failing: bool,
}

impl Guard {
    pub fn new(layout: &Layout) -> Self {
        Self {
            marker: layout.state.join("isolation-fence"),
            reported: Instant::now(),
            watched: false,
            failing: false,
        }
    }

    /// Whether the once-a-second check is due: a watched Cluster whose last look failed.
    pub fn armed(&self) -> bool {
        self.watched && self.failing
    }

    /// After a role tick that began at `began`: the report's time, and the fence lifted when
    /// this look confirmed the instance is still the primary.
    pub fn looked(&mut self, looked: Looked, began: Instant, pg: &Postgres, pod: &str) {
        self.watched = looked != Looked::Unwatched;
        self.failing = looked == Looked::Failed;
        let confirmed = match looked {
            Looked::Read { reported, names_me } => {
                if reported {
                    self.reported = began;
                }
                reported && names_me
            }
            _ => false,
        };
        if confirmed && self.marker.exists() {
            self.act(Isolation::Unfence, pg, pod);
        }
    }

    /// The once-a-second check while looks fail: fences a primary silent too long.
    pub fn check(&mut self, pg: &Postgres, pod: &str) {
        let fenced = self.marker.exists();
        let silent = self.reported.elapsed().as_secs();
        // Asked only when the silence alone would fence: a psql a second is not free.
        if fenced || isolation(true, silent, false, false) == Isolation::Keep {
            return;
        }
        let primary = tokio::task::block_in_place(|| pg.query("SELECT pg_is_in_recovery()"))
            .is_ok_and(|r| r == "f");
        let act = isolation(primary, silent, fenced, false);
        self.act(act, pg, pod);
    }

    fn act(&self, act: Isolation, pg: &Postgres, pod: &str) {
        let done = match act {
            Isolation::Keep => return,
            Isolation::Fence => tokio::task::block_in_place(|| fence(pg))
                .and_then(|()| std::fs::write(&self.marker, b"").map_err(anyhow::Error::from))
                .map(|()| {
                    format!(
                        "{pod} fenced read-only: no report reached the API server for {}s",
                        self.reported.elapsed().as_secs()
                    )
                }),
            Isolation::Unfence => tokio::task::block_in_place(|| unfence(pg))
                .and_then(|()| std::fs::remove_file(&self.marker).map_err(anyhow::Error::from))
                .map(|()| format!("{pod} writable again: the Cluster still names it the primary")),
        };
        match done {
            Ok(message) => eprintln!("pgwarden-agent: {message}"),
            Err(e) => eprintln!("pgwarden-agent: isolation {act:?} of {pod} failed: {e:#}"),
        }
    }
}
