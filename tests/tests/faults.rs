//! Faults, end to end through the local node: the real operator, agent, PostgreSQL, barman
//! and S3 server, with a process killed at the worst moment.
//!
//! - the instance agent killed while its backup runs: the Backup ends `failed` with a reason
//!   (or `completed`), never stays `running`, and a new Backup completes;
//! - the operator killed again and again while it brings a Cluster, a Backup and a
//!   ScheduledBackup up: no duplicate Pod, claim or Backup, and it converges.
//!
//! Slow (minutes). Needs `cargo xtask setup` (see `cargo xtask test`).

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use pgwarden_tests::controlplane::{ControlPlane, Namespace, with_crds};
use pgwarden_tests::datapath::{S3Server, wait_for};
use pgwarden_tests::localnode::LocalNode;
use pgwarden_tests::operator::{
    Operator, apply_when_admitted, apply_yaml, get, list, pod_is_ready, store_secret_yaml,
};
use pgwarden_tests::world::node_for;
use serde_json::Value;

const BUCKET: &str = "pgwarden-faults";
const READY: Duration = Duration::from_secs(180);
const FINAL: Duration = Duration::from_secs(240);

/// The world of one test: S3 server with a bucket, a local node, a namespace with the
/// store's Secret.
struct World<'a> {
    cp: &'a ControlPlane,
    ns: Namespace<'a>,
    s3: S3Server,
    _node: LocalNode,
    state: PathBuf,
    /// Removed when the test ends, unless `$PGWARDEN_KEEP_STATE` is set (then kept, for
    /// the pods' logs).
    _dir: Option<tempfile::TempDir>,
}

fn world(hint: &str, subnet: u8) -> World<'static> {
    let cp = with_crds();
    let ns = cp.namespace(hint);
    let s3 = S3Server::start();
    s3.create_bucket(BUCKET);
    let n = node_for(cp, &ns, "faults", subnet, &s3.credentials.region, &[]);
    apply_when_admitted(&ns, &store_secret_yaml(&s3.credentials));
    World {
        cp,
        ns,
        s3,
        _node: n.node,
        state: n.state,
        _dir: n.dir,
    }
}

impl World<'_> {
    fn cluster_yaml(&self, name: &str) -> String {
        format!(
            "apiVersion: postgresql.k8s.2ndq.io/v1alpha1\nkind: Cluster\nmetadata:\n  name: {name}\nspec:\n  instances: 1\n  backup:\n    destinationPath: s3://{BUCKET}/{ns}-{name}\n    endpointURL: {endpoint}\n    s3Credentials:\n      accessKeyId: {{name: aws-creds, key: ACCESS_KEY_ID}}\n      secretAccessKey: {{name: aws-creds, key: ACCESS_SECRET_KEY}}\n",
            ns = self.ns.name,
            endpoint = self.s3.endpoint(),
        )
    }

    fn backup(&self, name: &str, cluster: &str) {
        apply_yaml(
            &self.ns,
            &format!(
                "apiVersion: postgresql.k8s.2ndq.io/v1alpha1\nkind: Backup\nmetadata:\n  name: {name}\nspec:\n  cluster:\n    name: {cluster}\n"
            ),
        );
    }

    fn wait_pod_ready(&self, pod: &str) -> Value {
        let mut last = Value::Null;
        let ready = wait_for(READY, Duration::from_secs(1), || {
            let p = get(&self.ns, "pod", pod)?;
            last = p["status"].clone();
            pod_is_ready(&p).then_some(p)
        });
        ready.unwrap_or_else(|| panic!("pod {pod} not ready within {READY:?}; last status: {last}"))
    }

    /// Waits until Backup `name` is in a final phase; its status.
    fn wait_final(&self, name: &str) -> Value {
        let mut last = Value::Null;
        let done = wait_for(FINAL, Duration::from_secs(1), || {
            let b = get(&self.ns, "backup", name)?;
            last = b["status"].clone();
            matches!(phase(&b), "completed" | "failed").then(|| b["status"].clone())
        });
        done.unwrap_or_else(|| {
            panic!("Backup {name} still not final after {FINAL:?} (never stuck running): {last}")
        })
    }

    /// The pids of `pgwarden instance run` of `pod` on this world's node.
    fn agent_pids(&self, pod: &str) -> Vec<u32> {
        let node_dir = self.state.join("node").display().to_string();
        let want = [
            format!("POD_NAME={pod}"),
            format!("POD_NAMESPACE={}", self.ns.name),
        ];
        let mut pids = Vec::new();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let args: Vec<String> = cmdline
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            if !(args.len() >= 3 && args[0].ends_with("pgwarden") && args[1] == "instance")
                || args[2] != "run"
            {
                continue;
            }
            let environ = std::fs::read(entry.path().join("environ")).unwrap_or_default();
            let vars: Vec<String> = environ
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            let here = vars.iter().any(|v| v.contains(&node_dir));
            if here && want.iter().all(|w| vars.contains(w)) {
                pids.push(pid);
            }
        }
        pids
    }
}

fn phase(object: &Value) -> &str {
    object["status"]["phase"].as_str().unwrap_or("")
}

fn kill(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status();
}

#[test]
fn agent_killed_mid_backup_never_leaves_it_running_and_a_new_backup_completes() {
    let w = world("faults-agent", 180 + (std::process::id() % 30) as u8);
    let _op = Operator::start(w.cp, &w.ns.name);
    apply_yaml(&w.ns, &w.cluster_yaml("pg"));
    w.wait_pod_ready("pg-1");

    w.backup("interrupted", "pg");
    // The agent reports it has started the backup: kill it then, barman still running.
    let mut last = Value::Null;
    let started = wait_for(FINAL, Duration::from_millis(100), || {
        let b = get(&w.ns, "backup", "interrupted")?;
        last = b["status"].clone();
        (b["status"]["agent"]["state"] == "running").then_some(())
    });
    assert!(
        started.is_some(),
        "the agent never reported the backup running: {last}"
    );
    let pids = w.agent_pids("pg-1");
    assert!(
        !pids.is_empty(),
        "no `pgwarden instance run` of pod pg-1 found"
    );
    let killed_at = Instant::now();
    for pid in &pids {
        kill(*pid, "-KILL");
    }

    let status = w.wait_final("interrupted");
    let ended = status["phase"].as_str().unwrap_or_default();
    eprintln!(
        "Backup interrupted: {ended} after {:.1?}: {} — {}",
        killed_at.elapsed(),
        status["reason"],
        status["message"]
    );
    if ended == "completed" {
        // The restarted agent found the interrupted backup finished in the store.
        assert!(status["backupId"].is_string(), "{status}");
    }
    if ended == "failed" {
        for field in ["reason", "message"] {
            assert!(
                status[field].as_str().is_some_and(|s| !s.is_empty()),
                "a failed Backup names why ({field}): {status}"
            );
        }
    }

    // The instance comes back (restarted by the node) and takes a new backup.
    let pod = w.wait_pod_ready("pg-1");
    let restarts = pod["status"]["containerStatuses"][0]["restartCount"]
        .as_i64()
        .unwrap_or(0);
    assert!(
        restarts >= 1,
        "the killed agent's container was not restarted: {}",
        pod["status"]
    );
    w.backup("after", "pg");
    let after = w.wait_final("after");
    assert_eq!(after["phase"], "completed", "{after}");
    assert!(after["backupId"].is_string(), "{after}");
}

#[test]
fn operator_killed_mid_reconcile_leaves_no_duplicates_and_converges() {
    let w = world("faults-operator", 210 + (std::process::id() % 30) as u8);
    apply_yaml(&w.ns, &w.cluster_yaml("pg"));
    w.backup("first", "pg");
    apply_yaml(
        &w.ns,
        "apiVersion: postgresql.k8s.2ndq.io/v1alpha1\nkind: ScheduledBackup\nmetadata:\n  name: nightly\nspec:\n  schedule: \"0 0 3 * * *\"\n  immediate: true\n  backupOwnerReference: self\n  cluster:\n    name: pg\n",
    );
    // Kill the operator (SIGKILL: no clean-up of any kind) at staggered moments of its work.
    for (round, after) in [300u64, 900, 1500, 2500].into_iter().enumerate() {
        let op = Operator::start(w.cp, &w.ns.name);
        std::thread::sleep(Duration::from_millis(after));
        kill(op.pid(), "-KILL");
        let objects = snapshot(&w.ns);
        eprintln!("operator killed (round {round}, after {after} ms): {objects:?}");
        drop(op);
    }
    let op = Operator::start(w.cp, &w.ns.name);
    w.wait_pod_ready("pg-1");
    let first = w.wait_final("first");
    assert_eq!(first["phase"], "completed", "{first}");
    let scheduled: Vec<String> = backup_names(&w.ns)
        .into_iter()
        .filter(|n| n.starts_with("nightly-"))
        .collect();
    assert_eq!(
        scheduled.len(),
        1,
        "the immediate run was created once: {scheduled:?}"
    );
    let run = w.wait_final(&scheduled[0]);
    assert_eq!(run["phase"], "completed", "{run}");

    // Converged: one of each, and stays so.
    std::thread::sleep(Duration::from_secs(5));
    let objects = snapshot(&w.ns);
    assert_eq!(
        objects,
        Snapshot {
            pods: vec!["pg-1".into()],
            claims: vec!["pg-1".into()],
            backups: {
                let mut b = vec!["first".to_string(), scheduled[0].clone()];
                b.sort();
                b
            },
        },
        "operator log:\n{}",
        op.log_tail(40)
    );
    let cluster = get(&w.ns, "cluster", "pg").unwrap();
    assert_eq!(
        cluster["status"]["readyInstances"], 1,
        "{}",
        cluster["status"]
    );
}

#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    pods: Vec<String>,
    claims: Vec<String>,
    backups: Vec<String>,
}

fn names(ns: &Namespace<'_>, kind: &str) -> Vec<String> {
    let mut names: Vec<String> = list(ns, kind)
        .iter()
        .filter_map(|o| o["metadata"]["name"].as_str().map(str::to_owned))
        .collect();
    names.sort();
    names
}

fn backup_names(ns: &Namespace<'_>) -> Vec<String> {
    names(ns, "backup")
}

fn snapshot(ns: &Namespace<'_>) -> Snapshot {
    Snapshot {
        pods: names(ns, "pod"),
        claims: names(ns, "pvc"),
        backups: backup_names(ns),
    }
}

/// Wrong credentials, through the whole path: the real agent's first archive is refused by
/// the store, the agent reports it, and the Cluster says `ContinuousArchiving=False`
/// (`ArchiveFailing`) naming the cause, with a Warning Event; neither the key nor its id
/// appears in the Cluster, its Events or the operator's log.
#[test]
fn wrong_credentials_reach_the_cluster_as_a_condition_without_the_secret() {
    let w = world("faults-creds", 150 + (std::process::id() % 30) as u8);
    let op = Operator::start(w.cp, &w.ns.name);
    let c = &w.s3.credentials;
    let wrong_secret = "wrong-secret-0123456789abcdef0123";
    apply_yaml(
        &w.ns,
        &format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: bad-creds\nstringData:\n  ACCESS_KEY_ID: {}\n  ACCESS_SECRET_KEY: {wrong_secret}\n",
            c.access_key_id
        ),
    );
    apply_yaml(
        &w.ns,
        &w.cluster_yaml("pg")
            .replace("name: aws-creds", "name: bad-creds"),
    );
    w.wait_pod_ready("pg-1");
    // Nothing archived yet, and the Cluster does not pretend otherwise.
    let waiting = wait_for(READY, Duration::from_secs(1), || {
        let cluster = get(&w.ns, "cluster", "pg")?;
        let reason = cluster["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == "ContinuousArchiving")?["reason"]
            .clone();
        (reason == "WaitingForFirstArchive").then_some(())
    });
    assert!(waiting.is_some(), "ContinuousArchiving before any archive");
    // A backup: barman is refused too, and PostgreSQL switches WAL, which the agent then
    // fails to archive.
    w.backup("refused", "pg");
    let backup = w.wait_final("refused");
    assert_eq!(backup["phase"], "failed", "{backup}");
    assert!(
        backup["message"]
            .as_str()
            .is_some_and(|m| m.contains("refused the credentials")),
        "{backup}"
    );
    let mut last = Value::Null;
    let failing = wait_for(READY, Duration::from_secs(1), || {
        let cluster = get(&w.ns, "cluster", "pg")?;
        last = cluster["status"].clone();
        let archiving = cluster["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == "ContinuousArchiving")?
            .clone();
        (archiving["reason"] == "ArchiveFailing").then_some(archiving)
    })
    .unwrap_or_else(|| panic!("the Cluster never reported ArchiveFailing: {last}"));
    assert_eq!(failing["status"], "False");
    let message = failing["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("the object store refused the credentials"),
        "{message}"
    );
    let events =
        w.cp.kubectl(&[
            "get",
            "events.events.k8s.io",
            "-n",
            &w.ns.name,
            "-o",
            "json",
        ])
        .unwrap();
    assert!(
        events.contains("refused the credentials"),
        "no Event says why: {events}"
    );
    let cluster =
        w.ns.kubectl(&["get", "cluster,backup", "-o", "yaml"])
            .into_result()
            .unwrap();
    let operator_log = std::fs::read_to_string(&op.log).unwrap_or_default();
    for (what, text) in [
        ("the Cluster and Backup", &cluster),
        ("the Events", &events),
        ("the operator's log", &operator_log),
    ] {
        for secret in [wrong_secret, &c.access_key_id, &c.secret_access_key] {
            assert!(!text.contains(secret), "a credential leaked into {what}");
        }
    }
}
