//! The pgwarden API: group `postgresql.k8s.2ndq.io`, version `v1alpha1`.
//!
//! ```text
//!   Cluster ◄──── spec.cluster.name ──── Backup ◄── created on schedule ── ScheduledBackup
//!      │ spec.policy                         (phases: pending → running → completed | failed)
//!      ▼
//!   ReconcilePolicy (cluster-scoped): which WebAssembly module decides for the Cluster
//! ```
//!
//! The types are the single source of truth: the host, the instance agent and the policy
//! guests (through the SDK) all use them, and the CRD YAML under `crds/yaml/` is generated
//! from them (`pgwarden crd`). Admission-time validation lives in the schemas: enums,
//! patterns, `required`, and `x-kubernetes-validations` CEL rules whose messages name the
//! field and the accepted values. What only the operator can check becomes a condition.

#![forbid(unsafe_code)]

mod backup;
mod cluster;
mod common;
pub mod identity;
mod policy;
mod scheduled;
pub mod settings;

pub use backup::{
    Backup, BackupAgentState, BackupAgentStatus, BackupDeletion, BackupDeletionAgent, BackupPhase,
    BackupSpec, BackupStatus, BackupTarget, ExpiredObject, InstanceId,
};
pub use cluster::{
    ArchiveStatus, Bootstrap, BootstrapInitDb, BootstrapRecovery, Cluster, ClusterSpec,
    ClusterStatus, DataBackupConfiguration, DataCompression, Encryption, InstanceStatus,
    MAX_INSTANCES, MAX_INSTANCES_EVER, MAX_NAME_LENGTH as MAX_CLUSTER_NAME_LENGTH, ObjectStore,
    PolicyInForce, PostgresConfiguration, RecoveryTarget, S3Credentials, StorageConfiguration,
    WalBackupConfiguration, WalCompression,
};
pub use common::{LocalObjectReference, SecretKeySelector, condition_types};
pub use policy::{
    ConfigMapKey, ModuleSource, PolicyLimits, ReconcilePolicy, ReconcilePolicySpec,
    ReconcilePolicyStatus,
};
pub use scheduled::{
    BackupOwnerReference, MAX_NAME_LENGTH as MAX_SCHEDULED_BACKUP_NAME_LENGTH,
    MIN_INTERVAL_SECONDS as MIN_SCHEDULE_INTERVAL_SECONDS, ScheduledBackup, ScheduledBackupSpec,
    ScheduledBackupStatus,
};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// The API group of every pgwarden kind.
pub const GROUP: &str = "postgresql.k8s.2ndq.io";
/// The API version of every pgwarden kind.
pub const VERSION: &str = "v1alpha1";

/// The four CustomResourceDefinitions, in the order they are installed.
pub fn crds() -> Vec<CustomResourceDefinition> {
    [
        with_root_rules(Cluster::crd(), cluster::name_rules()),
        Backup::crd(),
        with_root_rules(ScheduledBackup::crd(), scheduled::name_rules()),
        ReconcilePolicy::crd(),
    ]
    .into_iter()
    .map(tidy)
    .collect()
}

/// Adds CEL rules at the root of a CRD's schema, where `self.metadata.name` is readable (the
/// derive puts rules on the spec, which cannot see the object's name).
fn with_root_rules(
    mut crd: CustomResourceDefinition,
    rules: serde_json::Value,
) -> CustomResourceDefinition {
    for version in &mut crd.spec.versions {
        if let Some(schema) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        {
            schema.x_kubernetes_validations =
                Some(serde_json::from_value(rules.clone()).expect("CEL rules deserialize"));
        }
    }
    crd
}

/// Two touches on the generated schemas: an optional enum lists `null` among its values
/// (nullability is already `nullable: true`, and `null` would show in the API server's
/// "supported values"), and unsigned formats are unknown to the API server.
fn tidy(mut crd: CustomResourceDefinition) -> CustomResourceDefinition {
    fn walk(node: &mut serde_json::Value) {
        if let Some(map) = node.as_object_mut() {
            if let Some(values) = map.get_mut("enum").and_then(|e| e.as_array_mut()) {
                values.retain(|v| !v.is_null());
            }
            if map
                .get("format")
                .and_then(|f| f.as_str())
                .is_some_and(|f| f.starts_with("uint"))
            {
                map.insert("format".into(), "int64".into());
            }
            map.values_mut().for_each(walk);
        } else if let Some(items) = node.as_array_mut() {
            items.iter_mut().for_each(walk);
        }
    }
    for version in &mut crd.spec.versions {
        if let Some(schema) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        {
            let mut json = serde_json::to_value(&*schema).expect("a schema serializes");
            walk(&mut json);
            *schema = serde_json::from_value(json).expect("a tidied schema deserializes");
        }
    }
    crd
}

/// YAML as the project writes it (CRDs, blessed fixtures): long strings on one line, not
/// folded, so that a generated file's diff shows the words that changed.
pub fn to_yaml<T: serde::Serialize>(value: &T) -> Result<String, serde_saphyr::SerializeError> {
    let options = serde_saphyr::ser_options! { folded_wrap_chars: usize::MAX };
    serde_saphyr::to_string_with_options(value, options)
}

/// One CRD as the YAML document committed under `crds/yaml/`.
pub fn crd_yaml(crd: &CustomResourceDefinition) -> String {
    let body = to_yaml(crd).expect("a CRD always serializes");
    format!("# Generated by `pgwarden crd` from crds/src: do not edit.\n{body}")
}

/// The file name of a CRD under `crds/yaml/`, e.g. `clusters.postgresql.k8s.2ndq.io.yaml`.
pub fn crd_file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}.yaml", crd.metadata.name.as_deref().unwrap_or("unnamed"))
}
