//! The Backup controller: observe (the caches) → [`plans::backup`] (the policy picks the
//! instance and settings, then decides each phase from the facts; the core computes the
//! status) → apply. The agent on the target pod runs barman-cloud-backup when the Backup is
//! `running` with its pod in `status.instanceID` and the decided `status.settings`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use kube::ResourceExt;
use kube::runtime::controller::Action as Requeue;
use pgwarden_crds::Backup;
use tracing::instrument;

use super::apply;
use super::context::Context;
use super::errors::Result;
use super::plans::{self, Plan};
use super::snapshot::Observe;
use super::status;

#[instrument(skip(backup, ctx), fields(backup = %backup.name_any(), namespace = backup.namespace().unwrap_or_default()))]
pub async fn reconcile(backup: Arc<Backup>, ctx: Arc<Context>) -> Result<Requeue> {
    ctx.metrics.reconciled("Backup");
    if (backup.status.as_ref()).is_some_and(|s| s.phase.is_some_and(|p| p.is_final())) {
        return Ok(Requeue::await_change());
    }
    let ns = backup.namespace().unwrap_or_default();
    let name = &backup.spec.cluster.name;
    let cluster = ctx.stores.cluster(&ns, name);
    let plan = match ctx
        .policies
        .for_cluster_of("Backup", &ns, name, cluster.as_deref())
    {
        Ok(chosen) => {
            let (stores, input, policy) = (ctx.stores.clone(), backup.clone(), chosen.clone());
            let started = Instant::now();
            let plan = chosen
                .policy
                .run(move |_| Ok(plans::backup(&stores, Ok(policy), &input, Utc::now())))
                .await?;
            ctx.metrics.policy_call("backup", started.elapsed());
            plan
        }
        Err(e) => plans::backup(&ctx.stores, Err(e), &backup, Utc::now()),
    };
    write(&ctx, &backup, plan).await
}

/// Applies a plan: its writes, the status, then its Events; its error goes on to the backoff.
async fn write(ctx: &Context, backup: &Backup, plan: Plan) -> Result<Requeue> {
    apply::apply(ctx, &plan.actions).await?;
    if let Some(status) = &plan.status {
        status::apply_status(ctx, backup, status).await?;
    }
    apply::apply(ctx, &plan.events).await?;
    if let Some(error) = plan.error {
        return Err(error);
    }
    Ok(match plan.requeue {
        Some(seconds) => Requeue::requeue(Duration::from_secs(seconds)),
        None => Requeue::await_change(),
    })
}
