//! The policies in force: the operator's default module and one per ReconcilePolicy, swapped
//! live when a new module loads; a module that fails to load never replaces a working one.

use std::collections::HashMap;
use std::sync::RwLock;

use pgwarden_crds::Cluster;

use super::errors::{Error, Result};
use crate::policy::Policy;

/// Name under which the default module is reported on a Cluster's status.
pub const DEFAULT: &str = "default";

/// A policy with the name it is known by.
#[derive(Clone)]
pub struct Named {
    pub name: String,
    pub policy: Policy,
}

/// Policies by ReconcilePolicy name, plus the default.
#[derive(Default)]
pub struct Registry {
    default: Option<Policy>,
    named: RwLock<HashMap<String, Policy>>,
}

impl Registry {
    pub fn new(default: Option<Policy>) -> Self {
        Registry {
            default,
            named: RwLock::default(),
        }
    }

    /// The policy a Cluster names, or the default.
    pub fn for_cluster(&self, cluster: &Cluster) -> Result<Named> {
        match cluster.spec.policy.as_deref() {
            Some(name) => self.named.read().unwrap().get(name).cloned().map(|policy| Named { name: name.into(), policy }).ok_or_else(|| {
                Error::NoPolicy(format!(
                    "ReconcilePolicy {name} (spec.policy) is not loaded: create it, or check `kubectl get reconcilepolicy {name}` for its last error"
                ))
            }),
            None => self.default.clone().map(|policy| Named { name: DEFAULT.into(), policy }).ok_or_else(|| {
                Error::NoPolicy("the operator has no default policy (--default-policy) and spec.policy is not set: name a ReconcilePolicy in spec.policy".into())
            }),
        }
    }

    /// The digest in force for a ReconcilePolicy.
    pub fn digest(&self, name: &str) -> Option<String> {
        self.named
            .read()
            .unwrap()
            .get(name)
            .map(|p| p.digest().to_string())
    }

    /// Puts a newly loaded module in force.
    pub fn insert(&self, name: &str, policy: Policy) {
        self.named.write().unwrap().insert(name.into(), policy);
    }

    /// Forgets a deleted ReconcilePolicy.
    pub fn remove(&self, name: &str) {
        self.named.write().unwrap().remove(name);
    }
}
