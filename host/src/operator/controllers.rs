//! The steps of `serve` once this replica leads: the watches (reflector caches and their
//! change streams), and one kube-runtime Controller per kind, each retried with the
//! per-object [`Backoff`].

use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;

use futures::channel::mpsc::UnboundedReceiver;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{
    ConfigMap, PersistentVolumeClaim, Pod, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action as Requeue, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use pgwarden_crds::settings::pod::LABEL_CLUSTER;
use pgwarden_crds::{Backup, Cluster, ReconcilePolicy, ScheduledBackup};
use serde::de::DeserializeOwned;
use tracing::{info, warn};

use super::backoff::{self, Backoff};
use super::context::{Context, Stores};
use super::errors::{Error, Result};
use super::{backup, cluster, observe, reconcile_policy, retention, scheduled};

/// The changes of one kind, as the controllers take them.
type Changes<K> = BoxStream<'static, Result<K, watcher::Error>>;

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

/// A reflector over `api`: the store to read and the stream that keeps it current.
fn reflect<K>(api: Api<K>, config: watcher::Config) -> (Store<K>, Changes<K>)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (store, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher(api, config))
        .default_backoff()
        .touched_objects()
        .boxed();
    (store, stream)
}

/// The objects a Cluster owns, found by the Cluster label.
struct Owned {
    pods: Changes<Pod>,
    claims: Changes<PersistentVolumeClaim>,
    services: Changes<Service>,
    config_maps: Changes<ConfigMap>,
    service_accounts: Changes<ServiceAccount>,
    roles: Changes<Role>,
    role_bindings: Changes<RoleBinding>,
}

/// What the operator watches: the caches every reconcile reads and the streams that keep
/// them current (each stream must be run by a controller for its cache to fill).
pub struct Watched {
    pub stores: Stores,
    clusters: Changes<Cluster>,
    backups: Changes<Backup>,
    scheduled: Changes<ScheduledBackup>,
    owned: Owned,
    /// Secrets, metadata only: they reconcile the Clusters that name a Secret when it
    /// appears, changes or goes. No value reaches the operator this way and nothing is
    /// cached: a Cluster's reconcile reads the one Secret it names
    /// (`Context::missing_secrets`).
    secrets: Changes<PartialObjectMeta<Secret>>,
}

/// Starts the watches of `ns` (every namespace if `None`).
pub fn watch(client: &Client, ns: Option<&str>) -> Watched {
    let all = watcher::Config::default;
    let owned = watcher::Config::default().labels(LABEL_CLUSTER);
    let (clusters, cluster_changes) = reflect(scoped::<Cluster>(client, ns), all());
    let (backups, backup_changes) = reflect(scoped::<Backup>(client, ns), all());
    let (scheduled, scheduled_changes) = reflect(scoped::<ScheduledBackup>(client, ns), all());
    let (pods, pod_changes) = reflect(scoped::<Pod>(client, ns), owned.clone());
    let (claims, claim_changes) = reflect(scoped(client, ns), owned.clone());
    let (services, service_changes) = reflect(scoped(client, ns), owned.clone());
    let (config_maps, config_map_changes) = reflect(scoped(client, ns), owned.clone());
    let (service_accounts, service_account_changes) = reflect(scoped(client, ns), owned.clone());
    let (roles, role_changes) = reflect(scoped(client, ns), owned.clone());
    let (role_bindings, role_binding_changes) = reflect(scoped(client, ns), owned);
    // (An `Api` of `PartialObjectMeta` asks the API server for metadata only.)
    let secrets = watcher(scoped::<PartialObjectMeta<Secret>>(client, ns), all())
        .default_backoff()
        .touched_objects()
        .boxed();
    Watched {
        stores: Stores {
            clusters,
            backups,
            scheduled,
            pods,
            claims,
            services,
            config_maps,
            service_accounts,
            roles,
            role_bindings,
        },
        clusters: cluster_changes,
        backups: backup_changes,
        scheduled: scheduled_changes,
        owned: Owned {
            pods: pod_changes,
            claims: claim_changes,
            services: service_changes,
            config_maps: config_map_changes,
            service_accounts: service_account_changes,
            roles: role_changes,
            role_bindings: role_binding_changes,
        },
        secrets,
    }
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

/// The context of one controller's reconciles, with its own failure counts.
fn shared(ctx: &Arc<Context>) -> Arc<(Arc<Context>, Backoff)> {
    Arc::new((ctx.clone(), Backoff::default()))
}

/// The Cluster a Backup belongs to (a Backup ending, or its agent reporting a deletion,
/// concerns its Cluster).
fn cluster_of(backup: Backup) -> Option<ObjectRef<Cluster>> {
    let cluster = ObjectRef::new(&backup.spec.cluster.name);
    Some(match backup.namespace() {
        Some(ns) => cluster.within(&ns),
        None => cluster,
    })
}

/// The controllers of a leading replica; they run until SIGINT/SIGTERM.
pub fn run(
    watched: Watched,
    client: &Client,
    ns: Option<&str>,
    ctx: &Arc<Context>,
    swapped: UnboundedReceiver<()>,
) -> impl Future<Output = ()> + Send + 'static {
    let backups = Controller::for_stream(watched.backups, watched.stores.backups.clone())
        .shutdown_on_signal()
        .run(
            |b, x| backoff::counted(b, x, backup::reconcile),
            error_policy,
            shared(ctx),
        )
        .for_each(|_| async {});
    let scheduled = Controller::for_stream(watched.scheduled, watched.stores.scheduled.clone())
        .shutdown_on_signal()
        .run(
            |s, x| backoff::counted(s, x, scheduled::reconcile),
            error_policy,
            shared(ctx),
        )
        .for_each(|_| async {});
    let clusters = clusters(
        watched.clusters,
        watched.owned,
        watched.secrets,
        client,
        ns,
        ctx,
        swapped,
    );
    let (policies, retention) = (policies(client, ctx), retention(client, ns, ctx));
    async move {
        futures::future::join5(clusters, backups, scheduled, policies, retention).await;
    }
}

/// The Cluster controller: its owned objects, the Secrets it names and its Backups trigger
/// it; a ReconcilePolicy swap reconciles every Cluster.
fn clusters(
    changes: Changes<Cluster>,
    owned: Owned,
    secrets: Changes<PartialObjectMeta<Secret>>,
    client: &Client,
    ns: Option<&str>,
    ctx: &Arc<Context>,
    swapped: UnboundedReceiver<()>,
) -> impl Future<Output = ()> + Send + 'static {
    let by_secret = ctx.stores.clusters.clone();
    Controller::for_stream(changes, ctx.stores.clusters.clone())
        .owns_stream(owned.pods)
        .owns_stream(owned.claims)
        .owns_stream(owned.services)
        .owns_stream(owned.config_maps)
        .owns_stream(owned.service_accounts)
        .owns_stream(owned.roles)
        .owns_stream(owned.role_bindings)
        .watches_stream(secrets, move |secret: PartialObjectMeta<Secret>| {
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
                .map(|c| ObjectRef::from_obj(&*c))
                .collect::<Vec<_>>()
        })
        // A Backup ending: its Cluster reports LastBackupSucceeded and the last backups.
        .watches(
            scoped::<Backup>(client, ns),
            watcher::Config::default(),
            cluster_of,
        )
        .reconcile_all_on(swapped)
        .shutdown_on_signal()
        .run(
            |c, x| backoff::counted(c, x, cluster::reconcile),
            error_policy,
            shared(ctx),
        )
        .for_each(|_| async {})
}

/// Retention, per Cluster: a Backup finishing, or its agent reporting a deletion, triggers
/// its Cluster's.
fn retention(
    client: &Client,
    ns: Option<&str>,
    ctx: &Arc<Context>,
) -> impl Future<Output = ()> + Send + 'static {
    Controller::new(scoped::<Cluster>(client, ns), watcher::Config::default())
        .watches(
            scoped::<Backup>(client, ns),
            watcher::Config::default(),
            cluster_of,
        )
        .shutdown_on_signal()
        .run(
            |c, x| backoff::counted(c, x, retention::reconcile),
            error_policy,
            shared(ctx),
        )
        .for_each(|_| async {})
}

/// The ReconcilePolicy controller (cluster-wide): loads modules into the registry; a change
/// of a ConfigMap that holds a module reloads the policies that name it.
fn policies(client: &Client, ctx: &Arc<Context>) -> impl Future<Output = ()> + Send + 'static {
    let (store, writer) = reflector::store();
    let events = reflector::reflector(
        writer,
        watcher(
            Api::<ReconcilePolicy>::all(client.clone()),
            watcher::Config::default(),
        ),
    )
    .default_backoff();
    let by_config_map = store.clone();
    Controller::for_stream(forgetting_deleted(events, ctx.clone()), store)
        .watches_stream(module_config_maps(client), move |cm| {
            // New module bytes in a ConfigMap: the ReconcilePolicies loading from it, at once.
            referencing(&by_config_map, &cm)
        })
        .shutdown_on_signal()
        .run(
            |p, x| backoff::counted(p, x, reconcile_policy::reconcile),
            error_policy,
            shared(ctx),
        )
        .for_each(|_| async {})
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

/// Changes of every ConfigMap, metadata only (a ReconcilePolicy may name any namespace's; the
/// bytes are read when the policy reconciles, so the cache holds no module).
fn module_config_maps(client: &Client) -> Changes<PartialObjectMeta<ConfigMap>> {
    let api: Api<PartialObjectMeta<ConfigMap>> = Api::all(client.clone());
    watcher(api, watcher::Config::default())
        .default_backoff()
        .touched_objects()
        .boxed()
}

/// The ReconcilePolicies whose module is a key of this ConfigMap.
fn referencing(
    policies: &Store<ReconcilePolicy>,
    cm: &PartialObjectMeta<ConfigMap>,
) -> Vec<ObjectRef<ReconcilePolicy>> {
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
        .map(|p| ObjectRef::from_obj(&*p))
        .collect()
}
