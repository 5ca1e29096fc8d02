//! Failover decided by the policy, checked by the host, against a real kube-apiserver and the
//! operator. The instances' agents are played by server-side applies of their own
//! `status.instancesStatus` entries (one field manager per pod, as the agents apply them): a
//! primary silent for two minutes and a standby that streamed from it.
//!
//! - Under the default policy the standby becomes `status.targetPrimary` (`PrimaryElected`
//!   True), and the agents' entries survive the operator's status applies.
//! - Under the adversarial policy, a promotion of an instance that does not exist, of the
//!   current primary, or of a standby that never streamed is refused: `PrimaryElected` False
//!   `PromotionRefused` naming it, a Warning, and `targetPrimary` stays the old primary.
//!
//! Needs `cargo xtask setup`, `cargo build -p pgwarden` and `cargo xtask build-policies`.

use chrono::{Duration as Age, SecondsFormat, Utc};
use pgwarden_tests::controlplane::{Namespace, with_crds};
use pgwarden_tests::operator::*;
use serde_json::{Value, json};

fn ago(seconds: i64) -> String {
    (Utc::now() - Age::seconds(seconds)).to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Instance `pod`'s agent applies its own entry of the Cluster's `status.instancesStatus`.
fn report(ns: &Namespace<'_>, cluster: &str, entry: Value) {
    let pod = entry["name"].as_str().unwrap().to_string();
    let body = json!({
        "apiVersion": "postgresql.k8s.2ndq.io/v1alpha1",
        "kind": "Cluster",
        "metadata": {"name": cluster},
        "status": {"instancesStatus": [entry]},
    });
    server_side_apply_status(ns, &body, &format!("pgwarden-agent-{pod}"));
}

/// `<cluster>-1` the primary, silent for 120 s; `<cluster>-2` a standby that streamed from
/// it; `<cluster>-3` a standby restored from the store that never streamed.
fn dead_primary(ns: &Namespace<'_>, cluster: &str) {
    report(
        ns,
        cluster,
        json!({"name": format!("{cluster}-1"), "role": "primary", "ready": true, "inRecovery": false,
               "receivedLsn": "0/3000200", "replayedLsn": "0/3000200", "reportedAt": ago(120)}),
    );
    for (n, received) in [(2, Some("0/3000100")), (3, None)] {
        report(
            ns,
            cluster,
            json!({"name": format!("{cluster}-{n}"), "role": "replica", "ready": true,
                   "inRecovery": true, "streaming": false, "receivedLsn": received,
                   "replayedLsn": received, "lagBytes": 0, "reportedAt": ago(0)}),
        );
    }
}

fn target_primary(cluster: &Value) -> Option<&str> {
    cluster["status"]["targetPrimary"].as_str()
}

#[test]
fn a_silent_primary_is_replaced_by_its_streaming_standby() {
    let cp = with_crds();
    let ns = cp.namespace("failover");
    let _op = Operator::start(cp, &ns.name);
    apply_yaml(
        &ns,
        &format!("{}  instances: 1\n", cluster_yaml("pg", None, false)),
    );
    wait_condition(&ns, "cluster", "pg", "PolicyApplied", "True");
    dead_primary(&ns, "pg");

    let elected = wait_json(&ns, "cluster", "pg", "targetPrimary=pg-2", |c| {
        target_primary(c) == Some("pg-2")
    });
    // The promotion's reason, then (pg-1 still the last to report itself primary) Promoting.
    let (status, reason, message) = condition(&elected, "PrimaryElected").unwrap();
    assert_eq!(status, "True");
    assert!(
        ["PrimaryUnhealthy", "Promoting"].contains(&reason.as_str()),
        "{reason}: {message}"
    );
    assert!(
        message.starts_with("pg-2 is to be the primary"),
        "{message}"
    );
    let names: Vec<&str> = (elected["status"]["instancesStatus"]
        .as_array()
        .unwrap()
        .iter())
    .filter_map(|i| i["name"].as_str())
    .collect();
    assert_eq!(names.len(), 3, "the agents' entries stay: {names:?}");
}

#[test]
fn a_bad_promotion_is_refused_with_a_condition_and_nothing_changes() {
    let cp = with_crds();
    let ns = cp.namespace("failover-bad");
    let _op = Operator::start(cp, &ns.name);
    let name = format!("adversarial-{}", ns.name);
    let _guard = PolicyGuard(&ns, name.clone());
    let module = policy("adversarial").display().to_string();
    apply_yaml(&ns, &file_policy_yaml(&name, &module, None));
    let refusals = [
        (
            "promote-ghost",
            "ghost-7",
            "ghost-7 is no instance of the Cluster",
        ),
        (
            "promote-primary",
            "promote-primary-1",
            "promote-primary-1 is the current primary already",
        ),
        (
            "promote-lagging",
            "promote-lagging-3",
            "promote-lagging-3 is not a streaming standby",
        ),
    ];
    for (cluster, _, _) in refusals {
        apply_yaml(&ns, &cluster_yaml(cluster, Some(&name), false));
    }
    for (cluster, _, _) in refusals {
        wait_condition(&ns, "cluster", cluster, "PolicyApplied", "True");
        dead_primary(&ns, cluster);
    }
    for (cluster, instance, why) in refusals {
        let said = format!("the policy's failover promotion of {instance} refused: {why}");
        let refused = wait_condition_message(&ns, "cluster", cluster, "PrimaryElected", &said);
        let (status, reason, _) = condition(&refused, "PrimaryElected").unwrap();
        assert_eq!(
            (status.as_str(), reason.as_str()),
            ("False", "PromotionRefused")
        );
        let old = format!("{cluster}-1");
        assert_eq!(
            target_primary(&refused),
            Some(old.as_str()),
            "nothing changes"
        );
        wait_event(&ns, cluster, "PromotionRefused", &said);
    }
}
