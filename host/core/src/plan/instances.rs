//! How many instances a Cluster runs: never more than [`MAX_INSTANCES`], whatever the spec
//! stored before admission refused more or a policy answers.
//!
//! ```text
//!   spec.instances ─► clamp to MAX_INSTANCES ─► pods planned
//!   live pods of the Cluster with an index ≥ MAX_INSTANCES ─► Delete (claims stay: no data lost)
//! ```
//!
//! Until standbys stream from the primary, every instance would be an unrelated database
//! (its own initdb, its own system identifier) archiving WAL files of the same names into one
//! destination: the second archiver overwrites the first one's history. This is a host
//! invariant, the second line of defence behind the CEL rule on `spec.instances`.

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use pgwarden_crds::Cluster;
pub use pgwarden_crds::MAX_INSTANCES;
use pgwarden_crds::settings::pod::LABEL_CLUSTER;

use super::actions::Action;
use super::meta::reference;

/// The number of instance pods the operator runs for `cluster`.
pub fn planned_instances(cluster: &Cluster) -> u32 {
    cluster.spec.instances.clamp(0, MAX_INSTANCES) as u32
}

/// The 0-based instance index of `pod_name` in the Cluster named `cluster_name`
/// (`<cluster>-<n>`, n from 1), if it is named like an instance.
pub fn instance_index(cluster_name: &str, pod_name: &str) -> Option<u32> {
    let number: u32 = pod_name
        .strip_prefix(cluster_name)?
        .strip_prefix('-')?
        .parse()
        .ok()?;
    number.checked_sub(1)
}

/// Deletions of the Cluster's live instance pods beyond [`planned_instances`]: pods left by a
/// spec stored before the limit (or by an earlier operator) stop archiving into the
/// Cluster's destination. Their claims are kept.
pub fn surplus_pods<P: std::ops::Deref<Target = Pod>>(
    cluster: &Cluster,
    pods: &[P],
) -> Vec<Action> {
    let name = cluster.name_any();
    let planned = planned_instances(cluster);
    pods.iter()
        .filter(|p| p.namespace() == cluster.namespace())
        .filter(|p| p.labels().get(LABEL_CLUSTER) == Some(&name))
        .filter(|p| instance_index(&name, &p.name_any()).is_some_and(|i| i >= planned))
        .map(|p| Action::Delete {
            target: reference(&**p),
            owner_uids: p.owner_references().iter().map(|o| o.uid.clone()).collect(),
            cluster: p.labels().get(LABEL_CLUSTER).cloned(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cluster(instances: i32) -> Cluster {
        serde_json::from_value(json!({
            "apiVersion": "postgresql.k8s.2ndq.io/v1alpha1",
            "kind": "Cluster",
            "metadata": {"name": "pg", "namespace": "ns", "uid": "uid-pg"},
            "spec": {"instances": instances}
        }))
        .unwrap()
    }

    fn pod(name: &str, cluster: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {
                "name": name, "namespace": "ns",
                "labels": {LABEL_CLUSTER: cluster},
                "ownerReferences": [{"apiVersion": "v1", "kind": "Cluster", "name": cluster,
                                     "uid": format!("uid-{cluster}"), "controller": true}]
            }
        }))
        .unwrap()
    }

    #[test]
    fn a_spec_of_three_instances_plans_one() {
        assert_eq!(planned_instances(&cluster(3)), 1);
        assert_eq!(planned_instances(&cluster(1)), 1);
        assert_eq!(planned_instances(&cluster(0)), 0);
    }

    #[test]
    fn instance_pods_are_told_by_their_index() {
        assert_eq!(instance_index("pg", "pg-1"), Some(0));
        assert_eq!(instance_index("pg", "pg-3"), Some(2));
        assert_eq!(instance_index("pg", "pg-0"), None);
        assert_eq!(instance_index("pg", "pg-x"), None);
        assert_eq!(instance_index("pg", "pgx-2"), None);
    }

    #[test]
    fn pods_beyond_the_limit_are_deleted_and_others_left_alone() {
        let pods = [
            pod("pg-1", "pg"),
            pod("pg-2", "pg"),
            pod("pg-3", "pg"),
            pod("other-2", "other"),
        ]
        .map(Box::new);
        let deleted: Vec<String> = surplus_pods(&cluster(3), &pods)
            .iter()
            .filter_map(|a| a.target().map(|t| t.name.clone()))
            .collect();
        assert_eq!(deleted, ["pg-2", "pg-3"]);
        let Action::Delete {
            owner_uids,
            cluster: label,
            ..
        } = &surplus_pods(&cluster(3), &pods)[0]
        else {
            panic!("not a delete")
        };
        assert_eq!(owner_uids, &["uid-pg"]);
        assert_eq!(label.as_deref(), Some("pg"));
    }
}
