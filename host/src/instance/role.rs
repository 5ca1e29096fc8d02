//! Who this instance is, told to the operator: each tick the agent asks PostgreSQL for its
//! replication facts (`pg_is_in_recovery()`, received and replayed LSN, lag) and applies its
//! own entry of the Cluster's `status.instancesStatus`. Only while PostgreSQL answers: a
//! silent entry (an old `reportedAt`) is what the operator's failover counts as unhealthy.

use anyhow::{Context, Result};

use super::facts::{self, REPLICATION_QUERY, Replication};
use super::options::RunOptions;
use super::postgres::Postgres;
use super::report::Reporter;

/// Gathers and reports this instance's replication facts; a failure is logged, not fatal
/// (the silence is the report).
pub async fn tick(opts: &RunOptions, pg: &Postgres, reporter: &Reporter) {
    if let Err(e) = report(opts, pg, reporter).await {
        eprintln!("pgwarden-agent: cannot report the instance's replication facts: {e:#}");
    }
}

async fn report(opts: &RunOptions, pg: &Postgres, reporter: &Reporter) -> Result<()> {
    let (Some(cluster), Some(pod)) = (&opts.cluster, &opts.pod_name) else {
        return Ok(());
    };
    let row = tokio::task::block_in_place(|| pg.query(REPLICATION_QUERY))?;
    let replication: Replication = serde_json::from_str(&row)
        .with_context(|| format!("PostgreSQL's replication facts are not JSON: {row}"))?;
    let status = facts::instance_status(pod, &replication, &super::archive::now());
    let patch = facts::instance_status_patch(cluster, &status);
    let manager = facts::instance_field_manager(pod);
    reporter
        .apply_status_as(&manager, "Cluster", "clusters", cluster, &patch)
        .await
}
