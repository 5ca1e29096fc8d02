//! Where the agent keeps its files: PGDATA, and a state folder beside it (never inside it,
//! so that base backups do not carry the agent's memory into a restored cluster).
//!
//! ```text
//!   <data volume>/pgdata/                 PGDATA
//!   <data volume>/pgwarden/wal-spool/     WAL files already archived ahead of PostgreSQL
//!   <data volume>/pgwarden/archive-check.json    the first-archive destination check
//!   <data volume>/pgwarden/archive-failure.json  the last archive failure (scrubbed)
//!   <data volume>/pgwarden/archive-facts.json    the last archive facts reported
//!   <data volume>/pgwarden/backups/<name>.json   facts of each backup this agent ran
//!   <data volume>/pgwarden/restore.json          a restore's phase (see `restore`)
//!   <data volume>/pgwarden/restore-source.json   the store a restore reads, kept at its start
//!   <data volume>/pgwarden/wal-restore-failure.json  the restore_command's last give-up
//!   <data volume>/pgwarden/wal-restore-spool/    barman-cloud-wal-restore's spool (unused)
//! ```

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use pgwarden_crds::settings::{ARCHIVE_SETTINGS_KEY, ArchiveSettings, pod};

/// Env: overrides the state folder (default: `pgwarden` beside PGDATA).
pub const ENV_STATE_DIR: &str = "PGWARDEN_STATE_DIR";

/// The agent's folders.
#[derive(Clone, Debug)]
pub struct Layout {
    pub pgdata: PathBuf,
    pub state: PathBuf,
}

impl Layout {
    /// The layout of `pgdata`, with the state folder from the environment or beside it.
    pub fn new(pgdata: &Path) -> Self {
        let state = std::env::var_os(ENV_STATE_DIR)
            .map(PathBuf::from)
            .unwrap_or_else(|| pgdata.parent().unwrap_or(Path::new("/")).join("pgwarden"));
        Self {
            pgdata: pgdata.to_path_buf(),
            state,
        }
    }

    /// The layout from `$PGDATA`.
    pub fn from_env() -> Result<Self> {
        let pgdata = std::env::var_os(pod::ENV_PGDATA).context("PGDATA is not set")?;
        Ok(Self::new(Path::new(&pgdata)))
    }

    pub fn spool(&self) -> PathBuf {
        self.state.join("wal-spool")
    }
    pub fn archive_check(&self) -> PathBuf {
        self.state.join("archive-check.json")
    }
    pub fn archive_failure(&self) -> PathBuf {
        self.state.join("archive-failure.json")
    }
    pub fn archive_facts(&self) -> PathBuf {
        self.state.join("archive-facts.json")
    }
    pub fn backups(&self) -> PathBuf {
        self.state.join("backups")
    }
    pub fn restore_state(&self) -> PathBuf {
        self.state.join("restore.json")
    }
    /// The store a restore reads, kept by the agent before the download.
    pub fn restore_source(&self) -> PathBuf {
        self.state.join("restore-source.json")
    }
    pub fn wal_restore_failure(&self) -> PathBuf {
        self.state.join("wal-restore-failure.json")
    }
    /// PostgreSQL's `.ready` / `.done` markers.
    pub fn archive_status(&self) -> PathBuf {
        self.pgdata.join("pg_wal/archive_status")
    }
}

/// Reads the decided archive settings from `<dir>/archive.json`.
pub fn read_archive_settings(dir: &Path) -> Result<ArchiveSettings> {
    read_json(&dir.join(ARCHIVE_SETTINGS_KEY))
}

/// The settings folder from `$PGWARDEN_SETTINGS_DIR` (default: the pod's mount path).
pub fn settings_dir() -> PathBuf {
    std::env::var_os(pod::ENV_SETTINGS_DIR)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(pgwarden_crds::settings::SETTINGS_MOUNT_PATH))
}

/// Reads and parses a JSON file, naming it in the error.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("cannot parse {}", path.display()))
}

/// Writes a JSON file atomically (temporary file, then rename).
pub fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, serde_json::to_vec_pretty(value)?)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

/// Writes a JSON file atomically and durably: see [`write_durable`].
pub fn write_json_durable<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    write_durable(path, &serde_json::to_vec_pretty(value)?)
}

/// Writes `bytes` to `path` atomically and durably: the temporary file is fsynced before it
/// is renamed and the folder after, so that after a crash the file holds the old content or
/// the new, and surely the new once this returns (a restore's next step relies on it).
pub fn write_durable(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut file =
        std::fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot sync {}", dir.display()))
}

/// The outcome of the first-archive destination check.
#[derive(serde::Serialize, serde::Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ArchiveCheck {
    pub destination_path: String,
    pub server_name: String,
    pub ok: bool,
    pub time: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The WAL files PostgreSQL marked ready to archive, with their markers' modification times.
pub fn ready_files(archive_status: &Path) -> Result<Vec<(String, std::time::SystemTime)>> {
    let entries = match std::fs::read_dir(archive_status) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(e).with_context(|| format!("cannot list {}", archive_status.display()));
        }
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let file = entry.file_name().to_string_lossy().to_string();
        if let Some(name) = file.strip_suffix(".ready") {
            let mtime = entry
                .metadata()
                .and_then(|m| m.modified())
                .unwrap_or(std::time::SystemTime::now());
            out.push((name.to_string(), mtime));
        }
    }
    Ok(out)
}

/// A standby clone under way (`standby`, `clone_store`): its marker in the state folder.
pub fn clone_marker(layout: &Layout) -> PathBuf {
    layout.state.join("clone.json")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durable_writes_replace_the_whole_file_and_leave_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/restore.json");
        write_json_durable(&path, &serde_json::json!({"phase": "downloading"})).unwrap();
        write_json_durable(&path, &serde_json::json!({"phase": "replaying"})).unwrap();
        let back: serde_json::Value = read_json(&path).unwrap();
        assert_eq!(back["phase"], "replaying");
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["restore.json"]);
    }
}
