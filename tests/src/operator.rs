//! The operator under test: `pgwarden operator` started as a process against a control plane
//! of [`crate::controlplane`], limited to one namespace, on a free `/metrics` port; stopped
//! (its whole process group) when dropped, also when the test panics, and by a watchdog when
//! the test binary dies without unwinding.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use serde_json::{Value, json};

use crate::controlplane::{ControlPlane, Namespace, stop_pids, workspace_root};

/// Env naming the operator binary (default `<workspace>/target/debug/pgwarden`).
pub const BIN_ENV: &str = "PGWARDEN_BIN";
/// Env naming the folder of built policies (default `<workspace>/target/policies`).
pub const POLICY_DIR_ENV: &str = "PGWARDEN_POLICY_DIR";

/// The `pgwarden` binary; panics naming the command that builds it.
pub fn binary() -> PathBuf {
    let path = std::env::var_os(BIN_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/debug/pgwarden"));
    assert!(
        path.is_file(),
        "the operator binary {} is missing: run `cargo build -p pgwarden` (or set ${BIN_ENV})",
        path.display()
    );
    path
}

/// A built policy module, e.g. `policy("production")`; panics naming the command that builds it.
pub fn policy(name: &str) -> PathBuf {
    let dir = std::env::var_os(POLICY_DIR_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/policies"));
    let path = dir.join(format!("{name}.wasm"));
    assert!(
        path.is_file(),
        "the policy module {} is missing: run `cargo xtask build-policies` (or set ${POLICY_DIR_ENV})",
        path.display()
    );
    path
}

thread_local! {
    /// Flags of the next operator this thread starts ([`Operator::start_with_args`]): per
    /// thread, as each test runs on its own, so the start functions keep their signatures.
    static EXTRA_ARGS: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
    /// Whether the next operator this thread starts is bare: no `--default-policy`, so the
    /// module built into the binary decides ([`Operator::start_bare`]).
    static BARE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// A running `pgwarden operator`.
pub struct Operator {
    child: Child,
    /// Where `/metrics`, `/healthz`, `/readyz` and `/leader` listen.
    pub metrics_addr: String,
    /// Its stdout and stderr.
    pub log: PathBuf,
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Operator {
    /// Starts the operator on `cp`, reconciling `namespace` only, with the default policy,
    /// and waits until it leads (`/leader`).
    pub fn start(cp: &ControlPlane, namespace: &str) -> Operator {
        Self::try_start(cp, Some(namespace))
            .unwrap_or_else(|e| panic!("cannot start the operator: {e:#}"))
    }

    /// [`Operator::start`] with more flags (e.g. `--policy-allow-http`).
    pub fn start_with_args(cp: &ControlPlane, namespace: &str, args: &[&str]) -> Operator {
        EXTRA_ARGS.set(args.iter().map(|a| a.to_string()).collect());
        let operator = Self::try_start(cp, Some(namespace));
        EXTRA_ARGS.take();
        operator.unwrap_or_else(|e| panic!("cannot start the operator: {e:#}"))
    }

    /// [`Operator::start_with_args`] without `--default-policy`: as a newcomer runs it, with
    /// the default policy built into the binary.
    pub fn start_bare(cp: &ControlPlane, namespace: &str, args: &[&str]) -> Operator {
        BARE.set(true);
        EXTRA_ARGS.set(args.iter().map(|a| a.to_string()).collect());
        let operator = Self::try_start(cp, Some(namespace));
        EXTRA_ARGS.take();
        BARE.set(false);
        operator.unwrap_or_else(|e| panic!("cannot start the operator: {e:#}"))
    }

    /// Starts the operator (every namespace when `namespace` is `None`).
    pub fn try_start(cp: &ControlPlane, namespace: Option<&str>) -> Result<Operator> {
        Self::start_replica(cp, namespace, None, true)
    }

    /// Starts a replica: with `lease` naming a Lease other replicas share (default: one of its
    /// own), waiting until it leads only when `wait_ready`.
    pub fn start_replica(
        cp: &ControlPlane,
        namespace: Option<&str>,
        lease: Option<&str>,
        wait_ready: bool,
    ) -> Result<Operator> {
        Self::start_replica_via(cp, namespace, lease, wait_ready, &cp.operator_kubeconfig())
    }

    /// [`Operator::start_replica`] reaching the API server through `kubeconfig` (e.g. one of a
    /// [`crate::stallproxy::StallProxy`]), with the operator's rights.
    pub fn start_replica_via(
        cp: &ControlPlane,
        namespace: Option<&str>,
        lease: Option<&str>,
        wait_ready: bool,
        kubeconfig: &std::path::Path,
    ) -> Result<Operator> {
        // One start at a time: the first compiles the default policy into the shared cache
        // (tens of seconds in a debug build), the others then load it from there.
        static STARTING: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one = STARTING.lock().unwrap_or_else(|e| e.into_inner());
        let port = free_port()?;
        let metrics_addr = format!("127.0.0.1:{port}");
        let label = namespace.unwrap_or("all");
        let logs = cp.dir.join("operators");
        std::fs::create_dir_all(&logs)?;
        let log = logs.join(format!("{label}-{port}.log"));
        let out = std::fs::File::create(&log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        let mut cmd = Command::new(binary());
        cmd.arg("operator")
            .args(["--listen-address", &metrics_addr]);
        if !BARE.get() {
            cmd.arg("--default-policy").arg(policy("default"));
        }
        // Compiling a module takes long in a debug build: once per digest for all tests.
        cmd.arg("--policy-cache")
            .arg(workspace_root().join("target/tmp/operator-policy-cache"))
            .args([
                "--lease-name",
                &lease.map_or_else(|| format!("pgwarden-{label}-{port}"), str::to_string),
            ])
            .args(["--identity", &format!("test-{port}")])
            .args(EXTRA_ARGS.with_borrow(Vec::clone))
            // Not admin: the user bound to deploy/operator.yaml's ClusterRole.
            .env("KUBECONFIG", kubeconfig)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            // No NO_COLOR: the log is a file, and the operator colours a terminal only.
            .env_remove("NO_COLOR")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .process_group(0);
        if let Some(ns) = namespace {
            cmd.args(["--watch-namespace", ns, "--lease-namespace", ns]);
        }
        let child = cmd.spawn().context("cannot spawn pgwarden operator")?;
        crate::watchdog::guard_group(child.id()).context("cannot start the operator watchdog")?;
        let mut operator = Operator {
            child,
            metrics_addr,
            log,
        };
        if wait_ready {
            operator.wait_ready(LOAD_WAIT)?;
        }
        Ok(operator)
    }

    /// Sends SIGTERM (what Kubernetes sends a pod it stops) and waits for the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status()?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("the operator did not stop within {timeout:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The operator's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until it leads and serves (`/leader` 200; `/readyz` is 200 for a standby too).
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("the operator exited ({status}):\n{}", self.log_tail(40));
            }
            if self.get("/leader").is_ok_and(|(code, _)| code == 200) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the operator was not ready within {timeout:?}:\n{}",
                    self.log_tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A plain HTTP GET on the metrics listener: status code and body.
    pub fn get(&self, path: &str) -> Result<(u16, String)> {
        let mut stream = TcpStream::connect(&self.metrics_addr)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        // One write: the server answers what its first read holds.
        let request = format!(
            "GET {path} HTTP/1.1\r\nhost: {}\r\nconnection: close\r\n\r\n",
            self.metrics_addr
        );
        stream.write_all(request.as_bytes())?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        let code = response
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Ok((code, body))
    }

    /// The `/metrics` text.
    pub fn metrics(&self) -> String {
        self.get("/metrics")
            .map(|(_, body)| body)
            .unwrap_or_else(|e| panic!("cannot read /metrics: {e}"))
    }

    /// The sum of every sample of `name` whose labels contain `labels` (e.g. `kind="Cluster"`).
    pub fn metric(&self, name: &str, labels: &str) -> f64 {
        metric_sum(&self.metrics(), name, labels)
    }

    /// Peak resident set size in KiB (`VmHWM`).
    pub fn peak_rss_kib(&self) -> Option<u64> {
        status_field(self.pid(), "VmHWM:")
    }

    /// The last `n` lines of the operator's log.
    pub fn log_tail(&self, n: usize) -> String {
        crate::controlplane::log_tail(&self.log, n)
    }
}

/// The sum of every sample of `name` whose label set contains `labels`.
pub fn metric_sum(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
            (metric == name && rest.contains(labels)).then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

fn status_field(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

impl Drop for Operator {
    fn drop(&mut self) {
        let pid = self.child.id();
        if self.child.try_wait().ok().flatten().is_none() {
            // SIGTERM to the group, a grace period, then SIGKILL.
            let _ = Command::new("kill")
                .args(["-TERM", "--", &format!("-{pid}")])
                .stderr(Stdio::null())
                .status();
            stop_pids(&[pid], Duration::from_secs(5));
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "operator log ({}):\n{}",
                self.log.display(),
                self.log_tail(30)
            );
        }
    }
}

/// Polls `probe` every 200 ms until it returns `Some`, or panics after `timeout` with `what`
/// and the last value seen by `last`.
pub fn eventually<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match probe() {
            Ok(value) => return value,
            Err(last) if Instant::now() > deadline => {
                panic!("{what}: not so within {timeout:?}; last seen: {last}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// A file of `tests/fixtures/operator/`.
pub fn fixture(name: &str) -> PathBuf {
    workspace_root().join("tests/fixtures/operator").join(name)
}

/// A file of `examples/seed/`.
pub fn seed(name: &str) -> PathBuf {
    workspace_root().join("examples/seed").join(name)
}

// ---------------------------------------------------------------------------------------
// kubectl helpers of the operator tests: every wait polls with a timeout.

/// How long the operator has to get something done.
pub const WAIT: Duration = Duration::from_secs(60);
/// How long compiling a policy module may take (a debug build, a cold cache, a busy machine).
pub const LOAD_WAIT: Duration = Duration::from_secs(240);

/// `kubectl apply -f <path>` in the namespace.
pub fn apply_file(ns: &Namespace<'_>, path: &std::path::Path) {
    let out = ns.kubectl(&["apply", "-f", &path.display().to_string()]);
    assert!(
        out.success,
        "kubectl apply -f {} failed: {}",
        path.display(),
        out.stderr
    );
}

/// `kubectl apply -f -` of `yaml` in the namespace.
pub fn apply_yaml(ns: &Namespace<'_>, yaml: &str) {
    let out = ns.kubectl_with_input(&["apply", "-f", "-"], Some(yaml));
    assert!(out.success, "kubectl apply failed: {}\n{yaml}", out.stderr);
}

/// A Cluster like the seed's (`backup` with the seed's credentials and WAL settings) or one
/// without `spec.backup`, optionally naming a ReconcilePolicy.
pub fn cluster_yaml(name: &str, policy: Option<&str>, backup: bool) -> String {
    let mut yaml = format!(
        "apiVersion: postgresql.k8s.2ndq.io/v1alpha1\nkind: Cluster\nmetadata:\n  name: {name}\nspec:\n"
    );
    if let Some(policy) = policy {
        yaml.push_str(&format!("  policy: {policy}\n"));
    }
    if backup {
        yaml.push_str(
            "  backup:\n    destinationPath: s3://BUCKET_NAME/path/to/folder\n    s3Credentials:\n      accessKeyId: {name: aws-creds, key: ACCESS_KEY_ID}\n      secretAccessKey: {name: aws-creds, key: ACCESS_SECRET_KEY}\n    wal:\n      encryption: AES256\n",
        );
    }
    yaml
}

/// The object as JSON, or `None` when it does not exist.
pub fn get(ns: &Namespace<'_>, kind: &str, name: &str) -> Option<Value> {
    let out = ns.kubectl(&["get", kind, name, "-o", "json", "--ignore-not-found"]);
    assert!(out.success, "kubectl get {kind} {name}: {}", out.stderr);
    (!out.stdout.trim().is_empty()).then(|| serde_json::from_str(&out.stdout).unwrap())
}

/// The items of a kind in the namespace.
pub fn list(ns: &Namespace<'_>, kind: &str) -> Vec<Value> {
    let out = ns.kubectl(&["get", kind, "-o", "json"]);
    assert!(out.success, "kubectl get {kind}: {}", out.stderr);
    let list: Value = serde_json::from_str(&out.stdout).unwrap();
    list["items"].as_array().cloned().unwrap_or_default()
}

/// Waits until the object exists.
/// The pods the Service `service` selects (its selector over the pods' labels: what a
/// kube-proxy would send to; the local node has none). None while the Service does not exist.
pub fn selected_pods(ns: &Namespace<'_>, service: &str) -> Vec<Value> {
    let Some(svc) = get(ns, "service", service) else {
        return Vec::new();
    };
    let selector = svc["spec"]["selector"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    list(ns, "pods")
        .into_iter()
        .filter(|p| (selector.iter()).all(|(k, v)| p["metadata"]["labels"][k.as_str()] == *v))
        .collect()
}

pub fn wait_get(ns: &Namespace<'_>, kind: &str, name: &str) -> Value {
    eventually(&format!("{kind} {}/{name} exists", ns.name), WAIT, || {
        get(ns, kind, name).ok_or_else(|| "absent".to_string())
    })
}

/// Waits until the object is gone.
pub fn wait_gone(ns: &Namespace<'_>, kind: &str, name: &str) {
    eventually(
        &format!("{kind} {}/{name} is deleted", ns.name),
        WAIT,
        || match get(ns, kind, name) {
            None => Ok(()),
            Some(o) => Err(o["metadata"].to_string()),
        },
    )
}

/// Waits until `test` holds of the object.
pub fn wait_json(
    ns: &Namespace<'_>,
    kind: &str,
    name: &str,
    what: &str,
    test: impl Fn(&Value) -> bool,
) -> Value {
    eventually(
        &format!("{kind} {}/{name}: {what}", ns.name),
        WAIT,
        || match get(ns, kind, name) {
            Some(o) if test(&o) => Ok(o),
            Some(o) => Err(o["status"].to_string()),
            None => Err("absent".into()),
        },
    )
}

/// A status condition: (status, reason, message).
pub fn condition(object: &Value, type_: &str) -> Option<(String, String, String)> {
    let conditions = object["status"]["conditions"].as_array()?;
    let c = conditions.iter().find(|c| c["type"] == type_)?;
    let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
    Some((s("status"), s("reason"), s("message")))
}

/// Waits until the condition has this status.
pub fn wait_condition(
    ns: &Namespace<'_>,
    kind: &str,
    name: &str,
    type_: &str,
    status: &str,
) -> Value {
    wait_json(ns, kind, name, &format!("{type_}={status}"), |o| {
        condition(o, type_).is_some_and(|c| c.0 == status)
    })
}

/// Waits until the condition's message contains `message`.
pub fn wait_condition_message(
    ns: &Namespace<'_>,
    kind: &str,
    name: &str,
    type_: &str,
    message: &str,
) -> Value {
    wait_json(ns, kind, name, &format!("{type_} says {message:?}"), |o| {
        condition(o, type_).is_some_and(|c| c.2.contains(message))
    })
}

/// Waits until the object's `status.observedGeneration` is its generation and
/// `PolicyApplied` is True.
pub fn wait_converged(ns: &Namespace<'_>, kind: &str, name: &str) -> Value {
    wait_json(
        ns,
        kind,
        name,
        "observedGeneration current and PolicyApplied=True",
        |o| {
            o["status"]["observedGeneration"] == o["metadata"]["generation"]
                && condition(o, "PolicyApplied").is_some_and(|c| c.0 == "True")
        },
    )
}

/// The Events (events.k8s.io) about `regarding` in a namespace: (reason, note). Events about
/// cluster-scoped objects (ReconcilePolicy) are in `default`.
pub fn events_in(cp: &ControlPlane, namespace: &str, regarding: &str) -> Vec<(String, String)> {
    let out = cp
        .kubectl(&["get", "events.events.k8s.io", "-n", namespace, "-o", "json"])
        .unwrap_or_else(|e| panic!("kubectl get events: {e}"));
    let list: Value = serde_json::from_str(&out).unwrap();
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["regarding"]["name"] == regarding)
        .map(|e| {
            (
                e["reason"].as_str().unwrap_or_default().to_string(),
                e["note"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// Waits for an Event about `regarding` in the test's namespace with this reason whose note
/// contains `note`.
pub fn wait_event(ns: &Namespace<'_>, regarding: &str, reason: &str, note: &str) {
    wait_event_in(ns.cp, &ns.name, regarding, reason, note)
}

/// [`wait_event`] in any namespace.
pub fn wait_event_in(
    cp: &ControlPlane,
    namespace: &str,
    regarding: &str,
    reason: &str,
    note: &str,
) {
    eventually(
        &format!("an Event {reason} about {regarding} saying {note:?}"),
        WAIT,
        || {
            let all = events_in(cp, namespace, regarding);
            if all.iter().any(|(r, n)| r == reason && n.contains(note)) {
                Ok(())
            } else {
                Err(format!("{all:?}"))
            }
        },
    )
}

/// Waits until the metric exceeds `floor`; returns its value.
pub fn wait_metric_above(op: &Operator, name: &str, labels: &str, floor: f64) -> f64 {
    eventually(&format!("{name}{{{labels}}} above {floor}"), WAIT, || {
        let v = op.metric(name, labels);
        if v > floor { Ok(v) } else { Err(v.to_string()) }
    })
}

/// Server-side apply of a status body (`apiVersion`, `kind`, `metadata.name`, `status`) with
/// a field manager, as the instance agent does.
pub fn server_side_apply_status(ns: &Namespace<'_>, body: &Value, manager: &str) {
    let out = ns.kubectl_with_input(
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "--subresource=status",
            &format!("--field-manager={manager}"),
            "-f",
            "-",
        ],
        Some(&body.to_string()),
    );
    assert!(
        out.success,
        "server-side apply of {body} failed: {}",
        out.stderr
    );
}

/// Asserts `kubectl describe` shows each `Label:  value` line.
pub fn assert_describe(describe: &str, lines: &[(&str, &str)]) {
    for (label, value) in lines {
        let found = describe.lines().any(|l| {
            let l = l.trim_start();
            l.strip_prefix(label)
                .is_some_and(|rest| rest.trim() == *value)
        });
        assert!(
            found,
            "kubectl describe lacks `{label}  {value}`:\n{describe}"
        );
    }
}

/// The current UTC time, RFC 3339 seconds.
pub fn now_rfc3339() -> String {
    let out = Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .expect("date");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A Backup of `cluster` with the status of one taken (or failed) `days_ago`, as the operator
/// and its agent would have left it; `None` id: it failed before barman made a backup.
pub fn past_backup(
    ns: &Namespace<'_>,
    name: &str,
    cluster: &str,
    days_ago: i64,
    backup_id: Option<&str>,
) {
    apply_yaml(
        ns,
        &format!(
            "apiVersion: postgresql.k8s.2ndq.io/v1alpha1\nkind: Backup\nmetadata:\n  name: {name}\nspec:\n  cluster:\n    name: {cluster}\n"
        ),
    );
    // The operator's first word first (pending), so it does not land after the history.
    wait_json(ns, "backup", name, "phase set", |b| {
        b["status"]["phase"].is_string()
    });
    let at = |d: i64| {
        (chrono::Utc::now() - chrono::Duration::days(d))
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    };
    let mut status = json!({
        "phase": if backup_id.is_some() { "completed" } else { "failed" },
        "startedAt": at(days_ago), "stoppedAt": at(days_ago),
        "destinationPath": "s3://BUCKET_NAME/path/to/folder", "serverName": cluster,
        "instanceID": {"podName": format!("{cluster}-1")},
    });
    if let Some(id) = backup_id {
        status["backupId"] = json!(id);
    }
    server_side_apply_status(
        ns,
        &json!({"apiVersion": "postgresql.k8s.2ndq.io/v1alpha1", "kind": "Backup",
                "metadata": {"name": name}, "status": status}),
        "test-history",
    );
}

// ---------------------------------------------------------------------------------------
// A tiny HTTP server for `ReconcilePolicy.spec.module.url` (test support, std::net only).

/// What the module server answers on a path.
#[derive(Clone)]
pub enum Served {
    /// 200 with these bytes.
    Bytes(Vec<u8>),
    /// 200 declaring this Content-Length, then closing after a few bytes.
    Declared(u64),
}

/// An HTTP/1.1 server on 127.0.0.1 serving fixed answers by path (404 otherwise), one thread
/// per connection; stopped when dropped.
pub struct ModuleServer {
    pub addr: std::net::SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    hits: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl ModuleServer {
    pub fn start(routes: Vec<(&str, Served)>) -> ModuleServer {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let listener = TcpListener::bind("127.0.0.1:0").expect("cannot bind the module server");
        let addr = listener.local_addr().unwrap();
        let routes: Arc<std::collections::HashMap<String, Served>> = Arc::new(
            routes
                .into_iter()
                .map(|(p, s)| (p.to_string(), s))
                .collect(),
        );
        let (stop, hits) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicUsize::new(0)),
        );
        let (stop2, hits2) = (stop.clone(), hits.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let (Ok(stream), routes) = (stream, routes.clone()) else {
                    continue;
                };
                hits2.fetch_add(1, Ordering::SeqCst);
                std::thread::spawn(move || serve_one(stream, &routes));
            }
        });
        ModuleServer { addr, stop, hits }
    }

    /// `http://127.0.0.1:PORT/path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Requests served so far.
    pub fn hits(&self) -> usize {
        self.hits.load(std::sync::atomic::Ordering::SeqCst)
    }
}

fn serve_one(mut stream: TcpStream, routes: &std::collections::HashMap<String, Served>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&request);
    let path = text.split_whitespace().nth(1).unwrap_or("/").to_string();
    let _ = match routes.get(&path) {
        Some(Served::Bytes(bytes)) => stream
            .write_all(
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/wasm\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    bytes.len()
                )
                .as_bytes(),
            )
            .and_then(|_| stream.write_all(bytes)),
        Some(Served::Declared(length)) => stream.write_all(
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/wasm\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n\0asm"
            )
            .as_bytes(),
        ),
        None => stream.write_all(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        ),
    };
}

impl Drop for ModuleServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }
}

/// `kubectl apply`, waiting for the namespace's `default` ServiceAccount that admission needs.
pub fn apply_when_admitted(ns: &Namespace<'_>, yaml: &str) {
    let mut last = String::new();
    let ok =
        crate::datapath::wait_for(
            Duration::from_secs(60),
            Duration::from_millis(500),
            || match ns
                .kubectl_with_input(&["apply", "-f", "-"], Some(yaml))
                .into_result()
            {
                Ok(_) => Some(()),
                Err(e) => {
                    last = e.to_string();
                    None
                }
            },
        );
    assert!(ok.is_some(), "kubectl apply failed: {last}\n{yaml}");
}

/// The seed's `aws-creds` Secret holding `creds`.
pub fn store_secret_yaml(creds: &crate::datapath::Credentials) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: aws-creds\nstringData:\n  ACCESS_KEY_ID: {}\n  ACCESS_SECRET_KEY: {}\n",
        creds.access_key_id, creds.secret_access_key
    )
}

/// Deletes the cluster-scoped ReconcilePolicy when the test ends, however it ends.
pub struct PolicyGuard<'a>(pub &'a Namespace<'a>, pub String);

impl Drop for PolicyGuard<'_> {
    fn drop(&mut self) {
        let _ = self
            .0
            .cp
            .kubectl(&["delete", "reconcilepolicy", &self.1, "--wait=false"]);
    }
}

/// A ReconcilePolicy whose module is the file `file` on the operator's host, with an optional
/// `limits.timeoutMillis`.
pub fn file_policy_yaml(name: &str, file: &str, timeout_millis: Option<u32>) -> String {
    let mut yaml = format!(
        "apiVersion: postgresql.k8s.2ndq.io/v1alpha1\nkind: ReconcilePolicy\nmetadata:\n  name: {name}\nspec:\n  module:\n    file: {file}\n"
    );
    if let Some(ms) = timeout_millis {
        yaml.push_str(&format!("  limits:\n    timeoutMillis: {ms}\n"));
    }
    yaml
}

/// Whether a pod object (as JSON) has condition Ready True.
pub fn pod_is_ready(pod: &serde_json::Value) -> bool {
    (pod["status"]["conditions"].as_array().into_iter().flatten())
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

/// Sets pod `pod`'s status as a kubelet would for a started `postgres` container, Ready or
/// not (the control plane of the tests runs no kubelet).
pub fn mark_pod(ns: &Namespace<'_>, pod: &str, ready: bool) {
    let now = now_rfc3339();
    let status = json!({"status": {
        "phase": "Running",
        "podIP": "10.0.0.10",
        "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }, "lastTransitionTime": now}],
        "containerStatuses": [{"name": "postgres", "ready": ready, "restartCount": 0, "image": "pgwarden", "imageID": "",
            "started": true, "state": {"running": {"startedAt": now}}}],
    }});
    let patch = status.to_string();
    let args = [
        "patch",
        "pod",
        pod,
        "--subresource=status",
        "--type=merge",
        "-p",
        &patch,
    ];
    let out = ns.kubectl(&args);
    assert!(out.success, "cannot mark pod {pod}: {}", out.stderr);
}

/// The object with its managedFields (`kubectl get` leaves them out unless asked).
pub fn with_managed_fields(ns: &Namespace<'_>, kind: &str, name: &str) -> Value {
    let out = ns.kubectl(&["get", kind, name, "-o", "json", "--show-managed-fields"]);
    assert!(out.success, "{}", out.stderr);
    serde_json::from_str(&out.stdout).unwrap()
}

/// The managedFields entries of `object` whose `f:status` fields `owns` accepts: (manager,
/// operation).
fn status_owners(object: &Value, owns: impl Fn(&Value) -> bool) -> Vec<(String, String)> {
    let entries = object["metadata"]["managedFields"].as_array();
    (entries.into_iter().flatten())
        .filter(|e| owns(&e["fieldsV1"]["f:status"]))
        .map(|e| {
            let text = |k: &str| e[k].as_str().unwrap_or_default().to_string();
            (text("manager"), text("operation"))
        })
        .collect()
}

/// The managedFields entries of `object` that own `status.<field>`: (manager, operation).
pub fn owners(object: &Value, field: &str) -> Vec<(String, String)> {
    let key = format!("f:{field}");
    status_owners(object, |status| status.get(&key).is_some())
}

/// The managedFields entries of `object` that own its condition `type_` (an entry of the
/// list map `status.conditions`, keyed by type): (manager, operation).
pub fn condition_owners(object: &Value, type_: &str) -> Vec<(String, String)> {
    let key = format!("k:{}", json!({"type": type_}));
    status_owners(object, |status| status["f:conditions"].get(&key).is_some())
}
