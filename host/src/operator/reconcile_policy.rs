//! The ReconcilePolicy controller: loads a module (ConfigMap key, file, or URL pinned by
//! `sha256`; checked against `sha256` whenever set; never more than the module size limit),
//! compiles it once per digest (under the call semaphore, timed), puts it, its `limits` and
//! its `settings` in force without a restart (new limits or settings alone need no new module
//! and compile nothing), and keeps the last good module and settings when a new one fails —
//! a module that does not load, or settings the policy's `validate-settings` refuses — saying
//! why on the status. A change of a referenced ConfigMap reconciles the policy at once (see
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
use serde_json::Value;
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

/// Whether `policy` runs with `settings` (absent: `{}`), compared as JSON values.
fn has_settings(policy: &Policy, settings: Option<&Value>) -> bool {
    let wanted = settings
        .cloned()
        .unwrap_or_else(|| Value::Object(Default::default()));
    serde_json::from_str::<Value>(policy.settings()).is_ok_and(|s| s == wanted)
}

/// `policy` with `settings`, once its `validate-settings` accepts them (run off the executor,
/// under the call limit); a refusal is the ReconcilePolicy's [`Error::Settings`].
async fn with_settings(policy: &Policy, settings: Option<&Value>) -> Result<Policy> {
    if has_settings(policy, settings) {
        return Ok(policy.clone());
    }
    let settings = settings.cloned();
    let checked = policy
        .run(move |p| p.with_settings(settings.as_ref()))
        .await;
    checked.map_err(|e| match e {
        PolicyError::Denied {
            reason, message, ..
        } => Error::Settings { reason, message },
        other => Error::Policy(other),
    })
}

/// Puts `ready` (the module in force, or one just loaded) in force under the policy's limits
/// and settings when they differ from what is in force: new limits or settings take effect
/// without a change of module (nothing compiles again). Settings the policy refuses keep
/// what is in force. Returns the digest and ABI version in force.
async fn put_in_force(
    ctx: &Context,
    policy: &ReconcilePolicy,
    ready: Policy,
    limits: Limits,
) -> Result<(String, String)> {
    let name = policy.name_any();
    let mut wanted = with_settings(&ready, policy.spec.settings.as_ref()).await?;
    if wanted.limits() != limits {
        wanted = wanted.with_limits(limits);
    }
    let in_force = ctx.policies.get(&name);
    let same = in_force.as_ref().is_some_and(|p| {
        p.digest() == wanted.digest() && p.limits() == limits && p.settings() == wanted.settings()
    });
    if !same {
        info!(policy = %name, digest = %wanted.digest(), ?limits, settings = %wanted.settings(), "in force");
        ctx.policies.insert(&name, wanted.clone());
        let _ = ctx.policy_swapped.unbounded_send(());
    }
    Ok((
        wanted.digest().to_string(),
        wanted.abi_version().to_string(),
    ))
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
        return put_in_force(ctx, policy, in_force, limits).await;
    }
    let bytes = fetch(ctx, module).await?;
    let found = digest(&bytes);
    if let Some(expected) = module.sha256.as_deref().filter(|e| *e != found) {
        return Err(Error::Module(format!(
            "the module's sha256 is {found}, spec.module.sha256 expects {expected}"
        )));
    }
    if let Some(in_force) = in_force_with(ctx, &name, &found) {
        return put_in_force(ctx, policy, in_force, limits).await;
    }
    let loaded = ctx
        .engine
        .load_bounded(bytes, limits)
        .await
        .map_err(module_error)?;
    put_in_force(ctx, policy, loaded, limits).await
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
        Err(Error::Settings { reason, message }) => Load::Failed {
            reason: reason.clone(),
            error: format!(
                "the policy refuses spec.settings: {message}; the settings in force stay"
            ),
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
