//! Policy modules fetched from `spec.module.url`, pinned by `spec.module.sha256`.
//!
//! ```text
//!   pinned(url, sha256) ─► downloads/<sha256>.wasm in the cache folder, if its bytes match
//!                       └► else GET url (http or https, no redirects, a deadline, a size cap)
//!                          ─► sha256 checked before anything compiles it ─► kept by digest
//! ```
//!
//! The HTTP client is hyper's, which the kube client already brings.

use std::path::{Path, PathBuf};
use std::time::Duration;

use http_body_util::{BodyExt, Empty, LengthLimitError, Limited};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::engine::digest;

/// The largest module the operator downloads when not told otherwise.
pub const DEFAULT_MAX_MODULE_BYTES: usize = 32 << 20;
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
    #[error("spec.module.url {url} is unreachable: {detail}")]
    Unreachable { url: String, detail: String },
    #[error("spec.module.url {url} answered HTTP {status}: expected 200 with the module")]
    Status { url: String, status: u16 },
    #[error(
        "spec.module.url {url} serves more than {limit} bytes (the operator's module size limit, --policy-max-module-bytes)"
    )]
    TooLarge { url: String, limit: usize },
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
}

impl Default for Fetcher {
    fn default() -> Self {
        Fetcher {
            cache_dir: None,
            max_bytes: DEFAULT_MAX_MODULE_BYTES,
            timeout: FETCH_TIMEOUT,
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

    /// GET `url`: 200 only, at most `max_bytes`, within `timeout`.
    pub async fn download(&self, url: &str) -> Result<Vec<u8>, FetchError> {
        let uri: hyper::Uri = url
            .parse()
            .ok()
            .filter(|u: &hyper::Uri| matches!(u.scheme_str(), Some("http" | "https")))
            .ok_or_else(|| FetchError::BadUrl { url: redacted(url) })?;
        match tokio::time::timeout(self.timeout, self.get(url, uri)).await {
            Ok(result) => result,
            Err(_) => Err(FetchError::Unreachable {
                url: redacted(url),
                detail: format!("no complete answer within {} s", self.timeout.as_secs()),
            }),
        }
    }

    async fn get(&self, url: &str, uri: hyper::Uri) -> Result<Vec<u8>, FetchError> {
        let unreachable = |detail: String| FetchError::Unreachable {
            url: redacted(url),
            detail,
        };
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()
            .map_err(|e| unreachable(format!("no TLS root certificates: {e}")))?
            .https_or_http()
            .enable_http1()
            .build();
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
        let e = Fetcher::default().download(&url).await.unwrap_err();
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
}
