//! An instance's data volume claim once it exists: applied again only to grow (the policy
//! decides the size; the core's `guardrails::storage` refuses a shrink or a change of class
//! before anything is applied), and a growth the API server refuses said on the Cluster.

use pgwarden_core::plan::ObjectRef;
use serde_json::Value;

use super::errors::Error;
use super::step::Step;

/// A claim is applied again only to grow: nothing else of its spec may change once made, and
/// the planner refused a smaller size or another class (`guardrails::storage`). Sizes are
/// compared by value (the API server stores `1024Mi` as `1Gi`).
pub fn step(observed: &Value, desired: &Value) -> Step {
    let size = |claim: &Value| {
        let request = claim.pointer("/spec/resources/requests/storage")?;
        pgwarden_core::quantity::nanos(request.as_str()?)
    };
    match (size(observed), size(desired)) {
        (Some(observed), Some(desired)) if desired > observed => Step::Apply,
        _ => Step::Nothing,
    }
}

/// A claim the API server refuses to grow (not bound yet, or its StorageClass does not allow
/// expansion): an error naming the claim, both sizes and the API server's reason, which the
/// Cluster's `PolicyApplied` shows (an API error alone would only be retried and logged).
pub fn not_grown(e: Error, observed: &Value, desired: &Value, target: &ObjectRef) -> Error {
    let Error::Kube(kube::Error::Api(refusal)) = &e else {
        return e;
    };
    if !matches!(refusal.code, 403 | 422) {
        return e;
    }
    let size = |claim: &Value| {
        let request = claim.pointer("/spec/resources/requests/storage");
        request.and_then(Value::as_str).unwrap_or("?").to_string()
    };
    Error::ClaimNotGrown(format!(
        "the API server refused to grow {target} from {} to {}: {}; a claim grows only once bound, and only if its StorageClass sets allowVolumeExpansion",
        size(observed),
        size(desired),
        refusal.message
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sized(size: &str) -> Value {
        json!({"spec": {"resources": {"requests": {"storage": size}}}})
    }

    #[test]
    fn a_claim_is_applied_again_only_to_grow() {
        assert_eq!(step(&sized("1Gi"), &sized("2048Mi")), Step::Apply);
        assert_eq!(
            step(&sized("2Gi"), &sized("2048Mi")),
            Step::Nothing,
            "same value"
        );
        assert_eq!(
            step(&sized("3Gi"), &sized("2048Mi")),
            Step::Nothing,
            "never shrunk"
        );
        let other = json!({"spec": {"x": 1}});
        assert_eq!(step(&json!({"spec": {"x": 2}}), &other), Step::Nothing);
    }

    #[test]
    fn a_refused_growth_names_the_claim_both_sizes_and_why() {
        let refusal = kube::core::Status::failure(
            "spec is immutable after creation except resources.requests for bound claims",
            "Invalid",
        )
        .with_code(422);
        let target = ObjectRef {
            api_version: "v1".into(),
            kind: "PersistentVolumeClaim".into(),
            namespace: Some("ns".into()),
            name: "pg-1".into(),
        };
        let e = not_grown(
            Error::Kube(kube::Error::Api(refusal.boxed())),
            &sized("1Gi"),
            &sized("2Gi"),
            &target,
        );
        assert_eq!(e.reason(), "ClaimNotGrown");
        assert!(
            e.to_string().starts_with(
                "the API server refused to grow PersistentVolumeClaim ns/pg-1 from 1Gi to 2Gi: spec is immutable"
            ),
            "{e}"
        );
        // Another failure (the API server unreachable, say) stays what it is.
        let gone = kube::Error::Api(
            kube::core::Status::failure("unavailable", "")
                .with_code(503)
                .boxed(),
        );
        let e = not_grown(Error::Kube(gone), &sized("1Gi"), &sized("2Gi"), &target);
        assert_eq!(e.reason(), "ApiError");
    }
}
