//! Why a plan or an action is refused. Each names the object.

/// A guardrail refused an action, or the planner refused a decision it cannot turn into
/// objects safely.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuardrailError {
    #[error(
        "refused {object}: it is in namespace {namespace}, outside {subject}'s namespace {expected}"
    )]
    WrongNamespace {
        object: String,
        namespace: String,
        subject: String,
        expected: String,
    },
    #[error("refused {object}: kind {kind} is not one the operator manages")]
    KindNotAllowed { object: String, kind: String },
    #[error("refused {object}: it is not owned by {subject}")]
    NotOwned { object: String, subject: String },
    #[error("refused {object}: {bytes} bytes, over the {limit}-byte bound")]
    TooLarge {
        object: String,
        bytes: usize,
        limit: usize,
    },
    #[error(
        "refused {object}: environment variable {env} carries a credential by value; credentials come from secretKeyRef only"
    )]
    SecretValue { object: String, env: String },
    #[error("refused {object}: it refers to {reference}, which does not belong to {subject}")]
    ForeignReference {
        object: String,
        reference: String,
        subject: String,
    },
    #[error("refused {object}: {detail}")]
    Invalid { object: String, detail: String },
    /// A host invariant ([`super::guardrails::storage`]): a claim never shrinks.
    #[error(
        "refused {claim}: the policy asks for {desired}, smaller than the claim's {observed}; a claim never shrinks (the data on it would not fit): ask for {observed} or more"
    )]
    ClaimShrinks {
        claim: String,
        desired: String,
        observed: String,
    },
    /// A host invariant ([`super::guardrails::storage`]): a claim keeps its storage class.
    #[error(
        "refused {claim}: the policy asks for storage class {desired}, but the claim was made with {observed}; the class of an existing claim never changes (another class needs a new claim)"
    )]
    ClaimClassChanges {
        claim: String,
        desired: String,
        observed: String,
    },
}
