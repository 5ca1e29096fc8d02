//! The one kubelet API the local node serves: `GET /containerLogs/{ns}/{pod}/{container}`,
//! so `kubectl logs` works through the API server as in a cluster.
//!
//! The API server proxies `pods/log` to the Node's address (`InternalIP`, 127.0.0.1 here) and
//! `status.daemonEndpoints.kubeletEndpoint.Port` over HTTPS. The sandbox's API server has no
//! `--kubelet-certificate-authority`, so it does not verify the kubelet's certificate (a
//! self-signed one, made at start), and no `--kubelet-client-certificate`, so it presents
//! none: like the rest of the sandbox, this listens on 127.0.0.1 only. Understood: `follow`,
//! `tailLines`, `limitBytes`; the log is the container's raw output (no timestamps).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncSeekExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;

use super::TICK;

/// The bound listener and its TLS set-up, ready to serve.
pub(super) struct KubeletServer {
    listener: TcpListener,
    acceptor: TlsAcceptor,
    pub(super) port: u16,
}

impl KubeletServer {
    /// Binds 127.0.0.1 on a free port with a fresh self-signed certificate.
    pub(super) async fn bind() -> Result<Self> {
        let key = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()])?;
        let cert = key.cert.der().clone();
        let private =
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.signing_key.serialize_der().into());
        // ring, named: which provider is the process default depends on other crates' features.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(vec![cert], private)?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        Ok(Self {
            listener,
            acceptor: TlsAcceptor::from(Arc::new(config)),
            port,
        })
    }

    /// Serves until `stop` is set; each request on a task of its own.
    pub(super) async fn serve(
        self,
        client: kube::Client,
        state_dir: std::path::PathBuf,
        stop: Arc<AtomicBool>,
    ) {
        let ctx = Arc::new((client, state_dir, stop));
        while !ctx.2.load(Ordering::SeqCst) {
            let Ok(Ok((tcp, _))) = tokio::time::timeout(TICK, self.listener.accept()).await else {
                continue;
            };
            let (acceptor, ctx) = (self.acceptor.clone(), ctx.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                if let Err(e) = handle(tls, &ctx.0, &ctx.1, &ctx.2).await {
                    eprintln!("localnode: kubelet API: {e:#}");
                }
            });
        }
    }
}

/// What a `containerLogs` request asks for.
#[derive(Debug, PartialEq)]
struct LogRequest {
    namespace: String,
    pod: String,
    container: String,
    follow: bool,
    tail_lines: Option<usize>,
    limit_bytes: Option<usize>,
}

fn parse_request_line(line: &str) -> Option<LogRequest> {
    let mut words = line.split_whitespace();
    let (method, target) = (words.next()?, words.next()?);
    if method != "GET" {
        return None;
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let ["containerLogs", namespace, pod, container] = parts[..] else {
        return None;
    };
    let mut req = LogRequest {
        namespace: namespace.into(),
        pod: pod.into(),
        container: container.into(),
        follow: false,
        tail_lines: None,
        limit_bytes: None,
    };
    for (k, v) in query.split('&').filter_map(|kv| kv.split_once('=')) {
        match k {
            "follow" => req.follow = v == "true",
            "tailLines" => req.tail_lines = v.parse().ok(),
            "limitBytes" => req.limit_bytes = v.parse().ok(),
            _ => {}
        }
    }
    Some(req)
}

async fn respond<W: AsyncWrite + Unpin>(w: &mut W, code: &str, body: &str) -> Result<()> {
    let head = format!(
        "HTTP/1.1 {code}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    w.write_all(head.as_bytes()).await?;
    w.write_all(body.as_bytes()).await?;
    Ok(w.shutdown().await?)
}

async fn handle<S>(
    stream: S,
    client: &kube::Client,
    state: &std::path::Path,
    stop: &AtomicBool,
) -> Result<()>
where
    S: tokio::io::AsyncRead + AsyncWrite + Unpin,
{
    let mut stream = tokio::io::BufReader::new(stream);
    let mut line = String::new();
    stream.read_line(&mut line).await?;
    // The headers: nothing in them changes the answer.
    let mut header = String::new();
    while stream.read_line(&mut header).await? > 2 {
        header.clear();
    }
    let Some(req) = parse_request_line(&line) else {
        return respond(
            &mut stream,
            "404 Not Found",
            "only /containerLogs is served\n",
        )
        .await;
    };
    let pods: Api<Pod> = Api::namespaced(client.clone(), &req.namespace);
    let uid = pods.get_opt(&req.pod).await?.and_then(|p| p.metadata.uid);
    let Some(uid) = uid else {
        return respond(
            &mut stream,
            "404 Not Found",
            &format!("pod {} not found\n", req.pod),
        )
        .await;
    };
    let path = state
        .join("pods")
        .join(&uid)
        .join("logs")
        .join(format!("{}.log", req.container));
    let Ok(mut file) = tokio::fs::File::open(&path).await else {
        let body = format!(
            "container {} of pod {} has no log (not started)\n",
            req.container, req.pod
        );
        return respond(&mut stream, "404 Not Found", &body).await;
    };
    let mut text = Vec::new();
    file.read_to_end(&mut text).await?;
    let mut body = tail(&text, req.tail_lines);
    if let Some(limit) = req.limit_bytes {
        body = &body[..body.len().min(limit)];
    }
    let head =
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n";
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    stream.flush().await?;
    if req.follow && req.limit_bytes.is_none() {
        follow(&mut stream, &mut file, &path, stop)
            .await
            .context("following")?;
    }
    Ok(stream.shutdown().await?)
}

/// Writes what is appended to the log until the client goes, the log is removed (its pod
/// was) or the node stops.
async fn follow<W: AsyncWrite + Unpin>(
    w: &mut W,
    file: &mut tokio::fs::File,
    path: &std::path::Path,
    stop: &AtomicBool,
) -> Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    while !stop.load(Ordering::SeqCst) && path.exists() {
        let n = file.read(&mut buf).await?;
        if n == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            // Truncated under us: start again from the beginning.
            let len = tokio::fs::metadata(path)
                .await
                .map(|m| m.len())
                .unwrap_or(0);
            if file.stream_position().await? > len {
                file.seek(std::io::SeekFrom::Start(0)).await?;
            }
            continue;
        }
        w.write_all(&buf[..n]).await?;
        w.flush().await?;
    }
    Ok(())
}

/// The last `lines` lines of `text` (all of it when `None`).
fn tail(text: &[u8], lines: Option<usize>) -> &[u8] {
    let Some(n) = lines else {
        return text;
    };
    let body = text.strip_suffix(b"\n").unwrap_or(text);
    let start = body
        .iter()
        .enumerate()
        .rev()
        .filter(|(_, b)| **b == b'\n')
        .nth(n.saturating_sub(1))
        .map_or(0, |(i, _)| i + 1);
    if n == 0 {
        &text[text.len()..]
    } else {
        &text[start..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_line_names_the_container_and_options() {
        let req = parse_request_line(
            "GET /containerLogs/ns-1/pg-1/postgres?follow=true&tailLines=5 HTTP/1.1\r\n",
        )
        .unwrap();
        assert_eq!(
            (
                req.namespace.as_str(),
                req.pod.as_str(),
                req.container.as_str()
            ),
            ("ns-1", "pg-1", "postgres")
        );
        assert!(req.follow);
        assert_eq!(req.tail_lines, Some(5));
        assert_eq!(parse_request_line("GET /exec/ns/pod/c HTTP/1.1"), None);
        assert_eq!(
            parse_request_line("POST /containerLogs/a/b/c HTTP/1.1"),
            None
        );
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail(b"a\nb\nc\n", Some(2)), b"b\nc\n");
        assert_eq!(tail(b"a\nb\nc", Some(2)), b"b\nc");
        assert_eq!(tail(b"a\nb\n", Some(5)), b"a\nb\n");
        assert_eq!(tail(b"a\nb\n", Some(0)), b"");
        assert_eq!(tail(b"a\nb\n", None), b"a\nb\n");
    }
}
