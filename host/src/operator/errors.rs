//! The operator's errors. Each becomes a condition and an Event on the object at fault and a
//! metric label; none stops the operator.

use crate::policy::PolicyError;
use pgwarden_core::plan::GuardrailError;

#[derive(thiserror::Error, Debug)]
pub enum Error {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("policy: {0}")]
    Policy(#[from] PolicyError),
    #[error("guardrail: {0}")]
    Guardrail(#[from] GuardrailError),
    #[error("{0}")]
    NoPolicy(String),
    /// The Cluster a Backup or ScheduledBackup names does not exist, and no namespace binding
    /// says which policy decides without it.
    #[error("{0}")]
    ClusterNotFound(String),
    #[error("cannot load policy module: {0}")]
    Module(String),
    /// The API server refused to grow an instance's claim: named, with both sizes and why.
    #[error("{0}")]
    ClaimNotGrown(String),
    /// The policy's `validate-settings` refuses the ReconcilePolicy's `spec.settings`: its
    /// reason and its message (naming the field).
    #[error("the policy refuses spec.settings: {message}")]
    Settings { reason: String, message: String },
    /// Objects the Cluster's names would take exist and are not controlled by it: left
    /// unchanged, named in the message.
    #[error("{0}")]
    NameInUse(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The label of the error in `pgwarden_reconcile_errors_total`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Policy(e) => e.label(),
            Error::Guardrail(_) => "guardrail",
            Error::NoPolicy(_) => "no_policy",
            Error::ClusterNotFound(_) => "cluster_not_found",
            Error::Module(_) => "module",
            Error::Settings { .. } => "settings",
            Error::ClaimNotGrown(_) => "claim_not_grown",
            Error::NameInUse(_) => "name_in_use",
        }
    }

    /// The reason of the condition and Event that report it: a denial's own reason (one
    /// CamelCase word, checked when the policy answered), else one per kind of failure.
    pub fn reason(&self) -> &str {
        match self {
            Error::Kube(_) => "ApiError",
            Error::Policy(e) if e.is_denial() => e.denial_reason().unwrap_or("PolicyDenied"),
            Error::Policy(_) => "PolicyFailed",
            Error::Guardrail(_) => "GuardrailRefused",
            Error::NoPolicy(_) => "PolicyNotFound",
            Error::ClusterNotFound(_) => "ClusterNotFound",
            Error::Module(_) => "ModuleLoadFailed",
            // The ReconcilePolicy's condition shows the policy's own reason.
            Error::Settings { .. } => "InvalidSettings",
            Error::ClaimNotGrown(_) => "ClaimNotGrown",
            Error::NameInUse(_) => "NameInUse",
        }
    }
}
