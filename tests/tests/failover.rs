//! A failover end to end (issue 13, item 5 and the "kill the primary" test), through the local
//! node: the real operator, agents, PostgreSQL 15, barman and MinIO.
//!
//! `instances: 3` under pgbench, a Backup and 500 marker rows whose WAL reached the store.
//! The primary `pg-1` hangs (SIGSTOP of its process groups: agent and PostgreSQL silent, as a
//! frozen node) until the policy's failover (default: 30 s) promotes a standby, then its
//! process groups are killed (SIGKILL; the node restarts the container at once, which is why
//! it is frozen first: a killed process restarted within a second is a crash-restart, not a
//! failover). Then:
//! - the promoted standby is `status.currentPrimary`, and the `-rw` Service (resolved as the
//!   harness does: its selector over the pods' labels) selects it alone; a write through it
//!   succeeds; the pods were relabelled, not recreated;
//! - the other standby streams from the new primary (re-pointed);
//! - `pg-1` comes back as a standby of the new primary (`pg_is_in_recovery()`, streaming from
//!   its address, the rows written after the failover there): rewound, not re-initialised;
//! - a Cluster restored from the Backup (target: latest) holds the 500 archived rows and the
//!   rows written on the new primary: it followed the new timeline, `.history` included.
//!
//! Before the fix (reasoned; see the report of this change): `-rw` kept selecting `pg-1`
//! (the role label was the pod index's), so the wait for it to select the promoted pod timed
//! out; `pg-1` restarted as a primary (fenced read-only) and never rejoined.
//!
//! Slow (minutes). Needs `cargo xtask setup` (see `cargo xtask test`).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pgwarden_tests::datapath::{deps, wait_for};
use pgwarden_tests::localnode::pod_psql;
use pgwarden_tests::operator::{apply_yaml, get, pod_is_ready, selected_pods};
use pgwarden_tests::world::{StoreWorld, signal_container, store_world};
use serde_json::Value;

const BUCKET: &str = "pgwarden-failover";
const READY: Duration = Duration::from_secs(300);
const ROLE: &str = "postgresql.k8s.2ndq.io/role";

fn cluster_yaml(w: &StoreWorld<'_>, name: &str, instances: u32, recovery: Option<&str>) -> String {
    let bootstrap = recovery
        .map(|b| format!("  bootstrap:\n    recovery:\n      backup:\n        name: {b}\n"))
        .unwrap_or_default();
    format!(
        "apiVersion: postgresql.k8s.2ndq.io/v1alpha1\nkind: Cluster\nmetadata:\n  name: {name}\nspec:\n  instances: {instances}\n{bootstrap}  backup:\n    destinationPath: s3://{BUCKET}/{ns}\n    endpointURL: {endpoint}\n    s3Credentials:\n      accessKeyId: {{name: aws-creds, key: ACCESS_KEY_ID}}\n      secretAccessKey: {{name: aws-creds, key: ACCESS_SECRET_KEY}}\n",
        ns = w.ns.name,
        endpoint = w.s3.endpoint(),
    )
}

fn wait_ready(w: &StoreWorld<'_>, pod: &str) -> Value {
    wait_for(READY, Duration::from_secs(1), || {
        get(&w.ns, "pod", pod).filter(pod_is_ready)
    })
    .unwrap_or_else(|| panic!("{pod} not ready within {READY:?}:\n{}", pod_log(w, pod)))
}

/// The pod's log (agent and PostgreSQL), whole.
fn pod_text(w: &StoreWorld<'_>, pod: &str) -> String {
    let Some(p) = get(&w.ns, "pod", pod) else {
        return "(no pod)".into();
    };
    let uid = p["metadata"]["uid"].as_str().unwrap_or_default();
    let log = w
        .state
        .join("node/pods")
        .join(uid)
        .join("logs/postgres.log");
    std::fs::read_to_string(log).unwrap_or_default()
}

fn pod_log(w: &StoreWorld<'_>, pod: &str) -> String {
    let text = pod_text(w, pod);
    let tail: Vec<&str> = text.lines().rev().take(60).collect();
    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
}

fn socket(w: &StoreWorld<'_>, pod: &Value) -> std::path::PathBuf {
    let uid = pod["metadata"]["uid"].as_str().unwrap_or_default();
    w.state.join("node/pods").join(uid).join("run")
}

fn try_psql(w: &StoreWorld<'_>, pod: &Value, sql: &str) -> Option<String> {
    let uid = pod["metadata"]["uid"].as_str().unwrap_or_default();
    pod_psql(&w.state.join("node"), uid, &deps().pg_bin, sql)
}

fn psql(w: &StoreWorld<'_>, pod: &Value, sql: &str) -> String {
    try_psql(w, pod, sql)
        .unwrap_or_else(|| panic!("psql {sql:?} failed on {}", pod["metadata"]["name"]))
}

/// pgbench on `pod`'s socket as `postgres`.
fn pgbench(w: &StoreWorld<'_>, pod: &Value, args: &[&str]) -> Command {
    let mut cmd = Command::new("runuser");
    cmd.args(["-u", "postgres", "--"])
        .arg(deps().pg_bin.join("pgbench"))
        .arg("-h")
        .arg(socket(w, pod))
        .args(["-U", "postgres"])
        .args(args)
        .arg("postgres");
    cmd
}

/// Waits until the store holds the WAL object `name` (a segment or a `.history` file).
fn wait_archived(w: &StoreWorld<'_>, server: &str, name: &str) {
    let prefix = format!("{}/{server}/wals/", w.ns.name);
    let found = wait_for(Duration::from_secs(120), Duration::from_secs(1), || {
        let keys = w.s3.list(BUCKET, &prefix);
        keys.iter()
            .any(|k| k.rsplit('/').next().is_some_and(|f| f.starts_with(name)))
            .then_some(())
    });
    assert!(
        found.is_some(),
        "{name} never reached the store: {:?}",
        w.s3.list(BUCKET, &prefix)
    );
}

fn stop(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn the_primary_dies_a_standby_takes_over_the_old_one_rejoins_and_the_store_follows() {
    // 30-59: no other test of the workspace uses these subnets.
    let subnet = 30 + (std::process::id() % 30) as u8;
    let w = store_world("failover", "fo", subnet, BUCKET);
    apply_yaml(&w.ns, &cluster_yaml(&w, "pg", 3, None));
    let pods: Vec<Value> = ["pg-1", "pg-2", "pg-3"]
        .iter()
        .map(|p| wait_ready(&w, p))
        .collect();
    let old = &pods[0];
    let uids: Vec<Value> = pods.iter().map(|p| p["metadata"]["uid"].clone()).collect();
    psql(&w, old, "CREATE TABLE marker (id int PRIMARY KEY)");
    let init = pgbench(&w, old, &["-i", "-s", "1", "-q"])
        .output()
        .expect("pgbench -i");
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );

    // A base backup before the failover: the restore at the end starts from it.
    apply_yaml(
        &w.ns,
        "apiVersion: postgresql.k8s.2ndq.io/v1alpha1\nkind: Backup\nmetadata:\n  name: before\nspec:\n  cluster:\n    name: pg\n",
    );
    let done = wait_for(Duration::from_secs(300), Duration::from_secs(1), || {
        let phase = get(&w.ns, "backup", "before")?["status"]["phase"].clone();
        matches!(phase.as_str(), Some("completed" | "failed")).then_some(phase)
    });
    assert_eq!(done, Some(Value::from("completed")), "Backup before");

    // Under pgbench: 500 marker rows committed, and their WAL in the store.
    let bench = pgbench(&w, old, &["-c", "2", "-T", "600", "-n"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("pgbench");
    psql(&w, old, "INSERT INTO marker SELECT generate_series(1, 500)");
    let segment = psql(&w, old, "SELECT pg_walfile_name(pg_switch_wal())");
    wait_archived(&w, "pg", &segment);

    // pg-1 hangs until a standby is promoted, then is killed.
    let frozen = Instant::now();
    signal_container(&w, "pg-1", "STOP");
    let mut status = Value::Null;
    let promoted = wait_for(Duration::from_secs(240), Duration::from_secs(1), || {
        status = get(&w.ns, "cluster", "pg")?["status"].clone();
        let target = status["targetPrimary"].as_str()?.to_string();
        let pod = get(&w.ns, "pod", &target)?;
        (target != "pg-1" && try_psql(&w, &pod, "SELECT pg_is_in_recovery()")? == "f")
            .then_some(pod)
    });
    let new = promoted.unwrap_or_else(|| panic!("no standby promoted; status: {status}"));
    let name = new["metadata"]["name"].as_str().unwrap().to_string();
    eprintln!(
        "{name} promoted {:?} after pg-1 froze (shared machine)",
        frozen.elapsed()
    );
    signal_container(&w, "pg-1", "KILL");
    stop(bench);

    // -rw selects the new primary alone; writes through it succeed.
    let rw = wait_for(Duration::from_secs(60), Duration::from_secs(1), || {
        let selected = selected_pods(&w.ns, "pg-rw");
        (selected.len() == 1 && selected[0]["metadata"]["name"] == name.as_str())
            .then(|| selected[0].clone())
    });
    let rw = rw.unwrap_or_else(|| {
        let names: Vec<Value> = (selected_pods(&w.ns, "pg-rw").iter())
            .map(|p| p["metadata"]["name"].clone())
            .collect();
        panic!("pg-rw selects {names:?}, not {name}")
    });
    eprintln!(
        "pg-rw writable on {name} {:?} after pg-1 froze",
        frozen.elapsed()
    );
    psql(
        &w,
        &rw,
        "INSERT INTO marker SELECT generate_series(1001, 1100)",
    );
    let current = wait_for(Duration::from_secs(60), Duration::from_secs(1), || {
        let c = get(&w.ns, "cluster", "pg")?["status"]["currentPrimary"].clone();
        (c == name.as_str()).then_some(c)
    });
    assert!(current.is_some(), "currentPrimary is not {name}");

    // The other standby streams from the new primary; pg-1 rejoins as one.
    let address = new["status"]["podIP"].as_str().unwrap().to_string();
    for standby in ["pg-1", "pg-2", "pg-3"].into_iter().filter(|p| *p != name) {
        let mut last = String::new();
        let following = wait_for(READY, Duration::from_secs(2), || {
            let pod = get(&w.ns, "pod", standby)?;
            last = try_psql(&w, &pod, "SELECT pg_is_in_recovery() || ',' || (SELECT status || ',' || sender_host FROM pg_stat_wal_receiver) || ',' || (SELECT count(*) FROM marker WHERE id > 1000)").unwrap_or_default();
            (last == format!("true,streaming,{address},100")).then_some(pod)
        });
        let pod = following.unwrap_or_else(|| {
            panic!(
                "{standby} does not stream from {name} ({address}): {last:?}\n{}",
                pod_log(&w, standby)
            )
        });
        assert_eq!(pod["metadata"]["labels"][ROLE], "replica", "{standby}");
    }
    let now: Vec<Value> = ["pg-1", "pg-2", "pg-3"]
        .iter()
        .map(|p| get(&w.ns, "pod", p).unwrap()["metadata"]["uid"].clone())
        .collect();
    assert_eq!(now, uids, "relabelled in place, no pod recreated");
    let rejoined = pod_text(&w, "pg-1");
    assert!(
        rejoined.contains("pg_rewind") && !rejoined.contains("cloning afresh"),
        "pg-1 rewound, not re-cloned:\n{}",
        pod_log(&w, "pg-1")
    );

    // The new timeline reaches the store, and a restore follows it.
    let segment = psql(&w, &rw, "SELECT pg_walfile_name(pg_switch_wal())");
    assert!(
        !segment.starts_with("00000001"),
        "a new timeline: {segment}"
    );
    wait_archived(&w, "pg", &segment);
    wait_archived(&w, "pg", &format!("{}.history", &segment[..8]));
    apply_yaml(&w.ns, &cluster_yaml(&w, "restored", 1, Some("before")));
    let restored = wait_ready(&w, "restored-1");
    let rows = psql(
        &w,
        &restored,
        "SELECT count(*) FILTER (WHERE id <= 500) || ',' || count(*) FILTER (WHERE id > 1000) FROM marker",
    );
    assert_eq!(
        rows, "500,100",
        "archived rows before the failover, and after it"
    );
}
