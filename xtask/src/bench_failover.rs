//! `cargo xtask bench failover`: builds the agent, then runs the failover benchmark
//! (`tests/tests/switchover.rs`, test `bench_failover`) through the local node: the real
//! operator, agents, PostgreSQL 15, barman and MinIO, `instances: 3`.
//!
//! Two runs, each under pgbench (4 clients on the primary `pg-1`) with a writer that inserts
//! numbered rows one autocommit statement at a time and keeps the numbers acknowledged:
//! - **switchover**: the Cluster annotated `pgwarden.io/switchover-to=pg-2`; the time from the
//!   annotation to the first write `pg-2` acknowledges, and the acknowledged numbers `pg-2`
//!   lacks (the goal: 0);
//! - **failover**: `pg-1`'s container frozen (SIGSTOP of its process group: PostgreSQL and the
//!   agent stop answering, as a node that hangs); detection is the time until the operator
//!   sets `status.targetPrimary` to a standby (the agents' 25 s freshness plus the policy's
//!   delay: the default policy waits 30 s), promotion the time from then to the first write the
//!   new primary acknowledges; lost is the acknowledged numbers it lacks (asynchronous
//!   replication: those the standby had not received when `pg-1` froze).
//!
//! Figures go to stdout and `target/bench/failover.json`. Measured 2026-11-30 on the 2-core
//! development machine with a load average of 13-15 (six engineers building and testing):
//!
//! ```text
//!   switchover  writable 20.7 s after the annotation (7.4 s, 8.7 s in two other runs)
//!               lost 0 of 113 acknowledged
//!   failover    detection 27.1 s, promotion 10.4 s, writable after 37.4 s
//!               lost 0 of 92 acknowledged
//! ```
//!
//! With the final switchover (the old primary stops only once the target streams from it),
//! through `cargo xtask bench failover`, load average 7-8: switchover writable 9.1 s after
//! the annotation, 0 of 309 lost; failover detection 29.2 s, promotion 12.1 s, writable after
//! 41.2 s, 0 of 279 lost.
//!
//! Both were bound by the agents' 10 s tick (`--report-interval`): the old primary noticed the
//! new `targetPrimary`, then the target noticed the old one's last report, each on its tick.
//! Since 2026-12-01 an agent reads its Cluster each second while a change of primary is under
//! way (`host/src/instance/role.rs`, `pending`), and the operator looks again every 2 s while
//! the primary is unhealthy. The failover's promotion is now also given as PostgreSQL sees it
//! (`outOfRecoverySeconds`: the target out of recovery after detection) beside the writer's
//! first acknowledged write on it (`promotionSeconds`: the writer's psql on the frozen `pg-1`
//! gives up after 5 s before it tries the next pod, so that adds up to 5 s); each run records
//! the load average.
//!
//! Measured 2026-12-01 with those changes (instance pods from the instance image under runc;
//! the full test suite ran beside it, load average 7.8 during the switchover, 11.3 during
//! the failover):
//!
//! ```text
//!   switchover  writable 15.8 s after the annotation, lost 0 of 119 acknowledged
//!   failover    detection 25.5 s, out of recovery 10.4 s after it, the writer's first
//!               write 16.6 s after it (5 s of that its psql giving up on pg-1); lost 0 of 81
//! ```
//!
//! The goal (writable within 10 s of detection) is not shown met on a loaded machine; a quiet
//! run is still to do.

use anyhow::{Context, Result, bail};
use std::process::Command;

use crate::{deps, paths};

/// Installs the data path, builds `pgwarden`, runs the benchmark.
pub fn run() -> Result<()> {
    let found = deps::ensure_all()?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let root = paths::root();
    let pgwarden = paths::build_pgwarden_for_bench(false)?;
    let status = Command::new(&cargo)
        .args(["test", "-p", "pgwarden-tests", "--test", "switchover", "--"])
        .args([
            "bench_failover",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .envs(found.env())
        .env("PGWARDEN_BIN", &pgwarden)
        .env(
            "PGWARDEN_BENCH_OUT",
            root.join("target/bench/failover.json"),
        )
        .current_dir(&root)
        .status()
        .context("cannot run the benchmark")?;
    if !status.success() {
        bail!("the failover benchmark failed");
    }
    Ok(())
}
