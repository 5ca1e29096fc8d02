//! Policy modules fetched from `spec.module.url`, pinned by `spec.module.sha256`.
//!
//! ```text
//!   pinned(url, sha256) ─► downloads/<sha256>.wasm in the cache folder, if its bytes match
//!                       └► else GET url (https; no redirects, a deadline, a size cap)
//!                          ─► sha256 checked before anything compiles it ─► kept by digest
//! ```
//!
//! A ReconcilePolicy names the URL, so the operator must not become a probe of its own
//! network: plain `http` is refused unless `--policy-allow-http`, and the host's addresses
//! are resolved once, checked (no loopback, link-local — the cloud metadata address —,
//! private, shared or multicast address unless `--policy-allow-private-addresses`), and the
//! connection goes to the addresses checked, not to a second lookup a rebinding DNS server
//! could answer differently.
//!
//! The HTTP client is hyper's, which the kube client already brings.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::{BodyExt, Empty, LengthLimitError, Limited};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::rt::TokioExecutor;

use super::engine::digest;

/// The largest module the operator downloads (or compiles) when not told otherwise.
pub use super::engine::DEFAULT_MAX_MODULE_BYTES;
/// How long one download may take, connection included.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a pinned module could not be had. Every message names the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    #[error(
        "spec.module.url needs spec.module.sha256: a module fetched from a URL must be pinned by its digest (64 lowercase hex digits)"
    )]
    MissingDigest,
    #[error(
        "spec.module.sha256 is {0:?}: expected 64 lowercase hex digits (sha256sum policy.wasm)"
    )]
    BadDigest(String),
    #[error("spec.module.url {url} is not an http:// or https:// URL")]
    BadUrl { url: String },
    #[error(
        "spec.module.url {url} is plain http: only https is allowed (the operator's --policy-allow-http permits http)"
    )]
    PlainHttp { url: String },
    #[error(
        "spec.module.url {url} resolves to {address}, a loopback, link-local, private or otherwise non-public address: refused (the operator's --policy-allow-private-addresses permits it)"
    )]
    PrivateAddress { url: String, address: IpAddr },
    #[error("spec.module.url {url} is unreachable: {detail}")]
    Unreachable { url: String, detail: String },
    #[error("spec.module.url {url} answered HTTP {status}: expected 200 with the module")]
    Status { url: String, status: u16 },
    #[error(
        "spec.module.url {url} serves more than {limit} bytes (the operator's module size limit, --policy-max-module-bytes)"
    )]
    TooLarge { url: String, limit: usize },
    #[error("cannot read {path} (spec.module.file): {detail}")]
    FileUnreadable { path: String, detail: String },
    #[error(
        "{path} (spec.module.file) is too large: more than {limit} bytes (the operator's module size limit, --policy-max-module-bytes)"
    )]
    FileTooLarge { path: String, limit: usize },
    #[error(
        "spec.module.sha256 mismatch: expected {expected}, the module at spec.module.url {url} has {actual}"
    )]
    Mismatch {
        url: String,
        expected: String,
        actual: String,
    },
}

/// Downloads modules pinned by digest and keeps them by digest.
#[derive(Clone, Debug)]
pub struct Fetcher {
    /// Folder of downloaded modules (`<sha256>.wasm`); `None`: no disk cache.
    pub cache_dir: Option<PathBuf>,
    /// Size cap of one module.
    pub max_bytes: usize,
    /// Deadline of one download.
    pub timeout: Duration,
    /// Whether plain `http://` URLs are allowed (`--policy-allow-http`).
    pub allow_http: bool,
    /// Whether non-public addresses are allowed (`--policy-allow-private-addresses`).
    pub allow_private: bool,
}

impl Default for Fetcher {
    fn default() -> Self {
        Fetcher {
            cache_dir: None,
            max_bytes: DEFAULT_MAX_MODULE_BYTES,
            timeout: FETCH_TIMEOUT,
            allow_http: false,
            allow_private: false,
        }
    }
}

/// Checks `sha256` is present and well formed.
pub fn check_pin(sha256: Option<&str>) -> Result<&str, FetchError> {
    let pin = sha256.ok_or(FetchError::MissingDigest)?;
    let well_formed = pin.len() == 64
        && pin
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !well_formed {
        return Err(FetchError::BadDigest(pin.into()));
    }
    Ok(pin)
}

/// `spec.module.file`, at most `limit` bytes: reading one byte more tells a file too large
/// (or endless, as `/dev/zero`) without ever holding more than the limit.
pub async fn read_file(path: &str, limit: usize) -> Result<Vec<u8>, FetchError> {
    use tokio::io::AsyncReadExt;
    let unreadable = |e: std::io::Error| FetchError::FileUnreadable {
        path: path.into(),
        detail: e.to_string(),
    };
    let file = tokio::fs::File::open(path).await.map_err(unreadable)?;
    let mut bytes = Vec::new();
    file.take(limit as u64 + 1)
        .read_to_end(&mut bytes)
        .await
        .map_err(unreadable)?;
    if bytes.len() > limit {
        return Err(FetchError::FileTooLarge {
            path: path.into(),
            limit,
        });
    }
    Ok(bytes)
}

/// Checks downloaded bytes against the pin.
pub fn verify(url: &str, expected: &str, bytes: &[u8]) -> Result<(), FetchError> {
    let actual = digest(bytes);
    if actual != expected {
        return Err(FetchError::Mismatch {
            url: redacted(url),
            expected: expected.into(),
            actual,
        });
    }
    Ok(())
}

impl Fetcher {
    /// The module at `url` whose sha256 is `sha256`: from the cache folder, else downloaded
    /// and checked (then kept in the cache folder).
    pub async fn pinned(&self, url: &str, sha256: Option<&str>) -> Result<Vec<u8>, FetchError> {
        let pin = check_pin(sha256)?;
        if let Some(bytes) = self.cached(pin) {
            return Ok(bytes);
        }
        let bytes = self.download(url).await?;
        verify(url, pin, &bytes)?;
        self.keep(pin, &bytes);
        Ok(bytes)
    }

    fn path(&self, pin: &str) -> Option<PathBuf> {
        self.cache_dir
            .as_ref()
            .map(|d| d.join(format!("{pin}.wasm")))
    }

    /// A cached module, only if its bytes still have the digest it is filed under.
    fn cached(&self, pin: &str) -> Option<Vec<u8>> {
        let bytes = std::fs::read(self.path(pin)?).ok()?;
        (digest(&bytes) == pin).then_some(bytes)
    }

    fn keep(&self, pin: &str, bytes: &[u8]) {
        let Some(path) = self.path(pin) else { return };
        if let Err(e) = write_atomically(&path, bytes) {
            tracing::warn!(path = %path.display(), error = %e, "cannot cache the downloaded module");
        }
    }

    /// GET `url`: https (unless allowed), public addresses (unless allowed), 200 only, at most
    /// `max_bytes`, within `timeout`.
    pub async fn download(&self, url: &str) -> Result<Vec<u8>, FetchError> {
        let uri: hyper::Uri = url
            .parse()
            .ok()
            .filter(|u: &hyper::Uri| matches!(u.scheme_str(), Some("http" | "https")))
            .filter(|u: &hyper::Uri| u.host().is_some())
            .ok_or_else(|| FetchError::BadUrl { url: redacted(url) })?;
        if uri.scheme_str() == Some("http") && !self.allow_http {
            return Err(FetchError::PlainHttp { url: redacted(url) });
        }
        let fetch = async {
            let addresses = self.addresses(url, &uri).await?;
            self.get(url, uri, addresses).await
        };
        match tokio::time::timeout(self.timeout, fetch).await {
            Ok(result) => result,
            Err(_) => Err(FetchError::Unreachable {
                url: redacted(url),
                detail: format!("no complete answer within {} s", self.timeout.as_secs()),
            }),
        }
    }

    /// The host's addresses, resolved once; every one must be public unless allowed.
    async fn addresses(&self, url: &str, uri: &hyper::Uri) -> Result<Vec<SocketAddr>, FetchError> {
        let host = uri.host().unwrap_or_default();
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = uri.port_u16().unwrap_or(match uri.scheme_str() {
            Some("http") => 80,
            _ => 443,
        });
        let resolved: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| FetchError::Unreachable {
                url: redacted(url),
                detail: format!("cannot resolve {host}: {e}"),
            })?
            .collect();
        if let Some(private) = resolved.iter().find(|a| !is_public(a.ip()))
            && !self.allow_private
        {
            return Err(FetchError::PrivateAddress {
                url: redacted(url),
                address: private.ip(),
            });
        }
        Ok(resolved)
    }

    async fn get(
        &self,
        url: &str,
        uri: hyper::Uri,
        addresses: Vec<SocketAddr>,
    ) -> Result<Vec<u8>, FetchError> {
        let unreachable = |detail: String| FetchError::Unreachable {
            url: redacted(url),
            detail,
        };
        let mut http = HttpConnector::new_with_resolver(Checked(addresses));
        http.enforce_http(false);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()
            .map_err(|e| unreachable(format!("no TLS root certificates: {e}")))?
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build(https);
        let response = client.get(uri).await.map_err(|e| unreachable(chain(&e)))?;
        let status = response.status().as_u16();
        if status != 200 {
            return Err(FetchError::Status {
                url: redacted(url),
                status,
            });
        }
        let too_large = || FetchError::TooLarge {
            url: redacted(url),
            limit: self.max_bytes,
        };
        let declared = response
            .headers()
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.max_bytes as u64) {
            return Err(too_large());
        }
        let body = Limited::new(response.into_body(), self.max_bytes)
            .collect()
            .await
            .map_err(|e| {
                if e.downcast_ref::<LengthLimitError>().is_some() {
                    too_large()
                } else {
                    unreachable(format!("the download broke off: {e}"))
                }
            })?;
        Ok(body.to_bytes().to_vec())
    }
}

/// A resolver that answers the addresses already resolved and checked, whatever the name:
/// the connection goes where the check looked (no second lookup to rebind).
#[derive(Clone)]
struct Checked(Vec<SocketAddr>);

impl tower_service::Service<Name> for Checked {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Name) -> Self::Future {
        let addresses = self.0.clone();
        Box::pin(async move { Ok(addresses.into_iter()) })
    }
}

/// Whether an address is on the public internet: not loopback, unspecified, link-local (the
/// cloud metadata address 169.254.169.254 and fd00:ec2::254 among them), private (RFC 1918,
/// unique local), shared (100.64.0.0/10), benchmarking, documentation, multicast, broadcast
/// or reserved; an IPv4-mapped or NAT64 IPv6 address is judged by its IPv4 address.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_documentation()
        || ip.is_multicast()
        || a == 0
        || (a == 100 && (64..128).contains(&b))
        || (a == 192 && b == 0 && c == 0)
        || (a == 198 && (18..20).contains(&b))
        || a >= 240)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    let segments = ip.segments();
    // NAT64 (64:ff9b::/96) reaches the IPv4 address in its last 32 bits.
    if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        let [.., hi, lo] = segments;
        return is_public_v4(Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo)));
    }
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (segments[0] & 0xfe00) == 0xfc00 // unique local fc00::/7
        || (segments[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
        || (segments[0] & 0xffc0) == 0xfec0 // site-local fec0::/10 (deprecated)
        || (segments[0] == 0x2001 && segments[1] == 0x0db8)) // documentation
}

/// An error with its causes, `a: b: c`.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let partial = path.with_extension(format!("partial-{}", std::process::id()));
    std::fs::write(&partial, bytes)?;
    std::fs::rename(&partial, path)
}

/// `url` as it may appear in status, Events and logs: credentials in its user part and its
/// query (a presigned URL's signature) replaced by `***`.
pub fn redacted(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, _)) => (base, "?***"),
        None => (url, ""),
    };
    let base = match base.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            match authority.rsplit_once('@') {
                Some((_, host)) => format!("{scheme}://***@{host}{path}"),
                None => base.to_string(),
            }
        }
        None => base.to_string(),
    };
    format!("{base}{query}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const PIN: &str = "0000000000000000000000000000000000000000000000000000000000000000";

    #[test]
    fn urls_lose_their_credentials_in_messages() {
        assert_eq!(redacted("https://h/p.wasm"), "https://h/p.wasm");
        assert_eq!(
            redacted("https://user:pa55@h:8443/p.wasm"),
            "https://***@h:8443/p.wasm"
        );
        assert_eq!(
            redacted("https://bucket.s3/p.wasm?X-Amz-Signature=abc&X-Amz-Credential=AKIA"),
            "https://bucket.s3/p.wasm?***"
        );
        let e = FetchError::Status {
            url: redacted("http://u:secret@h/p.wasm?token=t0k"),
            status: 403,
        };
        let text = e.to_string();
        assert!(!text.contains("secret") && !text.contains("t0k"), "{text}");
    }

    #[test]
    fn a_url_needs_a_well_formed_pin() {
        assert_eq!(check_pin(None), Err(FetchError::MissingDigest));
        assert_eq!(
            check_pin(Some("ABC")),
            Err(FetchError::BadDigest("ABC".into()))
        );
        assert_eq!(check_pin(Some(PIN)), Ok(PIN));
        assert!(
            FetchError::MissingDigest
                .to_string()
                .starts_with("spec.module.url needs spec.module.sha256")
        );
    }

    #[test]
    fn a_mismatch_names_both_digests() {
        let e = verify("http://h/p.wasm", PIN, b"module").unwrap_err();
        let actual = digest(b"module");
        assert_eq!(
            e.to_string(),
            format!(
                "spec.module.sha256 mismatch: expected {PIN}, the module at spec.module.url http://h/p.wasm has {actual}"
            )
        );
        assert_eq!(verify("u", &actual, b"module"), Ok(()));
    }

    #[test]
    fn the_cache_serves_only_bytes_that_match_their_name() {
        let dir = tempfile::tempdir().unwrap();
        let fetcher = Fetcher {
            cache_dir: Some(dir.path().into()),
            ..Default::default()
        };
        let pin = digest(b"module");
        fetcher.keep(&pin, b"module");
        assert_eq!(fetcher.cached(&pin).as_deref(), Some(&b"module"[..]));
        std::fs::write(dir.path().join(format!("{pin}.wasm")), b"tampered").unwrap();
        assert_eq!(fetcher.cached(&pin), None);
    }

    #[tokio::test]
    async fn an_unreachable_url_says_so() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("http://127.0.0.1:{port}/p.wasm");
        let local = Fetcher {
            allow_http: true,
            allow_private: true,
            ..Default::default()
        };
        let e = local.download(&url).await.unwrap_err();
        assert!(
            matches!(&e, FetchError::Unreachable { .. }) && e.to_string().contains(&url),
            "{e}"
        );
        let e = Fetcher::default().download("ftp://h/p").await.unwrap_err();
        assert_eq!(
            e,
            FetchError::BadUrl {
                url: "ftp://h/p".into()
            }
        );
    }

    #[test]
    fn only_public_addresses_are_public() {
        let refused = [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "198.18.0.1",
            "::1",
            "::",
            "fe80::1",
            "fd00:ec2::254",
            "fc00::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "ff02::1",
        ];
        for address in refused {
            assert!(
                !is_public(address.parse().unwrap()),
                "{address} is not public"
            );
        }
        let allowed = [
            "1.1.1.1",
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
        ];
        for address in allowed {
            assert!(is_public(address.parse().unwrap()), "{address} is public");
        }
    }

    #[tokio::test]
    async fn plain_http_is_refused_unless_allowed() {
        let e = Fetcher::default()
            .download("http://example.com/p.wasm")
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "spec.module.url http://example.com/p.wasm is plain http: only https is allowed (the operator's --policy-allow-http permits http)"
        );
    }

    #[tokio::test]
    async fn a_private_address_is_refused_unless_allowed() {
        // No connection is tried: nothing listens on these ports.
        for url in [
            "https://127.0.0.1:1/p.wasm",
            "https://169.254.169.254/latest/meta-data",
            "https://[::1]:1/p.wasm",
            "https://localhost:1/p.wasm",
        ] {
            let e = Fetcher::default().download(url).await.unwrap_err();
            assert!(matches!(e, FetchError::PrivateAddress { .. }), "{url}: {e}");
        }
        let allowed = Fetcher {
            allow_private: true,
            ..Default::default()
        };
        let e = allowed
            .download("https://127.0.0.1:1/p.wasm")
            .await
            .unwrap_err();
        assert!(matches!(e, FetchError::Unreachable { .. }), "{e}");
    }
}
