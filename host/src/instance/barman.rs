//! The barman cloud commands: their arguments (pure functions of the decided settings), how
//! they are run, and what their failures mean.
//!
//! Credentials never appear here: barman reads them from the environment the pod got from
//! its Secret (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, ...). Whatever barman prints is
//! scrubbed of those values before it reaches a log line, a file or a status.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use pgwarden_crds::settings::{ArchiveSettings, BackupSettings, env};
use pgwarden_crds::{DataCompression, WalCompression};

/// Env: folder holding the `barman-cloud-*` commands (default: found on `PATH`).
pub const ENV_BARMAN_BIN: &str = "PGWARDEN_BARMAN_BIN";

/// Where the barman cloud commands are.
#[derive(Clone, Debug)]
pub struct Barman {
    bin: Option<PathBuf>,
}

impl Barman {
    /// The commands in `$PGWARDEN_BARMAN_BIN`, or on `PATH`.
    pub fn from_env() -> Self {
        Self {
            bin: std::env::var_os(ENV_BARMAN_BIN).map(PathBuf::from),
        }
    }

    /// The path of one command, e.g. `barman-cloud-wal-archive`.
    pub fn command_path(&self, name: &str) -> PathBuf {
        match &self.bin {
            Some(dir) => dir.join(name),
            None => PathBuf::from(name),
        }
    }

    /// A `Command` for `name args`, with the endpoint CA (if any) in the environment.
    pub fn command(&self, name: &str, settings: &ArchiveSettings, args: &[String]) -> Command {
        let mut cmd = Command::new(self.command_path(name));
        cmd.args(args).stdin(Stdio::null());
        if let Some(ca) = &settings.endpoint_ca_file {
            cmd.env("AWS_CA_BUNDLE", ca);
        }
        cmd
    }

    /// Runs a prepared command to its end; a non-zero exit becomes a [`BarmanError`].
    pub fn run(&self, name: &str, cmd: &mut Command) -> Result<Output, BarmanError> {
        let output = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| BarmanError::new(name, None, &format!("cannot start {name}: {e}")))?;
        if output.status.success() {
            return Ok(output);
        }
        let text = String::from_utf8_lossy(&output.stderr);
        Err(BarmanError::new(name, output.status.code(), &text))
    }
}

/// Arguments every command shares: provider, endpoint and addressing style.
fn store_args(s: &ArchiveSettings) -> Vec<String> {
    let mut args = vec!["--cloud-provider".into(), "aws-s3".into()];
    if let Some(url) = &s.endpoint_url {
        // S3-compatible servers answer path-style requests; virtual hosts need DNS.
        args.extend([
            "--endpoint-url".into(),
            url.clone(),
            "--addressing-style".into(),
            "path".into(),
        ]);
    }
    args
}

/// `-e` and, with `aws:kms`, the key's `--sse-kms-key-id` (barman refuses it otherwise).
fn encryption_args(s: Option<pgwarden_crds::Encryption>, key_id: Option<&str>) -> Vec<String> {
    let mut args: Vec<String> = s
        .map(|e| vec!["-e".into(), e.as_str().into()])
        .unwrap_or_default();
    if s == Some(pgwarden_crds::Encryption::AwsKms)
        && let Some(id) = key_id
    {
        args.extend(["--sse-kms-key-id".into(), id.into()]);
    }
    args
}

/// The barman flag of a WAL compression.
pub fn wal_compression_flag(c: WalCompression) -> &'static str {
    match c {
        WalCompression::Gzip => "--gzip",
        WalCompression::Bzip2 => "--bzip2",
        WalCompression::Snappy => "--snappy",
        WalCompression::Lz4 => "--lz4",
        WalCompression::Xz => "--xz",
        WalCompression::Zstd => "--zstd",
    }
}

fn data_compression_flag(c: DataCompression) -> &'static str {
    match c {
        DataCompression::Gzip => "--gzip",
        DataCompression::Bzip2 => "--bzip2",
        DataCompression::Snappy => "--snappy",
        DataCompression::Lz4 => "--lz4",
    }
}

/// `barman-cloud-wal-archive` arguments for one WAL file.
pub fn wal_archive_args(s: &ArchiveSettings, wal: &Path) -> Vec<String> {
    let mut args = store_args(s);
    args.extend(s.compression.map(|c| wal_compression_flag(c).to_string()));
    args.extend(encryption_args(s.encryption, s.sse_kms_key_id.as_deref()));
    args.extend([
        s.destination_path.clone(),
        s.server_name.clone(),
        wal.display().to_string(),
    ]);
    args
}

/// `barman-cloud-check-wal-archive` arguments: fails when WAL of `timeline` or later is there.
pub fn check_wal_archive_args(s: &ArchiveSettings, timeline: u32) -> Vec<String> {
    let mut args = store_args(s);
    args.extend(["--timeline".into(), timeline.to_string()]);
    args.extend([s.destination_path.clone(), s.server_name.clone()]);
    args
}

/// How barman-cloud-backup reaches PostgreSQL.
#[derive(Clone, Debug)]
pub struct PgConn {
    pub host: String,
    pub port: u16,
    pub user: String,
}

/// `barman-cloud-backup` arguments; `name` lets a restarted agent find the backup again.
pub fn backup_args(
    s: &ArchiveSettings,
    b: &BackupSettings,
    name: &str,
    pg: &PgConn,
) -> Vec<String> {
    let mut args = store_args(s);
    args.extend(b.compression.map(|c| data_compression_flag(c).to_string()));
    args.extend(encryption_args(b.encryption, b.sse_kms_key_id.as_deref()));
    args.extend(["-J".into(), b.jobs.max(1).to_string()]);
    if b.immediate_checkpoint {
        args.push("--immediate-checkpoint".into());
    }
    args.extend(["-n".into(), name.into()]);
    args.extend([
        "-h".into(),
        pg.host.clone(),
        "-p".into(),
        pg.port.to_string(),
        "-U".into(),
        pg.user.clone(),
    ]);
    args.extend([s.destination_path.clone(), s.server_name.clone()]);
    args
}

/// `barman-cloud-backup-show --format json` arguments (`id` may be a backup id or name).
pub fn backup_show_args(s: &ArchiveSettings, id: &str) -> Vec<String> {
    let mut args = store_args(s);
    args.extend(["--format".into(), "json".into()]);
    args.extend([s.destination_path.clone(), s.server_name.clone(), id.into()]);
    args
}

/// `barman-cloud-backup-list --format json` arguments.
pub fn backup_list_args(s: &ArchiveSettings) -> Vec<String> {
    let mut args = store_args(s);
    args.extend(["--format".into(), "json".into()]);
    args.extend([s.destination_path.clone(), s.server_name.clone()]);
    args
}

/// `barman-cloud-restore` arguments.
pub fn restore_args(s: &ArchiveSettings, backup_id: &str, pgdata: &Path) -> Vec<String> {
    let mut args = store_args(s);
    args.extend([
        s.destination_path.clone(),
        s.server_name.clone(),
        backup_id.into(),
        pgdata.display().to_string(),
    ]);
    args
}

/// `barman-cloud-wal-restore` arguments fetching `wal` into `dest` (run by
/// `pgwarden instance wal-restore`, PostgreSQL's restore_command). `--no-partial`: a segment
/// the store holds only as `.partial` is not there, as PostgreSQL means it. `--spool-dir`:
/// barman's default spool (`/var/tmp/walrestore`) is shared by every restore on the host,
/// and barman delivers any file of the asked name it finds there.
pub fn wal_restore_args(s: &ArchiveSettings, spool: &Path, wal: &str, dest: &Path) -> Vec<String> {
    let mut args = store_args(s);
    args.extend([
        "--no-partial".into(),
        "--spool-dir".into(),
        spool.display().to_string(),
        s.destination_path.clone(),
        s.server_name.clone(),
        wal.into(),
        dest.display().to_string(),
    ]);
    args
}

/// What `barman-cloud-backup-delete` deletes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Deletion {
    /// Every backup (and the WAL only it needs) outside the retention policy.
    Retention(String),
    /// One backup by id.
    BackupId(String),
}

/// `barman-cloud-backup-delete` arguments.
pub fn backup_delete_args(s: &ArchiveSettings, what: &Deletion) -> Vec<String> {
    let mut args = store_args(s);
    match what {
        Deletion::Retention(policy) => args.extend(["-r".into(), policy.clone()]),
        Deletion::BackupId(id) => args.extend(["-b".into(), id.clone()]),
    }
    args.extend([s.destination_path.clone(), s.server_name.clone()]);
    args
}

/// A retention policy as the Cluster spells it (`30d`, `4w`, `6m`) in barman's words.
pub fn retention_policy(spec: &str) -> Option<String> {
    let spec = spec.trim();
    let (num, unit) = spec.split_at(spec.find(|c: char| !c.is_ascii_digit())?);
    let n: u32 = num.parse().ok().filter(|n| *n > 0)?;
    let unit = match unit {
        "d" => "DAYS",
        "w" => "WEEKS",
        "m" => "MONTHS",
        _ => return None,
    };
    Some(format!("RECOVERY WINDOW OF {n} {unit}"))
}

/// Quotes a word for PostgreSQL's shell-run commands.
pub fn shell_quote(w: &str) -> String {
    if !w.is_empty()
        && w.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-%:=+@,".contains(c))
    {
        return w.to_string();
    }
    format!("'{}'", w.replace('\'', r"'\''"))
}

/// Why a barman command failed, in words a user can act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cause {
    /// The store refused the credentials (unknown key, bad secret, no permission).
    Credentials,
    /// The bucket does not exist.
    NoSuchBucket,
    /// The endpoint could not be reached.
    Unreachable,
    /// The WAL archive already holds WAL of this or a later timeline.
    ArchiveNotEmpty,
    /// Anything else; the detail says what barman said.
    Other,
}

impl Cause {
    /// The cause named by a store's answer (barman's output, or the native client's error).
    pub fn from_text(text: &str) -> Self {
        let has = |needles: &[&str]| needles.iter().any(|n| text.contains(n));
        // barman-cloud-check-wal-archive creates a missing bucket: a refused CreateBucket
        // means the bucket is not there, whatever the key may do.
        if has(&[
            "NoSuchBucket",
            "does not exist",
            "Not Found",
            "(404)",
            "CreateBucket operation",
        ]) {
            Cause::NoSuchBucket
        } else if has(&[
            "InvalidAccessKeyId",
            "SignatureDoesNotMatch",
            "AccessDenied",
            "Forbidden",
            "(403)",
            "Unable to locate credentials",
            "InvalidToken",
        ]) {
            Cause::Credentials
        } else if has(&[
            "Could not connect to the endpoint",
            "EndpointConnectionError",
            "Connection refused",
            "timed out",
        ]) {
            Cause::Unreachable
        } else if has(&[
            "WAL archive",
            "Expected empty archive",
            "WalArchiveContentError",
        ]) {
            Cause::ArchiveNotEmpty
        } else {
            Cause::Other
        }
    }

    /// One short phrase naming the cause.
    pub fn phrase(&self) -> &'static str {
        match self {
            Cause::Credentials => {
                "the object store refused the credentials (check the access key id and secret)"
            }
            Cause::NoSuchBucket => {
                "the bucket of destinationPath does not exist (and could not be created)"
            }
            Cause::Unreachable => "cannot reach the object store endpoint",
            Cause::ArchiveNotEmpty => {
                "the WAL archive already holds WAL of this timeline or a later one (another cluster archives there?)"
            }
            Cause::Other => "barman failed",
        }
    }
}

/// A failed barman command: what ran, its exit code, the cause and barman's own words,
/// scrubbed of secrets.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{command} failed: {}: {detail}", cause.phrase())]
pub struct BarmanError {
    pub command: String,
    pub exit_code: Option<i32>,
    pub cause: Cause,
    pub detail: String,
}

impl BarmanError {
    /// A failure of `command` from its exit code and error output.
    pub fn new(command: &str, exit_code: Option<i32>, stderr: &str) -> Self {
        let clean = scrub(stderr);
        Self {
            command: command.into(),
            exit_code,
            cause: Cause::from_text(&clean),
            detail: summary(&clean),
        }
    }
}

/// The last meaningful lines of barman's error output, at most 400 characters.
fn summary(text: &str) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let errors: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.contains("ERROR") || l.contains("Error"))
        .collect();
    let pick = if errors.is_empty() { lines } else { errors };
    let joined = pick
        .iter()
        .rev()
        .take(2)
        .rev()
        .copied()
        .collect::<Vec<_>>()
        .join(" | ");
    let joined = if joined.is_empty() {
        "no error output".to_string()
    } else {
        joined
    };
    joined.chars().take(400).collect()
}

/// `text` without the values of the credential environment variables. The access key ID is
/// scrubbed too: S3 servers echo it in their errors (`InvalidAccessKeyId`), and it comes from
/// the same Secret as the key.
pub fn scrub(text: &str) -> String {
    let secrets: Vec<String> = [
        env::ACCESS_KEY_ID,
        env::SECRET_ACCESS_KEY,
        env::SESSION_TOKEN,
    ]
    .iter()
    .filter_map(|k| std::env::var(k).ok())
    .filter(|v| v.len() >= 4)
    .collect();
    scrub_values(text, &secrets)
}

/// `text` with each of `secrets` replaced by `***`.
pub fn scrub_values(text: &str, secrets: &[String]) -> String {
    secrets
        .iter()
        .fold(text.to_string(), |t, s| t.replace(s.as_str(), "***"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> ArchiveSettings {
        ArchiveSettings {
            destination_path: "s3://bucket/path".into(),
            endpoint_url: Some("http://127.0.0.1:9000".into()),
            endpoint_ca_file: None,
            server_name: "pg-1".into(),
            compression: Some(WalCompression::Zstd),
            encryption: Some(pgwarden_crds::Encryption::Aes256),
            sse_kms_key_id: None,
            max_parallel: 4,
            archive_timeout_seconds: 60,
            archiver: Default::default(),
            standby_clone: Default::default(),
        }
    }

    #[test]
    fn wal_archive_args_carry_the_decided_settings_and_no_secret() {
        let args = wal_archive_args(&settings(), Path::new("pg_wal/000000010000000000000001"));
        assert_eq!(
            args.join(" "),
            "--cloud-provider aws-s3 --endpoint-url http://127.0.0.1:9000 --addressing-style path \
             --zstd -e AES256 s3://bucket/path pg-1 pg_wal/000000010000000000000001"
        );
    }

    #[test]
    fn a_kms_key_id_goes_with_aws_kms_only() {
        let mut s = settings();
        s.sse_kms_key_id = Some("alias/pg".into());
        let wal = Path::new("000000010000000000000001");
        assert!(!wal_archive_args(&s, wal).contains(&"--sse-kms-key-id".to_string()));
        s.encryption = Some(pgwarden_crds::Encryption::AwsKms);
        let args = wal_archive_args(&s, wal).join(" ");
        assert!(
            args.contains("-e aws:kms --sse-kms-key-id alias/pg s3://"),
            "{args}"
        );
    }

    #[test]
    fn backup_args_name_the_backup() {
        let b = BackupSettings {
            target_pod: "pg-1".into(),
            compression: Some(DataCompression::Snappy),
            encryption: None,
            sse_kms_key_id: None,
            jobs: 2,
            immediate_checkpoint: true,
        };
        let pg = PgConn {
            host: "/tmp".into(),
            port: 5432,
            user: "postgres".into(),
        };
        let args = backup_args(&settings(), &b, "uid-1", &pg).join(" ");
        assert!(args.contains("--snappy -J 2 --immediate-checkpoint -n uid-1 -h /tmp -p 5432 -U postgres s3://bucket/path pg-1"), "{args}");
    }

    #[test]
    fn retention_policies_become_recovery_windows() {
        assert_eq!(
            retention_policy("30d").as_deref(),
            Some("RECOVERY WINDOW OF 30 DAYS")
        );
        assert_eq!(
            retention_policy("4w").as_deref(),
            Some("RECOVERY WINDOW OF 4 WEEKS")
        );
        assert_eq!(
            retention_policy("6m").as_deref(),
            Some("RECOVERY WINDOW OF 6 MONTHS")
        );
        assert_eq!(retention_policy("0d"), None);
        assert_eq!(retention_policy("3y"), None);
    }

    #[test]
    fn wal_restore_args_read_the_store_as_written_without_partial_segments() {
        let mut s = settings();
        s.destination_path = "s3://bucket/pg%f".into();
        let args = wal_restore_args(
            &s,
            Path::new("/data/pgwarden/wal-restore-spool"),
            "00000002.history",
            Path::new("pg_wal/RECOVERYHISTORY"),
        );
        assert_eq!(
            args.join(" "),
            "--cloud-provider aws-s3 --endpoint-url http://127.0.0.1:9000 --addressing-style path \
             --no-partial --spool-dir /data/pgwarden/wal-restore-spool s3://bucket/pg%f pg-1 \
             00000002.history pg_wal/RECOVERYHISTORY"
        );
    }

    #[test]
    fn failures_name_their_cause_without_the_secret() {
        let err = "ERROR: Barman cloud WAL archiver exception: An error occurred (InvalidAccessKeyId) \
                   when calling the PutObject operation: key s3cr3tvalue";
        let e = BarmanError {
            command: "barman-cloud-wal-archive".into(),
            exit_code: Some(1),
            cause: Cause::from_text(err),
            detail: summary(&scrub_values(err, &["s3cr3tvalue".into()])),
        };
        assert_eq!(e.cause, Cause::Credentials);
        let shown = e.to_string();
        assert!(
            shown.contains("refused the credentials") && !shown.contains("s3cr3tvalue"),
            "{shown}"
        );
        assert_eq!(
            Cause::from_text("Could not connect to the endpoint URL"),
            Cause::Unreachable
        );
        assert_eq!(
            Cause::from_text("An error occurred (NoSuchBucket)"),
            Cause::NoSuchBucket
        );
    }
}
