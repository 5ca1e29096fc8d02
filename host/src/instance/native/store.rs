//! The S3 side of the native archiver: a client set up as barman-cloud-* would be from the
//! same settings and environment, and the two operations on a WAL file.
//!
//! ```text
//!   archive(path), uncompressed: hash the file (a core) ─► HEAD key ─► absent: one PUT
//!                  streamed from the file (put.rs), signed with its SHA-256 ─► HEAD size;
//!                  present, or the PUT's If-None-Match failed: compared as below
//!   archive(path), compressed: hold a segment's worth of the upload budget, wait for a core ─►
//!                    read + compress (blocking thread) into 1 MiB blocks ─► HEAD key
//!                    absent  ─► PUT If-None-Match:* with x-amz-checksum-sha256 (the server
//!                               verifies the body) ─► HEAD: size must be what was sent
//!                    present ─► GET, decompress, compare with the local file:
//!                               same WAL ─► already archived; other content ─► error
//!   fetch(wal, dest)  list the WAL's folder ─► pick `<wal>` or `<wal><suffix>` as barman does
//!                    (none: not in the store) ─► GET, streamed ─► decompress to `dest.tmp`,
//!                    fsync, rename
//! ```
//!
//! A single PUT is atomic in S3: a killed agent leaves either no object or a whole one, so
//! there is no partial upload to abort. Credentials come from the environment the pod gets
//! from its Secret (the variables barman reads); they never reach an error message.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey, Checksum};
use object_store::path::Path as ObjectPath;
use object_store::{
    BackoffConfig, Certificate, ClientOptions, ObjectStore, PutMode, PutOptions, PutPayload,
    RetryConfig,
};
use sha2::{Digest, Sha256};

/// The buffer between a file and a codec.
const BUF: usize = 128 * 1024;

use super::codec;
use super::key::{Destination, WalName, compression_of};
use super::put::{self, Put, Sse};
use super::stream::{self, BodyReader};
use pgwarden_crds::WalCompression;
use pgwarden_crds::settings::{ArchiveSettings, env};

/// One server's WAL folder in one store, with the settings the archive uses.
#[derive(Clone, Debug)]
pub struct Store {
    s3: Arc<AmazonS3>,
    /// The streamed PUT of uncompressed segments (same endpoint, CA, SSE, credentials).
    put: put::Target,
    dest: Destination,
    server: String,
    compression: Option<WalCompression>,
}

/// What `archive` found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stored {
    /// Uploaded now: the object's key and size.
    Uploaded { key: String, size: u64 },
    /// The same WAL was already there (an earlier attempt, or barman).
    AlreadyThere { key: String },
}

impl Store {
    /// A client for `s` with the credentials of this process's environment.
    pub fn from_env(s: &ArchiveSettings) -> Result<Self> {
        Self::open(s, |k| std::env::var(k).ok())
    }

    /// A client for `s` (its SSE and KMS key id as barman's `-e` and `--sse-kms-key-id`),
    /// with the credentials `var` finds under the variables of [`env`].
    pub fn open(s: &ArchiveSettings, var: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let dest = Destination::parse(&s.destination_path)?;
        let sse = s.encryption.map(|e| match e {
            pgwarden_crds::Encryption::Aes256 => Sse::Aes256,
            pgwarden_crds::Encryption::AwsKms => Sse::Kms {
                key_id: s.sse_kms_key_id.clone(),
            },
        });
        let region = var(env::REGION).unwrap_or_else(|| "us-east-1".into());
        let roots = match &s.endpoint_ca_file {
            Some(ca) => reqwest_roots(Path::new(ca))?,
            None => vec![],
        };
        let put = put::Target::new(
            s.endpoint_url.as_deref(),
            &dest.bucket,
            &region,
            sse.clone(),
            roots,
        )?;
        let s3 = builder(s, &dest, sse.as_ref(), var)?
            .build()
            .with_context(|| format!("cannot set up the S3 client for {}", s.destination_path))?;
        Ok(Self {
            s3: Arc::new(s3),
            put,
            dest,
            server: s.server_name.clone(),
            compression: s.compression,
        })
    }

    /// The object key of `wal` with this store's compression.
    pub fn key(&self, wal: &WalName) -> String {
        wal.key(&self.dest, &self.server, self.compression)
    }

    /// Archives the WAL file at `path`; Ok only once the object is in the store, whole.
    pub async fn archive(&self, path: &Path) -> Result<Stored> {
        let wal = wal_name_of(path)?;
        let key = self.key(&wal);
        let location = ObjectPath::from(key.as_str());
        if self.compression.is_none() {
            return self.archive_streamed(path, &key, &location).await;
        }
        // The share of the upload memory is held until the PUT has ended (see stream.rs).
        let (payload, digest, _held) = read_compressed(self.compression, path).await?;
        if self.exists(&location).await? {
            return self.same_or_refuse(&location, &key, &digest).await;
        }
        let size = payload.content_length() as u64;
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match self.s3.put_opts(&location, payload, opts).await {
            Ok(_) => {}
            // Someone (or a retry of this very request) wrote it between HEAD and PUT.
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => {
                return self.same_or_refuse(&location, &key, &digest).await;
            }
            Err(e) => return Err(e).with_context(|| format!("cannot upload {key}")),
        }
        self.verify_size(&location, key, size).await
    }

    /// An uncompressed segment: the object's bytes are the file's, so the file streams into
    /// one PUT and its SHA-256 (which the server checks the body against) is the digest.
    async fn archive_streamed(
        &self,
        path: &Path,
        key: &str,
        location: &ObjectPath,
    ) -> Result<Stored> {
        let (size, digest) = hash_file(path).await?;
        if self.exists(location).await? {
            return self.same_or_refuse(location, key, &digest).await;
        }
        let cred = self
            .s3
            .credentials()
            .get_credential()
            .await
            .context("cannot get the store's credentials")?;
        match self.put.put_file(key, path, size, &digest, &cred).await? {
            Put::Created => self.verify_size(location, key.to_string(), size).await,
            // Someone (or an earlier attempt) wrote it between HEAD and PUT.
            Put::Exists => self.same_or_refuse(location, key, &digest).await,
        }
    }

    /// The uploaded object must hold `size` bytes.
    async fn verify_size(&self, location: &ObjectPath, key: String, size: u64) -> Result<Stored> {
        let meta = self
            .s3
            .head(location)
            .await
            .with_context(|| format!("cannot check the uploaded {key}"))?;
        if meta.size != size {
            bail!("{key} holds {} bytes after the upload of {size}", meta.size);
        }
        Ok(Stored::Uploaded { key, size })
    }

    async fn exists(&self, location: &ObjectPath) -> Result<bool> {
        match self.s3.head(location).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e).with_context(|| format!("cannot look for {location}")),
        }
    }

    /// An object is already at `key`: fine if it holds the same WAL, an error otherwise.
    async fn same_or_refuse(
        &self,
        location: &ObjectPath,
        key: &str,
        digest: &[u8],
    ) -> Result<Stored> {
        let body = self
            .s3
            .get(location)
            .await
            .with_context(|| format!("cannot read the existing {key}"))?
            .into_stream();
        let body = BodyReader::spawn(body);
        let c = self.compression;
        let theirs = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<u8>> {
            let mut hasher = HashWriter(Sha256::new());
            codec::decompress(c, body, &mut hasher)?;
            Ok(hasher.0.finalize().to_vec())
        })
        .await?;
        match theirs {
            Ok(theirs) if theirs == digest => Ok(Stored::AlreadyThere {
                key: key.to_string(),
            }),
            Ok(_) => bail!(
                "{key} is already in the store with other content; refusing to overwrite it \
                 (is another cluster archiving to the same destinationPath and serverName?)"
            ),
            Err(e) => bail!(
                "{key} is already in the store and cannot be read back as this WAL file \
                 ({e}); refusing to overwrite it"
            ),
        }
    }

    /// Fetches `wal` into `dest` as barman-cloud-wal-restore `--no-partial` would: Ok(None)
    /// when the store answered and holds no such file.
    pub async fn fetch(&self, wal: &str, dest: &Path) -> Result<Option<u64>> {
        let name = WalName::parse(wal)?;
        let Some((key, c)) = self.find(&name).await? else {
            return Ok(None);
        };
        let location = ObjectPath::from(key.as_str());
        let body = self
            .s3
            .get(&location)
            .await
            .with_context(|| format!("cannot download {key}"))?
            .into_stream();
        // Decompressed as it arrives: a download holds a few chunks, not the object.
        let body = BodyReader::spawn(body);
        let dest = dest.to_path_buf();
        let n = tokio::task::spawn_blocking(move || write_decompressed(c, body, &dest))
            .await?
            .with_context(|| format!("cannot unpack {key}"))?;
        Ok(Some(n))
    }

    /// barman-cloud-check-wal-archive's check before the first archive: the server folder
    /// must hold no WAL of `timeline` or a later one (another cluster's, or an older life
    /// of this one that a new serverName should keep apart).
    pub async fn check_usable(&self, timeline: u32) -> Result<()> {
        let folder = format!("{}{}/wals/", self.dest.prefix, self.server);
        let listing = self
            .s3
            .list_with_delimiter(Some(&ObjectPath::from(folder.as_str())))
            .await
            .with_context(|| format!("cannot list {folder} in the store"))?;
        // Segment folders are `TTTTTTTTLLLLLLLL`; history files sit beside them.
        let dirs = listing.common_prefixes.iter().filter_map(|p| p.filename());
        let files = listing.objects.iter().filter_map(|o| o.location.filename());
        let newer = dirs
            .chain(files)
            .filter_map(|n| n.get(..8).and_then(|t| u32::from_str_radix(t, 16).ok()))
            .filter(|t| *t >= timeline)
            .count();
        if newer > 0 {
            bail!(
                "{folder} already holds {newer} WAL folder(s) or history file(s) of timeline \
                 {timeline} or later: another cluster archives there, or an earlier one did \
                 (use a new serverName)"
            );
        }
        Ok(())
    }

    /// Whether the store holds WAL file `wal` under any compression (barman's or ours).
    pub async fn holds(&self, wal: &str) -> Result<bool> {
        Ok(self.find(&WalName::parse(wal)?).await?.is_some())
    }

    /// The object holding `wal` in its folder, and its compression (by its suffix).
    async fn find(&self, wal: &WalName) -> Result<Option<(String, Option<WalCompression>)>> {
        let folder = wal.folder(&self.dest, &self.server);
        let prefix = ObjectPath::from(folder.as_str());
        let listing = self
            .s3
            .list_with_delimiter(Some(&prefix))
            .await
            .with_context(|| format!("cannot list {folder} in the store"))?;
        let mut found: Vec<(String, Option<WalCompression>)> = listing
            .objects
            .into_iter()
            .filter_map(|o| {
                let file = o.location.filename()?.to_string();
                compression_of(&file, wal.as_str()).map(|c| (o.location.to_string(), c))
            })
            .collect();
        // barman takes the first in name order: the plain file before any compressed one.
        found.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(found.into_iter().next())
    }
}

/// The client barman would make: endpoint, path-style addressing, CA, SSE, credentials.
fn builder(
    s: &ArchiveSettings,
    dest: &Destination,
    sse: Option<&Sse>,
    var: impl Fn(&str) -> Option<String>,
) -> Result<AmazonS3Builder> {
    let mut b = AmazonS3Builder::new()
        .with_bucket_name(&dest.bucket)
        .with_region(var(env::REGION).unwrap_or_else(|| "us-east-1".into()))
        // The server verifies the body against this header: a corrupted upload is refused.
        .with_checksum_algorithm(Checksum::SHA256)
        // Few retries inside one call: the archiver's next round, PostgreSQL's next
        // archive_command and restore_command's own budget retry after this one gives up.
        .with_retry(RetryConfig {
            backoff: BackoffConfig::default(),
            max_retries: 2,
            retry_timeout: Duration::from_secs(10),
        });
    if let Some(id) = var(env::ACCESS_KEY_ID) {
        b = b.with_access_key_id(id);
    }
    if let Some(secret) = var(env::SECRET_ACCESS_KEY) {
        b = b.with_secret_access_key(secret);
    }
    if let Some(token) = var(env::SESSION_TOKEN) {
        b = b.with_token(token);
    }
    let mut client = ClientOptions::new()
        .with_connect_timeout(Duration::from_secs(10))
        .with_timeout(Duration::from_secs(120));
    if let Some(url) = &s.endpoint_url {
        // As barman's `--addressing-style path`: S3-compatible servers answer it without DNS.
        b = b
            .with_endpoint(url)
            .with_virtual_hosted_style_request(false);
        client = client.with_allow_http(url.starts_with("http://"));
    }
    if let Some(ca) = &s.endpoint_ca_file {
        for cert in ca_bundle(Path::new(ca))? {
            client = client.with_root_certificate(cert);
        }
    }
    b = b.with_client_options(client);
    // The key's enum is not exported by object_store 0.12; its configuration name is.
    let sse_key: AmazonS3ConfigKey = "aws_server_side_encryption".parse()?;
    match sse {
        None => {}
        Some(Sse::Aes256) => b = b.with_config(sse_key, "AES256"),
        // Without a key id the bucket's default KMS key is used, as with barman's `-e aws:kms`.
        Some(Sse::Kms { key_id: None }) => b = b.with_config(sse_key, "aws:kms"),
        Some(Sse::Kms { key_id: Some(id) }) => b = b.with_sse_kms_encryption(id),
    }
    Ok(b)
}

fn ca_bundle(path: &Path) -> Result<Vec<Certificate>> {
    let pem = std::fs::read(path)
        .with_context(|| format!("cannot read endpointCAFile {}", path.display()))?;
    let certs = Certificate::from_pem_bundle(&pem)
        .with_context(|| format!("endpointCAFile {} is not a PEM bundle", path.display()))?;
    if certs.is_empty() {
        bail!("endpointCAFile {} holds no certificate", path.display());
    }
    Ok(certs)
}

/// The endpoint's CA bundle for the streamed PUT's client.
fn reqwest_roots(path: &Path) -> Result<Vec<reqwest::Certificate>> {
    let pem = std::fs::read(path)
        .with_context(|| format!("cannot read endpointCAFile {}", path.display()))?;
    reqwest::Certificate::from_pem_bundle(&pem)
        .with_context(|| format!("endpointCAFile {} is not a PEM bundle", path.display()))
}

/// The size and SHA-256 of the file at `path`, read in a blocking thread on a core's turn.
async fn hash_file(path: &Path) -> Result<(u64, Vec<u8>)> {
    let path = path.to_path_buf();
    let _cpu = stream::cpu_slot().await;
    tokio::task::spawn_blocking(move || {
        let file = std::fs::File::open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        let mut reader = HashReader(std::io::BufReader::with_capacity(BUF, file), Sha256::new());
        let n = std::io::copy(&mut reader, &mut std::io::sink())
            .with_context(|| format!("cannot read {}", path.display()))?;
        anyhow::Ok((n, reader.1.finalize().to_vec()))
    })
    .await?
}

/// The WAL name of a path PostgreSQL passes as `%p`.
pub fn wal_name_of(path: &Path) -> Result<WalName> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("not a WAL file path: {}", path.display()))?;
    WalName::parse(name)
}

/// The file at `path`, compressed, the SHA-256 of its content, and the share of the upload
/// memory its payload holds. Compression waits for a core, and the whole read for a
/// segment's worth of the budget: at most [`stream::UPLOAD_MEMORY`] of payloads exist.
async fn read_compressed(
    c: Option<WalCompression>,
    path: &Path,
) -> Result<(PutPayload, Vec<u8>, stream::Held)> {
    let path = path.to_path_buf();
    let len = tokio::fs::metadata(&path)
        .await
        .with_context(|| format!("cannot open {}", path.display()))?
        .len();
    let mut held = stream::hold(len).await;
    let _cpu = stream::cpu_slot().await;
    let (payload, digest) = tokio::task::spawn_blocking(move || {
        let file = std::fs::File::open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        let mut reader = HashReader(std::io::BufReader::with_capacity(BUF, file), Sha256::new());
        let mut out = stream::PayloadWriter::new();
        let n = codec::compress(c, &mut reader, Some(len), &mut out)
            .with_context(|| format!("cannot read and compress {}", path.display()))?;
        if n != len {
            bail!(
                "{} changed size while being read ({len} → {n})",
                path.display()
            );
        }
        anyhow::Ok((out.freeze(), reader.1.finalize().to_vec()))
    })
    .await??;
    held.shrink_to(payload.content_length());
    Ok((payload, digest, held))
}

/// Decompresses `body` into `dest` through a temporary file, so that PostgreSQL never sees
/// a torn segment under its name.
fn write_decompressed(c: Option<WalCompression>, body: impl Read, dest: &PathBuf) -> Result<u64> {
    let mut tmp = dest.clone().into_os_string();
    tmp.push(".pgwarden-tmp");
    let tmp = PathBuf::from(tmp);
    let file =
        std::fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    let mut out = std::io::BufWriter::with_capacity(BUF, file);
    let n = codec::decompress(c, body, &mut out)?;
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    std::fs::rename(&tmp, dest)
        .with_context(|| format!("cannot move {} to {}", tmp.display(), dest.display()))?;
    Ok(n)
}

/// Hashes what is read through it.
struct HashReader<R>(R, Sha256);

impl<R: Read> Read for HashReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.0.read(buf)?;
        self.1.update(&buf[..n]);
        Ok(n)
    }
}

/// Hashes what is written to it, and keeps nothing.
struct HashWriter(Sha256);

impl Write for HashWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
