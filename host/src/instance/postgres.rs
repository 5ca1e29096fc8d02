//! PostgreSQL: initdb, the configuration the agent owns, starting, querying, stopping.
//!
//! PostgreSQL refuses to run as root: when the agent runs as root it runs PostgreSQL (and
//! barman commands that read PGDATA) as the `postgres` user, keeping the environment so the
//! archive command sees the settings folder and the store credentials.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use pgwarden_crds::RecoveryTarget;

use super::barman::shell_quote;

/// Env: PostgreSQL's `bin` folder.
pub const ENV_PG_BIN: &str = "PGWARDEN_PG_BIN";
/// The configuration file the agent writes (included from postgresql.conf).
pub const CONF_FILE: &str = "postgresql.pgwarden.conf";

/// The user PostgreSQL runs as: `None` = the agent's own user.
#[derive(Clone, Copy, Debug)]
pub struct RunAs(Option<(u32, u32)>);

impl RunAs {
    /// `postgres` when the agent is root, else the agent's own user.
    pub fn detect() -> Result<Self> {
        if !nix::unistd::geteuid().is_root() {
            return Ok(RunAs(None));
        }
        let user = nix::unistd::User::from_name("postgres")?
            .context("running as root needs a `postgres` user to run PostgreSQL as")?;
        Ok(RunAs(Some((user.uid.as_raw(), user.gid.as_raw()))))
    }

    /// The agent's own user (tests: no switch, no chown).
    pub fn current() -> Self {
        RunAs(None)
    }

    /// Applies the user to a command about to be spawned.
    pub fn apply<'a>(&self, cmd: &'a mut Command) -> &'a mut Command {
        if let Some((uid, gid)) = self.0 {
            cmd.uid(uid).gid(gid);
        }
        cmd
    }

    /// Gives a path (and what is inside, when `recursive`) to the user.
    pub fn own(&self, path: &Path, recursive: bool) -> Result<()> {
        let Some((uid, gid)) = self.0 else {
            return Ok(());
        };
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .with_context(|| format!("cannot chown {}", path.display()))?;
        if recursive && path.is_dir() {
            for entry in std::fs::read_dir(path)? {
                let p = entry?.path();
                if !p.is_symlink() {
                    self.own(&p, true)?;
                }
            }
        }
        Ok(())
    }
}

/// How to reach and run one PostgreSQL instance.
#[derive(Clone, Debug)]
pub struct Postgres {
    pub bin: PathBuf,
    pub pgdata: PathBuf,
    pub port: u16,
    pub socket_dir: PathBuf,
    pub run_as: RunAs,
}

impl Postgres {
    fn tool(&self, name: &str) -> Command {
        let mut cmd = Command::new(self.bin.join(name));
        self.run_as.apply(&mut cmd);
        cmd.stdin(Stdio::null());
        cmd
    }

    /// Creates a new database cluster in PGDATA.
    pub fn initdb(&self) -> Result<()> {
        std::fs::create_dir_all(&self.pgdata)?;
        self.run_as.own(&self.pgdata, false)?;
        let out = self
            .tool("initdb")
            .arg("-D")
            .arg(&self.pgdata)
            .args([
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--no-sync",
            ])
            .output()
            .context("cannot run initdb")?;
        if !out.status.success() {
            bail!(
                "initdb failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// Writes the agent's configuration file and includes it from postgresql.conf.
    pub fn write_config(&self, conf: &str) -> Result<()> {
        let path = self.pgdata.join(CONF_FILE);
        std::fs::write(&path, conf).with_context(|| format!("cannot write {}", path.display()))?;
        self.run_as.own(&path, false)?;
        let main = self.pgdata.join("postgresql.conf");
        let text = std::fs::read_to_string(&main).unwrap_or_default();
        let include = format!("include_if_exists = '{CONF_FILE}'");
        if !text.lines().any(|l| l.trim() == include) {
            std::fs::write(
                &main,
                format!("{text}\n# Written by pgwarden: the agent's settings win.\n{include}\n"),
            )?;
            self.run_as.own(&main, false)?;
        }
        Ok(())
    }

    /// Starts the postmaster as a child process that quits (immediate shutdown) when the agent
    /// dies, even by SIGKILL: no orphaned PostgreSQL holds PGDATA after the agent is gone.
    pub fn spawn(&self) -> Result<std::process::Child> {
        std::fs::create_dir_all(&self.socket_dir)?;
        self.run_as.own(&self.socket_dir, false)?;
        self.wait_previous_postmaster(Duration::from_secs(30))?;
        let mut cmd = self.tool("postgres");
        cmd.arg("-D").arg(&self.pgdata);
        quit_with_parent(&mut cmd);
        spawn_from_lasting_thread(cmd).context("cannot start postgres")
    }

    /// A postmaster of an earlier agent (killed) may still be shutting down: wait for it to
    /// release PGDATA rather than fail on PostgreSQL's lock file.
    fn wait_previous_postmaster(&self, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        while let Some(pid) = live_postmaster(&self.pgdata) {
            if start.elapsed() > timeout {
                bail!(
                    "PostgreSQL (pid {pid}) from an earlier run still holds {}; stop it first",
                    self.pgdata.display()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(())
    }

    /// psql as the `postgres` user on this instance's socket, no psqlrc, stopping at the first
    /// error: what every query shares.
    fn psql(&self) -> Command {
        let mut cmd = Command::new(self.bin.join("psql"));
        cmd.args([
            "-X",
            "-v",
            "ON_ERROR_STOP=1",
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-h",
        ])
        .arg(&self.socket_dir)
        .args(["-p", &self.port.to_string()]);
        cmd
    }

    /// Runs one query through psql and returns its unaligned, tuples-only output.
    pub fn query(&self, sql: &str) -> Result<String> {
        let out = self
            .psql()
            .args(["-A", "-t", "-c", sql])
            .stdin(Stdio::null())
            .output()
            .context("cannot run psql")?;
        if !out.status.success() {
            bail!(
                "psql failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Runs SQL read from psql's stdin (a value that must not appear on a command line, which
    /// any user sees in `ps`).
    pub fn query_stdin(&self, sql: &str) -> Result<()> {
        use std::io::Write;
        let mut child = self
            .psql()
            .args(["-q", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot run psql")?;
        let written = child.stdin.take().map(|mut i| i.write_all(sql.as_bytes()));
        let out = child.wait_with_output().context("cannot run psql")?;
        written.transpose().context("cannot write to psql")?;
        if !out.status.success() {
            bail!(
                "psql failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// Writes `pg_hba.conf`: the socket trusted (the agent, the probes and barman run in the
    /// pod), passwords from the loopback, and replication for the replication user only
    /// (initdb's file lets any user replicate from the loopback).
    pub fn write_hba(&self) -> Result<()> {
        let path = self.pgdata.join("pg_hba.conf");
        std::fs::write(&path, hba(pgwarden_sdk::names::REPLICATION_USER))
            .with_context(|| format!("cannot write {}", path.display()))?;
        self.run_as.own(&path, false)
    }

    /// Writes the configuration, starts the postmaster and waits until it answers queries.
    pub fn start(&self, conf: &PgConfig) -> Result<std::process::Child> {
        self.write_config(&conf.render())?;
        self.write_hba()?;
        let mut child = self.spawn()?;
        if let Err(e) = self.wait_ready(&mut child) {
            let _ = child.kill();
            return Err(e);
        }
        Ok(child)
    }

    /// Waits until PostgreSQL answers queries, for as long as the postmaster runs (crash
    /// recovery before it answers takes as long as the WAL to replay); fails at once if the
    /// postmaster exits.
    pub fn wait_ready(&self, child: &mut std::process::Child) -> Result<()> {
        let mut progress = Progress::new("not answering yet");
        loop {
            if let Some(status) = child.try_wait()? {
                bail!("postgres exited during start-up ({status}); see its log above");
            }
            if self.query("SELECT 1").is_ok() {
                return Ok(());
            }
            progress.tell();
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until recovery has ended and the instance is promoted, or the postmaster exits.
    /// No timeout: until it is consistent PostgreSQL refuses connections for as long as the
    /// replay takes, and a replay that goes on is a restore that goes on.
    pub fn wait_promoted(&self, child: &mut std::process::Child) -> Result<RecoveryEnd> {
        let mut progress = Progress::new("in recovery");
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(RecoveryEnd::Exited(status));
            }
            if self.query("SELECT pg_is_in_recovery()").ok().as_deref() == Some("f") {
                return Ok(RecoveryEnd::Promoted);
            }
            progress.tell();
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

/// The text of `pg_hba.conf`, `replication_user` the only one allowed to replicate (and to
/// reach database `postgres` from another pod: `pg_rewind` of a former primary reads files
/// through functions granted to it alone).
fn hba(replication_user: &str) -> String {
    format!(
        "# Written by `pgwarden instance run` on every start: do not edit.\n\
         local   all          all                      trust\n\
         host    all          all          127.0.0.1/32  scram-sha-256\n\
         host    all          all          ::1/128       scram-sha-256\n\
         host    replication  {replication_user}  all  scram-sha-256\n\
         host    postgres     {replication_user}  all  scram-sha-256\n"
    )
}

/// How a wait for the end of recovery ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecoveryEnd {
    Promoted,
    /// The postmaster exited while in recovery (e.g. the restore_command stopped recovery).
    Exited(std::process::ExitStatus),
}

/// A line in the log every minute of a long wait, so that a long replay is seen to go on.
struct Progress {
    what: &'static str,
    start: Instant,
    told: Duration,
}

impl Progress {
    const EVERY: Duration = Duration::from_secs(60);

    fn new(what: &'static str) -> Self {
        Self {
            what,
            start: Instant::now(),
            told: Duration::ZERO,
        }
    }

    fn tell(&mut self) {
        let elapsed = self.start.elapsed();
        if elapsed >= self.told + Self::EVERY {
            self.told = elapsed;
            eprintln!(
                "pgwarden-agent: PostgreSQL {} after {}s",
                self.what,
                elapsed.as_secs()
            );
        }
    }
}

/// The configuration the agent owns.
#[derive(Clone, Debug, Default)]
pub struct PgConfig {
    pub listen_addresses: String,
    pub port: u16,
    pub socket_dir: PathBuf,
    /// `None` = archiving off (no archive settings).
    pub archive_command: Option<String>,
    pub archive_timeout_seconds: u32,
    /// The Cluster's `postgresql.parameters`.
    pub parameters: Vec<(String, String)>,
    /// Recovery settings while restoring.
    pub recovery: Vec<(String, String)>,
}

impl PgConfig {
    /// The text of `postgresql.pgwarden.conf`.
    pub fn render(&self) -> String {
        let mut lines: Vec<(String, String)> = vec![
            ("listen_addresses".into(), self.listen_addresses.clone()),
            ("port".into(), self.port.to_string()),
            (
                "unix_socket_directories".into(),
                self.socket_dir.display().to_string(),
            ),
            ("wal_level".into(), "replica".into()),
            // pg_rewind needs it (no data checksums: initdb runs without -k) to bring a
            // former primary back as a standby after a failover.
            ("wal_log_hints".into(), "on".into()),
        ];
        lines.extend(self.parameters.iter().cloned());
        match &self.archive_command {
            Some(cmd) => lines.extend([
                ("archive_mode".into(), "on".into()),
                ("archive_command".into(), cmd.clone()),
                (
                    "archive_timeout".into(),
                    format!("{}s", self.archive_timeout_seconds),
                ),
            ]),
            None => lines.push(("archive_mode".into(), "off".into())),
        }
        lines.extend(self.recovery.iter().cloned());
        let body: String = lines
            .iter()
            .map(|(k, v)| format!("{k} = '{}'\n", conf_string(v)))
            .collect();
        format!("# Written by `pgwarden instance run` on every start: do not edit.\n{body}")
    }
}

/// A value as the inside of a quoted postgresql.conf string: quotes doubled, backslashes and
/// line breaks escaped (a raw line break would end the line and fail the whole file).
fn conf_string(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('\'', "''")
        .replace('\n', "\\n")
        .replace('\r', "\\r")
}

/// The archive command calling this very binary.
pub fn archive_command(exe: &Path) -> String {
    format!("{} instance wal-archive %p", command_word(exe))
}

/// The restore command calling this very binary, reading the store's settings from `source`
/// (a path: no setting and no secret on the command line).
pub fn restore_command(exe: &Path, source: &Path) -> String {
    format!(
        "{} instance wal-restore --source {} %f %p",
        command_word(exe),
        command_word(source)
    )
}

/// The restore_command of a standby (see `walrestore`, `--standby`): a store error is "not
/// here" at once, so PostgreSQL streams from the primary meanwhile instead of stopping.
pub fn standby_restore_command(exe: &Path, source: &Path) -> String {
    format!(
        "{} instance wal-restore --standby --source {} %f %p",
        command_word(exe),
        command_word(source)
    )
}

/// A path as one word of archive_command or restore_command: quoted for the shell, with every
/// `%` doubled, since PostgreSQL expands `%p`, `%f`, `%r` and `%%` in these commands before
/// the shell sees them (a folder named `pg%f` would become the WAL file's name).
fn command_word(path: &Path) -> String {
    shell_quote(&path.display().to_string()).replace('%', "%%")
}

/// Recovery settings for a restore: where WAL comes from and where replay stops.
pub fn recovery_settings(
    restore_command: &str,
    target: Option<&RecoveryTarget>,
) -> Vec<(String, String)> {
    let mut out = vec![
        ("restore_command".to_string(), restore_command.to_string()),
        ("recovery_target_timeline".into(), "latest".into()),
    ];
    let Some(t) = target else { return out };
    let time = t.target_time.as_deref().map(pg_timestamp);
    let one = [
        ("recovery_target_time", &time),
        ("recovery_target_lsn", &t.target_lsn),
        ("recovery_target_xid", &t.target_xid),
        ("recovery_target_name", &t.target_name),
    ];
    let mut has_target = false;
    for (key, value) in one {
        if let Some(v) = value {
            out.push((key.into(), v.clone()));
            has_target = true;
        }
    }
    if t.target_immediate == Some(true) {
        out.push(("recovery_target".into(), "immediate".into()));
        has_target = true;
    }
    if has_target {
        out.push(("recovery_target_action".into(), "promote".into()));
        if t.exclusive == Some(true) {
            out.push(("recovery_target_inclusive".into(), "off".into()));
        }
    }
    out
}

/// An RFC 3339 timestamp in the form `recovery_target_time` accepts (`2026-11-25 10:00:00.5+00`);
/// anything else is passed on for PostgreSQL to judge.
fn pg_timestamp(ts: &str) -> String {
    chrono::DateTime::parse_from_rfc3339(ts)
        .map(|t| {
            t.with_timezone(&chrono::Utc)
                .format("%Y-%m-%d %H:%M:%S%.f+00")
                .to_string()
        })
        .unwrap_or_else(|_| ts.to_string())
}

/// The pid in PGDATA's `postmaster.pid` when that process is alive.
fn live_postmaster(pgdata: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(pgdata.join("postmaster.pid")).ok()?;
    let pid: i32 = text.lines().next()?.trim().parse().ok()?;
    let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok();
    alive.then_some(pid)
}

/// Asks the kernel to send the child SIGQUIT (PostgreSQL's immediate shutdown) when its
/// parent dies.
#[allow(unsafe_code)]
fn quit_with_parent(cmd: &mut Command) {
    let parent = nix::unistd::getpid();
    // SAFETY: the closure runs between fork and exec and only makes two async-signal-safe
    // system calls (prctl, getppid); it allocates nothing and takes no lock.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGQUIT)?;
            // The parent may have died before prctl: then nobody would send the signal.
            if nix::unistd::getppid() != parent {
                return Err(std::io::Error::other(
                    "the agent exited while starting postgres",
                ));
            }
            Ok(())
        });
    }
}

/// The kernel sends the parent-death signal when the *thread* that forked the child ends, not
/// the process: fork from a thread that lives as long as the agent, never from a pool thread.
fn spawn_from_lasting_thread(mut cmd: Command) -> std::io::Result<std::process::Child> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("postmaster-parent".into())
        .spawn(move || {
            let _ = tx.send(cmd.spawn());
            loop {
                std::thread::park();
            }
        })?;
    rx.recv()
        .map_err(|_| std::io::Error::other("the postmaster's parent thread ended"))?
}

/// An empty PGDATA owned by the PostgreSQL user, 0700 (what pg_basebackup and
/// barman-cloud-restore want).
pub fn wipe(pgdata: &Path, run_as: RunAs) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if pgdata.exists() {
        std::fs::remove_dir_all(pgdata)
            .with_context(|| format!("cannot empty {}", pgdata.display()))?;
    }
    std::fs::create_dir_all(pgdata)?;
    run_as.own(pgdata, false)?;
    std::fs::set_permissions(pgdata, std::fs::Permissions::from_mode(0o700))?;
    Ok(())
}

#[cfg(test)]
mod tests;
