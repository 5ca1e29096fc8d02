//! What the operator last applied to an object, recorded on the object itself: the
//! annotation [`ANNOTATION`] holds the sha256 of the desired object (without status) as
//! the operator sent it.
//!
//! Why a hash of the decision rather than comparing the live object with the desired one:
//! - a field *removed* from the desired object is invisible to a comparison that walks the
//!   desired fields (an env var, a volume, a ConfigMap key, a label): the hash changes, and
//!   the server-side apply of the whole object then removes what this manager no longer
//!   sends;
//! - what the API server (or an admission webhook) rewrites is not a change: `cpu: "0.5"`
//!   is stored as `500m`, an image may be pinned to a digest. A pod is recreated only when
//!   the operator's *decision* changed since the pod was made.
//!
//! The `managedFields` of the manager would show removals too, but not value changes, and a
//! pod would still need a semantic comparison of every field the server may rewrite; the
//! hash needs neither.

use serde_json::Value;
use sha2::{Digest, Sha256};

/// The annotation that records the hash of the last applied desired object.
pub const ANNOTATION: &str = "postgresql.k8s.2ndq.io/applied-hash";

/// `sha256:<hex>` of the canonical JSON of `desired` without `status` (and without a hash
/// annotation it may carry): keys sorted at every level, so the same decision always gives
/// the same hash.
pub fn hash(desired: &Value) -> String {
    let mut object = desired.clone();
    if let Some(map) = object.as_object_mut() {
        map.remove("status");
    }
    if let Some(metadata) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        // A pod's role follows the current primary (a failover moves it): relabelled in
        // place, never a reason to recreate the pod.
        let labels = metadata.get_mut("labels").and_then(Value::as_object_mut);
        if let Some(labels) = labels {
            labels.remove(pgwarden_crds::settings::pod::LABEL_ROLE);
        }
        let annotations = metadata
            .get_mut("annotations")
            .and_then(Value::as_object_mut);
        if let Some(annotations) = annotations {
            annotations.remove(ANNOTATION);
            // What `stamped` adds is not part of the decision: an emptied map neither.
            if annotations.is_empty() {
                metadata.remove("annotations");
            }
        }
    }
    let mut text = String::new();
    canonical(&object, &mut text);
    format!("sha256:{}", hex::encode(Sha256::digest(text.as_bytes())))
}

/// Writes `value` as JSON with object keys in sorted order.
fn canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                canonical(&map[key], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(item, out);
            }
            out.push(']');
        }
        leaf => out.push_str(&leaf.to_string()),
    }
}

/// `desired` with its hash annotation set: what the applier sends.
pub fn stamped(desired: &Value) -> Value {
    let hash = hash(desired);
    let mut object = desired.clone();
    if let Some(map) = object.as_object_mut() {
        map.remove("status");
        let metadata = map
            .entry("metadata")
            .or_insert_with(|| Value::Object(Default::default()));
        if let Some(metadata) = metadata.as_object_mut() {
            let annotations = metadata
                .entry("annotations")
                .or_insert_with(|| Value::Object(Default::default()));
            if !annotations.is_object() {
                *annotations = Value::Object(Default::default());
            }
            annotations[ANNOTATION] = Value::String(hash);
        }
    }
    object
}

/// The hash recorded on an observed object, if any.
pub fn recorded(observed: &Value) -> Option<&str> {
    observed
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(ANNOTATION))
        .and_then(Value::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_hash_ignores_key_order_status_and_itself() {
        let a =
            json!({"metadata": {"name": "x", "labels": {"a": "1", "b": "2"}}, "data": {"k": "v"}});
        let b = json!({"data": {"k": "v"}, "metadata": {"labels": {"b": "2", "a": "1"}, "name": "x"}, "status": {"phase": "p"}});
        assert_eq!(hash(&a), hash(&b));
        assert!(hash(&a).starts_with("sha256:") && hash(&a).len() == 7 + 64);
        assert_eq!(hash(&stamped(&a)), hash(&a), "the annotation is not hashed");
        let removed = json!({"metadata": {"name": "x", "labels": {"a": "1"}}, "data": {"k": "v"}});
        assert_ne!(hash(&a), hash(&removed));
    }

    #[test]
    fn a_pods_role_label_is_not_part_of_its_decision() {
        let role = pgwarden_crds::settings::pod::LABEL_ROLE;
        let primary = json!({"metadata": {"name": "pg-2", "labels": {role: "primary", "a": "1"}}});
        let replica = json!({"metadata": {"name": "pg-2", "labels": {role: "replica", "a": "1"}}});
        assert_eq!(hash(&primary), hash(&replica));
    }

    #[test]
    fn stamped_objects_carry_their_hash_and_keep_other_annotations() {
        let desired =
            json!({"metadata": {"name": "x", "annotations": {"mine": "yes"}}, "status": {}});
        let sent = stamped(&desired);
        assert_eq!(recorded(&sent), Some(hash(&desired).as_str()));
        assert_eq!(sent["metadata"]["annotations"]["mine"], "yes");
        assert!(sent.get("status").is_none());
        assert_eq!(recorded(&json!({"metadata": {}})), None);
        let bare = stamped(&json!({"data": {}}));
        assert!(recorded(&bare).is_some());
    }
}
