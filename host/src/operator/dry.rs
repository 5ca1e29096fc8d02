//! The operator minus the writes: the plans a reconcile of each object would apply, on a
//! [`Snapshot`], with one policy module standing in for every policy the objects name (what
//! `pgwarden policy eval` prints).

use std::sync::Arc;

use chrono::{DateTime, Utc};
use kube::ResourceExt;
use pgwarden_crds::{Backup, Cluster, ScheduledBackup};
use serde_json::{Map, Value};

use super::plans::{self, Plan};
use super::registry::Registry;
use super::snapshot::{Observe, Snapshot};
use crate::policy::Policy;

/// A dry run's policies: `policy` as the default and under every name a Cluster asks for.
pub struct Dry {
    registry: Registry,
}

impl Dry {
    pub fn new(policy: &Policy, clusters: &[Arc<Cluster>]) -> Dry {
        let registry = Registry::new(Some(policy.clone()));
        for name in clusters.iter().filter_map(|c| c.spec.policy.as_deref()) {
            registry.insert(name, policy.clone());
        }
        Dry { registry }
    }

    /// The plan of a Backup, as its controller makes it.
    pub fn backup(&self, snap: &Snapshot, backup: &Backup, now: DateTime<Utc>) -> Plan {
        let ns = backup.namespace().unwrap_or_default();
        let name = &backup.spec.cluster.name;
        let cluster = snap.cluster(&ns, name);
        let chosen = (self.registry).for_cluster_of("Backup", &ns, name, cluster.as_deref());
        plans::backup(snap, chosen, backup, now)
    }

    /// The plan of a ScheduledBackup, as its controller makes it.
    pub fn scheduled(
        &self,
        snap: &Snapshot,
        scheduled: &ScheduledBackup,
        now: DateTime<Utc>,
    ) -> Plan {
        let ns = scheduled.namespace().unwrap_or_default();
        let name = &scheduled.spec.cluster.name;
        let cluster = snap.cluster(&ns, name);
        let kind = "ScheduledBackup";
        let chosen = (self.registry).for_cluster_of(kind, &ns, name, cluster.as_deref());
        plans::scheduled(chosen, scheduled, cluster.as_deref(), now)
    }

    /// The plan of a Cluster, as its controller makes it (but for the check of names taken
    /// by objects it does not control, which reads the API server).
    pub fn cluster(&self, snap: &Snapshot, cluster: &Cluster, now: DateTime<Utc>) -> Plan {
        let missing = snap.missing_secrets(cluster);
        let input = plans::ClusterInput {
            chosen: self.registry.for_cluster(cluster),
            missing: &missing,
            binding: self.registry.as_requested(cluster),
            now,
        };
        plans::cluster(snap, cluster, input)
    }

    /// The retention plan of a Cluster (`None`: nothing finished, no deletion under way), its
    /// requests' write first; an error (a policy that failed, a refused ConfigMap) as a plan
    /// that says it.
    pub fn retention(
        &self,
        snap: &Snapshot,
        cluster: &Cluster,
        now: DateTime<Utc>,
    ) -> Option<Plan> {
        let chosen = self.registry.for_cluster(cluster);
        match plans::retention(snap, chosen, cluster, now) {
            Ok(retained) => retained.map(|r| r.into_plan()),
            Err(error) => Some(Plan {
                error: Some(error),
                ..Plan::default()
            }),
        }
    }

    /// Every object's plan, keyed `Kind/name` (a Cluster's retention `Retention/<cluster>`),
    /// as JSON.
    pub fn eval(&self, snap: &Snapshot, now: DateTime<Utc>) -> Value {
        let mut out = Map::new();
        for cluster in &snap.clusters {
            let plan = self.cluster(snap, cluster, now);
            out.insert(
                format!("Cluster/{}", cluster.name_any()),
                plan.to_json(snap),
            );
            if let Some(plan) = self.retention(snap, cluster, now) {
                out.insert(
                    format!("Retention/{}", cluster.name_any()),
                    plan.to_json(snap),
                );
            }
        }
        for backup in &snap.backups {
            let plan = self.backup(snap, backup, now);
            out.insert(format!("Backup/{}", backup.name_any()), plan.to_json(snap));
        }
        for scheduled in &snap.scheduled {
            let plan = self.scheduled(snap, scheduled, now);
            out.insert(
                format!("ScheduledBackup/{}", scheduled.name_any()),
                plan.to_json(snap),
            );
        }
        Value::Object(out)
    }
}
