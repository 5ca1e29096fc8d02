//! What a newcomer meets first (issue 16): `pgwarden operator` with no flags reconciles the
//! seed Cluster with the default policy built into the binary, and its log is readable by a
//! person and a machine (no colour codes in a file; `--log-format json`: one object a line).
//!
//! Needs `cargo xtask setup` and `cargo build -p pgwarden`; no `cargo xtask build-policies`:
//! the bare operator loads no module file.

use pgwarden_tests::controlplane::with_crds;
use pgwarden_tests::operator::*;
use serde_json::Value;

const CLUSTER: &str = "postgresql-bkp";

/// The seed's Secret and Cluster, reconciled: `PolicyApplied` True by the policy `default`.
fn seed_reconciled(ns: &pgwarden_tests::controlplane::Namespace<'_>) -> Value {
    apply_file(ns, &seed("secret.yaml"));
    apply_file(ns, &seed("cluster-wal.yaml"));
    let cluster = wait_condition(ns, "cluster", CLUSTER, "PolicyApplied", "True");
    let message = condition(&cluster, "PolicyApplied").unwrap().2;
    assert!(
        message.starts_with("decisions of policy default (sha256:"),
        "{message}"
    );
    wait_get(ns, "pod", "postgresql-bkp-1");
    cluster
}

#[test]
fn a_bare_operator_reconciles_the_seed_cluster_and_logs_no_colour_to_a_file() {
    let cp = with_crds();
    let ns = cp.namespace("bare-operator");
    let op = Operator::start_bare(cp, &ns.name, &[]);
    seed_reconciled(&ns);
    let log = std::fs::read_to_string(&op.log).unwrap();
    assert!(
        log.contains("default policy loaded") && log.contains("built in"),
        "the log does not say the built-in default policy was loaded:\n{log}"
    );
    // The log is a file, not a terminal: no ANSI escape codes (`ESC[2m...ESC[0m`).
    let coloured: Vec<&str> = log.lines().filter(|l| l.contains('\u{1b}')).collect();
    assert!(
        coloured.is_empty(),
        "{} of {} log lines carry escape codes, e.g. {:?}",
        coloured.len(),
        log.lines().count(),
        coloured.first()
    );
}

#[test]
fn json_logs_are_one_object_a_line() {
    let cp = with_crds();
    let ns = cp.namespace("json-logs");
    let op = Operator::start_with_args(cp, &ns.name, &["--log-format", "json"]);
    seed_reconciled(&ns);
    let log = std::fs::read_to_string(&op.log).unwrap();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() >= 2, "hardly any log:\n{log}");
    for line in &lines {
        let object: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("a log line is not JSON ({e}): {line:?}"));
        assert!(
            object["level"].is_string() && object["fields"].is_object(),
            "a log line without level or fields: {line}"
        );
    }
    assert!(
        lines.iter().any(|l| l.contains("operator running")),
        "no `operator running` line:\n{log}"
    );
}

/// `kubectl get clusters` and the conditions tell one story: a policy that calls a Cluster
/// healthy and Ready whatever its pods (the adversarial `always-ready`) does not make one
/// whose only pod is not ready show "Cluster in healthy state" beside 0 ready; once the pod
/// is ready, the policy's word stands.
#[test]
fn phase_ready_and_the_ready_column_agree_whatever_the_policy_says() {
    let cp = with_crds();
    let ns = cp.namespace("phase-agrees");
    let _op = Operator::start(cp, &ns.name);
    let name = format!("adversarial-{}", ns.name);
    let _guard = PolicyGuard(&ns, name.clone());
    let module = policy("adversarial").display().to_string();
    apply_yaml(&ns, &file_policy_yaml(&name, &module, None));
    apply_file(&ns, &seed("secret.yaml"));
    apply_yaml(&ns, &cluster_yaml("always-ready", Some(&name), true));
    wait_get(&ns, "pod", "always-ready-1");
    for ready in [false, true, false] {
        mark_pod(&ns, "always-ready-1", ready);
        let column = i64::from(ready);
        let cluster = wait_json(&ns, "cluster", "always-ready", "readyInstances", |c| {
            c["status"]["readyInstances"] == column
                && condition(c, "PolicyApplied").is_some_and(|p| p.0 == "True")
        });
        let status = &cluster["status"];
        let ready_condition = condition(&cluster, "Ready").unwrap();
        let shown = (
            status["phase"].as_str().unwrap(),
            ready_condition.0.as_str(),
        );
        let expected = match ready {
            true => ("Cluster in healthy state", "True"),
            false => ("No instance ready", "False"),
        };
        assert_eq!(shown, expected, "pod ready: {ready}: {status:#}");
    }
}
