//! The I/O edge of the Cluster's parameters: the settings file, `postgres -C`, the agent's
//! configuration file, `pg_reload_conf()`, the postmaster's restart, and the report.
//!
//! The agent's memory is `<state>/parameters.json` ([`Record`]): what the configuration file
//! holds, the settings text it came from, what waits for a restart and the status to report.
//! Each step is decided from it and the settings file alone, so a killed agent resumes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use pgwarden_crds::settings::PARAMETERS_KEY;
use pgwarden_crds::settings::parameters::{AppliedBy, ParametersStatus, RefusedParameter};
use pgwarden_crds::{GROUP, VERSION};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{
    Parameter, Reloaded, changed, describe, known_bad, refused_in, revert, splice, verdict, vet,
};
use crate::instance::barman::scrub;
use crate::instance::facts::BackupFacts;
use crate::instance::layout::{self, Layout};
use crate::instance::options::RunOptions;
use crate::instance::postgres::{CONF_FILE, Postgres};
use crate::instance::report::Reporter;

/// The field manager of `status.parameters`: its own, so that the agent's archive reports
/// (another manager's apply) never remove it.
pub const FIELD_MANAGER: &str = "pgwarden-agent-parameters";

/// The pending-restart and file-error rows of the agent's file, after a reload.
const RELOADED_SQL: &str = "SELECT json_build_object(\
    'pending', (SELECT coalesce(json_agg(name), '[]'::json) FROM pg_settings WHERE pending_restart), \
    'errors', (SELECT coalesce(json_agg(json_build_object('name', name, 'error', error)), '[]'::json) \
       FROM pg_file_settings WHERE error IS NOT NULL AND name IS NOT NULL \
       AND sourcefile LIKE '%/postgresql.pgwarden.conf'))";

/// What the agent remembers of the parameters, in its state folder.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
#[serde(rename_all = "camelCase")]
struct Record {
    /// The parameters in the configuration file, in its order.
    written: Vec<Parameter>,
    /// The values the parameters waiting for a restart had before (absent: unset): what a
    /// failed restart goes back to.
    restart_from: Vec<Parameter>,
    /// The settings file's text they came from (`None`: no file).
    source: Option<String>,
    /// Written, but PostgreSQL reads them only at start.
    pending_restart: Vec<String>,
    /// Values PostgreSQL did not start with: kept out until the Cluster sets another value.
    failed_start: Vec<Parameter>,
    status: ParametersStatus,
    reported: bool,
}

impl Record {
    /// Takes `status` (its message made here), to be reported if it says something new.
    fn set_status(&mut self, mut status: ParametersStatus, waiting: Option<&str>) {
        status.message = Some(describe(&status, waiting));
        let mut old = self.status.clone();
        old.applied_at.clone_from(&status.applied_at);
        if old != status {
            if let Some(m) = &status.message {
                eprintln!("pgwarden-agent: {m}");
            }
            self.status = status;
            self.reported = false;
        }
    }
}

fn record_file(layout: &Layout) -> PathBuf {
    layout.state.join("parameters.json")
}

fn load(layout: &Layout) -> Record {
    layout::read_json(&record_file(layout)).unwrap_or_default()
}

fn save(layout: &Layout, record: &Record) {
    if let Err(e) = layout::write_json(&record_file(layout), record) {
        eprintln!("pgwarden-agent: cannot keep the parameters' state: {e:#}");
    }
}

fn read_source(settings_dir: &Path) -> Option<String> {
    std::fs::read_to_string(settings_dir.join(PARAMETERS_KEY)).ok()
}

fn parse_source(text: Option<&str>) -> serde_json::Result<BTreeMap<String, String>> {
    text.map_or(Ok(BTreeMap::new()), serde_json::from_str)
}

/// The settings file itself, refused: nothing in it is applied. Where, not what (serde's
/// message may quote a value).
fn unreadable(e: &serde_json::Error) -> RefusedParameter {
    RefusedParameter {
        name: PARAMETERS_KEY.into(),
        reason: format!(
            "not a JSON object of strings (line {}, column {})",
            e.line(),
            e.column()
        ),
    }
}

fn status(applied_by: Option<AppliedBy>, changed: Vec<String>) -> ParametersStatus {
    ParametersStatus {
        applied_by,
        changed,
        applied_at: Some(crate::instance::archive::now()),
        ..Default::default()
    }
}

/// The parameters PostgreSQL starts with: the flags and the Cluster's, vetted and checked.
/// Never fails: what cannot be written is refused, and reported on the first tick.
pub fn at_start(opts: &RunOptions, layout: &Layout, pg: &Postgres) -> Vec<Parameter> {
    let mut record = load(layout);
    let source = read_source(&opts.settings_dir);
    let (cluster, unreadable) = match parse_source(source.as_deref()) {
        Ok(c) => (c, None),
        Err(e) => (BTreeMap::new(), Some(unreadable(&e))),
    };
    let (params, mut refused) = screen(opts, layout, pg, &record, &cluster);
    refused.extend(unreadable);
    let mut s = status(
        Some(AppliedBy::Start),
        params.iter().map(|(k, _)| k.clone()).collect(),
    );
    s.refused = refused;
    record.written = params.clone();
    record.source = source;
    record.pending_restart.clear();
    record.restart_from.clear();
    record.reported = false;
    record.set_status(s, None);
    save(layout, &record);
    params
}

/// One report tick: applies a changed settings file (reload, restart where PostgreSQL needs
/// one), retries a restart that waited, reports. An error means PostgreSQL could not be
/// brought back after a restart: the agent must exit.
pub async fn tick(
    opts: &RunOptions,
    layout: &Layout,
    pg: &Postgres,
    child: &mut Child,
    reporter: &Reporter,
) -> Result<()> {
    let mut record = load(layout);
    let source = read_source(&opts.settings_dir);
    let result = tokio::task::block_in_place(|| {
        if source != record.source {
            change(opts, layout, pg, &mut record, source);
        }
        if !record.pending_restart.is_empty() {
            return restart_when_free(layout, pg, child, &mut record);
        }
        Ok(())
    });
    save(layout, &record);
    report(opts, layout, &mut record, reporter).await;
    result
}

/// Applies the settings file `source` to the running PostgreSQL.
fn change(
    opts: &RunOptions,
    layout: &Layout,
    pg: &Postgres,
    record: &mut Record,
    source: Option<String>,
) {
    let cluster = match parse_source(source.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            record.source = source;
            let mut s = status(None, Vec::new());
            s.refused = vec![unreadable(&e)];
            return record.set_status(s, None);
        }
    };
    let (candidate, mut refused) = screen(opts, layout, pg, record, &cluster);
    let names = changed(&record.written, &candidate);
    match apply(pg, &record.written, candidate, &names) {
        Ok((written, v)) => {
            refused.extend(v.refused.iter().map(|n| RefusedParameter {
                name: n.clone(),
                reason: "PostgreSQL refused it on reload".into(),
            }));
            let old = std::mem::replace(&mut record.written, written);
            record.source = source;
            for n in v.restart {
                if record.pending_restart.contains(&n) {
                    continue;
                }
                if let Some(value) = super::value_of(&old, &n) {
                    record.restart_from.push((n.clone(), value.to_string()));
                }
                record.pending_restart.push(n);
            }
            let by = (!names.is_empty()).then_some(AppliedBy::Reload);
            let mut s = status(by, names);
            s.refused = refused;
            s.pending_restart = record.pending_restart.clone();
            record.set_status(s, None);
        }
        // The settings stay unapplied: the next tick tries again.
        Err(e) => eprintln!(
            "pgwarden-agent: cannot apply the Cluster's parameters: {}",
            scrub(&format!("{e:#}"))
        ),
    }
}

/// The flags and the Cluster's parameters less what is never written, what PostgreSQL did not
/// start with and what it refuses; each refused one keeps its value in the file.
fn screen(
    opts: &RunOptions,
    layout: &Layout,
    pg: &Postgres,
    record: &Record,
    cluster: &BTreeMap<String, String>,
) -> (Vec<Parameter>, Vec<RefusedParameter>) {
    let mut vetted = vet(&opts.parameters, cluster);
    let bad = known_bad(&vetted.params, &record.failed_start);
    let params = revert(&vetted.params, &bad, &record.written);
    vetted
        .refused
        .extend(bad.into_iter().map(|name| RefusedParameter {
            name,
            reason: DID_NOT_START.into(),
        }));
    let (params, refused) = check_values(pg, layout, params, &record.written);
    vetted.refused.extend(refused);
    (params, vetted.refused)
}

const DID_NOT_START: &str = "PostgreSQL did not start with it";

/// Writes `candidate` in place of `written` and reloads; writes back the previous value of
/// what PostgreSQL refused on reload. Returns what the file holds and the verdict.
fn apply(
    pg: &Postgres,
    written: &[Parameter],
    candidate: Vec<Parameter>,
    names: &[String],
) -> Result<(Vec<Parameter>, super::Verdict)> {
    if candidate == written {
        return Ok((candidate, super::Verdict::default()));
    }
    write_conf(pg, written, &candidate)?;
    let v = verdict(names, &reload(pg)?);
    if v.refused.is_empty() {
        return Ok((candidate, v));
    }
    let back = revert(&candidate, &v.refused, written);
    write_conf(pg, &candidate, &back)?;
    reload(pg)?;
    Ok((back, v))
}

/// Asks PostgreSQL whether it takes these values (`postgres -C` on a scratch folder: no server
/// involved); what it refuses goes back to its value in `previous`, or out.
fn check_values(
    pg: &Postgres,
    layout: &Layout,
    mut params: Vec<Parameter>,
    previous: &[Parameter],
) -> (Vec<Parameter>, Vec<RefusedParameter>) {
    let mut refused: Vec<RefusedParameter> = Vec::new();
    // Each round refuses at least one more parameter, or ends.
    for _ in 0..=params.len() {
        let stderr = match check_once(pg, layout, &params) {
            Ok(None) => break,
            Ok(Some(stderr)) => stderr,
            Err(e) => {
                eprintln!("pgwarden-agent: cannot check the parameters' values: {e:#}");
                break;
            }
        };
        let mut named = refused_in(&stderr, &params);
        named.retain(|r| !refused.iter().any(|x| x.name.eq_ignore_ascii_case(&r.name)));
        if named.is_empty() {
            eprintln!(
                "pgwarden-agent: PostgreSQL refuses the configuration for a reason that names no Cluster parameter"
            );
            break;
        }
        let names: Vec<String> = named.iter().map(|r| r.name.clone()).collect();
        params = revert(&params, &names, previous);
        refused.extend(named);
    }
    (params, refused)
}

/// `postgres -C port` with only `params` as its configuration: `None` when PostgreSQL takes
/// them, else what it said.
fn check_once(pg: &Postgres, layout: &Layout, params: &[Parameter]) -> Result<Option<String>> {
    let dir = layout.state.join("parameter-check");
    std::fs::create_dir_all(&dir)?;
    pg.run_as.own(&dir, false)?;
    let file = dir.join("check.conf");
    let text: String = params
        .iter()
        .map(|(k, v)| super::conf_line(k, v) + "\n")
        .collect();
    std::fs::write(&file, text)?;
    pg.run_as.own(&file, false)?;
    let mut cmd = Command::new(pg.bin.join("postgres"));
    pg.run_as.apply(&mut cmd);
    let out = cmd
        .args(["-C", "port", "-c"])
        .arg(format!("config_file={}", file.display()))
        .arg("-D")
        .arg(&dir)
        .stdin(Stdio::null())
        .output()
        .context("cannot run postgres -C")?;
    Ok((!out.status.success()).then(|| String::from_utf8_lossy(&out.stderr).into_owned()))
}

/// Rewrites the agent's configuration file with `new` in place of `old`, atomically.
fn write_conf(pg: &Postgres, old: &[Parameter], new: &[Parameter]) -> Result<()> {
    let path = pg.pgdata.join(CONF_FILE);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let Some(next) = splice(&text, old, new) else {
        // Written already, by a tick that then failed to reload: nothing to write.
        if splice(&text, new, new).is_some() {
            return Ok(());
        }
        bail!(
            "{CONF_FILE} does not hold the parameters last written: they apply at the pod's next start"
        );
    };
    let tmp = path.with_extension("conf.tmp");
    std::fs::write(&tmp, next).with_context(|| format!("cannot write {}", tmp.display()))?;
    pg.run_as.own(&tmp, false)?;
    std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))
}

/// `pg_reload_conf()`, then waits until a new session sees the reload (its configuration
/// load time moved) and reads what it left pending or refused.
fn reload(pg: &Postgres) -> Result<Reloaded> {
    let before = pg.query("SELECT pg_conf_load_time()")?;
    pg.query("SELECT pg_reload_conf()")?;
    let start = Instant::now();
    let since = format!("SELECT pg_conf_load_time() > '{before}'::timestamptz");
    while pg.query(&since)? != "t" {
        if start.elapsed() > Duration::from_secs(30) {
            bail!("PostgreSQL did not reload its configuration within 30 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let row = pg.query(RELOADED_SQL)?;
    serde_json::from_str(&row).context("cannot parse the reload's outcome")
}

/// Restarts PostgreSQL for what waits, unless a backup runs on this pod (it would fail).
fn restart_when_free(
    layout: &Layout,
    pg: &Postgres,
    child: &mut Child,
    record: &mut Record,
) -> Result<()> {
    let mut s = record.status.clone();
    s.pending_restart = record.pending_restart.clone();
    if let Some(why) = busy(layout, pg) {
        record.set_status(s, Some(&why));
        return Ok(());
    }
    let waiting = std::mem::take(&mut record.pending_restart);
    let Ok(names) = still_pending(pg, &waiting) else {
        // PostgreSQL did not answer: the next tick tries again.
        record.pending_restart = waiting;
        return Ok(());
    };
    let restart_from = std::mem::take(&mut record.restart_from);
    s.pending_restart.clear();
    if names.is_empty() {
        // Changed back to the running value before the restart came: none needed.
        record.set_status(s, None);
        return Ok(());
    }
    eprintln!(
        "pgwarden-agent: restarting PostgreSQL (fast shutdown) to apply {}",
        names.join(", ")
    );
    stop(child)?;
    match start(pg, child) {
        Ok(()) => {
            s.applied_by = Some(AppliedBy::Restart);
            s.restarted_for = names;
        }
        Err(e) => {
            eprintln!(
                "pgwarden-agent: PostgreSQL did not start with the new values ({e:#}); starting it with the previous ones"
            );
            let back = revert(&record.written, &names, &restart_from);
            write_conf(pg, &record.written, &back)?;
            record.failed_start.retain(|(k, _)| !names.contains(k));
            for n in &names {
                if let Some(v) = super::value_of(&record.written, n) {
                    record.failed_start.push((n.clone(), v.to_string()));
                }
            }
            start(pg, child).context("PostgreSQL did not start with the previous values either")?;
            record.written = back;
            s.refused.extend(names.iter().map(|n| RefusedParameter {
                name: n.clone(),
                reason: DID_NOT_START.into(),
            }));
        }
    }
    s.applied_at = Some(crate::instance::archive::now());
    record.set_status(s, None);
    Ok(())
}

/// The `names` PostgreSQL still holds for a restart.
fn still_pending(pg: &Postgres, names: &[String]) -> Result<Vec<String>> {
    let rows = pg.query("SELECT name FROM pg_settings WHERE pending_restart")?;
    Ok(names
        .iter()
        .filter(|n| rows.lines().any(|r| r.eq_ignore_ascii_case(n)))
        .cloned()
        .collect())
}

/// Why PostgreSQL must not restart now: a backup this agent runs, or any barman backup
/// connected (a restart would fail it).
fn busy(layout: &Layout, pg: &Postgres) -> Option<String> {
    let running = std::fs::read_dir(layout.backups())
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| layout::read_json::<BackupFacts>(&e.path()).ok())
        .find(|f| {
            f.state == Some(pgwarden_crds::BackupAgentState::Running)
                && f.pid.is_some_and(|p| alive(p as i32))
        });
    if let Some(f) = running {
        return Some(format!("backup {} runs on this pod", f.name));
    }
    let sql = "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'barman%'";
    match pg.query(sql).as_deref() {
        Ok("0") => None,
        Ok(_) => Some("a barman backup is connected to PostgreSQL".into()),
        Err(_) => Some("PostgreSQL does not answer".into()),
    }
}

fn alive(pid: i32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}

/// Fast shutdown of the postmaster, waiting for it to exit.
fn stop(child: &mut Child) -> Result<()> {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
    let status = child.wait()?;
    eprintln!("pgwarden-agent: PostgreSQL stopped ({status})");
    Ok(())
}

/// Starts the postmaster in place of `child` and waits until it answers, for as long as it
/// runs (it may first replay WAL after a crash).
fn start(pg: &Postgres, child: &mut Child) -> Result<()> {
    *child = pg.spawn()?;
    while pg.query("SELECT 1").is_err() {
        if let Some(status) = child.try_wait()? {
            bail!("postgres exited during start-up ({status}); see its log above");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("pgwarden-agent: PostgreSQL ready on port {}", pg.port);
    Ok(())
}

/// Patches `status.parameters` once per new status.
async fn report(opts: &RunOptions, layout: &Layout, record: &mut Record, reporter: &Reporter) {
    if record.reported {
        return;
    }
    let Some(cluster) = &opts.cluster else { return };
    let mut s = record.status.clone();
    s.pod_name.clone_from(&opts.pod_name);
    let patch = json!({
        "apiVersion": format!("{GROUP}/{VERSION}"),
        "kind": "Cluster",
        "metadata": { "name": cluster },
        "status": { "parameters": s },
    });
    match reporter
        .apply_status_as(FIELD_MANAGER, "Cluster", "clusters", cluster, &patch)
        .await
    {
        Ok(()) => {
            record.reported = true;
            save(layout, record);
        }
        Err(e) => eprintln!(
            "pgwarden-agent: cannot report the parameters: {}",
            scrub(&format!("{e:#}"))
        ),
    }
}
