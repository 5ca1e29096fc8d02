//! The agent's part in a change of primary: what it does, when it promotes, when it looks.

use super::*;

fn facts(in_recovery: bool, read_only: bool) -> Replication {
    Replication {
        in_recovery,
        read_only,
        ..Default::default()
    }
}

#[test]
fn the_newest_history_file_gives_the_fork_point() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(newest_history(dir.path()), None);
    std::fs::write(
        dir.path().join("00000002.history"),
        "1\t0/94E0B68\tno recovery target specified\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("00000003.history"),
        "1\t0/94E0B68\tx\n2\t0/A000000\ty\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("000000030000000000000009"), "").unwrap();
    assert_eq!(newest_history(dir.path()), Some((3, 0xA000000)));
}

#[test]
fn the_target_promotes_and_another_primary_is_fenced() {
    let (standby, primary) = (facts(true, false), facts(false, false));
    assert_eq!(act("pg-2", &standby, Some("pg-2")), Act::Promote);
    assert_eq!(act("pg-2", &standby, Some("pg-1")), Act::Nothing);
    assert_eq!(act("pg-1", &primary, Some("pg-2")), Act::Fence);
    assert_eq!(act("pg-1", &facts(false, true), Some("pg-2")), Act::Nothing);
    assert_eq!(act("pg-1", &facts(false, true), Some("pg-1")), Act::Unfence);
    assert_eq!(act("pg-1", &primary, Some("pg-1")), Act::Nothing);
    assert_eq!(
        act("pg-1", &primary, None),
        Act::Nothing,
        "nothing asked yet"
    );
}

fn primary(read_only: bool, lsn: &str, age: i64) -> InstanceStatus {
    InstanceStatus {
        name: "pg-1".into(),
        role: Some("primary".into()),
        read_only: Some(read_only),
        received_lsn: Some(lsn.into()),
        reported_at: Some((chrono::Utc::now() - chrono::Duration::seconds(age)).to_rfc3339()),
        ..Default::default()
    }
}

#[test]
fn a_standby_promotes_only_once_the_old_primary_is_fenced_and_caught_up_or_silent() {
    let now = chrono::Utc::now();
    let me = Replication {
        in_recovery: true,
        received_lsn: Some("0/3000100".into()),
        ..Default::default()
    };
    let writable = [primary(false, "0/3000100", 2)];
    let err = may_promote("pg-2", &me, &writable, now).unwrap_err();
    assert_eq!(err, "pg-1 is a primary that still accepts writes");
    let ahead = [primary(true, "0/3000200", 2)];
    let err = may_promote("pg-2", &me, &ahead, now).unwrap_err();
    assert_eq!(
        err,
        "pg-1 (fenced) is at 0/3000200, this standby has received 0/3000100"
    );
    assert_eq!(
        may_promote("pg-2", &me, &[primary(true, "0/3000100", 2)], now),
        Ok(())
    );
    // A primary silent for a minute (a failover): nothing to wait for.
    assert_eq!(
        may_promote("pg-2", &me, &[primary(false, "0/3000200", 60)], now),
        Ok(())
    );
}

fn entry(name: &str, role: &str, age: i64, ready: bool) -> InstanceStatus {
    InstanceStatus {
        name: name.into(),
        role: Some(role.into()),
        ready: Some(ready),
        reported_at: Some((chrono::Utc::now() - chrono::Duration::seconds(age)).to_rfc3339()),
        ..Default::default()
    }
}

fn status(target: &str, entries: Vec<InstanceStatus>) -> ClusterStatus {
    ClusterStatus {
        current_primary: Some("pg-1".into()),
        target_primary: Some(target.into()),
        instances_status: entries,
        ..Default::default()
    }
}

#[test]
fn the_agent_looks_each_second_while_the_primary_changes_or_is_silent() {
    let (now, stale) = (chrono::Utc::now(), Duration::from_secs(15));
    let steady = status(
        "pg-1",
        vec![
            entry("pg-1", "primary", 3, true),
            entry("pg-2", "replica", 3, true),
        ],
    );
    for pod in ["pg-1", "pg-2"] {
        assert!(!pending(pod, "pg", &steady, now, stale), "{pod}: steady");
    }
    // pg-1 silent for 20 s: a failover may come; pg-1 itself, frozen, looks at nothing.
    let silent = status(
        "pg-1",
        vec![
            entry("pg-1", "primary", 20, true),
            entry("pg-2", "replica", 3, true),
        ],
    );
    assert!(pending("pg-2", "pg", &silent, now, stale));
    assert!(!pending("pg-1", "pg", &silent, now, stale));
    // targetPrimary set to pg-2, which has not promoted yet: everyone looks.
    let promoting = status("pg-2", steady.instances_status.clone());
    for pod in ["pg-1", "pg-2", "pg-3"] {
        assert!(pending(pod, "pg", &promoting, now, stale), "{pod}");
    }
    // A hand-over: the old primary stopped, reporting itself not ready.
    let handing = status(
        "pg-1",
        vec![
            entry("pg-1", "primary", 1, false),
            entry("pg-2", "replica", 3, true),
        ],
    );
    assert!(pending("pg-2", "pg", &handing, now, stale));
    // Done: pg-2 reports itself primary.
    let done = status(
        "pg-2",
        vec![
            entry("pg-1", "primary", 40, true),
            entry("pg-2", "primary", 1, true),
            entry("pg-3", "replica", 1, true),
        ],
    );
    for pod in ["pg-2", "pg-3"] {
        assert!(!pending(pod, "pg", &done, now, stale), "{pod}");
    }
}

#[test]
fn a_standby_restarted_without_its_primary_counts_the_wal_it_replayed() {
    let now = chrono::Utc::now();
    let me = Replication {
        in_recovery: true,
        received_lsn: Some("0/3000000".into()),
        replayed_lsn: Some("0/3C542B0".into()),
        ..Default::default()
    };
    let fenced = [primary(true, "0/3C542B0", 2)];
    assert_eq!(may_promote("pg-2", &me, &fenced, now), Ok(()));
}
