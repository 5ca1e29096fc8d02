//! `pgwarden instance backup --name NAME`: one base backup with barman-cloud-backup.
//!
//! The backup is named after the Backup object (`-n NAME`, the operator passes the object's
//! uid), so the store itself says whether it was taken. The agent keeps `backups/NAME.json`
//! in its state folder as its memory:
//!
//! ```text
//!   memory final (succeeded/failed) ──────────────► report it again, run nothing
//!   memory running, barman process still alive ──► wait for it, then read the store
//!   memory running, process gone (agent restart) ─► read the store: DONE → succeeded,
//!                                                   else failed ("interrupted"); never rerun
//!   no memory, found in the store ────────────────► report it, run nothing
//!   no memory, not in the store ──────────────────► run barman-cloud-backup, read the store
//! ```

use std::process::Stdio;
use std::time::Duration;

use anyhow::Result;
use pgwarden_crds::BackupAgentState;
use pgwarden_crds::settings::{ArchiveSettings, BackupSettings};
use serde_json::Value;

use super::archive::now;
use super::barman::{self, Barman, PgConn};
use super::facts::BackupFacts;
use super::layout::{self, Layout};
use super::postgres::RunAs;

/// Takes (or finds) the backup `name`; returns the facts, also kept in the state folder.
pub fn backup(
    layout: &Layout,
    archive: &ArchiveSettings,
    settings: &BackupSettings,
    name: &str,
    pg: &PgConn,
    pod: Option<String>,
) -> Result<BackupFacts> {
    let memory_path = layout.backups().join(format!("{name}.json"));
    let barman = Barman::from_env();
    let memory: Option<BackupFacts> = layout::read_json(&memory_path).ok();
    let facts = match memory {
        Some(m) if m.state != Some(BackupAgentState::Running) => m,
        Some(m) => {
            if let Some(pid) = m.pid {
                wait_gone(pid);
            }
            settle(
                &barman,
                archive,
                m,
                "barman-cloud-backup was interrupted (the agent restarted while it ran) and the backup is not complete in the store",
            )
        }
        None => match show(&barman, archive, name) {
            Ok(Some(info)) => with_info(
                BackupFacts {
                    name: name.into(),
                    pod_name: pod,
                    ..Default::default()
                },
                &info,
            ),
            _ => run(&barman, layout, archive, settings, name, pg, pod)?,
        },
    };
    layout::write_json(&memory_path, &facts)?;
    Ok(facts)
}

/// Runs barman-cloud-backup, remembering it while it runs.
fn run(
    barman: &Barman,
    layout: &Layout,
    archive: &ArchiveSettings,
    settings: &BackupSettings,
    name: &str,
    pg: &PgConn,
    pod: Option<String>,
) -> Result<BackupFacts> {
    let memory_path = layout.backups().join(format!("{name}.json"));
    let args = barman::backup_args(archive, settings, name, pg);
    let mut cmd = barman.command("barman-cloud-backup", archive, &args);
    RunAs::detect()?.apply(&mut cmd);
    let child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn();
    let mut facts = BackupFacts {
        name: name.into(),
        pod_name: pod,
        state: Some(BackupAgentState::Running),
        started_at: Some(now()),
        ..Default::default()
    };
    let child = match child {
        Ok(c) => c,
        Err(e) => {
            return Ok(failed(
                facts,
                None,
                format!("cannot start barman-cloud-backup: {e}"),
            ));
        }
    };
    facts.pid = Some(child.id());
    layout::write_json(&memory_path, &facts)?;
    let out = child.wait_with_output()?;
    facts.pid = None;
    facts.exit_code = out.status.code();
    if !out.status.success() {
        let err = barman::BarmanError::new(
            "barman-cloud-backup",
            out.status.code(),
            &String::from_utf8_lossy(&out.stderr),
        );
        facts.finished_at = Some(now());
        return Ok(failed(facts, out.status.code(), err.to_string()));
    }
    Ok(settle(
        barman,
        archive,
        facts,
        "barman-cloud-backup succeeded but the backup is not in the store",
    ))
}

/// Reads the backup from the store and turns the facts final.
fn settle(
    barman: &Barman,
    archive: &ArchiveSettings,
    mut facts: BackupFacts,
    missing: &str,
) -> BackupFacts {
    facts.pid = None;
    facts.finished_at.get_or_insert_with(now);
    match show(barman, archive, &facts.name) {
        Ok(Some(info)) if info["status"] == "DONE" => with_info(facts, &info),
        Ok(Some(info)) => {
            let status = info["status"].as_str().unwrap_or("unknown").to_string();
            let error = info["error"].as_str().map(str::to_string);
            let facts = with_info(facts, &info);
            let code = facts.exit_code;
            failed(
                facts,
                code,
                error.unwrap_or_else(|| format!("the backup's status in the store is {status}")),
            )
        }
        Ok(None) => {
            let code = facts.exit_code;
            failed(facts, code, missing.to_string())
        }
        Err(e) => {
            let code = facts.exit_code;
            failed(
                facts,
                code,
                format!("cannot read the backup from the store: {e}"),
            )
        }
    }
}

fn failed(mut facts: BackupFacts, exit_code: Option<i32>, error: String) -> BackupFacts {
    facts.state = Some(BackupAgentState::Failed);
    facts.exit_code = exit_code;
    facts.finished_at.get_or_insert_with(now);
    facts.error = Some(barman::scrub(&error));
    facts
}

/// The backup.info of `name` (id or name) as JSON; `None` if the store has no such backup.
pub fn show(barman: &Barman, archive: &ArchiveSettings, name: &str) -> Result<Option<Value>> {
    let list_args = barman::backup_list_args(archive);
    let mut cmd = barman.command("barman-cloud-backup-list", archive, &list_args);
    let out = barman.run("barman-cloud-backup-list", &mut cmd)?;
    let list: Value = serde_json::from_slice(&out.stdout)?;
    let known = list["backups_list"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|b| b["backup_id"] == name || b["backup_name"] == name);
    if !known {
        return Ok(None);
    }
    let args = barman::backup_show_args(archive, name);
    let mut cmd = barman.command("barman-cloud-backup-show", archive, &args);
    let out = barman.run("barman-cloud-backup-show", &mut cmd)?;
    let doc: Value = serde_json::from_slice(&out.stdout)?;
    Ok(doc.as_object().and_then(|o| o.values().next().cloned()))
}

/// Copies the backup.info facts (id, WAL and LSN bounds, times).
fn with_info(mut facts: BackupFacts, info: &Value) -> BackupFacts {
    let text = |k: &str| {
        info[k]
            .as_str()
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    facts.backup_id = text("backup_id");
    facts.begin_wal = text("begin_wal");
    facts.end_wal = text("end_wal");
    facts.begin_lsn = text("begin_xlog");
    facts.end_lsn = text("end_xlog");
    facts.begin_time = text("begin_time");
    facts.end_time = text("end_time");
    // barman-cloud-backup reports no stored size, only the cluster's.
    facts.size_bytes = info["size"].as_i64().or(info["cluster_size"].as_i64());
    if info["status"] == "DONE" {
        facts.state = Some(BackupAgentState::Succeeded);
        facts.error = None;
    }
    facts
}

/// Waits (bounded: one day) until a process is gone.
fn wait_gone(pid: u32) {
    let pid = nix::unistd::Pid::from_raw(pid as i32);
    for _ in 0..(24 * 3600) {
        if nix::sys::signal::kill(pid, None).is_err() {
            return;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn backup_info_fills_the_facts() {
        let info = json!({
            "backup_id": "20261125T101500", "status": "DONE", "begin_wal": "000000010000000000000004",
            "end_wal": "000000010000000000000004", "begin_xlog": "0/4000028", "end_xlog": "0/4000138",
            "begin_time": "Wed Nov 25 10:15:00 2026", "end_time": "Wed Nov 25 10:15:03 2026",
            "cluster_size": 4_194_304
        });
        let f = with_info(
            BackupFacts {
                name: "uid".into(),
                ..Default::default()
            },
            &info,
        );
        assert_eq!(f.state, Some(BackupAgentState::Succeeded));
        assert_eq!(f.backup_id.as_deref(), Some("20261125T101500"));
        assert_eq!(
            (f.begin_lsn.as_deref(), f.end_lsn.as_deref()),
            (Some("0/4000028"), Some("0/4000138"))
        );
        assert_eq!(f.size_bytes, Some(4_194_304));
    }

    #[test]
    fn a_failure_is_final_and_scrubbed() {
        let f = failed(BackupFacts::default(), Some(1), "boom".into());
        assert_eq!(f.state, Some(BackupAgentState::Failed));
        assert!(f.finished_at.is_some());
        assert_eq!(f.error.as_deref(), Some("boom"));
    }
}
