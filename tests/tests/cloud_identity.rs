//! Cloud identity and the archiver's environment (issue 15 item 6), end to end through the
//! local node: the real operator, agent, PostgreSQL and MinIO.
//! - `spec.serviceAccountTemplate` reaches the agent's ServiceAccount `<cluster>-agent`
//!   (IRSA's annotation, a label), and a changed template updates it in place (same uid, the
//!   dropped annotation gone);
//! - `spec.env` reaches the instance container's processes: the agent (which starts
//!   barman-cloud-backup; its /proc environ) and PostgreSQL's children (a program run by the
//!   server prints it: the archiver's archive command inherits the same), and WAL is still
//!   archived; its values are in no log;
//! - admission refuses a variable pgwarden sets, naming it.
//!
//! Slow (minutes). Needs `cargo xtask setup` (see `cargo xtask test`).

use std::time::Duration;

use pgwarden_tests::operator::{apply_yaml, eventually, get};
use pgwarden_tests::world::{StoreWorld, agent_pids, store_cluster_yaml, store_world};
use serde_json::Value;

const BUCKET: &str = "pgwarden-cloudid";
const READY: Duration = Duration::from_secs(300);
const WAIT: Duration = Duration::from_secs(120);
const ROLE: &str = "eks.amazonaws.com/role-arn";
/// A value that must reach the processes and no log.
const MARKER: &str = "marker-7f3a9c";

fn cluster(w: &StoreWorld<'_>, annotations: &str, env: &str) -> String {
    let extra = format!(
        "  serviceAccountTemplate:\n    metadata:\n      annotations:\n{annotations}      labels:\n        team: storage\n  env:\n{env}"
    );
    store_cluster_yaml(w, BUCKET, "pg", 1, &extra)
}

fn environ(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/environ"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect()
}

fn account(w: &StoreWorld<'_>) -> Value {
    get(&w.ns, "serviceaccount", "pg-agent").unwrap_or_default()
}

#[test]
fn the_agent_account_carries_the_template_and_the_container_the_env() {
    let subnet = 160 + (std::process::id() % 20) as u8;
    let w = store_world("cloudid", "cid", subnet, BUCKET);

    let annotations = format!(
        "        {ROLE}: arn:aws:iam::123456789012:role/pg-backup\n        pgwarden.test/dropped: soon\n"
    );
    // Refused at admission, naming the variable: one pgwarden sets, and its prefix.
    for reserved in ["PGDATA", "PGWARDEN_TEST_SEEN"] {
        let env = format!(
            "    - {{name: AWS_REQUEST_CHECKSUM_CALCULATION, value: when_required}}\n    - {{name: {reserved}, value: x}}\n"
        );
        let bad = cluster(&w, &annotations, &env);
        let out =
            w.ns.kubectl_with_input(&["apply", "-f", "-"], Some(bad.as_str()));
        assert!(!out.success, "a Cluster setting {reserved} was admitted");
        let said = format!("spec.env must not set {reserved}: pgwarden sets it");
        assert!(out.stderr.contains(&said), "{}", out.stderr);
    }
    let env = format!(
        "    - {{name: AWS_REQUEST_CHECKSUM_CALCULATION, value: when_required}}\n    - {{name: TEST_MARKER, value: {MARKER}}}\n"
    );
    apply_yaml(&w.ns, &cluster(&w, &annotations, &env));

    let sa = eventually("the ServiceAccount carries the template", WAIT, || {
        let sa = account(&w);
        let m = &sa["metadata"];
        let ok = m["annotations"][ROLE] == "arn:aws:iam::123456789012:role/pg-backup"
            && m["labels"]["team"] == "storage"
            && m["labels"]["postgresql.k8s.2ndq.io/cluster"] == "pg";
        if ok { Ok(sa) } else { Err(format!("{m:#}")) }
    });
    let uid = sa["metadata"]["uid"].clone();

    if w.ready_pod("pg-1", READY).is_none() {
        panic!(
            "pg-1 not ready within {READY:?}:\n{}",
            w.pod_log_tail("pg-1", 40)
        );
    }
    let agents = agent_pids(&w.state, &w.ns.name, "pg-1");
    let agent = *agents.first().expect("the agent of pg-1");
    let vars = environ(agent);
    for want in [
        "AWS_REQUEST_CHECKSUM_CALCULATION=when_required".to_string(),
        format!("TEST_MARKER={MARKER}"),
    ] {
        assert!(
            vars.contains(&want),
            "{want} not in the agent's environment"
        );
    }
    // PostgreSQL's children (its archiver runs the archive command) inherit it too. Not read
    // from /proc/<pid>/environ: PostgreSQL moves its environment to reuse that memory for its
    // process title. A program it runs says.
    let seen = w.pod_psql(
        "pg-1",
        "CREATE TEMP TABLE e (v text); COPY e FROM PROGRAM 'printenv AWS_REQUEST_CHECKSUM_CALCULATION'; SELECT v FROM e",
    );
    assert_eq!(
        seen.as_deref(),
        Some("when_required"),
        "in PostgreSQL's children"
    );
    // WAL is archived with it.
    w.pod_psql("pg-1", "SELECT pg_switch_wal()")
        .expect("switch");
    eventually("WAL archived", WAIT, || {
        let c = get(&w.ns, "cluster", "pg").unwrap_or_default();
        let n = c["status"]["archive"]["archivedCount"]
            .as_i64()
            .unwrap_or(0);
        if n > 0 {
            Ok(())
        } else {
            Err(format!("{:#}", c["status"]["archive"]))
        }
    });

    // A changed template: the same ServiceAccount, updated in place.
    let changed = format!("        {ROLE}: arn:aws:iam::123456789012:role/pg-other\n");
    apply_yaml(&w.ns, &cluster(&w, &changed, &env));
    eventually("the ServiceAccount follows the template", WAIT, || {
        let sa = account(&w);
        let m = &sa["metadata"];
        let ok = m["annotations"][ROLE] == "arn:aws:iam::123456789012:role/pg-other"
            && m["annotations"].get("pgwarden.test/dropped").is_none();
        if ok { Ok(()) } else { Err(format!("{m:#}")) }
    });
    assert_eq!(
        account(&w)["metadata"]["uid"],
        uid,
        "the ServiceAccount was recreated"
    );

    let operator_log = std::fs::read_to_string(&w.op.log).unwrap_or_default();
    assert!(
        !operator_log.contains(MARKER),
        "the operator logged an env value"
    );
    let pod_log = w.pod_log_tail("pg-1", 100_000);
    assert!(!pod_log.contains(MARKER), "the pod logged an env value");
}
