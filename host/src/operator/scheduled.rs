//! The ScheduledBackup controller: observe → [`plans::scheduled`] (the policy parses the
//! schedule and says whether a Backup is due; its name derives from the scheduled time, so a
//! restarted operator never duplicates one) → apply: the Backup first, then the whole status.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use kube::ResourceExt;
use kube::runtime::controller::Action as Requeue;
use pgwarden_crds::ScheduledBackup;
use tracing::instrument;

use super::apply;
use super::context::Context;
use super::errors::Result;
use super::plans;
use super::snapshot::Observe;
use super::status;

#[instrument(skip(scheduled, ctx), fields(scheduled_backup = %scheduled.name_any()))]
pub async fn reconcile(scheduled: Arc<ScheduledBackup>, ctx: Arc<Context>) -> Result<Requeue> {
    ctx.metrics.reconciled("ScheduledBackup");
    let ns = scheduled.namespace().unwrap_or_default();
    let name = &scheduled.spec.cluster.name;
    let cluster = ctx.stores.cluster(&ns, name);
    let chosen = ctx
        .policies
        .for_cluster_of("ScheduledBackup", &ns, name, cluster.as_deref());
    let plan = match chosen {
        Ok(chosen) => {
            let (input, c, policy) = (scheduled.clone(), cluster.clone(), chosen.clone());
            chosen
                .policy
                .run(move |_| {
                    Ok(plans::scheduled(
                        Ok(policy),
                        &input,
                        c.as_deref(),
                        Utc::now(),
                    ))
                })
                .await?
        }
        Err(e) => plans::scheduled(Err(e), &scheduled, cluster.as_deref(), Utc::now()),
    };
    // The Backup a run creates first, then the status that records the run.
    apply::apply(&ctx, &plan.actions).await?;
    if let Some(status) = &plan.status {
        status::apply_status(&ctx, &*scheduled, status).await?;
    }
    apply::apply(&ctx, &plan.events).await?;
    if let Some(error) = plan.error {
        return Err(error);
    }
    Ok(match plan.requeue {
        Some(seconds) => Requeue::requeue(Duration::from_secs(seconds)),
        None => Requeue::await_change(),
    })
}
