//! A single conditional PUT whose body streams from a file: what lets uncompressed segments
//! upload in parallel without a 16 MiB buffer each.
//!
//! ```text
//!   hash the file (blocking thread) ─► sha256 = the signed x-amz-content-sha256
//!   PUT <key>  If-None-Match: *  Content-Length  SSE headers  SigV4 over all of them
//!       body: the file, read in 256 KiB chunks as the socket takes them
//!   2xx ─► stored │ 412 ─► an object is there (compared by the caller) │ other ─► error
//! ```
//!
//! object_store 0.12 sends a body only from memory (`PutPayload`, so that it can retry), so
//! this one request is made with its HTTP client crate (reqwest) and signed here with AWS
//! Signature V4; credentials come from object_store's provider (keys, session token, IAM
//! role). The server checks the body against the signed SHA-256: a file that changed since
//! it was hashed is refused, never stored. A single PUT is atomic: a killed agent leaves no
//! object or a whole one.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::BytesMut;
use chrono::{DateTime, Utc};
use object_store::aws::AwsCredential;
use ring::hmac;
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

/// What the store is asked to do with encryption, as barman's `-e` and `--sse-kms-key-id`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sse {
    Aes256,
    Kms { key_id: Option<String> },
}

/// How much of the file one read takes: the most a streamed upload holds at once.
const CHUNK: usize = 256 * 1024;

/// Where and how a streamed PUT goes.
#[derive(Clone, Debug)]
pub struct Target {
    /// `http(s)://host[:port]` (no trailing slash), path-style.
    pub endpoint: String,
    pub bucket: String,
    pub region: String,
    pub sse: Option<Sse>,
    pub http: reqwest::Client,
}

/// What the store answered to a conditional PUT.
#[derive(Debug, PartialEq, Eq)]
pub enum Put {
    Created,
    /// If-None-Match failed: an object already has this key.
    Exists,
}

impl Target {
    /// The client for `endpoint` (None: AWS in `region`), with the extra root certificates.
    pub fn new(
        endpoint: Option<&str>,
        bucket: &str,
        region: &str,
        sse: Option<Sse>,
        roots: Vec<reqwest::Certificate>,
    ) -> Result<Self> {
        let endpoint = match endpoint {
            Some(url) => url.trim_end_matches('/').to_string(),
            None => format!("https://s3.{region}.amazonaws.com"),
        };
        let mut http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(120));
        for cert in roots {
            http = http.add_root_certificate(cert);
        }
        Ok(Self {
            endpoint,
            bucket: bucket.to_string(),
            region: region.to_string(),
            sse,
            http: http.build().context("cannot set up the HTTP client")?,
        })
    }

    /// PUTs the `size` bytes of `file` (whose SHA-256 is `sha256`) at `key`, unless an object
    /// is there already.
    pub async fn put_file(
        &self,
        key: &str,
        file: &Path,
        size: u64,
        sha256: &[u8],
        cred: &AwsCredential,
    ) -> Result<Put> {
        let (base, host, prefix) = split_endpoint(&self.endpoint)?;
        let path = format!(
            "{prefix}/{}/{}",
            uri_encode(&self.bucket, false),
            uri_encode(key, true)
        );
        let url = format!("{base}{path}");
        let mut headers = vec![
            ("content-length".to_string(), size.to_string()),
            ("host".into(), host),
            ("if-none-match".into(), "*".into()),
            ("x-amz-content-sha256".into(), hex(sha256)),
        ];
        headers.extend(sse_headers(self.sse.as_ref()));
        let auth = sign(&self.region, "PUT", &path, &mut headers, cred, Utc::now());
        let body = file_body(file).await?;
        let mut req = self.http.put(&url).body(body);
        for (name, value) in headers.iter().filter(|(n, _)| n != "host") {
            req = req.header(name, value);
        }
        let resp = req
            .header("authorization", auth)
            .send()
            .await
            .with_context(|| format!("cannot upload {key}"))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(Put::Created);
        }
        if status == reqwest::StatusCode::PRECONDITION_FAILED {
            return Ok(Put::Exists);
        }
        let text = resp.text().await.unwrap_or_default();
        bail!(
            "cannot upload {key}: the store answered {status}{}",
            s3_code(&text)
        )
    }
}

/// The file as a body read in [`CHUNK`]s as it is sent; a read error fails the request.
async fn file_body(path: &Path) -> Result<reqwest::Body> {
    let file = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("cannot open {}", path.display()))?;
    let chunks = futures::stream::try_unfold(file, |mut file| async move {
        let mut buf = BytesMut::with_capacity(CHUNK);
        let n = file.read_buf(&mut buf).await?;
        std::io::Result::Ok((n > 0).then(|| (buf.freeze(), file)))
    });
    Ok(reqwest::Body::wrap_stream(chunks))
}

/// The headers barman's `-e` and `--sse-kms-key-id` make boto3 send.
fn sse_headers(sse: Option<&Sse>) -> Vec<(String, String)> {
    const SSE: &str = "x-amz-server-side-encryption";
    match sse {
        None => vec![],
        Some(Sse::Aes256) => vec![(SSE.into(), "AES256".into())],
        Some(Sse::Kms { key_id }) => {
            let mut h = vec![(SSE.to_string(), "aws:kms".to_string())];
            if let Some(id) = key_id {
                h.push((format!("{SSE}-aws-kms-key-id"), id.clone()));
            }
            h
        }
    }
}

/// Signs a request with AWS Signature V4 (header form, no query string): adds `x-amz-date`
/// (and `x-amz-security-token`) to `headers`, signs every header, returns `Authorization`.
/// `headers` must hold `host` and `x-amz-content-sha256`, names in lower case.
fn sign(
    region: &str,
    method: &str,
    path: &str,
    headers: &mut Vec<(String, String)>,
    cred: &AwsCredential,
    now: DateTime<Utc>,
) -> String {
    let date_time = now.format("%Y%m%dT%H%M%SZ").to_string();
    let date = &date_time[..8];
    headers.push(("x-amz-date".into(), date_time.clone()));
    if let Some(token) = &cred.token {
        headers.push(("x-amz-security-token".into(), token.clone()));
    }
    headers.sort();
    let payload = headers
        .iter()
        .find(|(n, _)| n == "x-amz-content-sha256")
        .map_or("UNSIGNED-PAYLOAD".to_string(), |(_, v)| v.clone());
    let canonical_headers: String = headers
        .iter()
        .map(|(n, v)| format!("{n}:{}\n", v.trim()))
        .collect();
    let signed: Vec<&str> = headers.iter().map(|(n, _)| n.as_str()).collect();
    let signed = signed.join(";");
    let request = format!("{method}\n{path}\n\n{canonical_headers}\n{signed}\n{payload}");
    let scope = format!("{date}/{region}/s3/aws4_request");
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{date_time}\n{scope}\n{}",
        hex(&Sha256::digest(request.as_bytes()))
    );
    let mut key = format!("AWS4{}", cred.secret_key).into_bytes();
    for part in [date, region, "s3", "aws4_request"] {
        key = mac(&key, part.as_bytes());
    }
    let signature = hex(&mac(&key, to_sign.as_bytes()));
    format!(
        "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed}, Signature={signature}",
        cred.key_id
    )
}

fn mac(key: &[u8], data: &[u8]) -> Vec<u8> {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data)
        .as_ref()
        .to_vec()
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// S3's URI encoding: unreserved characters stay, `/` too in a key, the rest `%XX`.
fn uri_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            b'/' if keep_slash => out.push('/'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// An endpoint URL's `scheme://authority`, its Host header and its path (no trailing `/`),
/// which comes before the bucket in a path-style request.
fn split_endpoint(endpoint: &str) -> Result<(String, String, String)> {
    let (scheme, rest) = endpoint
        .split_once("://")
        .with_context(|| format!("endpointURL {endpoint} has no scheme"))?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let host = url_host(endpoint, authority)?;
    let prefix = path.trim_end_matches('/').to_string();
    Ok((format!("{scheme}://{authority}"), host, prefix))
}

/// `host[:port]` of an endpoint's authority, as the Host header carries it.
fn url_host(endpoint: &str, host: &str) -> Result<String> {
    if host.is_empty() {
        bail!("endpointURL {endpoint} has no host");
    }
    // The default port is left out of Host, as HTTP clients send it.
    let host = host
        .strip_suffix(":443")
        .filter(|_| endpoint.starts_with("https://"))
        .or_else(|| {
            host.strip_suffix(":80")
                .filter(|_| endpoint.starts_with("http://"))
        })
        .unwrap_or(host);
    Ok(host.to_string())
}

/// `: <Code>` of an S3 error document, when there is one.
fn s3_code(body: &str) -> String {
    let code = body
        .split_once("<Code>")
        .and_then(|(_, r)| r.split_once("</Code>"))
        .map(|(c, _)| c);
    code.map(|c| format!(": {c}")).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// AWS's worked example "PUT Object" (Amazon S3 API reference, Signature Version 4,
    /// header-based authentication): the signature it publishes.
    #[test]
    fn signs_the_aws_documented_put_example() {
        let cred = AwsCredential {
            key_id: "AKIAIOSFODNN7EXAMPLE".into(),
            secret_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
            token: None,
        };
        let mut headers = vec![
            (
                "date".to_string(),
                "Fri, 24 May 2013 00:00:00 GMT".to_string(),
            ),
            ("host".into(), "examplebucket.s3.amazonaws.com".into()),
            (
                "x-amz-content-sha256".into(),
                hex(&Sha256::digest(b"Welcome to Amazon S3.")),
            ),
            ("x-amz-storage-class".into(), "REDUCED_REDUNDANCY".into()),
        ];
        let now = DateTime::parse_from_rfc3339("2013-05-24T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let auth = sign(
            "us-east-1",
            "PUT",
            "/test%24file.text",
            &mut headers,
            &cred,
            now,
        );
        assert_eq!(
            auth,
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, \
             SignedHeaders=date;host;x-amz-content-sha256;x-amz-date;x-amz-storage-class, \
             Signature=98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd"
        );
    }

    #[test]
    fn keys_and_hosts_are_encoded_as_s3_expects() {
        assert_eq!(
            uri_encode("pg/a b/wals/0000+1", true),
            "pg/a%20b/wals/0000%2B1"
        );
        assert_eq!(uri_encode("a/b", false), "a%2Fb");
        let split = |e: &str| split_endpoint(e).unwrap();
        assert_eq!(
            split("http://127.0.0.1:9000"),
            (
                "http://127.0.0.1:9000".into(),
                "127.0.0.1:9000".into(),
                "".into()
            )
        );
        assert_eq!(
            split("https://s3.example.com:443/store/"),
            (
                "https://s3.example.com:443".into(),
                "s3.example.com".into(),
                "/store".into()
            )
        );
        assert!(split_endpoint("s3.example.com").is_err());
        assert!(split_endpoint("http:///x").is_err());
        assert_eq!(
            s3_code("<Error><Code>AccessDenied</Code></Error>"),
            ": AccessDenied"
        );
    }

    #[test]
    fn sse_headers_name_the_kms_key_only_when_given() {
        assert!(sse_headers(None).is_empty());
        let kms = sse_headers(Some(&Sse::Kms {
            key_id: Some("k1".into()),
        }));
        assert_eq!(
            kms,
            [
                ("x-amz-server-side-encryption".into(), "aws:kms".into()),
                (
                    "x-amz-server-side-encryption-aws-kms-key-id".into(),
                    "k1".into()
                )
            ]
        );
    }
}
