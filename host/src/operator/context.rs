//! What every reconcile shares: the client, the reflector caches (the observed state), the
//! policies, who reports Events and the metrics.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use futures::channel::mpsc::UnboundedSender;
use k8s_openapi::api::core::v1::{
    ConfigMap, PersistentVolumeClaim, Pod, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::Api;
use kube::Client;
use kube::runtime::reflector::{ObjectRef, Store};
use pgwarden_crds::{Backup, Cluster, ScheduledBackup};
use serde_json::Value;

use super::metrics::Metrics;
use super::observe::{self, MissingSecret};
use super::registry::Registry;
use crate::policy::Engine;
pub use pgwarden_core::plan::MANAGER;
use pgwarden_core::plan::ObjectRef as Target;

/// Reflector caches: what the operator last saw of each kind.
#[derive(Clone)]
pub struct Stores {
    pub clusters: Store<Cluster>,
    pub backups: Store<Backup>,
    pub scheduled: Store<ScheduledBackup>,
    pub pods: Store<Pod>,
    pub claims: Store<PersistentVolumeClaim>,
    pub services: Store<Service>,
    pub config_maps: Store<ConfigMap>,
    pub service_accounts: Store<ServiceAccount>,
    pub roles: Store<Role>,
    pub role_bindings: Store<RoleBinding>,
}

fn get<K>(store: &Store<K>, target: &Target) -> Option<Arc<K>>
where
    K: kube::Resource<DynamicType = ()> + Clone + 'static,
{
    let reference = ObjectRef::new(&target.name);
    let reference = match &target.namespace {
        Some(ns) => reference.within(ns),
        None => reference,
    };
    store.get(&reference)
}

fn json<K: serde::Serialize>(object: Option<Arc<K>>) -> Option<Value> {
    object.and_then(|o| serde_json::to_value(&*o).ok())
}

impl Stores {
    /// The observed object an action targets, as JSON.
    pub fn observed(&self, target: &Target) -> Option<Value> {
        match target.kind.as_str() {
            "Cluster" => json(get(&self.clusters, target)),
            "Backup" => json(get(&self.backups, target)),
            "ScheduledBackup" => json(get(&self.scheduled, target)),
            "Pod" => json(get(&self.pods, target)),
            "PersistentVolumeClaim" => json(get(&self.claims, target)),
            "Service" => json(get(&self.services, target)),
            "ConfigMap" => json(get(&self.config_maps, target)),
            "ServiceAccount" => json(get(&self.service_accounts, target)),
            "Role" => json(get(&self.roles, target)),
            "RoleBinding" => json(get(&self.role_bindings, target)),
            _ => None,
        }
    }
}

/// Shared by all reconciles.
pub struct Context {
    pub client: Client,
    pub stores: Stores,
    pub policies: Registry,
    pub reporter: super::events::Reporter,
    pub metrics: Arc<Metrics>,
    /// Compiles ReconcilePolicy modules.
    pub engine: Engine,
    /// Downloads `spec.module.url` modules, pinned by sha256.
    pub fetcher: crate::policy::fetch::Fetcher,
    /// Signalled when a module is put in force: every Cluster is reconciled again.
    pub policy_swapped: UnboundedSender<()>,
}

impl Context {
    /// The key names of Secret `namespace/name`, `None` when there is no such Secret.
    ///
    /// Read from the API server when a Cluster reconciles, not from a cache: the operator only
    /// checks that a referenced key exists, so it holds no Secret's values (a cache of every
    /// Secret would keep all of them in its memory). Changes reach the Cluster through a
    /// metadata-only watch of Secrets (`mod.rs`), which carries no data.
    pub async fn secret_keys(
        &self,
        namespace: &str,
        name: &str,
    ) -> kube::Result<Option<BTreeSet<String>>> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        Ok(api.get_opt(name).await?.as_ref().map(observe::secret_keys))
    }

    /// The Secret references of `cluster` that do not resolve: one read of each Secret named.
    pub async fn missing_secrets(&self, cluster: &Cluster) -> kube::Result<Vec<MissingSecret>> {
        let namespace = cluster.metadata.namespace.as_deref().unwrap_or_default();
        let mut keys = BTreeMap::new();
        for (_, selector) in observe::secret_references(cluster) {
            if let Entry::Vacant(slot) = keys.entry(selector.name) {
                let found = self.secret_keys(namespace, slot.key()).await?;
                slot.insert(found);
            }
        }
        Ok(observe::missing_secrets(cluster, |name| {
            keys.get(name).cloned().flatten()
        }))
    }
}
