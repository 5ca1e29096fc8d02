//! The native archiver under faults (issue 14): real PostgreSQL under pgbench, the agent
//! archiving with `archiver: native`, MinIO, barman-cloud-backup for the base backup, and a
//! restore to the latest WAL to count what survived. Needs `cargo xtask setup`.
//!
//! ```text
//!   the store stops for a while under pgbench   PostgreSQL keeps every unarchived file; once
//!                                               the store is back the lag drains, and a restore
//!                                               to latest holds every committed transaction
//!   the agent is SIGKILLed during uploads       no segment is taken for archived when it is
//!   (PostgreSQL goes with it), three times      not: a restore to latest holds every committed
//!                                               transaction; every WAL object is a whole segment
//! ```
//!
//! The load is pgbench running a WAL-heavy script at a fixed rate (each transaction adds 1,000
//! rows, ~0.5 MB of WAL; 20 a second fill a segment every ~1.6 s): TPC-B would fill one
//! every ~20 s, too few for an outage of seconds to matter. "Committed" is what the source
//! holds after the load: every row of a transaction PostgreSQL acknowledged.

use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

use pgwarden_crds::settings::Archiver;
use pgwarden_tests::datapath::{
    Instance, InstanceOptions, S3Server, archive_settings, log_tail, wait_for,
};

const BUCKET: &str = "faults";
const SEGMENT: u64 = 16 << 20;

/// A primary archiving natively (gzip or uncompressed), its ledger table made, a base backup
/// taken; returns it and the backup's id.
fn native_primary(s3: &S3Server, server: &str, gzip: bool) -> (Instance, String) {
    s3.create_bucket(BUCKET);
    let mut settings = archive_settings(s3, BUCKET, server);
    settings.archiver = Archiver::Native;
    if !gzip {
        settings.compression = None;
    }
    let pg = Instance::start(InstanceOptions {
        settings,
        credentials: s3.credentials.clone(),
        extra_args: vec![],
        env: vec![],
    });
    pg.psql("CREATE TABLE ledger(tx int, pad text)");
    let (ok, facts, stderr) = pg.backup("base");
    assert!(ok, "backup failed: {stderr}\n{facts}");
    let id = facts["backupId"].as_str().expect("backup id").to_string();
    (pg, id)
}

/// WAL files PostgreSQL still waits to see archived.
fn ready(pg: &Instance) -> usize {
    let dir = pg.pgdata().join("pg_wal/archive_status");
    std::fs::read_dir(dir).map_or(0, |d| {
        d.filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().ends_with(".ready"))
            .count()
    })
}

fn committed(pg: &Instance) -> u64 {
    pg.psql("SELECT count(*) FROM ledger").parse().unwrap()
}

/// pgbench with the ledger script at 20 transactions a second for `seconds`.
fn load(pg: &Instance, seconds: u32) -> Child {
    let script: PathBuf = pg.dir.path().join("ledger.sql");
    std::fs::write(
        &script,
        "INSERT INTO ledger SELECT :client_id, repeat('x', 400) FROM generate_series(1, 1000);\n",
    )
    .unwrap();
    let script = script.display().to_string();
    pg.pgbench_spawn_with(2, seconds, &["-R", "20", "-f", &script])
}

/// Every transaction so far in a WAL file PostgreSQL has archived; how long that took.
fn drain(pg: &Instance, timeout: Duration) -> Duration {
    let t0 = Instant::now();
    let last = pg.switch_wal();
    assert!(
        pg.wait_archived(&last, timeout),
        "{last} not archived within {timeout:?} ({} .ready): {}",
        ready(pg),
        log_tail(&pg.log(), 30)
    );
    t0.elapsed()
}

/// A new instance restored from `backup_id` to the end of `from`'s archived WAL.
fn restore_latest(s3: &S3Server, from: &Instance, backup_id: &str, server: &str) -> Instance {
    let source = from.dir.path().join(format!("source-{server}.json"));
    std::fs::write(&source, serde_json::to_vec(&from.opts.settings).unwrap()).unwrap();
    let mut settings = from.opts.settings.clone();
    settings.server_name = server.into();
    Instance::start(InstanceOptions {
        settings,
        credentials: s3.credentials.clone(),
        extra_args: vec![
            "--restore-backup".into(),
            backup_id.into(),
            "--restore-source".into(),
            source.display().to_string(),
        ],
        env: vec![],
    })
}

fn finish(mut bench: Child) {
    // Killed runs end with errors; only its end matters here.
    let _ = bench.wait();
}

#[test]
fn a_store_outage_under_pgbench_loses_no_committed_transaction() {
    let mut s3 = S3Server::start();
    let (pg, backup_id) = native_primary(&s3, "outage", true);
    let bench = load(&pg, 40);
    std::thread::sleep(Duration::from_secs(8));
    s3.stop();
    let down = Instant::now();
    std::thread::sleep(Duration::from_secs(15));
    let held = ready(&pg);
    s3.restart();
    eprintln!(
        "store down {:.1} s under pgbench: {held} WAL files waiting",
        down.elapsed().as_secs_f64()
    );
    // The outage was felt: files piled up instead of being dropped or taken for archived.
    assert!(
        held >= 2,
        "only {held} .ready files after 15 s without a store"
    );
    finish(bench);
    let want = committed(&pg);
    let took = drain(&pg, Duration::from_secs(240));
    eprintln!(
        "{want} rows committed; lag drained {:.1} s after pgbench",
        took.as_secs_f64()
    );
    assert!(want > 0);

    let restored = restore_latest(&s3, &pg, &backup_id, "outage-restored");
    assert_eq!(
        committed(&restored),
        want,
        "a restore to latest lost transactions: {}",
        log_tail(&restored.log(), 30)
    );
}

/// `key size` of every object under `prefix`, listed with barman's own boto3.
fn sizes(s3: &S3Server, prefix: &str) -> Vec<(String, u64)> {
    let script = "import boto3,sys\n\
        s3=boto3.client('s3',endpoint_url=sys.argv[1])\n\
        p=s3.get_paginator('list_objects_v2')\n\
        for page in p.paginate(Bucket=sys.argv[2],Prefix=sys.argv[3]):\n\
        \x20   [print(o['Key'],o['Size']) for o in page.get('Contents',[])]\n";
    s3.boto3(script, &[BUCKET, prefix])
        .lines()
        .map(|l| {
            let (k, n) = l.rsplit_once(' ').unwrap();
            (k.to_string(), n.parse().unwrap())
        })
        .collect()
}

#[test]
fn an_agent_killed_during_uploads_takes_no_segment_for_archived() {
    let s3 = S3Server::start();
    // Uncompressed: each upload is a whole 16 MiB body, so kills land in the middle of some.
    let (mut pg, backup_id) = native_primary(&s3, "killed", false);
    let mut kills = 0;
    for round in 0..3 {
        let bench = load(&pg, 60);
        // A few segments archived in this life of the agent first.
        std::thread::sleep(Duration::from_secs(4));
        // Kill while an upload runs: a .ready file is picked up within 200 ms and a 16 MiB
        // PUT takes longer than that here; vary the moment a little from round to round.
        let busy = wait_for(Duration::from_secs(30), Duration::from_millis(50), || {
            (ready(&pg) >= 1).then_some(())
        });
        std::thread::sleep(Duration::from_millis(150 + 150 * round));
        eprintln!(
            "round {round}: {} .ready at the kill (busy: {busy:?})",
            ready(&pg)
        );
        pg.kill_agent();
        kills += 1;
        finish(bench);
        pg.restart_agent();
    }
    assert_eq!(kills, 3);
    let want = committed(&pg);
    drain(&pg, Duration::from_secs(240));

    // No object under a final name is anything but a whole segment.
    let objects = sizes(&s3, "pg/killed/wals/");
    let segments: Vec<_> = objects
        .iter()
        .filter(|(k, _)| k.rsplit('/').next().is_some_and(|f| f.len() == 24))
        .collect();
    assert!(segments.len() >= 6, "{objects:?}");
    for (key, size) in &segments {
        assert_eq!(*size, SEGMENT, "{key} is not a whole segment");
    }
    // No hole: a segment PostgreSQL was told is archived while it was not would be one.
    let mut numbers: Vec<u64> = segments
        .iter()
        .map(|(k, _)| {
            let hex = |r: std::ops::Range<usize>| u64::from_str_radix(&k[r], 16).unwrap();
            // 16 MiB segments: 256 to a log file.
            hex(k.len() - 16..k.len() - 8) * 0x100 + hex(k.len() - 8..k.len())
        })
        .collect();
    numbers.sort();
    let holes: Vec<_> = numbers.windows(2).filter(|w| w[1] != w[0] + 1).collect();
    assert!(holes.is_empty(), "segments missing after {holes:?}");
    let restored = restore_latest(&s3, &pg, &backup_id, "killed-restored");
    assert_eq!(
        committed(&restored),
        want,
        "a restore to latest lost transactions: {}",
        log_tail(&restored.log(), 30)
    );
}
