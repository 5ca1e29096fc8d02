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
mod cluster;
pub mod conditions;
mod context;
mod errors;
pub mod events;
mod failure;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod observe;
pub mod quantity;
mod reconcile_policy;
mod registry;
mod retention;
pub mod rollout;
mod scheduled;
mod status;

use std::fmt::Debug;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures::{Stream, StreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    ConfigMap, PersistentVolumeClaim, Pod, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action as Requeue, Controller};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use pgwarden_crds::settings::pod::LABEL_CLUSTER;
use pgwarden_crds::{Backup, Cluster, ReconcilePolicy, ScheduledBackup};
use serde::de::DeserializeOwned;
use tracing::{info, warn};

use backoff::Backoff;
pub use context::{Context, MANAGER, Stores};
pub use errors::{Error, Result};
pub use registry::Registry;

use crate::policy::{Engine, EngineConfig, Limits};

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

/// An Api over every namespace, or over the one the operator is limited to.
fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
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

/// A reflector over `api`: the store to read and the stream that keeps it current.
fn reflect<K>(
    api: Api<K>,
    config: watcher::Config,
) -> (
    Store<K>,
    impl Stream<Item = Result<K, watcher::Error>> + Send + 'static,
)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (store, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher(api, config))
        .default_backoff()
        .touched_objects();
    (store, stream)
}

fn error_policy<K: Resource<DynamicType = ()>>(
    object: Arc<K>,
    error: &Error,
    ctx: Arc<(Arc<Context>, Backoff)>,
) -> Requeue {
    let kind = K::kind(&());
    let key = backoff::key(&*object);
    let delay = ctx.1.delay(key.clone());
    warn!(object = %key, error = %error, retry_in = ?delay, "reconcile failed");
    ctx.0
        .metrics
        .failed(static_kind(&kind), error.metric_label());
    Requeue::requeue(delay)
}

fn static_kind(kind: &str) -> &'static str {
    match kind {
        "Cluster" => "Cluster",
        "Backup" => "Backup",
        "ScheduledBackup" => "ScheduledBackup",
        _ => "ReconcilePolicy",
    }
}

/// The ReconcilePolicies to reconcile; a deleted one is taken out of force at once (its
/// Clusters are reconciled again and report that their policy is not loaded).
fn forgetting_deleted(
    events: impl Stream<Item = Result<watcher::Event<ReconcilePolicy>, watcher::Error>> + Send + 'static,
    ctx: Arc<Context>,
) -> impl Stream<Item = Result<ReconcilePolicy, watcher::Error>> + Send + 'static {
    events.filter_map(move |event| {
        let ctx = ctx.clone();
        async move {
            match event {
                Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => Some(Ok(p)),
                Ok(watcher::Event::Delete(p)) => {
                    let name = p.name_any();
                    ctx.policies.remove(&name);
                    info!(policy = %name, "ReconcilePolicy deleted: its module is out of force");
                    let _ = ctx.policy_swapped.unbounded_send(());
                    None
                }
                Ok(_) => None,
                Err(e) => Some(Err(e)),
            }
        }
    })
}

/// Changes of Secrets, metadata only: they reconcile the Clusters that name a Secret when it
/// appears, changes or goes. No value reaches the operator this way and nothing is cached: a
/// Cluster's reconcile reads the one Secret it names (`Context::missing_secrets`).
/// (An `Api` of `PartialObjectMeta` asks the API server for metadata only.)
fn secret_changes(
    api: Api<PartialObjectMeta<Secret>>,
) -> impl Stream<Item = Result<PartialObjectMeta<Secret>, watcher::Error>> + Send + 'static {
    watcher(api, watcher::Config::default())
        .default_backoff()
        .touched_objects()
}

/// Changes of every ConfigMap, metadata only (a ReconcilePolicy may name any namespace's; the
/// bytes are read when the policy reconciles, so the cache holds no module).
fn module_config_maps(
    client: &Client,
) -> impl Stream<Item = Result<PartialObjectMeta<ConfigMap>, watcher::Error>> + Send + 'static {
    let api: Api<PartialObjectMeta<ConfigMap>> = Api::all(client.clone());
    watcher(api, watcher::Config::default())
        .default_backoff()
        .touched_objects()
}

/// The ReconcilePolicies whose module is a key of this ConfigMap.
fn referencing(
    policies: &Store<ReconcilePolicy>,
    cm: &PartialObjectMeta<ConfigMap>,
) -> Vec<reflector::ObjectRef<ReconcilePolicy>> {
    let (ns, name) = (cm.namespace().unwrap_or_default(), cm.name_any());
    policies
        .state()
        .into_iter()
        .filter(|p| {
            p.spec
                .module
                .config_map
                .as_ref()
                .is_some_and(|r| r.namespace == ns && r.name == name)
        })
        .map(|p| reflector::ObjectRef::from_obj(&*p))
        .collect()
}

async fn serve(args: OperatorArgs) -> anyhow::Result<()> {
    let client = Client::try_default()
        .await
        .context("cannot reach the API server (KUBECONFIG or in-cluster)")?;
    let metrics = Arc::new(metrics::Metrics::default());
    let listener = tokio::net::TcpListener::bind(&args.listen_address)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen_address))?;
    let identity = identity(&args);
    let lease = Arc::new(leader::LeaderElection::new(
        leader::KubeLease {
            api: Api::<Lease>::namespaced(client.clone(), &args.lease_namespace),
            name: args.lease_name.clone(),
        },
        leader::SystemClock,
        &args.lease_name,
        &identity,
        leader::Timing::default(),
    ));
    // Ready once in contact with the API server through the Lease, which starts after the
    // default policy is compiled below: a standby is ready too, and warm. Leading is /leader.
    let contact = lease.clone();
    tokio::spawn(http::serve(
        listener,
        metrics.clone(),
        move || contact.in_contact(),
        http::Limits::default(),
    ));

    let engine = Engine::new(EngineConfig {
        cache_dir: args.policy_cache.clone(),
        max_module_bytes: Some(args.policy_max_module_bytes),
        ..Default::default()
    })?;
    let default = match &args.default_policy {
        Some(path) => {
            let bytes = std::fs::read(path)
                .with_context(|| format!("cannot read the default policy {}", path.display()))?;
            let policy = engine
                .load(&bytes, Limits::default())
                .with_context(|| format!("cannot load the default policy {}", path.display()))?;
            info!(path = %path.display(), digest = policy.digest(), "default policy loaded");
            Some(policy)
        }
        None => None,
    };

    let won = tokio::select! {
        won = lease.acquire() => won,
        () = shutdown_signal() => return Ok(()),
    };
    metrics.set_leading(true);

    let ns = args.watch_namespace.as_deref();
    let owned = watcher::Config::default().labels(LABEL_CLUSTER);
    let (clusters, cluster_stream) =
        reflect(scoped::<Cluster>(&client, ns), watcher::Config::default());
    let (backups, backup_stream) =
        reflect(scoped::<Backup>(&client, ns), watcher::Config::default());
    let (scheduled, scheduled_stream) = reflect(
        scoped::<ScheduledBackup>(&client, ns),
        watcher::Config::default(),
    );
    let (policies_store, policy_writer) = reflector::store();
    let policy_events = reflector::reflector(
        policy_writer,
        watcher(
            Api::<ReconcilePolicy>::all(client.clone()),
            watcher::Config::default(),
        ),
    )
    .default_backoff();
    let (pods, pod_stream) = reflect(scoped::<Pod>(&client, ns), owned.clone());
    let (claims, claim_stream) =
        reflect(scoped::<PersistentVolumeClaim>(&client, ns), owned.clone());
    let (services, service_stream) = reflect(scoped::<Service>(&client, ns), owned.clone());
    let (config_maps, config_map_stream) = reflect(scoped::<ConfigMap>(&client, ns), owned.clone());
    let (service_accounts, service_account_stream) =
        reflect(scoped::<ServiceAccount>(&client, ns), owned.clone());
    let (roles, role_stream) = reflect(scoped::<Role>(&client, ns), owned.clone());
    let (role_bindings, role_binding_stream) = reflect(scoped::<RoleBinding>(&client, ns), owned);
    let secret_stream = secret_changes(scoped::<PartialObjectMeta<Secret>>(&client, ns));

    let (swapped_tx, swapped_rx) = futures::channel::mpsc::unbounded();
    let stores = Stores {
        clusters: clusters.clone(),
        backups: backups.clone(),
        scheduled: scheduled.clone(),
        pods,
        claims,
        services,
        config_maps,
        service_accounts,
        roles,
        role_bindings,
    };
    let ctx = Arc::new(Context {
        client: client.clone(),
        stores,
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
    let shared = |ctx: &Arc<Context>| Arc::new((ctx.clone(), Backoff::default()));

    let by_secret = clusters.clone();
    let cluster_controller = Controller::for_stream(cluster_stream, clusters)
        .owns_stream(pod_stream)
        .owns_stream(claim_stream)
        .owns_stream(service_stream)
        .owns_stream(config_map_stream)
        .owns_stream(service_account_stream)
        .owns_stream(role_stream)
        .owns_stream(role_binding_stream)
        .watches_stream(secret_stream, move |secret: PartialObjectMeta<Secret>| {
            // A Secret appearing or changing: the Clusters of its namespace that name it.
            let (ns, name) = (secret.namespace(), secret.name_any());
            by_secret
                .state()
                .into_iter()
                .filter(|c| {
                    c.namespace() == ns
                        && observe::secret_references(c)
                            .iter()
                            .any(|(_, s)| s.name == name)
                })
                .map(|c| reflector::ObjectRef::from_obj(&*c))
                .collect::<Vec<_>>()
        })
        .watches(
            scoped::<Backup>(&client, ns),
            watcher::Config::default(),
            |backup: Backup| {
                // A Backup ending: its Cluster reports LastBackupSucceeded and the last backups.
                let cluster = reflector::ObjectRef::new(&backup.spec.cluster.name);
                Some(match backup.namespace() {
                    Some(ns) => cluster.within(&ns),
                    None => cluster,
                })
            },
        )
        .reconcile_all_on(swapped_rx)
        .shutdown_on_signal()
        .run(
            |c, x| backoff::counted(c, x, cluster::reconcile),
            error_policy,
            shared(&ctx),
        )
        .for_each(|_| async {});
    let backup_controller = Controller::for_stream(backup_stream, backups)
        .shutdown_on_signal()
        .run(
            |b, x| backoff::counted(b, x, backup::reconcile),
            error_policy,
            shared(&ctx),
        )
        .for_each(|_| async {});
    let scheduled_controller = Controller::for_stream(scheduled_stream, scheduled)
        .shutdown_on_signal()
        .run(
            |s, x| backoff::counted(s, x, scheduled::reconcile),
            error_policy,
            shared(&ctx),
        )
        .for_each(|_| async {});
    let policy_stream = forgetting_deleted(policy_events, ctx.clone());
    let by_config_map = policies_store.clone();
    let policy_controller = Controller::for_stream(policy_stream, policies_store)
        .watches_stream(module_config_maps(&client), move |cm| {
            // New module bytes in a ConfigMap: the ReconcilePolicies loading from it, at once.
            referencing(&by_config_map, &cm)
        })
        .shutdown_on_signal()
        .run(
            |p, x| backoff::counted(p, x, reconcile_policy::reconcile),
            error_policy,
            shared(&ctx),
        )
        .for_each(|_| async {});

    let retention_controller =
        Controller::new(scoped::<Cluster>(&client, ns), watcher::Config::default())
            .watches(
                scoped::<Backup>(&client, ns),
                watcher::Config::default(),
                |backup: Backup| {
                    // A Backup finishing, or its agent reporting a deletion: its Cluster.
                    let cluster = reflector::ObjectRef::new(&backup.spec.cluster.name);
                    Some(match backup.namespace() {
                        Some(ns) => cluster.within(&ns),
                        None => cluster,
                    })
                },
            )
            .shutdown_on_signal()
            .run(
                |c, x| backoff::counted(c, x, retention::reconcile),
                error_policy,
                shared(&ctx),
            )
            .for_each(|_| async {});

    info!(%identity, "operator running");
    tokio::select! {
        _ = futures::future::join5(cluster_controller, backup_controller, scheduled_controller, policy_controller, retention_controller) => {
            info!("controllers stopped");
            metrics.set_leading(false);
            // A standby takes over at once instead of waiting for the Lease to expire.
            match tokio::time::timeout(Duration::from_secs(5), lease.release()).await {
                Ok(Ok(())) => info!(lease = %args.lease_name, "lease released"),
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
