//! `/metrics`, `/healthz`, `/readyz` and `/leader` on a small HTTP listener.
//!
//! Readiness and leadership are separate facts: a standby that reaches the API server is
//! ready (so a two-replica rolling update can finish while the other replica leads), and
//! `/leader` (and the `pgwarden_leader` gauge) says which replica reconciles.
//!
//! The listener is open to whatever can reach its address, so a client gets a bounded time
//! to send its request head ([`Limits::header_timeout`]) and to take the answer, a bounded
//! head size, and only [`Limits::connections`] connections at once: a slow or silent client
//! cannot hold the probes' listener.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::debug;

use super::metrics::Metrics;

/// What one client may take of the listener.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Time to send the whole request head.
    pub header_timeout: Duration,
    /// Time to take the response.
    pub write_timeout: Duration,
    /// Largest request head read.
    pub max_head: usize,
    /// Connections served at once; more are closed at once.
    pub connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(5),
            max_head: 8 * 1024,
            connections: 64,
        }
    }
}

/// The response to a request line such as `GET /metrics HTTP/1.1`; `ready` is whether this
/// replica is healthy enough to lead (started, and in contact with the API server).
pub fn respond(request_line: &str, metrics: &Metrics, ready: bool) -> (u16, &'static str, String) {
    let path = request_line.split_whitespace().nth(1).unwrap_or("/");
    match path {
        "/metrics" => (200, "text/plain; version=0.0.4", metrics.render()),
        "/healthz" => (200, "text/plain", "ok\n".into()),
        "/readyz" if ready => (200, "text/plain", "ready\n".into()),
        "/readyz" => (
            503,
            "text/plain",
            "not started or no contact with the API server\n".into(),
        ),
        "/leader" if metrics.is_leading() => (200, "text/plain", "leading\n".into()),
        "/leader" => (503, "text/plain", "standby\n".into()),
        _ => (404, "text/plain", "not found\n".into()),
    }
}

/// Serves until the task is dropped; `ready` is asked at each `/readyz`.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    ready: impl Fn() -> bool + Send + Sync + 'static,
    limits: Limits,
) {
    let ready = Arc::new(ready);
    let slots = Arc::new(Semaphore::new(limits.connections));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            debug!("http: too many connections; closing a new one");
            continue;
        };
        let (metrics, ready) = (metrics.clone(), ready.clone());
        tokio::spawn(async move {
            if let Err(e) = handle(stream, &metrics, ready(), &limits).await {
                debug!(error = %e, "http connection");
            }
            drop(slot);
        });
    }
}

/// Reads the request head (up to the blank line) within the limits.
async fn read_head(stream: &mut TcpStream, limits: &Limits) -> std::io::Result<String> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    let read = async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < limits.max_head {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        Ok::<_, std::io::Error>(())
    };
    tokio::time::timeout(limits.header_timeout, read)
        .await
        .map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "request head too slow")
        })??;
    Ok(String::from_utf8_lossy(&head).into_owned())
}

async fn handle(
    mut stream: TcpStream,
    metrics: &Metrics,
    ready: bool,
    limits: &Limits,
) -> std::io::Result<()> {
    let head = read_head(&mut stream, limits).await?;
    let (code, content_type, body) = respond(head.lines().next().unwrap_or(""), metrics, ready);
    let reason = match code {
        200 => "OK",
        503 => "Service Unavailable",
        _ => "Not Found",
    };
    let response = format!(
        "HTTP/1.1 {code} {reason}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    tokio::time::timeout(limits.write_timeout, stream.write_all(response.as_bytes()))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "response not taken"))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn routes() {
        let m = Metrics::default();
        assert_eq!(respond("GET /healthz HTTP/1.1", &m, false).0, 200);
        assert_eq!(respond("GET /readyz HTTP/1.1", &m, false).0, 503);
        assert_eq!(respond("GET /readyz HTTP/1.1", &m, true).0, 200);
        assert_eq!(respond("GET /leader HTTP/1.1", &m, true).0, 503);
        m.set_leading(true);
        assert_eq!(respond("GET /leader HTTP/1.1", &m, true).0, 200);
        let metrics = respond("GET /metrics HTTP/1.1", &m, true).2;
        assert!(metrics.contains("pgwarden_reconciles_total"));
        assert!(metrics.contains("pgwarden_leader 1"));
        assert_eq!(respond("GET /nope HTTP/1.1", &m, true).0, 404);
    }

    async fn start(limits: Limits) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(serve(
            listener,
            Arc::new(Metrics::default()),
            || true,
            limits,
        ));
        addr
    }

    async fn get(addr: &str, request: &[u8]) -> String {
        // A closed connection (refused by the cap) reads as an empty answer.
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let _ = stream.write_all(request).await;
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response).await;
        response
    }

    /// A client that opens a connection and sends nothing (or half a head) is cut off after
    /// the header timeout, and others are served meanwhile; a head split across writes is
    /// read whole.
    #[tokio::test]
    async fn a_silent_client_is_cut_off_and_others_are_served() {
        let limits = Limits {
            header_timeout: Duration::from_millis(300),
            ..Limits::default()
        };
        let addr = start(limits).await;
        let mut silent = TcpStream::connect(&addr).await.unwrap();
        silent
            .write_all(b"GET /metrics HTTP/1.1\r\n")
            .await
            .unwrap();
        let answered = get(&addr, b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").await;
        assert!(answered.starts_with("HTTP/1.1 200"), "{answered}");
        let since = Instant::now();
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(5), silent.read_to_end(&mut rest));
        assert!(closed.await.is_ok(), "a silent client holds its connection");
        assert!(
            since.elapsed() < Duration::from_secs(2),
            "{:?}",
            since.elapsed()
        );
        assert!(rest.is_empty(), "answered a partial head");

        let mut split = TcpStream::connect(&addr).await.unwrap();
        split.write_all(b"GET /readyz HTTP/1.1\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        split.write_all(b"host: x\r\n\r\n").await.unwrap();
        let mut response = String::new();
        split.read_to_string(&mut response).await.unwrap();
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    }

    /// Connections beyond the cap are closed at once; the held ones do not starve the cap
    /// forever (they time out).
    #[tokio::test]
    async fn connections_beyond_the_cap_are_closed() {
        let limits = Limits {
            header_timeout: Duration::from_millis(300),
            connections: 2,
            ..Limits::default()
        };
        let addr = start(limits).await;
        let _held = [
            TcpStream::connect(&addr).await.unwrap(),
            TcpStream::connect(&addr).await.unwrap(),
        ];
        tokio::time::sleep(Duration::from_millis(50)).await;
        let refused = get(&addr, b"GET /healthz HTTP/1.1\r\n\r\n").await;
        assert!(refused.is_empty(), "{refused}");
        tokio::time::sleep(Duration::from_millis(400)).await;
        let served = get(&addr, b"GET /healthz HTTP/1.1\r\n\r\n").await;
        assert!(served.starts_with("HTTP/1.1 200"), "{served}");
    }
}
