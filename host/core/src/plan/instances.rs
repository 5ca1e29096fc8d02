//! How many instances a Cluster runs: never more than [`MAX_INSTANCES`], whatever the spec
//! stored or a policy answers; and which pods go when it shrinks.
//!
//! ```text
//!   spec.instances ─► clamp to 1..=MAX_INSTANCES ─► pods planned (index 0 = the primary)
//!   live pods of the Cluster with an index ≥ planned ─► Delete (claims stay: see README)
//! ```
//!
//! Scaling down removes the highest indexes; neither index 0 nor the primary the agents
//! report (another index after a failover: it then stays beside the planned ones) is ever
//! removed, even by a spec of 0 stored before admission refused it.

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use pgwarden_crds::Cluster;
pub use pgwarden_crds::MAX_INSTANCES;
use pgwarden_crds::settings::pod::LABEL_CLUSTER;

use super::actions::Action;
use super::meta::reference;

/// The number of instance pods the operator runs for `cluster`.
pub fn planned_instances(cluster: &Cluster) -> u32 {
    cluster.spec.instances.clamp(1, MAX_INSTANCES) as u32
}

/// The index of the primary instance (until failover and switchover move it); defined with
/// the failover facts, which name the primary before any report.
pub use crate::failover::PRIMARY_INDEX;

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

/// Deletions of the Cluster's live instance pods beyond [`planned_instances`] (a scale-down):
/// the highest indexes, never the primary's. Their claims are kept: a scale-up reuses them
/// (the standby is cloned afresh over what the claim holds).
pub fn surplus_pods<P: std::ops::Deref<Target = Pod>>(
    cluster: &Cluster,
    pods: &[P],
) -> Vec<Action> {
    let name = cluster.name_any();
    let planned = planned_instances(cluster);
    // After a failover the primary may be any index: it is never the one removed.
    let primary = crate::failover::primary_pod(cluster);
    pods.iter()
        .filter(|p| p.name_any() != primary)
        .filter(|p| p.namespace() == cluster.namespace())
        .filter(|p| p.labels().get(LABEL_CLUSTER) == Some(&name))
        .filter(|p| {
            instance_index(&name, &p.name_any()).is_some_and(|i| i >= planned && i != PRIMARY_INDEX)
        })
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

    /// `pg` after a failover to `pg-2`: the target reports itself primary.
    fn failed_over(instances: i32) -> Cluster {
        let mut c = cluster(instances);
        c.status = serde_json::from_value(json!({
            "currentPrimary": "pg-1", "targetPrimary": "pg-2",
            "instancesStatus": [
                {"name": "pg-1", "role": "primary", "reportedAt": "2026-11-30T10:00:00Z"},
                {"name": "pg-2", "role": "primary", "reportedAt": "2026-11-30T09:59:00Z"}
            ]
        }))
        .unwrap();
        c
    }

    #[test]
    fn after_a_failover_the_labels_follow_the_promoted_primary_and_it_is_never_scaled_away() {
        let c = failed_over(3);
        let pods = (0..3)
            .map(|i| pgwarden_sdk::defaults::instance_pod(&c, i).unwrap().build())
            .collect();
        let decisions = super::super::ClusterDecisions {
            archive: None,
            pods,
            storage: vec![pgwarden_sdk::defaults::storage(&c, None).unwrap(); 3],
        };
        let actions = super::super::plan_cluster(&c, &decisions).unwrap();
        let role = |name: &str| {
            actions
                .iter()
                .find_map(|a| match a {
                    Action::Apply { target, object }
                        if target.kind == "Pod" && target.name == name =>
                    {
                        object["metadata"]["labels"][pgwarden_crds::settings::pod::LABEL_ROLE]
                            .as_str()
                            .map(str::to_string)
                    }
                    _ => None,
                })
                .unwrap()
        };
        assert_eq!(
            [role("pg-1"), role("pg-2"), role("pg-3")],
            ["replica", "primary", "replica"]
        );
        let pods = [pod("pg-1", "pg"), pod("pg-2", "pg"), pod("pg-3", "pg")].map(Box::new);
        let deleted: Vec<String> = surplus_pods(&failed_over(1), &pods)
            .iter()
            .filter_map(|a| a.target().map(|t| t.name.clone()))
            .collect();
        assert_eq!(deleted, ["pg-3"], "the promoted pg-2 stays");
    }

    #[test]
    fn a_spec_plans_its_instances_within_one_and_the_cap() {
        assert_eq!(planned_instances(&cluster(3)), 3);
        assert_eq!(planned_instances(&cluster(1)), 1);
        assert_eq!(planned_instances(&cluster(12)), MAX_INSTANCES as u32);
        // Never fewer than the primary: a stored 0 does not delete it.
        assert_eq!(planned_instances(&cluster(0)), 1);
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
    fn scaling_three_to_one_removes_the_standbys_never_the_primary() {
        let pods = [
            pod("pg-1", "pg"),
            pod("pg-2", "pg"),
            pod("pg-3", "pg"),
            pod("other-2", "other"),
        ]
        .map(Box::new);
        assert!(surplus_pods(&cluster(3), &pods).is_empty());
        let deleted: Vec<String> = surplus_pods(&cluster(1), &pods)
            .iter()
            .filter_map(|a| a.target().map(|t| t.name.clone()))
            .collect();
        assert_eq!(deleted, ["pg-2", "pg-3"]);
        let Action::Delete {
            owner_uids,
            cluster: label,
            ..
        } = &surplus_pods(&cluster(1), &pods)[0]
        else {
            panic!("not a delete")
        };
        assert_eq!(owner_uids, &["uid-pg"]);
        assert_eq!(label.as_deref(), Some("pg"));
        let from_zero: Vec<String> = surplus_pods(&cluster(0), &pods)
            .iter()
            .filter_map(|a| a.target().map(|t| t.name.clone()))
            .collect();
        assert_eq!(from_zero, ["pg-2", "pg-3"], "the primary stays");
    }
}
