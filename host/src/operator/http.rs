//! `/metrics`, `/healthz` and `/readyz` on a small HTTP listener.

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::debug;

use super::metrics::Metrics;

/// The response to a request line such as `GET /metrics HTTP/1.1`.
pub fn respond(request_line: &str, metrics: &Metrics) -> (u16, &'static str, String) {
    let path = request_line.split_whitespace().nth(1).unwrap_or("/");
    match path {
        "/metrics" => (200, "text/plain; version=0.0.4", metrics.render()),
        "/healthz" => (200, "text/plain", "ok\n".into()),
        "/readyz" if metrics.is_ready() => (200, "text/plain", "ready\n".into()),
        "/readyz" => (503, "text/plain", "not leading yet\n".into()),
        _ => (404, "text/plain", "not found\n".into()),
    }
}

/// Serves until the task is dropped.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(stream, &metrics).await {
                debug!(error = %e, "http connection");
            }
        });
    }
}

async fn handle(mut stream: TcpStream, metrics: &Metrics) -> std::io::Result<()> {
    let mut buf = vec![0u8; 4096];
    let n = stream.read(&mut buf).await?;
    let head = String::from_utf8_lossy(&buf[..n]);
    let (code, content_type, body) = respond(head.lines().next().unwrap_or(""), metrics);
    let reason = match code {
        200 => "OK",
        503 => "Service Unavailable",
        _ => "Not Found",
    };
    let response = format!(
        "HTTP/1.1 {code} {reason}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let m = Metrics::default();
        assert_eq!(respond("GET /healthz HTTP/1.1", &m).0, 200);
        assert_eq!(respond("GET /readyz HTTP/1.1", &m).0, 503);
        m.set_ready(true);
        assert_eq!(respond("GET /readyz HTTP/1.1", &m).0, 200);
        assert!(
            respond("GET /metrics HTTP/1.1", &m)
                .2
                .contains("pgwarden_reconciles_total")
        );
        assert_eq!(respond("GET /nope HTTP/1.1", &m).0, 404);
    }
}
