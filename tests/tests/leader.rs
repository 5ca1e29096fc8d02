//! Leader election against a real kube-apiserver when the leader's connection to it hangs, and
//! what a standby replica reports (issue 11, item 11).
//!
//! The leader reaches the API server through a TCP proxy the test stalls: its Lease renewals
//! (and every other request) then hang with no answer, as with a stuck API server or network.
//! It must stop leading before its Lease can expire for the standby, so two replicas never
//! reconcile at once. Needs `cargo xtask setup`, `cargo build -p pgwarden` and
//! `cargo xtask build-policies`.

use std::time::{Duration, Instant};

use pgwarden_tests::controlplane::{Namespace, with_crds};
use pgwarden_tests::operator::*;
use pgwarden_tests::stallproxy::{StallProxy, server_of};

/// The operator's Lease duration (`host/src/operator/leader.rs`).
const LEASE: Duration = Duration::from_secs(15);

fn identity(op: &Operator) -> String {
    format!("test-{}", op.metrics_addr.rsplit(':').next().unwrap())
}

fn holder(ns: &Namespace<'_>, lease: &str) -> Option<String> {
    get(ns, "lease", lease)?["spec"]["holderIdentity"]
        .as_str()
        .map(str::to_string)
}

/// Waits until `op` holds the Lease (read from the API server, not from the operator).
fn wait_holds(ns: &Namespace<'_>, lease: &str, op: &Operator) {
    let me = identity(op);
    eventually(
        &format!("{me} holding Lease {lease}"),
        LOAD_WAIT,
        || match holder(ns, lease) {
            Some(h) if h == me => Ok(()),
            other => Err(format!("holder {other:?}\n{}", op.log_tail(5))),
        },
    );
}

/// Whether the replica has stopped leading: its process ended, or it says so on `/leader`.
fn stopped_leading(op: &Operator) -> bool {
    let alive = std::path::Path::new(&format!("/proc/{}/stat", op.pid())).exists()
        && !std::fs::read_to_string(format!("/proc/{}/stat", op.pid()))
            .unwrap_or_default()
            .contains(") Z ");
    !alive || op.get("/leader").is_ok_and(|(code, _)| code == 503)
}

#[test]
fn a_leader_whose_renewals_hang_steps_down_before_a_standby_takes_over() {
    let cp = with_crds();
    let ns = cp.namespace("stalled-leader");
    let lease = "pgwarden-stalled";
    let proxy = StallProxy::start(&server_of(&cp.operator_kubeconfig()).unwrap()).unwrap();
    let via = proxy.kubeconfig(&cp.operator_kubeconfig()).unwrap();
    let leader = Operator::start_replica_via(cp, Some(&ns.name), Some(lease), false, &via).unwrap();
    wait_holds(&ns, lease, &leader);
    let standby = Operator::start_replica(cp, Some(&ns.name), Some(lease), false).unwrap();
    eventually("the standby waiting", LOAD_WAIT, || {
        let log = std::fs::read_to_string(&standby.log).unwrap_or_default();
        if log.contains("another replica leads; waiting") {
            Ok(())
        } else {
            Err(standby.log_tail(5))
        }
    });

    proxy.stall();
    let stalled_at = Instant::now();
    let (mut stepped_down, mut taken_over) = (None, None);
    let deadline = stalled_at + 4 * LEASE;
    while (stepped_down.is_none() || taken_over.is_none()) && Instant::now() < deadline {
        if stepped_down.is_none() && stopped_leading(&leader) {
            stepped_down = Some(stalled_at.elapsed());
        }
        if taken_over.is_none() && holder(&ns, lease) == Some(identity(&standby)) {
            taken_over = Some(stalled_at.elapsed());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    proxy.resume();
    eprintln!(
        "stalled leader stepped down after {stepped_down:?}; standby took over after {taken_over:?}"
    );
    let taken_over = taken_over.unwrap_or_else(|| {
        panic!(
            "the standby never took the Lease over:\n{}",
            standby.log_tail(20)
        )
    });
    let stepped_down = stepped_down.unwrap_or_else(|| {
        panic!(
            "the leader whose renewals hang still leads {:?} after the stall (the standby took over after {taken_over:?}):\n{}",
            stalled_at.elapsed(),
            leader.log_tail(20)
        )
    });
    assert!(
        stepped_down < LEASE,
        "the stalled leader stepped down only after {stepped_down:?}, more than the lease duration {LEASE:?}"
    );
    assert!(
        stepped_down < taken_over,
        "two leaders: the standby took over after {taken_over:?}, the stalled leader stepped down after {stepped_down:?}"
    );
}

/// A standby that reaches the API server is ready (`/readyz` 200, so a two-replica rolling
/// update can finish) and says it does not lead (`/leader` 503, `pgwarden_leader 0`); the
/// leader says it leads.
#[test]
fn a_healthy_standby_is_ready_and_does_not_lead() {
    let cp = with_crds();
    let ns = cp.namespace("ready-standby");
    let lease = "pgwarden-ready-standby";
    let leader = Operator::start_replica(cp, Some(&ns.name), Some(lease), false).unwrap();
    wait_holds(&ns, lease, &leader);
    let standby = Operator::start_replica(cp, Some(&ns.name), Some(lease), false).unwrap();
    eventually("the standby ready", LOAD_WAIT, || {
        match standby.get("/readyz") {
            Ok((200, _)) => Ok(()),
            other => Err(format!("{other:?}\n{}", standby.log_tail(5))),
        }
    });
    assert_eq!(holder(&ns, lease), Some(identity(&leader)));
    assert_eq!(standby.get("/leader").unwrap().0, 503);
    assert_eq!(leader.get("/leader").unwrap().0, 200);
    assert_eq!(leader.get("/readyz").unwrap().0, 200);
    assert_eq!(standby.metric("pgwarden_leader", ""), 0.0);
    assert_eq!(leader.metric("pgwarden_leader", ""), 1.0);
}
