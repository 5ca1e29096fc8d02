//! What every reconcile shares: the client, the reflector caches (the observed state), the
//! policies, who reports Events and the metrics.

use std::sync::Arc;

use futures::channel::mpsc::UnboundedSender;
use k8s_openapi::api::core::v1::{
    ConfigMap, PersistentVolumeClaim, Pod, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::Client;
use kube::runtime::reflector::{ObjectRef, Store};
use pgwarden_crds::{Backup, Cluster, ScheduledBackup};
use serde_json::Value;

use super::metrics::Metrics;
use super::registry::Registry;
use crate::plan::ObjectRef as Target;
use crate::policy::Engine;

/// The field manager of everything the operator writes.
pub const MANAGER: &str = "pgwarden-operator";

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
    pub secrets: Store<Secret>,
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

    /// A Secret of a namespace.
    pub fn secret(&self, namespace: &str, name: &str) -> Option<Arc<Secret>> {
        self.secrets.get(&ObjectRef::new(name).within(namespace))
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
