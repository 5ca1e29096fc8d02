//! Settings that take effect, and only those (issue 10, items 5 and 6), end to end through
//! the local node: the real operator, agent, PostgreSQL, barman and S3 server.
//!
//! - quantities the API server rewrites (`cpu: "0.5"` is stored as `500m`) never get the
//!   instance pod deleted: its uid stays for a minute;
//! - a real change of the pod template replaces the pod once, and then it stays;
//! - a change waits while a Backup runs on the pod (the Cluster's `PodsUpToDate` condition
//!   names it) and goes ahead once the Backup has ended;
//! - removing `spec.backup` removes the archive settings and the credentials, and stops
//!   archiving.
//!
//! One instance per Cluster here: the one-at-a-time rule over several pods is proven by
//! `operator::rollout`'s unit tests.
//!
//! Slow (minutes). Needs `cargo xtask setup` (see `cargo xtask test`).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pgwarden_tests::datapath::{deps, wait_for};
use pgwarden_tests::operator::{apply_yaml, condition, get, pod_is_ready};
use pgwarden_tests::world::{StoreWorld, host_store_world};
use serde_json::Value;

const BUCKET: &str = "pgwarden-rollout";
const READY: Duration = Duration::from_secs(180);
const CLUSTER: &str = "pg";
const POD: &str = "pg-1";

/// The shared world (store, node, Secret, operator) with this test's own steps.
struct World<'a>(StoreWorld<'a>);

impl<'a> std::ops::Deref for World<'a> {
    type Target = StoreWorld<'a>;
    fn deref(&self) -> &StoreWorld<'a> {
        &self.0
    }
}

fn world(hint: &str, subnet: u8) -> World<'static> {
    // From the host's binaries until the open defect parameters.rs describes is fixed: from
    // the instance image, removing spec.backup (archive_mode, a start-only parameter) made
    // the agent restart PostgreSQL, that restart did not end, and the isolation guard fenced
    // the primary read-only ("cannot execute INSERT in a read-only transaction", 2026-12-01).
    World(host_store_world(hint, "roll", subnet, BUCKET))
}

impl World<'_> {
    /// The Cluster, with `resources` (YAML flow map) and with or without `spec.backup`.
    fn cluster_yaml(&self, resources: Option<&str>, backup: bool) -> String {
        let mut yaml = format!(
            "apiVersion: postgresql.k8s.2ndq.io/v1alpha1\nkind: Cluster\nmetadata:\n  name: {CLUSTER}\nspec:\n  instances: 1\n"
        );
        if let Some(resources) = resources {
            yaml.push_str(&format!("  resources: {resources}\n"));
        }
        if backup {
            yaml.push_str(&format!(
                "  backup:\n    destinationPath: s3://{BUCKET}/{ns}\n    endpointURL: {endpoint}\n    s3Credentials:\n      accessKeyId: {{name: aws-creds, key: ACCESS_KEY_ID}}\n      secretAccessKey: {{name: aws-creds, key: ACCESS_SECRET_KEY}}\n",
                ns = self.ns.name,
                endpoint = self.s3.endpoint(),
            ));
        }
        yaml
    }

    fn pod(&self) -> Option<Value> {
        get(&self.ns, "pod", POD)
    }

    fn cluster(&self) -> Value {
        get(&self.ns, "cluster", CLUSTER).expect("the Cluster exists")
    }

    /// Waits until the instance pod is ready (and, with `not`, is another pod than that
    /// uid); the pod.
    fn wait_pod_ready(&self, not: Option<&str>) -> Value {
        let mut last = Value::Null;
        let ready = wait_for(READY, Duration::from_millis(500), || {
            let p = self.pod()?;
            last = p["status"].clone();
            let other = not.is_none_or(|uid| uid != uid_of(&p));
            (other && pod_is_ready(&p)).then_some(p)
        });
        ready.unwrap_or_else(|| {
            panic!(
                "pod {POD} (not uid {not:?}) not ready within {READY:?}; last status: {last}\noperator log:\n{}",
                self.op.log_tail(30)
            )
        })
    }

    /// Waits until the Cluster's condition `type_` satisfies `test`; the condition.
    fn wait_condition(
        &self,
        type_: &str,
        what: &str,
        test: impl Fn(&(String, String, String)) -> bool,
    ) -> (String, String, String) {
        let mut last = None;
        let found = wait_for(READY, Duration::from_millis(500), || {
            let c = condition(&self.cluster(), type_);
            last = c.clone();
            c.filter(&test)
        });
        found.unwrap_or_else(|| panic!("{type_}: {what} not so within {READY:?}; last: {last:?}"))
    }

    /// Runs `sql` with psql as `postgres` on the pod's socket (under the pod's folder).
    fn psql(&self, pod: &Value, sql: &str) -> String {
        let socket = self.state.join("node/pods").join(uid_of(pod)).join("run");
        let out = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(deps().pg_bin.join("psql"))
            .args(["-X", "-qAt", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&socket)
            .args(["-U", "postgres", "-d", "postgres", "-c", sql])
            .stdin(Stdio::null())
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql {sql:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// The WAL segments in the store (names only, without compression suffixes).
    fn archived_wal(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .s3
            .list(BUCKET, &format!("{}/{CLUSTER}/wals/", self.ns.name))
            .iter()
            .filter_map(|key| key.rsplit('/').next())
            .map(|name| name.split('.').next().unwrap_or(name).to_string())
            .filter(|name| name.len() == 24)
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// The pids of this node's processes whose command line has a word ending in `program`.
    fn pids_of(&self, program: &str) -> Vec<u32> {
        let node_dir = self.state.join("node").display().to_string();
        let mut pids = Vec::new();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let runs = cmdline
                .split(|b| *b == 0)
                .any(|a| String::from_utf8_lossy(a).ends_with(program));
            let environ = std::fs::read(entry.path().join("environ")).unwrap_or_default();
            let here = String::from_utf8_lossy(&environ).contains(&node_dir);
            if runs && here {
                pids.push(pid);
            }
        }
        pids
    }
}

fn uid_of(object: &Value) -> String {
    object["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn requests(pod: &Value) -> Value {
    pod["spec"]["containers"][0]["resources"]["requests"].clone()
}

fn signal(pids: &[u32], signal: &str) {
    for pid in pids {
        let _ = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status();
    }
}

/// Watches the instance pod for `period`: every uid it had, in order.
fn uids_over(w: &World<'_>, period: Duration) -> Vec<String> {
    let mut uids: Vec<String> = Vec::new();
    let end = Instant::now() + period;
    while Instant::now() < end {
        let uid = w
            .pod()
            .map(|p| uid_of(&p))
            .unwrap_or_else(|| "(absent)".into());
        if uids.last() != Some(&uid) {
            uids.push(uid);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    uids
}

const HALF_A_CPU: &str = "{requests: {cpu: \"0.5\", memory: 1024Mi}}";

#[test]
fn quantities_the_api_server_rewrites_keep_the_pod_for_a_minute() {
    let w = world("rollout-keep", 60 + (std::process::id() % 30) as u8);
    apply_yaml(&w.ns, &w.cluster_yaml(Some(HALF_A_CPU), false));
    let pod = w.wait_pod_ready(None);
    // The scenario: what the API server stores is not what the operator sent.
    assert_eq!(requests(&pod)["cpu"], "500m", "{}", requests(&pod));
    assert_eq!(requests(&pod)["memory"], "1Gi", "{}", requests(&pod));
    let uids = uids_over(&w, Duration::from_secs(60));
    assert_eq!(
        uids,
        [uid_of(&pod)],
        "the pod was replaced while nothing changed; operator log:\n{}",
        w.op.log_tail(30)
    );
    let up_to_date = condition(&w.cluster(), "PodsUpToDate");
    assert_eq!(
        up_to_date.as_ref().map(|c| c.0.as_str()),
        Some("True"),
        "{up_to_date:?}"
    );
}

#[test]
fn a_resources_change_replaces_the_pod_once_and_then_it_stays() {
    let w = world("rollout-change", 90 + (std::process::id() % 30) as u8);
    apply_yaml(&w.ns, &w.cluster_yaml(Some(HALF_A_CPU), false));
    let first = w.wait_pod_ready(None);
    let first_uid = uid_of(&first);
    apply_yaml(
        &w.ns,
        &w.cluster_yaml(Some("{requests: {cpu: \"0.75\", memory: 1536Mi}}"), false),
    );
    let second = w.wait_pod_ready(Some(&first_uid));
    assert_eq!(requests(&second)["cpu"], "750m", "{}", requests(&second));
    assert_eq!(requests(&second)["memory"], "1536Mi");
    w.wait_condition("PodsUpToDate", "True", |c| c.0 == "True");
    // Replaced once: the new pod stays.
    let uids = uids_over(&w, Duration::from_secs(20));
    assert_eq!(
        uids,
        [uid_of(&second)],
        "the new pod was replaced again; operator log:\n{}",
        w.op.log_tail(30)
    );
}

#[test]
fn a_template_change_waits_while_a_backup_runs_on_the_pod_then_goes_ahead() {
    let w = world("rollout-backup", 120 + (std::process::id() % 30) as u8);
    apply_yaml(&w.ns, &w.cluster_yaml(None, true));
    let pod = w.wait_pod_ready(None);
    let uid = uid_of(&pod);
    apply_yaml(
        &w.ns,
        "apiVersion: postgresql.k8s.2ndq.io/v1alpha1\nkind: Backup\nmetadata:\n  name: held\nspec:\n  cluster:\n    name: pg\n",
    );
    // Hold the backup: once barman-cloud-backup runs, stop it (SIGSTOP) until the change
    // has been seen waiting.
    let mut last = Value::Null;
    let barman = wait_for(READY, Duration::from_millis(100), || {
        let b = get(&w.ns, "backup", "held")?;
        last = b["status"].clone();
        let pids = w.pids_of("barman-cloud-backup");
        (b["status"]["phase"] == "running" && !pids.is_empty()).then_some(pids)
    })
    .unwrap_or_else(|| panic!("barman-cloud-backup never ran for Backup held: {last}"));
    signal(&barman, "-STOP");
    eprintln!("barman-cloud-backup held: {barman:?}");

    apply_yaml(
        &w.ns,
        &w.cluster_yaml(Some("{requests: {cpu: \"250m\", memory: 256Mi}}"), true),
    );
    let waiting = wait_for(Duration::from_secs(60), Duration::from_millis(250), || {
        let current = w.pod().map(|p| uid_of(&p));
        assert_eq!(
            current.as_deref(),
            Some(uid.as_str()),
            "the pod was deleted while Backup held ran on it"
        );
        let c = condition(&w.cluster(), "PodsUpToDate")?;
        (c.0 == "False" && c.1 == "WaitingForBackup").then_some(c)
    });
    signal(&barman, "-CONT");
    let waiting = waiting.unwrap_or_else(|| {
        panic!(
            "PodsUpToDate never said WaitingForBackup: {:?}",
            condition(&w.cluster(), "PodsUpToDate")
        )
    });
    assert!(
        waiting.2.contains("Backup held") && waiting.2.contains(POD),
        "the condition names the Backup and the pod: {waiting:?}"
    );
    let backup = get(&w.ns, "backup", "held").unwrap();
    assert_eq!(backup["status"]["phase"], "running", "{}", backup["status"]);

    // The Backup ends; then the change goes ahead.
    let ended = wait_for(READY, Duration::from_millis(500), || {
        let b = get(&w.ns, "backup", "held")?;
        matches!(b["status"]["phase"].as_str(), Some("completed" | "failed")).then_some(b)
    })
    .expect("Backup held ends once released");
    assert_eq!(ended["status"]["phase"], "completed", "{}", ended["status"]);
    let replaced = w.wait_pod_ready(Some(&uid));
    assert_eq!(requests(&replaced)["cpu"], "250m");
    w.wait_condition("PodsUpToDate", "True", |c| c.0 == "True");
}

#[test]
fn removing_spec_backup_removes_the_settings_and_credentials_and_stops_archiving() {
    let w = world("rollout-nobackup", 150 + (std::process::id() % 30) as u8);
    apply_yaml(&w.ns, &w.cluster_yaml(None, true));
    let pod = w.wait_pod_ready(None);
    // Archiving works: a switched segment reaches the store.
    w.psql(&pod, "CREATE TABLE t AS SELECT 1 AS x");
    let switched = w.psql(&pod, "SELECT pg_walfile_name(pg_switch_wal())");
    let started = Instant::now();
    let reached = wait_for(READY, Duration::from_millis(500), || {
        w.archived_wal().contains(&switched).then_some(())
    });
    assert!(reached.is_some(), "{switched} never reached the store");
    let archive_delay = started.elapsed();
    w.wait_condition("ContinuousArchiving", "True", |c| c.0 == "True");

    apply_yaml(&w.ns, &w.cluster_yaml(None, false));
    let settings = format!("{CLUSTER}-settings");
    let mut last = Value::Null;
    let gone = wait_for(Duration::from_secs(60), Duration::from_millis(500), || {
        let cm = get(&w.ns, "configmap", &settings)?;
        last = cm["data"].clone();
        cm["data"].get("archive.json").is_none().then_some(())
    });
    assert!(
        gone.is_some(),
        "ConfigMap {settings} still has archive.json: {last}"
    );
    let new = w.wait_pod_ready(Some(&uid_of(&pod)));
    let env: Vec<&str> = new["spec"]["containers"][0]["env"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert!(
        !env.iter().any(|n| n.starts_with("AWS_")),
        "the pod still has store credentials: {env:?}"
    );
    let archiving = w.wait_condition("ContinuousArchiving", "off", |c| c.0 == "False");
    assert_eq!(archiving.1, "NotConfigured", "{archiving:?}");

    // No WAL reaches the store any more: PostgreSQL runs without archiving, and segments
    // switched now are not in the store after (three times) the time one took before.
    assert_eq!(w.psql(&new, "SHOW archive_mode"), "off");
    let before = w.archived_wal();
    let mut switched = Vec::new();
    for _ in 0..3 {
        w.psql(&new, "INSERT INTO t SELECT 2");
        switched.push(w.psql(&new, "SELECT pg_walfile_name(pg_switch_wal())"));
    }
    std::thread::sleep((archive_delay * 3).max(Duration::from_secs(10)));
    let after = w.archived_wal();
    assert_eq!(
        before, after,
        "WAL reached the store after spec.backup was removed (switched {switched:?})"
    );
    // The archiver's statistics survive the restart: the last archived segment is still
    // one from before the removal.
    let last = w.psql(
        &new,
        "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver",
    );
    assert!(!switched.contains(&last), "{last} archived: {switched:?}");
}
