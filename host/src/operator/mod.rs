//! The operator: controllers for Cluster, Backup, ScheduledBackup and ReconcilePolicy that ask
//! the policy, plan, check and apply.
//!
//! ```text
//!   watchers ─► reflector stores (observed state) ─► reconcile(object)
//!     reconcile: policy (registry) ─► decisions ─► plan (Actions) ─► guardrails ─► apply
//!     apply: skip what is already so (zero writes in a steady state), server-side apply,
//!            merge-patch status, Events
//!   ReconcilePolicy: load module ─► registry swap ─► every Cluster reconciled again
//!     (also on a change of the ConfigMap it loads from, watched by metadata)
//!   Retention (per Cluster): policy.retention ─► Backups' status.deletion ─► the primary's
//!     agent runs barman-cloud-backup-delete ─► the Backup objects removed
//!   Lease: one replica leads, the others wait (ready, not leading); /metrics, /healthz,
//!     /readyz, /leader
//! ```

pub mod applied;
pub mod apply;
mod backoff;
mod backup;
mod claims;
mod cluster;
mod cluster_metrics;
pub mod conditions;
mod context;
mod controllers;
pub mod dry;
mod errors;
pub mod events;
mod failure;
mod generated;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod observe;
pub mod plans;
pub mod quantity;
mod reconcile_policy;
mod registry;
mod retention;
pub mod rollout;
mod scheduled;
pub mod snapshot;
mod snapshot_read;
mod status;
mod step;

use std::fmt::Debug;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};
use tracing::{info, warn};

pub use context::{Context, MANAGER, Stores};
pub use errors::{Error, Result};
pub use registry::Registry;

use crate::policy::{Engine, EngineConfig, Limits, Policy};

/// `pgwarden operator`.
#[derive(clap::Args, Debug)]
pub struct OperatorArgs {
    /// Where /metrics, /healthz, /readyz and /leader listen (`address:port`). Each client gets
    /// 5 s to send its request, 64 are served at once (`http::Limits`).
    #[arg(
        long,
        visible_alias = "metrics-addr",
        env = "PGWARDEN_LISTEN_ADDRESS",
        default_value = "127.0.0.1:8080"
    )]
    pub listen_address: String,
    /// The default policy module (.wasm), used by Clusters that name no ReconcilePolicy.
    /// Default: the module of `policies/default` built into this binary.
    #[arg(long, env = "PGWARDEN_DEFAULT_POLICY")]
    pub default_policy: Option<PathBuf>,
    /// Folder of the compiled-module cache.
    #[arg(long, env = "PGWARDEN_POLICY_CACHE")]
    pub policy_cache: Option<PathBuf>,
    /// Size limit of a module downloaded from a ReconcilePolicy's `spec.module.url`.
    #[arg(long, env = "PGWARDEN_POLICY_MAX_MODULE_BYTES", default_value_t = crate::policy::fetch::DEFAULT_MAX_MODULE_BYTES)]
    pub policy_max_module_bytes: usize,
    /// Allow `spec.module.url` over plain http (default: https only).
    #[arg(long, env = "PGWARDEN_POLICY_ALLOW_HTTP")]
    pub policy_allow_http: bool,
    /// Allow `spec.module.url` hosts on loopback, link-local (the cloud metadata address),
    /// private and other non-public addresses (default: refused).
    #[arg(long, env = "PGWARDEN_POLICY_ALLOW_PRIVATE_ADDRESSES")]
    pub policy_allow_private_addresses: bool,
    /// `<namespace>=<ReconcilePolicy>`: every Cluster of the namespace is decided by that policy,
    /// whatever its `spec.policy` says (repeatable, or comma-separated in the variable).
    #[arg(long, env = "PGWARDEN_NAMESPACE_POLICY", value_delimiter = ',', value_parser = registry::parse_binding)]
    pub namespace_policy: Vec<(String, String)>,
    /// Namespace of the leader-election Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,
    /// Name of the leader-election Lease.
    #[arg(long, default_value = "pgwarden-operator")]
    pub lease_name: String,
    /// This replica's identity in the Lease. Default: pod name, else host name and pid.
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Reconcile only this namespace's objects (ReconcilePolicies stay cluster-wide). Default:
    /// every namespace.
    #[arg(long, env = "PGWARDEN_WATCH_NAMESPACE")]
    pub watch_namespace: Option<String>,
}

/// Runs the operator until SIGINT/SIGTERM or lost leadership.
pub fn run(args: OperatorArgs) -> anyhow::Result<()> {
    tokio::runtime::Runtime::new()
        .context("cannot start the async runtime")?
        .block_on(serve(args))
}

fn identity(args: &OperatorArgs) -> String {
    args.identity.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    })
}

async fn serve(args: OperatorArgs) -> anyhow::Result<()> {
    let client = Client::try_default()
        .await
        .context("cannot reach the API server (KUBECONFIG or in-cluster)")?;
    let metrics = Arc::new(metrics::Metrics::default());
    let identity = identity(&args);
    let lease = probes_and_lease(&args, &client, &metrics, &identity).await?;
    let (engine, default) = load_engine(&args)?;

    let won = tokio::select! {
        won = lease.acquire() => won,
        () = shutdown_signal() => return Ok(()),
    };
    metrics.set_leading(true);

    let ns = args.watch_namespace.as_deref();
    let watched = controllers::watch(&client, ns);
    metrics.watch_clusters(
        watched.stores.clusters.clone(),
        watched.stores.backups.clone(),
    );
    let (swapped_tx, swapped_rx) = futures::channel::mpsc::unbounded();
    let ctx = Arc::new(Context {
        client: client.clone(),
        stores: watched.stores.clone(),
        policies: Registry::new(default).bound(args.namespace_policy.iter().cloned()),
        reporter: events::Reporter {
            instance: identity.clone(),
        },
        metrics: metrics.clone(),
        engine,
        fetcher: crate::policy::fetch::Fetcher {
            cache_dir: args.policy_cache.as_ref().map(|d| d.join("downloads")),
            max_bytes: args.policy_max_module_bytes,
            allow_http: args.policy_allow_http,
            allow_private: args.policy_allow_private_addresses,
            ..Default::default()
        },
        policy_swapped: swapped_tx,
    });
    let running = controllers::run(watched, &client, ns, &ctx, swapped_rx);
    info!(%identity, "operator running");
    lead(running, &lease, won, &metrics, &args.lease_name).await
}

type Election = leader::LeaderElection;

/// Binds the listener, serves /metrics and the probes, and prepares the Lease (not yet
/// asked for).
async fn probes_and_lease(
    args: &OperatorArgs,
    client: &Client,
    metrics: &Arc<metrics::Metrics>,
    identity: &str,
) -> anyhow::Result<Arc<Election>> {
    let listener = tokio::net::TcpListener::bind(&args.listen_address)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen_address))?;
    let lease = Arc::new(leader::LeaderElection::new(
        leader::KubeLease {
            api: Api::<Lease>::namespaced(client.clone(), &args.lease_namespace),
            name: args.lease_name.clone(),
        },
        leader::SystemClock,
        &args.lease_name,
        identity,
        leader::Timing::default(),
    ));
    // Ready once in contact with the API server through the Lease, which starts after the
    // default policy is compiled: a standby is ready too, and warm. Leading is /leader.
    let contact = lease.clone();
    tokio::spawn(http::serve(
        listener,
        metrics.clone(),
        move || contact.in_contact(),
        http::Limits::default(),
    ));
    Ok(lease)
}

/// The policy engine and the default policy, compiled before this replica asks to lead.
fn load_engine(args: &OperatorArgs) -> anyhow::Result<(Engine, Option<Policy>)> {
    let engine = Engine::new(EngineConfig {
        cache_dir: args.policy_cache.clone(),
        max_module_bytes: Some(args.policy_max_module_bytes),
        ..Default::default()
    })?;
    let (bytes, source) = match &args.default_policy {
        Some(path) => (
            std::fs::read(path)
                .with_context(|| format!("cannot read the default policy {}", path.display()))?,
            path.display().to_string(),
        ),
        None => (EMBEDDED_DEFAULT_POLICY.to_vec(), EMBEDDED.to_string()),
    };
    let policy = engine
        .load(&bytes, Limits::default())
        .with_context(|| format!("cannot load the default policy {source}"))?;
    info!(path = %source, digest = policy.digest(), "default policy loaded");
    Ok((engine, Some(policy)))
}

/// The default policy built into the binary (`host/build.rs` builds `policies/default`), in
/// force when `--default-policy` names no other module.
pub const EMBEDDED_DEFAULT_POLICY: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/default.wasm"));

/// How the log names the embedded module.
const EMBEDDED: &str = "(built in: policies/default)";

/// Reconciles while the Lease is kept; on a signal, stops and releases the Lease.
async fn lead(
    running: impl std::future::Future<Output = ()>,
    lease: &Election,
    won: tokio::time::Instant,
    metrics: &metrics::Metrics,
    lease_name: &str,
) -> anyhow::Result<()> {
    tokio::select! {
        () = running => {
            info!("controllers stopped");
            metrics.set_leading(false);
            // A standby takes over at once instead of waiting for the Lease to expire.
            match tokio::time::timeout(Duration::from_secs(5), lease.release()).await {
                Ok(Ok(())) => info!(lease = %lease_name, "lease released"),
                Ok(Err(e)) => warn!(error = %e, "cannot release the lease; it expires by itself"),
                Err(_) => warn!("releasing the lease timed out; it expires by itself"),
            }
        }
        () = lease.keep(won) => {
            // Stop reconciling now (the controllers are dropped with this select): a standby
            // may take over once the lease expires. Kubernetes restarts us as a standby.
            metrics.set_leading(false);
            anyhow::bail!("leadership lost: stopped reconciling so that another replica can lead");
        }
    }
    Ok(())
}

/// SIGINT or SIGTERM (what Kubernetes sends a pod it stops).
async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(e) => {
            warn!(error = %e, "cannot watch SIGTERM; only Ctrl-C stops the operator while it waits");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
