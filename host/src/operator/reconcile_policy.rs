//! The ReconcilePolicy controller: loads a module (ConfigMap key, file, or URL pinned by
//! `sha256`; checked against `sha256` whenever set; never more than the module size limit),
//! compiles it once per digest (under the call semaphore, timed), puts it and its `limits` in
//! force without a restart (new limits alone need no new module), and keeps the last good module when a new one fails — saying why
//! on the status. A change of a referenced ConfigMap reconciles the policy at once (see
//! `operator::serve`), so new module bytes are in force within seconds. The status is the
//! core's (`pgwarden_core::policy`), whole, applied through `operator::status`.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::runtime::controller::Action as Requeue;
use kube::{Resource, ResourceExt};
use pgwarden_core::policy::{Load, PolicyReport, policy_status};
use pgwarden_crds::{ModuleSource, ReconcilePolicy};
use tracing::{info, instrument, warn};

use super::apply::publish;
use super::context::Context;
use super::errors::{Error, Result};
use super::status;
use crate::policy::{Limits, Policy, PolicyError, digest};
use pgwarden_core::plan::{EventType, reference};

/// Reads the module bytes from their source.
async fn fetch(ctx: &Context, source: &ModuleSource) -> Result<Vec<u8>> {
    if let Some(cm) = &source.config_map {
        let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &cm.namespace);
        let map = api.get_opt(&cm.name).await?.ok_or_else(|| {
            Error::Module(format!(
                "ConfigMap {}/{} not found (spec.module.configMap)",
                cm.namespace, cm.name
            ))
        })?;
        let binary = map
            .binary_data
            .as_ref()
            .and_then(|d| d.get(&cm.key))
            .map(|b| b.0.clone());
        return binary.ok_or_else(|| {
            Error::Module(format!(
                "ConfigMap {}/{} has no binaryData key {} (spec.module.configMap.key): create it with kubectl create configmap {} --from-file={}=policy.wasm",
                cm.namespace, cm.name, cm.key, cm.name, cm.key
            ))
        });
    }
    if let Some(path) = &source.file {
        return crate::policy::fetch::read_file(path, ctx.fetcher.max_bytes)
            .await
            .map_err(|e| Error::Module(e.to_string()));
    }
    if let Some(url) = &source.url {
        return ctx
            .fetcher
            .pinned(url, source.sha256.as_deref())
            .await
            .map_err(|e| Error::Module(e.to_string()));
    }
    Err(Error::Module(
        "spec.module: set one of configMap, file or url".into(),
    ))
}

/// The policy in force under this name when its module has `digest`.
fn in_force_with(ctx: &Context, name: &str, digest: &str) -> Option<Policy> {
    ctx.policies.get(name).filter(|p| p.digest() == digest)
}

/// The module in force under the policy's limits: new limits take effect without a change
/// of module (nothing compiles again). Returns the digest and ABI version in force.
fn retuned(ctx: &Context, name: &str, in_force: Policy, limits: Limits) -> (String, String) {
    if in_force.limits() != limits {
        ctx.policies.insert(name, in_force.with_limits(limits));
        info!(policy = %name, ?limits, "new limits in force");
        let _ = ctx.policy_swapped.unbounded_send(());
    }
    (
        in_force.digest().to_string(),
        in_force.abi_version().to_string(),
    )
}

/// A module that does not load is the ReconcilePolicy's fault (`ModuleLoadFailed`), not a
/// failed decision (`PolicyFailed`).
fn module_error(e: PolicyError) -> Error {
    match e {
        PolicyError::Load(detail) => Error::Module(detail),
        other => Error::Module(other.to_string()),
    }
}

/// Loads the module if its digest is new, and puts the policy's limits in force; returns the
/// digest and ABI version in force.
async fn load(ctx: &Context, policy: &ReconcilePolicy) -> Result<(String, String)> {
    let name = policy.name_any();
    let limits = Limits::from(policy.spec.limits.as_ref());
    let module = &policy.spec.module;
    // A URL whose pin is in force already: nothing to download.
    let pin = module.sha256.as_deref().filter(|_| module.url.is_some());
    if let Some(in_force) = pin.and_then(|pin| in_force_with(ctx, &name, pin)) {
        return Ok(retuned(ctx, &name, in_force, limits));
    }
    let bytes = fetch(ctx, module).await?;
    let found = digest(&bytes);
    if let Some(expected) = module.sha256.as_deref().filter(|e| *e != found) {
        return Err(Error::Module(format!(
            "the module's sha256 is {found}, spec.module.sha256 expects {expected}"
        )));
    }
    if let Some(in_force) = in_force_with(ctx, &name, &found) {
        return Ok(retuned(ctx, &name, in_force, limits));
    }
    let loaded = ctx
        .engine
        .load_bounded(bytes, limits)
        .await
        .map_err(module_error)?;
    let abi = loaded.abi_version().to_string();
    ctx.policies.insert(&name, loaded);
    info!(policy = %name, digest = %found, "module in force");
    let _ = ctx.policy_swapped.unbounded_send(());
    Ok((found, abi))
}

#[instrument(skip(policy, ctx), fields(policy = %policy.name_any()))]
pub async fn reconcile(policy: Arc<ReconcilePolicy>, ctx: Arc<Context>) -> Result<Requeue> {
    ctx.metrics.reconciled("ReconcilePolicy");
    let loaded = load(&ctx, &policy).await;
    let report = report(&policy, &loaded);
    write(&ctx, &policy, &report).await?;
    Ok(requeue(&ctx, loaded))
}

/// The whole status from what the load gave (the core computes it).
fn report(policy: &ReconcilePolicy, loaded: &Result<(String, String)>) -> PolicyReport {
    let load = match loaded {
        Ok((digest, abi)) => Load::InForce {
            digest: digest.clone(),
            abi: abi.clone(),
        },
        Err(e) => Load::Failed {
            reason: e.reason().to_string(),
            error: e.to_string(),
        },
    };
    let before = policy.status.clone().unwrap_or_default();
    policy_status(&before, &load, policy.meta().generation, Timestamp::now())
}

/// Applies the status when it changed, and tells its `Ready` condition in an Event then.
async fn write(ctx: &Context, policy: &ReconcilePolicy, report: &PolicyReport) -> Result<()> {
    // A steady state writes and tells nothing.
    if !status::apply_status(ctx, policy, &report.status).await? {
        return Ok(());
    }
    let target = reference(policy);
    let ready = &report.ready;
    let kind = if ready.ok {
        EventType::Normal
    } else {
        EventType::Warning
    };
    publish(ctx, &target, kind, &ready.reason, &ready.message).await
}

/// A module in force is checked again in 5 minutes (a ConfigMap's change wakes it sooner); a
/// failed load is retried in 30 s.
fn requeue(ctx: &Context, loaded: Result<(String, String)>) -> Requeue {
    match loaded {
        Ok(_) => Requeue::requeue(Duration::from_secs(300)),
        Err(e) => {
            warn!(error = %e, "module not loaded");
            ctx.metrics.failed("ReconcilePolicy", e.metric_label());
            Requeue::requeue(Duration::from_secs(30))
        }
    }
}
