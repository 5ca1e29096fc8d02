//! Every way a policy call can fail, each with a message a user understands.

use std::time::Duration;

/// A failed policy call or load. The host never panics on a policy's behalf: a failure
/// becomes one of these, then a `PolicyFailed` condition and an Event on the object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The module could not be compiled or instantiated.
    #[error("cannot load the policy module: {0}")]
    Load(String),
    /// The module does not implement the `pgwarden:policy` ABI this host speaks.
    #[error("the policy module does not match ABI pgwarden:policy@{expected}: {detail}")]
    AbiMismatch { expected: String, detail: String },
    /// The policy crashed (a panic, an abort, an out-of-bounds access...).
    #[error("the policy crashed in {decision}: {detail}")]
    Trap { decision: String, detail: String },
    /// The policy ran past its time limit and was stopped.
    #[error("the policy ran past its {}ms limit in {decision} and was stopped", timeout.as_millis())]
    Deadline { decision: String, timeout: Duration },
    /// The policy tried to use more memory than its cap and was stopped.
    #[error("the policy tried to use more than {} MiB of memory in {decision} and was stopped", limit_bytes >> 20)]
    MemoryCap {
        decision: String,
        limit_bytes: usize,
    },
    /// The policy called a host function the sandbox does not grant.
    #[error(
        "the policy called {import} in {decision}, which the sandbox does not grant (no filesystem, network, clock or environment)"
    )]
    Capability { decision: String, import: String },
    /// The policy answered something the host cannot use.
    #[error("the policy answered a malformed {decision}: {detail}")]
    MalformedOutput { decision: String, detail: String },
    /// The policy refused `decision`: `reason` (one CamelCase word) for the condition, the
    /// message tells the user what to change.
    #[error("{message}")]
    Denied {
        decision: String,
        reason: String,
        message: String,
    },
    /// The engine itself failed (a thread, a semaphore): not the policy's fault.
    #[error("the policy engine failed: {0}")]
    Engine(String),
}

impl PolicyError {
    /// A short label per variant, for metrics and Event reasons.
    pub fn label(&self) -> &'static str {
        match self {
            PolicyError::Load(_) => "load",
            PolicyError::AbiMismatch { .. } => "abi_mismatch",
            PolicyError::Trap { .. } => "trap",
            PolicyError::Deadline { .. } => "deadline",
            PolicyError::MemoryCap { .. } => "memory_cap",
            PolicyError::Capability { .. } => "capability",
            PolicyError::MalformedOutput { .. } => "malformed_output",
            PolicyError::Denied { .. } => "denied",
            PolicyError::Engine(_) => "engine",
        }
    }

    /// The policy's reason of a denial (`PolicyDenied` for a bare message), if it is one.
    pub fn denial_reason(&self) -> Option<&str> {
        match self {
            PolicyError::Denied { reason, .. } => Some(reason),
            _ => None,
        }
    }

    /// Whether the policy answered (a denial) rather than failed.
    pub fn is_denial(&self) -> bool {
        matches!(self, PolicyError::Denied { .. })
    }
}

/// `Result` with [`PolicyError`].
pub type Result<T, E = PolicyError> = std::result::Result<T, E>;
