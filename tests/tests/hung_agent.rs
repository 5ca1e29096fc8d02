//! A hung agent with a live PostgreSQL (issue 13, item 5: fencing), through the local node:
//! the real operator, agents, PostgreSQL 15 and MinIO.
//!
//! `instances: 3`; the primary `pg-1`'s agent alone is stopped (SIGSTOP of its process, not
//! of its group nor of PostgreSQL's): it stops reporting and beating, PostgreSQL runs on.
//! Then, sampled each second:
//! - a standby is promoted (the policy's failover, 30 s) and `-rw` selects it;
//! - `pg-1`'s container is killed by its liveness probe (`pgwarden instance alive`: the
//!   agent's loop has not beaten for 30 s) and restarts: its restart count grows;
//! - `pg-1` rejoins as a standby (`pg_is_in_recovery()` true);
//! - at no sample do two instances selected by `-rw` accept writes (out of recovery and not
//!   fenced read-only). How long the old primary kept accepting writes from clients
//!   connected to it directly is printed (the figure the liveness probe bounds).
//!
//! Before the fix (run with the policies of the set-up, whose pod has no liveness probe):
//! the standby was promoted, `-rw` moved, and `pg-1`'s PostgreSQL still accepted writes
//! minutes later with restart count 0: the wait for the restart timed out.
//!
//! Slow (minutes). Needs `cargo xtask setup` (see `cargo xtask test`).

use std::time::{Duration, Instant};

use pgwarden_tests::datapath::wait_for;
use pgwarden_tests::operator::{apply_yaml, get, pod_is_ready, selected_pods};
use pgwarden_tests::world::{StoreWorld, agent_pids, store_cluster_yaml, store_world};
use serde_json::Value;

const BUCKET: &str = "pgwarden-hung";
const READY: Duration = Duration::from_secs(300);
const PODS: [&str; 3] = ["pg-1", "pg-2", "pg-3"];

/// The names of the pods the Service `service` selects.
fn selected(w: &StoreWorld<'_>, service: &str) -> Vec<String> {
    (selected_pods(&w.ns, service).iter())
        .filter_map(|p| p["metadata"]["name"].as_str().map(String::from))
        .collect()
}

/// Whether `pod`'s PostgreSQL takes writes now: out of recovery and not fenced read-only.
fn writable(w: &StoreWorld<'_>, pod: &str) -> bool {
    let sql = "SELECT NOT pg_is_in_recovery() AND current_setting('default_transaction_read_only') = 'off'";
    w.pod_psql(pod, sql).as_deref() == Some("t")
}

fn restarts(w: &StoreWorld<'_>, pod: &str) -> i64 {
    get(&w.ns, "pod", pod)
        .and_then(|p| p["status"]["containerStatuses"][0]["restartCount"].as_i64())
        .unwrap_or(0)
}

/// What one sample saw, and the invariant checked on it.
#[derive(Default)]
struct Samples {
    /// When the old primary was last seen taking writes, after the hang.
    old_writable_until: Option<Duration>,
    /// When a standby was first seen promoted and writable.
    promoted_at: Option<(String, Duration)>,
}

impl Samples {
    fn take(&mut self, w: &StoreWorld<'_>, since: Instant) {
        let writable_now: Vec<&str> = PODS.into_iter().filter(|p| writable(w, p)).collect();
        let rw = selected(w, "pg-rw");
        let behind_rw: Vec<&&str> = (writable_now.iter())
            .filter(|p| rw.iter().any(|r| r == **p))
            .collect();
        assert!(
            behind_rw.len() <= 1,
            "two writable primaries behind pg-rw at {:?}: {behind_rw:?}",
            since.elapsed()
        );
        if writable_now.contains(&"pg-1") {
            self.old_writable_until = Some(since.elapsed());
        }
        if self.promoted_at.is_none()
            && let Some(p) = writable_now.iter().find(|p| **p != "pg-1")
        {
            self.promoted_at = Some((p.to_string(), since.elapsed()));
        }
    }
}

#[test]
fn a_hung_agent_is_killed_by_its_liveness_probe_and_its_instance_rejoins_as_a_standby() {
    // 220-249: no other test of the workspace uses these subnets.
    let subnet = 220 + (std::process::id() % 30) as u8;
    let w = store_world("hungagent", "hng", subnet, BUCKET);
    apply_yaml(&w.ns, &store_cluster_yaml(&w, BUCKET, "pg", 3, ""));
    for pod in PODS {
        let ready = wait_for(READY, Duration::from_secs(1), || {
            get(&w.ns, "pod", pod).filter(pod_is_ready)
        });
        assert!(
            ready.is_some(),
            "{pod} not ready:\n{}",
            w.pod_log_tail(pod, 60)
        );
    }
    let psql = |pod: &str, sql: &str| {
        w.pod_psql(pod, sql)
            .unwrap_or_else(|| panic!("psql {sql:?} on {pod}"))
    };
    psql("pg-1", "CREATE TABLE marker (id int PRIMARY KEY)");
    psql("pg-1", "INSERT INTO marker SELECT generate_series(1, 100)");
    assert_eq!(restarts(&w, "pg-1"), 0, "pg-1 restarted before the test");

    // The agent alone: its process, not its group, not PostgreSQL.
    let agent = *agent_pids(&w.state, &w.ns.name, "pg-1")
        .first()
        .expect("pg-1's agent");
    let stopped = std::process::Command::new("kill")
        .args(["-STOP", &agent.to_string()])
        .status()
        .expect("kill");
    assert!(stopped.success(), "kill -STOP {agent}");
    let hung = Instant::now();
    let mut samples = Samples::default();

    // A standby takes over; the hung one is killed by its liveness probe and restarts.
    let restarted = wait_for(Duration::from_secs(300), Duration::from_secs(1), || {
        samples.take(&w, hung);
        (samples.promoted_at.is_some() && restarts(&w, "pg-1") > 0).then_some(())
    });
    let writable_for = samples.old_writable_until;
    assert!(
        restarted.is_some(),
        "after {:?}: promoted {:?}; pg-1 restarts {}, last seen writable {writable_for:?} after the hang\n{}",
        hung.elapsed(),
        samples.promoted_at,
        restarts(&w, "pg-1"),
        w.pod_log_tail("pg-1", 40)
    );
    let (new, promoted) = samples.promoted_at.clone().unwrap();
    eprintln!(
        "{new} promoted {promoted:?} after pg-1's agent hung; pg-1 restarted {:?} after; its PostgreSQL last took writes {writable_for:?} after (shared machine)",
        hung.elapsed()
    );
    let terminated = get(&w.ns, "pod", "pg-1").unwrap()["status"]["containerStatuses"][0]
        ["lastState"]["terminated"]["exitCode"]
        .clone();
    assert_eq!(terminated, Value::from(137), "killed (SIGKILL), not exited");

    // pg-1 rejoins as a standby of the new primary; -rw selects the new primary alone.
    let mut last = String::new();
    let rejoined = wait_for(READY, Duration::from_secs(1), || {
        samples.take(&w, hung);
        last = w
            .pod_psql(
                "pg-1",
                "SELECT pg_is_in_recovery() || ',' || (SELECT count(*) FROM marker)",
            )
            .unwrap_or_default();
        (last == "true,100").then_some(())
    });
    assert!(
        rejoined.is_some(),
        "pg-1 did not rejoin as a standby: {last:?}\n{}",
        w.pod_log_tail("pg-1", 60)
    );
    assert_eq!(selected(&w, "pg-rw"), vec![new.clone()], "pg-rw");
    let current = get(&w.ns, "cluster", "pg").unwrap()["status"]["currentPrimary"].clone();
    assert_eq!(current, Value::from(new.as_str()), "currentPrimary");
    eprintln!(
        "pg-1 a standby again {:?} after its agent hung",
        hung.elapsed()
    );
}
