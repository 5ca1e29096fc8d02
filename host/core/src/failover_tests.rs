//! The failover facts from the agents' reports, the default decision on them, and the host's
//! check of a promotion.

use chrono::TimeZone;
use pgwarden_crds::{ClusterSpec, ClusterStatus};
use pgwarden_sdk::defaults::{FAILOVER_DELAY_SECONDS, failover};

use super::*;

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 30, 20, 0, 0).unwrap()
}

fn ago(seconds: i64) -> Option<String> {
    Some((now() - chrono::Duration::seconds(seconds)).to_rfc3339())
}

fn report(name: &str, role: &str, age: i64, received: Option<&str>) -> InstanceStatus {
    InstanceStatus {
        name: name.into(),
        role: Some(role.into()),
        ready: Some(true),
        streaming: Some(false),
        received_lsn: received.map(Into::into),
        replayed_lsn: received.map(Into::into),
        reported_at: ago(age),
        ..Default::default()
    }
}

/// pg-1 the primary, silent for `primary_age` seconds; pg-2 streamed up to 0/3000000, pg-3
/// up to 0/3000100 and pg-4 never streamed (restored from the store).
fn cluster(primary_age: i64) -> Cluster {
    let mut c = Cluster::new("pg", ClusterSpec::default());
    c.status = Some(ClusterStatus {
        current_primary: Some("pg-1".into()),
        target_primary: Some("pg-1".into()),
        instances_status: vec![
            report("pg-1", "primary", primary_age, Some("0/3000200")),
            report("pg-2", "replica", 5, Some("0/3000000")),
            report("pg-3", "replica", 5, Some("0/3000100")),
            report("pg-4", "replica", 5, None),
            report("pg-5", "replica", 90, Some("0/3000300")),
        ],
        ..Default::default()
    });
    c
}

fn promotion(instance: &str) -> Promotion {
    Promotion {
        instance: instance.into(),
        reason: "Test".into(),
        message: "asked".into(),
    }
}

#[test]
fn a_fresh_primary_is_healthy_and_a_silent_one_counts_its_silence() {
    assert_eq!(facts(&cluster(5), now()).primary_unhealthy_seconds, Some(0));
    let f = facts(&cluster(40), now());
    assert_eq!(f.primary_unhealthy_seconds, Some(40));
    assert_eq!(f.current_primary.as_deref(), Some("pg-1"));
    let pg4 = f.instances.iter().find(|i| i.name == "pg-4").unwrap();
    assert!(
        !pg4.streaming,
        "a standby that received nothing never streamed"
    );
    let pg3 = f.instances.iter().find(|i| i.name == "pg-3").unwrap();
    assert!(pg3.streaming && pg3.ready);
    assert_eq!(pg3.received_lsn, Some(0x3000100));
}

#[test]
fn the_default_promotes_the_most_advanced_streaming_standby_after_the_delay() {
    let f = facts(&cluster(40), now());
    let decided = failover(&f, FAILOVER_DELAY_SECONDS);
    assert_eq!(decided.as_ref().unwrap().as_ref().unwrap().instance, "pg-3");
    let e = elect(&f, None, decided);
    assert_eq!(e.target_primary.as_deref(), Some("pg-3"));
    assert!(e.condition.ok, "{e:?}");
    assert_eq!(e.condition.reason, "PrimaryUnhealthy");
    // Within the delay: nothing is promoted, and the Cluster is looked at again soon.
    let f = facts(&cluster(28), now());
    let e = elect(&f, None, failover(&f, FAILOVER_DELAY_SECONDS));
    assert_eq!(e.target_primary.as_deref(), Some("pg-1"));
    assert_eq!(e.requeue_seconds, Some(UNHEALTHY_REQUEUE_SECONDS));
    // A healthy primary: steady, no early requeue.
    let f = facts(&cluster(5), now());
    let e = elect(&f, None, failover(&f, FAILOVER_DELAY_SECONDS));
    assert_eq!(
        (e.target_primary.as_deref(), e.requeue_seconds),
        (Some("pg-1"), None)
    );
    assert_eq!(e.condition.reason, "Elected");
}

#[test]
fn a_promotion_of_an_unknown_instance_the_primary_or_a_non_streaming_standby_is_refused() {
    let f = facts(&cluster(40), now());
    for (instance, why) in [
        (
            "ghost-7",
            "is no instance of the Cluster (its agents reported: pg-1, pg-2, pg-3, pg-4, pg-5)",
        ),
        ("pg-1", "is the current primary already"),
        ("pg-4", "is not a streaming standby"),
        (
            "pg-5",
            "is not ready: its agent has not reported PostgreSQL answering in the last 25s",
        ),
    ] {
        let e = elect(&f, None, Ok(Some(promotion(instance))));
        assert_eq!(
            e.target_primary.as_deref(),
            Some("pg-1"),
            "{instance}: nothing changes"
        );
        assert!(!e.condition.ok);
        assert_eq!(e.condition.reason, PROMOTION_REFUSED);
        assert!(
            e.condition.message.starts_with(&format!(
                "the policy's failover promotion of {instance} refused: {instance} {why}"
            )),
            "{}",
            e.condition.message
        );
    }
}

#[test]
fn a_switchover_request_is_checked_like_a_promotion_and_done_once() {
    let f = facts(&cluster(5), now());
    let e = elect(&f, Some("pg-2"), Ok(None));
    assert_eq!(e.target_primary.as_deref(), Some("pg-2"));
    assert_eq!(e.condition.reason, "SwitchoverRequested");
    let e = elect(&f, Some("pg-4"), Ok(None));
    assert_eq!(e.target_primary.as_deref(), Some("pg-1"));
    assert!(
        e.condition
            .message
            .starts_with("the switchover's promotion of pg-4 refused")
    );
    // Once targetPrimary names it, the annotation asks nothing more.
    let mut done = cluster(5);
    done.status.as_mut().unwrap().target_primary = Some("pg-2".into());
    let e = elect(&facts(&done, now()), Some("pg-2"), Ok(None));
    assert_eq!(e.target_primary.as_deref(), Some("pg-2"));
    assert!(e.condition.ok);
    // ...while pg-1 still reports itself primary, the promotion is under way.
    assert_eq!(e.condition.reason, "Promoting");
    assert_eq!(
        e.condition.message,
        "pg-2 is to be the primary in place of pg-1: waiting for its agent to promote it"
    );
}

#[test]
fn a_policy_denial_keeps_the_target_and_says_why() {
    let f = facts(&cluster(40), now());
    let e = elect(
        &f,
        None,
        Err(Denial::new("NoQuorum", "two of three must agree")),
    );
    assert_eq!(e.target_primary.as_deref(), Some("pg-1"));
    assert_eq!(
        (e.condition.ok, e.condition.reason.as_str()),
        (false, "NoQuorum")
    );
}

#[test]
fn no_report_no_election() {
    let c = Cluster::new("pg", ClusterSpec::default());
    let f = facts(&c, now());
    assert_eq!(f.primary_unhealthy_seconds, None);
    let e = elect(&f, None, failover(&f, FAILOVER_DELAY_SECONDS));
    assert_eq!((e.target_primary, e.requeue_seconds), (None, None));
}

/// A standby whose PostgreSQL restarted after its primary died counts received WAL afresh:
/// PostgreSQL's WAL receiver starts at the segment of the replay position, so
/// `pg_last_wal_receive_lsn()` is that segment's start, behind what it replayed (and holds).
#[test]
fn a_standby_restarted_without_its_primary_is_ranked_by_the_wal_it_holds() {
    let mut c = cluster(40);
    let restarted = InstanceStatus {
        replayed_lsn: Some("0/5A3F000".into()),
        ..report("pg-2", "replica", 5, Some("0/5000000"))
    };
    c.status.as_mut().unwrap().instances_status = vec![
        report("pg-1", "primary", 40, Some("0/5A3F000")),
        restarted,
        report("pg-3", "replica", 5, Some("0/5A00000")),
    ];
    let f = facts(&c, now());
    let pg2 = f.instances.iter().find(|i| i.name == "pg-2").unwrap();
    assert_eq!(pg2.received_lsn, Some(0x5A3F000), "what it holds");
    let decided = failover(&f, FAILOVER_DELAY_SECONDS).unwrap().unwrap();
    assert_eq!(decided.instance, "pg-2", "{}", decided.message);
}

#[test]
fn an_isolated_primary_fences_itself_before_any_policy_may_promote() {
    use Isolation::*;
    let limit = ISOLATION_FENCE_SECONDS;
    assert!(
        limit < FRESH_SECONDS as u64,
        "fenced before it counts as unhealthy"
    );
    assert_eq!(isolation(true, 0, false, true), Keep);
    assert_eq!(isolation(true, limit, false, false), Keep);
    assert_eq!(isolation(true, limit + 1, false, false), Fence);
    // A standby has nothing to fence; a fence already set is kept until confirmed.
    assert_eq!(isolation(false, 600, false, false), Keep);
    assert_eq!(isolation(true, 600, true, false), Keep);
    // Reported and read again, named the primary: writes again.
    assert_eq!(isolation(true, 0, true, true), Unfence);
}

#[test]
fn the_default_policy_cannot_promote_before_the_isolated_primary_fenced() {
    // The primary's last report is `age` seconds old; its agent fenced at limit + 1.
    let limit = ISOLATION_FENCE_SECONDS as i64;
    let cluster = Cluster::new("pg", ClusterSpec::default());
    for age in 0..=limit + 1 {
        let mut c = cluster.clone();
        c.status = Some(ClusterStatus {
            current_primary: Some("pg-1".into()),
            target_primary: Some("pg-1".into()),
            instances_status: vec![
                report("pg-1", "primary", age, Some("0/5000000")),
                InstanceStatus {
                    streaming: Some(true),
                    ..report("pg-2", "replica", 0, Some("0/5000000"))
                },
            ],
            ..Default::default()
        });
        let promoted = failover(&facts(&c, now()), FAILOVER_DELAY_SECONDS).unwrap();
        assert_eq!(promoted, None, "promoted {age}s after the last report");
        // Whatever the delay: the primary is not unhealthy before FRESH_SECONDS.
        let promoted = failover(&facts(&c, now()), 1).unwrap();
        assert_eq!(promoted, None, "any delay, {age}s");
    }
}
