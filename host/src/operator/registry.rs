//! The policies in force: the operator's default module and one per ReconcilePolicy, each a
//! loaded module with its limits and its `spec.settings` (a [`Policy`] carries both, so every
//! call gets the settings), swapped live when a new module, limits or settings are put in
//! force; a module that fails to load, or settings the policy refuses, never replace a
//! working one (see `reconcile_policy`).
//!
//! The platform may bind a namespace to a ReconcilePolicy (`--namespace-policy ns=policy`):
//! every Cluster of that namespace is then decided by it, whatever its `spec.policy` says, so
//! a tenant cannot leave the platform's rules (an encryption rule, say) by naming another
//! policy or none. The binding is the operator's flag, not a field a tenant could write: only
//! whoever can change the operator's Deployment can change it. A bound policy that is not
//! loaded fails closed (the Cluster is not reconciled), never falls back to the asked one.

use std::collections::HashMap;
use std::sync::RwLock;

use kube::ResourceExt;
use pgwarden_crds::{Cluster, condition_types as types};

use super::conditions::DesiredCondition;
use super::errors::{Error, Result};
use crate::policy::Policy;

/// Name under which the default module is reported on a Cluster's status.
pub const DEFAULT: &str = "default";

/// The policy that decides for an object, with the name it is reported under (a
/// ReconcilePolicy's, or [`DEFAULT`]).
#[derive(Clone)]
pub struct ChosenPolicy {
    pub name: String,
    pub policy: Policy,
}

/// Policies by ReconcilePolicy name, plus the default, and the namespaces bound to one.
#[derive(Default)]
pub struct Registry {
    default: Option<Policy>,
    by_name: RwLock<HashMap<String, Policy>>,
    /// Namespace → the ReconcilePolicy that decides for all its Clusters.
    bindings: HashMap<String, String>,
}

/// Parses `--namespace-policy`'s `<namespace>=<ReconcilePolicy>`.
pub fn parse_binding(text: &str) -> std::result::Result<(String, String), String> {
    match text.split_once('=') {
        Some((ns, policy)) if !ns.is_empty() && !policy.is_empty() => {
            Ok((ns.trim().to_string(), policy.trim().to_string()))
        }
        _ => Err(format!(
            "{text:?} is not <namespace>=<ReconcilePolicy name>"
        )),
    }
}

impl Registry {
    pub fn new(default: Option<Policy>) -> Self {
        Registry {
            default,
            by_name: RwLock::default(),
            bindings: HashMap::new(),
        }
    }

    /// Binds namespaces to ReconcilePolicies (the last binding of a namespace wins).
    pub fn bound(mut self, bindings: impl IntoIterator<Item = (String, String)>) -> Self {
        self.bindings.extend(bindings);
        self
    }

    /// The policy that decides for a Cluster: its namespace's bound policy, else the one it
    /// names, else the default.
    pub fn for_cluster(&self, cluster: &Cluster) -> Result<ChosenPolicy> {
        let ns = cluster.namespace().unwrap_or_default();
        self.for_namespace(&ns, cluster.spec.policy.as_deref())
    }

    /// The policy that decides for a Backup or ScheduledBackup (`kind`) of the Cluster named
    /// `cluster_name` in `namespace`, `cluster` as observed: the namespace's bound policy, else
    /// the Cluster's. Without the Cluster the policy it would ask for is unknown: an error that
    /// names the missing Cluster, never the default policy in its place.
    pub fn for_cluster_of(
        &self,
        kind: &str,
        namespace: &str,
        cluster_name: &str,
        cluster: Option<&Cluster>,
    ) -> Result<ChosenPolicy> {
        match cluster {
            Some(cluster) => self.for_cluster(cluster),
            None if self.bindings.contains_key(namespace) => self.for_namespace(namespace, None),
            None => Err(Error::ClusterNotFound(format!(
                "Cluster {namespace}/{cluster_name} (spec.cluster.name) does not exist, so no policy decides for this {kind}: create the Cluster, or delete the {kind}"
            ))),
        }
    }

    /// The policy that decides in `namespace` for an object asking for `requested`.
    pub fn for_namespace(&self, namespace: &str, requested: Option<&str>) -> Result<ChosenPolicy> {
        if let Some(bound) = self.bindings.get(namespace) {
            return self.loaded(bound).ok_or_else(|| {
                Error::NoPolicy(format!(
                    "namespace {namespace} is bound to ReconcilePolicy {bound} (the operator's --namespace-policy), which is not loaded: check `kubectl get reconcilepolicy {bound}` for its last error"
                ))
            });
        }
        match requested {
            Some(name) => self.loaded(name).ok_or_else(|| {
                Error::NoPolicy(format!(
                    "ReconcilePolicy {name} (spec.policy) is not loaded: create it, or check `kubectl get reconcilepolicy {name}` for its last error"
                ))
            }),
            None => self.default.clone().map(|policy| ChosenPolicy { name: DEFAULT.into(), policy }).ok_or_else(|| {
                Error::NoPolicy("the operator has no default policy (--default-policy) and spec.policy is not set: name a ReconcilePolicy in spec.policy".into())
            }),
        }
    }

    fn loaded(&self, name: &str) -> Option<ChosenPolicy> {
        let policy = self.by_name.read().unwrap().get(name).cloned()?;
        Some(ChosenPolicy {
            name: name.into(),
            policy,
        })
    }

    /// `PolicyAsRequested`: False when the Cluster's namespace is bound to a policy other than
    /// the one it asks for (a Warning Event says so once), True otherwise.
    pub fn as_requested(&self, cluster: &Cluster) -> DesiredCondition {
        let ns = cluster.namespace().unwrap_or_default();
        let asked = cluster.spec.policy.as_deref();
        match self.bindings.get(&ns) {
            Some(bound) if asked != Some(bound.as_str()) => {
                let asked = asked.map_or_else(
                    || "spec.policy is not set (the operator's default policy)".to_string(),
                    |name| format!("spec.policy names ReconcilePolicy {name}"),
                );
                DesiredCondition::failed(
                    types::POLICY_AS_REQUESTED,
                    "NamespaceBound",
                    format!(
                        "{asked}, but namespace {ns} is bound to ReconcilePolicy {bound} by the platform (the operator's --namespace-policy): {bound} decides"
                    ),
                )
            }
            _ => DesiredCondition::ok(
                types::POLICY_AS_REQUESTED,
                "AsRequested",
                "the policy the Cluster asks for decides",
            ),
        }
    }

    /// The policy in force under a ReconcilePolicy's name.
    pub fn get(&self, name: &str) -> Option<Policy> {
        self.by_name.read().unwrap().get(name).cloned()
    }

    /// Puts a module with its limits and settings in force.
    pub fn insert(&self, name: &str, policy: Policy) {
        self.by_name.write().unwrap().insert(name.into(), policy);
    }

    /// Forgets a deleted ReconcilePolicy.
    pub fn remove(&self, name: &str) {
        self.by_name.write().unwrap().remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(ns: &str, policy: Option<&str>) -> Cluster {
        let mut cluster = Cluster::new("pg", Default::default());
        cluster.metadata.namespace = Some(ns.into());
        cluster.spec.policy = policy.map(str::to_string);
        cluster
    }

    fn registry() -> Registry {
        Registry::new(None).bound([("prod".to_string(), "production".to_string())])
    }

    #[test]
    fn a_binding_parses_namespace_and_policy() {
        assert_eq!(
            parse_binding("prod=production"),
            Ok(("prod".into(), "production".into()))
        );
        for bad in ["prod", "=production", "prod=", ""] {
            assert!(parse_binding(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_bound_namespace_is_decided_by_its_policy_whatever_the_cluster_names() {
        let registry = registry();
        // Not loaded: fails closed, naming the bound policy, never the one asked for.
        for asked in [Some("lenient"), None] {
            let Err(Error::NoPolicy(message)) = registry.for_cluster(&cluster("prod", asked))
            else {
                panic!("a bound namespace without its policy must fail");
            };
            assert!(
                message.starts_with("namespace prod is bound to ReconcilePolicy production"),
                "{message}"
            );
        }
        let message = match registry.for_cluster(&cluster("dev", Some("lenient"))) {
            Err(Error::NoPolicy(message)) => message,
            _ => panic!("an unbound namespace uses the policy it names"),
        };
        assert!(
            message.starts_with("ReconcilePolicy lenient (spec.policy)"),
            "{message}"
        );
    }

    #[test]
    fn the_backup_of_a_missing_cluster_gets_no_policy_but_an_error_naming_the_cluster() {
        let registry = registry();
        let Err(error) = registry.for_cluster_of("Backup", "dev", "pg", None) else {
            panic!("a missing Cluster must not get a policy");
        };
        assert_eq!(error.reason(), "ClusterNotFound");
        assert_eq!(
            error.to_string(),
            "Cluster dev/pg (spec.cluster.name) does not exist, so no policy decides for this Backup: create the Cluster, or delete the Backup"
        );
        // A bound namespace's policy decides whatever the Cluster: not loaded here, so it
        // fails closed naming the bound policy (the Cluster is not needed to know it).
        let Err(Error::NoPolicy(message)) = registry.for_cluster_of("Backup", "prod", "pg", None)
        else {
            panic!("a bound namespace's policy decides without the Cluster");
        };
        assert!(message.starts_with("namespace prod is bound"), "{message}");
    }

    #[test]
    fn asking_for_another_policy_in_a_bound_namespace_is_reported() {
        let registry = registry();
        let other = registry.as_requested(&cluster("prod", Some("lenient")));
        assert!(!other.ok);
        assert_eq!(other.reason, "NamespaceBound");
        assert_eq!(
            other.message,
            "spec.policy names ReconcilePolicy lenient, but namespace prod is bound to ReconcilePolicy production by the platform (the operator's --namespace-policy): production decides"
        );
        let none = registry.as_requested(&cluster("prod", None));
        assert!(!none.ok && none.message.starts_with("spec.policy is not set"));
        assert!(
            registry
                .as_requested(&cluster("prod", Some("production")))
                .ok
        );
        assert!(registry.as_requested(&cluster("dev", Some("lenient"))).ok);
    }
}
