//! The demo's scenario steps after set-up: the seed manifests until WAL is archived and the
//! Backup completed, a ScheduledBackup's first Backup, and a Cluster restored from the Backup.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use pgwarden_tests::datapath::S3Server;
use pgwarden_tests::localnode::pod_psql;
use serde_json::Value;

use super::plane::{Plane, step};
use crate::paths;

/// The bucket the demo's Cluster archives to.
pub const BUCKET: &str = "pgwarden-demo";
/// How long each step may take.
const WAIT: Duration = Duration::from_secs(300);

fn manifests(s3: &S3Server) -> Result<String> {
    let seed = paths::root().join("examples/seed");
    let read = |f: &str| {
        std::fs::read_to_string(seed.join(f)).with_context(|| format!("examples/seed/{f}"))
    };
    let c = &s3.credentials;
    let secret = read("secret.yaml")?
        .replace("<access key here>", &c.access_key_id)
        .replace("<secret key here>", &c.secret_access_key);
    let cluster = read("cluster.yaml")?.replace(
        "destinationPath: \"s3://BUCKET_NAME/path/to/folder\"",
        &format!(
            "destinationPath: \"s3://{BUCKET}/postgresql-bkp\"\n    endpointURL: \"{}\"",
            s3.endpoint()
        ),
    );
    if !cluster.contains("endpointURL") {
        bail!("examples/seed/cluster.yaml no longer has the destinationPath the demo fills in");
    }
    let backup = read("backup.yaml")?;
    Ok(format!("{secret}\n---\n{cluster}\n---\n{backup}"))
}

/// The seed's pod in one line: phase, readiness, address, restarts.
fn pod_line(pod: Option<&Value>) -> String {
    pod.map_or("absent".to_string(), |p| {
        let ready = p["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True");
        format!(
            "{} {} ip={} restarts={}",
            p["status"]["phase"].as_str().unwrap_or("?"),
            if ready { "ready" } else { "not-ready" },
            p["status"]["podIP"].as_str().unwrap_or("-"),
            p["status"]["containerStatuses"][0]["restartCount"]
        )
    })
}

/// One look at the seed's pod, Cluster and Backup.
struct Seen {
    pod: Option<Value>,
    backup: Option<Value>,
    ready: bool,
    archive: Value,
    phase: String,
    line: String,
}

fn look(plane: &Plane) -> Seen {
    let pod = plane.json(&["get", "pod", "postgresql-bkp-1"]);
    let cluster = plane.json(&["get", "cluster", "postgresql-bkp"]);
    let backup = plane.json(&["get", "backup", "backup-example"]);
    let pod_line = pod_line(pod.as_ref());
    let archive = cluster
        .as_ref()
        .map(|c| c["status"]["archive"].clone())
        .unwrap_or(Value::Null);
    let phase = backup
        .as_ref()
        .and_then(|b| b["status"]["phase"].as_str().map(str::to_string))
        .unwrap_or_else(|| "-".into());
    let line = format!(
        "pod postgresql-bkp-1: {pod_line} | WAL archived: {} (last {}) | backup-example: {phase}",
        archive["archivedCount"].as_i64().unwrap_or(0),
        archive["lastArchivedWal"].as_str().unwrap_or("-")
    );
    Seen {
        ready: pod_line.contains(" ready"),
        pod,
        backup,
        archive,
        phase,
        line,
    }
}

/// Waits for the seed's WAL archiving and backup, printing each change; returns the
/// Cluster's `status.archive` once a WAL file is archived and the Backup completed.
fn wait_archived_and_backed_up(plane: &Plane) -> Result<Value> {
    let (mut switched, mut last, start) = (false, String::new(), Instant::now());
    let (mut archived, mut completed) = (None, false);
    while start.elapsed() < WAIT {
        let seen = look(plane);
        if seen.line != last {
            println!("demo: [{:>4.0?}] {}", start.elapsed(), seen.line);
            last = seen.line.clone();
        }
        if seen.ready && !switched {
            switched = switch_wal(seen.pod.as_ref());
        }
        if seen.phase == "failed" {
            bail!(
                "backup-example failed: {}",
                seen.backup.unwrap_or_default()["status"]
            );
        }
        if seen.archive["archivedCount"].as_i64().unwrap_or(0) > 0 {
            archived = Some(seen.archive.clone());
        }
        completed = seen.phase == "completed";
        if let (Some(archive), true) = (&archived, completed) {
            return Ok(archive.clone());
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    bail!(
        "timed out after {WAIT:?}: WAL archived: {}, backup completed: {completed}",
        archived.is_some()
    )
}

pub fn scenario(plane: &Plane, s3: &S3Server) -> Result<()> {
    let yaml = manifests(s3)?;
    step(
        "seed manifests: Secret aws-creds, Cluster postgresql-bkp, Backup backup-example",
        || apply_when_admitted(plane, &yaml),
    )?;
    let archived = wait_archived_and_backed_up(plane)?;
    println!("demo: Cluster status.archive: {archived}");
    println!("demo: kubectl describe backup backup-example\n");
    println!(
        "{}",
        plane.kubectl(&["describe", "backup", "backup-example"], None)?
    );
    println!(
        "demo: objects in the bucket: {}",
        s3.list(BUCKET, "postgresql-bkp/").len()
    );
    Ok(())
}

/// Applies, waiting for the namespace's `default` ServiceAccount pod admission needs.
fn apply_when_admitted(plane: &Plane, yaml: &str) -> Result<String> {
    let start = Instant::now();
    loop {
        match plane.kubectl(&["apply", "-f", "-"], Some(yaml)) {
            Ok(out) => return Ok(out),
            Err(e)
                if start.elapsed() < Duration::from_secs(60)
                    && e.to_string().contains("not found") =>
            {
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Writes the demo's rows and ends the current WAL segment (as `postgres`, on the pod's
/// socket) so one is archived now rather than after `archive_timeout`.
fn switch_wal(pod: Option<&Value>) -> bool {
    let sql = "CREATE TABLE IF NOT EXISTS demo(id int); INSERT INTO demo SELECT generate_series(1,1000); SELECT pg_switch_wal();";
    pod.is_some_and(|p| psql(p, sql).is_some())
}

/// Runs `sql` with psql as `postgres` on the pod's unix socket (the local node keeps it under
/// the pod's folder); its output, or `None` if psql failed.
fn psql(pod: &Value, sql: &str) -> Option<String> {
    let uid = pod["metadata"]["uid"].as_str()?;
    let pg_bin = PathBuf::from(std::env::var("PGWARDEN_PG_BIN").unwrap_or_default());
    pod_psql(&paths::state().join("demo/node"), uid, &pg_bin, sql)
}

/// `examples/local/recovery.yaml`: a second Cluster restored from `backup-example`; waits for
/// its instance to be ready and shows the rows written before the backup are there.
pub fn recovery(plane: &Plane, s3: &S3Server) -> Result<()> {
    let path = paths::root().join("examples/local/recovery.yaml");
    let yaml = std::fs::read_to_string(&path)
        .context("examples/local/recovery.yaml")?
        .replace(
            "endpointURL: \"http://127.0.0.1:9000\"",
            &format!("endpointURL: \"{}\"", s3.endpoint()),
        );
    step(
        "Cluster postgresql-restored (examples/local/recovery.yaml), bootstrap.recovery from Backup backup-example",
        || plane.kubectl(&["apply", "-f", "-"], Some(&yaml)),
    )?;
    let start = Instant::now();
    let (mut last, mut last_psql) = (String::new(), String::new());
    while start.elapsed() < WAIT {
        let pod = plane.json(&["get", "pod", "postgresql-restored-1"]);
        let cluster = plane.json(&["get", "cluster", "postgresql-restored"]);
        let ready = pod.as_ref().is_some_and(|p| {
            p["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        });
        let line = format!(
            "pod postgresql-restored-1: {} | Cluster: {}",
            pod.as_ref().map_or("absent".to_string(), |p| format!(
                "{} {}",
                p["status"]["phase"].as_str().unwrap_or("?"),
                if ready { "ready" } else { "not-ready" }
            )),
            cluster
                .as_ref()
                .and_then(|c| c["status"]["phase"].as_str())
                .unwrap_or("-")
        );
        if line != last {
            println!("demo: [{:>4.0?}] {line}", start.elapsed());
            last = line;
        }
        if let (true, Some(pod)) = (ready, pod.as_ref()) {
            // Ready accepts connections during the WAL replay too: wait for its promotion.
            let count = psql(pod, "SELECT count(*) FROM demo");
            let recovering = psql(pod, "SELECT pg_is_in_recovery()");
            let line = format!(
                "psql on postgresql-restored-1: SELECT count(*) FROM demo → {}; pg_is_in_recovery() → {}",
                count.as_deref().unwrap_or("(failed)"),
                recovering.as_deref().unwrap_or("(failed)")
            );
            if line != last_psql {
                println!("demo: [{:>4.0?}] {line}", start.elapsed());
                last_psql = line;
            }
            if recovering.as_deref() == Some("f") {
                if count.as_deref() != Some("1000") {
                    bail!("the restored Cluster does not have the demo's 1000 rows");
                }
                println!(
                    "demo: the 1000 rows written before backup-example are in the restored Cluster"
                );
                return Ok(());
            }
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    bail!("postgresql-restored-1 was not ready within {WAIT:?}")
}

/// The Backups a ScheduledBackup created, with their phases.
fn fired_backups(plane: &Plane) -> Vec<(String, String)> {
    let backups = plane.json(&["get", "backups"]).unwrap_or_default();
    backups["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|b| {
            b["metadata"]["ownerReferences"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|o| o["kind"] == "ScheduledBackup")
        })
        .map(|b| {
            let name = b["metadata"]["name"].as_str().unwrap_or_default();
            let phase = b["status"]["phase"].as_str().unwrap_or("-");
            (name.to_string(), phase.to_string())
        })
        .collect()
}

/// Why no scheduled Backup completed: the ScheduledBackup's status and its Events.
fn no_run_explained(plane: &Plane) -> String {
    let scheduled = plane
        .json(&["get", "scheduledbackup", "backup-every-minute"])
        .unwrap_or_default();
    let args = [
        "--request-timeout=20s",
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=backup-every-minute",
    ];
    let events = plane.kubectl(&args, None).unwrap_or_default();
    format!(
        "no scheduled Backup completed within {WAIT:?}; the ScheduledBackup's status: {}; its events:\n{events}",
        scheduled["status"]
    )
}

/// A ScheduledBackup firing every minute; waits for its first Backup to complete.
pub fn scheduled(plane: &Plane) -> Result<()> {
    const SCHEDULED: &str = r#"
apiVersion: postgresql.k8s.2ndq.io/v1alpha1
kind: ScheduledBackup
metadata:
  name: backup-every-minute
spec:
  schedule: "* * * * *"
  backupOwnerReference: self
  cluster:
    name: postgresql-bkp
"#;
    step(
        "ScheduledBackup backup-every-minute (\"* * * * *\")",
        || plane.kubectl(&["apply", "-f", "-"], Some(SCHEDULED)),
    )?;
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < WAIT {
        let fired = fired_backups(plane);
        let line = format!("{fired:?}");
        if line != last {
            println!(
                "demo: [{:>4.0?}] scheduled Backups: {line}",
                start.elapsed()
            );
            last = line;
        }
        if let Some((name, _)) = fired.iter().find(|(_, p)| p == "completed") {
            println!("demo: scheduled Backup {name} completed");
            println!(
                "{}",
                plane.kubectl(&["get", "scheduledbackups,backups"], None)?
            );
            return Ok(());
        }
        if let Some((name, _)) = fired.iter().find(|(_, p)| p == "failed") {
            bail!("scheduled Backup {name} failed");
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    bail!("{}", no_run_explained(plane))
}
