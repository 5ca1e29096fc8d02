//! Guardrails: the last check before the API server. Only the subject's namespace, only kinds
//! on the allow-list, only objects the subject owns, only objects of a bounded size.

use std::collections::BTreeSet;

use pgwarden_crds::settings::pod::LABEL_CLUSTER;

use super::actions::{Action, ObjectRef};
use super::errors::GuardrailError;

pub mod clone;
mod fields;
pub mod pod;
mod pod_security;
pub mod storage;

/// The largest object the operator applies.
pub const MAX_OBJECT_BYTES: usize = 512 << 10;

/// Kinds the operator may apply or delete, as (apiVersion, kind). A Role may grant only the
/// agent's rules and a RoleBinding bind only a Role to ServiceAccounts ([`check_rbac`]).
pub const ALLOWED_KINDS: [(&str, &str); 9] = [
    ("v1", "Pod"),
    ("v1", "PersistentVolumeClaim"),
    ("v1", "Service"),
    ("v1", "ConfigMap"),
    ("v1", "ServiceAccount"),
    ("rbac.authorization.k8s.io/v1", "Role"),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"),
    ("postgresql.k8s.2ndq.io/v1alpha1", "Backup"),
    ("postgresql.k8s.2ndq.io/v1alpha1", "Cluster"),
];

/// Kinds whose status the operator writes.
pub const STATUS_KINDS: [&str; 4] = ["Cluster", "Backup", "ScheduledBackup", "ReconcilePolicy"];

/// The object being reconciled: every action must stay within its reach.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subject {
    pub object: ObjectRef,
    pub uid: String,
    /// The Cluster it belongs to (its own name for a Cluster).
    pub cluster: String,
}

impl Subject {
    fn namespace(&self) -> &str {
        self.object.namespace.as_deref().unwrap_or_default()
    }
}

/// Checks every action; the first refusal wins.
pub fn check(subject: &Subject, actions: &[Action]) -> Result<(), GuardrailError> {
    actions.iter().try_for_each(|a| check_one(subject, a))
}

/// Checks one action.
pub fn check_one(subject: &Subject, action: &Action) -> Result<(), GuardrailError> {
    let Some(target) = action.target() else {
        return Ok(());
    };
    check_namespace(subject, target)?;
    match action {
        Action::Apply { object, .. } => {
            check_generated_secret(subject, target, object)?;
            check_size(target, object)?;
            check_rbac(subject, target, object)?;
            let owners = owner_uids(object);
            let cluster = object.pointer(&format!(
                "/metadata/labels/{}",
                LABEL_CLUSTER.replace('/', "~1")
            ));
            check_owned(subject, target, &owners, cluster.and_then(|c| c.as_str()))
        }
        Action::Delete {
            owner_uids,
            cluster,
            ..
        } => {
            check_kind(target)?;
            check_owned(subject, target, owner_uids, cluster.as_deref())
        }
        Action::PatchStatus { status, .. } => {
            if !STATUS_KINDS.contains(&target.kind.as_str()) {
                return Err(GuardrailError::KindNotAllowed {
                    object: target.to_string(),
                    kind: target.kind.clone(),
                });
            }
            check_size(target, status)?;
            if target != &subject.object {
                return Err(GuardrailError::NotOwned {
                    object: target.to_string(),
                    subject: subject.object.to_string(),
                });
            }
            Ok(())
        }
        Action::Event { note, .. } => check_size(target, &serde_json::Value::String(note.clone())),
        Action::Requeue { .. } => Ok(()),
    }
}

fn check_namespace(subject: &Subject, target: &ObjectRef) -> Result<(), GuardrailError> {
    let namespace = target.namespace.as_deref().unwrap_or_default();
    if namespace != subject.namespace() {
        return Err(GuardrailError::WrongNamespace {
            object: target.to_string(),
            namespace: if namespace.is_empty() {
                "(cluster scope)".into()
            } else {
                namespace.into()
            },
            subject: subject.object.to_string(),
            expected: subject.namespace().into(),
        });
    }
    Ok(())
}

/// A Secret only as the Cluster's generated replication Secret, without data (the value is
/// generated when it is created, never planned); any other kind as [`check_kind`].
fn check_generated_secret(
    subject: &Subject,
    target: &ObjectRef,
    object: &serde_json::Value,
) -> Result<(), GuardrailError> {
    if (target.api_version.as_str(), target.kind.as_str()) != ("v1", "Secret") {
        return check_kind(target);
    }
    let name = pgwarden_sdk::names::replication_secret(&subject.cluster);
    let planned_value = object.get("data").is_some() || object.get("stringData").is_some();
    if target.name != name || planned_value {
        return Err(GuardrailError::Invalid {
            object: target.to_string(),
            detail: format!(
                "the operator writes one Secret, {name}, generated without a planned value"
            ),
        });
    }
    Ok(())
}

fn check_kind(target: &ObjectRef) -> Result<(), GuardrailError> {
    if ALLOWED_KINDS.contains(&(target.api_version.as_str(), target.kind.as_str())) {
        return Ok(());
    }
    Err(GuardrailError::KindNotAllowed {
        object: target.to_string(),
        kind: format!("{}/{}", target.api_version, target.kind),
    })
}

/// A Role grants exactly the agent's rules (no more: an operator bug or a tampered plan never
/// widens what a pod may do); a RoleBinding binds a Role (never a ClusterRole) to
/// ServiceAccounts of the subject's namespace.
pub fn check_rbac(
    subject: &Subject,
    target: &ObjectRef,
    object: &serde_json::Value,
) -> Result<(), GuardrailError> {
    let refused = |detail: String| {
        Err(GuardrailError::Invalid {
            object: target.to_string(),
            detail,
        })
    };
    match target.kind.as_str() {
        "Role" => {
            let agent = serde_json::to_value(super::rbac::agent_rules(&subject.cluster))
                .unwrap_or_default();
            if object.get("rules") != Some(&agent) {
                return refused(format!(
                    "a Role may grant only the instance agent's rules {agent}"
                ));
            }
        }
        "RoleBinding" => {
            if object.pointer("/roleRef/kind").and_then(|k| k.as_str()) != Some("Role") {
                return refused("a RoleBinding may bind only a Role of its namespace".into());
            }
            let subjects = object.get("subjects").and_then(|s| s.as_array());
            let foreign = subjects.into_iter().flatten().find(|s| {
                s.get("kind").and_then(|k| k.as_str()) != Some("ServiceAccount")
                    || s.get("namespace").and_then(|n| n.as_str()) != Some(subject.namespace())
            });
            if let Some(foreign) = foreign {
                return refused(format!(
                    "a RoleBinding may bind only ServiceAccounts of namespace {}, not {foreign}",
                    subject.namespace()
                ));
            }
        }
        _ => {}
    }
    Ok(())
}

fn check_size(target: &ObjectRef, value: &serde_json::Value) -> Result<(), GuardrailError> {
    let bytes = serde_json::to_vec(value)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if bytes > MAX_OBJECT_BYTES {
        return Err(GuardrailError::TooLarge {
            object: target.to_string(),
            bytes,
            limit: MAX_OBJECT_BYTES,
        });
    }
    Ok(())
}

fn owner_uids(object: &serde_json::Value) -> Vec<String> {
    let owners = object
        .pointer("/metadata/ownerReferences")
        .and_then(|o| o.as_array());
    owners
        .into_iter()
        .flatten()
        .filter_map(|o| o.get("uid")?.as_str().map(str::to_owned))
        .collect()
}

/// Owned: an owner reference to the subject; or, for a Backup, the subject's Cluster's label.
fn check_owned(
    subject: &Subject,
    target: &ObjectRef,
    owners: &[String],
    cluster: Option<&str>,
) -> Result<(), GuardrailError> {
    let by_ref = owners
        .iter()
        .collect::<BTreeSet<_>>()
        .contains(&subject.uid);
    let by_cluster = target.kind == "Backup" && cluster == Some(subject.cluster.as_str());
    if by_ref || by_cluster {
        return Ok(());
    }
    Err(GuardrailError::NotOwned {
        object: target.to_string(),
        subject: subject.object.to_string(),
    })
}
