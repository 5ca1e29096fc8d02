//! `/metrics`, `/healthz`, `/readyz` and `/leader`, served by hyper's HTTP/1 server.
//!
//! Readiness and leadership are separate facts: a standby that reaches the API server is
//! ready (so a two-replica rolling update can finish while the other replica leads), and
//! `/leader` (and the `pgwarden_leader` gauge) says which replica reconciles.
//!
//! The listener is open to whatever can reach its address, so a client gets a bounded time
//! to send its request head ([`Limits::header_timeout`]) and to take the answer, a bounded
//! head size, and only [`Limits::connections`] connections at once: a slow or silent client
//! cannot hold the probes' listener. One request per connection (probes and scrapes connect
//! anew), so a held connection cannot outlive its limits either.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::debug;

use super::metrics::{self, Metrics};

/// What one client may take of the listener.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Time to send the whole request head.
    pub header_timeout: Duration,
    /// Time to take the response, after the head.
    pub write_timeout: Duration,
    /// Largest request head read (hyper's read buffer; it cannot be below 8 KiB).
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

/// The response to a request for `path`; `ready` is whether this replica is healthy enough
/// to lead (started, and in contact with the API server).
pub fn respond(path: &str, metrics: &Metrics, ready: bool) -> (u16, &'static str, String) {
    const TEXT: &str = "text/plain";
    match path {
        "/metrics" => (200, metrics::CONTENT_TYPE, metrics.render()),
        "/healthz" => (200, TEXT, "ok\n".into()),
        "/readyz" if ready => (200, TEXT, "ready\n".into()),
        "/readyz" => (
            503,
            TEXT,
            "not started or no contact with the API server\n".into(),
        ),
        "/leader" if metrics.is_leading() => (200, TEXT, "leading\n".into()),
        "/leader" => (503, TEXT, "standby\n".into()),
        _ => (404, TEXT, "not found\n".into()),
    }
}

fn response(code: u16, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::NOT_FOUND);
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
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
            connection(stream, metrics, move || ready(), limits).await;
            drop(slot);
        });
    }
}

/// One connection, one request, within the limits.
async fn connection(
    stream: TcpStream,
    metrics: Arc<Metrics>,
    ready: impl Fn() -> bool + Send + Sync + 'static,
    limits: Limits,
) {
    let service = service_fn(move |request: Request<Incoming>| {
        let (code, content_type, body) = respond(request.uri().path(), &metrics, ready());
        async move { Ok::<_, Infallible>(response(code, content_type, body)) }
    });
    let served = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_head)
        .keep_alive(false)
        .serve_connection(TokioIo::new(stream), service);
    // hyper bounds the head; this bounds the rest (a client that does not take the answer).
    let whole = limits.header_timeout + limits.write_timeout;
    match tokio::time::timeout(whole, served).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => debug!(error = %e, "http connection"),
        Err(_) => debug!("http connection: the response was not taken in time"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn routes() {
        let m = Metrics::default();
        assert_eq!(respond("/healthz", &m, false).0, 200);
        assert_eq!(respond("/readyz", &m, false).0, 503);
        assert_eq!(respond("/readyz", &m, true).0, 200);
        assert_eq!(respond("/leader", &m, true).0, 503);
        m.set_leading(true);
        assert_eq!(respond("/leader", &m, true).0, 200);
        m.reconciled("Cluster");
        let metrics = respond("/metrics", &m, true).2;
        assert!(metrics.contains("pgwarden_reconciles_total"));
        assert!(metrics.contains("pgwarden_leader 1"));
        assert_eq!(respond("/nope", &m, true).0, 404);
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

    /// A head over the cap is refused (431), not answered from its first 8 KiB.
    #[tokio::test]
    async fn an_oversized_head_is_refused() {
        let addr = start(Limits::default()).await;
        let mut stream = TcpStream::connect(&addr).await.unwrap();
        let pad = "a".repeat(16 * 1024);
        let request = format!("GET /healthz HTTP/1.1\r\nx-pad: {pad}\r\n\r\n");
        let _ = stream.write_all(request.as_bytes()).await;
        // Keep what came before a reset (the server closes with the rest of the head unread).
        let (mut answer, mut buf) = (Vec::new(), [0u8; 1024]);
        while let Ok(n @ 1..) = stream.read(&mut buf).await {
            answer.extend_from_slice(&buf[..n]);
        }
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
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
