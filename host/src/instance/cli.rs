//! `pgwarden instance run|wal-archive|wal-restore|backup|delete-backups`.
//!
//! Every option has an environment variable, so the pod template sets the same values the
//! local tests pass on the command line. No option carries a secret: the store credentials
//! are read by barman from `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use pgwarden_crds::RecoveryTarget;
use pgwarden_crds::settings::{ARCHIVE_SETTINGS_KEY, BackupSettings, pod};

use super::agent::{self, RestoreOptions, RunOptions};
use super::archive::{self, Archived};
use super::barman::{self, Barman, Deletion, PgConn};
use super::facts;
use super::layout::{self, Layout};
use super::report::Reporter;
use super::walrestore;

/// The in-pod instance agent.
#[derive(Args, Debug)]
pub struct InstanceArgs {
    #[command(subcommand)]
    command: InstanceCommand,
}

#[derive(Subcommand, Debug)]
enum InstanceCommand {
    /// Bootstrap (initdb or restore), run and supervise PostgreSQL, report archive facts.
    Run(Box<RunArgs>),
    /// PostgreSQL's archive_command: archive one WAL file (and more `.ready` ones ahead).
    WalArchive {
        /// The WAL file, as PostgreSQL's `%p` (relative to PGDATA).
        path: PathBuf,
    },
    /// PostgreSQL's restore_command: fetch one WAL file from the store. Exits 1 only when the
    /// store says the file is not there; store errors are retried, then it exits 200 so that
    /// PostgreSQL stops recovery instead of ending it.
    WalRestore(WalRestoreArgs),
    /// Take (or find, if already taken) the base backup for a Backup object.
    Backup(BackupArgs),
    /// Delete backups from the store: by retention policy or by id.
    DeleteBackups(DeleteArgs),
    /// The readiness probe: exits 0 only when PostgreSQL accepts connections and writes (out
    /// of recovery), so a restoring instance is not Ready before it has replayed every WAL;
    /// or, for a standby (standby.signal), when it streams from the primary.
    Ready(ReadyArgs),
    /// The liveness probe: exits 0 while the agent's main loop turns (its beat is recent, or
    /// the loop has not started yet: initdb, a clone, a restore); 1 when it is stuck, so the
    /// kubelet restarts the container and the agent rejoins as whatever it is to be.
    Alive(AliveArgs),
}

#[derive(Args, Debug)]
struct AliveArgs {
    /// The data directory (its agent's state folder holds the beat).
    #[arg(long, env = pod::ENV_PGDATA, default_value = pod::PGDATA)]
    pgdata: PathBuf,
}

#[derive(Args, Debug)]
struct ReadyArgs {
    #[command(flatten)]
    common: Common,
    /// PostgreSQL's bin folder.
    #[arg(long, env = super::postgres::ENV_PG_BIN, default_value = "/usr/lib/postgresql/15/bin")]
    pg_bin: PathBuf,
}

#[derive(Args, Debug)]
struct Common {
    /// The data directory.
    #[arg(long, env = pod::ENV_PGDATA, default_value = pod::PGDATA)]
    pgdata: PathBuf,
    /// Folder of the mounted settings (holds archive.json).
    #[arg(long, env = pod::ENV_SETTINGS_DIR, default_value = pgwarden_crds::settings::SETTINGS_MOUNT_PATH)]
    settings_dir: PathBuf,
    /// Namespace of the pod: status reports go to objects there (needs a kube client).
    #[arg(long, env = pod::ENV_NAMESPACE)]
    namespace: Option<String>,
    /// Name of this pod.
    #[arg(long, env = pod::ENV_POD_NAME)]
    pod_name: Option<String>,
    /// PostgreSQL's port.
    #[arg(long, env = "PGWARDEN_PORT", default_value_t = pod::PORT as u16)]
    port: u16,
    /// Folder of PostgreSQL's unix socket.
    #[arg(long, env = "PGWARDEN_SOCKET_DIR", default_value = "/tmp")]
    socket_dir: PathBuf,
}

#[derive(Args, Debug)]
struct RunArgs {
    #[command(flatten)]
    common: Common,
    /// PostgreSQL's bin folder.
    #[arg(long, env = super::postgres::ENV_PG_BIN, default_value = "/usr/lib/postgresql/15/bin")]
    pg_bin: PathBuf,
    /// The Cluster this instance belongs to (its status gets the archive facts).
    #[arg(long, env = pod::ENV_CLUSTER)]
    cluster: Option<String>,
    /// PostgreSQL's listen_addresses.
    #[arg(long, env = "PGWARDEN_LISTEN_ADDRESSES", default_value = "*")]
    listen_addresses: String,
    /// A PostgreSQL parameter `name=value` (repeatable): the Cluster's postgresql.parameters.
    #[arg(long = "parameter", value_parser = parse_parameter)]
    parameters: Vec<(String, String)>,
    /// Seconds between two reports of the archive facts.
    #[arg(long, env = "PGWARDEN_REPORT_INTERVAL", default_value_t = 10)]
    report_interval: u64,
    /// Bootstrap an empty PGDATA from this backup (id, name or `latest`) instead of initdb.
    #[arg(long)]
    restore_backup: Option<String>,
    /// Archive settings (JSON) of the store to restore from. Default: archive.json.
    #[arg(long, requires = "restore_backup")]
    restore_source: Option<PathBuf>,
    /// Stop recovery at this time (RFC 3339).
    #[arg(long, requires = "restore_backup")]
    target_time: Option<String>,
    /// Stop recovery at this LSN.
    #[arg(long, requires = "restore_backup")]
    target_lsn: Option<String>,
    /// Stop recovery at this transaction id.
    #[arg(long, requires = "restore_backup")]
    target_xid: Option<String>,
    /// Stop recovery at this restore point.
    #[arg(long, requires = "restore_backup")]
    target_name: Option<String>,
    /// Stop recovery as soon as the backup is consistent.
    #[arg(long, requires = "restore_backup")]
    target_immediate: bool,
    /// Stop just before the target instead of just after it.
    #[arg(long, requires = "restore_backup")]
    target_exclusive: bool,
    /// Benchmarks only: use this archive_command instead of `pgwarden instance wal-archive`.
    #[arg(long, hide = true)]
    archive_command: Option<String>,
}

#[derive(Args, Debug)]
struct WalRestoreArgs {
    /// Archive settings (JSON) of the store to read (the restore source). Default:
    /// archive.json in the settings folder.
    #[arg(long)]
    source: Option<PathBuf>,
    /// A standby's restore_command: a store error answers "not here" at once (PostgreSQL
    /// streams from the primary meanwhile and asks again) rather than stopping recovery.
    #[arg(long)]
    standby: bool,
    /// The file PostgreSQL asks for (`%f`).
    wal: String,
    /// Where PostgreSQL wants it (`%p`, relative to PGDATA).
    dest: PathBuf,
}

#[derive(Args, Debug)]
struct BackupArgs {
    #[command(flatten)]
    common: Common,
    /// The backup's name in the store: the Backup object's uid (stable across restarts).
    #[arg(long)]
    name: String,
    /// The Backup object to report to (default: no report).
    #[arg(long)]
    backup: Option<String>,
    /// The decided backup settings (JSON). Default: backup.json in the settings folder,
    /// else gzip-less, 2 jobs, immediate checkpoint.
    #[arg(long)]
    settings: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct DeleteArgs {
    #[command(flatten)]
    common: Common,
    /// Retention policy as the Cluster spells it: `30d`, `4w`, `6m`.
    #[arg(
        long,
        conflicts_with = "backup_id",
        required_unless_present = "backup_id"
    )]
    retention: Option<String>,
    /// Delete one backup by barman id.
    #[arg(long)]
    backup_id: Option<String>,
}

fn parse_parameter(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("expected name=value, got {s}"))?;
    Ok((k.trim().to_string(), v.to_string()))
}

/// Runs an instance sub-command; errors are scrubbed of secrets before they are shown.
pub fn run(args: InstanceArgs) -> Result<()> {
    let result = match args.command {
        InstanceCommand::Run(a) => run_agent(*a),
        InstanceCommand::WalArchive { path } => wal_archive(path),
        InstanceCommand::WalRestore(a) => wal_restore(a),
        InstanceCommand::Backup(a) => backup(a),
        InstanceCommand::DeleteBackups(a) => delete(a),
        InstanceCommand::Ready(a) => ready(a),
        InstanceCommand::Alive(a) => super::alive::check(&a.pgdata),
    };
    result.map_err(|e| anyhow::anyhow!(barman::scrub(&format!("{e:#}"))))
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start tokio")
}

fn run_agent(a: RunArgs) -> Result<()> {
    let target = RecoveryTarget {
        target_time: a.target_time,
        target_lsn: a.target_lsn,
        target_xid: a.target_xid,
        target_name: a.target_name,
        target_immediate: a.target_immediate.then_some(true),
        exclusive: a.target_exclusive.then_some(true),
    };
    let opts = RunOptions {
        pgdata: a.common.pgdata,
        pg_bin: a.pg_bin,
        port: a.common.port,
        listen_addresses: a.listen_addresses,
        socket_dir: a.common.socket_dir,
        settings_dir: a.common.settings_dir,
        cluster: a.cluster,
        pod_name: a.common.pod_name,
        namespace: a.common.namespace,
        parameters: a.parameters,
        report_interval: Duration::from_secs(a.report_interval.max(1)),
        archive_command: a.archive_command,
        restore: a.restore_backup.map(|backup_id| RestoreOptions {
            backup_id,
            source: a.restore_source,
            target: (target != RecoveryTarget::default()).then_some(target),
        }),
    };
    runtime()?.block_on(agent::run(opts))
}

fn wal_archive(path: PathBuf) -> Result<()> {
    let layout = Layout::from_env()?;
    match archive::wal_archive(&layout, &layout::settings_dir(), &path)? {
        Archived::AlreadyInStore => {}
        Archived::Now { ahead } if !ahead.is_empty() => {
            eprintln!(
                "pgwarden: archived {} and {} more ahead",
                path.display(),
                ahead.len()
            );
        }
        Archived::Now { .. } => {}
    }
    Ok(())
}

/// Exits with the status PostgreSQL reads, never returns: an error or a panic stops recovery
/// too (a Rust panic's own status, 101, would read as "not in the archive").
fn wal_restore(a: WalRestoreArgs) -> ! {
    let code = std::panic::catch_unwind(|| {
        // PostgreSQL runs the restore_command in PGDATA.
        let layout = Layout::from_env()
            .unwrap_or_else(|_| Layout::new(&std::env::current_dir().unwrap_or_default()));
        let source = a
            .source
            .clone()
            .unwrap_or_else(|| layout::settings_dir().join(ARCHIVE_SETTINGS_KEY));
        walrestore::wal_restore(&layout, &source, &a.wal, &a.dest, a.standby)
    })
    .unwrap_or(walrestore::ABORT_RECOVERY);
    std::process::exit(code)
}

fn backup(a: BackupArgs) -> Result<()> {
    let layout = Layout::new(&a.common.pgdata);
    let archive = layout::read_archive_settings(&a.common.settings_dir)?;
    let default_file = a.common.settings_dir.join("backup.json");
    let settings: BackupSettings = match (&a.settings, default_file.exists()) {
        (Some(file), _) => layout::read_json(file)?,
        (None, true) => layout::read_json(&default_file)?,
        (None, false) => BackupSettings {
            target_pod: a.common.pod_name.clone().unwrap_or_default(),
            compression: None,
            encryption: None,
            sse_kms_key_id: None,
            jobs: 2,
            immediate_checkpoint: true,
        },
    };
    let pg = PgConn {
        host: a.common.socket_dir.display().to_string(),
        port: a.common.port,
        user: "postgres".into(),
    };
    let facts = super::backup::backup(
        &layout,
        &archive,
        &settings,
        &a.name,
        &pg,
        a.common.pod_name.clone(),
    )?;
    println!("{}", serde_json::to_string_pretty(&facts)?);
    if let (Some(object), Some(_)) = (&a.backup, &a.common.namespace) {
        let patch = facts::backup_status_patch(object, &facts);
        runtime()?.block_on(async {
            let reporter = Reporter::connect(a.common.namespace.clone()).await;
            reporter
                .apply_status("Backup", "backups", object, &patch)
                .await
        })?;
    }
    if facts.state != Some(pgwarden_crds::BackupAgentState::Succeeded) {
        bail!(
            "backup {} failed: {}",
            a.name,
            facts.error.as_deref().unwrap_or("unknown error")
        );
    }
    Ok(())
}

fn delete(a: DeleteArgs) -> Result<()> {
    let archive = layout::read_archive_settings(&a.common.settings_dir)?;
    let what = match (a.retention, a.backup_id) {
        (Some(r), _) => Deletion::Retention(
            barman::retention_policy(&r)
                .with_context(|| format!("retention policy {r} is not like 30d, 4w or 6m"))?,
        ),
        (None, Some(id)) => Deletion::BackupId(id),
        (None, None) => bail!("give --retention or --backup-id"),
    };
    let b = Barman::from_env();
    let args = barman::backup_delete_args(&archive, &what);
    let mut cmd = b.command("barman-cloud-backup-delete", &archive, &args);
    b.run("barman-cloud-backup-delete", &mut cmd)?;
    Ok(())
}

/// Ready = PostgreSQL answers and is out of recovery. `pg_isready` alone says yes as soon as a
/// restore is consistent, long before the last WAL file is replayed.
fn ready(a: ReadyArgs) -> Result<()> {
    let pg = super::postgres::Postgres {
        bin: a.pg_bin,
        pgdata: a.common.pgdata,
        port: a.common.port,
        socket_dir: a.common.socket_dir,
        run_as: super::postgres::RunAs::detect()?,
    };
    match pg.query("SELECT pg_is_in_recovery()")?.as_str() {
        "f" => Ok(()),
        // A streaming standby is ready for reads (the `-r` Service); a restore is not.
        "t" if pg.pgdata.join("standby.signal").exists() => match super::standby::streaming(&pg)? {
            true => Ok(()),
            false => bail!("standby not streaming from the primary yet"),
        },
        "t" => bail!("PostgreSQL is in recovery: not ready for writes yet"),
        other => bail!("unexpected answer to pg_is_in_recovery(): {other}"),
    }
}
