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

/// The ServiceAccount the instance pods run as: `<cluster>-agent`.
pub fn service_account(cluster: &Cluster) -> ServiceAccount {
    ServiceAccount {
        metadata: object_meta(
            cluster,
            names::agent(cluster_name(cluster)),
            BTreeMap::new(),
        ),
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
