//! Field-by-field comparison of a pod template with the SDK's default pod: what the pod
//! guardrail ([`super::pod`]) and its security-context rules ([`super::pod_security`]) share.

use serde_json::Value;

use crate::plan::errors::GuardrailError;

/// The pod being checked, named in every refusal.
pub(super) struct Fields {
    pub object: String,
}

impl Fields {
    /// A refusal naming the field at `path` and why.
    pub fn refuse(&self, path: &str, why: &str) -> GuardrailError {
        GuardrailError::Invalid {
            object: self.object.clone(),
            detail: format!("{path} {why}"),
        }
    }

    /// Every key of `value` not in `allowed` must be what `default` has under it.
    pub fn same_as_default(
        &self,
        path: &str,
        value: &Value,
        default: Option<&Value>,
        allowed: &[&str],
    ) -> Result<(), GuardrailError> {
        for (key, v) in value.as_object().into_iter().flatten() {
            if allowed.contains(&key.as_str()) || default.and_then(|d| d.get(key)) == Some(v) {
                continue;
            }
            return Err(self.refuse(
                &format!("{path}.{key}"),
                "is not a field a policy may set: it must be as in the SDK's default pod, or absent",
            ));
        }
        Ok(())
    }
}
