//! `cargo xtask demo [--once]`: the seed scenario on one machine.
//!
//! ```text
//!   setup ─► control plane ─► S3 server (MinIO) + bucket + generated key ─► local node
//!         ─► CRDs ─► pgwarden operator ─► seed manifests (Secret, Cluster, Backup)
//!         ─► wait: instance Ready · WAL archived · Backup completed ─► kubectl describe
//!         ─► ScheduledBackup "* * * * *": its first Backup completes
//!         ─► examples/local/recovery.yaml: a Cluster restored from the Backup, rows checked
//! ```
//!
//! Without `--once` the control plane is the sandbox's (`.state/sandbox`, fixed ports) and the
//! demo stays in the foreground, serving the pods, until Ctrl-C; `--once` uses a control
//! plane of its own, tears everything down and exits 0 only if every step succeeded.
//! The harness reads its programs' paths from the environment set-up produces, so the demo
//! runs itself again as a child process with that environment.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use pgwarden_tests::controlplane::{
    Bins, Isolated, agent_admission_manifest, isolated, operator_rbac_manifest, run_kubectl,
};
use pgwarden_tests::datapath::{S3Server, free_port};
use pgwarden_tests::localnode::{HostPrograms, LocalNode, Options};
use serde_json::Value;

use crate::paths;

const CHILD_ENV: &str = "PGWARDEN_DEMO_CHILD";
const BUCKET: &str = "pgwarden-demo";
const WAIT: Duration = Duration::from_secs(300);

/// Sets up, then runs the demo in a child process with the set-up's environment.
pub fn run(once: bool) -> Result<()> {
    if std::env::var_os(CHILD_ENV).is_some() {
        return demo(once);
    }
    let started = Instant::now();
    let prepared = crate::test::setup(crate::test::Binary::Build)?;
    // This very binary, even if a concurrent cargo build replaced the file during the set-up
    // (current_exe() would then name a deleted file).
    let exe = Path::new("/proc/self/exe");
    let exe = if exe.exists() {
        exe.to_path_buf()
    } else {
        std::env::current_exe()?
    };
    let mut cmd = Command::new(exe);
    cmd.arg("demo").env(CHILD_ENV, "1").envs(prepared.env);
    if once {
        cmd.arg("--once");
    }
    let status = cmd.status().context("cannot run the demo")?;
    println!("demo: wall time {:.0?}", started.elapsed());
    if !status.success() {
        bail!("the demo failed ({status})");
    }
    Ok(())
}

/// The control plane the demo talks to.
struct Plane {
    kubectl: PathBuf,
    kubeconfig: PathBuf,
    /// The operator's own user, with the rights of `deploy/operator.yaml`'s ClusterRole.
    operator_kubeconfig: PathBuf,
    _own: Option<Isolated>,
}

impl Plane {
    fn kubectl(&self, args: &[&str], input: Option<&str>) -> Result<String> {
        run_kubectl(&self.kubectl, &self.kubeconfig, args, input)
            .into_result()
            .map_err(|e| anyhow::anyhow!("kubectl {}: {e}", args.join(" ")))
    }

    /// `kubectl <args> -o json`, each request bounded: a wedged API server makes the step
    /// fail with its deadline instead of hanging the demo.
    fn json(&self, args: &[&str]) -> Option<Value> {
        let mut all = vec!["--request-timeout=20s"];
        all.extend(args);
        all.extend(["-o", "json"]);
        serde_json::from_str(&self.kubectl(&all, None).ok()?).ok()
    }
}

fn step<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let t = Instant::now();
    println!("demo: {what} ...");
    let out = f().with_context(|| format!("demo step failed: {what}"))?;
    println!("demo: {what}: done in {:.1?}", t.elapsed());
    Ok(out)
}

/// The CRDs, the operator's RBAC and the agents' admission policy, as deployed.
fn install(plane: &Plane) -> Result<String> {
    let crds = paths::root().join("crds/yaml").display().to_string();
    plane.kubectl(&["apply", "-f", &crds], None)?;
    let established = [
        "wait",
        "--for=condition=established",
        "crd",
        "--all",
        "--timeout=60s",
    ];
    plane.kubectl(&established, None)?;
    // The operator runs with the rights a deployed one has (deploy/operator.yaml).
    let rbac = operator_rbac_manifest().map_err(anyhow::Error::msg)?;
    plane.kubectl(&["apply", "-f", "-"], Some(&rbac))?;
    // The agents are held to their own Cluster's statuses, as deployed.
    let admission = agent_admission_manifest().map_err(anyhow::Error::msg)?;
    plane.kubectl(&["apply", "-f", "-"], Some(&admission))
}

fn demo(once: bool) -> Result<()> {
    let state = paths::state().join("demo");
    let plane = step("control plane", || start_plane(once))?;
    let s3 = step(
        "S3 server (MinIO) with a bucket and a generated key",
        || {
            let s3 = S3Server::start();
            s3.create_bucket(BUCKET);
            Ok(s3)
        },
    )?;
    let node = step("local node (a stand-in for a kubelet)", || {
        start_node(&plane, &state.join("node"), once)
    })?;
    step("CRDs and the operator's RBAC", || install(&plane))?;
    let operator = step("pgwarden operator", || Operator::start(&plane, &state))?;
    let result = if once {
        Ok(())
    } else {
        step("removing the objects of an earlier demo", || {
            forget_earlier(&plane)
        })
    }
    .and_then(|()| scenario(&plane, &s3, &operator))
    .and_then(|()| scheduled(&plane))
    .and_then(|()| recovery(&plane, &s3));
    if let Err(e) = &result {
        println!("demo: FAILED: {e:#}");
        println!("demo: operator log tail:\n{}", tail(&operator.log, 30));
    }
    if once {
        drop(operator);
        drop(node);
        drop(s3);
        drop(plane);
        println!("demo: torn down");
        return result;
    }
    result?;
    println!(
        "\nThe sandbox is running. In another terminal:\n  \
         export KUBECONFIG={}\n  \
         {} get clusters,backups,pods\n\
         Stop the demo with Ctrl-C (stops the node, the operator and the S3 server); \
         the control plane keeps running until `cargo xtask sandbox down`.",
        plane.kubeconfig.display(),
        plane.kubectl.display()
    );
    loop {
        std::thread::sleep(Duration::from_secs(3600));
        if !node.is_running() {
            bail!("the local node stopped");
        }
    }
}

fn start_plane(once: bool) -> Result<Plane> {
    if once {
        let cp = isolated();
        return Ok(Plane {
            kubectl: cp.bins.kubectl.clone(),
            kubeconfig: cp.kubeconfig.clone(),
            operator_kubeconfig: cp.operator_kubeconfig(),
            _own: Some(cp),
        });
    }
    crate::sandbox::run(crate::sandbox::Action::Up)?;
    Ok(Plane {
        kubectl: Bins::cached().kubectl,
        kubeconfig: paths::state().join("sandbox/admin.kubeconfig"),
        operator_kubeconfig: paths::state().join("sandbox/operator.kubeconfig"),
        _own: None,
    })
}

fn start_node(plane: &Plane, dir: &Path, fresh: bool) -> Result<LocalNode> {
    if fresh {
        let _ = std::fs::remove_dir_all(dir);
    }
    let var = |name: &str| PathBuf::from(std::env::var(name).unwrap_or_default());
    let programs = HostPrograms {
        pgwarden: var("PGWARDEN_BIN"),
        pg_bin: var("PGWARDEN_PG_BIN"),
        barman_bin: var("PGWARDEN_BARMAN_BIN"),
    };
    // The store's region: the S3 server signs for it.
    let opts = Options::for_instances(&plane.kubeconfig, dir, &programs, "us-east-1");
    LocalNode::start(opts)
}

/// `pgwarden operator`, in its own process group, stopped when dropped.
struct Operator {
    child: Child,
    log: PathBuf,
}

impl Operator {
    fn start(plane: &Plane, state: &Path) -> Result<Operator> {
        std::fs::create_dir_all(state)?;
        let log = state.join("operator.log");
        let out = std::fs::File::create(&log)?;
        let pgwarden = std::env::var("PGWARDEN_BIN").context("PGWARDEN_BIN")?;
        let policy = paths::root().join("target/policies/default.wasm");
        let child = Command::new(pgwarden)
            .args(["operator", "--default-policy"])
            .arg(&policy)
            .args(["--metrics-addr", &format!("127.0.0.1:{}", free_port())])
            // Compiled modules are cached: a debug build compiles one in about half a minute.
            .arg("--policy-cache")
            .arg(paths::cache().join("policy-modules"))
            .env("KUBECONFIG", &plane.operator_kubeconfig)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .process_group(0)
            .spawn()
            .context("cannot start the operator")?;
        let _ = pgwarden_tests::watchdog::guard_group(child.id());
        Ok(Operator { child, log })
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let pgid = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-TERM", "--", &pgid]).status();
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = Command::new("kill").args(["-KILL", "--", &pgid]).status();
        let _ = self.child.wait();
    }
}

use std::os::unix::process::CommandExt;

fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

// ---------------------------------------------------------------------------------------
// The seed scenario.

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

fn scenario(plane: &Plane, s3: &S3Server, _operator: &Operator) -> Result<()> {
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
    let socket = paths::state().join("demo/node/pods").join(uid).join("run");
    let psql = PathBuf::from(std::env::var("PGWARDEN_PG_BIN").unwrap_or_default()).join("psql");
    let out = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(psql)
        .args([
            "-h",
            &socket.display().to_string(),
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-qAtc",
            sql,
        ])
        .stdin(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// `examples/local/recovery.yaml`: a second Cluster restored from `backup-example`; waits for
/// its instance to be ready and shows the rows written before the backup are there.
fn recovery(plane: &Plane, s3: &S3Server) -> Result<()> {
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
fn scheduled(plane: &Plane) -> Result<()> {
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

/// The sandbox keeps its objects between runs: the demo starts from none of its own.
fn forget_earlier(plane: &Plane) -> Result<()> {
    plane.kubectl(
        &[
            "delete",
            "cluster/postgresql-restored",
            "scheduledbackup/backup-every-minute",
            "backup/backup-example",
            "cluster/postgresql-bkp",
            "--ignore-not-found",
            "--wait=true",
            "--timeout=120s",
        ],
        None,
    )?;
    let start = Instant::now();
    while plane.json(&["get", "pod", "postgresql-bkp-1"]).is_some() {
        if start.elapsed() > Duration::from_secs(120) {
            bail!("the earlier demo's pod postgresql-bkp-1 is still there");
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    Ok(())
}
