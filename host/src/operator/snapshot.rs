//! What a reconcile observes, one type for the operator and for `pgwarden policy eval`: the
//! operator reads its reflector caches ([`Stores`]), a dry run a [`Snapshot`] made from files
//! or listed read-only from an API server. The plan functions ([`super::plans`]) read only
//! through [`Observe`], so both see the same facts the same way.
//!
//! ```text
//!   Stores (watch caches) ──┐
//!   Snapshot (files) ───────┼─► Observe ─► plans::{cluster, backup, scheduled} ─► Plan
//!   Snapshot (list/get) ────┘
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;
use pgwarden_core::plan::ObjectRef as Target;
use pgwarden_crds::settings::pod::LABEL_CLUSTER;
use pgwarden_crds::{Backup, Cluster, ScheduledBackup};
use serde_json::Value;

use super::context::Stores;

/// The observed objects a plan reads.
pub trait Observe {
    fn clusters(&self) -> Vec<Arc<Cluster>>;
    fn backups(&self) -> Vec<Arc<Backup>>;
    fn pods(&self) -> Vec<Arc<Pod>>;
    fn cluster(&self, namespace: &str, name: &str) -> Option<Arc<Cluster>>;
    fn backup(&self, namespace: &str, name: &str) -> Option<Arc<Backup>>;
    fn pod(&self, namespace: &str, name: &str) -> Option<Arc<Pod>>;
    /// The live object an action targets, as JSON: what `apply::step` compares it with.
    fn observed(&self, target: &Target) -> Option<Value>;

    /// Whether Secret `namespace/name` exists, when the observation holds Secrets (`None`:
    /// it does not; the operator asks the API server when it creates a generated one).
    fn secret_exists(&self, _namespace: &str, _name: &str) -> Option<bool> {
        None
    }

    /// The live pods labelled with the Cluster's name, in its namespace.
    fn cluster_pods(&self, cluster: &Cluster) -> Vec<Arc<Pod>> {
        let (ns, name) = (cluster.namespace(), cluster.name_any());
        (self.pods().into_iter())
            .filter(|p| p.namespace() == ns && p.labels().get(LABEL_CLUSTER) == Some(&name))
            .collect()
    }

    /// The Backups of the Cluster, in its namespace.
    fn backups_of(&self, cluster: &Cluster) -> Vec<Arc<Backup>> {
        let (ns, name) = (cluster.namespace(), cluster.name_any());
        (self.backups().into_iter())
            .filter(|b| b.namespace() == ns && b.spec.cluster.name == name)
            .collect()
    }
}

impl Observe for Stores {
    fn clusters(&self) -> Vec<Arc<Cluster>> {
        self.clusters.state()
    }
    fn backups(&self) -> Vec<Arc<Backup>> {
        self.backups.state()
    }
    fn pods(&self) -> Vec<Arc<Pod>> {
        self.pods.state()
    }
    fn cluster(&self, namespace: &str, name: &str) -> Option<Arc<Cluster>> {
        self.clusters.get(&ObjectRef::new(name).within(namespace))
    }
    fn backup(&self, namespace: &str, name: &str) -> Option<Arc<Backup>> {
        self.backups.get(&ObjectRef::new(name).within(namespace))
    }
    fn pod(&self, namespace: &str, name: &str) -> Option<Arc<Pod>> {
        self.pods.get(&ObjectRef::new(name).within(namespace))
    }
    fn observed(&self, target: &Target) -> Option<Value> {
        Stores::observed(self, target)
    }
}

/// Observed objects held in memory: a dry run's input.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub clusters: Vec<Arc<Cluster>>,
    pub backups: Vec<Arc<Backup>>,
    pub scheduled: Vec<Arc<ScheduledBackup>>,
    pub pods: Vec<Arc<Pod>>,
    /// Every other object (claims, Services, ConfigMaps, RBAC), as JSON.
    pub others: Vec<Value>,
    /// The key names of each Secret by (namespace, name); `None`: Secrets were not observed
    /// (a file input without any), and every reference is taken as resolved.
    pub secrets: Option<BTreeMap<(String, String), BTreeSet<String>>>,
}

fn named<K: kube::Resource>(objects: &[Arc<K>], namespace: &str, name: &str) -> Option<Arc<K>> {
    objects
        .iter()
        .find(|o| {
            o.meta().name.as_deref() == Some(name)
                && o.meta().namespace.as_deref().unwrap_or_default() == namespace
        })
        .cloned()
}

fn json<K: serde::Serialize>(object: Option<Arc<K>>) -> Option<Value> {
    object.and_then(|o| serde_json::to_value(&*o).ok())
}

impl Observe for Snapshot {
    fn clusters(&self) -> Vec<Arc<Cluster>> {
        self.clusters.clone()
    }
    fn backups(&self) -> Vec<Arc<Backup>> {
        self.backups.clone()
    }
    fn pods(&self) -> Vec<Arc<Pod>> {
        self.pods.clone()
    }
    fn cluster(&self, namespace: &str, name: &str) -> Option<Arc<Cluster>> {
        named(&self.clusters, namespace, name)
    }
    fn backup(&self, namespace: &str, name: &str) -> Option<Arc<Backup>> {
        named(&self.backups, namespace, name)
    }
    fn pod(&self, namespace: &str, name: &str) -> Option<Arc<Pod>> {
        named(&self.pods, namespace, name)
    }
    fn secret_exists(&self, namespace: &str, name: &str) -> Option<bool> {
        let key = (namespace.to_string(), name.to_string());
        Some(
            self.secrets
                .as_ref()
                .is_some_and(|all| all.contains_key(&key)),
        )
    }
    fn observed(&self, target: &Target) -> Option<Value> {
        let ns = target.namespace.as_deref().unwrap_or_default();
        match target.kind.as_str() {
            "Cluster" => json(self.cluster(ns, &target.name)),
            "Backup" => json(self.backup(ns, &target.name)),
            "ScheduledBackup" => json(named(&self.scheduled, ns, &target.name)),
            "Pod" => json(self.pod(ns, &target.name)),
            kind => self
                .others
                .iter()
                .find(|o| {
                    o["kind"] == kind
                        && o["metadata"]["name"] == target.name.as_str()
                        && o["metadata"]["namespace"].as_str().unwrap_or_default() == ns
                })
                .cloned(),
        }
    }
}
