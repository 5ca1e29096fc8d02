//! A switchover under load loses no committed transaction (issue 13 item 6), end to end through
//! the local node: the real operator, agents, PostgreSQL, barman and MinIO.
//!
//! `instances: 3`; pgbench (4 clients) writes on the primary `pg-1` while a writer inserts
//! numbered rows into `ledger`, one `BEGIN READ WRITE; INSERT … RETURNING; COMMIT` at a time,
//! and keeps the numbers that came back (the COMMITs acknowledged to the client). Any client
//! may ask for a read-write transaction, so a fence by `default_transaction_read_only` alone
//! does not stop it: only a stopped old primary does. Each number is tried once: on `pg-1`
//! while it takes writes, then on the next pod. The Cluster is annotated
//! `pgwarden.io/switchover-to=pg-2`; once `pg-2` takes writes, every acknowledged number must
//! be in `pg-2`'s `ledger`, and numbers must have been acknowledged on both sides.
//!
//! `cargo xtask bench failover` runs [`bench_failover`] (ignored here): the same switchover
//! timed, then the primary frozen (SIGSTOP of its agent's and its PostgreSQL's process
//! groups) under the same load, with the time to a writable new primary split into
//! detection and promotion, and the acknowledged transactions the new primary does not have.
//!
//! Slow (minutes). Needs `cargo xtask setup` (see `cargo xtask test`).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pgwarden_tests::datapath::{deps, wait_for};
use pgwarden_tests::operator::{apply_yaml, get};
use pgwarden_tests::world::{StoreWorld, signal_container, store_cluster_yaml, store_world};
use serde_json::Value;

const BUCKET: &str = "pgwarden-switch";
const READY: Duration = Duration::from_secs(300);
const PODS: [&str; 3] = ["pg-1", "pg-2", "pg-3"];

/// A pod's PostgreSQL as the writer reaches it: its socket folder, by the pod's uid at start.
#[derive(Clone)]
struct Target {
    name: String,
    node: PathBuf,
    uid: String,
}

impl Target {
    fn of(w: &StoreWorld<'_>, pod: &str) -> Target {
        let p = get(&w.ns, "pod", pod).unwrap_or_else(|| panic!("no pod {pod}"));
        Target {
            name: pod.into(),
            node: w.state.join("node"),
            uid: p["metadata"]["uid"].as_str().unwrap_or_default().into(),
        }
    }

    /// psql as `postgres`, given up after 5 s (a frozen primary never answers).
    fn psql(&self, sql: &str) -> Option<String> {
        let out = Command::new("timeout")
            .args(["5", "runuser", "-u", "postgres", "--"])
            .arg(deps().pg_bin.join("psql"))
            .args(["-X", "-qAt", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(self.socket())
            .args(["-U", "postgres", "-d", "postgres", "-c", sql])
            .stdin(Stdio::null())
            .output()
            .ok()?;
        (out.status.success()).then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    fn socket(&self) -> PathBuf {
        self.node.join("pods").join(&self.uid).join("run")
    }

    /// pgbench as `postgres` on this pod for `seconds` (its errors end it: load only).
    fn pgbench(&self, args: &[&str]) -> Child {
        Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(deps().pg_bin.join("pgbench"))
            .arg("-h")
            .arg(self.socket())
            .args(["-U", "postgres"])
            .args(args)
            .arg("postgres")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("pgbench")
    }
}

/// What the writer saw: each acknowledged number, on which pod, and when.
#[derive(Default)]
struct Ledger {
    acknowledged: Vec<(i64, String, Instant)>,
    attempts: i64,
}

/// Inserts 1, 2, 3 … into `ledger`, each once, on the first of `targets` that took the last
/// write (moving on to the next when one fails), until `stop`.
fn writer(targets: Vec<Target>, stop: Arc<AtomicBool>, ledger: Arc<Mutex<Ledger>>) {
    let mut at = 0;
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let target = &targets[at];
        // A client that insists on writing: the read-only default a fence sets is only a
        // default, which a transaction may lift (`BEGIN READ WRITE`).
        let sql = format!("BEGIN READ WRITE; INSERT INTO ledger VALUES ({n}) RETURNING id; COMMIT");
        let back = target.psql(&sql);
        let mut l = ledger.lock().unwrap();
        l.attempts = n;
        if back.as_deref() == Some(n.to_string().as_str()) {
            l.acknowledged
                .push((n, target.name.clone(), Instant::now()));
        } else {
            at = (at + 1) % targets.len();
            drop(l);
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The world: `instances: 3` ready, `ledger` and pgbench's tables on `pg-1`.
fn cluster(hint: &str, tag: &str) -> StoreWorld<'static> {
    let subnet = 140 + (std::process::id() % 20) as u8;
    let w = store_world(hint, tag, subnet, BUCKET);
    apply_yaml(&w.ns, &store_cluster_yaml(&w, BUCKET, "pg", 3, ""));
    for pod in PODS {
        if w.ready_pod(pod, READY).is_none() {
            panic!(
                "{pod} not ready within {READY:?}:\n{}",
                w.pod_log_tail(pod, 40)
            );
        }
    }
    let primary = Target::of(&w, "pg-1");
    primary
        .psql("CREATE TABLE ledger (id bigint PRIMARY KEY)")
        .expect("create ledger");
    let init = primary.pgbench(&["-i", "-q", "-s", "2"]).wait_with_output();
    assert!(init.is_ok_and(|o| o.status.success()), "pgbench -i failed");
    for standby in ["pg-2", "pg-3"] {
        let seen = wait_for(Duration::from_secs(60), Duration::from_millis(500), || {
            let n = w.pod_psql(standby, "SELECT count(*) FROM pgbench_branches")?;
            (n == "2").then_some(())
        });
        assert!(seen.is_some(), "{standby} does not stream pg-1's tables");
    }
    w
}

/// What [`under_load`] saw.
struct Run {
    ledger: Ledger,
    /// When the act returned.
    acted: Instant,
    /// The pod that took writes after pg-1.
    new_primary: String,
    /// The `ledger` rows of the new primary.
    on_new: BTreeSet<i64>,
    /// pgbench's last lines.
    pgbench: String,
}

/// Load on `pg-1` (pgbench and the writer); `act` makes the change; then waits until another
/// pod took 20 acknowledged writes.
fn under_load(w: &StoreWorld<'_>, act: impl FnOnce()) -> Run {
    let targets: Vec<Target> = PODS.iter().map(|p| Target::of(w, p)).collect();
    let load = targets[0].pgbench(&["-n", "-c", "4", "-j", "2", "-T", "60"]);
    let (stop, ledger) = (Arc::new(AtomicBool::new(false)), Arc::default());
    let thread = {
        let (t, s, l) = (targets.clone(), stop.clone(), Arc::clone(&ledger));
        std::thread::spawn(move || writer(t, s, l))
    };
    std::thread::sleep(Duration::from_secs(8));
    act();
    let acted = Instant::now();
    let elsewhere = |l: &Ledger| l.acknowledged.iter().filter(|a| a.1 != "pg-1").count();
    let moved = wait_for(Duration::from_secs(240), Duration::from_millis(200), || {
        (elsewhere(&ledger.lock().unwrap()) >= 20).then_some(())
    });
    stop.store(true, Ordering::Relaxed);
    thread.join().expect("the writer");
    let ledger = Arc::try_unwrap(ledger).ok().unwrap().into_inner().unwrap();
    let mut load = load;
    let _ = load.kill();
    let out = load.wait_with_output().expect("pgbench");
    let pgbench = String::from_utf8_lossy(&out.stderr)
        .lines()
        .rev()
        .take(3)
        .collect::<Vec<_>>()
        .join(" | ");
    assert!(
        moved.is_some(),
        "no other pod took writes: {} of {} acknowledged, all on pg-1; pg-2:\n{}\npg-1:\n{}",
        ledger.acknowledged.len(),
        ledger.attempts,
        w.pod_log_tail("pg-2", 30),
        w.pod_log_tail("pg-1", 30),
    );
    let new_primary = (ledger.acknowledged.iter().rev())
        .map(|a| a.1.clone())
        .next()
        .unwrap_or_default();
    let target = targets
        .iter()
        .find(|t| t.name == new_primary)
        .expect("the new primary");
    let rows = target
        .psql("SELECT string_agg(id::text, ',') FROM ledger")
        .unwrap_or_default();
    let on_new = rows.split(',').filter_map(|r| r.parse().ok()).collect();
    Run {
        ledger,
        acted,
        new_primary,
        on_new,
        pgbench,
    }
}

impl Run {
    /// The acknowledged numbers the new primary does not have.
    fn lost(&self) -> Vec<i64> {
        (self.ledger.acknowledged.iter())
            .map(|a| a.0)
            .filter(|n| !self.on_new.contains(n))
            .collect()
    }

    fn count_on(&self, pod: &str) -> usize {
        self.ledger
            .acknowledged
            .iter()
            .filter(|a| a.1 == pod)
            .count()
    }

    /// From the act to the last write `pod` acknowledged (zero: none after the act).
    fn last_on(&self, pod: &str) -> Duration {
        let last = (self.ledger.acknowledged.iter().rev()).find(|a| a.1 == pod);
        last.map(|a| a.2.saturating_duration_since(self.acted))
            .unwrap_or_default()
    }

    /// From the act to the first write acknowledged by the new primary.
    fn writable_after(&self) -> Duration {
        let first = (self.ledger.acknowledged.iter()).find(|a| a.1 == self.new_primary);
        first.map(|a| a.2 - self.acted).unwrap_or_default()
    }
}

fn annotate_switchover(w: &StoreWorld<'_>, to: &str) {
    let note = format!("pgwarden.io/switchover-to={to}");
    let out =
        w.ns.kubectl(&["annotate", "--overwrite", "cluster", "pg", &note]);
    assert!(out.success, "{}", out.stderr);
}

#[test]
fn a_switchover_under_pgbench_loses_no_acknowledged_commit() {
    let w = cluster("switchover", "swo");
    let run = under_load(&w, || annotate_switchover(&w, "pg-2"));
    let lost = run.lost();
    eprintln!(
        "switchover: {} acknowledged ({} on pg-1, the last {:?} after the annotation; {} on pg-2) of {} tried; pg-2 writable {:?} after the annotation; lost {lost:?}; pgbench: {}",
        run.ledger.acknowledged.len(),
        run.count_on("pg-1"),
        run.last_on("pg-1"),
        run.count_on("pg-2"),
        run.ledger.attempts,
        run.writable_after(),
        run.pgbench,
    );
    assert!(
        run.count_on("pg-1") > 0,
        "nothing acknowledged before the switchover"
    );
    assert_eq!(
        run.new_primary, "pg-2",
        "the pod that took writes after pg-1"
    );
    assert_eq!(
        lost,
        Vec::<i64>::new(),
        "acknowledged on pg-1, missing on pg-2"
    );
    assert_eq!(
        w.pod_psql("pg-2", "SELECT pg_is_in_recovery()").as_deref(),
        Some("f")
    );
    let status = get(&w.ns, "cluster", "pg").unwrap_or_default()["status"].clone();
    assert_eq!(status["targetPrimary"], "pg-2", "{status}");
    // The old primary takes no write now, not even from a client that lifts the read-only
    // default (a second primary behind the Cluster's back).
    let lifted = "BEGIN READ WRITE; INSERT INTO ledger VALUES (-1) RETURNING id; COMMIT";
    let refused = wait_for(Duration::from_secs(60), Duration::from_secs(1), || {
        w.pod_psql("pg-1", lifted).is_none().then_some(())
    });
    assert!(
        refused.is_some(),
        "pg-1 still takes writes 60 s after the switchover"
    );
}

/// The 1, 5 and 15 minute load averages (`/proc/loadavg`), with the figures: the machine is
/// shared.
fn load_average() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// `cargo xtask bench failover`: figures to stderr and `$PGWARDEN_BENCH_OUT` (JSON).
#[test]
#[ignore = "a benchmark: cargo xtask bench failover"]
fn bench_failover() {
    let w = cluster("benchswitch", "bsw");
    let switch = under_load(&w, || annotate_switchover(&w, "pg-2"));
    let switchover = serde_json::json!({
        "writableAfterSeconds": switch.writable_after().as_secs_f64(),
        "acknowledged": switch.ledger.acknowledged.len(),
        "lost": switch.lost().len(),
        "loadAverage": load_average(),
    });
    eprintln!("switchover: {switchover}");
    drop(w);

    // Failover: pg-1 frozen under load; the policy's delay, then pg-2 or pg-3 promotes.
    let w = cluster("benchfailover", "bfo");
    let mut decided = None;
    let run = under_load(&w, || {
        // The agent and PostgreSQL both hang (the postmaster has its own process group).
        signal_container(&w, "pg-1", "STOP");
        let frozen = Instant::now();
        let target = wait_for(Duration::from_secs(240), Duration::from_millis(200), || {
            let status = get(&w.ns, "cluster", "pg")?["status"].clone();
            let t = status["targetPrimary"].as_str()?.to_string();
            (t != "pg-1").then_some(t)
        });
        let (detection, detected) = (frozen.elapsed(), Instant::now());
        // Out of recovery, as PostgreSQL says (the writer's first acknowledged write on it
        // comes later: its psql on the frozen pg-1 gives up only after 5 s).
        let promoted = target.as_deref().and_then(|t| {
            let pod = Target::of(&w, t);
            wait_for(Duration::from_secs(120), Duration::from_millis(200), || {
                (pod.psql("SELECT pg_is_in_recovery()")? == "f").then(|| detected.elapsed())
            })
        });
        decided = Some((detection, detected, target, promoted));
    });
    signal_container(&w, "pg-1", "CONT");
    let (detection, detected, target, promoted) = decided.expect("the act ran");
    let first = (run.ledger.acknowledged.iter()).find(|a| a.1 == run.new_primary);
    let writable = first.map(|a| a.2 - detected).unwrap_or_default();
    let failover = serde_json::json!({
        "target": target,
        "wrote": run.new_primary,
        "detectionSeconds": detection.as_secs_f64(),
        "outOfRecoverySeconds": promoted.map(|p| p.as_secs_f64()),
        "promotionSeconds": writable.as_secs_f64(),
        "writableAfterSeconds": (detection + writable).as_secs_f64(),
        "acknowledged": run.ledger.acknowledged.len(),
        "lost": run.lost().len(),
        "loadAverage": load_average(),
    });
    eprintln!("failover: {failover}");
    let figures = serde_json::json!({ "switchover": switchover, "failover": failover });
    if let Some(out) = std::env::var_os("PGWARDEN_BENCH_OUT") {
        let out = PathBuf::from(out);
        std::fs::create_dir_all(out.parent().unwrap()).unwrap();
        std::fs::write(&out, serde_json::to_string_pretty(&figures).unwrap()).unwrap();
    }
    println!("{}", serde_json::to_string_pretty(&figures).unwrap());
    let _: Value = figures;
}
