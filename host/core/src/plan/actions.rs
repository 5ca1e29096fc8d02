//! Actions: what the operator will do, as plain data.

use serde::Serialize;

/// The field manager of everything the operator writes (objects, status, Events): one owner
/// of the fields its server-side applies set.
pub const MANAGER: &str = "pgwarden-operator";

/// An object, by kind and name.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ObjectRef {
    pub api_version: String,
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
}

impl std::fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {ns}/{}", self.kind, self.name),
            None => write!(f, "{} {}", self.kind, self.name),
        }
    }
}

/// Normal or Warning, as Kubernetes Events have it.
#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

/// One thing to do.
#[derive(Serialize, Clone, Debug, PartialEq)]
#[serde(tag = "action", rename_all = "camelCase")]
pub enum Action {
    /// Server-side apply of a whole object (JSON with apiVersion, kind, metadata).
    Apply {
        target: ObjectRef,
        object: serde_json::Value,
    },
    /// Delete an object. `ownerUids` and `cluster` are what the planner observed on it: the
    /// guardrails check them against the subject.
    #[serde(rename_all = "camelCase")]
    Delete {
        target: ObjectRef,
        owner_uids: Vec<String>,
        cluster: Option<String>,
    },
    /// Server-side apply of the status of an object (the operator's field manager).
    PatchStatus {
        target: ObjectRef,
        status: serde_json::Value,
    },
    /// Record an Event about an object.
    #[serde(rename_all = "camelCase")]
    Event {
        regarding: ObjectRef,
        event_type: EventType,
        reason: String,
        note: String,
    },
    /// Reconcile the subject again after this many seconds.
    #[serde(rename_all = "camelCase")]
    Requeue { after_seconds: u64 },
}

impl Action {
    /// The object the action touches, if any.
    pub fn target(&self) -> Option<&ObjectRef> {
        match self {
            Action::Apply { target, .. }
            | Action::Delete { target, .. }
            | Action::PatchStatus { target, .. } => Some(target),
            Action::Event { regarding, .. } => Some(regarding),
            Action::Requeue { .. } => None,
        }
    }
}
