//! What a Cluster gives its instance pods of the outside world: the agent's ServiceAccount
//! metadata (cloud identity: IRSA, EKS Pod Identity, GKE Workload Identity) and plain
//! environment variables for the archiver and backup tools.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::settings::{env, pod};

/// Labels and annotations added to the instance agent's ServiceAccount `<cluster>-agent`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAccountTemplate {
    /// The metadata added to the ServiceAccount.
    #[serde(default)]
    pub metadata: TemplateMetadata,
}

/// Labels and annotations of an object pgwarden makes.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TemplateMetadata {
    /// Annotations, e.g. `eks.amazonaws.com/role-arn` (IRSA) or
    /// `iam.gke.io/gcp-service-account` (GKE Workload Identity).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Labels. pgwarden's own (`postgresql.k8s.2ndq.io/cluster`) win over these.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// A plain environment variable of the instance container (a name and a value, no Secret:
/// credentials go in `spec.backup.s3Credentials`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnvVar {
    /// The variable's name: letters, digits and `_`, not starting with a digit.
    #[schemars(regex(pattern = r"^[A-Za-z_][A-Za-z0-9_]*$"), length(max = 128))]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": (env_rule()),
         "message": "spec.env must not set a variable pgwarden sets",
         "messageExpression": (env_message())}
    ]))]
    pub name: String,
    /// Its value.
    #[serde(default)]
    #[schemars(length(max = 4096))]
    pub value: String,
}

/// At most this many variables (the API server bounds a CEL rule's cost by it).
pub const MAX_ENV: u32 = 64;

/// The variables pgwarden sets in the instance container, which `spec.env` may not override:
/// the object store's credentials and what the agent reads to find itself. Every `PGWARDEN_`
/// name is reserved too ([`RESERVED_ENV_PREFIX`]).
pub const RESERVED_ENV: &[&str] = &[
    env::ACCESS_KEY_ID,
    env::SECRET_ACCESS_KEY,
    env::SESSION_TOKEN,
    env::REGION,
    pod::ENV_POD_NAME,
    pod::ENV_NAMESPACE,
    pod::ENV_PGDATA,
    "AWS_CA_BUNDLE",
];

/// Names starting so are pgwarden's.
pub const RESERVED_ENV_PREFIX: &str = "PGWARDEN_";

/// Whether `spec.env` may not set `name` (the host's check, the same as the CEL rule).
pub fn is_reserved_env(name: &str) -> bool {
    RESERVED_ENV.contains(&name) || name.starts_with(RESERVED_ENV_PREFIX)
}

/// CEL rule on one variable's name: not one pgwarden sets. On the name, not on the list: a
/// message built from a filter of the list costs more than the API server allows.
pub fn env_rule() -> String {
    let list = RESERVED_ENV
        .iter()
        .map(|n| format!("'{n}'"))
        .collect::<Vec<_>>()
        .join(", ");
    format!("!(self in [{list}]) && !self.startsWith('{RESERVED_ENV_PREFIX}')")
}

/// CEL message naming the variable.
pub fn env_message() -> String {
    format!(
        "'spec.env must not set ' + self + ': pgwarden sets it (reserved: {}, {RESERVED_ENV_PREFIX}*)'",
        RESERVED_ENV.join(", ")
    )
}
