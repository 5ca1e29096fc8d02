//! Status written once: a controller's computed status (from the reconcile core) goes to the
//! API server here, by server-side apply under the operator's field manager [`MANAGER`].
//!
//! An apply is the manager's whole intent for the fields it sends: a field it set before and
//! leaves out now is removed (`currentPrimary` once no pod is ready), which a controller that
//! always sends its kind's whole status wants. The fields other managers own (the agent's
//! `status.archive` and `status.parameters`, under its own managers) are never in the applied
//! object, so an apply leaves them as they are.

use kube::Resource;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use serde::Serialize;
use serde_json::{Value, json};
use tracing::debug;

use super::apply::contains;
use super::context::{Context, MANAGER};
use super::errors::Result;
use pgwarden_core::plan::{ObjectRef, reference};

/// Applies `status` as the status of `object` (as the reconcile observed it), unless the object
/// already holds it (a steady state writes nothing). Returns whether it wrote.
pub async fn apply_status<K>(ctx: &Context, object: &K, status: &impl Serialize) -> Result<bool>
where
    K: Resource<DynamicType = ()> + Serialize,
{
    // With its `null`s: a field the core left empty but the observed status still has is a
    // difference (it is to be removed).
    let desired = serde_json::to_value(status).unwrap_or_default();
    let observed = serde_json::to_value(object).unwrap_or_default();
    if holds(&observed, &desired) {
        return Ok(false);
    }
    let target = &reference(object);
    let body = json!({
        "apiVersion": target.api_version,
        "kind": target.kind,
        "metadata": {"name": target.name},
        "status": without_nulls(desired),
    });
    api(ctx, target)
        .patch_status(
            &target.name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(body),
        )
        .await?;
    debug!(object = %target, "status applied");
    ctx.metrics.wrote("status");
    Ok(true)
}

/// Whether `object` already holds `desired` as its status: every desired field has its value,
/// and no top-level field this manager applied before is missing from `desired` (a status type
/// that leaves empty fields out, rather than writing `null`, removes a field by omitting it:
/// `nextScheduleTime` once suspended).
fn holds(object: &Value, desired: &Value) -> bool {
    let set = |v: &Value| !v.is_null();
    contains(&object["status"], desired)
        && applied_status_fields(object)
            .iter()
            .all(|field| desired.get(field).is_some_and(set))
}

/// The top-level status fields [`MANAGER`] set by its last apply, from `managedFields`.
fn applied_status_fields(object: &Value) -> Vec<String> {
    let entries = object["metadata"]["managedFields"].as_array();
    entries
        .into_iter()
        .flatten()
        .filter(|e| {
            e["manager"] == MANAGER && e["operation"] == "Apply" && e["subresource"] == "status"
        })
        .filter_map(|e| e["fieldsV1"]["f:status"].as_object())
        .flat_map(|fields| fields.keys())
        .filter_map(|key| key.strip_prefix("f:").map(str::to_owned))
        .collect()
}

/// `value` without the object fields that are `null`: in an apply, leaving a field out is
/// what removes it (this manager no longer sets it).
fn without_nulls(value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, without_nulls(v)))
                .collect(),
        ),
        Value::Array(list) => Value::Array(list.into_iter().map(without_nulls).collect()),
        other => other,
    }
}

fn api(ctx: &Context, target: &ObjectRef) -> Api<DynamicObject> {
    let (group, version) = target
        .api_version
        .rsplit_once('/')
        .unwrap_or(("", &target.api_version));
    let gvk = GroupVersionKind::gvk(group, version, &target.kind);
    let resource = ApiResource::from_gvk(&gvk);
    match &target.namespace {
        Some(ns) => Api::namespaced_with(ctx.client.clone(), ns, &resource),
        None => Api::all_with(ctx.client.clone(), &resource),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn applied(fields: Value, status: Value) -> Value {
        json!({
            "metadata": {"managedFields": [
                {"manager": "pgwarden-agent", "operation": "Apply", "subresource": "status",
                 "fieldsV1": {"f:status": {"f:archive": {}}}},
                {"manager": MANAGER, "operation": "Apply", "subresource": "status",
                 "fieldsV1": {"f:status": fields}},
            ]},
            "status": status,
        })
    }

    #[test]
    fn a_field_left_out_of_a_status_it_applied_before_is_a_change() {
        let object = applied(
            json!({"f:lastCheckTime": {}, "f:nextScheduleTime": {}}),
            json!({"lastCheckTime": "t1", "nextScheduleTime": "t2", "archive": {"ok": true}}),
        );
        // Suspended: the core leaves nextScheduleTime out (it is not serialized as null).
        assert!(!holds(&object, &json!({"lastCheckTime": "t1"})));
        assert!(holds(
            &object,
            &json!({"lastCheckTime": "t1", "nextScheduleTime": "t2"})
        ));
        // Another manager's field (the agent's archive) is not this manager's to remove.
        assert_eq!(
            applied_status_fields(&object),
            vec!["lastCheckTime", "nextScheduleTime"]
        );
    }

    #[test]
    fn a_changed_value_or_a_null_is_a_change() {
        let object = applied(
            json!({"f:currentPrimary": {}}),
            json!({"currentPrimary": "pg-1"}),
        );
        assert!(!holds(&object, &json!({"currentPrimary": "pg-2"})));
        assert!(!holds(&object, &json!({"currentPrimary": null})));
        assert!(holds(&object, &json!({"currentPrimary": "pg-1"})));
    }

    #[test]
    fn nulls_are_left_out_of_the_applied_status() {
        let status = json!({
            "phase": "Setting up instances",
            "currentPrimary": null,
            "policy": {"name": "default", "digest": null},
            "conditions": [{"type": "Ready", "observedGeneration": null}],
        });
        assert_eq!(
            without_nulls(status),
            json!({
                "phase": "Setting up instances",
                "policy": {"name": "default"},
                "conditions": [{"type": "Ready"}],
            })
        );
    }
}
