//! `spec.postgresql.parameters` reach PostgreSQL, and a change takes effect in the running
//! instance (issue 10, item 3), end to end through the local node: the real operator, agent
//! and PostgreSQL.
//!
//! - the Cluster's value is what `SHOW` says; a reload-able change is taken by a reload (same
//!   pod, same postmaster); a change PostgreSQL reads only at start is applied by the agent's
//!   restart of PostgreSQL (same pod), and `status.parameters` says which;
//! - a value PostgreSQL refuses is named in `status.parameters.refused` and PostgreSQL keeps
//!   the previous one, also after its container is restarted (no crash loop);
//! - a value PostgreSQL reads only at start and cannot start with (a missing preload library)
//!   is undone by the agent, and stays out after a container restart.
//!
//! Slow (minutes). Needs `cargo xtask setup` (see `cargo xtask test`).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use pgwarden_tests::controlplane::{ControlPlane, Namespace, with_crds};
use pgwarden_tests::datapath::{deps, wait_for};
use pgwarden_tests::localnode::{LocalNode, pod_psql};
use pgwarden_tests::operator::{Operator, apply_yaml, get, pod_is_ready};
use pgwarden_tests::world::{agent_pids, host_node_for};
use serde_json::Value;

const READY: Duration = Duration::from_secs(180);
/// A change goes through the ConfigMap, the node's volume sync and the agent's report tick.
const APPLIED: Duration = Duration::from_secs(120);
const POD: &str = "pg-1";

/// A namespace, a local node for it and the operator.
struct World<'a> {
    ns: Namespace<'a>,
    _op: Operator,
    _node: LocalNode,
    state: PathBuf,
    _dir: Option<tempfile::TempDir>,
}

/// `subnet`: each test its own pod addresses (tests of one binary run in parallel).
fn world(hint: &str, subnet: u8) -> World<'static> {
    let cp: &'static ControlPlane = with_crds();
    let ns = cp.namespace(hint);
    // No store here: the region is never used. A change is noticed on the agent's report tick.
    let report = [("PGWARDEN_REPORT_INTERVAL", "2")];
    // From the host's binaries, not the instance image, until an open defect is fixed: from
    // the image (runc, 2026-12-01) the agent's restart of PostgreSQL for a start-only
    // parameter did not end (SIGINT sent, no "PostgreSQL stopped" for 37 s); meanwhile the
    // agent's loop, blocked in that wait, sent no report, so the isolation guard fenced the
    // primary read-only after 21 s and the liveness probe restarted the container (an
    // unclean shutdown). Both the restart and status.parameters then missed what the tests
    // assert. Reproduce: PGWARDEN_KEEP_STATE=1, switch this to node_for, run this file.
    let n = host_node_for(cp, &ns, "par", subnet, "us-east-1", &report);
    let op = Operator::start(cp, &ns.name);
    World {
        ns,
        _op: op,
        _node: n.node,
        state: n.state,
        _dir: n.dir,
    }
}

fn cluster(parameters: &[(&str, &str)]) -> String {
    let lines: String = parameters
        .iter()
        .map(|(k, v)| format!("      {k}: \"{v}\"\n"))
        .collect();
    format!(
        "apiVersion: postgresql.k8s.2ndq.io/v1alpha1\nkind: Cluster\nmetadata:\n  name: pg\nspec:\n  instances: 1\n  postgresql:\n    parameters:\n{lines}"
    )
}

impl World<'_> {
    fn wait_pod_ready(&self) -> Value {
        let mut last = Value::Null;
        let ready = wait_for(READY, Duration::from_secs(1), || {
            let p = get(&self.ns, "pod", POD)?;
            last = p["status"].clone();
            pod_is_ready(&p).then_some(p)
        });
        ready.unwrap_or_else(|| panic!("pod {POD} not ready within {READY:?}; last status: {last}"))
    }

    /// psql as `postgres` on the pod's unix socket; `None` while PostgreSQL does not answer.
    fn psql(&self, pod: &Value, sql: &str) -> Option<String> {
        let uid = pod["metadata"]["uid"].as_str()?;
        pod_psql(&self.state.join("node"), uid, &deps().pg_bin, sql)
    }

    fn show(&self, pod: &Value, name: &str) -> Option<String> {
        self.psql(pod, &format!("SHOW {name}"))
    }

    fn postmaster_started(&self, pod: &Value) -> String {
        self.psql(pod, "SELECT pg_postmaster_start_time()")
            .expect("PostgreSQL answers")
    }

    /// Waits until `SHOW name` says `value`.
    fn wait_show(&self, pod: &Value, name: &str, value: &str) {
        let mut last = None;
        let seen = wait_for(APPLIED, Duration::from_millis(500), || {
            last = self.show(pod, name);
            (last.as_deref() == Some(value)).then_some(())
        });
        let status = get(&self.ns, "cluster", "pg").unwrap_or_default()["status"].clone();
        assert!(
            seen.is_some(),
            "SHOW {name} is {last:?}, not {value:?}, {APPLIED:?} after the change; Cluster status: {status}"
        );
    }

    /// Waits until `status.parameters` satisfies `ok`; returns it.
    fn wait_status(&self, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
        let mut last = Value::Null;
        let seen = wait_for(APPLIED, Duration::from_millis(500), || {
            last = get(&self.ns, "cluster", "pg")?["status"]["parameters"].clone();
            ok(&last).then(|| last.clone())
        });
        seen.unwrap_or_else(|| panic!("status.parameters never {what}; last: {last}"))
    }

    fn uid_and_restarts(&self) -> (String, i64) {
        let pod = get(&self.ns, "pod", POD).expect("the pod exists");
        (
            pod["metadata"]["uid"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            pod["status"]["containerStatuses"][0]["restartCount"]
                .as_i64()
                .unwrap_or(-1),
        )
    }
}

fn names(v: &Value) -> Vec<&str> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

#[test]
fn parameters_reach_postgresql_and_a_change_reloads_or_restarts_it_in_the_same_pod() {
    let w = world("params-apply", 240 + (std::process::id() % 7) as u8);
    apply_yaml(&w.ns, &cluster(&[("max_wal_size", "256MB")]));
    let pod = w.wait_pod_ready();
    assert_eq!(w.show(&pod, "max_wal_size").as_deref(), Some("256MB"));
    let (uid, restarts) = w.uid_and_restarts();
    let started = w.postmaster_started(&pod);

    // Reload-able: taken by a reload, the postmaster keeps running.
    apply_yaml(&w.ns, &cluster(&[("max_wal_size", "512MB")]));
    w.wait_show(&pod, "max_wal_size", "512MB");
    assert_eq!(w.postmaster_started(&pod), started, "PostgreSQL restarted");
    let status = w.wait_status("says reload", |s| s["appliedBy"] == "reload");
    assert_eq!(names(&status["changed"]), ["max_wal_size"], "{status}");
    assert_eq!(w.uid_and_restarts(), (uid.clone(), restarts));

    // Read only at start: the agent restarts PostgreSQL, not the pod, and says so.
    apply_yaml(
        &w.ns,
        &cluster(&[("max_wal_size", "512MB"), ("max_connections", "42")]),
    );
    w.wait_show(&pod, "max_connections", "42");
    assert_ne!(w.postmaster_started(&pod), started, "no restart");
    let status = w.wait_status("says restart", |s| s["appliedBy"] == "restart");
    assert_eq!(
        names(&status["restartedFor"]),
        ["max_connections"],
        "{status}"
    );
    let message = status["message"].as_str().unwrap_or_default();
    assert!(message.contains("max_connections"), "{status}");
    assert_eq!(w.show(&pod, "max_wal_size").as_deref(), Some("512MB"));
    assert_eq!(w.uid_and_restarts(), (uid, restarts));
}

#[test]
fn a_value_postgresql_refuses_is_named_and_the_previous_one_stays_across_a_container_restart() {
    let w = world("params-refused", 247 + (std::process::id() % 7) as u8);
    apply_yaml(&w.ns, &cluster(&[("work_mem", "8MB")]));
    let pod = w.wait_pod_ready();
    assert_eq!(w.show(&pod, "work_mem").as_deref(), Some("8MB"));
    let started = w.postmaster_started(&pod);

    apply_yaml(
        &w.ns,
        &cluster(&[("work_mem", "lots"), ("max_wal_size", "300MB")]),
    );
    // The valid change goes through; the refused one is named, never its value.
    w.wait_show(&pod, "max_wal_size", "300MB");
    let status = w.wait_status("names work_mem as refused", |s| {
        s["refused"]
            .as_array()
            .is_some_and(|r| r.iter().any(|p| p["name"] == "work_mem"))
    });
    assert!(!status.to_string().contains("lots"), "{status}");
    assert_eq!(w.show(&pod, "work_mem").as_deref(), Some("8MB"));
    assert_eq!(w.postmaster_started(&pod), started);

    // Its container restarted (the agent killed): PostgreSQL starts, with the previous value.
    let (uid, restarts) = w.uid_and_restarts();
    kill_agent(&w);
    let restarted = wait_for(READY, Duration::from_secs(1), || {
        let (u, r) = w.uid_and_restarts();
        let pod = get(&w.ns, "pod", POD)?;
        (u == uid && r > restarts && pod_is_ready(&pod)).then_some(pod)
    });
    let pod = restarted.unwrap_or_else(|| {
        panic!(
            "the container did not come back ready: {}",
            get(&w.ns, "pod", POD).unwrap_or_default()["status"]
        )
    });
    assert_eq!(w.show(&pod, "work_mem").as_deref(), Some("8MB"));
    assert_eq!(w.show(&pod, "max_wal_size").as_deref(), Some("300MB"));
    w.wait_status("names work_mem as refused after the restart", |s| {
        s["appliedBy"] == "start"
            && s["refused"]
                .as_array()
                .is_some_and(|r| r.iter().any(|p| p["name"] == "work_mem"))
    });
}

#[test]
fn a_value_postgresql_cannot_start_with_is_undone_and_kept_out_after_a_container_restart() {
    let w = world("params-nostart", 233 + (std::process::id() % 7) as u8);
    apply_yaml(&w.ns, &cluster(&[("work_mem", "8MB")]));
    let pod = w.wait_pod_ready();
    let (uid, restarts) = w.uid_and_restarts();

    // Read only at start, and PostgreSQL does not start with it (postgres -C does not load
    // libraries, so only the restart finds out): the agent starts it again without it.
    apply_yaml(
        &w.ns,
        &cluster(&[
            ("work_mem", "8MB"),
            ("shared_preload_libraries", "no_such_lib"),
        ]),
    );
    let status = w.wait_status("names shared_preload_libraries as refused", |s| {
        s["refused"].as_array().is_some_and(|r| {
            r.iter().any(|p| {
                p["name"] == "shared_preload_libraries"
                    && p["reason"] == "PostgreSQL did not start with it"
            })
        })
    });
    assert!(!status.to_string().contains("no_such_lib"), "{status}");
    let mut last = None;
    let back = wait_for(READY, Duration::from_millis(500), || {
        last = w.show(&pod, "shared_preload_libraries");
        (last.as_deref() == Some("")).then_some(())
    });
    assert!(
        back.is_some(),
        "PostgreSQL not back without the library: {last:?}"
    );
    assert_eq!(w.uid_and_restarts(), (uid.clone(), restarts));

    // The container restarts: the value PostgreSQL did not start with stays out.
    kill_agent(&w);
    let pod = wait_for(READY, Duration::from_secs(1), || {
        let (u, r) = w.uid_and_restarts();
        let pod = get(&w.ns, "pod", POD)?;
        (u == uid && r > restarts && pod_is_ready(&pod)).then_some(pod)
    })
    .unwrap_or_else(|| {
        panic!(
            "the container did not come back ready: {}",
            get(&w.ns, "pod", POD).unwrap_or_default()["status"]
        )
    });
    assert_eq!(w.show(&pod, "work_mem").as_deref(), Some("8MB"));
    assert_eq!(
        w.show(&pod, "shared_preload_libraries").as_deref(),
        Some("")
    );
}

/// SIGKILL to the pod's `pgwarden instance run` (found by its environment): the node restarts
/// the container.
fn kill_agent(w: &World<'_>) {
    // Found by its pod's name and namespace in its environment (tests/src/world.rs), which
    // holds from the instance image as from the host's binaries; a host folder in its
    // environment does not (a container's paths are its mount paths).
    let pids = agent_pids(&w.state, &w.ns.name, POD);
    assert!(
        !pids.is_empty(),
        "no `pgwarden instance run` of pod {POD} found"
    );
    for pid in pids {
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }
}
