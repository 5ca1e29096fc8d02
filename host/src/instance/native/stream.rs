//! What keeps the native archiver's memory bounded, whatever maxParallel says:
//!
//! ```text
//!   Budget      one process-wide allowance of payload bytes: an upload takes a segment's
//!               worth before it reads, gives back what compression saved, holds the rest
//!               until its PUT ends; uploads beyond the allowance wait their turn
//!   cpu_slot    at most one compression per core, so parallel uploads queue for the CPU
//!               instead of all slowing down together (and all holding a buffer meanwhile)
//!   PayloadWriter  compressed bytes into 1 MiB blocks from a pool of at most the allowance:
//!               the blocks are reused, never handed back to the allocator, whose per-thread
//!               arenas otherwise keep freed 1 MiB blocks around (94 MiB peak RSS measured
//!               with plain allocations and a 32 MiB allowance)
//!   BodyReader  a download's chunks, read in a blocking thread as they arrive: a GET never
//!               holds the whole object
//! ```
//!
//! The allowance covers compressed payloads only: their size is known once compressed, and
//! a single PUT (atomic and conditional, If-None-Match: a killed agent leaves no object or
//! a whole one) needs it; a multipart upload would leave parts to abort and, in
//! object_store 0.12, loses the conditional create. Compressed segments are a few MiB, so
//! many fit. Uncompressed segments do not take from it: their PUT streams from the file
//! (`put.rs`), a few 256 KiB chunks at a time.

use std::io::{self, Read, Write};
use std::sync::{Arc, LazyLock, Mutex};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use object_store::PutPayload;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

/// Payload bytes all uploads of this process may hold at once.
pub const UPLOAD_MEMORY: usize = 32 << 20;
const KIB: usize = 1024;
const BLOCK: usize = 1 << 20;

static BUDGET: LazyLock<Arc<Semaphore>> =
    LazyLock::new(|| Arc::new(Semaphore::new(UPLOAD_MEMORY / KIB)));

static CPUS: LazyLock<Arc<Semaphore>> = LazyLock::new(|| {
    let n = std::thread::available_parallelism().map_or(2, |n| n.get());
    Arc::new(Semaphore::new(n))
});

/// A share of [`UPLOAD_MEMORY`], given back when dropped.
pub struct Held(OwnedSemaphorePermit);

/// Takes `bytes` (at most the whole allowance) of the upload memory, waiting for it.
pub async fn hold(bytes: u64) -> Held {
    let kib = (bytes as usize).div_ceil(KIB).clamp(1, UPLOAD_MEMORY / KIB);
    let permit = BUDGET.clone().acquire_many_owned(kib as u32).await;
    Held(permit.expect("the upload budget is never closed"))
}

impl Held {
    /// Keeps only `bytes` of this share; the rest goes back to the others.
    pub fn shrink_to(&mut self, bytes: usize) {
        let keep = bytes.div_ceil(KIB).max(1);
        if let Some(surplus) = self.0.num_permits().checked_sub(keep)
            && surplus > 0
        {
            drop(self.0.split(surplus));
        }
    }
}

/// One core's turn for compressing (or hashing) a segment.
pub async fn cpu_slot() -> OwnedSemaphorePermit {
    CPUS.clone()
        .acquire_owned()
        .await
        .expect("the CPU slots are never closed")
}

/// Spare payload blocks; a block goes back here when the last `Bytes` over it is dropped.
static POOL: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// A payload block that returns to [`POOL`] (up to the allowance) instead of being freed.
struct Block(Vec<u8>);

impl AsRef<[u8]> for Block {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() < UPLOAD_MEMORY / BLOCK {
            let mut v = std::mem::take(&mut self.0);
            v.clear();
            pool.push(v);
        }
    }
}

fn block() -> Vec<u8> {
    let spare = POOL.lock().unwrap_or_else(|e| e.into_inner()).pop();
    spare.unwrap_or_else(|| Vec::with_capacity(BLOCK))
}

/// Collects written bytes into a [`PutPayload`] of pooled 1 MiB blocks.
pub struct PayloadWriter {
    done: Vec<Bytes>,
    current: Vec<u8>,
}

impl PayloadWriter {
    pub fn new() -> Self {
        Self {
            done: Vec::new(),
            current: block(),
        }
    }
    pub fn freeze(mut self) -> PutPayload {
        if !self.current.is_empty() {
            let last = std::mem::take(&mut self.current);
            self.done.push(Bytes::from_owner(Block(last)));
        }
        self.done.into_iter().collect()
    }
}

impl Write for &mut PayloadWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = BLOCK - self.current.len();
        let n = room.min(buf.len());
        self.current.extend_from_slice(&buf[..n]);
        if self.current.len() == BLOCK {
            let full = std::mem::replace(&mut self.current, block());
            self.done.push(Bytes::from_owner(Block(full)));
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A download's body as a blocking [`Read`]: a task forwards the chunks through a channel
/// of a few chunks, so at most those few are in memory.
pub struct BodyReader {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    chunk: Bytes,
}

impl BodyReader {
    /// Starts forwarding `body` (call from the runtime; read from a blocking thread).
    pub fn spawn<S>(body: S) -> Self
    where
        S: Stream<Item = object_store::Result<Bytes>> + Send + Unpin + 'static,
    {
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            let mut body = body;
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(io::Error::other);
                let failed = chunk.is_err();
                if tx.send(chunk).await.is_err() || failed {
                    break;
                }
            }
        });
        Self {
            rx,
            chunk: Bytes::new(),
        }
    }
}

impl Read for BodyReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.chunk.is_empty() {
            match self.rx.blocking_recv() {
                Some(chunk) => self.chunk = chunk?,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk.split_to(n));
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_share_shrinks_and_returns_to_the_budget() {
        let before = BUDGET.available_permits();
        let mut held = hold(16 << 20).await;
        assert_eq!(BUDGET.available_permits(), before - 16 * 1024);
        held.shrink_to(3 * 1024 * 1024 + 1);
        assert_eq!(BUDGET.available_permits(), before - (3 * 1024 + 1));
        drop(held);
        assert_eq!(BUDGET.available_permits(), before);
    }

    #[test]
    fn a_payload_holds_what_was_written_in_pooled_blocks() {
        let data: Vec<u8> = (0..(BLOCK * 2 + 7)).map(|i| (i % 253) as u8).collect();
        let mut w = PayloadWriter::new();
        (&mut w).write_all(&data).unwrap();
        let payload = w.freeze();
        assert_eq!(payload.content_length(), data.len());
        let back: Vec<u8> = payload.iter().flat_map(|b| b.to_vec()).collect();
        assert!(back == data);
        drop(payload);
        assert!(
            POOL.lock().unwrap().len() >= 3,
            "the blocks went back to the pool"
        );
    }

    #[tokio::test]
    async fn a_body_is_read_back_in_order_and_an_error_is_an_error() {
        let ok = futures::stream::iter((0..5u8).map(|i| Ok(Bytes::from(vec![i; 3]))));
        let mut r = BodyReader::spawn(ok);
        let all = tokio::task::spawn_blocking(move || {
            let mut v = Vec::new();
            r.read_to_end(&mut v).map(|_| v)
        });
        assert_eq!(
            all.await.unwrap().unwrap(),
            [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4]
        );
        let bad = futures::stream::iter([
            Ok(Bytes::from_static(b"ab")),
            Err(object_store::Error::NotImplemented),
        ]);
        let mut r = BodyReader::spawn(bad);
        let res = tokio::task::spawn_blocking(move || r.read_to_end(&mut Vec::new()));
        assert!(res.await.unwrap().is_err());
    }
}
