//! The resident restorer: answers restore_command from the agent, and while PostgreSQL
//! replays segment N downloads the next few into a spool, so that replay does not wait for
//! one download after another.
//!
//! ```text
//!   restore_command ── "<source>\t<wal>\t<dest>\n" ──► prefetched and found? move it to dest
//!                                                      otherwise fetch it now into dest
//!                      ◄── "found" | "absent" | "error <why>"
//!   after "found" for segment N: fetch N+1 .. N+maxParallel into <state>/wal-prefetch/
//! ```
//!
//! Only a fresh answer from the store is ever "absent": a prefetch that found nothing is
//! asked again (the file may have been archived since), so a stale miss never ends recovery.
//! The spool lives as long as this agent: it is emptied at start, and only files this run
//! fetched, from the same source, are delivered.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Result, bail};
use tokio::sync::watch;

use super::socket;
use super::store::Store;
use crate::instance::layout::{self, Layout};
use crate::instance::postgres::RunAs;
use pgwarden_crds::settings::ArchiveSettings;

/// A prefetch: `None` while it runs, then found or not (or the error, in words).
type Prefetch = watch::Receiver<Option<Result<bool, String>>>;

pub struct Restorer {
    layout: Layout,
    /// The PostgreSQL user, who must own what lands in pg_wal.
    run_as: RunAs,
    /// Prefetches of this run, by source file and WAL name.
    prefetched: Mutex<HashMap<(PathBuf, String), Prefetch>>,
}

impl Restorer {
    pub fn new(layout: Layout, run_as: RunAs) -> Arc<Self> {
        Arc::new(Self {
            layout,
            run_as,
            prefetched: Mutex::new(HashMap::new()),
        })
    }

    pub fn socket(layout: &Layout) -> PathBuf {
        layout.state.join("restorer.sock")
    }

    fn spool(&self) -> PathBuf {
        self.layout.state.join("wal-prefetch")
    }

    /// Binds the socket (for the PostgreSQL user) and answers until the agent ends.
    pub async fn run(self: Arc<Self>) -> Result<()> {
        let _ = std::fs::remove_dir_all(self.spool());
        std::fs::create_dir_all(self.spool())?;
        let path = Self::socket(&self.layout);
        let run_as = self.run_as;
        let bound = |path: &Path| run_as.own(path, false);
        socket::serve(&path, bound, move |line| self.clone().answer(line)).await
    }

    /// One restore_command call: `<source> <wal> <dest>` in, `found`, `absent` or
    /// `error <why>` out.
    async fn answer(self: Arc<Self>, line: String) -> String {
        match parse_request(&line) {
            Some((source, wal, dest)) => match self.fetch(&source, &wal, &dest).await {
                Ok(true) => "found\n".to_string(),
                Ok(false) => "absent\n".to_string(),
                Err(e) => socket::error_reply(&e),
            },
            None => "error malformed request\n".to_string(),
        }
    }

    /// Delivers `wal` into `dest`: Ok(false) only when the store just said it has none.
    pub async fn fetch(self: &Arc<Self>, source: &Path, wal: &str, dest: &Path) -> Result<bool> {
        let settings: ArchiveSettings = layout::read_json(source)?;
        let store = Store::from_env(&settings)?;
        let size = match self.take_prefetched(source, wal, dest).await {
            Some(size) => size,
            None => match store.fetch(wal, dest).await? {
                Some(size) => size,
                None => return Ok(false),
            },
        };
        self.run_as.own(dest, false)?;
        let ahead = settings.max_parallel.max(1) as usize;
        self.prefetch_after(source, &store, wal, size, ahead);
        Ok(true)
    }

    /// The prefetched file moved to `dest`, with its size; None when there is none to use.
    async fn take_prefetched(&self, source: &Path, wal: &str, dest: &Path) -> Option<u64> {
        let key = (source.to_path_buf(), wal.to_string());
        let mut rx = self.prefetched.lock().unwrap().remove(&key)?;
        let found = rx.wait_for(Option::is_some).await.ok()?.clone();
        let file = self.spool().join(wal);
        if found != Some(Ok(true)) {
            return None;
        }
        let size = std::fs::metadata(&file).ok()?.len();
        std::fs::rename(&file, dest)
            .or_else(|_| std::fs::copy(&file, dest).map(|_| ()))
            .ok()?;
        Some(size)
    }

    /// Starts downloads of the `ahead` segments after `wal` not already under way, and
    /// forgets the ones before it (PostgreSQL has moved past them).
    fn prefetch_after(
        self: &Arc<Self>,
        source: &Path,
        store: &Store,
        wal: &str,
        size: u64,
        ahead: usize,
    ) {
        let next = next_segments(wal, size, ahead);
        let mut map = self.prefetched.lock().unwrap();
        map.retain(|(src, name), _| {
            let keep = src == source && name.as_str() > wal;
            if !keep {
                let _ = std::fs::remove_file(self.spool().join(name));
            }
            keep
        });
        for name in next {
            let key = (source.to_path_buf(), name.clone());
            if map.contains_key(&key) {
                continue;
            }
            let (tx, rx) = watch::channel(None);
            map.insert(key, rx);
            let (store, file) = (store.clone(), self.spool().join(&name));
            tokio::spawn(async move {
                let got = store.fetch(&name, &file).await;
                let _ = tx.send(Some(got.map(|f| f.is_some()).map_err(|e| format!("{e:#}"))));
            });
        }
    }
}

/// `<source>\t<wal>\t<dest>`.
fn parse_request(line: &str) -> Option<(PathBuf, String, PathBuf)> {
    let mut parts = line.trim_end_matches('\n').split('\t');
    let (source, wal, dest) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || super::key::WalName::parse(wal).is_err() {
        return None;
    }
    Some((source.into(), wal.to_string(), dest.into()))
}

/// The request line for [`parse_request`]; paths with a tab or newline cannot be sent.
pub fn request(source: &Path, wal: &str, dest: &Path) -> Result<String> {
    let (s, d) = (source.display().to_string(), dest.display().to_string());
    if [&s, &d].iter().any(|p| p.contains(['\t', '\n'])) {
        bail!("a path with a tab or a newline cannot be sent to the restorer");
    }
    Ok(format!("{s}\t{wal}\t{d}\n"))
}

/// The `n` segments after `wal` on its timeline, for segments of `size` bytes (a power of
/// two from 1 MiB to 1 GiB, as PostgreSQL allows); none for other files or sizes.
pub fn next_segments(wal: &str, size: u64, n: usize) -> Vec<String> {
    let valid = size.is_power_of_two() && (1 << 20..=1 << 30).contains(&size);
    let hex = |r: std::ops::Range<usize>| wal.get(r).and_then(|s| u32::from_str_radix(s, 16).ok());
    let (Some(_), Some(mut log), Some(mut seg)) = (hex(0..8), hex(8..16), hex(16..24)) else {
        return Vec::new();
    };
    if wal.len() != 24 || !valid {
        return Vec::new();
    }
    let per_log = ((1u64 << 32) / size) as u32;
    (0..n)
        .map(|_| {
            seg += 1;
            if seg == per_log {
                (log, seg) = (log + 1, 0);
            }
            format!("{}{log:08X}{seg:08X}", &wal[..8])
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB16: u64 = 16 << 20;

    #[test]
    fn the_next_segments_cross_into_the_next_log() {
        assert_eq!(
            next_segments("0000000100000000000000FE", MB16, 3),
            [
                "0000000100000000000000FF",
                "000000010000000100000000",
                "000000010000000100000001"
            ]
        );
        // 1 GiB segments: 4 per log.
        assert_eq!(
            next_segments("000000020000000A00000003", 1 << 30, 1),
            ["000000020000000B00000000"]
        );
    }

    #[test]
    fn nothing_is_prefetched_after_other_files_or_odd_sizes() {
        assert!(next_segments("00000002.history", MB16, 3).is_empty());
        assert!(next_segments("000000010000000000000001.partial", MB16, 3).is_empty());
        assert!(next_segments("000000010000000000000001", 1000, 3).is_empty());
        assert!(next_segments("000000010000000000000001", 2 << 30, 3).is_empty());
    }

    #[test]
    fn requests_round_trip_and_refuse_bad_names() {
        let line = request(
            Path::new("/s.json"),
            "00000002.history",
            Path::new("pg_wal/x"),
        )
        .unwrap();
        let (s, w, d) = parse_request(&line).unwrap();
        assert_eq!(
            (s.to_str(), w.as_str(), d.to_str()),
            (Some("/s.json"), "00000002.history", Some("pg_wal/x"))
        );
        assert!(parse_request("/s\t../../etc\t/d\n").is_none());
        assert!(request(Path::new("/a\tb"), "00000002.history", Path::new("d")).is_err());
    }
}
