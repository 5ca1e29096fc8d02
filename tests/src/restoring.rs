//! A restore run the way a container runs it, for tests that interrupt it: the agent
//! (`pgwarden instance run --restore-backup ...`) starts without waiting for PostgreSQL, can
//! be killed as a container kill would (SIGKILL to its whole process group: the agent,
//! PostgreSQL, and a running `barman-cloud-restore` or `barman-cloud-wal-restore`), and
//! started again on the same volume as a kubelet would.
//!
//! ```text
//!   RestoreRun::begin(s3, primary, backup id, server)   agent starts restoring, no wait
//!   run.wait_until(..)                                   watch its log / processes / state
//!   run.kill_container()                                 SIGKILL the process group
//!   run.start_again(); run.wait_ready()                  resume; wait for "PostgreSQL ready"
//! ```
//!
//! The agent's log keeps every run (appended), so a test can show what happened across them.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pgwarden_crds::settings::ArchiveSettings;

use crate::datapath::{Credentials, Instance, S3Server, deps, free_port, log_tail, shared_tempdir};

/// The agent's line once PostgreSQL answers (and, restoring, was promoted).
pub const READY_LINE: &str = "PostgreSQL ready on port";

/// One restoring instance: its volume, settings and the agent's process group.
pub struct RestoreRun {
    pub dir: tempfile::TempDir,
    pub port: u16,
    /// The restored instance's own archive settings (its server folder).
    pub settings: ArchiveSettings,
    pub credentials: Credentials,
    /// `pgwarden instance run` arguments (the restore options).
    pub args: Vec<String>,
    /// Extra environment of the agent.
    pub env: Vec<(String, String)>,
    child: Option<Child>,
    /// Length of the log when the current run started.
    log_start: usize,
}

impl RestoreRun {
    /// Starts restoring `backup_id` of `from`'s store into a new volume, archiving to its own
    /// server folder `server`; returns at once.
    pub fn begin(
        s3: &S3Server,
        from: &Instance,
        backup_id: &str,
        server: &str,
        env: &[(&str, &str)],
    ) -> Self {
        let dir = shared_tempdir("pgwarden-restore-");
        let source = dir.path().join("restore-source.json");
        std::fs::write(
            &source,
            serde_json::to_vec(&from.opts.settings).expect("json"),
        )
        .expect("restore source");
        std::fs::set_permissions(&source, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let mut settings = from.opts.settings.clone();
        settings.server_name = server.into();
        let mut run = Self {
            args: vec![
                "--restore-backup".into(),
                backup_id.into(),
                "--restore-source".into(),
                source.display().to_string(),
            ],
            dir,
            port: free_port(),
            settings,
            credentials: s3.credentials.clone(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            child: None,
            log_start: 0,
        };
        run.write_settings();
        run.spawn();
        run
    }

    pub fn pgdata(&self) -> PathBuf {
        self.dir.path().join("pgdata")
    }
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("pgwarden")
    }
    pub fn socket_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }
    pub fn log(&self) -> PathBuf {
        self.dir.path().join("agent.log")
    }

    /// The whole log of every run so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log()).unwrap_or_default()
    }

    /// The log of the current run only.
    pub fn run_log(&self) -> String {
        self.log_text()
            .get(self.log_start..)
            .unwrap_or_default()
            .to_string()
    }

    fn write_settings(&self) {
        let dir = self.dir.path().join("settings");
        std::fs::create_dir_all(&dir).expect("settings dir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let path = dir.join("archive.json");
        std::fs::write(
            &path,
            serde_json::to_vec_pretty(&self.settings).expect("json"),
        )
        .expect("archive.json");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    }

    /// The agent's environment: the pod's, as the datapath harness gives it.
    fn agent_env(&self) -> Vec<(String, String)> {
        let d = deps();
        let path = |p: PathBuf| p.display().to_string();
        let mut env: Vec<(String, String)> = vec![
            ("PGDATA".into(), path(self.pgdata())),
            (
                "PGWARDEN_SETTINGS_DIR".into(),
                path(self.dir.path().join("settings")),
            ),
            ("PGWARDEN_PG_BIN".into(), path(d.pg_bin.clone())),
            ("PGWARDEN_BARMAN_BIN".into(), path(d.barman_bin.clone())),
            ("PGWARDEN_PORT".into(), self.port.to_string()),
            ("PGWARDEN_SOCKET_DIR".into(), path(self.socket_dir())),
            ("PGWARDEN_LISTEN_ADDRESSES".into(), "127.0.0.1".into()),
            ("PGWARDEN_REPORT_INTERVAL".into(), "1".into()),
            ("POD_NAME".into(), "pg-restore-1".into()),
            ("HOME".into(), path(self.dir.path().to_path_buf())),
        ];
        env.extend(self.env.iter().cloned());
        env.extend(
            self.credentials
                .env()
                .into_iter()
                .map(|(k, v)| (k.to_string(), v)),
        );
        env
    }

    /// Starts the agent in a process group of its own (a container), log appended.
    fn spawn(&mut self) {
        assert!(self.child.is_none(), "the agent already runs");
        self.log_start = self.log_text().len();
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())
            .expect("log file");
        let err = out.try_clone().expect("log file");
        let child = Command::new(&deps().pgwarden)
            .args(["instance", "run"])
            .args(&self.args)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .envs(self.agent_env())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .expect("start the agent");
        let _ = crate::watchdog::guard_group(child.id());
        self.child = Some(child);
    }

    /// Starts the agent again on the same volume, as a kubelet restarts a container.
    pub fn start_again(&mut self) {
        self.spawn();
    }

    /// Kills the container: SIGKILL to the agent's whole process group, then waits until no
    /// process of the group is left.
    pub fn kill_container(&mut self) {
        let mut child = self.child.take().expect("the agent runs");
        let pgid = child.id();
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{pgid}")])
            .status();
        let _ = child.wait();
        let gone =
            crate::datapath::wait_for(Duration::from_secs(30), Duration::from_millis(100), || {
                group_pids(pgid).is_empty().then_some(())
            });
        assert!(gone.is_some(), "processes of group {pgid} outlived SIGKILL");
    }

    /// Whether a process of the agent's group runs a command line containing `needle`.
    pub fn group_runs(&self, needle: &str) -> bool {
        let Some(child) = &self.child else {
            return false;
        };
        group_pids(child.id()).into_iter().any(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| {
                    String::from_utf8_lossy(&c)
                        .replace('\0', " ")
                        .contains(needle)
                })
                .unwrap_or(false)
        })
    }

    /// `Err(log)` once the agent has exited.
    pub fn check_alive(&mut self) -> Result<(), String> {
        let child = self.child.as_mut().expect("the agent runs");
        match child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => {
                self.child = None;
                Err(format!(
                    "the agent exited ({status}):\n{}",
                    log_tail(&self.log(), 60)
                ))
            }
            Err(e) => Err(format!("cannot wait for the agent: {e}")),
        }
    }

    /// Polls `f` until it returns `Some`, the agent exits (`Err`) or `timeout` passes (`Err`).
    pub fn wait_until<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        mut f: impl FnMut(&Self) -> Option<T>,
    ) -> Result<T, String> {
        let start = Instant::now();
        loop {
            if let Some(v) = f(self) {
                return Ok(v);
            }
            self.check_alive()
                .map_err(|e| format!("waiting for {what}: {e}"))?;
            if start.elapsed() > timeout {
                return Err(format!(
                    "{what}: not within {}s:\n{}",
                    timeout.as_secs(),
                    log_tail(&self.log(), 60)
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the current run says PostgreSQL is ready.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        self.wait_until("PostgreSQL ready", timeout, |r| {
            r.run_log().contains(READY_LINE).then_some(())
        })
    }

    /// `restore.json` in the state folder, when there.
    pub fn restore_state(&self) -> Option<serde_json::Value> {
        let text = std::fs::read_to_string(self.state_dir().join("restore.json")).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// How many WAL files PostgreSQL restored from the archive, over every run.
    pub fn restored_wal_files(&self) -> usize {
        self.log_text().matches("restored log file \"").count()
    }

    /// The pod's readiness probe, `pgwarden instance ready`, with the agent's environment:
    /// `Ok` when it says Ready, else `Err` with what it printed.
    pub fn probe_ready(&self) -> Result<(), String> {
        let out = Command::new(&deps().pgwarden)
            .args(["instance", "ready"])
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .envs(self.agent_env())
            .stdin(Stdio::null())
            .output()
            .expect("pgwarden instance ready");
        if out.status.success() {
            return Ok(());
        }
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }

    /// Runs SQL on the instance; `Err` with psql's error when it does not answer.
    pub fn try_psql(&self, sql: &str) -> Result<String, String> {
        let out = Command::new(deps().pg_bin.join("psql"))
            .args(["-h", &self.socket_dir().display().to_string()])
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
            ])
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .stdin(Stdio::null())
            .output()
            .expect("psql");
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }

    /// Runs SQL; panics on error.
    pub fn psql(&self, sql: &str) -> String {
        self.try_psql(sql)
            .unwrap_or_else(|e| panic!("psql {sql:?} failed: {e}"))
    }
}

impl Drop for RestoreRun {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.kill_container();
        }
    }
}

/// The processes of group `pgid` (zombies aside).
fn group_pids(pgid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    let rest = stat.rsplit_once(") ")?.1.to_string();
                    let fields: Vec<&str> = rest.split_whitespace().collect();
                    // state ppid pgrp
                    let state = fields.first()?.chars().next()?;
                    let group: u32 = fields.get(2)?.parse().ok()?;
                    Some(group == pgid && state != 'Z' && state != 'X')
                })
                .unwrap_or(false)
        })
        .collect()
}
