//! The agent's side of a Backup: it watches the Backups of its namespace and takes the one
//! the operator marked `running` on this pod (`status.instanceID.podName`), with the settings
//! the policy decided (`status.settings`). The barman backup is named after the Backup's uid,
//! so the store and the agent's memory (see [`super::backup`]) tell whether it was already
//! taken: a restarted agent reports it truthfully and never takes it twice.
//!
//! A backup taken on a standby ends with `pg_backup_stop()`, which on a standby does not wait
//! for the backup's last WAL file to be archived: only the primary archives, and a quiet
//! primary sends that file after `archive_timeout` at best. Without it the backup cannot be
//! restored. So the standby's agent reports the backup `running` with its `endWal` until the
//! Cluster's `status.archive` (the primary's report) shows that file archived, and the
//! primary's agent, seeing a Backup of its Cluster waiting so on another pod, switches to a
//! new WAL file once ([`switch_for`]).
//!
//! Deletions come another way ([`deletions`]): the operator's requests in the Cluster's own
//! settings ConfigMap (mounted as the settings folder), never a Backup's `status.deletion`,
//! which any agent of the namespace may write (see [`super::retention`]).

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use pgwarden_crds::settings::BackupSettings;
use pgwarden_crds::{Backup, BackupAgentState, BackupPhase};

use super::archive::now;
use super::barman::{PgConn, scrub};
use super::facts::{self, BackupFacts};
use super::layout::{self, Layout};
use super::postgres::{ENV_PG_BIN, Postgres, RunAs};
use super::report::Reporter;
use super::retention;
use pgwarden_core::plan::retention::Request;

/// The settings of the backup this pod must take, if `backup` is assigned to it and its
/// agent report is not final yet.
pub fn assigned(backup: &Backup, pod: &str) -> Option<BackupSettings> {
    let status = backup.status.as_ref()?;
    let here = status.instance_id.as_ref()?.pod_name.as_deref() == Some(pod);
    let running = status.phase == Some(BackupPhase::Running);
    let reported = status
        .agent
        .as_ref()
        .and_then(|a| a.state)
        .is_some_and(|s| s != BackupAgentState::Running);
    (here && running && !reported).then(|| {
        status
            .settings
            .clone()
            .unwrap_or_else(|| default_settings(pod))
    })
}

fn default_settings(pod: &str) -> BackupSettings {
    BackupSettings {
        target_pod: pod.into(),
        compression: None,
        encryption: None,
        sse_kms_key_id: None,
        jobs: 2,
        immediate_checkpoint: true,
    }
}

/// Where the agent runs.
#[derive(Clone)]
pub struct Here {
    pub namespace: String,
    /// The Cluster this pod is an instance of.
    pub cluster: String,
    pub pod: String,
    pub layout: Layout,
    pub settings_dir: std::path::PathBuf,
    pub pg: Arc<PgConn>,
}

/// Watches Backups until the task is dropped.
pub async fn watch(client: kube::Client, here: Here, reporter: Arc<Reporter>) {
    let api: Api<Backup> = Api::namespaced(client, &here.namespace);
    let mut taken: HashSet<String> = HashSet::new();
    // One barman-cloud-backup at a time: barman names a backup after the second it starts,
    // so two started together would be one backup in the store (seen: "Unknown backup").
    let one_at_a_time = Arc::new(tokio::sync::Mutex::new(()));
    let mut switched: HashSet<String> = HashSet::new();
    let mut events = watcher(api, watcher::Config::default())
        .default_backoff()
        .applied_objects()
        .boxed();
    while let Some(event) = events.next().await {
        let Ok(backup) = event else { continue };
        let uid = backup.uid().unwrap_or_else(|| backup.name_any());
        if let Some(end) = waits_for_wal(&backup, &here)
            && switched.insert(uid.clone())
        {
            let (pg, name) = (local_postgres(&here), backup.name_any());
            tokio::task::spawn_blocking(move || switch_for(&pg, &name, &end));
        }
        let Some(settings) = assigned(&backup, &here.pod) else {
            continue;
        };
        if !taken.insert(uid.clone()) {
            continue;
        }
        let (here, reporter, turn) = (here.clone(), reporter.clone(), one_at_a_time.clone());
        tokio::spawn(async move {
            take(&backup.name_any(), &uid, settings, &here, &reporter, &turn).await
        });
    }
}

/// How often the settings folder is read for deletion requests (a kubelet updates a mounted
/// ConfigMap within about a minute; the local node within a second).
const DELETIONS_EVERY: std::time::Duration = std::time::Duration::from_secs(3);

/// Runs the deletion requests the operator writes for this pod, each attempt once, until the
/// task is dropped.
pub async fn deletions(client: kube::Client, here: Here, reporter: Arc<Reporter>) {
    let api: Api<Backup> = Api::namespaced(client, &here.namespace);
    let me = retention::Me {
        cluster: here.cluster.clone(),
        pod: here.pod.clone(),
    };
    let mut done: HashSet<(String, u32)> = HashSet::new();
    let mut last_error = None;
    loop {
        match retention::assigned(&here.settings_dir, &me) {
            Ok(requests) => {
                for r in requests {
                    if done.insert((r.uid.clone(), r.attempt)) {
                        let (api, here, reporter) = (api.clone(), here.clone(), reporter.clone());
                        tokio::spawn(async move { delete(&api, r, &here, &reporter).await });
                    }
                }
            }
            Err(e) if last_error.as_ref() != Some(&e) => {
                eprintln!("pgwarden-agent: {e}");
                last_error = Some(e);
            }
            Err(_) => {}
        }
        tokio::time::sleep(DELETIONS_EVERY).await;
    }
}

/// Deletes a backup the operator expired, once the request passed [`retention::check`], and
/// reports the outcome on its Backup. A request about a Backup that is not this Cluster's (or
/// not the object named) is refused in the log only: the agent writes no other Cluster's
/// Backup.
async fn delete(api: &Api<Backup>, r: Request, here: &Here, reporter: &Reporter) {
    let me = retention::Me {
        cluster: here.cluster.clone(),
        pod: here.pod.clone(),
    };
    let backup = match api.get_opt(&r.backup).await {
        Ok(Some(b)) => b,
        Ok(None) => {
            return eprintln!(
                "pgwarden-agent: Backup {} is gone: nothing to delete",
                r.backup
            );
        }
        Err(e) => {
            return eprintln!(
                "pgwarden-agent: cannot read Backup {}: {}",
                r.backup,
                scrub(&format!("{e:#}"))
            );
        }
    };
    let ours =
        backup.spec.cluster.name == here.cluster && backup.uid().as_deref() == Some(r.uid.as_str());
    let (settings_dir, req) = (here.settings_dir.clone(), r.clone());
    let outcome = tokio::task::spawn_blocking(move || {
        let archive = layout::read_archive_settings(&settings_dir).map_err(|e| format!("{e:#}"))?;
        retention::check(&req, &me, &archive, &backup)?;
        eprintln!(
            "pgwarden-agent: deleting backup {} of {} (attempt {})",
            req.backup_id, req.backup, req.attempt
        );
        retention::delete(&archive, &req)
    })
    .await
    .unwrap_or_else(|e| Err(format!("the deletion thread failed: {e}")));
    eprintln!(
        "pgwarden-agent: deleting backup {} of {}: {outcome:?}",
        r.backup_id, r.backup
    );
    if !ours {
        return;
    }
    let patch = retention::report_patch(&r.backup, &here.pod, r.attempt, &outcome, now());
    if let Err(e) = reporter
        .apply_status("Backup", "backups", &r.backup, &patch)
        .await
    {
        eprintln!(
            "pgwarden-agent: cannot report the deletion of {}: {}",
            r.backup,
            scrub(&format!("{e:#}"))
        );
    }
}

async fn take(
    object: &str,
    uid: &str,
    settings: BackupSettings,
    here: &Here,
    reporter: &Reporter,
    turn: &tokio::sync::Mutex<()>,
) {
    eprintln!("pgwarden-agent: taking backup {object} ({uid})");
    let started = BackupFacts {
        name: uid.into(),
        pod_name: Some(here.pod.clone()),
        state: Some(BackupAgentState::Running),
        started_at: Some(now()),
        ..Default::default()
    };
    report(reporter, object, &started).await;
    // Reported started (the operator keeps it running), then waits for its turn.
    let _turn = turn.lock().await;
    let pg = local_postgres(here);
    let on_standby = tokio::task::spawn_blocking(move || in_recovery(&pg))
        .await
        .unwrap_or(false);
    let (name, here2) = (uid.to_string(), here.clone());
    let facts = tokio::task::spawn_blocking(move || {
        let archive = layout::read_archive_settings(&here2.settings_dir)?;
        super::backup::backup(
            &here2.layout,
            &archive,
            &settings,
            &name,
            &here2.pg,
            Some(here2.pod.clone()),
        )
    })
    .await;
    let facts = match facts {
        Ok(Ok(f)) => f,
        Ok(Err(e)) => failed(uid, here, format!("{e:#}")),
        Err(e) => failed(uid, here, format!("the backup thread failed: {e}")),
    };
    let facts = match facts.state {
        Some(BackupAgentState::Succeeded) if on_standby => {
            end_wal_archived(object, facts, here, reporter).await
        }
        _ => facts,
    };
    eprintln!("pgwarden-agent: backup {object}: {:?}", facts.state);
    report(reporter, object, &facts).await;
}

fn failed(uid: &str, here: &Here, error: String) -> BackupFacts {
    BackupFacts {
        name: uid.into(),
        pod_name: Some(here.pod.clone()),
        state: Some(BackupAgentState::Failed),
        finished_at: Some(now()),
        error: Some(scrub(&error)),
        ..Default::default()
    }
}

/// How long a backup taken on a standby waits for the primary to archive its last WAL file
/// (the primary is asked to switch at once; this bounds an archiver that is failing).
const END_WAL_WAIT: Duration = Duration::from_secs(600);
const END_WAL_POLL: Duration = Duration::from_secs(2);

/// This pod's PostgreSQL for psql: the agent's socket, and the binaries `instance run` found
/// through the same variable (and default) as its `--pg-bin`.
fn local_postgres(here: &Here) -> Postgres {
    let bin = std::env::var_os(ENV_PG_BIN)
        .map(PathBuf::from)
        .unwrap_or_else(|| "/usr/lib/postgresql/15/bin".into());
    Postgres {
        bin,
        pgdata: here.layout.pgdata.clone(),
        port: here.pg.port,
        socket_dir: PathBuf::from(&here.pg.host),
        run_as: RunAs::current(),
    }
}

/// PostgreSQL here is a standby (false when it does not answer: barman will say why).
fn in_recovery(pg: &Postgres) -> bool {
    pg.query("SELECT pg_is_in_recovery()")
        .is_ok_and(|r| r == "t")
}

/// The backup taken on this standby is reported `running` with its end WAL until the
/// primary's archive report covers that file; then its facts (succeeded) are returned, or
/// failed after [`END_WAL_WAIT`], naming the file.
async fn end_wal_archived(
    object: &str,
    facts: BackupFacts,
    here: &Here,
    reporter: &Reporter,
) -> BackupFacts {
    let Some(end) = facts.end_wal.clone() else {
        return facts;
    };
    let waiting = BackupFacts {
        state: Some(BackupAgentState::Running),
        finished_at: None,
        ..facts.clone()
    };
    report(reporter, object, &waiting).await;
    eprintln!(
        "pgwarden-agent: backup {object} was taken on a standby: waiting for the primary to archive its last WAL file {end}"
    );
    let start = Instant::now();
    let mut last = None;
    loop {
        let status = reporter.cluster_status(&here.cluster).await;
        last = status
            .ok()
            .flatten()
            .and_then(|s| s.archive)
            .and_then(|a| a.last_archived_wal)
            .or(last);
        if last.as_deref().is_some_and(|l| covers(l, &end)) {
            return facts;
        }
        if start.elapsed() > END_WAL_WAIT {
            let error = format!(
                "the backup was taken on standby {} and its last WAL file {end} was not archived by the primary within {} s (the Cluster's status.archive.lastArchivedWal is {}): the backup cannot be restored without it",
                here.pod,
                END_WAL_WAIT.as_secs(),
                last.as_deref().unwrap_or("not reported"),
            );
            return failed(&facts.name, here, error);
        }
        tokio::time::sleep(END_WAL_POLL).await;
    }
}

/// Whether `last`, the last file the primary archived, shows that segment `end` is archived.
/// PostgreSQL archives segments in order: a segment name at or after `end` covers it; a
/// `.backup` or `.partial` file of segment P covers the segments before P; a `.history`
/// file says nothing. Names compare as text: timeline, then position.
fn covers(last: &str, end: &str) -> bool {
    let segment = |n: &str| n.len() == 24 && n.bytes().all(|b| b.is_ascii_hexdigit());
    if !segment(end) {
        return false;
    }
    if segment(last) {
        return last >= end;
    }
    let prefix = last.get(..24).filter(|p| segment(p));
    let suffixed = last.ends_with(".backup") || last.ends_with(".partial");
    suffixed && prefix.is_some_and(|p| p > end)
}

/// The end WAL file a Backup of this pod's Cluster waits for on another pod: running, its
/// agent still `running` with an `endWal` (see [`end_wal_archived`]).
fn waits_for_wal(backup: &Backup, here: &Here) -> Option<String> {
    let status = backup.status.as_ref()?;
    let elsewhere = (status.instance_id.as_ref()).and_then(|i| i.pod_name.as_deref());
    let agent = status.agent.as_ref().and_then(|a| a.state);
    let waiting = backup.spec.cluster.name == here.cluster
        && status.phase == Some(BackupPhase::Running)
        && elsewhere.is_some_and(|p| p != here.pod)
        && agent == Some(BackupAgentState::Running);
    waiting.then(|| status.end_wal.clone()).flatten()
}

/// On the primary: switches to a new WAL file when the one being written is at or before
/// `end` (so `end` is complete and goes to the archive now, not after `archive_timeout`).
/// A standby, or a primary already past `end`, does nothing.
fn switch_for(pg: &Postgres, backup: &str, end: &str) {
    if in_recovery(pg) {
        return;
    }
    let current = pg.query("SELECT pg_walfile_name(pg_current_wal_lsn())");
    let outcome = match current {
        Ok(c) if c.as_str() <= end => pg.query("SELECT pg_walfile_name(pg_switch_wal())"),
        Ok(_) => return,
        Err(e) => Err(e),
    };
    match outcome {
        Ok(closed) => eprintln!(
            "pgwarden-agent: switched WAL file ({closed} closed) for Backup {backup}, taken on a standby, which waits for {end}"
        ),
        Err(e) => eprintln!(
            "pgwarden-agent: cannot switch WAL for Backup {backup} (waiting for {end}): {e:#}"
        ),
    }
}

async fn report(reporter: &Reporter, object: &str, facts: &BackupFacts) {
    let patch = facts::backup_status_patch(object, facts);
    if let Err(e) = reporter
        .apply_status("Backup", "backups", object, &patch)
        .await
    {
        eprintln!(
            "pgwarden-agent: cannot report backup {object}: {}",
            scrub(&format!("{e:#}"))
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgwarden_crds::{BackupAgentStatus, BackupStatus, InstanceId};

    fn backup(phase: BackupPhase, pod: &str, agent: Option<BackupAgentState>) -> Backup {
        let mut b = Backup::new("b", Default::default());
        b.status = Some(BackupStatus {
            phase: Some(phase),
            instance_id: Some(InstanceId {
                pod_name: Some(pod.into()),
            }),
            agent: agent.map(|state| BackupAgentStatus {
                state: Some(state),
                ..Default::default()
            }),
            ..Default::default()
        });
        b
    }

    #[test]
    fn takes_only_running_backups_assigned_here_and_not_reported_final() {
        assert!(assigned(&backup(BackupPhase::Running, "pg-1", None), "pg-1").is_some());
        assert!(
            assigned(
                &backup(
                    BackupPhase::Running,
                    "pg-1",
                    Some(BackupAgentState::Running)
                ),
                "pg-1"
            )
            .is_some()
        );
        assert!(assigned(&backup(BackupPhase::Running, "pg-2", None), "pg-1").is_none());
        assert!(assigned(&backup(BackupPhase::Pending, "pg-1", None), "pg-1").is_none());
        assert!(
            assigned(
                &backup(
                    BackupPhase::Running,
                    "pg-1",
                    Some(BackupAgentState::Succeeded)
                ),
                "pg-1"
            )
            .is_none()
        );
        assert!(
            assigned(
                &backup(BackupPhase::Running, "pg-1", Some(BackupAgentState::Failed)),
                "pg-1"
            )
            .is_none()
        );
    }

    fn here(pod: &str) -> Here {
        Here {
            namespace: "ns".into(),
            cluster: "pg".into(),
            pod: pod.into(),
            layout: Layout::new(std::path::Path::new("/pgdata")),
            settings_dir: "/settings".into(),
            pg: Arc::new(PgConn {
                host: "/run".into(),
                port: 5432,
                user: "postgres".into(),
            }),
        }
    }

    /// The primary's agent switches WAL for a Backup of its Cluster running elsewhere whose
    /// agent waits with an end WAL; not for its own, a finished one, or another Cluster's.
    #[test]
    fn the_primary_switches_for_a_backup_waiting_on_another_pod_of_its_cluster() {
        let mut b = backup(
            BackupPhase::Running,
            "pg-2",
            Some(BackupAgentState::Running),
        );
        b.spec.cluster.name = "pg".into();
        b.status.as_mut().unwrap().end_wal = Some("000000010000000000000004".into());
        let end = Some("000000010000000000000004".to_string());
        assert_eq!(waits_for_wal(&b, &here("pg-1")), end);
        assert_eq!(waits_for_wal(&b, &here("pg-2")), None, "its own backup");
        let mut done = b.clone();
        done.status.as_mut().unwrap().agent.as_mut().unwrap().state =
            Some(BackupAgentState::Succeeded);
        assert_eq!(waits_for_wal(&done, &here("pg-1")), None, "finished");
        let mut other = b.clone();
        other.spec.cluster.name = "other".into();
        assert_eq!(
            waits_for_wal(&other, &here("pg-1")),
            None,
            "another Cluster's"
        );
        let mut taking = b;
        taking.status.as_mut().unwrap().end_wal = None;
        assert_eq!(
            waits_for_wal(&taking, &here("pg-1")),
            None,
            "still taking it"
        );
    }

    #[test]
    fn an_archived_file_covers_the_end_wal_at_or_after_it() {
        let end = "000000010000000000000005";
        assert!(covers("000000010000000000000005", end));
        assert!(covers("000000010000000000000006", end));
        assert!(covers("000000020000000000000004", end), "a later timeline");
        assert!(!covers("000000010000000000000004", end));
        assert!(covers("000000010000000000000006.00000028.backup", end));
        assert!(!covers("000000010000000000000005.00000028.backup", end));
        assert!(!covers("00000002.history", end));
        assert!(!covers("000000010000000000000009", "garbage"));
    }

    #[test]
    fn uses_the_decided_settings() {
        let mut b = backup(BackupPhase::Running, "pg-1", None);
        let decided = BackupSettings {
            target_pod: "pg-1".into(),
            compression: None,
            encryption: None,
            sse_kms_key_id: None,
            jobs: 4,
            immediate_checkpoint: false,
        };
        b.status.as_mut().unwrap().settings = Some(decided.clone());
        assert_eq!(assigned(&b, "pg-1"), Some(decided));
    }
}
