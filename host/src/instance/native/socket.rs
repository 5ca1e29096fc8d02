//! The agent's side of the archiver's and the restorer's socket: one request line in, one
//! reply line out, each connection answered on its own task (PostgreSQL may ask again
//! before an earlier call is answered).

use std::future::Future;
use std::path::Path;

use anyhow::{Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::instance::barman::scrub;

/// Binds `path` (a stale socket of an earlier agent is removed first), calls `bound` with it
/// (to hand it to the PostgreSQL user, start what serves beside it), then answers each
/// request line with `answer(line)` until accepting fails.
pub async fn serve<A, F>(
    path: &Path,
    bound: impl FnOnce(&Path) -> Result<()>,
    answer: A,
) -> Result<()>
where
    A: Fn(String) -> F + Clone + Send + 'static,
    F: Future<Output = String> + Send + 'static,
{
    let _ = std::fs::remove_file(path);
    let listener =
        UnixListener::bind(path).with_context(|| format!("cannot bind {}", path.display()))?;
    bound(path)?;
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(reply(stream, answer.clone()));
    }
}

/// One request: a line that cannot be read gets no reply (the caller is gone).
async fn reply<A, F>(stream: UnixStream, answer: A)
where
    A: Fn(String) -> F,
    F: Future<Output = String>,
{
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    if BufReader::new(read).read_line(&mut line).await.is_err() {
        return;
    }
    let reply = answer(line).await;
    let _ = write.write_all(reply.as_bytes()).await;
}

/// The reply to a failed request: `error <why>` on one line, secrets scrubbed.
pub fn error_reply(e: &anyhow::Error) -> String {
    format!("error {}\n", scrub(&format!("{e:#}")).replace('\n', " "))
}
