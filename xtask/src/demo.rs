//! `cargo xtask demo [--once]`: the seed scenario on one machine.
//!
//! ```text
//!   setup ─► control plane ─► S3 server (Garage) + bucket + generated key ─► local node
//!         ─► CRDs ─► pgwarden operator ─► seed manifests (Secret, Cluster, Backup)
//!         ─► wait: instance Ready · WAL archived · Backup completed ─► kubectl describe
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
use pgwarden_tests::controlplane::{Bins, Isolated, isolated, run_kubectl};
use pgwarden_tests::datapath::{S3Server, free_port};
use pgwarden_tests::localnode::{LocalNode, Options};
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
    let prepared = crate::test::setup()?;
    let mut cmd = Command::new(std::env::current_exe()?);
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
    _own: Option<Isolated>,
}

impl Plane {
    fn kubectl(&self, args: &[&str], input: Option<&str>) -> Result<String> {
        run_kubectl(&self.kubectl, &self.kubeconfig, args, input)
            .into_result()
            .map_err(|e| anyhow::anyhow!("kubectl {}: {e}", args.join(" ")))
    }

    fn json(&self, args: &[&str]) -> Option<Value> {
        let mut all = args.to_vec();
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

fn demo(once: bool) -> Result<()> {
    let state = paths::state().join("demo");
    let plane = step("control plane", || start_plane(once))?;
    let s3 = step(
        "S3 server (Garage) with a bucket and a generated key",
        || {
            let s3 = S3Server::start();
            s3.create_bucket(BUCKET);
            Ok(s3)
        },
    )?;
    let node = step("local node (a stand-in for a kubelet)", || {
        start_node(&plane, &state.join("node"), once)
    })?;
    step("CRDs", || {
        plane.kubectl(
            &[
                "apply",
                "-f",
                &paths::root().join("crds/yaml").display().to_string(),
            ],
            None,
        )?;
        plane.kubectl(
            &[
                "wait",
                "--for=condition=established",
                "crd",
                "--all",
                "--timeout=60s",
            ],
            None,
        )
    })?;
    let operator = step("pgwarden operator", || Operator::start(&plane, &state))?;
    let result = if once {
        Ok(())
    } else {
        step("removing the objects of an earlier demo", || {
            forget_earlier(&plane)
        })
    }
    .and_then(|()| scenario(&plane, &s3, &operator))
    .and_then(|()| scheduled(&plane));
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
            _own: Some(cp),
        });
    }
    crate::sandbox::run(crate::sandbox::Action::Up)?;
    Ok(Plane {
        kubectl: Bins::cached().kubectl,
        kubeconfig: paths::state().join("sandbox/admin.kubeconfig"),
        _own: None,
    })
}

fn start_node(plane: &Plane, dir: &Path, fresh: bool) -> Result<LocalNode> {
    if fresh {
        let _ = std::fs::remove_dir_all(dir);
    }
    let var = |name: &str| std::env::var(name).unwrap_or_default();
    let pg_bin = var("PGWARDEN_PG_BIN");
    let barman_bin = var("PGWARDEN_BARMAN_BIN");
    let mut opts = Options::new(&plane.kubeconfig, dir);
    opts.binaries = vec![("pgwarden".into(), PathBuf::from(var("PGWARDEN_BIN")))];
    opts.env = [
        ("KUBECONFIG", plane.kubeconfig.display().to_string()),
        (
            "PATH",
            format!("{pg_bin}:{barman_bin}:/usr/local/bin:/usr/bin:/bin"),
        ),
        ("PGWARDEN_PG_BIN", pg_bin.clone()),
        ("PGWARDEN_BARMAN_BIN", barman_bin.clone()),
        // Garage signs for its own region name.
        ("AWS_DEFAULT_REGION", "garage".into()),
        ("PGWARDEN_LISTEN_ADDRESSES", "{podIP}".into()),
        ("PGWARDEN_SOCKET_DIR", "{podDir}/run".into()),
        ("PGHOST", "{podDir}/run".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
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
            .env("KUBECONFIG", &plane.kubeconfig)
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

fn scenario(plane: &Plane, s3: &S3Server, _operator: &Operator) -> Result<()> {
    let yaml = manifests(s3)?;
    step(
        "seed manifests: Secret aws-creds, Cluster postgresql-bkp, Backup backup-example",
        || apply_when_admitted(plane, &yaml),
    )?;
    let mut switched = false;
    let mut last = String::new();
    let start = Instant::now();
    let mut archived = None;
    let mut completed = false;
    while start.elapsed() < WAIT {
        let pod = plane.json(&["get", "pod", "postgresql-bkp-1"]);
        let cluster = plane.json(&["get", "cluster", "postgresql-bkp"]);
        let backup = plane.json(&["get", "backup", "backup-example"]);
        let pod_line = pod.as_ref().map_or("absent".to_string(), |p| {
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
        });
        let ready = pod_line.contains(" ready");
        let archive = cluster
            .as_ref()
            .map(|c| c["status"]["archive"].clone())
            .unwrap_or(Value::Null);
        let count = archive["archivedCount"].as_i64().unwrap_or(0);
        let phase = backup
            .as_ref()
            .and_then(|b| b["status"]["phase"].as_str().map(str::to_string))
            .unwrap_or_else(|| "-".into());
        let line = format!(
            "pod postgresql-bkp-1: {pod_line} | WAL archived: {count} (last {}) | backup-example: {phase}",
            archive["lastArchivedWal"].as_str().unwrap_or("-")
        );
        if line != last {
            println!("demo: [{:>4.0?}] {line}", start.elapsed());
            last = line;
        }
        if ready && !switched {
            switched = switch_wal(pod.as_ref());
        }
        if phase == "failed" {
            let b = backup.unwrap_or_default();
            bail!("backup-example failed: {}", b["status"]);
        }
        if count > 0 {
            archived = Some(archive.clone());
        }
        completed = phase == "completed";
        if completed && archived.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    if archived.is_none() || !completed {
        bail!(
            "timed out after {WAIT:?}: WAL archived: {}, backup completed: {completed}",
            archived.is_some()
        );
    }
    println!(
        "demo: Cluster status.archive: {}",
        archived.unwrap_or_default()
    );
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

/// Ends the current WAL segment (as `postgres`, on the pod's socket) so one is archived now
/// rather than after `archive_timeout`.
fn switch_wal(pod: Option<&Value>) -> bool {
    let Some(uid) = pod.and_then(|p| p["metadata"]["uid"].as_str()) else {
        return false;
    };
    let socket = paths::state().join("demo/node/pods").join(uid).join("run");
    let psql = PathBuf::from(std::env::var("PGWARDEN_PG_BIN").unwrap_or_default()).join("psql");
    let sql = "CREATE TABLE IF NOT EXISTS demo(id int); INSERT INTO demo SELECT generate_series(1,1000); SELECT pg_switch_wal();";
    Command::new("runuser")
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
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
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
        let backups = plane.json(&["get", "backups"]).unwrap_or_default();
        let fired: Vec<(String, String)> = backups["items"]
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
                let name = b["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                (
                    name,
                    b["status"]["phase"].as_str().unwrap_or("-").to_string(),
                )
            })
            .collect();
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
    bail!("no scheduled Backup completed within {WAIT:?}")
}

/// The sandbox keeps its objects between runs: the demo starts from none of its own.
fn forget_earlier(plane: &Plane) -> Result<()> {
    plane.kubectl(
        &[
            "delete",
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
