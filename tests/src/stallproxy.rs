//! A TCP proxy in front of the API server that a test can stall: while stalled, every byte in
//! either direction is held (connections stay open, nothing moves), as when an API server or
//! the network to it hangs. TLS passes through untouched: the client still talks to the real
//! server's certificate, which names 127.0.0.1 whatever the port.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};

/// A running proxy; its threads end with the test binary.
pub struct StallProxy {
    /// `127.0.0.1:<port>` the proxy listens on.
    pub addr: String,
    stalled: Arc<AtomicBool>,
}

impl StallProxy {
    /// Listens on a free port and forwards every connection to `upstream` (`host:port`).
    pub fn start(upstream: &str) -> Result<StallProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").context("cannot bind the proxy")?;
        let addr = listener.local_addr()?.to_string();
        let stalled = Arc::new(AtomicBool::new(false));
        let (upstream, flag) = (upstream.to_string(), stalled.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let (upstream, flag) = (upstream.clone(), flag.clone());
                std::thread::spawn(move || forward(client, &upstream, flag));
            }
        });
        Ok(StallProxy { addr, stalled })
    }

    /// From now on no byte moves until [`StallProxy::resume`].
    pub fn stall(&self) {
        self.stalled.store(true, Ordering::SeqCst);
    }

    /// Bytes move again (what was held is delivered).
    pub fn resume(&self) {
        self.stalled.store(false, Ordering::SeqCst);
    }

    /// A copy of `kubeconfig` whose server is this proxy, written next to it as `<name>-via-<port>`.
    pub fn kubeconfig(&self, kubeconfig: &Path) -> Result<PathBuf> {
        let text = std::fs::read_to_string(kubeconfig)
            .with_context(|| format!("cannot read {}", kubeconfig.display()))?;
        let rewritten: Vec<String> = text
            .lines()
            .map(|line| match line.split_once("server: https://") {
                Some((indent, _)) => format!("{indent}server: https://{}", self.addr),
                None => line.to_string(),
            })
            .collect();
        let port = self.addr.rsplit(':').next().unwrap_or_default();
        let name = kubeconfig.file_name().unwrap_or_default().to_string_lossy();
        let path = kubeconfig.with_file_name(format!("{name}-via-{port}"));
        std::fs::write(&path, rewritten.join("\n") + "\n")?;
        Ok(path)
    }
}

/// The `host:port` of the server a kubeconfig names.
pub fn server_of(kubeconfig: &Path) -> Result<String> {
    let text = std::fs::read_to_string(kubeconfig)
        .with_context(|| format!("cannot read {}", kubeconfig.display()))?;
    text.lines()
        .find_map(|l| l.split_once("server: https://").map(|(_, s)| s.trim()))
        .map(|s| s.trim_end_matches('/').to_string())
        .with_context(|| format!("no server in {}", kubeconfig.display()))
}

fn forward(client: TcpStream, upstream: &str, stalled: Arc<AtomicBool>) {
    // Held while stalled too: a new connection opens, then nothing moves on it.
    wait_while(&stalled);
    let Ok(server) = TcpStream::connect(upstream) else {
        return;
    };
    let (Ok(client2), Ok(server2)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let flag = stalled.clone();
    std::thread::spawn(move || pump(client2, server2, flag));
    pump(server, client, stalled);
}

/// Copies `from` to `to`, holding each chunk while the proxy is stalled.
fn pump(mut from: TcpStream, mut to: TcpStream, stalled: Arc<AtomicBool>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        wait_while(&stalled);
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

fn wait_while(stalled: &AtomicBool) {
    while stalled.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(20));
    }
}
