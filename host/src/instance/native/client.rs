//! archive_command's side of the native archiver: ask the agent over its socket and wait
//! for the answer; with no agent to ask, upload the file itself.
//!
//! ```text
//!   connect <state>/archiver.sock ─► "<wal>\n" ─► "ok" ─► exit 0
//!                                              └► "error <why>" ─► exit 1 (PostgreSQL keeps
//!                                                                 the file, calls again)
//!   no socket / refused ─► the same verified upload in this process
//! ```

use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::archiver::Archiver;
use super::restorer::{self, Restorer};
use super::store::Store;
use crate::instance::layout::Layout;
use pgwarden_crds::settings::ArchiveSettings;

/// Longer than any one upload with its retries (the client's own limits are shorter).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(600);

/// Archives the WAL file `name` at `path`; Ok only once it is durable in the store.
pub fn archive(layout: &Layout, settings: &ArchiveSettings, name: &str, path: &Path) -> Result<()> {
    let socket = Archiver::socket(layout);
    match UnixStream::connect(&socket) {
        Ok(stream) => ask(stream, name),
        Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused) => {
            eprintln!("pgwarden: no native archiver answers ({e}); archiving {name} here");
            inline(settings, path)
        }
        Err(e) => Err(e).with_context(|| format!("cannot reach {}", socket.display())),
    }
}

fn ask(mut stream: UnixStream, name: &str) -> Result<()> {
    stream.set_read_timeout(Some(ANSWER_TIMEOUT))?;
    stream
        .write_all(format!("{name}\n").as_bytes())
        .context("cannot send to the native archiver")?;
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .context("no answer from the native archiver")?;
    match line.trim_end().split_once(' ') {
        _ if line.trim_end() == "ok" => Ok(()),
        Some(("error", why)) => bail!("{why}"),
        _ => bail!("the native archiver ended without an answer for {name}"),
    }
}

fn inline(settings: &ArchiveSettings, path: &Path) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let store = Store::from_env(settings)?;
        store.archive(path).await.map(|_| ())
    })
}

/// The first-archive check of the destination (see [`Store::check_usable`]).
pub fn check(settings: &ArchiveSettings, timeline: u32) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let store = Store::from_env(settings)?;
        store.check_usable(timeline).await
    })
}

/// restore_command's side: Ok(true) when `wal` is now at `dest`, Ok(false) when the store
/// said it has no such file. Asks the agent's restorer (which prefetches the next
/// segments), or fetches it here when no agent answers.
pub fn fetch(layout: &Layout, source: &Path, wal: &str, dest: &Path) -> Result<bool> {
    // %p is relative to PGDATA, PostgreSQL's working folder, not the agent's.
    let cwd = std::env::current_dir()?;
    let (source, dest) = (cwd.join(source), cwd.join(dest));
    let socket = Restorer::socket(layout);
    match UnixStream::connect(&socket) {
        Ok(stream) => ask_restorer(stream, &restorer::request(&source, wal, &dest)?),
        Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused) => {
            let settings: ArchiveSettings = crate::instance::layout::read_json(&source)?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let store = Store::from_env(&settings)?;
                Ok(store.fetch(wal, &dest).await?.is_some())
            })
        }
        Err(e) => Err(e).with_context(|| format!("cannot reach {}", socket.display())),
    }
}

fn ask_restorer(mut stream: UnixStream, request: &str) -> Result<bool> {
    stream.set_read_timeout(Some(ANSWER_TIMEOUT))?;
    stream
        .write_all(request.as_bytes())
        .context("cannot send to the native restorer")?;
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .context("no answer from the native restorer")?;
    match line.trim_end() {
        "found" => Ok(true),
        "absent" => Ok(false),
        other => match other.split_once(' ') {
            Some(("error", why)) => bail!("{why}"),
            _ => bail!("the native restorer ended without an answer"),
        },
    }
}
