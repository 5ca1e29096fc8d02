//! What an agent does about `status.targetPrimary` (instance/role.rs), with real PostgreSQL
//! and no Kubernetes: a primary that is not the target is fenced (a write is refused, a
//! session open before the fence is ended, and a restart comes back read-only); a streaming
//! standby that is the target promotes (out of recovery, writable, the row the primary
//! committed before there). Before role.rs there was nothing to call: no fence, no promotion.
//!
//! Needs PostgreSQL (`PGWARDEN_PG_BIN`, default /usr/lib/postgresql/15/bin).

use std::path::Path;
use std::process::Command;

use pgwarden::instance::facts::{REPLICATION_QUERY, Replication};
use pgwarden::instance::postgres::{Postgres, RunAs};
use pgwarden::instance::{fencing, role};
use pgwarden_tests::datapath::deps;

fn pg(dir: &Path, name: &str, port: u16) -> Postgres {
    Postgres {
        bin: deps().pg_bin.clone(),
        pgdata: dir.join(name),
        port,
        socket_dir: dir.to_path_buf(),
        run_as: RunAs::detect().unwrap(),
    }
}

/// `tool args...` as PostgreSQL's user; panics with its stderr on failure.
fn run(pg: &Postgres, tool: &str, args: &[&str]) {
    let mut cmd = Command::new(pg.bin.join(tool));
    cmd.args(args);
    let out = pg.run_as.apply(&mut cmd).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{tool} {args:?}: {stderr}");
}

fn start(pg: &Postgres) {
    let opts = format!(
        "-k {} -p {} -c listen_addresses=''",
        pg.socket_dir.display(),
        pg.port
    );
    let data = pg.pgdata.display().to_string();
    let log = format!("{data}.log");
    run(
        pg,
        "pg_ctl",
        &["-D", &data, "-o", &opts, "-l", &log, "-w", "start"],
    );
}

fn stop(pg: &Postgres) {
    run(
        pg,
        "pg_ctl",
        &[
            "-D",
            &pg.pgdata.display().to_string(),
            "-m",
            "fast",
            "-w",
            "stop",
        ],
    );
}

fn facts(pg: &Postgres) -> Replication {
    serde_json::from_str(&pg.query(REPLICATION_QUERY).unwrap()).unwrap()
}

#[test]
fn a_fenced_primary_refuses_writes_and_the_target_standby_promotes() {
    let dir = tempfile::tempdir().unwrap();
    RunAs::detect().unwrap().own(dir.path(), false).unwrap();
    let (primary, standby) = (
        pg(dir.path(), "primary", 54411),
        pg(dir.path(), "standby", 54412),
    );
    run(
        &primary,
        "initdb",
        &[
            "-D",
            &primary.pgdata.display().to_string(),
            "-U",
            "postgres",
        ],
    );
    start(&primary);
    primary.query("CREATE TABLE t AS SELECT 1 AS id").unwrap();
    let host = dir.path().display().to_string();
    let (data, port) = (
        standby.pgdata.display().to_string(),
        primary.port.to_string(),
    );
    run(
        &standby,
        "pg_basebackup",
        &[
            "-h", &host, "-p", &port, "-U", "postgres", "-D", &data, "-R",
        ],
    );
    start(&standby);
    primary.query("INSERT INTO t VALUES (2)").unwrap();
    assert!(facts(&standby).in_recovery);

    // The primary is not the target: fenced.
    assert_eq!(
        role::act("primary", &facts(&primary), Some("standby")),
        role::Act::Fence
    );
    fencing::fence(&primary).unwrap();
    let refused = primary
        .query("INSERT INTO t VALUES (3)")
        .unwrap_err()
        .to_string();
    assert!(refused.contains("read-only transaction"), "{refused}");
    assert!(facts(&primary).read_only);
    stop(&primary);
    start(&primary);
    assert!(facts(&primary).read_only, "a restart comes back fenced");
    assert_eq!(
        role::act("primary", &facts(&primary), Some("standby")),
        role::Act::Nothing
    );

    // The standby is the target: it promotes, has the primary's rows and takes writes.
    assert_eq!(
        role::act("standby", &facts(&standby), Some("standby")),
        role::Act::Promote
    );
    role::promote(&standby).unwrap();
    let after = facts(&standby);
    assert!(!after.in_recovery && !after.read_only, "{after:?}");
    standby.query("INSERT INTO t VALUES (4)").unwrap();
    assert_eq!(
        standby
            .query("SELECT string_agg(id::text, ',' ORDER BY id) FROM t")
            .unwrap(),
        "1,2,4"
    );
    stop(&standby);
    stop(&primary);
}
