//! `ReconcilePolicy`: which WebAssembly module makes a Cluster's reconcile decisions.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_with::skip_serializing_none;

/// A reconcile policy: a WebAssembly component, compiled from a Rust policy crate, that
/// decides pod templates, archive and backup settings, Backup phases, schedules and
/// retention. Swapping the module takes effect without restarting the operator; a module
/// that fails to load never replaces a working one.
#[skip_serializing_none]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "postgresql.k8s.2ndq.io",
    version = "v1alpha1",
    doc = "A WebAssembly module that makes the reconcile decisions of the Clusters that name it.",
    kind = "ReconcilePolicy",
    status = "ReconcilePolicyStatus",
    shortname = "pgpolicy",
    category = "pgwarden",
    printcolumn = r#"{"name":"Digest","type":"string","jsonPath":".status.digest","description":"sha256 of the module in force"}"#,
    printcolumn = r#"{"name":"ABI","type":"string","jsonPath":".status.abiVersion"}"#,
    printcolumn = r#"{"name":"Error","type":"string","jsonPath":".status.lastError"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ReconcilePolicySpec {
    /// Where the module comes from.
    pub module: ModuleSource,
    /// Limits of each policy call.
    pub limits: Option<PolicyLimits>,
    /// The policy's own settings, passed to every decision (`{}` when absent). Free-form
    /// here: the policy checks them (its `validate-settings`), so a module that fails them
    /// is not loaded.
    #[serde(default)]
    #[schemars(schema_with = "free_form_object")]
    pub settings: Option<serde_json::Value>,
}

/// A JSON object whose fields the API server keeps as they are.
fn free_form_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "nullable": true,
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

/// Where a policy module comes from: exactly one of a ConfigMap key, a file on the operator's
/// filesystem, or a URL pinned by its sha256.
#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "[has(self.configMap), has(self.file), has(self.url)].filter(x, x).size() == 1",
     "message": "spec.module: set exactly one of configMap, file or url"},
    {"rule": "!has(self.url) || has(self.sha256)",
     "message": "spec.module.url needs spec.module.sha256: a module fetched from a URL must be pinned by its digest"}
]))]
pub struct ModuleSource {
    /// A key of a ConfigMap holding the module (in `binaryData`).
    pub config_map: Option<ConfigMapKey>,
    /// A path on the operator's filesystem.
    pub file: Option<String>,
    /// An http(s) URL to download the module from; requires `sha256`.
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "self.matches('^https?://')", "message": "spec.module.url must be an http:// or https:// URL"}
    ]))]
    pub url: Option<String>,
    /// Expected sha256 of the module, as 64 lowercase hex digits. Required with `url`,
    /// checked for every source when set.
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "self.matches('^[0-9a-f]{64}$')", "message": "spec.module.sha256 must be 64 lowercase hex digits"}
    ]))]
    pub sha256: Option<String>,
}

/// A key of a ConfigMap.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMapKey {
    /// Namespace of the ConfigMap.
    #[schemars(length(min = 1))]
    pub namespace: String,
    /// Name of the ConfigMap.
    #[schemars(length(min = 1))]
    pub name: String,
    /// Key in the ConfigMap's `binaryData` holding the module.
    #[schemars(length(min = 1))]
    pub key: String,
}

/// Limits of each policy call.
#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyLimits {
    /// Wall-clock deadline of one decision, in milliseconds. Default: 200.
    #[schemars(range(min = 1, max = 10000))]
    pub timeout_millis: Option<u32>,
    /// Linear memory cap of one decision, in MiB. Default: 64.
    #[serde(rename = "memoryMiB")]
    #[schemars(range(min = 1, max = 1024))]
    pub memory_mib: Option<u32>,
}

/// The observed state of a ReconcilePolicy.
#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReconcilePolicyStatus {
    /// sha256 of the module in force.
    pub digest: Option<String>,
    /// ABI version the module in force exports.
    pub abi_version: Option<String>,
    /// Why the last module could not be loaded, if it could not.
    pub last_error: Option<String>,
    /// When the module in force was loaded.
    pub loaded_at: Option<String>,
    /// The generation of the spec the status describes.
    pub observed_generation: Option<i64>,
    /// Conditions of the policy.
    // A list map keyed by type (the Kubernetes convention): each condition has one owner.
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}
