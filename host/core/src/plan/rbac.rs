//! The instance agent's identity: a ServiceAccount the pods run as, a Role with
//! [`agent_rules`] and the binding between them. The guardrails refuse any other Role.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject as RbacSubject};
use pgwarden_crds::Cluster;
use pgwarden_sdk::names;

use super::meta::{cluster_name, object_meta};

/// What the instance agent of Cluster `cluster` may do, in its namespace only: watch the
/// Backups (to take the ones that target its pod), write the status of Backups (its facts on
/// the backups it takes: their names are not known ahead) and of its own Cluster only.
/// A standby reads the primary pod (its address, where no DNS resolves the `-rw` Service),
/// which after a failover may be any of the Cluster's instance pods, read by name.
/// Nothing else: no Secrets (credentials reach it as env or files), no other pods, no
/// ConfigMaps (deletion requests reach it in its settings ConfigMap, which only the operator
/// writes).
pub fn agent_rules(cluster: &str) -> Vec<PolicyRule> {
    let rule = |resources: &[&str], verbs: &[&str]| PolicyRule {
        api_groups: Some(vec![pgwarden_crds::GROUP.into()]),
        resources: Some(resources.iter().map(|r| r.to_string()).collect()),
        verbs: verbs.iter().map(|v| v.to_string()).collect(),
        ..Default::default()
    };
    let own = PolicyRule {
        resource_names: Some(vec![cluster.into()]),
        ..rule(&["clusters/status"], &["get", "patch"])
    };
    // Any instance may be the primary after a failover: the Cluster's own instance pods by
    // name (every index admission allows), nothing else.
    let primary = PolicyRule {
        api_groups: Some(vec![String::new()]),
        resource_names: Some(
            (0..super::instances::MAX_INSTANCES as u32)
                .map(|i| names::instance(cluster, i))
                .collect(),
        ),
        ..rule(&["pods"], &["get"])
    };
    vec![
        rule(&["backups"], &["get", "list", "watch"]),
        rule(&["backups/status"], &["get", "patch"]),
        own,
        primary,
    ]
}

/// The ServiceAccount the instance pods run as: `<cluster>-agent`, with the labels and
/// annotations of `spec.serviceAccountTemplate` (a cloud identity: IRSA, GKE Workload
/// Identity). Applied whole by server-side apply, so a changed template updates it in place
/// and an annotation dropped from the template leaves it (the cluster label stays pgwarden's).
pub fn service_account(cluster: &Cluster) -> ServiceAccount {
    let template = cluster
        .spec
        .service_account_template
        .as_ref()
        .map(|t| t.metadata.clone())
        .unwrap_or_default();
    let mut metadata = object_meta(
        cluster,
        names::agent(cluster_name(cluster)),
        template.labels,
    );
    if !template.annotations.is_empty() {
        metadata.annotations = Some(template.annotations);
    }
    ServiceAccount {
        metadata,
        ..Default::default()
    }
}

/// The Role of the agent: [`agent_rules`].
pub fn agent_role(cluster: &Cluster) -> Role {
    Role {
        metadata: object_meta(
            cluster,
            names::agent(cluster_name(cluster)),
            BTreeMap::new(),
        ),
        rules: Some(agent_rules(cluster_name(cluster))),
    }
}

/// Binds the agent's Role to its ServiceAccount.
pub fn agent_role_binding(cluster: &Cluster) -> RoleBinding {
    let agent = names::agent(cluster_name(cluster));
    RoleBinding {
        metadata: object_meta(cluster, agent.clone(), BTreeMap::new()),
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "Role".into(),
            name: agent.clone(),
        },
        subjects: Some(vec![RbacSubject {
            kind: "ServiceAccount".into(),
            name: agent,
            namespace: cluster.metadata.namespace.clone(),
            ..Default::default()
        }]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cluster(spec: serde_json::Value) -> Cluster {
        serde_json::from_value(json!({
            "apiVersion": "postgresql.k8s.2ndq.io/v1alpha1", "kind": "Cluster",
            "metadata": {"name": "pg", "namespace": "ns", "uid": "u"},
            "spec": spec
        }))
        .unwrap()
    }

    #[test]
    fn the_account_carries_the_template_and_keeps_the_cluster_label() {
        let plain = service_account(&cluster(json!({})));
        assert_eq!(plain.metadata.annotations, None);
        let c = cluster(json!({"serviceAccountTemplate": {"metadata": {
            "annotations": {"iam.gke.io/gcp-service-account": "pg@p.iam.gserviceaccount.com"},
            "labels": {"team": "a", "postgresql.k8s.2ndq.io/cluster": "other"}
        }}}));
        let sa = service_account(&c);
        let annotations = sa.metadata.annotations.unwrap_or_default();
        assert_eq!(
            annotations["iam.gke.io/gcp-service-account"],
            "pg@p.iam.gserviceaccount.com"
        );
        let labels = sa.metadata.labels.unwrap_or_default();
        assert_eq!(labels["team"], "a");
        assert_eq!(labels["postgresql.k8s.2ndq.io/cluster"], "pg");
    }
}
