//! Restores that survive what happens to pods: the agent killed (as a container kill: its
//! whole process group) during the base-backup download and during WAL replay, the store
//! going down in the middle of a recovery, and a `destinationPath` holding `%f`. Each restore
//! must end promoted with every committed row. Real PostgreSQL, barman cloud tools and MinIO;
//! needs `cargo xtask setup`.

use std::time::Duration;

use pgwarden_tests::datapath::{Instance, InstanceOptions, S3Server, archive_settings, log_tail};
use pgwarden_tests::restoring::RestoreRun;

const MIN: Duration = Duration::from_secs(60);

fn primary_at(s3: &S3Server, bucket: &str, server: &str, destination: Option<&str>) -> Instance {
    s3.create_bucket(bucket);
    let mut settings = archive_settings(s3, bucket, server);
    if let Some(d) = destination {
        settings.destination_path = d.into();
    }
    Instance::start(InstanceOptions {
        settings,
        credentials: s3.credentials.clone(),
        extra_args: vec![],
        env: vec![],
    })
}

/// Takes a base backup; returns its barman id.
fn backup(pg: &Instance, name: &str) -> String {
    let (ok, facts, stderr) = pg.backup(name);
    assert!(ok, "backup failed: {stderr}\n{facts}");
    facts["backupId"].as_str().expect("backup id").to_string()
}

/// Commits rows into `t` across `files` WAL files, each switched and archived.
fn commit_across_wal_files(pg: &Instance, files: usize) {
    let mut last = String::new();
    for i in 0..files {
        pg.psql(&format!(
            "INSERT INTO t (v) SELECT 'wal-{i}' FROM generate_series(1, 200)"
        ));
        last = pg.switch_wal();
    }
    assert!(
        pg.wait_archived(&last, 5 * MIN),
        "{last} not archived: {}",
        log_tail(&pg.log(), 30)
    );
}

/// A primary with a backup and `files` WAL files of committed rows after it; returns the
/// primary, the backup id and the committed row counts (`t`, `big`).
fn source(s3: &S3Server, bucket: &str, big_rows: u32, files: usize) -> (Instance, String, String) {
    let pg = primary_at(s3, bucket, &format!("{bucket}-src"), None);
    pg.psql("CREATE TABLE t (id bigserial PRIMARY KEY, v text)");
    pg.psql(&format!(
        "CREATE TABLE big AS SELECT g AS id, repeat(md5(g::text), 8) AS pad \
         FROM generate_series(1, {big_rows}) g"
    ));
    pg.psql("INSERT INTO t (v) SELECT 'before' FROM generate_series(1, 1000)");
    let id = backup(&pg, &format!("{bucket}-backup"));
    commit_across_wal_files(&pg, files);
    let want = counts(|sql| pg.psql(sql));
    (pg, id, want)
}

fn counts(psql: impl Fn(&str) -> String) -> String {
    psql(
        "SELECT (SELECT count(*) FROM t) || ' rows in t, ' || (SELECT count(*) FROM big) || ' in big'",
    )
}

/// The restored instance: promoted once (timeline 2), every committed row there.
fn assert_restored(run: &RestoreRun, want: &str) {
    // Shown with --nocapture: what the runs did.
    eprintln!("{}", run.log_text());
    assert_eq!(run.psql("SELECT pg_is_in_recovery()"), "f");
    assert_eq!(counts(|sql| run.psql(sql)), want, "{}", run.log_text());
    assert_eq!(
        run.psql("SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)"),
        "00000002",
        "promoted more than once: {}",
        run.log_text()
    );
}

#[test]
fn a_restore_killed_during_the_download_resumes_with_every_row() {
    let s3 = S3Server::start();
    // ~150 MB of table: a download long enough to be caught running.
    let (pg, id, want) = source(&s3, "download", 500_000, 2);

    let mut run = RestoreRun::begin(&s3, &pg, &id, "download-restored", &[]);
    let seen = run.wait_until("barman-cloud-restore writing PGDATA", 5 * MIN, |r| {
        let writing = std::fs::read_dir(r.pgdata()).is_ok_and(|mut d| d.next().is_some());
        (writing && r.group_runs("barman-cloud-restore")).then_some(())
    });
    seen.unwrap_or_else(|e| panic!("{e}"));
    run.kill_container();
    let left = std::fs::read_dir(run.pgdata()).unwrap().count();
    assert!(
        left > 0,
        "the kill left PGDATA empty: nothing to resume from"
    );
    assert!(
        !run.log_text().contains("PostgreSQL ready"),
        "the download had ended before the kill"
    );

    run.start_again();
    run.wait_ready(10 * MIN).unwrap_or_else(|e| panic!("{e}"));
    assert_restored(&run, &want);
}

#[test]
fn a_restore_killed_during_wal_replay_resumes_with_every_row() {
    let s3 = S3Server::start();
    let (pg, id, want) = source(&s3, "replay", 1_000, 40);

    let mut run = RestoreRun::begin(&s3, &pg, &id, "replay-restored", &[]);
    run.wait_until("WAL replay under way", 5 * MIN, |r| {
        (r.restored_wal_files() >= 8).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}"));
    run.kill_container();
    assert!(
        !run.log_text().contains("archive recovery complete"),
        "recovery had ended before the kill: {}",
        run.log_text()
    );

    run.start_again();
    run.wait_ready(10 * MIN).unwrap_or_else(|e| panic!("{e}"));
    assert_restored(&run, &want);

    // Killed again once promoted: a normal start, neither restored nor promoted again.
    run.kill_container();
    run.start_again();
    run.wait_ready(5 * MIN).unwrap_or_else(|e| panic!("{e}"));
    assert_restored(&run, &want);
    assert_eq!(
        run.restore_state().expect("restore.json")["phase"],
        "promoted"
    );
}

/// The mounted restore source goes away in mid-replay (its Backup deleted, the Cluster's
/// spec edited: the operator drops the ConfigMap key), and the agent is killed too: the
/// restore goes on from the store it started with, kept in the agent's state folder.
#[test]
fn a_restore_whose_mounted_source_goes_away_in_mid_replay_completes() {
    let s3 = S3Server::start();
    let (pg, id, want) = source(&s3, "gone", 1_000, 40);

    let mut run = RestoreRun::begin(&s3, &pg, &id, "gone-restored", &[]);
    run.wait_until("WAL replay under way", 5 * MIN, |r| {
        (r.restored_wal_files() >= 8).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let mounted = run.dir.path().join("restore-source.json");
    std::fs::remove_file(&mounted).expect("remove the mounted restore source");
    let replayed = run.restored_wal_files();
    run.wait_until("replay goes on without the mounted source", 5 * MIN, |r| {
        (r.restored_wal_files() >= replayed + 4).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}"));
    run.kill_container();
    run.start_again();
    run.wait_ready(10 * MIN).unwrap_or_else(|e| panic!("{e}"));
    assert_restored(&run, &want);
}

/// MinIO stops while PostgreSQL replays archived WAL (no recovery target): as long as the
/// store is down the instance must stay in recovery, whatever `barman-cloud-wal-restore`
/// says; once the store is back, recovery goes on to the end of the archive.
#[test]
fn a_store_outage_during_replay_stops_recovery_instead_of_promoting() {
    let mut s3 = S3Server::start();
    let (pg, id, want) = source(&s3, "outage", 1_000, 40);
    let secrets = [
        s3.credentials.access_key_id.clone(),
        s3.credentials.secret_access_key.clone(),
    ];

    let retry = [("PGWARDEN_WAL_RESTORE_RETRY_SECONDS", "5")];
    let mut run = RestoreRun::begin(&s3, &pg, &id, "outage-restored", &retry);
    run.wait_until("WAL replay under way", 5 * MIN, |r| {
        (r.restored_wal_files() >= 8).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}"));
    // A hot standby in mid-replay answers queries: the readiness probe must still say no.
    let answer = run.wait_until("the restoring instance answers", 2 * MIN, |r| {
        r.try_psql("SELECT pg_is_in_recovery()").ok()
    });
    assert_eq!(
        answer.unwrap_or_else(|e| panic!("{e}")),
        "t",
        "replay ended before the probe could be tried: the test needs more WAL"
    );
    assert!(
        run.probe_ready().is_err(),
        "the readiness probe passed in mid-replay"
    );
    s3.stop();

    // Down: the restore_command gives up (failure recorded), PostgreSQL stops recovery, the
    // agent starts it again, and at no point is the instance promoted.
    let failure = run.state_dir().join("wal-restore-failure.json");
    let mut polls = 0u32;
    let seen = run.wait_until(
        "recovery stopped and resumed while the store is down",
        5 * MIN,
        |r| {
            let log = r.log_text();
            assert!(
                !log.contains("archive recovery complete") && !log.contains("instance promoted"),
                "promoted while the store was down:\n{log}"
            );
            polls += 1;
            if polls.is_multiple_of(25)
                && let Ok(in_recovery) = r.try_psql("SELECT pg_is_in_recovery()")
            {
                assert_eq!(in_recovery, "t", "out of recovery while the store was down");
                // Answering, but not Ready: the pod must not be Ready in mid-replay.
                assert!(
                    r.probe_ready().is_err(),
                    "the readiness probe passed during recovery"
                );
            }
            let again = log.contains("starting it again");
            (again && failure.exists()).then_some(())
        },
    );
    seen.unwrap_or_else(|e| panic!("{e}"));
    let recorded = std::fs::read_to_string(&failure).unwrap();
    assert!(
        recorded.contains("cannot reach the object store endpoint"),
        "{recorded}"
    );
    for secret in &secrets {
        assert!(
            !recorded.contains(secret.as_str()),
            "a credential in {recorded}"
        );
        assert!(
            !run.log_text().contains(secret.as_str()),
            "a credential in the log"
        );
    }

    s3.restart();
    run.wait_ready(10 * MIN).unwrap_or_else(|e| panic!("{e}"));
    // As a kubelet probes again: Ready within a few tries once promoted.
    let mut last = String::new();
    run.wait_until("the readiness probe passes once promoted", MIN, |r| {
        r.probe_ready().map_err(|e| last = e).ok()
    })
    .unwrap_or_else(|e| panic!("{e}; the probe said: {last}"));
    assert_restored(&run, &want);
}

/// PostgreSQL expands `%f`, `%p`, `%r` and `%%` in archive_command and restore_command: a
/// destination path holding them must reach barman as written.
#[test]
fn a_destination_path_holding_percent_f_archives_backs_up_and_restores() {
    let s3 = S3Server::start();
    let destination = "s3://percent/pg%f%p";
    let pg = primary_at(&s3, "percent", "pct-src", Some(destination));
    pg.psql("CREATE TABLE t (id bigserial PRIMARY KEY, v text)");
    pg.psql("CREATE TABLE big AS SELECT 1 AS id");
    let id = backup(&pg, "percent-backup");
    commit_across_wal_files(&pg, 3);
    let want = counts(|sql| pg.psql(sql));
    let wals = s3.list("percent", "pg%f%p/pct-src/wals/");
    assert!(wals.len() >= 3, "WAL not under the literal path: {wals:?}");

    let mut run = RestoreRun::begin(&s3, &pg, &id, "pct-restored", &[]);
    run.wait_ready(10 * MIN).unwrap_or_else(|e| panic!("{e}"));
    assert_restored(&run, &want);
}
