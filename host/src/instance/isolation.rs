//! An isolated primary fences itself: a primary whose agent cannot report to the API server
//! (a partition, a stalled API server) stops accepting writes before the operator may
//! promote a standby in its place, and writes again once a report goes through and the
//! Cluster still names it the primary. The rule is `pgwarden_core::failover::isolation`.
//!
//! ```text
//!   role tick ─► Looked::Read { reported, names_me } ─► the last report's time; confirmed?
//!   its own task, every second ─► primary && silent > 20 s ─► fence + marker
//!   a report that names it the primary, marker there ─► unfence, marker removed
//! ```
//!
//! The marker (`<state>/isolation-fence`) survives a restart: a primary restarted while
//! fenced keeps its fence (`ALTER SYSTEM` wrote it into `postgresql.auto.conf`) until a
//! report confirms it, even without any `targetPrimary` to lift it (`role::act` lifts a
//! fence only for the target).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
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

/// How often the guard's task looks at the time since the last report.
pub const CHECK: Duration = Duration::from_secs(1);

/// What the agent's loop tells the guard's task.
struct Shared {
    /// When the last look that reported began (the agent's start until then).
    reported: Instant,
    /// A Cluster is watched (the rule applies).
    watched: bool,
}

/// The isolation guard of one agent: a task of its own fences, the agent's loop unfences.
/// Not a branch of the loop: a turn of the loop waits on the API server (each call up to
/// `report::API_TIMEOUT`, a turn makes several) exactly when the fence is due, and a fence
/// that waits for the loop came 10 s late (measured: none within 45 s of a stall).
pub struct Guard {
    shared: Arc<Mutex<Shared>>,
    marker: PathBuf,
}

impl Guard {
    /// Starts the guard's task for PostgreSQL `pg` of pod `pod`.
    pub fn start(layout: &Layout, pg: Postgres, pod: String) -> Self {
        let shared = Arc::new(Mutex::new(Shared {
            reported: Instant::now(),
            watched: false,
        }));
        let marker = layout.state.join("isolation-fence");
        let (task_shared, task_marker) = (shared.clone(), marker.clone());
        tokio::spawn(async move {
            let mut every = tokio::time::interval(CHECK);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                watch(&task_shared, &task_marker, &pg, &pod);
            }
        });
        Self { shared, marker }
    }

    /// After a role tick that began at `began`: the report's time, and the fence lifted when
    /// this look confirmed the instance is still the primary.
    pub fn looked(&self, looked: Looked, began: Instant, pg: &Postgres, pod: &str) {
        let confirmed = {
            let mut shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
            shared.watched = looked != Looked::Unwatched;
            match looked {
                Looked::Read { reported, names_me } => {
                    if reported {
                        shared.reported = began;
                    }
                    reported && names_me
                }
                _ => false,
            }
        };
        if confirmed && self.marker.exists() {
            act(Isolation::Unfence, &self.marker, pg, pod, 0);
        }
    }
}

/// The guard task's look: fences a primary silent too long.
fn watch(shared: &Mutex<Shared>, marker: &Path, pg: &Postgres, pod: &str) {
    let (watched, silent) = {
        let shared = shared.lock().unwrap_or_else(|e| e.into_inner());
        (shared.watched, shared.reported.elapsed().as_secs())
    };
    // Asked only when the silence alone would fence: a psql a second is not free.
    if !watched || marker.exists() || isolation(true, silent, false, false) == Isolation::Keep {
        return;
    }
    let primary = tokio::task::block_in_place(|| pg.query("SELECT pg_is_in_recovery()"))
        .is_ok_and(|r| r == "f");
    act(
        isolation(primary, silent, false, false),
        marker,
        pg,
        pod,
        silent,
    );
}

fn act(act: Isolation, marker: &Path, pg: &Postgres, pod: &str, silent: u64) {
    let done = match act {
        Isolation::Keep => return,
        Isolation::Fence => tokio::task::block_in_place(|| fence(pg))
            .and_then(|()| std::fs::write(marker, b"").map_err(anyhow::Error::from))
            .map(|()| {
                format!("{pod} fenced read-only: no report reached the API server for {silent}s")
            }),
        Isolation::Unfence => tokio::task::block_in_place(|| unfence(pg))
            .and_then(|()| std::fs::remove_file(marker).map_err(anyhow::Error::from))
            .map(|()| format!("{pod} writable again: the Cluster still names it the primary")),
    };
    match done {
        Ok(message) => eprintln!("pgwarden-agent: {message}"),
        Err(e) => eprintln!("pgwarden-agent: isolation {act:?} of {pod} failed: {e:#}"),
    }
}
