//! The resident archiver: uploads the WAL files PostgreSQL marks ready, ahead of its
//! archive_command calls, and answers those calls on a unix socket.
//!
//! ```text
//!   follow (every 200 ms): archive_status/*.ready, oldest first
//!       └─ up to maxParallel uploads at once (each holds one compressed segment)
//!   serve: archive_command ── "<wal>\n" ──► already uploaded? ─► "ok"
//!                                           running? wait ─► "ok" | "error <why>"
//!                                           failed / unknown: upload now, wait
//! ```
//!
//! The follower waits for archive_command's first-archive check of the destination to pass
//! (archive-check.json), so nothing goes ahead into a folder that may be another cluster's.
//! Results live in memory only: a restarted agent uploads again, and the store answers
//! "already there" for what it holds (the content compared, never assumed). The settings are
//! read afresh on every round, so a new decision needs no restart; with the `barman-cloud`
//! archiver the follower stays idle.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use tokio::sync::watch;

use super::socket;
use super::store::Store;
use crate::instance::barman::scrub;
use crate::instance::layout::ArchiveCheck;
use crate::instance::layout::{self, Layout};
use pgwarden_crds::settings::{ArchiveSettings, Archiver as Which};

/// How long a failed upload waits before the follower tries it again.
const RETRY_AFTER: Duration = Duration::from_secs(5);
const ROUND: Duration = Duration::from_millis(200);

/// The state of one WAL file's upload.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Outcome {
    Running,
    Done,
    Failed(String, Instant),
}

/// The archiver shared by the follower and the socket server.
pub struct Archiver {
    layout: Layout,
    settings_dir: PathBuf,
    jobs: Mutex<HashMap<String, watch::Receiver<Outcome>>>,
    store: Mutex<Option<(ArchiveSettings, Store)>>,
}

impl Archiver {
    pub fn new(layout: Layout, settings_dir: PathBuf) -> Arc<Self> {
        Arc::new(Self {
            layout,
            settings_dir,
            jobs: Mutex::new(HashMap::new()),
            store: Mutex::new(None),
        })
    }

    /// The socket archive_command talks to.
    pub fn socket(layout: &Layout) -> PathBuf {
        layout.state.join("archiver.sock")
    }

    /// Binds the socket (for `owner`, the PostgreSQL user) and runs follower and server.
    pub async fn run(self: Arc<Self>, owner: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
        let path = Self::socket(&self.layout);
        let follower = self.clone();
        let bound = |path: &Path| {
            owner(path)?;
            tokio::spawn(follower.follow());
            Ok(())
        };
        socket::serve(&path, bound, move |line| self.clone().answer(line)).await
    }

    /// One archive_command call: a WAL name in, `ok` or `error <why>` out.
    async fn answer(self: Arc<Self>, line: String) -> String {
        match self.archive(line.trim()).await {
            Ok(()) => "ok\n".to_string(),
            Err(e) => socket::error_reply(&e),
        }
    }

    /// Archives `wal` (or waits for its running upload); Ok once it is in the store.
    pub async fn archive(self: &Arc<Self>, wal: &str) -> Result<()> {
        super::key::WalName::parse(wal)?;
        let mut rx = {
            let mut jobs = self.jobs.lock().unwrap();
            match jobs.get(wal).map(|rx| rx.borrow().clone()) {
                Some(Outcome::Done) => return Ok(()),
                Some(Outcome::Running) => jobs[wal].clone(),
                Some(Outcome::Failed(..)) | None => {
                    let store = self.current_store()?;
                    self.start(&mut jobs, wal, store)
                }
            }
        };
        let outcome = rx
            .wait_for(|o| *o != Outcome::Running)
            .await
            .map(|o| o.clone());
        match outcome {
            Ok(Outcome::Done) => Ok(()),
            Ok(Outcome::Failed(why, _)) => anyhow::bail!(why),
            _ => anyhow::bail!("internal: the upload of {wal} ended without a result"),
        }
    }

    /// Starts the upload of `wal`; the caller holds the jobs' lock.
    fn start(
        self: &Arc<Self>,
        jobs: &mut HashMap<String, watch::Receiver<Outcome>>,
        wal: &str,
        store: Store,
    ) -> watch::Receiver<Outcome> {
        let (tx, rx) = watch::channel(Outcome::Running);
        jobs.insert(wal.to_string(), rx.clone());
        let path = self.layout.pgdata.join("pg_wal").join(wal);
        let name = wal.to_string();
        tokio::spawn(async move {
            let outcome = match store.archive(&path).await {
                Ok(_) => Outcome::Done,
                Err(e) => {
                    let why = scrub(&format!("cannot archive {name}: {e:#}"));
                    eprintln!("pgwarden-archiver: {why}");
                    Outcome::Failed(why, Instant::now())
                }
            };
            let _ = tx.send(outcome);
        });
        rx
    }

    /// The store of the current settings, made again when they change.
    fn current_store(&self) -> Result<Store> {
        let settings = layout::read_archive_settings(&self.settings_dir)?;
        let mut cached = self.store.lock().unwrap();
        if let Some((s, store)) = cached.as_ref()
            && *s == settings
        {
            return Ok(store.clone());
        }
        let store = Store::from_env(&settings)?;
        *cached = Some((settings, store.clone()));
        Ok(store)
    }

    /// Uploads `.ready` files ahead of PostgreSQL, up to maxParallel at once.
    async fn follow(self: Arc<Self>) {
        loop {
            tokio::time::sleep(ROUND).await;
            let settings = match layout::read_archive_settings(&self.settings_dir) {
                Ok(s) if s.archiver == Which::Native && self.checked(&s) => s,
                _ => continue,
            };
            if let Err(e) = self.round(settings.max_parallel.max(1) as usize) {
                eprintln!("pgwarden-archiver: {}", scrub(&format!("{e:#}")));
            }
        }
    }

    /// Whether archive_command's first-archive check passed for this destination: nothing
    /// goes ahead into a server folder that may be another cluster's.
    fn checked(&self, s: &ArchiveSettings) -> bool {
        layout::read_json::<ArchiveCheck>(&self.layout.archive_check()).is_ok_and(|c| {
            c.ok && c.destination_path == s.destination_path && c.server_name == s.server_name
        })
    }

    fn round(self: &Arc<Self>, max_parallel: usize) -> Result<()> {
        let mut ready: Vec<String> = layout::ready_files(&self.layout.archive_status())?
            .into_iter()
            .map(|(n, _)| n)
            .filter(|n| super::key::WalName::parse(n).is_ok())
            .collect();
        ready.sort();
        let store = self.current_store()?;
        let mut jobs = self.jobs.lock().unwrap();
        // Forget what PostgreSQL has marked done (or never will ask for again).
        let wanted: HashSet<&String> = ready.iter().collect();
        jobs.retain(|n, rx| wanted.contains(n) || *rx.borrow() == Outcome::Running);
        let mut running = jobs
            .values()
            .filter(|rx| *rx.borrow() == Outcome::Running)
            .count();
        for name in &ready {
            if running >= max_parallel {
                break;
            }
            let due = match jobs.get(name).map(|rx| rx.borrow().clone()) {
                None => true,
                Some(Outcome::Failed(_, at)) => at.elapsed() >= RETRY_AFTER,
                Some(_) => false,
            };
            if due {
                self.start(&mut jobs, name, store.clone());
                running += 1;
            }
        }
        Ok(())
    }
}
